"""Listing against the emulator's paging variants, with the real CLI: judged by the server.

Another flow holds runs for the very same windows. Links that carry only their token, a last
page that links to itself, small pages and 5xx on pages must neither adopt the other flow's
runs (our windows would be recorded as sent and never be) nor loop.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from .harness import (
    FLOW_FILE,
    START,
    assert_exactly_once,
    cli_env,
    emulator,
    hourly,
    hourly_run,
    run_cli,
)

OTHER = "5f0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
HOURS = 40


async def _other_flow_runs(base_url: str) -> None:
    """The same windows, sent by someone else for another flow of the sandbox."""
    headers = {
        "Authorization": "Bearer x",
        "x-api-key": "k",
        "x-gw-ims-org-id": "O@AdobeOrg",
        "x-sandbox-name": "prod",
    }
    async with aiohttp.ClientSession(headers=headers) as session:
        for start, end in hourly(START, HOURS):
            body = {"flowId": OTHER, "params": {"windowStartTime": start, "windowEndTime": end}}
            async with session.post(base_url + "/runs", json=body) as response:
                assert response.status == 201


async def test_following_runs_through_token_only_and_self_links(tmp_path: Path) -> None:
    async with emulator(token_only_links=True, self_link=True, max_page_size=3, seed=31) as emu:
        await _other_flow_runs(emu.base_url)
        result = await run_cli(
            hourly_run(FLOW_FILE, HOURS, "--rate", "200/s", "--report", "report.json", "--wait"),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    ours = {r["id"] for r in stats["runs"] if r["flow_id"] == FLOW_FILE}
    assert {w["run_id"] for w in report["windows"]} == ours
    assert {w["state"] for w in report["windows"]} == {"succeeded"}


async def test_lost_answers_are_settled_through_token_only_pages_that_fail(
    tmp_path: Path,
) -> None:
    async with emulator(
        token_only_links=True,
        self_link=True,
        max_page_size=3,
        drop_rate=0.25,
        error_rate=0.05,
        seed=32,
    ) as emu:
        # The other flow's runs may be dropped or refused too: send until each exists.
        headers = {
            "Authorization": "Bearer x",
            "x-api-key": "k",
            "x-gw-ims-org-id": "O@AdobeOrg",
            "x-sandbox-name": "prod",
        }
        async with aiohttp.ClientSession(headers=headers) as session:
            for start, end in hourly(START, HOURS):
                body = {"flowId": OTHER, "params": {"windowStartTime": start, "windowEndTime": end}}
                while not any(
                    r["flow_id"] == OTHER and r["window_start"] == start
                    for r in emu.stats()["runs"]
                ):
                    try:
                        async with session.post(emu.base_url + "/runs", json=body):
                            pass
                    except aiohttp.ClientError:
                        pass
        result = await run_cli(
            hourly_run(FLOW_FILE, HOURS, "--rate", "200/s", "--report", "report.json"),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert stats["dropped"] > 5  # answers really were lost
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    ours = {r["id"] for r in stats["runs"] if r["flow_id"] == FLOW_FILE}
    assert {w["run_id"] for w in report["windows"]} == ours
    lists = stats["requests"]["by_endpoint"]["GET /runs"]
    assert set(lists) - {"200"}, lists  # some pages failed and were asked again
