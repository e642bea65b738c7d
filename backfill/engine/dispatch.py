"""Dispatch: which window goes next, under the concurrency, active-run and delta-column limits.

``workers`` long-lived workers (twice ``concurrency``) wait for new work:
each picks the next ready window (re-runs first, then windows from the flows' streams, oldest
or newest first), sends it and picks again, so at most ``workers`` windows are ever in hand
and memory stays flat however long the plan is. At most ``concurrency`` of them have a request
out (submit.py's seats): the others record their intents meanwhile, so a seat that frees goes
to a window whose intent is on disk already, and a commit can gather many intents at once
(journal.py). A flow with a delta column sends its first run alone (its gate); its other
windows wait until that run is accepted.

It may touch: the board's flows, counters and ``wake``; the journal (read only); the lister
for the gate's one question to the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from backfill.errors import ApiError, RequestNotSent, RetryableError
from backfill.planner import Order
from backfill.state import WindowState

from .board import Board, Flow, Gate, Job
from .control import Control
from .listing import Lister
from .options import EngineOptions

__all__ = ["Dispatcher"]

log = structlog.get_logger("backfill.engine")

Worker = Callable[[Job], Awaitable[None]]


class Dispatcher:
    """Hands ready windows to workers, one concurrency slot each."""

    def __init__(
        self, board: Board, control: Control, lister: Lister, options: EngineOptions
    ) -> None:
        self._board = board
        self._control = control
        self._lister = lister
        self._options = options

    async def run(self, group: asyncio.TaskGroup, work: Worker) -> None:
        """Run ``workers`` workers until nothing is left (or the engine stops).

        Each worker takes the next ready window, sends it, and takes another: no task and no
        hand-over per window (a task per window cost the event loop two more callbacks a
        window); the only wait between workers is for a seat (submit.py). Every worker picks
        through the same ``_pick``, one at a time, so the order and the limits are those of a
        single dispatcher.
        """
        others = [group.create_task(self._worker(work)) for _ in range(self._options.workers - 1)]
        await self._worker(work)
        if others:
            await asyncio.wait(others)

    async def _worker(self, work: Worker) -> None:
        board, control = self._board, self._control
        while True:
            # A window ready now is taken without a coroutine; otherwise wait for one.
            job = self._pick() if control.stopping is None and control.draining is None else None
            if job is None:
                job = await self._next_job()
                if job is None:
                    return
            board.in_flight += 1
            try:
                await work(job)
            finally:
                board.in_flight -= 1
                board.wake.set()

    async def _next_job(self) -> Job | None:
        board, control = self._board, self._control
        while True:
            if control.stopping is not None:
                return None
            if control.draining is not None:
                # --on-failure stop: nothing new goes out; what is out is followed to its end.
                if board.quiet():
                    return None
            else:
                job = self._pick()
                if job is not None:
                    return job
                if board.all_done():
                    return None
            board.wake.clear()
            await board.wake.wait()

    def _pick(self) -> Job | None:
        """The next job of a ready flow: re-runs first, then the oldest (or newest) window."""
        cap = self._options.max_active_runs
        newest_first = self._options.order is Order.NEWEST_FIRST
        best: Flow | None = None
        best_job: Job | None = None
        for flow in self._board.flows.values():
            job = self._candidate(flow)
            if job is None or (cap is not None and flow.active >= cap):
                continue
            if best_job is None or (
                job.window.start > best_job.window.start
                if newest_first
                else job.window.start < best_job.window.start
            ):
                best, best_job = flow, job
        if best is None or best_job is None:
            return None
        if best.retries and best.retries[0] is best_job:
            best.retries.popleft()
        else:
            best.head = None
        if best.gate is Gate.NEEDS_FIRST:
            best.gate = Gate.FIRST_IN_FLIGHT
            best_job.first = True
        best.active += 1
        return best_job

    def _candidate(self, flow: Flow) -> Job | None:
        gate = flow.gate
        if flow.retries:
            job = flow.retries[0]
            if gate is Gate.OPEN or job.first or gate is Gate.NEEDS_FIRST:
                return job
            return None
        if gate is not Gate.OPEN and gate is not Gate.NEEDS_FIRST:
            return None
        if flow.head is None and not flow.exhausted:
            flow.head = self._next_window(flow)
        return flow.head

    def _next_window(self, flow: Flow) -> Job | None:
        """Advance the flow's stream to the next window that needs a request."""
        board = self._board
        journal = board.journal
        for window in flow.stream:
            state = journal.state(window)  # no entry is built for the windows passed over
            if state is WindowState.PENDING:
                entry = journal.get(window)
                return Job(window, entry.attempt + 1 if entry is not None else 1)
            if state is WindowState.FAILED or state is WindowState.EMPTY:
                entry = journal.get(window)
                if entry is not None and board.rerunnable(window, entry):
                    return board.retry_job(window, entry)
        flow.exhausted = True
        return None

    async def check_gate(self, flow: Flow) -> None:
        """Does the flow have a run yet? If not, one shard sends the first, with the column."""
        control = self._control
        plan = flow.plan
        first = next(plan.windows(self._options.order), None)
        shard = self._board.journal.plan.shard
        owner = plan.owner(first.start, shard.count) if first is not None else shard.index
        told = False
        while not control.closed.is_set():
            try:
                has_run = await self._lister.has_run(plan.flow_id)
            except (RequestNotSent, RetryableError):
                # Stopping: the lister retries a failing page within the one retry budget and,
                # once it is spent, stops the run itself (exit 75).
                return
            except ApiError as exc:
                control.fail(exc)
                return
            if flow.gate is not Gate.CHECKING and flow.gate is not Gate.WAITING_FOR_SHARD:
                return  # reconciliation adopted a run meanwhile
            if has_run:
                flow.gate = Gate.OPEN
            elif owner == shard.index:
                flow.gate = Gate.NEEDS_FIRST
            else:
                flow.gate = Gate.WAITING_FOR_SHARD
                if not told:
                    log.info("waiting_for_first_run", flow=plan.flow_id, shard=owner)
                    told = True
                await control.nap(self._options.poll_interval)
                continue
            self._board.wake.set()
            return
