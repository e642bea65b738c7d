"""Scenario "scaling": the real CLI at 1k, 10k, 100k and 1M windows; the cost per window is flat.

No latency, no limit, 64 in flight, a fresh server and checkpoint for every run. The server is
``bench/canned.py`` (201 to every ``POST /runs``, nothing kept: the emulator would keep a
million runs in gigabytes). CPU per run is user + system time of the CLI process over the
runs it created, start-up included (which is why the smallest plan costs more per run). The
cost of a window is the slope between two plan sizes, (CPU of the bigger - CPU of the
smaller) / (windows added), which leaves the fixed cost (start-up, checkpoint creation, exit;
a 1-window run shows it) out. "Growth" is the last slope over the one before (100k..1M over
10k..100k; with ``--quick``, 1k..10k over 1..1k): above 1 a window costs more in a bigger
plan. The 1M plan runs once (about four minutes of CPU), not once per repetition.
"""

from __future__ import annotations

import itertools

from bench.common import (
    FLOW_ID,
    START,
    BenchError,
    Result,
    Settings,
    backfill_command,
    canned_created,
    canned_server,
    check,
    cli_env,
    cli_summary,
    measure,
    ratio,
)

NAME = "scaling"
TITLE = "Scaling: the real CLI at 1k, 10k, 100k and 1M windows (no latency, no limit)"
GROWTH_TARGET = 1.15
ONCE = 1_000_000  # plans this big run in the first repetition only


def _minutes(windows: int) -> list[str]:
    """One-minute windows from 2010 (a million hourly ones would reach past 2100)."""
    end = START + windows * 60
    return ["--flow-id", FLOW_ID, "--start", str(START), "--end", str(end), "--window", "1m"]


def _one(settings: Settings, windows: int, rep: int) -> dict[str, float]:
    with canned_server(settings) as emu:
        log = settings.work / f"scaling-{windows}-{rep}.jsonl"
        argv = [
            *backfill_command(),
            "run",
            *_minutes(windows),
            "--rate",
            "100000/s",
            "--concurrency",
            "64",
            "--checkpoint",
            str(settings.work / f"scaling-{windows}-{rep}.ckpt.jsonl"),
        ]
        measured = measure(
            argv, timeout=120 + windows / 100, env=cli_env(emu.base_url), stdout=log, stderr=log
        )
        check(measured, "backfill run", log)
        summary = cli_summary(log)
        made = canned_created(emu)
    if summary.get("done") != windows or made != windows:
        raise BenchError(f"{windows} windows: {made} runs created, {summary.get('done')} done")
    (settings.work / f"scaling-{windows}-{rep}.ckpt.jsonl").unlink(missing_ok=True)
    return {
        "windows_per_s": windows / measured.wall,
        "cpu_us_per_run": measured.cpu / made * 1e6,
        "max_rss_mb": measured.max_rss_mb,
        "cpu_s": measured.cpu,
        "wall_s": measured.wall,
    }


def _size(windows: int) -> str:
    if windows >= ONCE:
        return f"{windows // ONCE}M"
    return f"{windows // 1000}k" if windows >= 1000 else str(windows)


def run(settings: Settings) -> Result:
    sizes = [1_000, 10_000] if settings.quick else [1_000, 10_000, 100_000, 1_000_000]
    result = Result(NAME, TITLE)
    runs: dict[int, list[dict[str, float]]] = {size: [] for size in [1, *sizes]}
    for rep in range(settings.repetitions):
        for size, done in runs.items():
            if size < ONCE or rep == 0:
                done.append(_one(settings, size, rep))
    fixed = [r["cpu_s"] for r in runs[1]]
    result.details = {"sizes": sizes, "runs": {str(k): v for k, v in runs.items()}}
    result.figure("fixed cost: a 1-window run, start to exit", "CPU s", fixed)
    for size in sizes:
        label = f"{size // 1000:,}k windows" if size < ONCE else f"{size // ONCE}M windows"
        result.figure(f"{label}: throughput", "windows/s", [r["windows_per_s"] for r in runs[size]])
        result.figure(f"{label}: CPU per run", "us", [r["cpu_us_per_run"] for r in runs[size]])
        result.figure(f"{label}: peak RSS", "MB", [r["max_rss_mb"] for r in runs[size]])
    slopes: list[list[float]] = []
    for small, big in itertools.pairwise([1, *sizes]):
        slope = [
            (b["cpu_s"] - a["cpu_s"]) / (big - small) * 1e6
            for a, b in zip(runs[small], runs[big], strict=False)  # 1M: the first repetition
        ]
        slopes.append(slope)
        result.figure(f"CPU per window, {_size(small)}..{_size(big)} windows", "us", slope)
    result.figure(
        "CPU per window growth (last slope / the one before)",
        "x",
        [ratio(b, a) for a, b in zip(slopes[-2], slopes[-1], strict=False)],
        "<=",
        GROWTH_TARGET,
    )
    if settings.quick:
        result.notes.append("quick: the 100k and 1M plans are dropped")
    return result
