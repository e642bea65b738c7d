"""The monitor: following accepted runs to their end, and queueing re-runs of failed ones.

    tracked runs -> one listing per flow and page of run ids -> status records (with the
    run's record counts)
    succeeded, partial: slot freed; empty: slot freed, re-triggered with --retry-empty
    failed: re-run (re-trigger or new run) until attempts run out, then failed for good
    not finished --run-timeout after its creation (any status word, known or not):
    failed for good, "timed out", never re-run on its own

Polls back off while nothing changes; polls that keep failing draw on the retry budget, then
stop the run (exit 75). It may touch: the board's tracked runs, slots and
re-runs; the journal (status records of tracked windows); the lister; the control (giving a
window up, errors, naps).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from backfill.client import RunInfo
from backfill.errors import ApiError, RequestNotSent, RetryableError
from backfill.planner import Window
from backfill.state import TIMED_OUT, RunStatus, WindowState

from .board import Board, Flow, window_fields
from .control import Control
from .listing import Lister
from .options import EngineOptions

__all__ = ["Monitor"]

log = structlog.get_logger("backfill.engine")


class Monitor:
    """Polls the runs on the board and records what the service says of them."""

    def __init__(
        self,
        board: Board,
        control: Control,
        lister: Lister,
        options: EngineOptions,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._board = board
        self._control = control
        self._lister = lister
        self._options = options
        self._wall = wall
        self._created: dict[str, float] = {}  # run id -> createdAt (epoch seconds)
        self.unknown_statuses: set[str] = set()
        self.foreign: set[str] = set()  # tracked run ids the service says are another window's

    async def loop(self) -> None:
        """Poll while runs are tracked, backing off while nothing changes."""
        board, control = self._board, self._control
        interval = self._options.poll_interval
        while not control.closed.is_set():
            if not board.tracked_any():
                board.tracking.clear()
                await control.wait_or_close(board.tracking)
                continue
            await control.nap(interval)
            if control.closed.is_set():
                return
            changed = await self.poll()
            if changed:
                interval = self._options.poll_interval
            else:
                interval = min(interval * 1.5, self._options.poll_max_interval)

    async def poll(self) -> bool:
        """One pass over every tracked run: one request per flow and page of run ids."""
        board, control = self._board, self._control
        board.stats.polls += 1
        changed = False
        size = self._lister.page_size
        for flow in list(board.flows.values()):
            ids = list(flow.tracked)
            for i in range(0, len(ids), size):
                chunk = ids[i : i + size]
                try:
                    async for run in self._lister.runs(flow.plan.flow_id, ids=chunk):
                        window = flow.tracked.get(run.run_id)
                        if window is not None:
                            changed |= self.observe(flow, window, run)
                except (RequestNotSent, RetryableError):
                    # Stopping: the lister retries a failing page within the one retry budget
                    # and, once it is spent, stops the run itself (exit 75).
                    return changed
                except ApiError as exc:
                    control.fail(exc)
                    return changed
        return self._time_out() or changed

    def _time_out(self) -> bool:
        """Fail for good every tracked run still not finished --run-timeout after creation."""
        board = self._board
        journal = board.journal
        limit = self._options.run_timeout
        now = self._wall()
        changed = False
        for flow in board.flows.values():
            for run_id, window in list(flow.tracked.items()):
                entry = journal.get(window)
                if entry is None:
                    continue
                # The latest intent bounds the attempt's start too: a re-trigger that keeps the
                # run's id (and its createdAt) starts the clock again.
                created = max(self._created.get(run_id, 0.0), entry.since)
                if not created or now - created < limit:
                    continue
                reason = (
                    f"timed out: run {run_id} was not finished {limit:g} s after its creation "
                    "(--run-timeout); it may still be going: see `backfill status`, and "
                    "`backfill retry` sends it again"
                )
                journal.record_nowait(
                    window,
                    WindowState.FAILED,
                    errors=[{"code": TIMED_OUT, "message": reason}],
                    retrying=False,  # its run may still be going: never sent again on its own
                )
                del flow.tracked[run_id]
                self._created.pop(run_id, None)
                flow.active -= 1
                self._control.give_up(window, reason)
                changed = True
        if changed:
            board.wake.set()
        return changed

    def observe(self, flow: Flow, window: Window, run: RunInfo) -> bool:
        """Record what the service says of a tracked run; True if anything changed."""
        board = self._board
        journal = board.journal
        entry = journal.get(window)
        if entry is None or entry.run_id != run.run_id:
            return False
        if run.window_start is not None and (run.window_start, run.window_end) != (
            window.start,
            window.end,
        ):
            # The service says this run is another window's: it does not make this one done.
            if run.run_id not in self.foreign:
                self.foreign.add(run.run_id)
                board.stats.foreign_runs += 1
                log.error(
                    "run_of_another_window",
                    **window_fields(window),
                    run_id=run.run_id,
                    run_window_start=run.window_start,
                    run_window_end=run.window_end,
                )
            return False
        if run.status is RunStatus.UNKNOWN and run.raw_status not in self.unknown_statuses:
            self.unknown_statuses.add(run.raw_status)
            log.warning(
                "unknown_run_status",
                status=run.raw_status,
                run_id=run.run_id,
                hint="counted as not finished; --run-timeout ends it",
            )
        if run.created_at is not None and run.created_at > 0:
            self._created[run.run_id] = run.created_at / 1000
        new = run.status.window_state(run.records)
        old = entry.state
        if new is old or new is WindowState.SUBMITTED or not old.active:
            return False
        if new is WindowState.RUNNING:
            if old is not WindowState.SUBMITTED:
                return False
            journal.record_nowait(window, new)
            return True
        errors = [dict(e) for e in run.errors] if new is not WindowState.SUCCEEDED else None
        retrying = entry.attempt < board.allowed(window)
        journal.record_nowait(
            window,
            new,
            errors=errors,
            retrying=retrying if new is WindowState.FAILED else None,
            counts=run.records,
        )
        records = run.records.as_dict() if run.records is not None else None
        log.debug(
            "run_finished",
            **window_fields(window),
            attempt=entry.attempt,
            run_id=run.run_id,
            status=new,
            records=records,
        )
        self._created.pop(run.run_id, None)
        if flow.tracked.pop(run.run_id, None) is not None:
            flow.active -= 1
        if new is WindowState.FAILED:
            if retrying:
                flow.retries.append(board.retry_job(window, entry))
            else:
                first_error = errors[0].get("message", "") if errors else "no error given"
                self._control.give_up(window, f"run {run.run_id} failed: {first_error}")
        elif new is WindowState.EMPTY:
            again = self._options.retry_empty and entry.attempt < board.allowed(window)
            log.info(
                "window_empty",
                **window_fields(window),
                attempt=entry.attempt,
                run_id=run.run_id,
                retried=again,
            )
            if again:
                flow.retries.append(board.retry_job(window, entry))
        elif new is WindowState.PARTIAL:
            log.warning(
                "window_partial", **window_fields(window), run_id=run.run_id, records=records
            )
        board.wake.set()
        return True
