"""One owner per checkpoint file by any path, and a checkpoint nobody can pull away.

Each case runs the real CLI against the emulator and is judged by the emulator's record of
runs (no window with a second run), by exit codes and by the stderr line.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
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
    interrupt,
    run_cli,
    runs_per_window,
    start_cli,
    wait_for_runs,
)

HOURS = 300


def _run(checkpoint: str, *extra: str, rate: str = "60/s") -> list[str]:
    return [
        "run",
        "--flow-id",
        FLOW_FILE,
        "--start",
        str(START),
        "--end",
        str(START + 3600 * HOURS),
        "--window",
        "1h",
        "--checkpoint",
        checkpoint,
        "--rate",
        rate,
        "--concurrency",
        "4",
        *extra,
    ]


def _no_window_twice(stats: dict[str, object]) -> None:
    twice = {w: n for w, n in runs_per_window(stats, FLOW_FILE).items() if n > 1}
    assert not twice, f"windows with a second run: {list(twice.items())[:3]}"


async def test_no_second_process_by_symlink_hard_link_or_after_the_lock_file_is_deleted(
    tmp_path: Path,
) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        # Slow enough to outlive three more start-ups on a loaded machine (~15 s).
        first = await start_cli(_run("ck.jsonl", rate="20/s"), env, tmp_path)
        await wait_for_runs(emu, 10)
        (tmp_path / "link.jsonl").symlink_to(tmp_path / "ck.jsonl")
        os.link(tmp_path / "ck.jsonl", tmp_path / "hard.jsonl")
        attempts = [
            await run_cli(_run("link.jsonl"), env, tmp_path),
            await run_cli(_run(str(tmp_path / "hard.jsonl")), env, tmp_path),
        ]
        (tmp_path / "ck.jsonl.lock").unlink()
        attempts.append(await run_cli(_run("ck.jsonl"), env, tmp_path))
        assert first.returncode is None, "the first process is still running"
        done = await finish(first)
        stats = emu.stats()
    for attempt in attempts:
        assert attempt.code == 3, attempt.stderr
        assert f"in use by process {first.pid}" in attempt.stderr
        assert len(attempt.stderr.strip().splitlines()) == 1
    assert done.code == 0, done.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))


async def test_a_lock_left_by_a_killed_process_is_no_lock(tmp_path: Path) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        first = await start_cli(_run("ck.jsonl"), env, tmp_path)
        await wait_for_runs(emu, 10)
        first.kill()
        await first.wait()
        holder = orjson.loads((tmp_path / "ck.jsonl.lock").read_bytes())
        assert holder["pid"] == first.pid  # the sidecar still names the dead process
        second = await run_cli(_run("ck.jsonl"), env, tmp_path)
        stats = emu.stats()
    assert second.code == 0, second.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder)


def _replace_by_copy(folder: Path) -> None:
    # What sync tools do: write a copy beside it, then rename it over the original.
    shutil.copyfile(folder / "ck.jsonl", folder / "ck.jsonl.tmp")
    os.replace(folder / "ck.jsonl.tmp", folder / "ck.jsonl")


def _truncate(folder: Path) -> None:
    os.truncate(folder / "ck.jsonl", 100)


def _append(folder: Path) -> None:
    with open(folder / "ck.jsonl", "ab") as handle:
        handle.write(b'{"t":"w","f":0,"s":1,"st":"submitting"}\n')


@pytest.mark.parametrize(
    ("pull", "said"),
    [
        (_remove_folder, "was removed"),
        (_replace_by_copy, "was replaced by another file"),
        (_truncate, "was truncated"),
        (_append, "was written by someone else"),
    ],
    ids=["folder removed", "replaced by cp + mv", "truncated", "appended"],
)
async def test_a_checkpoint_pulled_away_stops_the_run_with_74_and_nothing_more_is_sent(
    tmp_path: Path, pull: object, said: str
) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    async with emulator() as emu:
        process = await start_cli(_run(str(folder / "ck.jsonl")), cli_env(emu), tmp_path)
        await wait_for_runs(emu, 20)
        assert callable(pull)
        pull(folder)
        at_pull = len(emu.stats()["runs"])
        result = await finish(process)
        stats = emu.stats()
    assert result.code == 74, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert said in lines[0]
    # Only the requests already in flight (at most --concurrency) may still have landed.
    assert len(stats["runs"]) - at_pull <= 4
    assert len(stats["runs"]) < HOURS
    _no_window_twice(stats)


async def test_a_symlink_pointed_at_a_fresh_file_stops_the_run(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "ck.jsonl").write_bytes(b"")  # an empty file: a checkpoint to be
    (tmp_path / "ck.jsonl").symlink_to(volume / "ck.jsonl")
    async with emulator() as emu:
        process = await start_cli(_run("ck.jsonl"), cli_env(emu), tmp_path)
        await wait_for_runs(emu, 20)
        # The volume goes away and the same name now leads to a fresh, empty file.
        # (Swapped in one rename: in between, the run would rightly see it removed.)
        (tmp_path / "elsewhere.jsonl").write_bytes(b"")
        (tmp_path / "new-link").symlink_to(tmp_path / "elsewhere.jsonl")
        os.replace(tmp_path / "new-link", tmp_path / "ck.jsonl")
        at_pull = len(emu.stats()["runs"])
        result = await finish(process)
        stats = emu.stats()
    assert result.code == 74, result.stderr
    assert "was replaced by another file" in result.stderr
    assert len(stats["runs"]) - at_pull <= 4
    _no_window_twice(stats)


async def test_an_older_copy_put_back_is_refused_and_nothing_is_sent(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ck.jsonl"
    async with emulator() as emu:
        env = cli_env(emu)
        first = await start_cli(_run("ck.jsonl"), env, tmp_path)
        await wait_for_runs(emu, 20)
        interrupt(first, signal.SIGTERM)
        assert (await finish(first)).code == 143
        backup = checkpoint.read_bytes()
        second = await start_cli(_run("ck.jsonl"), env, tmp_path)
        await wait_for_runs(emu, 60)
        interrupt(second, signal.SIGTERM)
        assert (await finish(second)).code == 143
        checkpoint.write_bytes(backup)  # "restore it from a backup", with an old backup
        runs_before = len(emu.stats()["runs"])
        third = await run_cli(_run("ck.jsonl"), env, tmp_path)
        stats = emu.stats()
    assert third.code == 3, third.stderr
    assert "is an older copy" in third.stderr
    assert "ck.jsonl.lock" in third.stderr
    assert len(third.stderr.strip().splitlines()) == 1
    assert checkpoint.read_bytes() == backup
    assert len(stats["runs"]) == runs_before
    _no_window_twice(stats)


async def test_the_same_checkpoint_resumes_and_a_deleted_sidecar_accepts_a_copy(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "ck.jsonl"
    async with emulator() as emu:
        env = cli_env(emu)
        first = await start_cli(_run("ck.jsonl"), env, tmp_path)
        await wait_for_runs(emu, 20)
        interrupt(first, signal.SIGTERM)
        assert (await finish(first)).code == 143
        copy = checkpoint.read_bytes()
        checkpoint.write_bytes(copy)  # the same records: not older
        (tmp_path / "ck.jsonl.lock").unlink()  # and a lost sidecar is no obstacle
        resumed = await run_cli(_run("ck.jsonl"), env, tmp_path)
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, HOURS))


async def test_wrong_kinds_of_checkpoint_path_are_refused_before_anything_is_opened(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "ck.jsonl")
    cases = {
        str(fifo): "a FIFO",
        "loop": "a symlink loop",
        "dangling": "a dangling symlink",
        "/dev/null": "a character device",
        str(tmp_path): "a folder",
    }
    env = cli_env(None, BACKFILL_BASE_URL="http://127.0.0.1:9", BACKFILL_LOG_FORMAT="console")
    results = await asyncio.gather(
        *(run_cli(_run(path), env, tmp_path, deadline=30) for path in [*cases, "x" * 100_000])
    )
    for (path, kind), result in zip(cases.items(), results, strict=False):
        assert result.code == 2, (path, result.stderr)
        assert kind in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()
    assert os.path.exists("/dev/null")
    huge = results[-1]
    assert huge.code == 2
    assert len(huge.stderr) < 1000
