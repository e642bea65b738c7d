"""The rate permit every request takes right before it is sent, and the stop that wakes waiters.

The client calls ``take`` once it holds everything it needs to send (a valid token, the
headers): a request that waits for a token renewal does not hold a permit meanwhile, so a
renewal cannot release a burst of requests that took their permits earlier. The token endpoint
itself takes none.

A stop must not leave tasks asleep in the limiter until their slot comes (or a long
``Retry-After`` pause ends): ``close`` wakes every waiter at once with ``RequestNotSent``, and
``halt`` refuses permits to requests that act (``POST``) while listings still go. Requests
that only read (status polls, listings) wait in the limiter's urgent line, ahead of those
that act, so what they learn (a window failed for good, a slot freed) is not learnt late.
A waiter is woken by cancelling the task that waits inside ``acquire``, which costs nothing
per request (no extra task, no extra future).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from .errors import RequestNotSent
from .limits import RateLimiter

__all__ = ["Permits"]


class Permits:
    """Hands out the limiter's permits until the backfill halts or closes."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.halted = False  # no request that acts may go out (listings still may)
        self.closed = False  # no request at all may go out
        self._waiting: dict[asyncio.Task[object], bool] = {}  # waiter -> its request acts
        self._woken: set[asyncio.Task[object]] = set()

    async def take(self, what: str, *, acts: bool) -> None:
        """Wait for the permit of the request ``what``; raise ``RequestNotSent`` on a stop."""
        self._check(what, acts=acts)
        if self.limiter.try_acquire():  # nobody waits and the slot has come: no wait at all
            return
        # Listings and status polls go first: a failure or a freed slot is seen before more
        # windows go out (--on-failure stop, --max-active-runs). They still count.
        await self._until(what, self.limiter.acquire(urgent=not acts), acts=acts)

    async def seat(self, what: str, seats: asyncio.Semaphore) -> None:
        """Wait for one of ``seats`` (requests that act, in flight) before the request
        ``what``, as for a permit: a stop wakes the wait (``RequestNotSent``, no seat held)."""
        if not seats.locked():
            self._check(what, acts=True)
            await seats.acquire()  # a seat is free: no wait
            return
        got = False

        async def sit() -> None:
            nonlocal got
            await seats.acquire()
            got = True

        try:
            await self._until(what, sit(), acts=True)
        except RequestNotSent:
            if got:  # the seat came just as the stop did: the stop wins, the seat goes back
                seats.release()
            raise

    async def _until(self, what: str, wait: Coroutine[Any, Any, None], *, acts: bool) -> None:
        """Await ``wait`` unless a stop comes first (then ``RequestNotSent``)."""
        try:
            self._check(what, acts=acts)
        except RequestNotSent:
            wait.close()  # never awaited: say so to nobody
            raise
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a task
            await wait
            return
        self._waiting[task] = acts
        try:
            await wait
        except asyncio.CancelledError:
            if task not in self._woken:
                raise
            # Our own wake-up, not a cancellation from outside: undo it and say why.
            self._woken.discard(task)
            task.uncancel()
            raise RequestNotSent(what) from None
        finally:
            self._waiting.pop(task, None)
        if task in self._woken:  # woken just as the permit came: the stop still wins
            self._woken.discard(task)
            task.uncancel()
            raise RequestNotSent(what)
        self._check(what, acts=acts)

    def _check(self, what: str, *, acts: bool) -> None:
        if self.closed or (acts and self.halted):
            raise RequestNotSent(what)

    def halt(self) -> None:
        """Requests that act (``POST``) get no permit from now on; waiting ones wake."""
        self.halted = True
        self._wake(acting_only=True)

    def close(self) -> None:
        """No request gets a permit from now on; every waiter wakes at once."""
        self.halted = self.closed = True
        self._wake(acting_only=False)

    def _wake(self, *, acting_only: bool) -> None:
        for task, acts in list(self._waiting.items()):
            if (acts or not acting_only) and task not in self._woken:
                self._woken.add(task)
                task.cancel()
