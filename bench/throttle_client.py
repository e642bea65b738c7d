"""The comparison client: asyncio-throttle's ``Throttler`` pacing aiohttp ``POST /runs``.

Run ``python -m bench.throttle_client BASE_URL --windows N [--rate 50]``. This is how the
library's README says to use it: every request is a task that enters ``async with throttler``
before it sends. Each window is sent until it is accepted: a 429 is waited out (its
``Retry-After``) and the request goes through the throttler again, as a careful user would
write it. Prints one JSON object: requests sent, runs created, 429s seen, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson
from asyncio_throttle.throttler import Throttler

from bench.common import API_KEY, ORG_ID, SANDBOX, TOKEN, run_body

HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "x-api-key": API_KEY,
    "x-gw-ims-org-id": ORG_ID,
    "x-sandbox-name": SANDBOX,
    "Content-Type": "application/json",
}
MAX_ATTEMPTS = 20


async def drive(base_url: str, windows: int, rate: int) -> dict[str, float]:
    throttler = Throttler(rate_limit=rate, period=1.0)
    url = base_url.rstrip("/") + "/runs"
    counts = {"sent": 0, "created": 0, "rate_limited": 0, "other": 0}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=HEADERS, timeout=timeout) as session:

        async def submit(index: int) -> None:
            body = run_body(index)
            for _ in range(MAX_ATTEMPTS):
                async with throttler:
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
        prog="python -m bench.throttle_client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("base_url", help="the Flow Service base URL (the emulator's)")
    parser.add_argument("--windows", type=int, default=1500, help="hourly windows to create")
    parser.add_argument("--rate", type=int, default=50, help="Throttler(rate_limit=N, period=1)")
    args = parser.parse_args(argv)
    result = asyncio.run(drive(args.base_url, args.windows, args.rate))
    print(orjson.dumps(result).decode())
    return 0 if result["created"] == args.windows else 1


if __name__ == "__main__":
    sys.exit(main())
