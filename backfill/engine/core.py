"""The engine's facade: builds the parts around one shared board and runs them together.

This is the whole public surface the rest of ``backfill`` uses: ``run``, ``refresh``,
``stop``, the counters and the unknown status words seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from backfill.client import RunsApi
from backfill.errors import ApiUnavailable, BackfillError, RequestNotSent
from backfill.journal import Journal
from backfill.limits import Clock, RateLimiter, Sleep, monotonic, real_sleep
from backfill.permits import Permits

from .adopt import Adopter
from .board import Board, Gate
from .control import Control
from .dispatch import Dispatcher
from .listing import Lister
from .monitor import Monitor
from .options import EngineOptions, ExistingRuns, Outcome, Stats
from .reconcile import Reconciler
from .submit import Submitter

__all__ = ["Engine"]


class Engine:
    """Runs one plan's windows (one shard's) to completion against the service."""

    def __init__(
        self,
        journal: Journal,
        client: RunsApi,
        limiter: RateLimiter,
        options: EngineOptions,
        *,
        permits: Permits | None = None,
        clock: Clock = monotonic,
        sleep: Sleep = real_sleep,
    ) -> None:
        """``permits``: the ones the client takes before each send (of ``limiter``)."""
        self._clock = clock
        self._options = options
        self.stats = Stats()
        self._board = board = Board(journal, options, self.stats, clock)
        permits = permits if permits is not None else Permits(limiter)
        self._control = control = Control(board, permits, options, self.stats, sleep)
        lister = Lister(client, control, self.stats, options)
        self._monitor = Monitor(board, control, lister, options)
        self._reconciler = Reconciler(
            board,
            control,
            lister,
            self._monitor,
            options,
            lambda: getattr(client, "clock_offset", None),
        )
        self._submitter = Submitter(board, control, client, options, permits)
        self._dispatcher = Dispatcher(board, control, lister, options)
        self._adopter = Adopter(board, lister, options)
        self.started = 0.0

    async def run(self) -> Outcome:
        """Submit (and, when asked, follow) every window of the plan; return how it ended."""
        self.started = self._clock()
        board, control = self._board, self._control
        board.prepare()
        if self._options.existing_runs is ExistingRuns.ADOPT:
            try:
                await self._adopter.adopt_existing()
            except RequestNotSent:
                return Outcome(control.stopping, control.error)
            except BackfillError as exc:
                control.fail(exc)
                return Outcome(control.stopping, control.error)
        async with asyncio.TaskGroup() as group:
            for flow in board.flows.values():
                if flow.gate is Gate.CHECKING:
                    group.create_task(self._part(self._dispatcher.check_gate(flow)))
            group.create_task(self._part(self._reconciler.loop()))
            if self._options.monitoring:
                group.create_task(self._part(self._monitor.loop()))
            await self._part(self._dispatcher.run(group, self._submitter.work))
            control.close()
        return Outcome(control.stopping or control.draining, control.error)

    async def refresh(self) -> None:
        """One reconciliation and one status poll of everything unfinished; no submissions."""
        self._board.prepare()
        await self._part(self._reconciler.batch(final=False))
        await self._part(self._monitor.poll())
        if self._control.error is not None:
            raise self._control.error

    async def _part(self, work: Awaitable[object]) -> None:
        """Run one part; a listing out of retries ends it, and the run (exit 75), cleanly."""
        try:
            await work
        except ApiUnavailable as exc:
            self._control.fail(exc)  # the Lister did already; the first error stays

    def stop(self, reason: str) -> None:
        """Take no new windows; requests in flight finish; returns at once."""
        self._control.stop(reason)

    @property
    def unknown_statuses(self) -> frozenset[str]:
        return frozenset(self._monitor.unknown_statuses)
