"""Run outcomes as Adobe reports them (issue 13): the real CLI against the real emulator.

Every verdict is the emulator's own record (``/__emulator/stats``): which runs it made, how
each ended, how many records it says each ingested, which status words it served.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backfill.emulator.store import STATUS_WORDS
from backfill.state import TIMED_OUT, RunStatus

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


def _report(tmp_path: Path, name: str = "report.json") -> dict[str, Any]:
    report: dict[str, Any] = orjson.loads((tmp_path / name).read_bytes())
    return report


def _outcomes(stats: dict[str, Any]) -> Counter[str]:
    return Counter(run["outcome"] for run in stats["runs"])


def _record_sums(stats: dict[str, Any]) -> dict[str, int]:
    sums = dict.fromkeys(("input", "output", "failed"), 0)
    for run in stats["runs"]:
        for kind in sums:
            sums[kind] += run["records"][kind]
    return sums


def _attempts_per_window(stats: dict[str, Any]) -> Counter[tuple[int, int]]:
    """Attempts per window, whether a re-trigger reuses the run or makes a new one."""
    attempts: Counter[tuple[int, int]] = Counter()
    for run in stats["runs"]:
        attempts[(run["window_start"], run["window_end"])] += run["attempts"]
    return attempts


async def test_empty_and_partial_windows_and_record_totals_equal_the_emulators(
    tmp_path: Path,
) -> None:
    hours = 200
    async with emulator(seed=3, empty_rate=0.1, partial_rate=0.05) as emu:
        result = await run_cli(
            hourly_run(
                FLOW_FILE,
                hours,
                "--wait",
                "--rate",
                "200/s",
                "--report",
                "report.json",
                "--metrics-file",
                "metrics.prom",
            ),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    # Empty and partial windows do not fail the backfill.
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, hours))
    outcomes = _outcomes(stats)
    assert outcomes["empty"] > 0, outcomes
    assert outcomes["partial"] > 0, outcomes
    report = _report(tmp_path)
    totals = report["totals"]
    assert totals["empty"] == outcomes["empty"]
    assert totals["partial"] == outcomes["partial"]
    assert totals["succeeded"] == outcomes["success"]
    assert report["records"] == _record_sums(stats)
    exported = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families((tmp_path / "metrics.prom").read_text())
        if family.name == "backfill_records"
        for sample in family.samples
    }
    assert exported == {kind: float(n) for kind, n in _record_sums(stats).items()}
    summary = next(line for line in result.json_lines() if line["event"] == "summary")
    assert summary["records"] == _record_sums(stats)
    assert summary["counts"]["empty"] == outcomes["empty"]
    # Per window, in the report and in `status --json`: the counts the service gave that run.
    by_run = {run["id"]: run for run in stats["runs"]}
    for row in report["windows"]:
        run = by_run[row["run_id"]]
        assert row["records"]["output"] == run["records"]["output"]
        assert row["records"]["failed"] == run["records"]["failed"]
        assert row["state"] == {"success": "succeeded"}.get(run["outcome"], run["outcome"])
    status = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path
    )
    document = orjson.loads(status.stdout)
    assert document["records"] == _record_sums(stats)
    assert {w["run_id"]: w["records"]["input"] for w in document["windows"]} == {
        run["id"]: run["records"]["input"] for run in stats["runs"]
    }
    text = await run_cli(["status", "--checkpoint", "ck.jsonl"], cli_env(None), tmp_path)
    assert f"{_record_sums(stats)['output']:,} ingested" in text.stdout
    assert "empty: " in text.stdout
    assert "partial: " in text.stdout


async def _empty_first_attempts(tmp_path: Path, hours: int, seed: int) -> set[tuple[int, int]]:
    """The windows whose first attempt ingests nothing, for this seed (the emulator's fate
    depends only on the seed, the window and the attempt)."""
    async with emulator(seed=seed, empty_rate=0.2) as emu:
        result = await run_cli(
            hourly_run(FLOW_FILE, hours, "--wait", "--rate", "200/s"), cli_env(emu), tmp_path
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert sum(run["attempts"] for run in stats["runs"]) == hours  # nothing re-triggered
    empty = {(r["window_start"], r["window_end"]) for r in stats["runs"] if r["outcome"] == "empty"}
    assert empty
    return empty


async def test_retry_empty_retriggers_exactly_the_empty_windows(tmp_path: Path) -> None:
    hours = 80
    (tmp_path / "first").mkdir()
    empty = await _empty_first_attempts(tmp_path / "first", hours, seed=5)
    async with emulator(seed=5, empty_rate=0.2) as emu:
        result = await run_cli(
            hourly_run(
                FLOW_FILE,
                hours,
                "--wait",
                "--rate",
                "200/s",
                "--retry-empty",
                "--max-attempts",
                "2",
            ),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    attempts = _attempts_per_window(stats)
    assert {window for window, n in attempts.items() if n > 1} == empty
    assert all(attempts[window] == 2 for window in empty)
    assert stats["requests"]["by_endpoint"]["POST /runs/{id}/action"] == {"200": len(empty)}


async def test_retry_empty_from_a_checkpoint(tmp_path: Path) -> None:
    hours = 60
    async with emulator(seed=8, empty_rate=0.2) as emu:
        first = await run_cli(
            hourly_run(FLOW_FILE, hours, "--wait", "--rate", "200/s"), cli_env(emu), tmp_path
        )
        before = emu.stats()
        empty = {
            (r["window_start"], r["window_end"]) for r in before["runs"] if r["outcome"] == "empty"
        }
        # `retry` alone sends nothing: an empty window did not fail.
        plain = await run_cli(
            ["retry", "--checkpoint", "ck.jsonl", "--wait"], cli_env(emu), tmp_path
        )
        assert emu.stats()["requests"]["total"] == before["requests"]["total"]
        # The dry runs count what each would send, and send nothing.
        looks = [
            await run_cli(
                ["retry", "--checkpoint", "ck.jsonl", *extra, "--dry-run", "--json"],
                cli_env(emu),
                tmp_path,
            )
            for extra in ([], ["--empty"])
        ]
        posts_before = before["requests"]["by_endpoint"].get("POST /runs/{id}/action", {})
        assert emu.stats()["requests"]["by_endpoint"].get("POST /runs/{id}/action", {}) == (
            posts_before
        )
        again = await run_cli(
            ["retry", "--checkpoint", "ck.jsonl", "--empty", "--wait", "--max-attempts", "1"],
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert (first.code, plain.code, again.code) == (0, 0, 0), again.stderr
    assert empty
    assert [look.code for look in looks] == [0, 0], looks[1].stderr
    counted = [orjson.loads(look.stdout)["totals"] for look in looks]
    assert [(c["to_send"], c["retriggers"]) for c in counted] == [(0, 0), (len(empty),) * 2]
    attempts = _attempts_per_window(stats)
    assert {window for window, n in attempts.items() if n > 1} == empty
    assert stats["requests"]["by_endpoint"]["POST /runs/{id}/action"] == {"200": len(empty)}


@pytest.mark.parametrize("vocabulary", ["camel", "upper"])
async def test_every_status_word_of_both_vocabularies_ends_the_wait(
    tmp_path: Path, vocabulary: str
) -> None:
    hours = 60
    async with emulator(
        seed=11,
        status_vocabulary=vocabulary,
        status_synonyms=True,
        fail_rate=0.25,
        partial_rate=0.15,
        scheduled_for=0.6,
        running_for=0.6,
    ) as emu:
        result = await run_cli(
            hourly_run(
                FLOW_FILE,
                hours,
                "--wait",
                "--rate",
                "200/s",
                "--max-attempts",
                "1",
                "--report",
                "report.json",
            ),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 1, result.stderr  # failed runs, failed for good: and it ended
    served = set(stats["status_words"])
    vocabulary_words = {word for words in STATUS_WORDS[vocabulary].values() for word in words}
    assert served == vocabulary_words
    assert all(RunStatus.parse(word) is not RunStatus.UNKNOWN for word in served)
    report = _report(tmp_path)
    outcomes = _outcomes(stats)
    assert report["totals"]["failed"] == outcomes["failed"]
    assert report["totals"]["partial"] == outcomes["partial"]
    assert report["totals"]["succeeded"] + report["totals"]["empty"] == outcomes["success"]
    assert report["unknown_statuses"] == []


async def test_a_run_stuck_in_an_unknown_status_ends_at_the_run_timeout(tmp_path: Path) -> None:
    hours = 20
    async with emulator(seed=2, stuck_rate=0.3, stuck_status="paused") as emu:
        started = time.monotonic()
        result = await run_cli(
            hourly_run(
                FLOW_FILE,
                hours,
                "--wait",
                "--run-timeout",
                "2s",
                "--rate",
                "200/s",
                "--report",
                "report.json",
            ),
            cli_env(emu),
            tmp_path,
        )
        took = time.monotonic() - started
        stats = emu.stats()
    stuck = {r["id"] for r in stats["runs"] if r["status"] == "inProgress"}
    assert stuck
    assert result.code == 1, result.stderr
    assert took >= 2.0
    report = _report(tmp_path)
    assert report["unknown_statuses"] == ["paused"]
    timed_out = {
        row["run_id"]
        for row in report["windows"]
        if row["state"] == "failed" and row["errors"][0]["code"] == TIMED_OUT
    }
    assert timed_out == stuck
    assert report["totals"]["failed"] == len(stuck)
    # Not re-run: each stuck window still has its one run, attempted once.
    assert_exactly_once(stats, FLOW_FILE, hourly(START, hours))
    assert all(r["attempts"] == 1 for r in stats["runs"])
    assert (
        "POST /runs/{id}/action" not in stats["requests"]["by_endpoint"]
        or not (stats["requests"]["by_endpoint"]["POST /runs/{id}/action"])
    )


async def test_every_post_carries_start_time(tmp_path: Path) -> None:
    hours = 30
    async with emulator(require_start_time=True) as emu:
        before = int(time.time())
        result = await run_cli(
            hourly_run(FLOW_FILE, hours, "--rate", "200/s"), cli_env(emu), tmp_path
        )
        after = int(time.time())
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {"201": hours}
    assert all(before <= int(run["start_time"]) <= after for run in stats["runs"])


async def _refused_checkpoint(tmp_path: Path) -> bytes:
    """A checkpoint with windows still to send: its first POST was refused (1452-400)."""
    async with emulator(flows=((FLOW_TABLE, "file"),)) as emu:
        result = await run_cli(
            hourly_run(FLOW_TABLE, 5, "--delta-column", "DOB"), cli_env(emu), tmp_path
        )
    assert result.code == 2, result.stderr
    assert "1452-400" in result.stderr
    return (tmp_path / "ck.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("schedule", "flags", "expected"),
    [
        (("hour", None), ["--delta-column", "DOB"], "'hour'"),
        (("once", "updated_at"), ["--delta-column", "DOB"], "'updated_at'"),
        (None, ["--delta-column", "DOB"], "1439-404"),
    ],
    ids=["hourly", "conflicting-delta-column", "unknown"],
)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing-checkpoint"])
async def test_a_flow_that_cannot_take_the_runs_is_exit_2_with_nothing_sent(
    tmp_path: Path,
    schedule: tuple[str, str | None] | None,
    flags: list[str],
    expected: str,
    existing: bool,
) -> None:
    before = await _refused_checkpoint(tmp_path) if existing else None
    declared = ((FLOW_TABLE, "table"),) if schedule is not None else ((FLOW_FILE, "file"),)
    schedules = ((FLOW_TABLE, *schedule),) if schedule is not None else ()
    async with emulator(flows=declared, flow_schedules=schedules) as emu:
        result = await run_cli(hourly_run(FLOW_TABLE, 5, *flags), cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code == 2
    assert expected in result.stderr, result.stderr
    assert FLOW_TABLE in result.stderr
    if schedule is not None and schedule[1] is not None:
        assert "'DOB'" in result.stderr  # both columns named
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {}
    assert stats["runs"] == []
    checkpoint = tmp_path / "ck.jsonl"
    if before is None:
        assert not checkpoint.exists()
    else:
        assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("flags", [["--delta-column", "updated_at"], []], ids=["same", "none"])
async def test_a_flow_that_has_its_delta_column_gets_none_in_any_run(
    tmp_path: Path, flags: list[str]
) -> None:
    hours = 24
    async with emulator(
        flows=((FLOW_TABLE, "table"),), flow_schedules=((FLOW_TABLE, "once", "updated_at"),)
    ) as emu:
        result = await run_cli(
            hourly_run(FLOW_TABLE, hours, "--rate", "200/s", *flags), cli_env(emu), tmp_path
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_TABLE, hourly(START, hours))
    assert all(run["delta_column"] is None for run in stats["runs"])
    assert stats["requests"]["by_endpoint"]["GET /flows/{id}"] == {"200": 1}


async def test_the_tool_follows_the_re_trigger_spelling_the_service_accepts(
    tmp_path: Path,
) -> None:
    async with emulator(seed=4, fail_rate=0.3, retrigger_spelling="RE_TRIGGER") as emu:
        result = await run_cli(
            hourly_run(FLOW_FILE, 40, "--wait", "--rate", "200/s", "--max-attempts", "3"),
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    actions = stats["requests"]["by_endpoint"]["POST /runs/{id}/action"]
    # One refusal of the tutorial's spelling, then the spec's for every re-trigger.
    assert actions["400"] == 1
    assert actions["200"] >= 2
    assert result.code in (0, 1), result.stderr


async def test_a_flow_hidden_by_access_labels_is_exit_2_naming_it(tmp_path: Path) -> None:
    async with emulator(hidden_flows=(FLOW_FILE,)) as emu:
        result = await run_cli(hourly_run(FLOW_FILE, 3), cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code == 2
    assert "2120-403" in result.stderr
    assert FLOW_FILE in result.stderr
    assert "cannot see it" in result.stderr
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {}
    assert not (tmp_path / "ck.jsonl").exists()
