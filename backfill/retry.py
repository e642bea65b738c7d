"""The one retry budget: exponential backoff with full jitter, and exit 75 once it is spent.

Every kind of retryable failure -- a request, a listing page, a status poll, a token fetch --
counts its consecutive failures in a ``Retries`` built from the same ``Backoff``: retry n waits
``uniform(0, min(cap, base * 2**n))``, and the failure after ``max_retries`` retries ends the
backfill with ``ApiUnavailable`` (exit 75: the checkpoint is durable, run again later). A
success starts the count again. A 429 is the service saying it is alive but busy: it backs off
like any failure but never spends the budget (``--max-retry-after`` bounds what it may ask).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import ApiUnavailable, RateLimited, RetryableError
from .limits import Backoff, Sleep

__all__ = ["Retries", "retrying"]

T = TypeVar("T")


class Retries:
    """Consecutive failures of one operation, and how long to wait before the next try."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self.count = 0  # failures since the last success (429s not included)
        self.throttled = 0  # 429s since the last success

    def failed(self, exc: RetryableError) -> int:
        """Count a failure: the retry's number (for the backoff), or ``ApiUnavailable``."""
        if isinstance(exc, RateLimited):
            self.throttled += 1
        elif self.count >= self._backoff.max_retries:
            raise ApiUnavailable(f"{exc}; gave up after {self.count} retries")
        else:
            self.count += 1
        return self.count + self.throttled

    def succeeded(self) -> None:
        self.count = self.throttled = 0


async def retrying(
    call: Callable[[], Awaitable[T]], backoff: Backoff, sleep: Sleep, rng: random.Random
) -> T:
    """``call()`` until it succeeds, within the budget (for calls outside the engine)."""
    retries = Retries(backoff)
    while True:
        try:
            return await call()
        except RetryableError as exc:
            await sleep(backoff.delay(retries.failed(exc), rng))
