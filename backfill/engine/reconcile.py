"""Reconciliation: settling requests whose answer was lost, against the service's listing.

    in doubt (lost answer, 5xx, timeout, crash) -> wait ``reconcile_delay`` -> one paginated
    listing per flow -> adopt the run whose window matches, or send the window again when the
    service has none

A window in doubt is never sent again blindly: the service may hold a run for it. Listings
that keep failing draw on the retry budget (backoff with jitter), then stop the run (exit 75).

It may touch: the board's doubts, slots and re-runs; the journal (its windows' records); the
lister; the monitor, to record what an adopted run's status already says.
"""

from __future__ import annotations

import structlog

from backfill.client import RunInfo
from backfill.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    PermanentError,
    RequestNotSent,
    RetryableError,
)
from backfill.planner import Window
from backfill.retry import Retries
from backfill.state import RunStatus, WindowState

from .board import Board, Gate, Job, window_fields
from .control import Control
from .listing import Lister
from .monitor import Monitor
from .options import EngineOptions, RetryMode

__all__ = ["Reconciler"]

log = structlog.get_logger("backfill.engine")

Found = dict[tuple[int, int] | str, list[RunInfo]]


class Reconciler:
    """Settles the board's doubts, one batch (one listing per flow) at a time."""

    def __init__(
        self,
        board: Board,
        control: Control,
        lister: Lister,
        monitor: Monitor,
        options: EngineOptions,
    ) -> None:
        self._board = board
        self._control = control
        self._lister = lister
        self._monitor = monitor
        self._options = options
        self._retries = Retries(options.backoff)

    async def loop(self) -> None:
        """Settle doubts as they come, until the engine closes."""
        board, control = self._board, self._control
        delay = 0.0  # what the checkpoint left in doubt is settled at once
        while not control.closed.is_set():
            if not board.doubt:
                board.doubt_added.clear()
                await control.wait_or_close(board.doubt_added)
                delay = self._options.reconcile_delay
                continue
            if delay:
                # Let a just-created run show up in the service's listing before we look.
                await control.nap(delay)
                if control.closed.is_set():
                    return
            await self.batch()

    async def batch(self) -> None:
        """Settle every doubt on the board now: one listing per flow."""
        board, control = self._board, self._control
        batch, board.doubt = board.doubt, {}
        board.reconciling += 1
        try:
            for flow_id, jobs in batch.items():
                try:
                    runs = await self._runs_for(flow_id, jobs)
                except (RetryableError, RequestNotSent) as exc:
                    for window, job in jobs.items():
                        board.doubt.setdefault(flow_id, {})[window] = job
                    if isinstance(exc, RequestNotSent):
                        continue  # stopping: the doubts stay on disk for the next run
                    try:
                        retry = self._retries.failed(exc)
                    except ApiUnavailable as spent:
                        control.fail(spent)
                        continue
                    log.warning("reconcile_retry", flow=flow_id, error=str(exc), retries=retry)
                    await control.nap(control.backoff(exc, retry))
                    continue
                except ApiError as exc:
                    control.fail(exc)
                    return
                self._retries.succeeded()
                board.stats.reconciliations += 1
                for job in jobs.values():
                    await self._settle(job, runs)
        finally:
            board.reconciling -= 1
            board.wake.set()

    async def _runs_for(self, flow_id: str, jobs: dict[Window, Job]) -> Found:
        """The flow's runs that may answer these doubts, by window and by run id."""
        lister = self._lister
        found: Found = {}
        new = [job for job in jobs.values() if job.mode is None]
        retriggered = [job.run_id for job in jobs.values() if job.run_id is not None]
        if new:
            since = min(self._since(job.window) for job in new) - self._options.reconcile_margin
            try:
                runs = [r async for r in lister.runs(flow_id, created_since_ms=int(since * 1000))]
            except PermanentError as exc:
                if isinstance(exc, AuthError):
                    raise
                # A service that refuses the createdAt filter still answers the plain listing.
                log.warning("reconcile_unfiltered", flow=flow_id, error=str(exc))
                runs = [r async for r in lister.runs(flow_id)]
            for run in runs:
                if run.window_start is not None and run.window_end is not None:
                    found.setdefault((run.window_start, run.window_end), []).append(run)
        size = lister.page_size
        for i in range(0, len(retriggered), size):
            async for run in lister.runs(flow_id, ids=retriggered[i : i + size]):
                found[run.run_id] = [run]
        return found

    def _since(self, window: Window) -> float:
        entry = self._board.journal.get(window)
        return entry.since if entry is not None else 0.0

    async def _settle(self, job: Job, runs: Found) -> None:
        board = self._board
        journal = board.journal
        window = job.window
        flow = board.flows[window.flow_id]
        entry = journal.get(window)
        known = set(entry.all_runs()) if entry is not None else set()
        if job.mode is RetryMode.RETRIGGER and job.run_id is not None:
            matches = runs.get(job.run_id, [])
            took_effect = bool(matches) and matches[0].status is not RunStatus.FAILED
            adopted = matches[0] if took_effect else None
        else:
            matches = [r for r in runs.get((window.start, window.end), []) if r.run_id not in known]
            if len(matches) > 1:
                board.stats.duplicates_found += len(matches) - 1
                log.error(
                    "duplicate_runs_found",
                    **window_fields(window),
                    runs=[r.run_id for r in matches],
                )
            adopted = min(matches, key=_adoption_rank) if matches else None
        if adopted is not None:
            await journal.record(
                window, WindowState.SUBMITTED, attempt=job.attempt, run_id=adopted.run_id
            )
            log.info(
                "run_adopted", **window_fields(window), attempt=job.attempt, run_id=adopted.run_id
            )
            board.stats.adopted += 1
            if flow.gate is not Gate.OPEN and flow.plan.delta_column is not None:
                flow.gate = Gate.OPEN
            board.accepted(flow, window, adopted.run_id)
            if self._options.monitoring:
                self._monitor.observe(flow, window, adopted)
            return
        # The service has no run for it: the request never took effect. Send it again.
        before = WindowState.FAILED if entry is not None and entry.run_id else WindowState.PENDING
        await journal.record(window, before, attempt=job.attempt - 1)
        board.stats.resent_after_doubt += 1
        flow.active -= 1
        flow.retries.append(job)
        board.wake.set()


def _adoption_rank(run: RunInfo) -> int:
    """Which of several matching runs to adopt: one that succeeded, then one still going."""
    if run.status is RunStatus.SUCCESS:
        return 0
    if not run.status.finished:
        return 1
    return 2
