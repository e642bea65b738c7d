"""Reconciliation: settling requests whose answer was lost, against the service's listing.

    in doubt (lost answer, timeout, 5xx or 408, a crash) -> look after ``reconcile_delay``
    -> list the flow's runs created since the intent (one paginated listing per flow)
    -> a run of this window the checkpoint does not know: adopt it (re-triggers too: Adobe's
       re-trigger creates a new run, help/sources/tutorials/api/retry-flows.md in
       AdobeDocs/experience-platform.en)
    -> none yet: look again, backing off, until ``reconcile_settle`` has passed (a listing can
       lag the run's creation); only then is the window sent again
    -> runs whose window cannot be read were created since the intent: the window stays in
       doubt with their ids on record, and is never sent again blindly

A window in doubt is never sent again blindly: the service may hold a run for it. A listing
that keeps failing is the lister's to retry, within the one retry budget (backoff with jitter,
``--max-retries`` in a row), which then stops the run (exit 75); nothing here retries on top.
The service is the source of truth; the checkpoint is a durable cache of it.

It may touch: the board's doubts, slots and re-runs; the journal (its windows' records and
notes); the lister; the monitor, to record what an adopted run's status already says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
from backfill.state import RunStatus, WindowState

from .board import Board, Gate, Job, window_fields
from .control import Control
from .listing import Lister
from .monitor import Monitor
from .options import EngineOptions, RetryMode

__all__ = ["Found", "Reconciler", "adoption_rank", "created_since_ms"]

log = structlog.get_logger("backfill.engine")

# Between two looks at a doubt while it settles: at least, and at most (seconds).
_MIN_LOOK_INTERVAL = 1.0
# A run created this long after our answer was lost may still be that request's (the service
# was working on it); later ones cannot be.
_CREATED_GRACE = 30.0
# How long past the settle period a scheduled run whose window is not yet readable is waited
# for, at least (seconds; or ten settle periods).
_CANDIDATE_WAIT = 300.0
_MAX_LOOK_INTERVAL = 30.0


@dataclass(slots=True)
class Found:
    """One flow's listing, arranged for settling: runs by window, by id, and unreadable ones."""

    by_window: dict[tuple[int, int], list[RunInfo]] = field(default_factory=dict)
    by_id: dict[str, RunInfo] = field(default_factory=dict)
    unreadable: list[RunInfo] = field(default_factory=list)

    def add(self, run: RunInfo) -> None:
        self.by_id[run.run_id] = run
        if run.window_start is None or run.window_end is None:
            self.unreadable.append(run)
        else:
            self.by_window.setdefault((run.window_start, run.window_end), []).append(run)


class Reconciler:
    """Settles the board's doubts, one batch (one listing per flow) at a time."""

    def __init__(
        self,
        board: Board,
        control: Control,
        lister: Lister,
        monitor: Monitor,
        options: EngineOptions,
        clock_offset: Callable[[], float | None],
    ) -> None:
        self._board = board
        self._control = control
        self._lister = lister
        self._monitor = monitor
        self._options = options
        self._clock_offset = clock_offset

    async def loop(self) -> None:
        """Settle doubts as they come, each when its next look is due, until the engine closes."""
        board, control = self._board, self._control
        while not control.closed.is_set():
            if not board.doubt:
                board.doubt_added.clear()
                await control.wait_or_close(board.doubt_added)
                continue
            due = min(job.next_look for jobs in board.doubt.values() for job in jobs.values())
            wait = due - board.clock()
            if wait > 0:
                # A new doubt may be due sooner than the others' next look: it wakes us.
                board.doubt_added.clear()
                await control.nap_or(board.doubt_added, wait)
                continue
            await self.batch()

    async def batch(self, *, final: bool = True) -> None:
        """Look at every doubt that is due; ``final=False`` only adopts (status --refresh)."""
        board, control = self._board, self._control
        now = board.clock()
        due: dict[str, dict[Window, Job]] = {}
        for flow_id, jobs in list(board.doubt.items()):
            ready = {w: j for w, j in jobs.items() if j.next_look <= now or not final}
            for window in ready:
                del jobs[window]
            if not jobs:
                del board.doubt[flow_id]
            if ready:
                due[flow_id] = ready
        board.reconciling += 1
        try:
            for flow_id, jobs in due.items():
                try:
                    found = await self._list(flow_id, jobs)
                except (RetryableError, RequestNotSent, ApiUnavailable):
                    # The lister retries a failing page within the one retry budget and, once
                    # it is spent, stops the run (exit 75): a failure reaches here only when
                    # the engine is stopping. The doubts stay, on disk too, for the next run.
                    for job in jobs.values():
                        self._keep(job, board.clock() + self._options.reconcile_delay)
                    continue
                except ApiError as exc:
                    control.fail(exc)
                    return
                board.stats.reconciliations += 1
                for job in jobs.values():
                    job.looks += 1
                    await self._settle(job, found, final=final)
        finally:
            board.reconciling -= 1
            board.wake.set()

    def _keep(self, job: Job, next_look: float) -> None:
        job.next_look = next_look
        self._board.doubt.setdefault(job.window.flow_id, {})[job.window] = job

    async def _list(self, flow_id: str, jobs: dict[Window, Job]) -> Found:
        """The flow's runs that may answer these doubts: created since the earliest intent."""
        lister = self._lister
        found = Found()
        since = created_since_ms(
            min(self._since(job.window) for job in jobs.values()),
            self._clock_offset(),
            self._options.reconcile_margin,
        )
        try:
            async for run in lister.runs(flow_id, created_since_ms=since):
                found.add(run)
        except PermanentError as exc:
            if isinstance(exc, AuthError) or since is None:
                raise
            # A service that refuses the createdAt filter still answers the plain listing.
            log.warning("reconcile_unfiltered", flow=flow_id, error=str(exc))
            found = Found()
            async for run in lister.runs(flow_id):
                found.add(run)
        # A service that re-triggers a run in place (the same id) shows it by id only.
        retriggered = [j.run_id for j in jobs.values() if j.run_id and j.run_id not in found.by_id]
        size = lister.page_size
        for i in range(0, len(retriggered), size):
            async for run in lister.runs(flow_id, ids=retriggered[i : i + size]):
                found.by_id[run.run_id] = run
        return found

    def _since(self, window: Window) -> float:
        entry = self._board.journal.get(window)
        return entry.since if entry is not None else 0.0

    async def _settle(self, job: Job, found: Found, *, final: bool) -> None:
        board = self._board
        journal = board.journal
        window = job.window
        flow = board.flows[window.flow_id]
        entry = journal.get(window)
        known = set(entry.all_runs()) if entry is not None else set()
        listed = found.by_window.get((window.start, window.end), [])
        fresh = [
            run for run in listed if run.run_id not in known and board.owner_ok(run.run_id, window)
        ]
        if job.mode is RetryMode.RETRIGGER and job.run_id is not None:
            same = found.by_id.get(job.run_id)
            if same is not None and same.status is not RunStatus.FAILED:
                fresh.append(same)  # re-triggered in place: the old id runs again
        if fresh:
            await self._adopt(job, fresh, listed, known)
            return
        candidates = self._candidates(job, found, known)
        now = board.clock()
        settled = job.looks >= 2 and now >= job.settle_until
        if settled and any(not run.status.finished for run in candidates):
            # A scheduled run shows its window only once it starts (Adobe's monitor.md lists a
            # scheduled run with no activities): wait for it to say, within a bound.
            settled = now >= job.settle_until + max(
                _CANDIDATE_WAIT, 10 * self._options.reconcile_settle
            )
        unreadable = [run.run_id for run in candidates]
        if not final or not settled:
            # Not yet: the listing may still lag. Look again, backing off.
            interval = max(self._options.reconcile_delay, _MIN_LOOK_INTERVAL) * 2 ** min(
                job.looks, 5
            )
            self._keep(job, board.clock() + min(interval, _MAX_LOOK_INTERVAL))
            return
        if unreadable:
            # Any of these may be this window's run: sending again could ingest it twice.
            await journal.note(window, candidates=tuple(unreadable))
            board.stats.left_in_doubt += 1
            log.error(
                "window_left_in_doubt",
                **window_fields(window),
                runs=unreadable,
                hint="the service lists runs whose window it does not say; "
                "look them up, then `backfill run` again",
            )
            flow.active -= 1
            board.wake.set()
            return
        # The service has no run for it: the request never took effect. Send it again.
        before = WindowState.FAILED if entry is not None and entry.run_id else WindowState.PENDING
        await journal.record(window, before, attempt=job.attempt - 1)
        board.stats.resent_after_doubt += 1
        flow.active -= 1
        flow.retries.append(job)
        board.wake.set()

    def _candidates(self, job: Job, found: Found, known: set[str]) -> list[RunInfo]:
        """Runs whose window the service does not say and that may be this request's: not
        known, and not created after the doubt arose (the service's time, with a grace for a
        request it was still working on when our answer was lost)."""
        offset = self._clock_offset()
        latest = None
        if offset is not None and job.doubt_wall:
            latest = (job.doubt_wall + offset + _CREATED_GRACE) * 1000
        return [
            run
            for run in found.unreadable
            if run.run_id not in known
            and (latest is None or run.created_at is None or run.created_at <= latest)
        ]

    async def _adopt(
        self, job: Job, fresh: list[RunInfo], listed: list[RunInfo], known: set[str]
    ) -> None:
        board = self._board
        journal = board.journal
        window = job.window
        flow = board.flows[window.flow_id]
        adopted = min(fresh, key=adoption_rank)
        # Every run the service shows for the window counts as an attempt.
        attempt = max(job.attempt, len(known | {run.run_id for run in fresh}))
        board.claim(adopted.run_id, window)
        await journal.record(window, WindowState.SUBMITTED, attempt=attempt, run_id=adopted.run_id)
        log.info("run_adopted", **window_fields(window), attempt=attempt, run_id=adopted.run_id)
        board.stats.adopted += 1
        await board.check_duplicates(window, adopted, [*listed, *fresh])
        if flow.gate is not Gate.OPEN and flow.plan.delta_column is not None:
            flow.gate = Gate.OPEN
        board.accepted(flow, window, adopted.run_id)
        if self._options.monitoring:
            self._monitor.observe(flow, window, adopted)


def created_since_ms(since: float, offset: float | None, margin: float) -> int | None:
    """The ``createdAt`` lower bound (ms, the service's time) for an intent made at ``since``.

    The intent's time is our wall clock; the service's clock may differ by any amount
    (``offset``, measured from its ``Date`` headers). The bound is only ever widened: a
    negative offset (the service behind us) moves it back, a positive one is ignored. None --
    list without a time filter -- when the offset is unknown or there was no intent time.
    """
    if offset is None or since <= 0:
        return None
    return max(0, int((since + min(0.0, offset) - margin) * 1000))


def adoption_rank(run: RunInfo) -> int:
    """Which of several matching runs to adopt: one that ingested, then one still going.

    A partial success ingested the window (only some records failed, help/sources/tutorials/
    api/monitor.md, AdobeDocs/experience-platform.en: ``failedRecordCount``): it is a success,
    ranked just after a clean one and above a run still going or one that failed.
    """
    if run.status is RunStatus.SUCCESS:
        return 0
    if run.status is RunStatus.PARTIAL_SUCCESS:
        return 1
    if not run.status.finished:
        return 2
    return 3
