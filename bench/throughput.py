"""Scenario "throughput": the real CLI against a bare aiohttp loop, curl and requests.

The emulator answers after 20 ms +/- 5 ms; nothing limits the rate; 64 requests in flight for
everyone. The clients post the same bodies with the same headers to the same emulator (reset
between them, in an order that rotates with each repetition) and keep every run id: backfill,
(c) a bare aiohttp loop with a ``Semaphore(64)`` (the floor: no checkpoint, no retries), the
same with an fsynced intent per window, (a) ``xargs -P 64 curl``, (b) requests in 64 threads.
Throughput is windows over the client's whole wall time, start-up included, as a user waits
for it; CPU is user + system time of the client's process tree (``os.wait4``), the emulator's
excluded. CPU per run is given all-in (start-up included) and marginal: (CPU of the N-window
run - CPU of a 1-window run) / (N - 1), for backfill and the bare loop alike. Ratios are taken
within each repetition, then their median is reported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    API_KEY,
    ORG_ID,
    ROOT,
    SANDBOX,
    TOKEN,
    BenchError,
    Emulator,
    Measured,
    Result,
    Settings,
    backfill_command,
    check,
    clean_env,
    cli_env,
    cli_summary,
    created,
    emulator,
    measure,
    plan_flags,
    ratio,
    sustained_rate,
    write_bodies,
)

NAME = "throughput"
TITLE = "Throughput without a limit: 20 ms +/- 5 ms latency, 64 in flight"
CONCURRENCY = 64
BASELINES = ROOT / "bench" / "baselines"

Client = Callable[[Settings, Emulator, int, int, Path], Measured]


def _baseline_env() -> dict[str, str]:
    return clean_env(ACCESS_TOKEN=TOKEN, API_KEY=API_KEY, ORG_ID=ORG_ID, SANDBOX_NAME=SANDBOX)


def _timeout(windows: int) -> float:
    return 60 + windows / 50  # far beyond any sane run; only a hang reaches it


def tool(settings: Settings, emu: Emulator, windows: int, rep: int, bodies: Path) -> Measured:
    log = settings.work / f"throughput-tool-{windows}-{rep}.jsonl"
    argv = [
        *backfill_command(),
        "run",
        *plan_flags(windows),
        "--rate",
        "100000/s",
        "--concurrency",
        str(CONCURRENCY),
        "--checkpoint",
        str(settings.work / f"throughput-{windows}-{rep}.jsonl"),
    ]
    measured = measure(
        argv, timeout=_timeout(windows), env=cli_env(emu.base_url), stdout=log, stderr=log
    )
    check(measured, "backfill run", log)
    summary = cli_summary(log)
    if summary.get("done") != windows:
        raise BenchError(f"backfill run finished {summary.get('done')} of {windows} windows")
    return measured


def curl(settings: Settings, emu: Emulator, windows: int, rep: int, bodies: Path) -> Measured:
    answers = settings.work / f"throughput-curl-{rep}.answers"
    err = settings.work / f"throughput-curl-{rep}.err"
    argv = [
        "bash",
        str(BASELINES / "curl_xargs.sh"),
        emu.base_url,
        str(bodies),
        str(answers),
        str(CONCURRENCY),
    ]
    measured = measure(argv, timeout=_timeout(windows), env=_baseline_env(), stderr=err)
    check(measured, "curl_xargs.sh", err)
    return measured


def threads(settings: Settings, emu: Emulator, windows: int, rep: int, bodies: Path) -> Measured:
    answers = settings.work / f"throughput-requests-{rep}.answers"
    err = settings.work / f"throughput-requests-{rep}.err"
    argv = [
        sys.executable,
        str(BASELINES / "requests_pool.py"),
        emu.base_url,
        str(bodies),
        str(answers),
        "--workers",
        str(CONCURRENCY),
    ]
    measured = measure(argv, timeout=_timeout(windows), env=_baseline_env(), stderr=err)
    check(measured, "requests_pool.py", err)
    return measured


def _bare(
    settings: Settings, emu: Emulator, windows: int, rep: int, bodies: Path, *, journal: bool
) -> Measured:
    label = f"throughput-aiohttp{'-journal' if journal else ''}-{windows}-{rep}"
    answers = settings.work / f"{label}.answers"
    err = settings.work / f"{label}.err"
    argv = [
        sys.executable,
        str(BASELINES / "aiohttp_loop.py"),
        emu.base_url,
        str(bodies),
        str(answers),
        "--concurrency",
        str(CONCURRENCY),
        "--windows",
        str(windows),
    ]
    if journal:
        argv += ["--journal", str(settings.work / f"{label}.journal")]
    measured = measure(argv, timeout=_timeout(windows), env=_baseline_env(), stderr=err)
    check(measured, "aiohttp_loop.py", err)
    return measured


def bare(settings: Settings, emu: Emulator, windows: int, rep: int, bodies: Path) -> Measured:
    return _bare(settings, emu, windows, rep, bodies, journal=False)


def bare_journal(
    settings: Settings, emu: Emulator, windows: int, rep: int, bodies: Path
) -> Measured:
    return _bare(settings, emu, windows, rep, bodies, journal=True)


CLIENTS: dict[str, Client] = {
    "backfill": tool,
    "aiohttp": bare,
    "aiohttp+journal": bare_journal,
    "curl": curl,
    "requests": threads,
}
MARGINAL = ("backfill", "aiohttp")  # also run with one window: the fixed cost, for the slope


def run(settings: Settings) -> Result:
    windows = 300 if settings.quick else 5000
    bodies = write_bodies(settings.work / f"bodies-{windows}.jsonl", windows)
    result = Result(NAME, TITLE)
    reps: list[dict[str, dict[str, Any]]] = []
    names = list(CLIENTS)
    for rep in range(settings.repetitions):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        seen: dict[str, dict[str, Any]] = {}
        with emulator(settings, "--latency", "0.02", "--jitter", "0.005") as emu:
            for name in order:
                emu.reset()
                measured = CLIENTS[name](settings, emu, windows, rep, bodies)
                stats = emu.stats()
                made = created(stats)
                if made != windows or stats["duplicates"]:
                    raise BenchError(f"{name}: {made} runs for {windows} windows")
                seen[name] = {
                    "windows_per_s": windows / measured.wall,
                    "cpu_us_per_run": measured.cpu / made * 1e6,
                    "wall_s": round(measured.wall, 3),
                    "cpu_s": round(measured.cpu, 3),
                    "max_rss_mb": round(measured.max_rss_mb, 1),
                    "server_side_per_s": round(sustained_rate(stats), 1),
                }
                if name in MARGINAL:
                    emu.reset()
                    one = CLIENTS[name](settings, emu, 1, rep, bodies)
                    if created(emu.stats()) != 1:
                        raise BenchError(f"{name}: the 1-window run did not create one run")
                    seen[name]["fixed_cpu_s"] = round(one.cpu, 3)
                    seen[name]["marginal_cpu_us"] = (measured.cpu - one.cpu) / (windows - 1) * 1e6
        seen["order"] = {"clients": order}
        reps.append(seen)
    result.details = {"windows": windows, "concurrency": CONCURRENCY, "repetitions": reps}

    def column(client: str, key: str) -> list[float]:
        return [float(r[client][key]) for r in reps]

    for client, label in (
        ("backfill", "backfill run"),
        ("aiohttp", "(c) bare aiohttp loop"),
        ("aiohttp+journal", "(c) bare aiohttp + fsync per window"),
        ("curl", "(a) xargs -P 64 curl"),
        ("requests", "(b) requests + 64 threads"),
    ):
        result.figure(f"{label}: throughput", "windows/s", column(client, "windows_per_s"))
        result.figure(f"{label}: client CPU per run", "us", column(client, "cpu_us_per_run"))
    for client, label in (("backfill", "backfill run"), ("aiohttp", "(c) bare aiohttp loop")):
        result.figure(f"{label}: fixed cost (1 window)", "CPU s", column(client, "fixed_cpu_s"))
        result.figure(f"{label}: marginal CPU per run", "us", column(client, "marginal_cpu_us"))
    result.figure(
        "CPU per run backfill / (c) bare aiohttp, all-in",
        "x",
        [
            ratio(a, b)
            for a, b in zip(
                column("backfill", "cpu_us_per_run"),
                column("aiohttp", "cpu_us_per_run"),
                strict=True,
            )
        ],
        "<=",
        1.3,
    )
    result.figure(
        "CPU per run backfill / (c) bare aiohttp, marginal",
        "x",
        [
            ratio(a, b)
            for a, b in zip(
                column("backfill", "marginal_cpu_us"),
                column("aiohttp", "marginal_cpu_us"),
                strict=True,
            )
        ],
        "<=",
        1.3,
    )
    result.figure(
        "backfill run: steady rate, server side (no start-up)",
        "windows/s",
        column("backfill", "server_side_per_s"),
    )
    tool_rate = column("backfill", "windows_per_s")
    tool_cpu = column("backfill", "cpu_us_per_run")
    result.figure(
        "throughput backfill / (a) curl",
        "x",
        [ratio(a, b) for a, b in zip(tool_rate, column("curl", "windows_per_s"), strict=True)],
        ">=",
        4.0,
    )
    result.figure(
        "throughput backfill / (b) requests",
        "x",
        [ratio(a, b) for a, b in zip(tool_rate, column("requests", "windows_per_s"), strict=True)],
        ">=",
        1.5,
    )
    result.figure("backfill CPU per run", "us", tool_cpu, "<=", 300.0)
    result.figure(
        "CPU per run backfill / (a) curl",
        "x",
        [ratio(a, b) for a, b in zip(tool_cpu, column("curl", "cpu_us_per_run"), strict=True)],
        "<=",
        0.1,
    )
    return result
