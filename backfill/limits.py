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


class RateLimiter:
    """Evenly spaced permits for every request, and pool-wide pauses (``Retry-After``).

    ``acquire`` reserves the next free slot and sleeps until it. No two permits are ever
    granted closer than the interval, measured when they are granted: a waiter that wakes late
    pushes the next slot back by as much, and waiters woken together after the event loop
    stalled queue again instead of all going at once. ``pause`` voids every reservation made
    before it: sleepers wake, see the pause, and queue again behind it.
    """

    def __init__(self, rate: Rate | None, *, clock: Clock = monotonic, sleep: Sleep = real_sleep):
        self._interval = rate.interval if rate is not None else 0.0
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
            slot = self._next if self._next > now else now
            self._next = slot + interval
            if slot > now:
                epoch = self._epoch
                await self._sleep(slot - now)
                woke = self._clock()
                self.waited += woke - now
                if epoch != self._epoch:
                    continue  # a pause voided this reservation: queue again behind it
                now = woke
            if now < self._last + interval:
                continue  # woken at once with an earlier waiter after a stall: queue again
            self._last = now
            self._next = max(self._next, now + interval)
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


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    base: float = 0.5
    cap: float = 30.0
    max_retries: int = 10

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * 2.0 ** min(retry, 64)))
