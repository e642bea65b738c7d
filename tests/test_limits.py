"""The rate limiter, pauses and backoff, on a fake clock: exact spacing, no real sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.limits import Backoff, Rate, RateLimiter

EPSILON = 1e-9


class SteppingClock:
    """A clock that a sleep advances by exactly what was asked (plus an optional overshoot)."""

    def __init__(self, overshoot: float = 0.0) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.overshoot = overshoot

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter never sleeps for nothing"
        self.sleeps.append(seconds)
        self.now += seconds + self.overshoot


class Scheduler:
    """A fake event-loop clock for concurrent sleepers: time moves only when the test says.

    ``sleep`` parks the caller until ``advance`` (or ``jump``) reaches its deadline; like trio's
    MockClock, ``run`` jumps straight to the next deadline whenever every task is parked.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    @staticmethod
    async def settle() -> None:
        """Let every runnable task run until it parks again."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, until: float) -> None:
        """Move time to ``until``, waking sleepers one by one at their own deadlines."""
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= until:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            future.set_result(None)
            await self.settle()
        self.now = max(self.now, until)

    async def jump(self, until: float) -> None:
        """A stalled loop: time moves to ``until`` and every sleeper due wakes at that moment."""
        await self.settle()
        self.now = until
        while self._sleepers and self._sleepers[0][0] <= until:
            heapq.heappop(self._sleepers)[2].set_result(None)
        await self.settle()

    async def run(self, tasks: list[asyncio.Task[None]]) -> None:
        """Autojump: whenever every task is parked, go to the next deadline."""
        await self.settle()
        while not all(task.done() for task in tasks):
            assert self._sleepers, "deadlock: tasks wait but nobody sleeps"
            await self.advance(self._sleepers[0][0])
        for task in tasks:
            task.result()


async def granted_at(limiter: RateLimiter, scheduler: Scheduler, grants: list[float]) -> None:
    await limiter.acquire()
    grants.append(scheduler.now)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --------------------------------------------------------------------------- Rate


@pytest.mark.parametrize(
    ("text", "per_second", "interval"),
    [
        ("10/s", 10.0, 0.1),
        ("600/min", 10.0, 0.1),
        ("36000/h", 10.0, 0.1),
        ("0.5/s", 0.5, 2.0),
        (" 4 / sec ", 4.0, 0.25),
        ("120/minute", 2.0, 0.5),
        ("1/hour", 1 / 3600, 3600.0),
    ],
)
def test_rate_parse(text: str, per_second: float, interval: float) -> None:
    rate = Rate.parse(text)

    assert rate.per_second == pytest.approx(per_second)
    assert rate.interval == pytest.approx(interval)


@pytest.mark.parametrize(
    "text", ["10", "10/sec2", "0/s", "0.0/min", "-1/s", "abc", "", "10/d", "/s"]
)
def test_rate_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate.*10/s"):
        Rate.parse(text)


@pytest.mark.parametrize(("permits", "period"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -1.0)])
def test_rate_must_be_positive(permits: float, period: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Rate(permits, period)


def test_rate_divided_shares_the_rate() -> None:
    rate = Rate.parse("600/min")

    share = rate.divided(4)

    assert share.per_second == pytest.approx(2.5)
    assert share.interval == pytest.approx(0.4)
    assert share.per_second * 4 == pytest.approx(rate.per_second)
    assert str(Rate.parse("600/min")) == "10/s"


# -------------------------------------------------------------------- RateLimiter


def spacing(rate: Rate) -> float:
    """An interval plus 1 % of margin."""
    return rate.interval * 1.01


@pytest.mark.parametrize("text", ["4/s", "10/s", "0.5/s", "600/min", "7/s"])
async def test_permits_are_spaced_one_interval_and_a_margin_apart(text: str) -> None:
    rate = Rate.parse(text)
    fake = SteppingClock()
    limiter = RateLimiter(rate, clock=fake.clock, sleep=fake.sleep)
    grants: list[float] = []

    for _ in range(50):
        await limiter.acquire()
        grants.append(fake.now)

    assert grants[0] == 0.0, "the first permit is immediate"
    assert gaps(grants) == pytest.approx([spacing(rate)] * 49, rel=1e-9)
    assert len(fake.sleeps) == 49
    assert limiter.waited == pytest.approx(grants[-1])


async def test_four_a_second_is_exact() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(Rate(4.0), clock=fake.clock, sleep=fake.sleep)
    grants: list[float] = []

    for _ in range(9):
        await limiter.acquire()
        grants.append(fake.now)

    # Every interval is 1 % longer: the fifth permit is 1 s + 10 ms after the first.
    assert grants == pytest.approx([0.0, 0.2525, 0.505, 0.7575, 1.01, 1.2625, 1.515, 1.7675, 2.02])


async def test_a_caller_that_comes_late_is_not_made_to_wait() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(Rate(1.0), clock=fake.clock, sleep=fake.sleep)

    await limiter.acquire()
    fake.now = 5.0  # idle for a while: no burst is owed, and no wait either
    await limiter.acquire()
    await limiter.acquire()

    assert fake.sleeps == pytest.approx([1.01])
    assert fake.now == pytest.approx(6.01)


async def test_no_rate_never_sleeps() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(None, clock=fake.clock, sleep=fake.sleep)

    for _ in range(1000):
        await limiter.acquire()

    assert fake.sleeps == []
    assert fake.now == 0.0
    assert limiter.waited == 0.0


async def test_no_rate_still_honours_a_pause() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(None, clock=fake.clock, sleep=fake.sleep)

    limiter.pause(3.0)
    await limiter.acquire()
    await limiter.acquire()

    assert fake.sleeps == [3.0]
    assert fake.now == 3.0


async def test_concurrent_waiters_get_evenly_spaced_permits() -> None:
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(2.0), clock=scheduler.clock, sleep=scheduler.sleep)
    grants: list[float] = []

    tasks = [asyncio.create_task(granted_at(limiter, scheduler, grants)) for _ in range(10)]
    await scheduler.run(tasks)

    assert gaps(grants) == pytest.approx([0.505] * 9)


async def test_pause_pushes_every_later_permit_including_sleepers() -> None:
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(1.0), clock=scheduler.clock, sleep=scheduler.sleep)
    grants: list[float] = []
    tasks = [asyncio.create_task(granted_at(limiter, scheduler, grants)) for _ in range(4)]

    await scheduler.advance(0.5)  # one permit granted at 0, three waiters asleep
    assert grants == [0.0]
    limiter.pause(10.0)
    late = [asyncio.create_task(granted_at(limiter, scheduler, grants)) for _ in range(2)]
    await scheduler.run([*tasks, *late])

    assert len(grants) == 6
    assert all(t >= 10.5 for t in grants[1:]), grants
    assert all(gap >= 1.0 - EPSILON for gap in gaps(grants)), grants
    assert limiter.pauses == 1


async def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(Rate(100.0), clock=fake.clock, sleep=fake.sleep)

    limiter.pause(10.0)
    fake.now = 1.0
    limiter.pause(2.0)  # would end at 3: the pause until 10 stands
    await limiter.acquire()

    assert fake.now == pytest.approx(10.0)
    assert limiter.pauses == 1


async def test_a_longer_pause_extends_a_shorter_one() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(Rate(100.0), clock=fake.clock, sleep=fake.sleep)

    limiter.pause(2.0)
    fake.now = 1.0
    limiter.pause(5.0)
    await limiter.acquire()

    assert fake.now == pytest.approx(6.0)
    assert limiter.pauses == 2


async def test_late_wake_ups_do_not_accumulate_into_lost_throughput() -> None:
    """The event loop wakes sleepers ~1 ms late; the schedule must not drift by as much."""
    fake = SteppingClock(overshoot=0.001)
    rate = Rate(50.0)
    limiter = RateLimiter(rate, clock=fake.clock, sleep=fake.sleep)
    grants: list[float] = []

    for _ in range(1500):
        await limiter.acquire()
        grants.append(fake.now)

    sustained = (len(grants) - 1) / (grants[-1] - grants[0])
    assert sustained >= 0.985 * rate.per_second  # only the 1 % margin is given up
    assert all(b - a >= rate.period for a, b in zip(grants, grants[50:], strict=False))


async def test_one_very_late_wake_up_does_not_cause_a_burst() -> None:
    fake = SteppingClock()
    limiter = RateLimiter(Rate(2.0), clock=fake.clock, sleep=fake.sleep)
    grants: list[float] = []

    await limiter.acquire()
    grants.append(fake.now)
    fake.overshoot = 4.0  # the loop stalls once
    await limiter.acquire()
    grants.append(fake.now)
    fake.overshoot = 0.0
    for _ in range(3):
        await limiter.acquire()
        grants.append(fake.now)

    # After the stall no burst: the late permit restarts the schedule half an interval before
    # it, so the next comes half an interval later; then never more than two in any second
    # (and half the margin): the 4th waits for the 2nd to leave the sliding span.
    assert grants[:3] == pytest.approx([0.0, 4.505, 4.7575])
    assert grants[3] == pytest.approx(4.505 + 1.005, abs=0.003)
    assert grants[4] == pytest.approx(4.7575 + 2 * 0.505)  # back on the schedule


async def test_concurrent_sleepers_woken_together_by_a_stall_stay_an_interval_apart() -> None:
    """The engine acquires from several tasks (dispatcher, retries, monitor) at once.

    When the loop stalls past several reserved slots, the sleepers all wake at the same moment;
    lateness must still never squeeze two permits closer than the interval.
    """
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(1.0), clock=scheduler.clock, sleep=scheduler.sleep)
    grants: list[float] = []
    tasks = [asyncio.create_task(granted_at(limiter, scheduler, grants)) for _ in range(3)]

    await scheduler.settle()  # permit at 0; the others reserved 1 and 2 and sleep
    await scheduler.jump(3.0)  # the loop was stuck until 3: both sleepers are due
    await scheduler.run(tasks)

    assert len(grants) == 3
    assert all(gap >= 1.0 - EPSILON for gap in gaps(grants)), grants


@settings(deadline=None, max_examples=60)
@given(
    st.integers(min_value=1, max_value=60),
    st.lists(st.floats(min_value=0.0, max_value=0.05), min_size=1, max_size=200),
)
async def test_never_more_than_the_rate_in_any_sliding_period(
    permits: int, lateness: list[float]
) -> None:
    """Whatever the wake-ups' lateness, a sliding-window server never sees more than the rate."""
    rate = Rate(float(permits))
    late = iter(lateness * 3)
    clock = SteppingClock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds + next(late, 0.0)

    limiter = RateLimiter(rate, clock=clock.clock, sleep=sleep)
    grants: list[float] = []
    for _ in range(3 * permits + 5):
        await limiter.acquire()
        grants.append(clock.now)
    for first, last in zip(grants, grants[permits:], strict=False):
        assert last - first >= rate.period
    assert all(gap >= rate.interval / 2 - EPSILON for gap in gaps(grants))


# ------------------------------------------------------------------------ Backoff


@settings(deadline=None)
@given(
    st.integers(min_value=0, max_value=64),
    st.integers(min_value=0, max_value=2**32),
    st.floats(min_value=0.001, max_value=10.0),
    st.floats(min_value=0.01, max_value=300.0),
)
def test_backoff_delay_is_within_bounds(retry: int, seed: int, base: float, cap: float) -> None:
    backoff = Backoff(base=base, cap=cap)

    delay = backoff.delay(retry, random.Random(seed))

    assert 0.0 <= delay <= min(cap, base * 2.0**retry)


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_backoff_is_deterministic_for_a_seeded_random(seed: int) -> None:
    backoff = Backoff()
    one, two = random.Random(seed), random.Random(seed)

    assert [backoff.delay(n, one) for n in range(20)] == [backoff.delay(n, two) for n in range(20)]


def test_backoff_jitter_spreads_over_the_whole_range() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    rng = random.Random(1234)

    delays = [backoff.delay(3, rng) for _ in range(500)]

    assert max(delays) <= 4.0
    assert min(delays) < 0.4
    assert max(delays) > 3.6
    assert len(set(delays)) == 500


def test_backoff_grows_then_stops_at_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    rng = random.Random(7)

    early = max(backoff.delay(0, rng) for _ in range(200))
    late = max(backoff.delay(20, rng) for _ in range(200))

    assert early <= 1.0
    assert 7.0 < late <= 8.0


@pytest.mark.parametrize("retry", [1023, 1024, 5000])
def test_backoff_survives_a_huge_retry_number(retry: int) -> None:
    backoff = Backoff(base=0.5, cap=30.0)

    delay = backoff.delay(retry, random.Random(0))

    assert 0.0 <= delay <= 30.0


async def test_a_stall_past_many_slots_never_breaks_the_sliding_bound() -> None:
    """50 sleepers due at once after a 0.4 s stall: no more than 50 in any sliding second."""
    scheduler = Scheduler()
    rate = Rate(50.0)
    limiter = RateLimiter(rate, clock=scheduler.clock, sleep=scheduler.sleep)
    grants: list[float] = []
    tasks = [asyncio.create_task(granted_at(limiter, scheduler, grants)) for _ in range(200)]

    await scheduler.advance(0.7)
    await scheduler.jump(1.1)  # the loop was stuck from 0.7 to 1.1
    await scheduler.run(tasks)

    assert len(grants) == 200
    for first, last in zip(grants, grants[50:], strict=False):
        assert last - first >= rate.period
    assert all(gap >= rate.interval / 2 - EPSILON for gap in gaps(grants))
    assert grants[-1] <= 1.1 + 200 * rate.interval  # the stall cost its own time, no more


async def test_memory_stays_bounded_whatever_the_rate() -> None:
    """At a million a second the limiter keeps a few numbers and 401 counts, not the grants."""
    fake = SteppingClock()

    async def sleep(seconds: float) -> None:  # SteppingClock's would log every sleep
        fake.now += seconds

    tracemalloc.start()
    try:
        limiter = RateLimiter(Rate(1_000_000.0), clock=fake.clock, sleep=sleep)
        for _ in range(1_000):
            await limiter.acquire()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(5_000):
            await limiter.acquire()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert fake.now == pytest.approx(5_999 * 1.01e-6, rel=1e-3)
    assert after - before < 5_000  # a log of grants would hold 32 bytes each (160 kB here)


# ----------------------------------------------------------------- urgent permits first


async def test_urgent_waiters_go_before_those_queued_earlier() -> None:
    """A status poll queued behind five POSTs gets the very next permit (issue 19)."""
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(1.0), clock=scheduler.clock, sleep=scheduler.sleep)
    order: list[str] = []

    async def take(name: str, *, urgent: bool) -> None:
        await limiter.acquire(urgent=urgent)
        order.append(name)

    tasks = [asyncio.create_task(take(f"post{i}", urgent=False)) for i in range(5)]
    await scheduler.settle()  # post0 took the free permit; four wait
    tasks += [asyncio.create_task(take(f"poll{i}", urgent=True)) for i in range(2)]
    await scheduler.run(tasks)

    assert order == ["post0", "poll0", "poll1", "post1", "post2", "post3", "post4"]


async def test_urgent_permits_still_count_in_the_rate() -> None:
    scheduler = Scheduler()
    rate = Rate(4.0)
    limiter = RateLimiter(rate, clock=scheduler.clock, sleep=scheduler.sleep)
    grants: list[float] = []

    async def take(urgent: bool) -> None:
        await limiter.acquire(urgent=urgent)
        grants.append(scheduler.now)

    tasks = [asyncio.create_task(take(i % 3 == 0)) for i in range(40)]
    await scheduler.run(tasks)

    assert gaps(grants) == pytest.approx([spacing(rate)] * 39)


async def test_a_cancelled_waiter_gives_its_place_up_and_the_pump_stops() -> None:
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(1.0), clock=scheduler.clock, sleep=scheduler.sleep)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire(urgent=True))
    await scheduler.settle()

    second.cancel()
    await scheduler.run([first])
    assert scheduler.now == pytest.approx(1.01)  # the cancelled one took no slot
    with pytest.raises(asyncio.CancelledError):
        await second

    lonely = asyncio.create_task(limiter.acquire())
    await scheduler.settle()
    lonely.cancel()
    await scheduler.settle()
    assert limiter._pump is None  # nobody waits: nothing sleeps on for a slot nobody wants


async def test_a_request_that_goes_late_is_counted_when_it_goes() -> None:
    """Descheduled between its permit and its send, a request still keeps the sliding bound.

    The permit is counted in the next loop turn, when the request actually goes (aiohttp
    writes a body in a task of its own): here the process stalls 0.3 s in between, so the
    third permit waits until a whole span after the first request went, not after its grant.
    """
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(2.0), clock=scheduler.clock, sleep=scheduler.sleep)
    grants: list[float] = []

    await limiter.acquire()  # granted at 0, goes a turn later
    scheduler.now = 0.3  # the process was descheduled before that turn
    await scheduler.settle()
    tasks = [asyncio.create_task(granted_at(limiter, scheduler, grants)) for _ in range(2)]
    await scheduler.run(tasks)

    assert grants[0] == pytest.approx(0.505)  # the schedule is the grants'
    assert grants[1] == pytest.approx(0.3 + 1.005, abs=0.003)  # not at 1.01: 3 in 1.005 s


async def test_permits_taken_in_one_loop_turn_are_counted_when_they_go_by_one_callback() -> None:
    """At thousands of requests a second several permits are taken in one turn (each as its
    slot comes, no await): one callback a turn counts them all as sent, in the next turn."""
    scheduler = Scheduler()
    limiter = RateLimiter(Rate(100.0), clock=scheduler.clock, sleep=scheduler.sleep)
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    real_call_soon = loop.call_soon

    def call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return real_call_soon(callback, *args, **kwargs)

    loop.call_soon = call_soon  # type: ignore[method-assign, assignment]
    try:
        taken = []
        for slot in range(3):
            scheduler.now = slot * 0.0101  # each slot comes (the margin is 1 %)
            taken.append(limiter.try_acquire())
        assert not limiter.try_acquire(), "the next slot has not come"
    finally:
        loop.call_soon = real_call_soon  # type: ignore[method-assign]
    assert taken == [True, True, True]
    assert scheduled == [limiter._went], "one callback for the turn's three permits"

    scheduler.now = 0.5  # they go in the next turn, late
    await asyncio.sleep(0)
    # Counted when they went: 97 more fit in the second from their grants, not from 0.5.
    assert limiter._window is not None
    assert limiter._window.earliest(0.5) == pytest.approx(0.5)
    for _ in range(97):
        assert limiter._window.earliest(scheduler.now) <= scheduler.now
        limiter._window.add(scheduler.now)
    # The hundredth in a second: the next is a whole span after 0.5 (after 0 had they been
    # counted when granted).
    assert limiter._window.earliest(scheduler.now) >= 1.5
