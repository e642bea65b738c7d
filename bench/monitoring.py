"""Scenario "monitoring": what one status poll of 1,000 active runs costs in requests.

The emulator keeps every run "scheduled" for ten minutes (``--scheduled-for 600``), so after
``backfill run`` submits 1,000 windows all of them are active. ``backfill status --refresh``
then polls each unfinished run once; the emulator's count of ``GET /runs`` before and after
says how many requests that poll took: it should be the number of pages of 100 run ids.
"""

from __future__ import annotations

import math
import time

from bench.common import (
    BenchError,
    Result,
    Settings,
    backfill_command,
    check,
    cli_env,
    cli_summary,
    emulator,
    measure,
    plan_flags,
    requests_to,
)

NAME = "monitoring"
TITLE = "Monitoring cost: requests per status poll of 1,000 active runs"
WINDOWS = 1000
PAGE = 100  # the engine's page size (EngineOptions.page_size)


def run(settings: Settings) -> Result:
    result = Result(NAME, TITLE)
    per_poll: list[float] = []
    seconds: list[float] = []
    for rep in range(settings.repetitions):
        with emulator(settings, "--scheduled-for", "600") as emu:
            checkpoint = settings.work / f"monitoring-{rep}.jsonl"
            env = cli_env(emu.base_url, BACKFILL_RATE="100000/s")
            log = settings.work / f"monitoring-run-{rep}.jsonl"
            argv = [
                *backfill_command(),
                "run",
                *plan_flags(WINDOWS),
                "--concurrency",
                "64",
                "--checkpoint",
                str(checkpoint),
            ]
            submitted = measure(argv, timeout=120, env=env, stdout=log, stderr=log)
            check(submitted, "backfill run", log)
            if cli_summary(log).get("done") != WINDOWS:
                raise BenchError(f"backfill run did not submit {WINDOWS} windows")
            before = emu.stats()
            status_log = settings.work / f"monitoring-status-{rep}.log"
            started = time.perf_counter()
            polled = measure(
                [*backfill_command(), "status", "--checkpoint", str(checkpoint), "--refresh"],
                timeout=120,
                env=env,
                stdout=status_log,
                stderr=status_log,
            )
            seconds.append(time.perf_counter() - started)
            check(polled, "backfill status --refresh", status_log)
            after = emu.stats()
            active = sum(1 for run in after["runs"] if run["status"] in {"scheduled", "inProgress"})
            if active != WINDOWS:
                result.notes.append(f"{active} runs were active, not {WINDOWS}")
            per_poll.append(requests_to(after, "GET /runs") - requests_to(before, "GET /runs"))
            others = after["requests"]["total"] - before["requests"]["total"] - per_poll[-1]
            if others:
                result.notes.append(f"the refresh also sent {others} other requests")
    pages = math.ceil(WINDOWS / PAGE)
    result.details = {"active_runs": WINDOWS, "page_size": PAGE, "expected_requests": pages}
    result.figure("GET /runs per poll of 1,000 active runs", "requests", per_poll, "==", pages)
    result.figure("backfill status --refresh, start to end", "s", seconds)
    return result
