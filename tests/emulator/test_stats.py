"""Inspection: ``GET /__emulator/stats``, ``Emulator.stats()``, reset, and in-process use."""

from __future__ import annotations

import subprocess
import sys

import aiohttp

from backfill.emulator import Emulator, EmulatorConfig, FlowKind, serve
from backfill.emulator.app import ENDPOINTS

from .conftest import FLOW, HEADERS, HOUR, START, Api, Start

TOP_LEVEL = {
    "runs",
    "windows",
    "duplicates",
    "requests",
    "max_requests_per_second",
    "max_requests_per_second_as_read",
    "max_read_lag_s",
    "rate_limited",
    "injected_errors",
    "dropped",
    "max_active_runs",
    "max_in_flight",
    "tokens_issued",
    "status_words",
}


async def test_stats_document(start: Start) -> None:
    api = await start()
    run = (await api.create(delta="DOB")).body
    await api.create(start=START + HOUR)
    await api.create()  # a duplicate of the first window
    await api.call("GET", f"/runs/{run['id']}")
    await api.call("GET", "/runs", headers={})

    stats = await api.stats()
    assert set(stats) == TOP_LEVEL
    assert stats == api.emulator.stats()
    first = stats["runs"][0]
    assert set(first) == {
        "id",
        "flow_id",
        "window_start",
        "window_end",
        "status",
        "attempts",
        "delta_column",
        "created_at",
        "retrigger_of",
        "start_time",
        "outcome",
        "records",
    }
    assert first["id"] == run["id"]
    assert first["flow_id"] == FLOW
    assert (first["window_start"], first["window_end"]) == (START, START + HOUR)
    assert first["status"] == "scheduled"
    assert first["attempts"] == 1
    assert first["delta_column"] == "DOB"
    assert isinstance(first["created_at"], float)
    assert first["retrigger_of"] is None
    assert stats["runs"][1]["delta_column"] is None

    window = {"flow_id": FLOW, "window_start": START, "window_end": START + HOUR}
    ids = [r["id"] for r in stats["runs"]]
    twice = {**window, "runs": 2, "run_ids": [ids[0], ids[2]], "live": 2, "succeeded": 0}
    assert stats["windows"] == [
        twice,
        {
            **window,
            "window_start": START + HOUR,
            "window_end": START + 2 * HOUR,
            "runs": 1,
            "run_ids": [ids[1]],
            "live": 1,
            "succeeded": 0,
        },
    ]
    assert stats["duplicates"] == [twice]  # two live runs for one window

    by_endpoint = stats["requests"]["by_endpoint"]
    assert set(ENDPOINTS) <= set(by_endpoint)
    assert by_endpoint["POST /runs"] == {"201": 3}
    assert by_endpoint["GET /runs/{id}"] == {"200": 1}
    assert by_endpoint["GET /runs"] == {"403": 1}
    assert stats["requests"]["total"] == 5
    assert stats["max_requests_per_second"] == stats["max_requests_per_second_as_read"] == 5
    assert stats["max_active_runs"] == {FLOW: 3}
    # One at a time: the most requests each endpoint was handling at once.
    assert stats["max_in_flight"] == {"POST /runs": 1, "GET /runs/{id}": 1, "GET /runs": 1}
    assert stats["rate_limited"] == stats["injected_errors"] == stats["dropped"] == 0
    assert stats["tokens_issued"] == 0

    api.clock.advance(1)
    assert [w["succeeded"] for w in (await api.stats())["windows"]] == [2, 1]


async def test_stats_need_no_headers_and_are_not_counted(api: Api) -> None:
    for _ in range(3):
        await api.stats()
    stats = await api.stats()
    assert stats["requests"]["total"] == 0
    assert stats["max_requests_per_second"] == 0


async def test_reset(start: Start) -> None:
    api = await start(flows=((FLOW, "table"),))
    await api.create(delta="DOB")
    await api.create(flow="unknown")
    answer = await api.call(
        "POST", api.emulator.url + "/__emulator/reset", absolute=True, headers=None
    )
    assert answer.status == 200
    stats = await api.stats()
    assert stats["runs"] == []
    assert stats["requests"]["total"] == 0
    assert stats["max_active_runs"] == {}
    assert stats["max_in_flight"] == {}
    # Declared flows survive a reset, with their first-run rule starting over.
    assert (await api.create()).status == 400
    assert (await api.create(delta="other")).status == 201
    assert (await api.stats())["requests"]["by_endpoint"]["POST /runs"] == {"400": 1, "201": 1}
    api.emulator.reset()
    assert (await api.stats())["runs"] == []


async def test_serve_in_process_on_a_free_port() -> None:
    config = EmulatorConfig(port=0, flows=(("f", FlowKind.FILE),))
    async with serve(config) as emulator:
        assert isinstance(emulator, Emulator)
        assert emulator.port > 0
        assert emulator.base_url == f"http://127.0.0.1:{emulator.port}/data/foundation/flowservice"
        assert emulator.ims_url == f"http://127.0.0.1:{emulator.port}/ims/token/v3"
        async with (
            aiohttp.ClientSession(headers=HEADERS) as session,
            session.get(emulator.base_url + "/flows/f") as response,
        ):
            assert response.status == 200
    # Stopped: the port no longer answers.
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(emulator.base_url + "/runs") as response:
                raised = False
        except aiohttp.ClientConnectionError:
            raised = True
    assert raised


async def test_two_emulators_side_by_side(start: Start) -> None:
    one = await start()
    two = await start()
    assert one.emulator.port != two.emulator.port
    await one.create()
    assert len((await one.stats())["runs"]) == 1
    assert (await two.stats())["runs"] == []


def test_the_emulator_imports_nothing_else_from_backfill() -> None:
    code = (
        "import sys, backfill.emulator.cli, backfill.emulator.__main__\n"
        "print(sorted(m for m in sys.modules if m.startswith('backfill.')"
        " and not m.startswith('backfill.emulator')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
