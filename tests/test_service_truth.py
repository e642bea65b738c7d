"""The service is the source of truth: the engine against a fake service that behaves as
Adobe documents it (re-triggers create runs, listings lag or hide windows), in virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.client import CreatedRun
from backfill.engine import ExistingRuns, RetryMode
from backfill.engine.board import Job
from backfill.engine.reconcile import created_since_ms
from backfill.journal import Journal
from backfill.planner import Window
from backfill.state import RunStatus, WindowState

from .conftest import OpenJournal
from .test_engine import (
    FILE,
    T0,
    FakeService,
    JumpClock,
    _engine,
    _hours,
    _plan,
    _states,
)


def _live_runs(service: FakeService, window: Window) -> list[str]:
    return [
        r.run_id
        for r in service.runs.values()
        if (r.flow_id, r.start, r.end) == window and r.status is not RunStatus.FAILED
    ]


async def test_a_lost_retrigger_answer_adopts_the_new_run_and_stays_within_attempts(
    journal: OpenJournal,
) -> None:
    """retry-flows.md: a re-trigger answers a *new* run id. Every answer lost: still bounded."""
    plan = _plan(_hours(FILE, 3))
    ledger = journal(plan)
    failed_then_ok = [RunStatus.FAILED] * 3 + [RunStatus.SUCCESS] * 20
    service = FakeService(statuses=failed_then_ok, retrigger_new=True, lose_retriggers=100)
    engine = _engine(ledger, service, wait=True, max_attempts=3, reconcile_settle=10)
    await engine.run()
    for window in plan.windows():
        runs = [r for r in service.runs.values() if (r.flow_id, r.start, r.end) == window]
        assert len(runs) <= 3  # never past --max-attempts
        assert len(_live_runs(service, window)) <= 1
        entry = ledger.get(window)
        assert entry is not None
        if entry.state is WindowState.SUCCEEDED:
            assert entry.run_id in _live_runs(service, window)  # the service's live run


async def test_a_lagging_listing_is_looked_at_until_it_settles(journal: OpenJournal) -> None:
    """A run shows in listings 5 s after its creation: one look would resend (a duplicate)."""
    plan = _plan(_hours(FILE, 3))
    clock = JumpClock()
    service = FakeService(lose_answers={T0 + 3600}, lag=5.0, clock=clock)
    ledger = journal(plan)
    engine = _engine(ledger, service, clock=clock, reconcile_settle=60)
    await engine.run()
    assert sorted(c[1] for c in service.created()) == [T0, T0 + 3600, T0 + 7200]
    assert len(service.runs) == 3
    assert engine.stats.adopted == 1


async def test_no_run_after_the_settle_period_sends_the_window_again(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 2))
    clock = JumpClock()
    service = FakeService(lose_answers={T0}, never_created={T0}, clock=clock)
    engine = _engine(journal(plan), service, clock=clock, reconcile_settle=60)
    started = clock.now
    await engine.run()
    assert len(service.runs) == 2
    assert clock.now - started >= 60  # concluded only once the settle period was over
    lists = [c for c in service.calls if c[0] == "list"]
    assert len(lists) >= 2  # never after one look


async def test_runs_without_a_readable_window_keep_the_window_in_doubt(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 2))
    clock = JumpClock()
    service = FakeService(lose_answers={T0}, hide_windows=True, clock=clock)
    ledger = journal(plan)
    engine = _engine(ledger, service, clock=clock, existing_runs=ExistingRuns.IGNORE)
    await engine.run()
    window = Window(FILE, T0, T0 + 3600)
    assert [c[1] for c in service.created()].count(T0) == 1  # never sent again
    entry = ledger.get(window)
    assert entry is not None
    assert entry.state is WindowState.SUBMITTING
    assert entry.candidates == ("run-0", "run-1")  # every run it might be, on record
    assert engine.stats.left_in_doubt == 1


async def test_a_new_checkpoint_adopts_what_the_service_already_has(
    journal: OpenJournal, tmp_path: Path
) -> None:
    plan = _plan(_hours(FILE, 6))
    service = FakeService()
    for i in range(4):  # an earlier backfill, under another checkpoint, sent four windows
        service._new(FILE, T0 + 3600 * i, T0 + 3600 * (i + 1), None)
    service.runs["run-2"].status = RunStatus.FAILED
    ledger = journal(plan)
    engine = _engine(ledger, service, wait=True, max_attempts=3)
    service.statuses = [RunStatus.SUCCESS] * 20
    await engine.run()
    creates = [c[1] for c in service.created()]
    assert creates == [T0 + 4 * 3600, T0 + 5 * 3600]  # only the two it never had
    assert engine.stats.adopted_existing == 4
    failed = ledger.get(Window(FILE, T0 + 7200, T0 + 10800))
    assert failed is not None
    assert failed.attempt == 2  # the failed run counted as an attempt, then a re-trigger
    assert _states(ledger, plan) == [WindowState.SUCCEEDED] * 6


async def test_a_partial_success_is_adopted_over_a_failed_run_and_not_sent_again(
    journal: OpenJournal,
) -> None:
    """A run that ingested with some failed records is a success: it wins over a failed run
    of the same window, listed first, and the window is neither re-triggered nor sent."""
    plan = _plan(_hours(FILE, 2))
    service = FakeService()
    failed = service._new(FILE, T0, T0 + 3600, None)
    failed.status = RunStatus.FAILED
    partial = service._new(FILE, T0, T0 + 3600, None)
    partial.status = RunStatus.PARTIAL_SUCCESS
    ledger = journal(plan)
    engine = _engine(ledger, service, max_attempts=3)
    await engine.run()
    entry = ledger.get(Window(FILE, T0, T0 + 3600))
    assert entry is not None
    assert entry.run_id == partial.run_id
    assert entry.state is not WindowState.FAILED
    assert [c for c in service.calls if c[0] == "retrigger"] == []
    assert [c[1] for c in service.created()] == [T0 + 3600]  # only the window it never had


async def test_a_second_run_with_an_empty_checkpoint_sends_nothing(
    journal: OpenJournal, tmp_path: Path
) -> None:
    plan = _plan(_hours(FILE, 5))
    service = FakeService()
    await _engine(journal(plan), service).run()
    assert len(service.created()) == 5
    again = Journal.open(tmp_path / "other.jsonl", plan)
    try:
        engine = _engine(again, service)
        await engine.run()
        assert len(service.created()) == 5  # not one more POST
        assert engine.stats.adopted_existing == 5
        assert _states(again, plan) == [WindowState.SUBMITTED] * 5
    finally:
        await again.close()


async def test_two_live_runs_for_one_window_are_recorded_not_silent(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 2))
    service = FakeService()
    service._new(FILE, T0, T0 + 3600, None)
    service._new(FILE, T0, T0 + 3600, None)  # someone else ran it too
    ledger = journal(plan)
    engine = _engine(ledger, service)
    await engine.run()
    entry = ledger.get(Window(FILE, T0, T0 + 3600))
    assert entry is not None
    assert {entry.run_id, *entry.duplicates} == {"run-0", "run-1"}
    assert engine.stats.duplicates_found == 1


async def test_one_run_id_answered_for_many_windows_marks_none_of_them_done(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 4))
    service = FakeService()
    original = service.create_run

    async def same_id(
        flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun:
        created = await original(flow_id, start, end, delta_column)
        return created if start == T0 else CreatedRun("run-0")  # a broken service

    service.create_run = same_id  # type: ignore[method-assign]
    ledger = journal(plan)
    engine = _engine(ledger, service, reconcile_settle=5)
    await engine.run()
    run_ids = [e.run_id for w in plan.windows() if (e := ledger.get(w)) is not None]
    assert run_ids.count("run-0") == 1  # one window's, never another's
    assert engine.stats.foreign_runs >= 3
    for window in list(plan.windows())[1:]:  # adopted by their own window's run instead
        entry = ledger.get(window)
        assert entry is not None
        assert entry.run_id != "run-0"


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (None, None),  # no Date header seen: no time filter at all
        (0.0, (T0 - 900) * 1000),
        (-950.0, (T0 - 950 - 900) * 1000),  # the service's clock is behind: look further back
        (1200.0, (T0 - 900) * 1000),  # ahead: never narrowed
    ],
)
def test_created_since_is_in_the_services_time(offset: float | None, expected: int | None) -> None:
    assert created_since_ms(float(T0), offset, 900.0) == expected


def test_a_retrigger_job_is_a_retrigger() -> None:
    job = Job(Window(FILE, T0, T0 + 1), 2, RetryMode.RETRIGGER, "run-9")
    assert job.mode is RetryMode.RETRIGGER
    assert job.looks == 0
