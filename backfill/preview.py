"""What a run is about to do, counted before it does it: the start line and ``run --dry-run``.

Pure: it reads the plan and the checkpoint's entries (never writes) and applies the same rules
as the engine's dispatcher, so its counts are what the run then sends:

- a window with no record (or back to pending) gets a new run;
- a failed window gets another attempt while it has attempts left (``retry``: always,
  with a fresh ``--max-attempts``), by re-trigger or by a new run (``--retry-mode``);
- a window left ``submitting`` (answer lost) is looked up at the service before anything
  is sent again: it may or may not need a run;
- a window the checkpoint never saw that the service already has a run for is adopted, not
  sent (``--existing-runs adopt``): done when one of its runs is live; when every one failed,
  each counts as an attempt and the window gets another while attempts are left;
- every other window (submitted, running, succeeded, or failed with no attempt left) is done.

Without the service's answer (the real run's start line and its question, counted before
adoption has listed anything), a new window the checkpoint never saw is counted as a new run
and as ``unchecked``: the run looks it up first, so the counts are then at most what it sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .choices import RetryMode
from .client import RunInfo
from .journal import Journal
from .planner import FlowPlan, Order, Window, format_time
from .state import RunStatus, WindowState

__all__ = ["FlowPreview", "Preview", "ServiceView", "preview"]


@dataclass(slots=True)
class ServiceView:
    """What the service said, read-only: whether each flow has a run, the runs it holds for
    windows (listed only for flows with windows the checkpoint never saw), and the flows whose
    Copy transformation already has its delta column (the pre-flight's ``GET /flows/{id}``)."""

    has_run: dict[str, bool] = field(default_factory=dict)
    runs: dict[str, dict[tuple[int, int], list[RunInfo]]] = field(default_factory=dict)
    column_set: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class FlowPreview:
    """One flow's windows: planned, done, and what this run will send."""

    flow_id: str
    planned: int
    done: int
    at_service: int  # windows the checkpoint never saw whose run the service already has
    answer_lost: int
    new_runs: int
    retriggers: int
    first: Window | None
    last: Window | None
    delta_column: str | None
    flow_has_run: bool
    owns_first: bool = True  # this shard owns the flow's first window (sends the column)
    # Of the new runs, windows the checkpoint never saw whose runs at the service were not
    # looked up: with --existing-runs adopt, the run lists them first and sends none it has.
    unchecked: int = 0
    column_at_service: bool = False  # the flow's Copy transformation has its delta column

    @property
    def to_send(self) -> int:
        """Requests this run will send (besides the lookups of lost answers)."""
        return self.new_runs + self.retriggers

    @property
    def sends_delta_column(self) -> bool:
        """The delta column goes with the flow's first run only."""
        return (
            self.delta_column is not None
            and not self.column_at_service
            and not self.flow_has_run
            and self.owns_first
            and self.new_runs > 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow_id": self.flow_id,
            "planned": self.planned,
            "done": self.done,
            "at_service": self.at_service,
            "answer_lost": self.answer_lost,
            "to_send": self.to_send,
            "new_runs": self.new_runs,
            "retriggers": self.retriggers,
            "unchecked": self.unchecked,
            "first": _window(self.first),
            "last": _window(self.last),
            "delta_column": self.delta_column,
            "sends_delta_column": self.sends_delta_column,
            "delta_column_at_service": self.column_at_service,
        }


@dataclass(frozen=True, slots=True)
class Preview:
    """Every flow's preview."""

    flows: tuple[FlowPreview, ...]

    @property
    def new_runs(self) -> int:
        return sum(f.new_runs for f in self.flows)

    @property
    def to_send(self) -> int:
        return sum(f.to_send for f in self.flows)

    def totals(self) -> dict[str, int]:
        return {
            "planned": sum(f.planned for f in self.flows),
            "done": sum(f.done for f in self.flows),
            "at_service": sum(f.at_service for f in self.flows),
            "answer_lost": sum(f.answer_lost for f in self.flows),
            "to_send": self.to_send,
            "new_runs": self.new_runs,
            "retriggers": sum(f.retriggers for f in self.flows),
            "unchecked": sum(f.unchecked for f in self.flows),
        }


def preview(
    journal: Journal,
    *,
    order: Order,
    max_attempts: int,
    retry_failed: bool,
    retry_mode: RetryMode,
    retry_empty: bool = False,
    service: ServiceView | None = None,
) -> Preview:
    """What a run with these options would send, flow by flow, in the order it sends them.

    ``service``: what the service said (see ``ServiceView``); without it, only the checkpoint
    is asked.
    """
    shard = journal.plan.shard
    service = service or ServiceView()
    return Preview(
        tuple(
            _flow_preview(
                journal,
                flow,
                flow.windows(order, shard),
                order=order,
                max_attempts=max_attempts,
                retry_failed=retry_failed,
                retry_mode=retry_mode,
                retry_empty=retry_empty,
                service_has_run=service.has_run.get(flow.flow_id, False),
                existing=service.runs.get(flow.flow_id),
                column_at_service=flow.flow_id in service.column_set,
            )
            for flow in journal.plan.flows
        )
    )


# Windows the service has a run of that did not fail: nothing to send, whatever it holds.
_SETTLED = frozenset(
    (
        WindowState.SUBMITTED,
        WindowState.RUNNING,
        WindowState.SUCCEEDED,
        WindowState.EMPTY,
        WindowState.PARTIAL,
    )
)


def _flow_preview(
    journal: Journal,
    flow: FlowPlan,
    windows: Any,
    *,
    order: Order,
    max_attempts: int,
    retry_failed: bool,
    retry_mode: RetryMode,
    retry_empty: bool,
    service_has_run: bool,
    existing: dict[tuple[int, int], list[RunInfo]] | None,
    column_at_service: bool = False,
) -> FlowPreview:
    planned = done = at_service = lost = new = retriggers = unchecked = never_seen = 0
    first: Window | None = None
    last: Window | None = None
    has_run = service_has_run or journal.has_run(flow.flow_id)
    counts = journal.flow_counts(flow.flow_id)
    # --retry-empty (`retry --empty`): a run that ingested nothing is run again, like a failed one.
    rerun = {WindowState.FAILED, WindowState.EMPTY} if retry_empty else {WindowState.FAILED}
    settled = _SETTLED - rerun
    waiting = counts[WindowState.PENDING] + sum(counts[again] for again in rerun)
    if not existing and not waiting:
        # Nothing to send: the counts say it all, and the plan is not walked.
        windows = ()
        planned = flow.count(journal.plan.shard)
        lost = counts[WindowState.SUBMITTING]
        done = planned - lost
    state_of = journal.state
    for window in windows:
        planned += 1
        state = state_of(window)  # a dict read: an entry is built only for a failed window
        if state in settled:
            done += 1
            continue
        entry = journal.get(window) if state in rerun else None
        runs = existing.get((window.start, window.end)) if existing else None
        if runs and state is WindowState.PENDING:
            has_run = True
            if any(run.status is not RunStatus.FAILED for run in runs):
                at_service += 1  # adopted: a live run ingests it
                continue
            if len(runs) >= max_attempts:
                at_service += 1  # adopted as failed for good: its attempts are used up
                continue
            if retry_mode is RetryMode.RETRIGGER:
                retriggers += 1
            else:
                new += 1
        elif state is WindowState.PENDING:
            new += 1
            if existing is None:
                unchecked += 1  # the service's runs of this flow were not looked at
                never_seen += journal.get(window) is None
        elif entry is not None and (retry_failed or entry.attempt < max_attempts):
            if retry_mode is RetryMode.RETRIGGER and entry.run_id is not None:
                retriggers += 1
            else:
                new += 1
        elif state is WindowState.SUBMITTING:
            lost += 1
            continue
        else:
            done += 1
            continue
        if first is None:
            first = window
        last = window
    if not never_seen:
        unchecked = 0  # the checkpoint knows every window: the run lists nothing first
    shard = journal.plan.shard
    first_of_flow = next(flow.windows(order), None)
    owns_first = first_of_flow is None or (
        flow.owner(first_of_flow.start, shard.count) == shard.index
    )
    return FlowPreview(
        flow_id=flow.flow_id,
        planned=planned,
        done=done,
        at_service=at_service,
        answer_lost=lost,
        new_runs=new,
        retriggers=retriggers,
        first=first,
        last=last,
        delta_column=flow.delta_column,
        flow_has_run=has_run,
        owns_first=owns_first,
        column_at_service=column_at_service,
        unchecked=unchecked,
    )


def _window(window: Window | None) -> dict[str, Any] | None:
    if window is None:
        return None
    return {
        "start": window.start,
        "end": window.end,
        "start_time": format_time(window.start),
        "end_time": format_time(window.end),
    }
