"""``run --dry-run`` asks the service what the real run asks before sending, the same way.

Through the real CLI against the bundled emulator, judged by the emulator's own record: the
flow pre-flight (``GET /flows/{id}``) refuses what the real run refuses, and the runs the
service holds are read through the engine's one pager, exactly as the real run reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    CliResult,
    cli_env,
    emulator,
    hourly_run,
    run_cli,
)


def _error(result: CliResult) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    message: str = orjson.loads(lines[0])["message"]
    return message


def _requests(stats: dict[str, Any], endpoint: str) -> int:
    return sum(stats["requests"]["by_endpoint"].get(endpoint, {}).values())


@pytest.mark.parametrize(
    ("config", "flags", "expected"),
    [
        (
            {"flows": ((FLOW_TABLE, "table"),), "flow_schedules": ((FLOW_TABLE, "hour", None),)},
            ["--delta-column", "DOB"],
            "'hour'",
        ),
        (
            {
                "flows": ((FLOW_TABLE, "table"),),
                "flow_schedules": ((FLOW_TABLE, "once", "updated_at"),),
            },
            ["--delta-column", "DOB"],
            "'updated_at'",
        ),
        ({"flows": ((FLOW_FILE, "file"),)}, [], "1439-404"),
        ({"hidden_flows": (FLOW_TABLE,)}, [], "2120-403"),
    ],
    ids=["hourly", "conflicting-delta-column", "unknown", "hidden"],
)
async def test_the_dry_run_refuses_a_flow_the_real_run_would_refuse(
    tmp_path: Path, config: dict[str, Any], flags: list[str], expected: str
) -> None:
    async with emulator(**config) as emu:
        args = hourly_run(FLOW_TABLE, 5, *flags)
        dry = await run_cli([*args, "--dry-run"], cli_env(emu), tmp_path)
        dry_stats = emu.stats()
        real = await run_cli(args, cli_env(emu), tmp_path)
        real_stats = emu.stats()
    assert dry.code == 2, dry.stderr
    message = _error(dry)
    assert message.startswith("the run would refuse (exit 2): ")
    assert expected in message
    assert FLOW_TABLE in message
    assert _requests(dry_stats, "GET /flows/{id}") == 1  # it asked, as the run does
    assert _requests(dry_stats, "POST /runs") == 0
    assert not (tmp_path / "ck.jsonl").exists()
    # ... and the real run does refuse, for the same reason.
    assert real.code == 2
    assert expected in real.stderr
    assert _requests(real_stats, "POST /runs") == 0


async def test_the_dry_run_says_when_the_flow_already_has_its_delta_column(
    tmp_path: Path,
) -> None:
    async with emulator(
        flows=((FLOW_TABLE, "table"),), flow_schedules=((FLOW_TABLE, "once", "updated_at"),)
    ) as emu:
        args = hourly_run(FLOW_TABLE, 6, "--delta-column", "updated_at")
        dry = await run_cli([*args, "--dry-run", "--json"], cli_env(emu), tmp_path)
        text = await run_cli([*args, "--dry-run"], cli_env(emu), tmp_path)
        real = await run_cli(args, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert dry.code == 0, dry.stderr
    (flow,) = orjson.loads(dry.stdout)["flows"]
    assert flow["delta_column_at_service"] is True
    assert flow["sends_delta_column"] is False
    assert "not sent (the flow's Copy transformation already has it)" in text.stdout
    assert real.code == 0, real.stderr
    assert all(run["delta_column"] is None for run in stats["runs"])  # as the dry run said


async def test_the_dry_run_checks_no_flow_when_nothing_is_left_to_send(tmp_path: Path) -> None:
    """As the real run: a finished checkpoint needs no pre-flight."""
    async with emulator() as emu:
        first = await run_cli(hourly_run(FLOW_FILE, 3), cli_env(emu), tmp_path)
        assert first.code == 0, first.stderr
        before = _requests(emu.stats(), "GET /flows/{id}")
        dry = await run_cli([*hourly_run(FLOW_FILE, 3), "--dry-run"], cli_env(emu), tmp_path)
        after = _requests(emu.stats(), "GET /flows/{id}")
    assert dry.code == 0, dry.stderr
    assert after == before


async def test_the_dry_run_reads_the_runs_through_the_runs_pager(tmp_path: Path) -> None:
    """A last page that links to itself ends the listing (the one pager's rule), and the dry
    run reads exactly the pages the real run's adoption reads."""
    async with emulator(self_link=True, token_only_links=True, max_page_size=5) as emu:
        env = cli_env(emu)
        first = await run_cli(hourly_run(FLOW_FILE, 12), env, tmp_path)
        assert first.code == 0, first.stderr
        args = hourly_run(FLOW_FILE, 16, "--checkpoint", "new.jsonl")
        listed = _requests(emu.stats(), "GET /runs")
        dry = await run_cli([*args, "--dry-run", "--json"], env, tmp_path, deadline=60)
        dry_pages = _requests(emu.stats(), "GET /runs") - listed
        listed += dry_pages
        real = await run_cli(args, env, tmp_path)
        real_pages = _requests(emu.stats(), "GET /runs") - listed
        posts = _requests(emu.stats(), "POST /runs")
    assert dry.code == 0, dry.stderr
    (flow,) = orjson.loads(dry.stdout)["flows"]
    assert (flow["at_service"], flow["to_send"]) == (12, 4)
    assert dry_pages == real_pages == 3  # 12 runs in pages of 5; the self link not followed
    assert real.code == 0, real.stderr
    assert posts == 12 + 4


async def test_the_dry_run_refuses_where_adoption_would_runs_that_hide_their_window(
    tmp_path: Path,
) -> None:
    async with emulator(runs_without_params=True, scheduled_for=3600) as emu:
        env = cli_env(emu)
        first = await run_cli(hourly_run(FLOW_FILE, 3), env, tmp_path)
        assert first.code == 0, first.stderr
        args = hourly_run(FLOW_FILE, 5, "--checkpoint", "new.jsonl")
        dry = await run_cli([*args, "--dry-run"], env, tmp_path)
        real = await run_cli(args, env, tmp_path)
        posts = _requests(emu.stats(), "POST /runs")
    assert dry.code == 2, dry.stderr
    message = _error(dry)
    assert message.startswith("the run would refuse (exit 2): ")
    assert "whose window the service does not say" in message
    assert real.code == 2
    assert "whose window the service does not say" in real.stderr
    assert posts == 3


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--report", "no-such-folder/report.json"], "report"),
        (["--shard", "0/4", "--max-active-runs", "2"], "max_active_runs"),
    ],
)
async def test_the_dry_run_refuses_the_options_the_real_run_would_refuse(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    """The checks made before the checkpoint opens are one function for both."""
    async with emulator() as emu:
        args = hourly_run(FLOW_FILE, 5, *flags)
        dry = await run_cli([*args, "--dry-run"], cli_env(emu), tmp_path)
        real = await run_cli(args, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert (dry.code, real.code) == (2, 2), dry.stderr
    assert _error(dry).startswith("the run would refuse (exit 2): ")
    assert expected in _error(dry)
    assert expected in real.stderr
    assert stats["requests"]["total"] == 0  # neither asked the service anything
    assert not (tmp_path / "ck.jsonl").exists()
