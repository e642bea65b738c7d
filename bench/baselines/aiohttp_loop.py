"""Baseline (c): a bare aiohttp loop, ``Semaphore(64)``, the floor for backfill's CPU per run.

    ACCESS_TOKEN=... API_KEY=... ORG_ID=... SANDBOX_NAME=... \\
        python bench/baselines/aiohttp_loop.py BASE_URL BODIES ANSWERS [--concurrency 64]
        [--journal PATH]

BODIES holds one request body per line, exactly what ``backfill`` sends. One session, one
task per window, at most 64 requests in flight; every run id is written to ANSWERS. With
``--journal``, each window's intent is appended and fsynced (in a thread, one per window, no
group commit) before its request, as the least a durable client must do. No retries, no rate
limit, no checkpoint format: a failed request fails the script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
import orjson


async def drive(
    base_url: str, bodies: list[bytes], concurrency: int, journal: str | None
) -> list[str]:
    headers = {
        "Authorization": f"Bearer {os.environ['ACCESS_TOKEN']}",
        "x-api-key": os.environ["API_KEY"],
        "x-gw-ims-org-id": os.environ["ORG_ID"],
        "x-sandbox-name": os.environ["SANDBOX_NAME"],
        "Content-Type": "application/json",
    }
    url = base_url.rstrip("/") + "/runs"
    gate = asyncio.Semaphore(concurrency)
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if journal else None

    def durable(line: bytes) -> None:
        assert fd is not None
        os.write(fd, line)
        os.fsync(fd)

    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(body: bytes) -> str:
            async with gate:
                if fd is not None:
                    await asyncio.to_thread(durable, body + b"\n")
                async with session.post(url, data=body) as response:
                    response.raise_for_status()
                    answer = orjson.loads(await response.read())
                return str(answer["id"])

        try:
            return await asyncio.gather(*(one(body) for body in bodies))
        finally:
            if fd is not None:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base_url")
    parser.add_argument("bodies")
    parser.add_argument("answers")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--windows", type=int, help="only the first N bodies")
    parser.add_argument("--journal", help="fsync each window's intent here before sending")
    args = parser.parse_args(argv)
    with open(args.bodies, "rb") as handle:
        bodies = [line.rstrip(b"\n") for line in handle if line.strip()]
    if args.windows is not None:
        bodies = bodies[: args.windows]
    ids = asyncio.run(drive(args.base_url, bodies, args.concurrency, args.journal))
    with open(args.answers, "w") as out:
        out.writelines(f"{run_id}\n" for run_id in ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
