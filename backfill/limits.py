"""How fast requests may go: an evenly spaced rate limit, pool-wide pauses, and backoff.

Why not asyncio-throttle: it admits a full period's burst at once (a server counting over a
sliding second then sees up to twice the rate), it polls every ``retry_interval`` per waiting
task, and it reads ``time.monotonic`` directly, so tests could not run it on a fake clock.
This limiter hands out evenly spaced slots instead: a waiter reserves the next slot and sleeps
exactly until it, so nothing polls, nothing bursts, and time comes from an injected clock.
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


# Of every period, this share (at most half an interval) is kept free: requests leave a little
# after their permit (the intent is fsynced first) and not all equally late, and a server that
# counts over a sliding window must still never see more than the rate.
_MARGIN = 0.01


class RateLimiter:
    """Evenly spaced permits for every request, and pool-wide pauses (``Retry-After``).

    ``acquire`` reserves the next free slot of an evenly spaced schedule and sleeps until it.
    Lateness (the event loop wakes a sleeper a little after its slot) is not added to the
    schedule, so it does not cost throughput. What bounds the rate is a log of the last grants:
    at most ``permits`` of them in any ``period`` plus a small margin, as a server counting over
    a sliding window sees them. Waiters woken together after the loop stalled queue again rather
    than go at once (no two permits closer than half an interval). ``pause`` voids every
    reservation made before it: sleepers wake, see the pause, and queue again behind it.
    """

    def __init__(self, rate: Rate | None, *, clock: Clock = monotonic, sleep: Sleep = real_sleep):
        self._interval = rate.interval if rate is not None else 0.0
        burst = max(1, int(rate.permits)) if rate is not None else 1
        margin = min(rate.interval / 2, rate.period * _MARGIN) if rate is not None else 0.0
        self._span = burst * self._interval + margin  # `burst` grants take at least this long
        self._grants: deque[float] = deque(maxlen=burst)
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._last = -math.inf  # when the latest permit was granted
        self._paused_until = 0.0
        self._epoch = 0
        self.waited = 0.0  # seconds spent waiting for permits, for metrics
        self.pauses = 0

    async def acquire(self) -> None:
        interval = self._interval
        while True:
            now = self._clock()
            slot = max(self._next, now, self._floor())
            self._next = slot + interval
            epoch = self._epoch
            # Wait for the slot, and past it if the bound needs: a waiter late for its slot
            # must not make the next `permits` grants denser than the rate; waiters woken at
            # once after a stall go half an interval apart. Neither gives the slot up.
            while True:
                earliest = max(slot, self._last + interval / 2, self._floor())
                if earliest <= now or epoch != self._epoch:
                    break
                await self._sleep(earliest - now)
                woke = self._clock()
                self.waited += woke - now
                now = woke
            if epoch != self._epoch:
                continue  # a pause voided this reservation: queue again behind it
            self._last = now
            self._grants.append(now)
            return

    def _floor(self) -> float:
        """The earliest time the next grant keeps the sliding-window bound."""
        grants = self._grants
        return grants[0] + self._span if len(grants) == grants.maxlen else -math.inf

    def pause(self, seconds: float) -> None:
        """Hold every permit for ``seconds`` from now (never shortens a longer pause)."""
        until = self._clock() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        self._next = max(until, self._last + self._interval)
        self._epoch += 1
        self.pauses += 1


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    base: float = 0.5
    cap: float = 30.0
    max_retries: int = 10

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * 2.0 ** min(retry, 64)))
