"""Scenario "rate": the tool at ``--rate 50/s`` against an emulator limiting 50 per sliding second.

The same windows then go through asyncio-throttle's ``Throttler(rate_limit=50, period=1.0)``
(``bench/throttle_client.py``) against a fresh emulator: the library the project was told to
use. Throughput is measured on the server's side, from the creation times of the runs (the
sustained rate, without process start-up); 429s and the most requests in one sliding second
are the emulator's own counts.
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

NAME = "rate"
TITLE = "Rate accuracy: --rate 50/s against an emulator limit of 50 per sliding second"
LIMIT = 50


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


def _tool(settings: Settings, windows: int, rep: int) -> dict[str, Any]:
    with emulator(settings, "--rate-limit", str(LIMIT)) as emu:
        log = settings.work / f"rate-tool-{rep}.jsonl"
        argv = [
            *backfill_command(),
            "run",
            *plan_flags(windows),
            "--rate",
            f"{LIMIT}/s",
            "--checkpoint",
            str(settings.work / f"rate-{rep}.jsonl"),
        ]
        measured = measure(
            argv,
            timeout=windows / LIMIT * 3 + 60,
            env=cli_env(emu.base_url),
            stdout=log,
            stderr=log,
        )
        check(measured, "backfill run", log)
        summary = cli_summary(log)
        view = _server_view(emu, windows, "backfill run --rate 50/s")
    view["end_to_end_per_s"] = round(windows / measured.wall, 3)
    view["client_cpu_s"] = round(measured.cpu, 3)
    view["client_429_seen"] = summary.get("rate_limited")
    return view


def _throttle(settings: Settings, windows: int, rep: int) -> dict[str, Any]:
    with emulator(settings, "--rate-limit", str(LIMIT)) as emu:
        log = settings.work / f"rate-throttle-{rep}.log"
        out = settings.work / f"rate-throttle-{rep}.json"
        argv = python_module(
            "bench.throttle_client", emu.base_url, "--windows", str(windows), "--rate", str(LIMIT)
        )
        measured = measure(
            argv,
            timeout=windows / LIMIT * 6 + 60,
            env=cli_env(emu.base_url),
            stdout=out,
            stderr=log,
        )
        check(measured, "bench.throttle_client", log)
        view = _server_view(emu, windows, "asyncio-throttle Throttler(50, 1.0) + aiohttp")
    view["end_to_end_per_s"] = round(windows / measured.wall, 3)
    view["client_cpu_s"] = round(measured.cpu, 3)
    return view


def run(settings: Settings) -> Result:
    windows = 150 if settings.quick else 1500
    result = Result(NAME, TITLE)
    tools: list[dict[str, Any]] = []
    throttles: list[dict[str, Any]] = []
    for rep in range(settings.repetitions):
        tools.append(_tool(settings, windows, rep))
        throttles.append(_throttle(settings, windows, rep))
    result.details = {"windows": windows, "limit": LIMIT, "tool": tools, "throttle": throttles}
    for view in (*tools, *throttles):
        if not view["all_windows"] or view["duplicates"]:
            result.notes.append(
                f"{view['client']}: {view['runs_created']} runs for {windows} windows, "
                f"{view['duplicates']} duplicated"
            )
    result.figure(
        "backfill sustained throughput",
        "runs/s",
        [v["sustained_per_s"] for v in tools],
        ">=",
        0.97 * LIMIT,
        "server side: (runs - 1) / (last createdAt - first createdAt)",
    )
    result.figure(
        "backfill 429s (emulator)", "429s", [v["rate_limited_429"] for v in tools], "==", 0
    )
    result.figure(
        "backfill most requests in a sliding second",
        "req",
        [v["max_requests_per_second"] for v in tools],
    )
    result.figure(
        "backfill end to end (incl. start-up)", "runs/s", [v["end_to_end_per_s"] for v in tools]
    )
    result.figure(
        "asyncio-throttle sustained throughput",
        "runs/s",
        [v["sustained_per_s"] for v in throttles],
    )
    result.figure(
        "asyncio-throttle 429s (emulator)", "429s", [v["rate_limited_429"] for v in throttles]
    )
    result.figure(
        "asyncio-throttle most requests in a sliding second",
        "req",
        [v["max_requests_per_second"] for v in throttles],
    )
    result.figure(
        "asyncio-throttle client CPU",
        "s",
        [v["client_cpu_s"] for v in throttles],
        note="every waiting task polls the throttler every 10 ms",
    )
    result.figure(
        "backfill / asyncio-throttle sustained throughput",
        "x",
        [
            ratio(a["sustained_per_s"], b["sustained_per_s"])
            for a, b in zip(tools, throttles, strict=True)
        ],
    )
    return result
