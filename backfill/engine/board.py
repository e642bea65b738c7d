"""The engine's shared state: each flow's stream, gate and runs, the doubts, the counters.

Every part of the engine reads and moves this state, and only this state: the dispatcher takes
jobs off it, a submission puts a window in doubt or hands over its run, reconciliation settles
doubts, the monitor frees slots and queues re-runs. It does no I/O; ``wake`` tells the
dispatcher that something it waits for may have changed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from enum import Enum
from time import time as wall
from typing import Any

import structlog

from backfill.client import RunInfo
from backfill.journal import Entry, Journal
from backfill.limits import Clock
from backfill.planner import FlowPlan, Window
from backfill.state import TIMED_OUT, RunStatus, WindowState

from .options import EngineOptions, RetryMode, Stats

__all__ = ["Board", "Flow", "Gate", "Job", "timed_out", "window_fields"]

log = structlog.get_logger("backfill.engine")


class Gate(Enum):
    """May a flow's windows go? Only matters for flows with a delta column."""

    OPEN = "open"
    CHECKING = "checking"  # asking the service whether the flow has a run already
    NEEDS_FIRST = "needs-first"  # the next window picked carries the delta column
    FIRST_IN_FLIGHT = "first-in-flight"
    WAITING_FOR_SHARD = "waiting-for-shard"  # another shard sends the first run


class Job:
    """One request to make for one window."""

    __slots__ = (
        "attempt",
        "doubt_wall",
        "first",
        "looks",
        "mode",
        "next_look",
        "run_id",
        "settle_until",
        "window",
    )

    def __init__(
        self,
        window: Window,
        attempt: int,
        mode: RetryMode | None = None,
        run_id: str | None = None,
        *,
        first: bool = False,
    ) -> None:
        self.window = window
        self.attempt = attempt
        self.mode = mode  # None: a new run; RETRIGGER: re-trigger run_id
        self.run_id = run_id
        self.first = first
        # While in doubt: when reconciliation looks next, how often it has looked, and when
        # "the service has no run" may be concluded (monotonic seconds).
        self.next_look = 0.0
        self.looks = 0
        self.settle_until = 0.0
        self.doubt_wall = 0.0  # wall time the doubt arose: no later run can be this request's


class Flow:
    """The engine's view of one flow: its window stream, gate and active runs."""

    __slots__ = (
        "active",
        "exhausted",
        "gate",
        "head",
        "plan",
        "recorded",
        "retries",
        "stream",
        "tracked",
    )

    def __init__(self, plan: FlowPlan, stream: Iterator[Window], gate: Gate) -> None:
        self.plan = plan
        self.stream = stream
        self.head: Job | None = None
        self.exhausted = False
        self.gate = gate
        self.active = 0  # in flight + in doubt + tracked runs
        self.retries: deque[Job] = deque()
        self.tracked: dict[str, Window] = {}  # run id -> window, for the monitor
        self.recorded = 0  # windows of this flow the checkpoint has a record of


class Board:
    """What the parts of one engine share; built from the plan and the checkpoint."""

    def __init__(
        self, journal: Journal, options: EngineOptions, stats: Stats, clock: Clock
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.options = options
        self.stats = stats
        self.flows: dict[str, Flow] = {}
        self.doubt: dict[str, dict[Window, Job]] = {}  # flow id -> windows in doubt
        self.budget: dict[Window, int] = {}  # extra attempts granted by `retry`
        self.in_flight = 0  # workers started and not yet finished
        self.reconciling = 0  # reconciliation batches under way
        self.wake = asyncio.Event()  # the dispatcher looks again
        self.doubt_added = asyncio.Event()
        self.tracking = asyncio.Event()  # a run is tracked: the monitor has work
        # Run id -> the window it was answered or adopted for (active runs and this process's):
        # one run id is one window's, and a service that says otherwise is caught. Kept as the
        # run id's hash -> the window's key in the journal (two ints, ~110 bytes a run instead
        # of ~260 with the id and a window: a million-window run keeps a million of them).
        self.owners: dict[int, int] = {}

    def prepare(self) -> None:
        """Build each flow's stream and gate, and pick up what the checkpoint left open."""
        options = self.options
        plan = self.journal.plan
        self.flows = {
            flow.flow_id: Flow(
                flow,
                self.journal.unfinished(
                    flow.windows(options.order, plan.shard), empty=options.retry_empty
                ),
                Gate.OPEN
                if flow.delta_column is None or flow.flow_id in options.flows_with_delta_column
                else Gate.CHECKING,
            )
            for flow in plan.flows
        }
        journal = self.journal
        for flow_id, recorded in journal.recorded().items():
            flow = self.flows[flow_id]
            flow.recorded = recorded
            if journal.has_run(flow_id):
                flow.gate = Gate.OPEN  # the flow has a run: its delta column is set
        # Only the windows that need something now get an entry (a million finished ones: none).
        wanted = {WindowState.SUBMITTING}
        if options.monitoring:
            wanted.update(state for state in WindowState if state.active)
        if options.retry_failed:
            wanted.add(WindowState.FAILED)
            if options.retry_empty:
                wanted.add(WindowState.EMPTY)
        for window, entry in journal.items(wanted):
            flow = self.flows[window.flow_id]
            state = entry.state
            if state is WindowState.SUBMITTING:
                job = Job(window, entry.attempt)
                if entry.retrigger:
                    job.mode, job.run_id = RetryMode.RETRIGGER, entry.run_id
                # The listing may lag the run's creation, which was about the intent's time:
                # an old intent needs no more settling than the looks themselves.
                age = max(0.0, wall() - entry.since)
                self._doubt(job, settle=max(0.0, options.reconcile_settle - age), delay=0.0)
                flow.active += 1
            elif state.active and options.monitoring and entry.run_id is not None:
                # Only runs followed now: a run id answered again in this process is caught
                # against these and this process's own (an index of every recorded run would
                # cost a million-window resume hundreds of MB).
                self.claim(entry.run_id, window)
                flow.tracked[entry.run_id] = window
                flow.active += 1
            elif (
                state is WindowState.FAILED or (state is WindowState.EMPTY and options.retry_empty)
            ) and options.retry_failed:
                # `retry`: every failed window gets a fresh --max-attempts, however many
                # attempts the run before it allowed.
                self.budget[window] = entry.attempt
        if self.doubt:
            log.info("in_doubt_on_resume", windows=sum(len(d) for d in self.doubt.values()))

    # ----------------------------------------------------------------- attempts

    def allowed(self, window: Window) -> int:
        """How many attempts the window may have in all."""
        return self.budget.get(window, 0) + self.options.max_attempts

    def rerunnable(self, window: Window, entry: Entry) -> bool:
        """Is this finished window sent again? Failed (or, with --retry-empty, empty) with
        attempts left; one that timed out only when `retry` asked for it (its run may still be
        going at the service)."""
        if entry.state is WindowState.FAILED:
            if timed_out(entry) and window not in self.budget:
                return False
        elif entry.state is not WindowState.EMPTY or not self.options.retry_empty:
            return False
        return entry.attempt < self.allowed(window)

    def retry_job(self, window: Window, entry: Entry) -> Job:
        """The next attempt of a window whose run failed."""
        if self.options.retry_mode is RetryMode.RETRIGGER and entry.run_id is not None:
            return Job(window, entry.attempt + 1, RetryMode.RETRIGGER, entry.run_id)
        return Job(window, entry.attempt + 1)

    # -------------------------------------------------------------------- moves

    def accepted(self, flow: Flow, window: Window, run_id: str) -> None:
        """A run is known for the window: follow it, or let go of its slot."""
        if self.options.monitoring:
            flow.tracked[run_id] = window
            self.tracking.set()
        else:
            flow.active -= 1

    def release(self, flow: Flow) -> None:
        """A slot of the flow is free again."""
        flow.active -= 1
        self.wake.set()

    def to_doubt(self, job: Job, error: Exception) -> None:
        """The request's answer was lost: reconciliation decides what the service did."""
        self.stats.in_doubt += 1
        log.warning(
            "request_in_doubt", **window_fields(job.window), attempt=job.attempt, error=str(error)
        )
        self._doubt(job, settle=self.options.reconcile_settle, delay=self.options.reconcile_delay)

    def _doubt(self, job: Job, *, settle: float, delay: float) -> None:
        now = self.clock()
        job.looks = 0
        job.next_look = now + delay
        job.settle_until = now + settle
        job.doubt_wall = wall()
        self.doubt.setdefault(job.window.flow_id, {})[job.window] = job
        self.doubt_added.set()

    # ------------------------------------------------------------ run owners

    def claim(self, run_id: str, window: Window) -> None:
        """The run is the window's from now on (its record follows at once, in the journal)."""
        self.owners[hash(run_id)] = self.journal.key_of(window)

    def owner_ok(self, run_id: str, window: Window) -> bool:
        """May this run id be the window's? Not if it is already another window's."""
        journal = self.journal
        key = self.owners.get(hash(run_id))
        if key is None or key == journal.key_of(window):
            return True
        owner = journal.window_of(key)
        entry = journal.get(owner) if owner is not None else None
        if owner is None or entry is None or run_id not in entry.all_runs():
            return True  # another run id with the same hash: the journal says whose it is
        self.stats.foreign_runs += 1
        log.error(
            "run_id_of_another_window",
            run_id=run_id,
            **window_fields(window),
            owner_window_start=owner.start,
            owner_window_end=owner.end,
            owner_flow=owner.flow_id,
            hint="the service answered one run id for two windows; neither counts as done",
        )
        return False

    async def check_duplicates(self, window: Window, kept: RunInfo, runs: list[RunInfo]) -> None:
        """More than one live run for the window: record them all, say so, never silently."""
        others = sorted({r.run_id for r in runs if r.run_id != kept.run_id and _live(r)})
        if not others or not _live(kept):
            return
        self.stats.duplicates_found += 1
        log.error(
            "duplicate_runs_found",
            **window_fields(window),
            kept=kept.run_id,
            others=others,
            hint="the service holds more than one live run for this window",
        )
        await self.journal.note(window, duplicates=tuple(others))

    # -------------------------------------------------------------- questions

    def quiet(self) -> bool:
        """No request in flight or in doubt, and (with --wait) no run still going."""
        if self.in_flight or self.doubt or self.reconciling:
            return False
        return not (self.options.wait and any(flow.tracked for flow in self.flows.values()))

    def all_done(self) -> bool:
        """Nothing left to send, nothing in flight, and (with --wait) nothing running."""
        return self.quiet() and all(
            flow.exhausted and flow.head is None and not flow.retries
            for flow in self.flows.values()
        )

    def tracked_any(self) -> bool:
        return any(flow.tracked for flow in self.flows.values())


def _live(run: RunInfo) -> bool:
    """Scheduled, in progress or succeeded: a run that ingests (or will ingest) its window."""
    return run.status is not RunStatus.FAILED


def timed_out(entry: Entry) -> bool:
    """The window failed for good because its run outlived --run-timeout."""
    errors = entry.errors
    return bool(errors) and errors is not None and errors[0].get("code") == TIMED_OUT


def window_fields(window: Window) -> dict[str, Any]:
    """How a window appears in every log event."""
    return {"flow": window.flow_id, "window_start": window.start, "window_end": window.end}
