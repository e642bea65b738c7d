"""The comparison client: a rate limiter pacing aiohttp ``POST /runs``, one task per window.

Run ``python -m bench.limiter_client BASE_URL --limiter NAME --windows N --rate R``. Every
window is a task that takes a permit and then sends, as each library's README says to use
it; a 429 is waited out (its ``Retry-After``) and the window takes a permit again, as a
careful user would write it. The limiters, all at ``R`` per second:

- ``backfill``: ``backfill.limits.RateLimiter`` (GCRA, 1 % margin, bucketed sliding bound);
- ``gcra``: the 20-line GCRA below, 1 % margin, nothing else;
- ``aiolimiter``: ``AsyncLimiter(R, 1.0)``, a leaky bucket;
- ``asyncio-throttle``: ``Throttler(rate_limit=R, period=1.0)``.

Prints one JSON object: requests sent, runs created, 429s seen, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from backfill.limits import Rate, RateLimiter
from bench.common import API_KEY, ORG_ID, SANDBOX, TOKEN, run_body

HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "x-api-key": API_KEY,
    "x-gw-ims-org-id": ORG_ID,
    "x-sandbox-name": SANDBOX,
    "Content-Type": "application/json",
}
MAX_ATTEMPTS = 20
LIMITERS = ("backfill", "gcra", "aiolimiter", "asyncio-throttle")


class Gcra:
    """The textbook GCRA (virtual scheduling): each caller reserves the next slot and sleeps."""

    def __init__(self, per_second: float, margin: float = 0.01) -> None:
        self._interval = (1.0 + margin) / per_second
        self._next = 0.0

    async def acquire(self) -> None:
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


def permit(name: str, rate: float) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """An ``async with`` around each send, whichever limiter it is."""
    if name == "aiolimiter":
        from aiolimiter import AsyncLimiter  # noqa: PLC0415 - only the one compared

        limiter = AsyncLimiter(rate, 1.0)
        return lambda: limiter
    if name == "asyncio-throttle":
        from asyncio_throttle.throttler import Throttler  # noqa: PLC0415

        throttler = Throttler(rate_limit=int(rate), period=1.0)
        return lambda: throttler
    acquirer: RateLimiter | Gcra = RateLimiter(Rate(rate)) if name == "backfill" else Gcra(rate)

    @contextlib.asynccontextmanager
    async def slot() -> AsyncIterator[None]:
        await acquirer.acquire()
        yield

    return slot


async def drive(base_url: str, windows: int, rate: float, limiter: str) -> dict[str, float]:
    take = permit(limiter, rate)
    url = base_url.rstrip("/") + "/runs"
    counts = {"sent": 0, "created": 0, "rate_limited": 0, "other": 0}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=HEADERS, timeout=timeout) as session:

        async def submit(index: int) -> None:
            body = run_body(index)
            for _ in range(MAX_ATTEMPTS):
                async with take():
                    counts["sent"] += 1
                async with session.post(url, data=body) as response:
                    await response.read()
                    status = response.status
                    retry_after = float(response.headers.get("Retry-After", "1"))
                if status == 201:
                    counts["created"] += 1
                    return
                if status == 429:
                    counts["rate_limited"] += 1
                    await asyncio.sleep(retry_after)
                    continue
                counts["other"] += 1
                return

        started = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in range(windows)))
        seconds = time.perf_counter() - started
    return {**{k: float(v) for k, v in counts.items()}, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter_client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("base_url", help="the Flow Service base URL (the emulator's)")
    parser.add_argument("--limiter", choices=LIMITERS, required=True)
    parser.add_argument("--windows", type=int, default=1500, help="hourly windows to create")
    parser.add_argument("--rate", type=float, default=50.0, help="permits per second")
    args = parser.parse_args(argv)
    result = asyncio.run(drive(args.base_url, args.windows, args.rate, args.limiter))
    print(orjson.dumps(result).decode())
    return 0 if result["created"] == args.windows else 1


if __name__ == "__main__":
    sys.exit(main())
