"""How fast requests may go: an evenly spaced rate limit, pool-wide pauses, and backoff.

The limiter is a GCRA (generic cell rate algorithm, the "virtual scheduling" form): one number,
the time of the next free slot, and slots one interval apart. A waiter reserves the next slot
and sleeps exactly until it, so nothing polls and late wake-ups of the event loop are not
added to the schedule. Every interval carries 1 % of margin, so a request sent a little late
or early, as a server counting over a sliding window sees it, still fits. As a safety net
against a stalled loop (waiters woken together), grants are also counted in 200 buckets per
period: never more than the rate in any sliding period, in constant memory whatever the rate.

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
_BUCKETS = 200  # of a period, for the sliding-window bound: 1/_BUCKETS < _MARGIN, so it is
# slack enough never to delay an on-time schedule, and only catches bursts after a stall


class RateLimiter:
    """Evenly spaced permits for every request, and pool-wide pauses (``Retry-After``).

    ``acquire`` reserves the next free slot (GCRA) and sleeps until it. Two bounds hold past
    lateness: no two permits closer than half an interval (waiters woken together after the
    loop stalled go one by one), and never more than ``permits`` in any sliding ``period``
    (counted in buckets). ``pause`` voids every reservation made before it: sleepers wake, see
    the pause, and queue again behind it. State is a few numbers and 201 bucket counts.
    """

    def __init__(self, rate: Rate | None, *, clock: Clock = monotonic, sleep: Sleep = real_sleep):
        self._interval = rate.interval * (1.0 + _MARGIN) if rate is not None else 0.0
        self._window: _SlidingCount | None = None
        if rate is not None:  # `burst` permits in any sliding `burst` intervals (a period)
            burst = max(1, int(rate.permits))
            self._window = _SlidingCount(burst, burst * rate.interval)
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf  # the next free slot (GCRA's theoretical arrival time)
        self._last = -math.inf  # when the latest permit was granted
        self._paused_until = -math.inf
        self._epoch = 0
        self.waited = 0.0  # seconds spent waiting for permits, for metrics
        self.pauses = 0

    async def acquire(self) -> None:
        interval = self._interval
        window = self._window
        while True:
            now = self._clock()
            slot = self._next if self._next > now else now
            self._next = slot + interval
            epoch = self._epoch
            # Wait for the slot, and past it if a bound needs: neither gives the slot up.
            while True:
                earliest = max(slot, self._last + interval / 2)
                if window is not None:
                    earliest = window.earliest(earliest)
                if earliest <= now or epoch != self._epoch:
                    break
                await self._sleep(earliest - now)
                woke = self._clock()
                self.waited += woke - now
                now = woke
            if epoch != self._epoch:
                continue  # a pause voided this reservation: queue again behind it
            self._last = now
            if window is not None:
                window.add(now)
            return

    def pause(self, seconds: float) -> None:
        """Hold every permit for ``seconds`` from now (never shortens a longer pause)."""
        until = self._clock() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        self._next = max(until, self._last + self._interval)
        self._epoch += 1
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
