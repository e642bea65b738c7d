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
from typing import Any

import structlog

from backfill.journal import Entry, Journal
from backfill.planner import FlowPlan, Window
from backfill.state import WindowState

from .options import EngineOptions, RetryMode, Stats

__all__ = ["Board", "Flow", "Gate", "Job", "window_fields"]

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

    __slots__ = ("attempt", "first", "mode", "run_id", "window")

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


class Flow:
    """The engine's view of one flow: its window stream, gate and active runs."""

    __slots__ = ("active", "exhausted", "gate", "head", "plan", "retries", "stream", "tracked")

    def __init__(self, plan: FlowPlan, stream: Iterator[Window], gate: Gate) -> None:
        self.plan = plan
        self.stream = stream
        self.head: Job | None = None
        self.exhausted = False
        self.gate = gate
        self.active = 0  # in flight + in doubt + tracked runs
        self.retries: deque[Job] = deque()
        self.tracked: dict[str, Window] = {}  # run id -> window, for the monitor


class Board:
    """What the parts of one engine share; built from the plan and the checkpoint."""

    def __init__(self, journal: Journal, options: EngineOptions, stats: Stats) -> None:
        self.journal = journal
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

    def prepare(self) -> None:
        """Build each flow's stream and gate, and pick up what the checkpoint left open."""
        options = self.options
        plan = self.journal.plan
        self.flows = {
            flow.flow_id: Flow(
                flow,
                self.journal.unfinished(flow.windows(options.order, plan.shard)),
                Gate.OPEN if flow.delta_column is None else Gate.CHECKING,
            )
            for flow in plan.flows
        }
        for flow in self.flows.values():
            if self.journal.has_run(flow.plan.flow_id):
                flow.gate = Gate.OPEN  # the flow has a run: its delta column is set
        # Only windows left open matter here: on a resume of a million finished windows, the
        # journal skips the rest without building a window or an entry for each.
        wanted = {WindowState.SUBMITTING}
        if options.monitoring:
            wanted |= {WindowState.SUBMITTED, WindowState.RUNNING}
        if options.retry_failed:
            wanted.add(WindowState.FAILED)
        for window, entry in self.journal.items(wanted):
            flow = self.flows[window.flow_id]
            state = entry.state
            if state is WindowState.SUBMITTING:
                job = Job(window, entry.attempt)
                if entry.retrigger:
                    job.mode, job.run_id = RetryMode.RETRIGGER, entry.run_id
                self.doubt.setdefault(window.flow_id, {})[window] = job
                flow.active += 1
            elif state.active and options.monitoring and entry.run_id is not None:
                flow.tracked[entry.run_id] = window
                flow.active += 1
            elif (
                state is WindowState.FAILED
                and options.retry_failed
                and entry.attempt >= options.max_attempts
            ):
                self.budget[window] = entry.attempt  # `retry`: a fresh set of attempts
        if self.doubt:
            log.info("in_doubt_on_resume", windows=sum(len(d) for d in self.doubt.values()))

    # ----------------------------------------------------------------- attempts

    def allowed(self, window: Window) -> int:
        """How many attempts the window may have in all."""
        return self.budget.get(window, 0) + self.options.max_attempts

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
        self.doubt.setdefault(job.window.flow_id, {})[job.window] = job
        self.doubt_added.set()

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


def window_fields(window: Window) -> dict[str, Any]:
    """How a window appears in every log event."""
    return {"flow": window.flow_id, "window_start": window.start, "window_end": window.end}
