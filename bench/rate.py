"""Scenario "rate": exact rates at 5/s, 50/s and 200/s, and four limiters on the same load.

For each speed N, a fresh emulator refuses (429) more than N requests in any sliding second,
and the real CLI runs ``--rate N/s`` for 60 s worth of windows (``--quick``: 3 s). Everything
is judged on the server's side: the sustained rate from the runs' creation times, the 429s,
the most requests in one sliding second. The CLI's CPU while it waits on the limiter is its
CPU over its wall time (a share of one core), start-up included.

Then the same load (20 s worth of windows; ``--quick``: 50/s only, 3 s) goes through four
limiters in one small aiohttp client (``bench/limiter_client.py``): backfill's
``RateLimiter``, a bare 20-line GCRA, aiolimiter's ``AsyncLimiter`` and asyncio-throttle's
``Throttler``, each against a fresh emulator. One run per speed and limiter (the runs are
long; ``--repetitions`` does not multiply them).
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    Emulator,
    Result,
    Settings,
    backfill_command,
    check,
    cli_env,
    cli_summary,
    created,
    emulator,
    measure,
    plan_flags,
    python_module,
    ratio,
    sustained_rate,
)
from bench.limiter_client import LIMITERS

NAME = "rate"
TITLE = "Rate: --rate 5/50/200 per second against a sliding-second limit; four limiters compared"
SPEEDS = (5, 50, 200)
SECONDS = 60
COMPARE_SECONDS = 20
QUICK_SECONDS = 3
SHARE_TARGET = 0.98  # of the rate, sustained
CPU_TARGET = 0.05  # of a core while waiting, at 50/s


def _server_view(emu: Emulator, windows: int, what: str) -> dict[str, Any]:
    stats = emu.stats()
    made = created(stats)
    return {
        "runs_created": made,
        "all_windows": made == windows,
        "sustained_per_s": round(sustained_rate(stats), 3),
        "rate_limited_429": int(stats["rate_limited"]),
        "max_requests_per_second": int(stats["max_requests_per_second"]),
        "duplicates": len(stats["duplicates"]),
        "client": what,
    }


def _tool(settings: Settings, speed: int, windows: int) -> dict[str, Any]:
    with emulator(settings, "--rate-limit", str(speed)) as emu:
        log = settings.work / f"rate-tool-{speed}.jsonl"
        argv = [
            *backfill_command(),
            "run",
            *plan_flags(windows),
            "--rate",
            f"{speed}/s",
            "--checkpoint",
            str(settings.work / f"rate-{speed}.jsonl"),
        ]
        measured = measure(
            argv,
            timeout=windows / speed * 3 + 60,
            env=cli_env(emu.base_url),
            stdout=log,
            stderr=log,
        )
        check(measured, "backfill run", log)
        summary = cli_summary(log)
        view = _server_view(emu, windows, f"backfill run --rate {speed}/s")
    view["client_cpu_s"] = round(measured.cpu, 3)
    view["client_core_share"] = round(measured.cpu / measured.wall, 4)
    view["client_429_seen"] = summary.get("rate_limited")
    return view


def _compared(settings: Settings, limiter: str, speed: int, windows: int) -> dict[str, Any]:
    with emulator(settings, "--rate-limit", str(speed)) as emu:
        log = settings.work / f"rate-{limiter}-{speed}.log"
        out = settings.work / f"rate-{limiter}-{speed}.json"
        argv = python_module(
            "bench.limiter_client",
            emu.base_url,
            "--limiter",
            limiter,
            "--windows",
            str(windows),
            "--rate",
            str(speed),
        )
        measured = measure(
            argv,
            timeout=windows / speed * 6 + 60,
            env=cli_env(emu.base_url),
            stdout=out,
            stderr=log,
        )
        check(measured, f"bench.limiter_client --limiter {limiter}", log)
        view = _server_view(emu, windows, f"{limiter} at {speed}/s")
    view["client_cpu_s"] = round(measured.cpu, 3)
    view["client_core_share"] = round(measured.cpu / measured.wall, 4)
    return view


def run(settings: Settings) -> Result:
    seconds = QUICK_SECONDS if settings.quick else SECONDS
    compare_seconds = QUICK_SECONDS if settings.quick else COMPARE_SECONDS
    compare_speeds = (50,) if settings.quick else SPEEDS
    result = Result(NAME, TITLE)
    tools = {speed: _tool(settings, speed, speed * seconds) for speed in SPEEDS}
    compared = {
        (limiter, speed): _compared(settings, limiter, speed, speed * compare_seconds)
        for speed in compare_speeds
        for limiter in LIMITERS
    }
    result.details = {
        "seconds": seconds,
        "compare_seconds": compare_seconds,
        "tool": {str(k): v for k, v in tools.items()},
        "compared": {f"{k[0]}@{k[1]}": v for k, v in compared.items()},
    }
    for view in (*tools.values(), *compared.values()):
        if not view["all_windows"] or view["duplicates"]:
            result.notes.append(
                f"{view['client']}: {view['runs_created']} runs created, "
                f"{view['duplicates']} duplicated"
            )
    if settings.quick:
        result.notes.append(f"quick: {seconds} s per speed; limiters compared at 50/s only")
    for speed, view in tools.items():
        result.figure(
            f"backfill at {speed}/s: sustained / target",
            "x",
            [ratio(view["sustained_per_s"], speed)],
            ">=",
            SHARE_TARGET,
            "server side: (runs - 1) / (last createdAt - first createdAt)",
        )
        result.figure(
            f"backfill at {speed}/s: most in a sliding second / target",
            "x",
            [ratio(view["max_requests_per_second"], speed)],
            "<=",
            1.0,
        )
        result.figure(f"backfill at {speed}/s: 429s", "429s", [view["rate_limited_429"]], "==", 0)
        result.figure(
            f"backfill at {speed}/s: CPU while waiting",
            "core",
            [view["client_core_share"]],
            "<=" if speed == 50 else None,
            CPU_TARGET if speed == 50 else None,
            "CPU / wall time of the whole run, start-up included",
        )
    for (limiter, speed), view in compared.items():
        label = f"same load, {limiter} limiter at {speed}/s"
        result.figure(f"{label}: sustained / target", "x", [ratio(view["sustained_per_s"], speed)])
        result.figure(
            f"{label}: most in a sliding second / target",
            "x",
            [ratio(view["max_requests_per_second"], speed)],
        )
        result.figure(f"{label}: 429s", "429s", [view["rate_limited_429"]])
        result.figure(f"{label}: client CPU", "core", [view["client_core_share"]])
    return result
