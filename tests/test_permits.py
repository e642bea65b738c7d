"""Permits woken by a stop, the retry budget, and the engine's bounded pauses (issue 14)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from backfill.client import CreatedRun
from backfill.engine import Engine, EngineOptions
from backfill.errors import (
    ApiUnavailable,
    RateLimited,
    RequestNotSent,
    ServerError,
    TransportError,
)
from backfill.journal import Journal
from backfill.limits import Backoff, Rate, RateLimiter
from backfill.permits import Permits
from backfill.planner import FlowPlan, Plan
from backfill.retry import Retries, retrying
from backfill.state import WindowState

from .test_engine import FILE, T0, FakeService
from .test_limits import SteppingClock

HOURLY = Rate(1.0, 3600.0)  # the first permit now, the next in an hour


async def _parked(permits: Permits, *, acts: bool) -> asyncio.Task[None]:
    """A task waiting for a permit (the one before it took the only free one)."""
    task = asyncio.create_task(permits.take("POST /runs" if acts else "GET /runs", acts=acts))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    return task


# ------------------------------------------------------------------------------ Permits


async def test_close_wakes_every_waiter_at_once_and_nothing_is_sent() -> None:
    permits = Permits(RateLimiter(HOURLY))
    await permits.take("POST /runs", acts=True)
    waiters = [await _parked(permits, acts=acts) for acts in (True, False, True)]

    permits.close()

    for task in waiters:
        with pytest.raises(RequestNotSent):
            await task
    with pytest.raises(RequestNotSent):
        await permits.take("GET /runs", acts=False)


async def test_halt_wakes_requests_that_act_and_lets_listings_wait_on() -> None:
    permits = Permits(RateLimiter(HOURLY))
    await permits.take("GET /runs", acts=False)
    post = await _parked(permits, acts=True)
    listing = await _parked(permits, acts=False)

    permits.halt()

    with pytest.raises(RequestNotSent):
        await post
    await asyncio.sleep(0)
    assert not listing.done()  # still waiting for its slot, as it should
    listing.cancel()


async def test_a_cancellation_from_outside_is_still_a_cancellation() -> None:
    permits = Permits(RateLimiter(HOURLY))
    await permits.take("GET /runs", acts=False)
    task = await _parked(permits, acts=False)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------ Retries


def test_the_budget_counts_failures_backs_off_and_is_spent_with_exit_75() -> None:
    retries = Retries(Backoff(max_retries=2))
    busy = RateLimited("slow down", request="GET /runs", status=429)
    down = ServerError("down", request="GET /runs", status=503)

    assert [retries.failed(down), retries.failed(busy), retries.failed(down)] == [1, 2, 3]
    with pytest.raises(ApiUnavailable, match="gave up after 2 retries") as info:
        retries.failed(down)
    assert info.value.exit_code == 75
    retries.succeeded()
    assert retries.failed(down) == 1


def test_429s_never_spend_the_budget() -> None:
    retries = Retries(Backoff(max_retries=1))
    busy = RateLimited("slow down", request="POST /runs", status=429)
    for _ in range(50):
        retries.failed(busy)
    assert retries.count == 0


async def test_retrying_a_token_fetch_sleeps_with_backoff_then_gives_up() -> None:
    clock = SteppingClock()
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        raise TransportError("IMS unreachable", request="POST /ims/token/v3", in_doubt=False)

    with pytest.raises(ApiUnavailable, match="IMS unreachable; gave up after 3 retries"):
        await retrying(fetch, Backoff(base=1.0, cap=8.0, max_retries=3), clock.sleep, _rng())
    assert calls == 4
    assert len(clock.sleeps) == 3
    assert all(0 < s <= 8.0 for s in clock.sleeps)


def _rng() -> random.Random:
    return random.Random(7)


# ------------------------------------------------------------- Retry-After in the engine


@dataclass
class Throttling(FakeService):
    """Answers the first creation 429 with a Retry-After of ``wait`` seconds."""

    wait: float = 0.0
    throttled: list[int] = field(default_factory=list)

    async def create_run(
        self, flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun:
        if not self.throttled:
            self.throttled.append(start)
            raise RateLimited(
                "Too many requests", request="POST /runs", status=429, retry_after=self.wait
            )
        return await super().create_run(flow_id, start, end, delta_column)


def _plan(hours: int) -> Plan:
    return Plan((FlowPlan.single(FILE, T0, T0 + 3600 * hours, 3600),))


async def _run(tmp_path: Path, service: FakeService, hours: int) -> tuple[Engine, Journal]:
    clock = SteppingClock()
    journal = Journal.open(tmp_path / "ck.jsonl", _plan(hours))
    limiter = RateLimiter(None, clock=clock.clock, sleep=clock.sleep)
    options = EngineOptions(concurrency=1, reconcile_delay=0, seed=1, max_retry_after=900.0)
    engine = Engine(journal, service, limiter, options, sleep=clock.sleep)
    return engine, journal


async def test_a_pause_longer_than_10_s_is_a_warning_with_its_reason_and_end(
    tmp_path: Path,
) -> None:
    engine, journal = await _run(tmp_path, service := Throttling(wait=120.0), 2)
    try:
        with capture_logs() as logs:
            outcome = await engine.run()
        states = [journal.state(w) for w in journal.plan.windows()]
    finally:
        await journal.close()
    assert outcome.error is None
    assert states == [WindowState.SUBMITTED] * 2
    assert len(service.created()) == 2
    pauses = [e for e in logs if e["event"] == "pausing_requests"]
    assert len(pauses) == 1
    assert pauses[0]["log_level"] == "warning"
    assert pauses[0]["seconds"] == 120.0
    assert "Retry-After" in pauses[0]["reason"]
    assert pauses[0]["until"].endswith("Z")


async def test_a_retry_after_beyond_the_bound_stops_with_75_and_sends_nothing_more(
    tmp_path: Path,
) -> None:
    engine, journal = await _run(tmp_path, service := Throttling(wait=86400.0), 3)
    try:
        outcome = await engine.run()
        states = [journal.state(w) for w in journal.plan.windows()]
    finally:
        await journal.close()
    assert isinstance(outcome.error, ApiUnavailable)
    assert "86400 s" in str(outcome.error)
    assert "--max-retry-after 900 s" in str(outcome.error)
    assert service.created() == []
    assert states == [WindowState.PENDING] * 3  # the throttled request was never accepted


# ------------------------------------------------------------------ seats (issue 19)


async def test_a_free_seat_is_taken_without_waiting_and_a_stop_refuses_it() -> None:
    permits = Permits(RateLimiter(None))
    seats = asyncio.Semaphore(2)
    await permits.seat("POST /runs", seats)
    await permits.seat("POST /runs", seats)
    assert seats.locked()
    seats.release()

    permits.halt()  # no request that acts may go out: not even with a seat free
    with pytest.raises(RequestNotSent):
        await permits.seat("POST /runs", seats)
    assert not seats.locked(), "a refused request holds no seat"


@pytest.mark.parametrize("stop", ["close", "halt"])
async def test_a_stop_wakes_every_request_waiting_for_a_seat_and_none_holds_one(stop: str) -> None:
    permits = Permits(RateLimiter(None))
    seats = asyncio.Semaphore(1)
    await permits.seat("POST /runs", seats)  # the only seat, held by a request in flight
    waiting = [asyncio.create_task(permits.seat("POST /runs", seats)) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)

    getattr(permits, stop)()

    for task in waiting:
        with pytest.raises(RequestNotSent):
            await task
    seats.release()  # the request in flight ends: its seat is the only one that was taken
    await seats.acquire()  # exactly one seat: no seat was leaked or made up
    assert seats.locked()


async def test_a_seat_that_comes_just_as_the_stop_does_is_given_back() -> None:
    permits = Permits(RateLimiter(None))
    seats = asyncio.Semaphore(1)
    await permits.seat("POST /runs", seats)
    waiter = asyncio.create_task(permits.seat("POST /runs", seats))
    for _ in range(5):
        await asyncio.sleep(0)
    seats.release()  # the seat is handed to the waiter...
    permits.close()  # ...and the stop comes before it resumes
    with pytest.raises(RequestNotSent):
        await waiter
    await seats.acquire()
    assert seats.locked()
