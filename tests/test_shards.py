"""Beyond one process: shards that split the plan, share the rate, and resume on their own."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    START,
    assert_exactly_once,
    cli_env,
    emulator,
    finish,
    hourly,
    run_cli,
    start_cli,
    two_flow_config,
    wait_for_runs,
)

HOURS = 240
SHARDS = 4
TOTAL_RATE = 80


def _config(tmp_path: Path) -> Path:
    checkpoint = f"{tmp_path}/ck-{{shard}}.jsonl"
    return two_flow_config(tmp_path, HOURS, checkpoint=checkpoint, rate=f"{TOTAL_RATE}/s")


def _shard_env(emu_env: dict[str, str], index: int) -> dict[str, str]:
    # Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX; the manifest sets the count.
    return emu_env | {"JOB_COMPLETION_INDEX": str(index), "BACKFILL_SHARD_COUNT": str(SHARDS)}


@pytest.mark.serial
async def test_four_shards_at_once_submit_every_window_exactly_once_under_the_total_rate(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    async with emulator(rate_limit=TOTAL_RATE, latency=0.01) as emu:
        env = cli_env(emu)
        processes = [
            await start_cli(["run", "--config", str(config)], _shard_env(env, i), tmp_path)
            for i in range(SHARDS)
        ]
        results = [await finish(p) for p in processes]
        stats = emu.stats()
        # In a pod with a shard count, `retry --checkpoint FILE` reads that very file.
        retry = await run_cli(
            ["retry", "--checkpoint", str(tmp_path / "ck-2.jsonl")], _shard_env(env, 1), tmp_path
        )
        assert retry.code == 0, retry.stderr
        assert emu.stats()["requests"]["total"] == stats["requests"]["total"]
    assert [r.code for r in results] == [0] * SHARDS, [r.stderr for r in results]
    assert_exactly_once(stats, FLOW_TABLE, hourly(START, HOURS))
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))
    assert stats["max_requests_per_second"] <= TOTAL_RATE
    assert stats["rate_limited"] == 0
    assert [r for r in stats["runs"] if r["delta_column"]] == [
        min((r for r in stats["runs"] if r["flow_id"] == FLOW_TABLE), key=lambda r: r["created_at"])
    ]
    # Each shard wrote its own checkpoint, and together they hold the whole plan once.
    status = await run_cli(
        ["status", "--checkpoint", str(tmp_path / "ck-{shard}.jsonl"), "--json"],
        cli_env(None),
        tmp_path,
    )
    document = orjson.loads(status.stdout)
    assert document["counts"]["submitted"] == 2 * HOURS
    keys = [(w["flow_id"], w["start"]) for w in document["windows"]]
    assert len(keys) == len(set(keys)) == 2 * HOURS
    text = await run_cli(
        ["status", "--checkpoint", str(tmp_path / "ck-{shard}.jsonl")], cli_env(None), tmp_path
    )
    assert f"all shards: {2 * HOURS} windows planned; {2 * HOURS} submitted" in text.stdout


async def test_a_killed_shard_restarted_with_its_index_resumes_from_its_own_checkpoint(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    rng = random.Random(8)
    async with emulator(latency=0.03) as emu:
        env = cli_env(emu)
        processes = [
            await start_cli(["run", "--config", str(config)], _shard_env(env, i), tmp_path)
            for i in range(SHARDS)
        ]
        await wait_for_runs(emu, 60)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        victim = processes[2]
        victim.kill()
        await victim.wait()
        restarted = await start_cli(["run", "--config", str(config)], _shard_env(env, 2), tmp_path)
        results = [await finish(p) for i, p in enumerate(processes) if i != 2]
        results.append(await finish(restarted))
        stats = emu.stats()
    assert [r.code for r in results] == [0] * SHARDS, [r.stderr for r in results]
    resumed = [line for line in results[-1].json_lines() if line["event"] == "resuming"]
    assert resumed, "the restarted shard did not pick up its checkpoint"
    assert_exactly_once(stats, FLOW_TABLE, hourly(START, HOURS))
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))


async def test_shards_split_the_plan_disjointly_and_whole(tmp_path: Path) -> None:
    config = _config(tmp_path)
    seen: list[tuple[str, int]] = []
    for index in range(SHARDS):
        result = await run_cli(
            ["plan", "--config", str(config), "--json", "--shard", f"{index}/{SHARDS}"],
            cli_env(None),
            tmp_path,
        )
        assert result.code == 0, result.stderr
        windows = result.json_lines()
        assert abs(len(windows) - 2 * HOURS / SHARDS) <= 2  # even shares
        seen += [(w["flow_id"], w["start"]) for w in windows]
    assert len(seen) == len(set(seen)) == 2 * HOURS


async def test_every_line_in_json_mode_parses_and_carries_its_context(tmp_path: Path) -> None:
    async with emulator(drop_rate=0.1, error_rate=0.1, fail_rate=0.2, seed=12) as emu:
        result = await run_cli(
            [
                "run",
                "--flow-id",
                FLOW_FILE,
                "--start",
                str(START),
                "--end",
                str(START + 3600 * 60),
                "--window",
                "1h",
                "--checkpoint",
                "ck.jsonl",
                "--wait",
                "--log-level",
                "debug",
                "--progress-interval",
                "0.2",
                "--rate",
                "100/s",
                "--reconcile-settle",
                "3",
            ],
            cli_env(emu),
            tmp_path,
        )
    assert result.code in (0, 1), result.stderr
    lines = [orjson.loads(line) for line in (result.stdout + result.stderr).splitlines() if line]
    assert all({"timestamp", "level", "event"} <= line.keys() for line in lines)
    assert all(line["timestamp"].endswith("Z") and "T" in line["timestamp"] for line in lines)
    events = {line["event"] for line in lines}
    assert {"backfill_started", "progress", "summary", "run_submitted", "run_finished"} <= events
    for line in lines:
        if line["event"] in ("run_submitted", "run_finished", "run_adopted", "request_in_doubt"):
            assert {"flow", "window_start", "window_end", "attempt"} <= line.keys(), line
        if line["event"] in ("run_submitted", "run_finished", "run_adopted"):
            assert line["run_id"], line
