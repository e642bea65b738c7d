"""Scenario "emulator": the emulator alone must serve 2,000 POST /runs per second.

Runs ``python -m bench.emulator_bench --json`` (``--quick`` passed on) in a child process and
reports its figures: the median of its timed rounds, each round's rate, the server's CPU per
request and the latency percentiles.
"""

from __future__ import annotations

from bench.common import Result, Settings, child_json, python_module

NAME = "emulator"
TITLE = "Emulator alone: POST /runs per second (bench/emulator_bench.py)"
TARGET = 2000.0


def run(settings: Settings) -> Result:
    result = Result(NAME, TITLE)
    args = ["--json", "--rounds", str(settings.repetitions)]
    if settings.quick:
        args.append("--quick")
    out, _ = child_json(
        python_module("bench.emulator_bench", *args),
        timeout=300,
        work=settings.work,
        label="emulator-bench",
    )
    result.details = out
    result.figure("POST /runs served", "POST/s", [float(r) for r in out["rounds"]], ">=", TARGET)
    if out.get("server_cpu_us_per_post") is not None:
        result.figure("server CPU per POST", "us", [float(out["server_cpu_us_per_post"])])
    result.figure("p99 latency (best round)", "ms", [float(out["p99_ms"])])
    if out.get("failed"):
        result.notes.append(f"{out['failed']} requests failed")
    return result
