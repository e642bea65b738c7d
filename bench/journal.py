"""Scenario "journal": durable checkpoint writes from 64 tasks, and replay of a big checkpoint.

Writes: 64 tasks each take every 64th window of a plan and, like the engine's workers, await
a durable ``SUBMITTING`` record and then a durable ``SUBMITTED`` record with its run id
(``Journal.open(...)``: group commit), beside the same with ``group_commit=False`` (an fsync
per record, which exists for this comparison). Replay: a checkpoint of two records per window
is made with the real ``Journal`` for its header and first window, whose two lines are the
templates of every other window's lines (run ids are random-looking UUIDs, so the columns
compress as real ones do). That is the file a run killed at its end leaves (or an older
backfill wrote): its replay (``Journal.open``, read-only) is timed in a fresh child, whose
peak RSS is measured, then its first resume, which replays and compacts it. The compacted
file is what a run that exits leaves; its replay is timed the same way. Every part runs in
a child process of its own. The real CLI then resumes the compacted checkpoint: ``backfill
run`` with its plan (every window already accepted: it replays and exits; pointed at an
emulator that is never called) and ``backfill status``, each timed from start to exit with
its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from backfill.journal import Journal
from backfill.planner import FlowPlan, Plan
from backfill.state import WindowState
from bench.common import (
    FLOW_ID,
    Result,
    Settings,
    backfill_command,
    check,
    child_json,
    cli_env,
    created,
    emulator,
    measure,
    python_module,
    ratio,
)

NAME = "journal"
TITLE = "Journal: 64 concurrent durable writers; resume of a 1,000,000-window checkpoint"
WRITERS = 64
MINUTE = 60
FIRST = 1262304000  # 2010-01-01T00:00:00Z
RECORDS_TARGET = 20_000.0
RESUME_SECONDS = 5.0
RESUME_WINDOWS = 1_000_000
RESUME_RSS_MB = 500.0
CLI_SECONDS = 3.0  # `backfill run` and `backfill status` on a 1,000,000-window checkpoint
CLI_RSS_MB = 250.0


def _plan(windows: int) -> Plan:
    return Plan((FlowPlan.single(FLOW_ID, FIRST, FIRST + windows * MINUTE, MINUTE),))


def _run_id(index: int) -> str:
    """A run id as the service makes them: a random (version 4) UUID, here from the index."""
    digest = hashlib.blake2b(index.to_bytes(8, "big"), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


async def write(path: Path, windows: int, group_commit: bool) -> dict[str, float]:
    journal = Journal.open(path, _plan(windows), group_commit=group_commit)
    todo = list(journal.plan.windows())

    async def writer(first: int) -> None:
        for index in range(first, len(todo), WRITERS):
            window = todo[index]
            await journal.record(window, WindowState.SUBMITTING, attempt=1)
            await journal.record(window, WindowState.SUBMITTED, attempt=1, run_id=_run_id(index))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for first in range(WRITERS):
            group.create_task(writer(first))
    seconds = time.perf_counter() - started
    records, syncs = journal.records, journal.syncs
    await journal.close()
    return {"records": float(records), "syncs": float(syncs), "seconds": seconds}


async def _first_window(path: Path, plan: Plan) -> None:
    """The real journal writes the header and the first window's two records."""
    journal = Journal.open(path, plan)
    first = next(plan.windows())
    await journal.record(first, WindowState.SUBMITTING, attempt=1)
    await journal.record(first, WindowState.SUBMITTED, attempt=1, run_id=_run_id(0))
    await journal.close()


def build(path: Path, windows: int) -> dict[str, float]:
    """A checkpoint of ``windows`` windows, each submitted then accepted, in Journal's format."""
    started = time.perf_counter()
    plan = _plan(windows)
    asyncio.run(_first_window(path, plan))
    stream = plan.windows()
    first = next(stream)
    lines = path.read_bytes().splitlines()
    intent, accepted = orjson.loads(lines[-2]), orjson.loads(lines[-1])
    if intent.get("s") != first.start or accepted.get("id") != _run_id(0):
        raise RuntimeError(f"unexpected record format: {lines[-2:]!r}")
    dumps = orjson.dumps
    stamp = float(intent.get("ts", 0.0))
    chunk: list[bytes] = []
    with open(path, "ab") as out:
        for index, window in enumerate(stream, 1):
            intent["s"] = accepted["s"] = window.start
            if "ts" in intent:
                intent["ts"] = round(stamp + index / 1000, 3)
            accepted["id"] = _run_id(index)
            chunk += (dumps(intent), b"\n", dumps(accepted), b"\n")
            if len(chunk) >= 400_000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
    return {"bytes": float(path.stat().st_size), "seconds": time.perf_counter() - started}


def resume(path: Path, windows: int, *, readonly: bool = True) -> dict[str, float]:
    """``Journal.open`` of the checkpoint: read-only (as ``status``), or as a run's owner,
    which compacts a file due for it."""
    plan = _plan(windows)
    started = time.perf_counter()
    journal = Journal.open(path, None if readonly else plan, readonly=readonly)
    seconds = time.perf_counter() - started
    submitted = journal.counts()[WindowState.SUBMITTED]
    records = journal.replay.records
    compacted = journal.replay.compacted
    asyncio.run(journal.close())
    return {
        "seconds": seconds,
        "submitted": float(submitted),
        "lines": float(records),
        "compacted": float(compacted),
        "bytes": float(path.stat().st_size),
    }


def _cli_resume(settings: Settings, path: Path, windows: int) -> dict[str, dict[str, float]]:
    """``backfill run`` (nothing left to send) and ``backfill status`` on the checkpoint."""
    plan = [
        "--flow-id",
        FLOW_ID,
        "--start",
        str(FIRST),
        "--end",
        str(FIRST + windows * MINUTE),
        "--window",
        "1m",
    ]
    found: dict[str, dict[str, float]] = {}
    with emulator(settings) as emu:
        for command, argv in (
            ("run", [*backfill_command(), "run", *plan, "--checkpoint", str(path)]),
            ("status", [*backfill_command(), "status", "--checkpoint", str(path)]),
        ):
            log = settings.work / f"journal-cli-{command}.log"
            measured = measure(argv, timeout=300, env=cli_env(emu.base_url), stdout=log, stderr=log)
            check(measured, f"backfill {command}", log)
            found[command] = {
                "seconds": measured.wall,
                "cpu_s": measured.cpu,
                "max_rss_mb": measured.max_rss_mb,
            }
        if created(emu.stats()):
            raise RuntimeError("backfill run sent requests for windows already accepted")
    return found


def _child(settings: Settings, label: str, *args: str, timeout: float = 300) -> Any:
    return child_json(
        python_module("bench.journal", *args), timeout=timeout, work=settings.work, label=label
    )


def run(settings: Settings) -> Result:
    group_windows = 5_000 if settings.quick else 50_000
    single_windows = 500 if settings.quick else 5_000
    resume_windows = 100_000 if settings.quick else RESUME_WINDOWS
    result = Result(NAME, TITLE)
    grouped: list[dict[str, float]] = []
    single: list[dict[str, float]] = []
    resumed: list[tuple[dict[str, float], float]] = []
    for rep in range(settings.repetitions):
        for windows, flag, into in (
            (group_windows, "--group-commit", grouped),
            (single_windows, "--no-group-commit", single),
        ):
            path = settings.work / f"journal-write-{rep}{flag}.jsonl"
            label = f"journal-write-{rep}{flag}"
            out, _ = _child(settings, label, "write", str(path), str(windows), flag)
            into.append(out)
            path.unlink(missing_ok=True)
    resume_path = settings.work / "journal-resume.jsonl"
    lines_path = settings.work / "journal-resume-lines.jsonl"
    built, _ = _child(settings, "journal-build", "build", str(lines_path), str(resume_windows))
    # The file a run killed at its end leaves: replayed read-only (as `status` does) ...
    for rep in range(settings.repetitions):
        out, measured = _child(
            settings, f"journal-resume-{rep}", "resume", str(lines_path), str(resume_windows)
        )
        if int(out["submitted"]) != resume_windows:
            result.notes.append(f"replay found {out['submitted']} submitted windows")
        resumed.append((out, measured.max_rss_mb))
    # ... and resumed by a run, which replays it and compacts it (on a copy each time).
    first: list[tuple[dict[str, float], float]] = []
    for rep in range(settings.repetitions):
        shutil.copyfile(lines_path, resume_path)
        sidecar = resume_path.with_name(resume_path.name + ".lock")
        sidecar.unlink(missing_ok=True)
        out, measured = _child(
            settings,
            f"journal-compact-{rep}",
            "resume",
            str(resume_path),
            str(resume_windows),
            "--owner",
        )
        if not out["compacted"]:
            result.notes.append("the first resume of the line journal did not compact it")
        first.append((out, measured.max_rss_mb))
    lines_path.unlink(missing_ok=True)
    # The compacted file: what a run that exits leaves.
    dense: list[tuple[dict[str, float], float]] = []
    for rep in range(settings.repetitions):
        out, measured = _child(
            settings, f"journal-dense-{rep}", "resume", str(resume_path), str(resume_windows)
        )
        if int(out["submitted"]) != resume_windows:
            result.notes.append(f"compacted replay found {out['submitted']} submitted windows")
        dense.append((out, measured.max_rss_mb))
    clis = [_cli_resume(settings, resume_path, resume_windows) for _ in range(settings.repetitions)]
    resume_path.unlink(missing_ok=True)
    result.details = {
        "writers": WRITERS,
        "group_commit": {"windows": group_windows, "records": 2 * group_windows, "runs": grouped},
        "fsync_per_record": {"windows": single_windows, "records": 2 * single_windows},
        "resume": {"windows": resume_windows, "file_mb": round(built["bytes"] / 2**20, 1)},
        "directory": str(settings.work),
    }
    result.details["fsync_per_record"]["runs"] = single
    group_rate = [r["records"] / r["seconds"] for r in grouped]
    single_rate = [r["records"] / r["seconds"] for r in single]
    result.figure("group commit, 64 writers", "records/s", group_rate, ">=", RECORDS_TARGET)
    result.figure(
        "records per fsync (group commit)", "records", [r["records"] / r["syncs"] for r in grouped]
    )
    result.figure("fsync per record, 64 writers", "records/s", single_rate)
    result.figure(
        "group commit / fsync per record",
        "x",
        [ratio(a, b) for a, b in zip(group_rate, single_rate, strict=True)],
    )
    scale = resume_windows / RESUME_WINDOWS
    if settings.quick:
        result.notes.append(f"quick: replay of {resume_windows:,} windows; time target scaled")
    result.figure(
        f"replay of {resume_windows:,} windows, 2 lines each (Journal.open, read-only)",
        "s",
        [out["seconds"] for out, _ in resumed],
        "<=",
        round(RESUME_SECONDS * scale, 3),
    )
    result.figure("replay peak RSS", "MB", [rss for _, rss in resumed], "<=", RESUME_RSS_MB)
    result.figure(
        "bytes per window on disk, 2 lines each",
        "B",
        [built["bytes"] / resume_windows],
        note="what a run killed at its end leaves",
    )
    result.figure(
        "first resume of that file (replay + compaction)",
        "s",
        [out["seconds"] for out, _ in first],
        note=f"peak RSS {max(rss for _, rss in first):.0f} MB",
    )
    result.figure(
        f"replay of {resume_windows:,} compacted windows (Journal.open, read-only)",
        "s",
        [out["seconds"] for out, _ in dense],
    )
    result.figure("compacted replay peak RSS", "MB", [rss for _, rss in dense])
    result.figure(
        "bytes per window on disk, compacted",
        "B",
        [dense[0][0]["bytes"] / resume_windows],
        note="what a run that exits leaves",
    )
    for command in ("run", "status"):
        result.figure(
            f"backfill {command} on {resume_windows:,} windows, start to exit",
            "s",
            [c[command]["seconds"] for c in clis],
            "<=",
            round(CLI_SECONDS * scale, 3),
        )
        result.figure(
            f"backfill {command} on {resume_windows:,} windows, CPU",
            "s",
            [c[command]["cpu_s"] for c in clis],
            note="user + system: what a loaded machine does not inflate",
        )
        result.figure(
            f"backfill {command} on {resume_windows:,} windows, peak RSS",
            "MB",
            [c[command]["max_rss_mb"] for c in clis],
            "<=",
            CLI_RSS_MB,
        )
    result.details["cli"] = clis
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal")
    parser.add_argument("what", choices=("write", "build", "resume"))
    parser.add_argument("path", type=Path)
    parser.add_argument("windows", type=int)
    parser.add_argument("--group-commit", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--owner", action="store_true", help="resume: open as a run does")
    args = parser.parse_args(argv)
    if args.what == "write":
        out = asyncio.run(write(args.path, args.windows, args.group_commit))
    elif args.what == "build":
        out = build(args.path, args.windows)
    else:
        out = resume(args.path, args.windows, readonly=not args.owner)
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
