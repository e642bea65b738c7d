"""Exactly once, tried hard: kill -9 at random, lost answers, signals, two processes, bad files.

Every verdict comes from the emulator's own record of runs, not from what the tool claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    START,
    assert_exactly_once,
    checkpoint_counts,
    cli_env,
    emulator,
    finish,
    hourly,
    hourly_run,
    interrupt,
    run_cli,
    start_cli,
    wait_for_runs,
)


async def test_kill_9_at_random_moments_thirty_times(tmp_path: Path) -> None:
    """SIGKILL leaves intents without answers; every resume must settle them, never resend."""
    rng = random.Random(20261128)
    hours = 1500
    kills = 0
    async with emulator(latency=0.03, jitter=0.02, seed=5) as emu:
        env = cli_env(emu)
        args = hourly_run(
            FLOW_TABLE, hours, "--delta-column", "DOB", "--rate", "150/s", "--concurrency", "24"
        )
        finished = None
        while finished is None:
            process = await start_cli(args, env, tmp_path)
            if kills < 30:
                # Kill once the process is past start-up and requests are in flight.
                before = len(emu.stats()["runs"])
                await wait_for_runs(emu, before + 1)
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                    kills += 1
                    continue
            finished = await finish(process)
        stats = emu.stats()
    assert kills >= 30
    assert finished.code == 0, finished.stderr
    assert_exactly_once(stats, FLOW_TABLE, hourly(START, hours))
    with_delta = [r for r in stats["runs"] if r["delta_column"] is not None]
    assert len(with_delta) == 1
    counts = await checkpoint_counts(tmp_path)
    assert counts["submitted"] == hours


async def test_lost_answers_and_server_errors_still_give_one_run_per_window(tmp_path: Path) -> None:
    async with emulator(drop_rate=0.2, error_rate=0.2, seed=11) as emu:
        result = await run_cli(
            hourly_run(
                FLOW_FILE, 300, "--rate", "400/s", "--concurrency", "16", "--reconcile-settle", "5"
            ),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert stats["dropped"] > 20
    assert stats["injected_errors"] > 20
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 300))
    summary = next(line for line in result.json_lines() if line["event"] == "summary")
    assert summary["adopted_after_doubt"] > 0
    assert summary["resent_after_doubt"] > 0


@pytest.mark.serial
async def test_sigterm_exits_143_in_grace_and_leaves_nothing_in_doubt(tmp_path: Path) -> None:
    async with emulator(latency=0.2) as emu:
        env = cli_env(emu)
        args = hourly_run(FLOW_FILE, 400, "--rate", "100/s", "--concurrency", "16", "--grace", "5")
        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 30)
        signalled = time.monotonic()
        interrupt(process, signal.SIGTERM)
        stopped = await finish(process)
        took = time.monotonic() - signalled
        assert stopped.code == 143, stopped.stderr
        assert took < 5
        counts = await checkpoint_counts(tmp_path)
        assert counts["submitting"] == 0  # every in-flight answer arrived within the grace
        lists_before = sum(emu.stats()["requests"]["by_endpoint"]["GET /runs"].values())
        resumed = await run_cli(args, env, tmp_path)
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr
    # Nothing was in doubt, so no reconciliation: only the one listing of the flow's runs that
    # looks for runs the service already has before new windows are sent (a page per 100).
    pages = len(stats["runs"]) // 100 + 1
    assert sum(stats["requests"]["by_endpoint"]["GET /runs"].values()) <= lists_before + pages
    assert not any(line["event"] == "in_doubt_on_resume" for line in resumed.json_lines())
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 400))


@pytest.mark.serial  # answers must still be in flight when the 0.3 s grace ends
async def test_grace_over_abandons_requests_and_the_resume_adopts_their_runs(
    tmp_path: Path,
) -> None:
    async with emulator(latency=1.5) as emu:
        env = cli_env(emu)
        args = hourly_run(FLOW_FILE, 20, "--rate", "200/s", "--concurrency", "8", "--grace", "0.3")
        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 8)
        interrupt(process, signal.SIGTERM)
        stopped = await finish(process)
        assert stopped.code == 143, stopped.stderr
        assert (await checkpoint_counts(tmp_path))["submitting"] > 0  # answers never arrived
        resumed = await run_cli(args, env, tmp_path)
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr
    summary = next(line for line in resumed.json_lines() if line["event"] == "summary")
    assert summary["adopted_after_doubt"] > 0
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 20))


@pytest.mark.serial
async def test_a_second_process_on_the_same_checkpoint_exits_3_at_once(tmp_path: Path) -> None:
    async with emulator(latency=0.05) as emu:
        env = cli_env(emu)
        # Slow enough (6 s) that the first outlives the second's start-up on a loaded machine.
        args = hourly_run(FLOW_FILE, 150, "--rate", "25/s")
        first = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 5)
        started = time.monotonic()
        second = await run_cli(args, env, tmp_path)
        assert time.monotonic() - started < 5
        assert second.code == 3
        assert f"process {first.pid}" in second.stderr
        done = await finish(first)
        stats = emu.stats()
    assert done.code == 0, done.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 150))


async def _recorded(tmp_path: Path, hours: int) -> Path:
    """A finished checkpoint of ``hours`` windows."""
    async with emulator() as emu:
        result = await run_cli(hourly_run(FLOW_FILE, hours), cli_env(emu), tmp_path)
        assert result.code == 0, result.stderr
    return tmp_path / "ck.jsonl"


async def test_a_torn_last_line_is_dropped_and_reported(tmp_path: Path) -> None:
    checkpoint = await _recorded(tmp_path, 5)
    with checkpoint.open("ab") as handle:
        handle.write(b'{"t":"w","f":0,"s":17040')
    async with emulator() as emu:
        result = await run_cli(hourly_run(FLOW_FILE, 5), cli_env(emu), tmp_path)
        assert emu.stats()["runs"] == []
    assert result.code == 0, result.stderr
    assert any(line["event"] == "checkpoint_torn_line_dropped" for line in result.json_lines())
    assert checkpoint.read_bytes().endswith(b"}\n")


async def test_a_corrupt_middle_line_is_refused_and_never_rewritten(tmp_path: Path) -> None:
    checkpoint = await _recorded(tmp_path, 5)
    lines = checkpoint.read_bytes().splitlines(keepends=True)
    lines[3] = b'{"t":"w","f":0,"s":"garbage"\n'
    checkpoint.write_bytes(b"".join(lines))
    before = checkpoint.read_bytes()
    result = await run_cli(
        hourly_run(FLOW_FILE, 5), cli_env(None, BACKFILL_LOG_FORMAT="console"), tmp_path
    )
    assert result.code == 3
    assert "ck.jsonl:4" in result.stderr
    assert checkpoint.read_bytes() == before


async def test_a_checkpoint_of_another_format_version_is_refused(tmp_path: Path) -> None:
    checkpoint = await _recorded(tmp_path, 3)
    lines = checkpoint.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"format":2', b'"format":9')
    checkpoint.write_bytes(b"".join(lines))
    before = checkpoint.read_bytes()
    result = await run_cli(
        hourly_run(FLOW_FILE, 3), cli_env(None, BACKFILL_LOG_FORMAT="console"), tmp_path
    )
    assert result.code == 3
    assert "format 9" in result.stderr
    assert checkpoint.read_bytes() == before


async def test_a_truncated_header_alone_is_started_over(tmp_path: Path) -> None:
    (tmp_path / "ck.jsonl").write_bytes(b'{"kind":"backfill-checkpoint","form')
    async with emulator() as emu:
        result = await run_cli(hourly_run(FLOW_FILE, 4), cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 4))


async def test_another_plan_is_refused_with_what_differs_and_extend_adds_windows(
    tmp_path: Path,
) -> None:
    await _recorded(tmp_path, 6)
    env = cli_env(None, BACKFILL_LOG_FORMAT="console")
    refused = await run_cli(hourly_run(FLOW_FILE, 6, "--window", "2h"), env, tmp_path)
    assert refused.code == 3
    assert "window 1h recorded, 2h requested" in refused.stderr
    later = await run_cli(hourly_run(FLOW_FILE, 9), env, tmp_path)
    assert later.code == 3
    assert "--extend" in later.stderr
    # Another seed: a fresh emulator must not mint the run ids the checkpoint already holds
    # (one run id is one window's, and the tool refuses a service that says otherwise).
    async with emulator(seed=1) as emu:
        extended = await run_cli(hourly_run(FLOW_FILE, 9, "--extend"), cli_env(emu), tmp_path)
        stats = emu.stats()
    assert extended.code == 0, extended.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START + 6 * 3600, 3))
    assert (await checkpoint_counts(tmp_path))["submitted"] == 9


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """A folder no write reaches. Root ignores permission bits: as root it is a ro mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


async def test_a_read_only_checkpoint_folder_exits_74(tmp_path: Path) -> None:
    """As in a pod whose volume is mounted read-only: every write fails."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    env = cli_env(None, BACKFILL_BASE_URL="http://127.0.0.1:9", BACKFILL_LOG_FORMAT="console")
    with _read_only(folder):
        result = await run_cli(
            hourly_run(FLOW_FILE, 3, "--checkpoint", str(folder / "ck.jsonl")), env, tmp_path
        )
        assert result.code == 74, result.stderr
        assert "could not be written" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert list(folder.iterdir()) == []


async def test_a_full_disk_exits_74_and_keeps_every_durable_record(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the checkpoint's writes fail with EFBIG mid-run, as a full disk would."""
    limit = 6000

    def small_files() -> None:
        import resource  # noqa: PLC0415 - only in the child

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    async with emulator() as emu:
        env = cli_env(emu)
        process = await asyncio.create_subprocess_exec(
            *_python_cli(),
            *hourly_run(FLOW_FILE, 200, "--rate", "300/s"),
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=small_files,
        )
        full = await finish(process)
        assert full.code == 74, full.stderr
        assert (tmp_path / "ck.jsonl").stat().st_size <= limit
        counts = await checkpoint_counts(tmp_path)
        accepted_before = counts["submitted"]
        assert 0 < accepted_before < 200
        resumed = await run_cli(hourly_run(FLOW_FILE, 200, "--rate", "300/s"), env, tmp_path)
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 200))


def _python_cli() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable, "-m", "backfill"]
