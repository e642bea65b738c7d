"""The engine's lifecycle and pacing: stopping, draining, the first error, naps and backoff.

A part that must stop the backfill, give a window up, wait, or back off after a failure asks
this object; none of them sleeps on its own. ``closed`` wakes every nap and wait at once, and
the permits wake every request waiting for its rate permit (it is then never sent).
A ``Retry-After`` longer than ``max_retry_after`` stops the backfill (exit 75) instead of
pausing it; a pause longer than 10 s is logged at warning with its reason and its end.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import structlog

from backfill.errors import ApiUnavailable, BackfillError, RateLimited, RetryableError
from backfill.limits import Sleep
from backfill.permits import Permits
from backfill.planner import Window, format_time

from .board import Board, window_fields
from .options import EngineOptions, OnFailure, Stats

__all__ = ["Control"]

log = structlog.get_logger("backfill.engine")

_LOUD_PAUSE = 10.0  # seconds: a longer pause or backoff is logged at warning


class Control:
    """Why (and whether) the engine is stopping, and how long a part waits."""

    def __init__(
        self,
        board: Board,
        permits: Permits,
        options: EngineOptions,
        stats: Stats,
        sleep: Sleep,
    ) -> None:
        self._board = board
        self._permits = permits
        self._limiter = permits.limiter
        self._options = options
        self._stats = stats
        self.sleep = sleep
        self._paused_until = 0.0  # wall clock, only to log each longer pause once
        self._rng = random.Random(options.seed)  # noqa: S311 - jitter, not cryptography
        self.closed = asyncio.Event()
        self.stopping: str | None = None  # no new windows, in flight finishes
        self.draining: str | None = None  # --on-failure stop: what is out is followed
        self.error: BackfillError | None = None

    @property
    def halted(self) -> bool:
        """Stopping or draining: no new request may go out."""
        return self.stopping is not None or self.draining is not None

    def stop(self, reason: str) -> None:
        """Take no new windows; requests in flight finish; returns at once."""
        if self.stopping is None:
            self.stopping = reason
            log.info("stopping", reason=reason, in_flight=self._board.in_flight)
        self.close()

    def fail(self, error: BackfillError) -> None:
        """Stop on an error that the user must see (the first one wins)."""
        if self.error is None:
            self.error = error
            log.error("stopping_on_error", error=str(error))
        self.stop(f"error: {error}")

    def give_up(self, window: Window, reason: str) -> None:
        """The window is failed for good; with --on-failure stop nothing new goes out."""
        log.warning("window_failed_for_good", **window_fields(window), reason=reason)
        if self._options.on_failure is OnFailure.STOP and self.draining is None:
            self.draining = "a window failed for good (--on-failure stop)"
            log.info("draining", reason=self.draining, in_flight=self._board.in_flight)
            self._permits.halt()
            self._board.wake.set()

    def close(self) -> None:
        self._permits.close()
        self.closed.set()
        self._board.wake.set()

    def backoff(self, exc: RetryableError, retries: int) -> float:
        """How long this task waits before trying again; 429s and Retry-After pause everyone.

        A 429 means "you have exceeded the allowed number of requests within a given time
        period", and Adobe's advice is to retry "after the specified time" of ``Retry-After``
        "to avoid subsequent 429 errors" (help/hygiene/best-practices.md, "Manage 429
        errors", in AdobeDocs/experience-platform.en). The limit is the client's, not one
        request's: any request sent before then counts and would be refused too (the
        emulator, like a gateway, counts refused ones), so the whole pool pauses.
        """
        throttled = isinstance(exc, RateLimited)
        if throttled:
            self._stats.rate_limited += 1
        if exc.retry_after is not None:
            self._pause(exc.retry_after, exc, asked=True)
            return 0.0
        delay = self._options.backoff.delay(retries, self._rng)
        if throttled:
            self._pause(delay, exc, asked=False)
            return 0.0
        if delay > _LOUD_PAUSE:
            log.warning(
                "backing_off",
                reason=f"{exc.request}: {exc.detail}",
                retry=retries,
                seconds=round(delay, 1),
                until=format_time(int(time.time() + delay)),
            )
        return delay

    def _pause(self, seconds: float, exc: RetryableError, *, asked: bool) -> None:
        """Pause every request; a pause asked for beyond ``max_retry_after`` stops instead."""
        answer = f"{exc.status or ''} {'Retry-After' if asked else 'backoff'}".strip()
        limit = self._options.max_retry_after
        if asked and seconds > limit:
            self.fail(
                ApiUnavailable(
                    f"{exc.request}: the service asked to wait {seconds:g} s ({answer}: "
                    f"{exc.detail}), longer than --max-retry-after {limit:g} s; the checkpoint "
                    "is durable: run the same command again later, or raise --max-retry-after"
                )
            )
            return
        until = time.time() + seconds
        if seconds > _LOUD_PAUSE and until > self._paused_until + 1:
            self._paused_until = until
            log.warning(
                "pausing_requests",
                reason=f"{exc.request}: {answer}: {exc.detail}",
                seconds=round(seconds, 1),
                until=format_time(int(until)),
            )
        self._limiter.pause(seconds)

    async def nap(self, seconds: float) -> None:
        """Sleep, but wake when the engine closes."""
        if seconds <= 0 or self.closed.is_set():
            return
        await self._first(asyncio.ensure_future(self.sleep(seconds)))

    async def wait_or_close(self, event: asyncio.Event) -> None:
        """Wait for the event, or for the engine to close."""
        await self._first(asyncio.ensure_future(event.wait()))

    async def nap_or(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep until the event is set, the time is up, or the engine closes."""
        if seconds <= 0 or self.closed.is_set():
            return
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await self._first(
                asyncio.ensure_future(
                    asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
                )
            )
        finally:
            sleeper.cancel()
            waiter.cancel()

    async def _first(self, waiter: asyncio.Future[Any]) -> None:
        closer = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()
