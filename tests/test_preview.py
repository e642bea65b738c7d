"""The preview: what a run would send, by the dispatcher's own rules, from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backfill.engine import RetryMode
from backfill.journal import Journal
from backfill.planner import FlowPlan, Order, Plan, Shard
from backfill.preview import ServiceView, preview
from backfill.state import WindowState

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
START = 1704067200


def _plan(shard: Shard | None = None, delta: str | None = "updated_at") -> Plan:
    return Plan((FlowPlan.single(FLOW, START, START + 6 * 3600, 3600, delta),), shard or Shard())


async def _journal(path: Path) -> Journal:
    """Window 0 succeeded, 1 failed once (a run), 2 failed twice, 3 lost its answer."""
    plan = _plan()
    journal = Journal.open(path, plan)
    w = list(plan.windows())
    for index, run_id, attempts in ((0, "a", 1), (1, "b", 1), (2, "c", 2)):
        for attempt in range(1, attempts + 1):
            await journal.record(w[index], WindowState.SUBMITTING, attempt=attempt)
            await journal.record(w[index], WindowState.SUBMITTED, attempt=attempt, run_id=run_id)
            if index:
                await journal.record(w[index], WindowState.FAILED)
            else:
                await journal.record(w[index], WindowState.SUCCEEDED)
    await journal.record(w[3], WindowState.SUBMITTING, attempt=1)
    await journal.close()
    return Journal.open(path, None, readonly=True)


async def test_counts_follow_the_dispatcher(tmp_path: Path) -> None:
    journal = await _journal(tmp_path / "ck.jsonl")
    (flow,) = preview(
        journal,
        order=Order.OLDEST_FIRST,
        max_attempts=2,
        retry_failed=False,
        retry_mode=RetryMode.RETRIGGER,
    ).flows
    # 0 succeeded and 2 (out of attempts) are done; 1 is re-triggered; 4 and 5 are new.
    assert (flow.planned, flow.done, flow.answer_lost) == (6, 2, 1)
    assert (flow.retriggers, flow.new_runs, flow.to_send) == (1, 2, 3)
    assert flow.first is not None
    assert flow.first.start == START + 3600
    assert flow.last is not None
    assert flow.last.start == START + 5 * 3600
    assert flow.sends_delta_column is False  # the flow has runs


async def test_retry_gives_every_failed_window_another_attempt(tmp_path: Path) -> None:
    journal = await _journal(tmp_path / "ck.jsonl")
    (flow,) = preview(
        journal,
        order=Order.NEWEST_FIRST,
        max_attempts=2,
        retry_failed=True,
        retry_mode=RetryMode.NEW_RUN,
    ).flows
    assert (flow.retriggers, flow.new_runs, flow.done) == (0, 4, 1)
    assert flow.first is not None
    assert flow.first.start == START + 5 * 3600  # newest first


async def test_the_delta_column_goes_with_the_first_run_of_the_owning_shard(
    tmp_path: Path,
) -> None:
    senders = []
    for index in range(3):
        plan = _plan(Shard(index, 3))
        journal = Journal.open(tmp_path / f"ck-{index}.jsonl", plan, readonly=True)
        (flow,) = preview(
            journal,
            order=Order.OLDEST_FIRST,
            max_attempts=3,
            retry_failed=False,
            retry_mode=RetryMode.RETRIGGER,
        ).flows
        senders.append(flow.sends_delta_column)
    assert senders.count(True) == 1


async def test_windows_never_seen_are_unchecked_until_the_service_was_asked(
    tmp_path: Path,
) -> None:
    """``unchecked``: new runs the real run first looks up at the service (adoption)."""
    fresh = Journal.open(tmp_path / "fresh.jsonl", _plan(), readonly=True)
    options: dict[str, Any] = {
        "order": Order.OLDEST_FIRST,
        "max_attempts": 2,
        "retry_failed": False,
        "retry_mode": RetryMode.RETRIGGER,
    }
    (flow,) = preview(fresh, **options).flows
    assert (flow.new_runs, flow.unchecked) == (6, 6)
    (listed,) = preview(fresh, **options, service=ServiceView(runs={FLOW: {}})).flows
    assert (listed.new_runs, listed.unchecked) == (6, 0)  # looked: nothing held, all sent
    # A checkpoint that knows windows 0..3 still never saw 4 and 5.
    (known,) = preview(await _journal(tmp_path / "ck.jsonl"), **options).flows
    assert (known.new_runs, known.unchecked) == (2, 2)
    # Once every window is on record (each back to pending), the run lists nothing first.
    plan = _plan()
    journal = Journal.open(tmp_path / "all.jsonl", plan)
    for window in plan.windows():
        await journal.record(window, WindowState.SUBMITTING, attempt=1)
        await journal.record(window, WindowState.PENDING)
    await journal.close()
    (whole,) = preview(Journal.open(tmp_path / "all.jsonl", None, readonly=True), **options).flows
    assert (whole.new_runs, whole.unchecked) == (6, 0)
