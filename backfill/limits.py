"""How fast requests may go: an evenly spaced rate limit, pool-wide pauses, and backoff.

The limiter is a GCRA (generic cell rate algorithm, the "virtual scheduling" form): one number,
the time of the next slot, and slots one interval apart. Waiters queue in two lines, urgent
(status polls, listings) before the rest (requests that act), and one pump task sleeps until
each slot and hands it to the first in line, so nothing polls, a poll never waits behind the
POSTs queued before it, and a stall of the event loop never releases a burst. Every interval
carries 1 % of margin, so a request sent a little late or early, as a server counting over a
sliding window sees it, still fits. As a safety net, grants are also counted in 400 buckets:
never more than the rate in any sliding period (and half the margin), in constant memory
whatever the rate.

Compared in ``scripts/bench`` (scenario "rate") on the same load: asyncio-throttle admits a
full period's burst at once and polls every 10 ms per waiting task; aiolimiter's leaky bucket
starts full, so a sliding second can see up to twice the rate. Neither takes an injected
clock, which the tests need.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Backoff", "Clock", "Rate", "RateLimiter", "Sleep", "monotonic", "real_sleep"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

monotonic: Clock = time.monotonic
real_sleep: Sleep = asyncio.sleep

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``permits`` requests per ``period`` seconds."""

    permits: float
    period: float = 1.0

    def __post_init__(self) -> None:
        if self.permits <= 0 or self.period <= 0:
            raise ValueError("a rate must be positive, e.g. 10/s")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``10/s``, ``600/min``, ``36000/h``; raises ``ValueError`` saying how to write it."""
        match = _RATE.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a rate; write N/s, N/min or N/h, e.g. 10/s")
        permits = float(match.group(1))
        if permits <= 0:
            raise ValueError(f"{text!r} is not a positive rate; use e.g. 10/s")
        return cls(permits, _PERIODS[match.group(2)])

    @property
    def per_second(self) -> float:
        return self.permits / self.period

    @property
    def interval(self) -> float:
        return self.period / self.permits

    def divided(self, parts: int) -> Rate:
        """This rate shared by ``parts`` processes."""
        return Rate(self.permits / parts, self.period)

    def __str__(self) -> str:
        return f"{self.per_second:g}/s"


# Every interval is this much longer: requests leave a little after their permit and not all
# equally late, and a server that counts over a sliding window must still never see more
# than the rate (at 50/s, a request may be 10 ms late relative to one 50 permits before).
_MARGIN = 0.01
# The sliding bound counts over a period and half the margin: grants on time never meet it
# (they are a whole margin apart), and what a stall bunches up stays this far under the rate
# as the server sees it, however late the requests that follow it are sent.
_GUARD = _MARGIN / 2
_BUCKETS = 400  # of that span: one bucket (0.25 % of it) is the most the count is stricter by


class RateLimiter:
    """Evenly spaced permits for every request, urgent ones first, and pool-wide pauses.

    Waiters queue, urgent ones (``acquire(urgent=True)``: status polls and listings) ahead of
    the others (new runs); one pump task hands out the permits in that order, each at
    its slot, so a waiter sleeps on nothing of its own and a stalled loop that wakes the pump
    late still grants one permit at a time. The slot is decided when it is handed out, not
    reserved when a waiter arrives, which is what lets a poll that comes last go first and a
    pause hold everyone without voiding anything.

    The schedule (GCRA's theoretical arrival time) moves one interval per permit; a permit
    handed out late by up to half an interval does not move it, so timer lateness is not lost
    throughput, and a later one moves it to half an interval before now, so a stall is never
    followed by a burst. Never more than ``permits`` in any sliding period (and half the
    margin) are granted, counted in buckets in constant memory whatever the rate.
    """

    def __init__(self, rate: Rate | None, *, clock: Clock = monotonic, sleep: Sleep = real_sleep):
        self._interval = rate.interval * (1.0 + _MARGIN) if rate is not None else 0.0
        self._window: _SlidingCount | None = None
        if rate is not None:  # `permits` in any sliding period (and _GUARD of it)
            self._window = _SlidingCount(max(1, int(rate.permits)), rate.period * (1 + _GUARD))
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf  # the next slot (GCRA's theoretical arrival time)
        self._paused_until = -math.inf
        self._urgent: deque[asyncio.Future[float]] = deque()
        self._normal: deque[asyncio.Future[float]] = deque()
        self._queued = 0  # waiters not yet granted nor cancelled
        self._pump: asyncio.Task[None] | None = None
        self._sent: list[float] = []  # permits granted this loop turn, counted as sent next
        self.waited = 0.0  # seconds spent waiting for permits, for metrics
        self.pauses = 0

    def try_acquire(self) -> bool:
        """Take a permit now if nobody waits and its slot has come (no await at all)."""
        now = self._clock()
        if self._pump is None and self._ready(now) <= now:
            self._grant(now, owed=now)
            self._count_when_sent(now)
            return True
        return False

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait for a permit; ``urgent`` ones go before every other waiting (FIFO within)."""
        if self.try_acquire():
            return
        now = self._clock()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._normal).append(future)
        self._queued += 1
        if self._pump is None:
            self._pump = asyncio.create_task(self._hand_out())
        try:
            granted = await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():  # never granted: one fewer waiting
                future.cancel()
                self._queued -= 1
                if self._queued == 0 and self._pump is not None:
                    self._pump.cancel()  # asleep until a slot nobody wants any more
                    self._pump = None
            self.waited += self._clock() - now
            raise
        self.waited += self._clock() - now
        self._count_when_sent(granted)

    def _count_when_sent(self, granted: float) -> None:
        """Count the permit in the sliding bound when its request goes, not when granted.

        A request goes out after its permit, not always at once: the waiter resumes a loop
        turn after the grant, and aiohttp writes a body in a task of its own, a turn later
        still (before Python 3.12's eager tasks). A busy or descheduled process makes those
        turns late, and the server then sees that request bunched with the next ones. The
        bound is kept on the time it goes: a callback queued now runs in the next turn, just
        before the body's write, and moves the grant there.
        """
        if self._window is not None:
            if not self._sent:  # one callback a loop turn, for every permit of the turn
                asyncio.get_running_loop().call_soon(self._went)
            self._sent.append(granted)

    def _went(self) -> None:
        now = self._clock()
        window = self._window
        if window is not None:
            for granted in self._sent:
                if now > granted:
                    window.move(granted, now)
        self._sent.clear()

    def _ready(self, now: float) -> float:
        """The first moment from ``now`` a permit may be granted."""
        ready = max(self._next, self._paused_until, now)
        window = self._window
        return window.earliest(ready) if window is not None else ready

    def _grant(self, now: float, *, owed: float) -> None:
        """Grant at ``now`` a permit a waiter was owed since ``owed``."""
        interval = self._interval
        # Late by up to half an interval: the schedule stands (the lateness is made up);
        # later than that: it restarts half an interval before now (no burst after a stall).
        # A caller that finds the slot free was owed nothing: the schedule restarts at now.
        self._next = max(self._next, now - interval / 2, owed) + interval
        if self._window is not None:
            self._window.add(now)

    def _first(self) -> asyncio.Future[float] | None:
        """The next waiter in line (urgent ones first), dropping cancelled ones."""
        for queue in (self._urgent, self._normal):
            while queue:
                if not queue[0].done():
                    return queue[0]
                queue.popleft()
        return None

    async def _hand_out(self) -> None:
        """The pump: while anyone waits, sleep until the next slot and grant it in order."""
        me = asyncio.current_task()
        try:
            while (first := self._first()) is not None:
                now = self._clock()
                ready = self._ready(now)
                if ready > now:
                    await self._sleep(ready - now)
                    continue  # a pause, or an urgent waiter, may have come meanwhile
                (self._urgent or self._normal).popleft()  # `first` heads the first non-empty
                self._queued -= 1
                self._grant(now, owed=-math.inf)
                first.set_result(now)
        finally:
            if self._pump is me:
                self._pump = None

    def pause(self, seconds: float) -> None:
        """Hold every permit for ``seconds`` from now (never shortens a longer pause)."""
        until = self._clock() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        self.pauses += 1


class _SlidingCount:
    """Grants per bucket of ``span / _BUCKETS``: at most ``limit`` in any sliding ``span``.

    Any window (t - span, t] lies within the bucket of t and the ``_BUCKETS`` before it, so
    counting those is exact or stricter, in constant memory.
    """

    __slots__ = ("_counts", "_head", "_limit", "_total", "_width")

    def __init__(self, limit: int, span: float) -> None:
        self._limit = limit
        self._width = span / _BUCKETS
        self._counts = [0] * (_BUCKETS + 1)  # a ring: bucket i is at i % len
        self._head = 0  # the newest bucket with a grant
        self._total = 0  # grants in the ring

    def add(self, when: float) -> None:
        index = int(when // self._width)
        counts = self._counts
        span = len(counts)
        if index > self._head:
            if index - self._head >= span:
                counts[:] = [0] * span
                self._total = 0
            else:
                for old in range(self._head + 1, index + 1):
                    self._total -= counts[old % span]
                    counts[old % span] = 0
            self._head = index
        counts[index % span] += 1
        self._total += 1

    def move(self, old: float, new: float) -> None:
        """A grant counted at ``old`` happened at ``new`` (later) instead."""
        index = int(old // self._width)
        if self._head - index < len(self._counts):  # still in the ring
            self._counts[index % len(self._counts)] -= 1
            self._total -= 1
        self.add(new)

    def earliest(self, when: float) -> float:
        """The first moment from ``when`` at which one more grant keeps the bound."""
        index = int(when // self._width)
        counts = self._counts
        span = len(counts)
        head = self._head
        if index - head >= span:
            return when
        # By `when`, the buckets up to index - span have left the window: the oldest
        # `index - head` of the ring (none while `when` is in the newest bucket).
        oldest = head - span + 1
        current = index - span + 1
        in_window = self._total
        for bucket in range(oldest, current):
            in_window -= counts[bucket % span]
        excess = in_window + 1 - self._limit
        if excess <= 0:
            return when
        for bucket in range(max(oldest, current), head + 1):
            excess -= counts[bucket % span]
            if excess <= 0:
                return max(when, self._leaves(bucket))
        return max(when, self._leaves(head))  # not reached: the limit is at least 1

    def _leaves(self, bucket: int) -> float:
        """When a bucket's grants leave every window (a hair late: ``//`` rounds floats)."""
        return (bucket + len(self._counts) + 1e-6) * self._width


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    base: float = 0.5
    cap: float = 30.0
    max_retries: int = 10

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * 2.0 ** min(retry, 64)))
