"""The service is the source of truth, through the real CLI against the emulator over HTTP.

Every verdict comes from the emulator's own record of runs.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest

from .harness import (
    FLOW_FILE,
    START,
    assert_exactly_once,
    cli_env,
    emulator,
    finish,
    hourly,
    hourly_run,
    run_cli,
    runs_per_window,
    start_cli,
)


def _posts(stats: dict[str, object]) -> int:
    runs = stats["runs"]
    assert isinstance(runs, list)
    return len(runs)


async def test_a_new_checkpoint_sends_no_post_for_what_the_service_has(tmp_path: Path) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        first = await run_cli(hourly_run(FLOW_FILE, 24, "--wait"), env, tmp_path)
        assert first.code == 0, first.stderr
        before = _posts(emu.stats())
        again = await run_cli(
            hourly_run(FLOW_FILE, 24, "--wait", "--checkpoint", "typo.jsonl"), env, tmp_path
        )
        stats = emu.stats()
    assert again.code == 0, again.stderr
    assert _posts(stats) == before == 24  # not one more run
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 24))
    status = await run_cli(
        ["status", "--checkpoint", "typo.jsonl", "--json"], cli_env(None), tmp_path
    )
    document = orjson.loads(status.stdout)
    assert document["counts"]["succeeded"] == 24
    assert {w["run_id"] for w in document["windows"]} == {r["id"] for r in stats["runs"]}


async def test_ignoring_existing_runs_needs_yes_and_touches_nothing(tmp_path: Path) -> None:
    async with emulator() as emu:
        result = await run_cli(
            hourly_run(FLOW_FILE, 4, "--existing-runs", "ignore"), cli_env(emu), tmp_path
        )
        stats = emu.stats()
    assert result.code == 2
    assert "--existing-runs" in result.stderr
    assert "--yes" in result.stderr
    assert not (tmp_path / "ck.jsonl").exists()
    assert _posts(stats) == 0


async def test_two_live_runs_for_a_window_are_reported_with_exit_4(tmp_path: Path) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        first = await run_cli(hourly_run(FLOW_FILE, 6, "--wait"), env, tmp_path)
        assert first.code == 0, first.stderr
        forced = await run_cli(
            [
                *hourly_run(FLOW_FILE, 6, "--wait", "--checkpoint", "b.jsonl"),
                *("--existing-runs", "ignore", "--yes"),
            ],
            env,
            tmp_path,
        )
        assert forced.code == 0, forced.stderr
        third = await run_cli(
            hourly_run(FLOW_FILE, 6, "--wait", "--checkpoint", "c.jsonl", "--report", "r.json"),
            env,
            tmp_path,
        )
        stats = emu.stats()
    assert set(runs_per_window(stats, FLOW_FILE).values()) == {2}  # the forced duplicates
    assert _posts(stats) == 12  # the third run sent nothing
    assert third.code == 4, third.stderr
    status = await run_cli(["status", "--checkpoint", "c.jsonl", "--json"], cli_env(None), tmp_path)
    windows = orjson.loads(status.stdout)["windows"]
    by_window: dict[tuple[int, int], set[str]] = {}
    for run in stats["runs"]:
        by_window.setdefault((run["window_start"], run["window_end"]), set()).add(run["id"])
    for window in windows:
        assert {window["run_id"], *window["duplicate_runs"]} == by_window[
            (window["start"], window["end"])
        ]
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["exit_code"] == 4
    assert report["duplicates_found"] == 6
    text = await run_cli(["status", "--checkpoint", "c.jsonl"], cli_env(None), tmp_path)
    assert text.stdout.count("duplicate:") == 6


# Each way Adobe's documentation lets the service behave (the emulator's flags), with lost
# answers and 5xx before and after a run is created, on POSTs and on re-triggers alike.
VARIANTS: dict[str, dict[str, object]] = {
    "documented": {},
    "runs_without_params": {"runs_without_params": True},
    "token_only_links": {"token_only_links": True, "max_page_size": 7},
    "listing_lag": {"listing_lag": 2.0},
    "proxy_520_and_408": {"post_error_codes": (520, 408)},
}


def _judge(stats: dict[str, object], document: dict[str, object], windows: int) -> None:
    """No window missing, none with two live runs, none past --max-attempts, and the
    checkpoint's run id is the service's live run."""
    by_window = {
        (w["window_start"], w["window_end"]): w
        for w in stats["windows"]  # type: ignore[attr-defined]
        if w["flow_id"] == FLOW_FILE
    }
    assert len(by_window) == windows, "a window was never sent"
    assert not stats["duplicates"], stats["duplicates"]
    for window in by_window.values():
        assert window["live"] <= 1
        assert window["runs"] <= 3, f"past --max-attempts: {window}"
    statuses = {r["id"]: r["status"] for r in stats["runs"]}  # type: ignore[attr-defined]
    for row in document["windows"]:  # type: ignore[attr-defined]
        listed = by_window[(row["start"], row["end"])]
        assert row["run_id"] in listed["run_ids"]
        if listed["live"]:
            assert statuses[row["run_id"]] != "failed", "the checkpoint kept a dead run"


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_every_documented_variant_keeps_one_live_run_per_window(
    tmp_path: Path, variant: str
) -> None:
    hours = 30
    config = {
        "seed": 12,
        "drop_rate": 0.15,  # the run is created, the answer is lost
        "error_rate": 0.1,  # a 5xx before anything is created
        "fail_rate": 0.25,  # runs fail and are re-triggered: new runs, as documented
        **VARIANTS[variant],
    }
    args = hourly_run(
        FLOW_FILE,
        hours,
        *("--wait", "--max-attempts", "3", "--poll-interval", "0.2"),
        *("--reconcile-delay", "0.5", "--reconcile-settle", "4", "--rate", "60/s"),
    )
    async with emulator(**config) as emu:
        result = await run_cli(args, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code in (0, 1), result.stderr  # 1: a window failed three times for good
    status = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path
    )
    _judge(stats, orjson.loads(status.stdout), hours)


@pytest.mark.slow
async def test_kill_9_with_hidden_windows_bare_links_and_a_lagging_listing(
    tmp_path: Path,
) -> None:
    """kill -9 at seeded moments, against the hardest variants at once: 0 duplicates, 0 gaps."""
    rng = random.Random(20261129)
    hours = 400
    config = {
        "seed": 3,
        "runs_without_params": True,
        "token_only_links": True,
        "listing_lag": 2.0,
        "drop_rate": 0.2,
        "latency": 0.01,
    }
    args = hourly_run(
        FLOW_FILE,
        hours,
        *("--reconcile-delay", "0.5", "--reconcile-settle", "3", "--rate", "120/s"),
        *("--concurrency", "16"),
    )
    kills = 0
    async with emulator(**config) as emu:
        env = cli_env(emu)
        finished = None
        while finished is None:
            process = await start_cli(args, env, tmp_path)
            if kills < 20:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                if process.returncode is None:
                    process.kill()
                    kills += 1
                    await process.wait()
                    continue
            finished = await finish(process, deadline=240)
        stats = emu.stats()
    assert kills == 20
    assert finished.code == 0, finished.stderr
    assert not stats["duplicates"], f"{len(stats['duplicates'])} windows with two live runs"
    assert_exactly_once(stats, FLOW_FILE, hourly(START, hours))
