"""Scenario "planning": ten years of one-minute windows streamed through the planner.

Each repetition is a fresh child process (``python -m bench.planning --child N``) that builds
``FlowPlan.single(...)`` and counts its ``windows()``; the child times the stream, and its peak
RSS (``ru_maxrss`` from ``os.wait4``) is the planner's, interpreter included.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from backfill.planner import FlowPlan
from bench.common import FLOW_ID, Result, Settings, child_json, python_module

NAME = "planning"
TITLE = "Planning: 10 years of 1-minute windows streamed through the planner"
MINUTE = 60
FIRST = 1262304000  # 2010-01-01T00:00:00Z
TEN_YEARS = 1577836800  # 2020-01-01T00:00:00Z: 5,258,880 minutes later
ONE_YEAR = 1293840000  # 2011-01-01T00:00:00Z
FULL_WINDOWS = (TEN_YEARS - FIRST) // MINUTE
SECONDS_TARGET = 3.0
RSS_TARGET_MB = 60.0


def child(end: int) -> dict[str, float]:
    plan = FlowPlan.single(FLOW_ID, FIRST, end, MINUTE)
    started = time.perf_counter()
    count = 0
    for _ in plan.windows():
        count += 1
    seconds = time.perf_counter() - started
    return {"windows": float(count), "seconds": seconds}


def run(settings: Settings) -> Result:
    end = ONE_YEAR if settings.quick else TEN_YEARS
    expected = (end - FIRST) // MINUTE
    scale = expected / FULL_WINDOWS
    result = Result(NAME, TITLE)
    seconds: list[float] = []
    rss: list[float] = []
    for rep in range(settings.repetitions):
        out, measured = child_json(
            python_module("bench.planning", "--child", str(end)),
            timeout=120,
            work=settings.work,
            label=f"planning-{rep}",
        )
        if int(out["windows"]) != expected:
            result.notes.append(f"the planner gave {out['windows']} windows, not {expected}")
        seconds.append(out["seconds"])
        rss.append(measured.max_rss_mb)
    to = "2011-01-01" if settings.quick else "2020-01-01"
    result.details = {"windows": expected, "window": "1m", "from": "2010-01-01", "to": to}
    if settings.quick:
        result.notes.append(f"quick: {expected:,} windows; the time target is scaled to match")
    result.figure("windows streamed", "windows", [float(expected)] * len(seconds))
    result.figure("time to stream them", "s", seconds, "<=", round(SECONDS_TARGET * scale, 3))
    result.figure("windows per second", "windows/s", [expected / s for s in seconds])
    result.figure("peak RSS of the child", "MB", rss, "<=", RSS_TARGET_MB)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.planning")
    parser.add_argument("--child", type=int, metavar="END", required=True, help="stream to END")
    args = parser.parse_args(argv)
    print(orjson.dumps(child(args.child)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
