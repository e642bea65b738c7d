"""The engine against a scripted fake service: interleavings forced with events, no real time."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from backfill.client import CreatedRun, Page, RunInfo
from backfill.engine import Engine, EngineOptions, ExistingRuns, OnFailure, RetryMode
from backfill.engine import submit as submit_module
from backfill.engine.survey import survey
from backfill.errors import PermanentError, ServerError, TransportError
from backfill.journal import Journal
from backfill.limits import RateLimiter
from backfill.permits import Permits
from backfill.planner import FlowPlan, Order, Plan, Window
from backfill.state import RecordCounts, RunStatus, WindowState

from .conftest import OpenJournal

TABLE = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
FILE = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
T0 = 1704067200


@dataclass
class FakeRun:
    run_id: str
    flow_id: str
    start: int
    end: int
    delta_column: str | None
    status: RunStatus = RunStatus.SCHEDULED
    attempts: int = 1
    created: float = 0.0  # the service's clock when the run was created

    def info(self, *, hide_window: bool = False) -> RunInfo:
        errors = (
            ({"code": "X-1", "message": "it broke"},) if self.status is RunStatus.FAILED else ()
        )
        start, end = (None, None) if hide_window else (self.start, self.end)
        return RunInfo(
            self.run_id, self.flow_id, start, end, self.status, self.status.value, errors
        )


@dataclass
class FakeService:
    """A Flow Service whose every answer the test decides; it records every call."""

    runs: dict[str, FakeRun] = field(default_factory=dict)
    calls: list[tuple[str, object]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, create_run waits for it
    lose_answers: set[int] = field(default_factory=set)  # starts whose answer is lost...
    never_created: set[int] = field(default_factory=set)  # ...of which these created nothing
    refuse: set[int] = field(default_factory=set)  # starts answered with a 400
    statuses: list[RunStatus] = field(default_factory=list)  # statuses runs go to when polled
    retrigger_new: bool = False  # Adobe's documented re-trigger: a new run, same window
    lose_retriggers: int = 0  # this many re-trigger answers are lost (the run is created)
    hide_windows: bool = False  # listed runs do not say their window
    lag: float = 0.0  # a run shows in listings only this long after its creation
    clock: Callable[[], float] = lambda: 0.0  # the service's clock (for the lag)
    clock_offset: float | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def sent(self, count: int) -> None:
        """Return once ``count`` creations have reached the service."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: len(self.created()) >= count)

    async def create_run(
        self, flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun:
        self.calls.append(("create", (flow_id, start, delta_column)))
        async with self._arrivals:
            self._arrivals.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if start in self.refuse:
            raise PermanentError(
                "flow not found", request="POST /runs", status=400, code="1430-400"
            )
        if start in self.lose_answers:
            self.lose_answers.discard(start)
            if start not in self.never_created:
                self._new(flow_id, start, end, delta_column)
            raise TransportError("no answer: reset", request="POST /runs", in_doubt=True)
        return CreatedRun(self._new(flow_id, start, end, delta_column).run_id)

    def _new(self, flow_id: str, start: int, end: int, delta: str | None) -> FakeRun:
        run = FakeRun(f"run-{next(self._ids)}", flow_id, start, end, delta, created=self.clock())
        self.runs[run.run_id] = run
        return run

    async def retrigger(self, run_id: str) -> CreatedRun:
        self.calls.append(("retrigger", run_id))
        run = self.runs[run_id]
        assert run.status is RunStatus.FAILED, "only a failed run may be re-triggered"
        if self.retrigger_new:
            new = self._new(run.flow_id, run.start, run.end, None)
            if self.lose_retriggers:
                self.lose_retriggers -= 1
                raise TransportError("no answer: reset", request="POST /action", in_doubt=True)
            return CreatedRun(new.run_id)
        run.status = RunStatus.SCHEDULED
        run.attempts += 1
        return CreatedRun(run_id)

    async def list_runs(
        self,
        flow_id: str | None = None,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int = 100,
        href: str | None = None,
    ) -> Page:
        self.calls.append(("list", (flow_id, tuple(ids))))
        found = [r for r in self.runs.values() if flow_id is None or r.flow_id == flow_id]
        found = [r for r in found if r.created + self.lag <= self.clock()]
        if ids:
            found = [r for r in found if r.run_id in ids]
            for run in found:  # a poll moves every active run to its next scripted status
                if not run.status.finished and self.statuses:
                    run.status = self.statuses.pop(0)
        return Page([r.info(hide_window=self.hide_windows) for r in found[:limit]], None)

    def created(self) -> list[tuple[str, int, str | None]]:
        return [c[1] for c in self.calls if c[0] == "create"]  # type: ignore[misc]


class JumpClock:
    """Virtual time that jumps ahead by whatever a task sleeps: waits cost nothing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def _plan(*flows: FlowPlan) -> Plan:
    return Plan(flows)


def _hours(flow: str, hours: int, delta: str | None = None) -> FlowPlan:
    return FlowPlan.single(flow, T0, T0 + 3600 * hours, 3600, delta)


def _engine(
    journal: Journal, service: FakeService, clock: JumpClock | None = None, **options: Any
) -> Engine:
    settings = EngineOptions(concurrency=4, poll_interval=0.01, reconcile_delay=0, seed=1)
    settings = replace(settings, **options)
    clock = clock or JumpClock()
    return Engine(journal, service, RateLimiter(None), settings, clock=clock, sleep=clock.sleep)


def _states(journal: Journal, plan: Plan) -> list[WindowState]:
    return [journal.state(w) for w in plan.windows()]


async def test_the_first_run_of_a_table_flow_goes_alone(journal: OpenJournal) -> None:
    plan = _plan(_hours(TABLE, 6, "DOB"))
    ledger = journal(plan)
    service = FakeService(gate=asyncio.Event())
    engine = _engine(ledger, service)
    task = asyncio.ensure_future(engine.run())
    await service.sent(1)
    for _ in range(20):  # however long the first answer takes, nothing else is sent
        await asyncio.sleep(0)
    assert service.created() == [(TABLE, T0, "DOB")]
    service.gate.set()  # type: ignore[union-attr]
    await task
    created = service.created()
    assert [c[2] for c in created] == ["DOB"] + [None] * 5
    assert _states(ledger, plan) == [WindowState.SUBMITTED] * 6


async def test_a_flow_that_already_has_runs_never_sends_the_delta_column(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(TABLE, 3, "DOB"))
    service = FakeService()
    service._new(TABLE, T0 - 3600, T0, "DOB")  # someone ran this flow before us
    await _engine(journal(plan), service).run()
    assert [c[2] for c in service.created()] == [None, None, None]


class _Unfiltered(FakeService):
    """A service that filters after paging: one run a page, another flow's first."""

    async def list_runs(
        self,
        flow_id: str | None = None,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int = 100,
        href: str | None = None,
    ) -> Page:
        self.calls.append(("list", (flow_id, tuple(ids))))
        every = sorted(self.runs.values(), key=lambda run: run.flow_id != FILE)
        at = int(href.rsplit("=", 1)[1]) if href else 0
        more = f"https://service.test/runs?page={at + 1}" if at + 1 < len(every) else None
        return Page([every[at].info()], more)


async def test_the_gate_reads_past_a_first_page_that_holds_only_other_flows_runs(
    journal: OpenJournal,
) -> None:
    """The flow has had a run (on page 2), so its delta column is set already and must never
    be sent."""
    plan = _plan(_hours(TABLE, 3, "DOB"))
    service = _Unfiltered()
    service._new(FILE, T0 - 3600, T0, None)
    service._new(TABLE, T0 - 3600, T0, "DOB")  # someone ran this flow before us
    await _engine(journal(plan), service, existing_runs=ExistingRuns.IGNORE).run()
    assert [c[2] for c in service.created()] == [None, None, None]
    assert [c for c in service.calls if c[0] == "list"][:2] == [("list", (TABLE, ()))] * 2


async def test_the_dry_run_asks_whether_a_flow_has_a_run_as_the_gate_does(
    journal: OpenJournal,
) -> None:
    """The dry run's survey reads past a first page of another flow's runs too: it says the
    delta column is not sent, as the real run then does not send it."""
    plan = _plan(_hours(TABLE, 3, "DOB"))
    service = _Unfiltered()
    service._new(FILE, T0 - 3600, T0, None)
    service._new(TABLE, T0 - 3600, T0, "DOB")
    options = replace(EngineOptions(concurrency=4, seed=1), existing_runs=ExistingRuns.IGNORE)
    view = await survey(journal(plan), service, Permits(RateLimiter(None)), options)
    assert view.has_run == {TABLE: True}
    assert service.created() == []


async def test_a_lost_answer_is_adopted_not_sent_again(journal: OpenJournal) -> None:
    plan = _plan(_hours(FILE, 5))
    service = FakeService(lose_answers={T0 + 3600, T0 + 7200})
    ledger = journal(plan)
    engine = _engine(ledger, service)
    await engine.run()
    starts = [c[1] for c in service.created()]
    assert sorted(starts) == [T0 + 3600 * i for i in range(5)]  # each sent exactly once
    assert len(service.runs) == 5
    assert engine.stats.adopted == 2
    assert {ledger.get(w).run_id for w in plan.windows()} == set(service.runs)  # type: ignore[union-attr]


async def test_a_lost_request_that_created_nothing_is_sent_once_more(journal: OpenJournal) -> None:
    plan = _plan(_hours(FILE, 3))
    service = FakeService(lose_answers={T0}, never_created={T0})
    engine = _engine(journal(plan), service)
    await engine.run()
    assert sorted(c[1] for c in service.created()) == [T0, T0, T0 + 3600, T0 + 7200]
    assert len(service.runs) == 3
    assert engine.stats.resent_after_doubt == 1


async def test_what_a_crash_left_in_doubt_is_settled_before_anything_is_resent(
    journal: OpenJournal, tmp_path: Path
) -> None:
    plan = _plan(_hours(FILE, 4))
    first = journal(plan)
    service = FakeService()
    # The previous process wrote intents, one request reached the service, then it died.
    reached = Window(FILE, T0, T0 + 3600)
    lost = Window(FILE, T0 + 3600, T0 + 7200)
    await first.record(reached, WindowState.SUBMITTING, attempt=1)
    await first.record(lost, WindowState.SUBMITTING, attempt=1)
    service._new(FILE, reached.start, reached.end, None)
    await first.close()
    resumed = Journal.open(tmp_path / "ck.jsonl", plan)
    try:
        await _engine(resumed, service).run()
        assert resumed.get(reached).run_id == "run-0"  # type: ignore[union-attr]
        assert sorted(c[1] for c in service.created()) == [T0 + 3600, T0 + 7200, T0 + 10800]
        assert service.calls[0][0] == "list"  # the listing came before any resend
    finally:
        await resumed.close()


async def test_the_active_run_cap_holds_and_failed_runs_are_retriggered(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 12))
    ledger = journal(plan)
    statuses = [RunStatus.IN_PROGRESS, RunStatus.FAILED, RunStatus.SUCCESS] * 20
    service = FakeService(statuses=statuses)
    active_seen: list[int] = []
    original = service.create_run

    async def counting(
        flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun:
        active_seen.append(sum(not r.status.finished for r in service.runs.values()) + 1)
        return await original(flow_id, start, end, delta_column)

    service.create_run = counting  # type: ignore[method-assign]
    engine = _engine(ledger, service, wait=True, max_active_runs=3, max_attempts=10)
    await engine.run()
    assert max(active_seen) <= 3
    assert _states(ledger, plan) == [WindowState.SUCCEEDED] * 12
    assert len(service.runs) == 12  # re-triggers reuse the run
    assert [c for c in service.calls if c[0] == "retrigger"]


async def test_a_window_out_of_attempts_fails_for_good_and_stop_drains(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 8))
    ledger = journal(plan)
    service = FakeService(statuses=[RunStatus.FAILED] * 100)
    engine = _engine(
        ledger,
        service,
        wait=True,
        max_active_runs=1,
        max_attempts=2,
        on_failure=OnFailure.STOP,
        retry_mode=RetryMode.NEW_RUN,
    )
    outcome = await engine.run()
    assert outcome.stopped is not None
    states = _states(ledger, plan)
    assert states[0] is WindowState.FAILED
    assert states[1:] == [WindowState.PENDING] * 7
    assert len(service.runs) == 2  # the first run and one new-run retry, nothing more
    assert ledger.get(plan.flows[0].window_at(T0)).old_runs == ("run-0",)  # type: ignore[arg-type,union-attr]


async def test_a_permanent_error_stops_everything_and_leaves_the_window_pending(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 4))
    ledger = journal(plan)
    service = FakeService(refuse={T0 + 3600})
    engine = _engine(ledger, service, concurrency=1)
    outcome = await engine.run()
    assert isinstance(outcome.error, PermanentError)
    assert ledger.state(Window(FILE, T0 + 3600, T0 + 7200)) is WindowState.PENDING
    assert ledger.state(Window(FILE, T0 + 10800, T0 + 14400)) is WindowState.PENDING


async def test_stop_lets_requests_in_flight_finish_and_takes_nothing_new(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 10))
    ledger = journal(plan)
    service = FakeService(gate=asyncio.Event())
    engine = _engine(ledger, service, concurrency=3)
    task = asyncio.ensure_future(engine.run())
    await service.sent(3)
    engine.stop("test")
    service.gate.set()  # type: ignore[union-attr]
    outcome = await task
    assert outcome.stopped == "test"
    assert _states(ledger, plan) == [WindowState.SUBMITTED] * 3 + [WindowState.PENDING] * 7


async def test_newest_first_and_two_flows_interleave_by_time(journal: OpenJournal) -> None:
    plan = _plan(_hours(FILE, 3), _hours(TABLE, 3))
    service = FakeService()
    await _engine(journal(plan), service, order=Order.NEWEST_FIRST, concurrency=1).run()
    starts = [c[1] for c in service.created()]
    assert starts == sorted(starts, reverse=True)
    assert {c[0] for c in service.created()} == {FILE, TABLE}


async def test_a_5xx_on_the_listing_is_retried_not_fatal(journal: OpenJournal) -> None:
    plan = _plan(_hours(FILE, 2))
    service = FakeService(lose_answers={T0})
    original = service.list_runs
    failures = [ServerError("busy", request="GET /runs", status=503)]

    async def flaky(*args: object, **kwargs: object) -> Page:
        if failures:
            raise failures.pop()
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    service.list_runs = flaky  # type: ignore[method-assign]
    engine = _engine(journal(plan), service)
    outcome = await engine.run()
    assert outcome.error is None
    assert len(service.runs) == 2


async def test_a_flow_whose_copy_step_has_its_delta_column_gets_none_and_no_gate(
    journal: OpenJournal,
) -> None:
    # The pre-flight saw the column on the flow: no deltaColumn in any run, and no window
    # waits for a first one.
    plan = _plan(_hours(TABLE, 6, "DOB"))
    ledger = journal(plan)
    service = FakeService()
    await _engine(ledger, service, flows_with_delta_column=frozenset({TABLE})).run()
    assert [c[2] for c in service.created()] == [None] * 6


async def test_retry_empty_re_triggers_runs_that_ingested_nothing(
    journal: OpenJournal,
) -> None:
    plan = _plan(_hours(FILE, 2))
    ledger = journal(plan)
    empty = RecordCounts(0, 0, 0)

    class Empty(FakeService):
        def __init__(self) -> None:
            super().__init__()
            self.empties = 1  # the first finished run of each window ingests nothing

        async def list_runs(self, *args: Any, **kwargs: Any) -> Page:
            page = await super().list_runs(*args, **kwargs)
            runs = []
            for run in page.runs:
                fake = self.runs[run.run_id]
                counts = empty if fake.attempts <= self.empties else RecordCounts(5, 5, 0)
                runs.append(replace(run, records=counts))
            return Page(runs, None)

        async def retrigger(self, run_id: str) -> CreatedRun:
            # retry-flows.md: a success that ingested nothing may be re-triggered.
            self.runs[run_id].status = RunStatus.FAILED
            return await super().retrigger(run_id)

    service = Empty()
    service.statuses = [RunStatus.SUCCESS] * 10
    await _engine(ledger, service, wait=True, retry_empty=True, max_attempts=2).run()
    assert _states(ledger, plan) == [WindowState.SUCCEEDED] * 2
    assert len([c for c in service.calls if c[0] == "retrigger"]) == 2
    assert ledger.record_totals() == {"input": 10, "output": 10, "failed": 0}


async def test_workers_keep_at_most_concurrency_in_flight_and_send_each_window_once_in_order(
    journal: OpenJournal,
) -> None:
    """Long-lived workers (issue 19) keep a single dispatcher's promises: never more than
    ``concurrency`` requests out, every window once, picked oldest first."""
    plan = _plan(_hours(FILE, 11))
    ledger = journal(plan)
    service = FakeService(gate=asyncio.Event())
    engine = _engine(ledger, service, concurrency=4)
    task = asyncio.ensure_future(engine.run())
    await service.sent(4)
    for _ in range(20):  # whatever else runs meanwhile, a fifth request never goes out
        await asyncio.sleep(0)
    assert len(service.created()) == 4
    service.gate.set()  # type: ignore[union-attr]
    outcome = await task
    assert outcome.stopped is None
    starts = [c[1] for c in service.created()]
    assert starts == [T0 + 3600 * i for i in range(11)]
    assert _states(ledger, plan) == [WindowState.SUBMITTED] * 11


async def test_while_concurrency_requests_are_out_as_many_again_wait_with_their_intents(
    journal: OpenJournal,
) -> None:
    """Seats (issue 19): ``concurrency`` requests out, and windows whose intents are on disk
    wait for a seat, so a request that ends is followed by one whose intent needs no commit.
    A stop sends those back to pending: they were never sent."""
    plan = _plan(_hours(FILE, 12))
    ledger = journal(plan)
    service = FakeService(gate=asyncio.Event())
    engine = _engine(ledger, service, concurrency=4)
    task = asyncio.ensure_future(engine.run())
    await service.sent(4)
    for _ in range(50):
        if _states(ledger, plan).count(WindowState.SUBMITTING) == 8:
            break
        await asyncio.sleep(0.01)
    assert _states(ledger, plan) == [WindowState.SUBMITTING] * 8 + [WindowState.PENDING] * 4
    assert len(service.created()) == 4, "never more than concurrency requests out"

    engine.stop("test")
    service.gate.set()  # type: ignore[union-attr]
    outcome = await task
    assert outcome.stopped == "test"
    assert len(service.created()) == 4
    assert _states(ledger, plan) == [WindowState.SUBMITTED] * 4 + [WindowState.PENDING] * 8


async def test_an_intent_made_while_every_seat_is_busy_lets_its_commit_gather(
    journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slack an intent passes to the journal (issue 19): none while a seat is free (the
    request goes as soon as the intent is on disk), and while every seat is busy and windows
    wait for one, some, at most ``_MAX_GATHER``. Real time: seats come free 5 ms apart."""
    plan = _plan(_hours(FILE, 40))
    ledger = journal(plan)

    class Slow(FakeService):
        async def create_run(
            self, flow_id: str, start: int, end: int, delta_column: str | None = None
        ) -> CreatedRun:
            await asyncio.sleep(0.005)
            return await super().create_run(flow_id, start, end, delta_column)

    gathers: list[float] = []
    record = ledger.record

    async def spy(window: Window, state: WindowState, **kwargs: Any) -> None:
        if state is WindowState.SUBMITTING:
            gathers.append(kwargs.get("gather", 0.0))
        await record(window, state, **kwargs)

    monkeypatch.setattr(ledger, "record", spy)
    service = Slow()
    options = EngineOptions(concurrency=4, poll_interval=0.01, reconcile_delay=0, seed=1)
    outcome = await Engine(ledger, service, RateLimiter(None), options).run()

    assert outcome.stopped is None
    assert [c[1] for c in service.created()] == [T0 + 3600 * i for i in range(40)]
    assert gathers[:4] == [0.0] * 4, "seats free: nothing to wait for"
    assert any(g > 0 for g in gathers), "seats busy and windows waiting: the commit gathers"
    assert all(0 <= g <= submit_module._MAX_GATHER for g in gathers)
