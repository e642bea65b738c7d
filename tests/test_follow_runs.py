"""Following runs to the end: --wait, --max-active-runs, retries, retry, order, reports."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    START,
    assert_exactly_once,
    cli_env,
    emulator,
    hourly,
    hourly_run,
    run_cli,
)


def _args(hours: int, *extra: str, flow: str = FLOW_FILE) -> list[str]:
    return hourly_run(flow, hours, "--rate", "300/s", *extra)


def _succeeded_per_window(stats: dict[str, Any]) -> Counter[tuple[int, int]]:
    return Counter(
        (r["window_start"], r["window_end"]) for r in stats["runs"] if r["status"] == "success"
    )


async def test_wait_with_retries_ends_with_every_window_succeeded_under_the_cap(
    tmp_path: Path,
) -> None:
    cap = 6
    async with emulator(fail_rate=0.3, seed=3) as emu:
        result = await run_cli(
            _args(80, "--wait", "--max-attempts", "5", "--max-active-runs", str(cap)),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert max(stats["max_active_runs"].values()) <= cap
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 80))
    assert set(_succeeded_per_window(stats).values()) == {1}
    # A re-trigger makes a new run (retry-flows.md): failures really happened and were retried.
    assert sum(r["retrigger_of"] is not None for r in stats["runs"]) > 10
    counts = orjson.loads(
        (
            await run_cli(["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path)
        ).stdout
    )["counts"]
    assert counts["succeeded"] == 80


async def test_new_run_retries_never_leave_two_successes_for_a_window(tmp_path: Path) -> None:
    async with emulator(fail_rate=0.3, seed=4) as emu:
        result = await run_cli(
            _args(60, "--wait", "--max-attempts", "6", "--retry-mode", "new-run"),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    succeeded = _succeeded_per_window(stats)
    assert len(succeeded) == 60
    assert set(succeeded.values()) == {1}
    failed = [r for r in stats["runs"] if r["status"] == "failed"]
    assert failed
    assert len(stats["runs"]) == 60 + len(failed)


async def test_failed_windows_are_reported_then_retry_finishes_only_them(tmp_path: Path) -> None:
    async with emulator(fail_rate=0.3, seed=8) as emu:
        first = await run_cli(
            _args(50, "--wait", "--max-attempts", "1", "--report", "report.json"),
            cli_env(emu),
            tmp_path,
        )
        assert first.code == 1, first.stderr
        report = orjson.loads((tmp_path / "report.json").read_bytes())
        failed = [w for w in report["windows"] if w["state"] == "failed"]
        assert failed
        assert report["totals"]["failed"] == len(failed)
        assert all(w["errors"] and w["errors"][0]["message"] for w in failed)
        assert report["exit_code"] == 1
        before = {r["id"]: r for r in emu.stats()["runs"]}
        retried = await run_cli(
            ["retry", "--checkpoint", "ck.jsonl", "--wait", "--max-attempts", "8"],
            cli_env(emu),
            tmp_path,
        )
        after = {r["id"]: r for r in emu.stats()["runs"]}
    assert retried.code == 0, retried.stderr
    # Re-triggered (each a new run of its window, as documented), not sent as new runs.
    made = {i: r for i, r in after.items() if i not in before}
    assert all(r["retrigger_of"] is not None for r in made.values())
    for run_id, run in before.items():
        assert after[run_id]["status"] == run["status"]  # the old runs are never touched
    windows = {(r["window_start"], r["window_end"]) for r in before.values()}
    succeeded = _succeeded_per_window({"runs": list(after.values())})
    assert {w: succeeded[w] for w in windows} == dict.fromkeys(windows, 1)
    assert {w["run_id"] for w in failed} == {
        i for i, r in before.items() if r["status"] == "failed"
    }


async def test_on_failure_stop_stops_taking_windows(tmp_path: Path) -> None:
    async with emulator(fail_rate=1.0) as emu:
        result = await run_cli(
            _args(
                100,
                "--wait",
                "--max-attempts",
                "1",
                "--on-failure",
                "stop",
                "--max-active-runs",
                "2",
            ),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 1, result.stderr
    assert len(stats["runs"]) < 10
    assert all(run["status"] == "failed" for run in stats["runs"])
    status = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path
    )
    counts = orjson.loads(status.stdout)["counts"]
    # What was in flight was followed to its end; nothing new was taken.
    assert counts["failed"] == len(stats["runs"])
    assert counts["pending"] == 100 - len(stats["runs"])


async def test_on_failure_stop_at_a_low_rate_sees_the_failure_before_more_posts(
    tmp_path: Path,
) -> None:
    """Issue 19: a status poll takes the next permit, not one behind every queued POST.

    At 60/min with 8 workers, 7 POSTs wait for permits while the first run fails. The poll
    that sees it comes 0.1 s later and goes first, so the stop reaches them before any is
    sent; queued behind them (as before) it came 7 permits later, after 7 more runs.
    """
    hours = 20
    async with emulator(fail_rate=1.0) as emu:
        result = await run_cli(
            hourly_run(
                FLOW_FILE,
                hours,
                "--rate",
                "60/min",
                "--concurrency",
                "8",
                "--wait",
                "--max-attempts",
                "1",
                "--on-failure",
                "stop",
            ),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 1, result.stderr
    assert len(stats["runs"]) == 1, [r["window_start"] for r in stats["runs"]]
    assert sum(stats["requests"]["by_endpoint"]["POST /runs"].values()) == 1
    status = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path
    )
    counts = orjson.loads(status.stdout)["counts"]
    assert (counts["failed"], counts["pending"]) == (1, hours - 1)


async def test_newest_first_submits_the_newest_window_first(tmp_path: Path) -> None:
    async with emulator() as emu:
        result = await run_cli(
            _args(
                30,
                "--order",
                "newest-first",
                "--concurrency",
                "1",
                "--delta-column",
                "DOB",
                flow=FLOW_TABLE,
            ),
            cli_env(emu),
            tmp_path,
        )
        runs = sorted(emu.stats()["runs"], key=lambda r: r["created_at"])
    assert result.code == 0, result.stderr
    starts = [r["window_start"] for r in runs]
    assert starts == sorted(starts, reverse=True)
    assert runs[0]["delta_column"] == "DOB"


async def test_a_poll_costs_one_request_per_page_of_active_runs(tmp_path: Path) -> None:
    """1,000 active runs, pages of 100: one status refresh sends exactly 10 list requests."""
    async with emulator(scheduled_for=600) as emu:
        submitted = await run_cli(
            _args(1000, "--rate", "2000/s", "--concurrency", "32"), cli_env(emu), tmp_path
        )
        assert submitted.code == 0, submitted.stderr
        lists_before = sum(emu.stats()["requests"]["by_endpoint"]["GET /runs"].values())
        refreshed = await run_cli(
            ["status", "--checkpoint", "ck.jsonl", "--refresh"], cli_env(emu), tmp_path
        )
        lists = sum(emu.stats()["requests"]["by_endpoint"]["GET /runs"].values()) - lists_before
    assert refreshed.code == 0, refreshed.stderr
    assert lists == 10


async def test_status_refresh_records_what_the_service_says(tmp_path: Path) -> None:
    async with emulator(fail_rate=0.5, seed=2) as emu:
        submitted = await run_cli(_args(20), cli_env(emu), tmp_path)
        assert submitted.code == 0, submitted.stderr
        stats_runs = {(r["window_start"]): r for r in emu.stats()["runs"]}
        import asyncio  # noqa: PLC0415

        await asyncio.sleep(0.3)  # the emulator's runs finish in 0.15 s
        refreshed = await run_cli(
            ["status", "--checkpoint", "ck.jsonl", "--refresh", "--json"], cli_env(emu), tmp_path
        )
        final = {r["window_start"]: r["status"] for r in emu.stats()["runs"]}
    assert refreshed.code == 0, refreshed.stderr
    document = orjson.loads(refreshed.stdout)
    expected = {"success": "succeeded", "failed": "failed"}
    for window in document["windows"]:
        assert window["state"] == expected[final[window["start"]]]
    assert len(stats_runs) == 20
