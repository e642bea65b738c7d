"""A minimal canned Flow Service for the scaling scenario: ``POST /runs`` answers 201, no more.

    python -m bench.canned --ready-file FILE [--host 127.0.0.1]

The emulator keeps every run (a million of them would take gigabytes); this server keeps a
count. Each ``POST .../runs`` gets a fresh run id in the "items" shape of the API reference
(``{"items": [{"id": ..., "etag": ...}]}``, as the emulator's ``--response-shape items``
answers; AdobeDocs/experience-platform-apis, flow-service.yaml, ``POST /runs``). ``GET
/__stats`` gives ``{"created": N}``; ``GET /runs`` is an empty page, ``GET /flows/{id}`` a
one-time flow (for the pre-flight). Nothing is checked: it
measures the client, not itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
from pathlib import Path

import orjson
from aiohttp import web

BASE_PATH = "/data/foundation/flowservice"


def app() -> web.Application:
    counter = itertools.count(1)
    created = {"created": 0}
    prefix = os.urandom(4).hex()

    async def create(request: web.Request) -> web.Response:
        await request.read()
        n = next(counter)
        created["created"] = n
        run_id = f"{prefix}-0000-4000-8000-{n:012x}"
        body = orjson.dumps({"items": [{"id": run_id, "etag": '"1"'}]})
        return web.Response(status=201, body=body, content_type="application/json")

    async def listing(request: web.Request) -> web.Response:
        # An empty page: backfill lists a flow's runs once before it sends (nothing to adopt).
        return web.Response(body=b'{"items": [], "_links": {}}', content_type="application/json")

    async def flow(request: web.Request) -> web.Response:
        # The pre-flight asks for each flow once: a one-time flow without a delta column
        # (help/sources/tutorials/api/update-dataflows.md shows the flow object).
        body = orjson.dumps(
            {
                "items": [
                    {
                        "id": request.match_info["id"],
                        "state": "enabled",
                        "scheduleParams": {"startTime": "0", "frequency": "once"},
                        "transformations": [],
                    }
                ]
            }
        )
        return web.Response(body=body, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(created), content_type="application/json")

    application = web.Application()
    application.router.add_post(BASE_PATH + "/runs", create)
    application.router.add_get(BASE_PATH + "/runs", listing)
    application.router.add_get(BASE_PATH + "/flows/{id}", flow)
    application.router.add_get("/__stats", stats)
    return application


async def _serve(host: str, ready: Path) -> None:
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(f"http://{host}:{port}{BASE_PATH}\n")
    tmp.replace(ready)
    try:
        await asyncio.Event().wait()  # until SIGTERM (the suite stops its process group)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canned")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
