"""SIGHUP is a graceful stop; a closed or full stdout never fails a backfill that did its work."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest

from backfill import cli

from .harness import (
    FLOW_FILE,
    START,
    assert_exactly_once,
    checkpoint_counts,
    cli_env,
    emulator,
    finish,
    hourly,
    hourly_run,
    interrupt,
    outcome,
    run_cli,
    start_cli,
    wait_for_runs,
)


async def test_sighup_is_a_graceful_stop_with_exit_129_and_the_resume_finishes(
    tmp_path: Path,
) -> None:
    async with emulator(latency=0.2) as emu:
        env = cli_env(emu)
        args = hourly_run(FLOW_FILE, 300, "--rate", "100/s", "--concurrency", "16", "--grace", "5")
        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 30)
        interrupt(process, signal.SIGHUP)
        stopped = await finish(process)
        assert stopped.code == 129, stopped.stderr
        assert "Traceback" not in stopped.stderr
        counts = await checkpoint_counts(tmp_path)
        assert counts["submitting"] == 0  # every request in flight got its answer in the grace
        assert 30 <= counts["submitted"] + counts["succeeded"] < 300
        resumed = await run_cli(args, env, tmp_path)
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr
    interrupted = [line for line in stopped.json_lines() if line["event"] == "interrupted"]
    assert interrupted[0]["signal"] == "SIGHUP"
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 300))


def test_a_sighup_before_the_run_is_under_way_exits_129() -> None:
    # Until the engine installs its graceful handler nothing was sent: leaving at once is safe.
    with pytest.raises(SystemExit) as info:
        cli._terminated(signal.SIGHUP, None)
    assert info.value.code == 129


async def test_run_piped_into_head_exits_with_the_windows_code(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    async with emulator() as emu:
        process = await start_cli(
            hourly_run(FLOW_FILE, 150, "--rate", "100/s", "--progress-interval", "0.1"),
            cli_env(emu),
            tmp_path,
            stdout=write_end,
        )
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:  # `| head -1`: one line, then gone
            first = await asyncio.to_thread(reader.readline)
        assert orjson.loads(first)["event"]
        code, stderr = await outcome(process)
        stats = emu.stats()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 150))


async def test_run_with_stdout_on_a_full_device_exits_with_the_windows_code(
    tmp_path: Path,
) -> None:
    async with emulator() as emu:
        with open("/dev/full", "wb") as full:
            process = await start_cli(
                hourly_run(FLOW_FILE, 100, "--rate", "100/s"), cli_env(emu), tmp_path, stdout=full
            )
            code, stderr = await outcome(process)
        stats = emu.stats()
    assert code == 0, stderr
    assert stderr == ""
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 100))


async def test_run_with_failed_windows_and_a_full_stdout_still_exits_1(tmp_path: Path) -> None:
    async with emulator(fail_rate=1.0) as emu:
        with open("/dev/full", "wb") as full:
            process = await start_cli(
                hourly_run(FLOW_FILE, 5, "--rate", "100/s", "--wait", "--max-attempts", "1"),
                cli_env(emu),
                tmp_path,
                stdout=full,
            )
            code, stderr = await outcome(process)
    assert code == 1, stderr
    assert "Traceback" not in stderr


async def test_plan_piped_into_head_is_quiet(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        "plan",
        "--flow-id",
        FLOW_FILE,
        "--start",
        "2020-01-01",
        "--end",
        "2024-01-01",
        "--window",
        "1m",
        "--json",
        env=cli_env(None),
        cwd=tmp_path,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert orjson.loads(await asyncio.to_thread(reader.readline))["flow_id"] == FLOW_FILE
    code, stderr = await outcome(process)
    assert code == 0, stderr
    assert stderr == ""


async def test_run_with_stdout_closed_keeps_its_logs_out_of_the_checkpoint(
    tmp_path: Path,
) -> None:
    # `backfill run ... >&-`: descriptor 1 is free, and the checkpoint must not become it.
    args = hourly_run(FLOW_FILE, 50, "--rate", "100/s")
    async with emulator() as emu:
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            'exec "$@" >&-',
            "sh",
            sys.executable,
            "-m",
            "backfill",
            *args,
            env=cli_env(emu, BACKFILL_LOG_FORMAT="auto"),  # it asks stdout whether it is a tty
            cwd=tmp_path,
            stderr=asyncio.subprocess.PIPE,
        )
        code, stderr = await outcome(process)
        again = await run_cli(args, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert code == 0, stderr
    assert stderr == ""
    assert again.code == 0, again.stderr  # the checkpoint reads: nothing but records in it
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 50))
