"""The real CLI against the real emulator over loopback, judged by the emulator's record."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from .harness import (
    DAY,
    FLOW_FILE,
    FLOW_TABLE,
    START,
    assert_exactly_once,
    cli_env,
    emulator,
    finish,
    flow_range,
    hourly,
    interrupt,
    run_cli,
    start_cli,
    two_flow_config,
    wait_for_runs,
)


def _flow_args(flow: str, hours: int, *extra: str) -> list[str]:
    return [*flow_range(flow, hours), *extra]


async def test_every_window_once_and_delta_column_on_the_first_run_only(tmp_path: Path) -> None:
    async with emulator() as emu:
        result = await run_cli(
            [
                "run",
                "--config",
                str(two_flow_config(tmp_path, 48, checkpoint=f"{tmp_path}/ck.jsonl", rate="200/s")),
            ],
            cli_env(emu),
            tmp_path,
        )
        assert result.code == 0, result.stderr
        stats = emu.stats()
    assert_exactly_once(stats, FLOW_TABLE, hourly(START, 48))
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 48))
    table_runs = sorted(
        (r for r in stats["runs"] if r["flow_id"] == FLOW_TABLE), key=lambda r: r["created_at"]
    )
    assert table_runs[0]["delta_column"] == "DOB"
    assert all(r["delta_column"] is None for r in table_runs[1:])
    assert all(r["delta_column"] is None for r in stats["runs"] if r["flow_id"] == FLOW_FILE)
    summary = [line for line in result.json_lines() if line["event"] == "summary"]
    assert summary[0]["counts"]["submitted"] == 96


async def test_rerun_submits_nothing_new(tmp_path: Path) -> None:
    config = two_flow_config(tmp_path, 24, checkpoint=f"{tmp_path}/ck.jsonl", rate="200/s")
    async with emulator() as emu:
        first = await run_cli(["run", "--config", str(config)], cli_env(emu), tmp_path)
        second = await run_cli(["run", "--config", str(config)], cli_env(emu), tmp_path)
        stats = emu.stats()
    assert (first.code, second.code) == (0, 0)
    assert len(stats["runs"]) == 48
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {"201": 48}


async def test_sigint_mid_run_then_resume_finishes_exactly_once(tmp_path: Path) -> None:
    hours = 200
    async with emulator(latency=0.02) as emu:
        env = cli_env(emu)
        args = ["run", *_flow_args(FLOW_FILE, hours, "--rate", "100/s", "--checkpoint", "ck.jsonl")]
        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 40)
        interrupt(process, signal.SIGINT)
        stopped = await finish(process)
        assert stopped.code == 130, stopped.stderr
        partial = len(emu.stats()["runs"])
        assert 40 <= partial < hours
        resumed = await run_cli(args, env, tmp_path)
        assert resumed.code == 0, resumed.stderr
        stats = emu.stats()
    assert_exactly_once(stats, FLOW_FILE, hourly(START, hours))


@pytest.mark.serial
async def test_the_rate_limit_is_never_exceeded_as_the_emulator_counts(tmp_path: Path) -> None:
    async with emulator(rate_limit=30) as emu:
        args = ["run", *_flow_args(FLOW_FILE, 90, "--rate", "30/s", "--concurrency", "32")]
        result = await run_cli([*args, "--checkpoint", "ck.jsonl"], cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert stats["max_requests_per_second"] <= 30
    assert stats["rate_limited"] == 0


async def test_both_answer_shapes_are_understood(tmp_path: Path) -> None:
    async with emulator(response_shape="items") as emu:
        args = ["run", *_flow_args(FLOW_FILE, 10, "--checkpoint", "ck.jsonl")]
        result = await run_cli(args, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 10))
    status = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path
    )
    document = orjson.loads(status.stdout)
    run_ids = {r["id"] for r in stats["runs"]}
    assert {w["run_id"] for w in document["windows"]} == run_ids
    assert document["counts"]["submitted"] == 10


async def test_plan_json_prints_one_object_per_window(tmp_path: Path) -> None:
    result = await run_cli(
        [
            "plan",
            "--flow-id",
            FLOW_FILE,
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-03T12:00:00",
            "--window",
            "1d",
            "--json",
        ],
        cli_env(None),
        tmp_path,
    )
    assert result.code == 0, result.stderr
    assert result.json_lines() == [
        {
            "flow_id": FLOW_FILE,
            "start": START,
            "end": START + DAY,
            "start_time": "2024-01-01T00:00:00Z",
            "end_time": "2024-01-02T00:00:00Z",
        },
        {
            "flow_id": FLOW_FILE,
            "start": START + DAY,
            "end": START + 2 * DAY,
            "start_time": "2024-01-02T00:00:00Z",
            "end_time": "2024-01-03T00:00:00Z",
        },
        {
            "flow_id": FLOW_FILE,
            "start": START + 2 * DAY,
            "end": START + 2 * DAY + DAY // 2,
            "start_time": "2024-01-03T00:00:00Z",
            "end_time": "2024-01-03T12:00:00Z",
        },
    ]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--start", "2024-02-01", "--end", "2024-01-01"], "--end"),
        (["--start", "2024-01-01", "--end", "2024-01-01"], "--end"),
        (["--start", "16515859567", "--end", "2024-01-01"], "--start"),
        (["--start", "1651584991000", "--end", "2024-01-01"], "--start"),
        (["--start", "yesterday", "--end", "2024-01-01"], "--start"),
        (["--start", "2024-01-01", "--end", "2099-01-01"], "--end"),
        (["--start", "2024-01-01", "--end", "2024-02-01", "--window", "0h"], "--window"),
        (["--start", "2024-01-01", "--end", "2024-02-01", "--window", "fortnight"], "--window"),
        (["--start", "2024-01-01", "--end", "2024-02-01", "--rate", "10/sec2"], "--rate"),
        (
            ["--start", "2024-01-01", "--end", "2024-02-01", "--concurrency", "lots"],
            "--concurrency",
        ),
    ],
)
async def test_bad_input_is_one_line_exit_2_and_the_checkpoint_is_untouched(
    tmp_path: Path, args: list[str], field: str
) -> None:
    checkpoint = tmp_path / "ck.jsonl"
    checkpoint.write_bytes(b"precious bytes\n")
    full = ["run", "--flow-id", FLOW_FILE, "--window", "1d", "--checkpoint", str(checkpoint), *args]
    env = cli_env(None, BACKFILL_BASE_URL="http://127.0.0.1:9", BACKFILL_LOG_FORMAT="console")
    result = await run_cli(full, env, tmp_path)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert field in lines[0]
    assert checkpoint.read_bytes() == b"precious bytes\n"


async def test_missing_credentials_are_named(tmp_path: Path) -> None:
    env = cli_env(None, BACKFILL_LOG_FORMAT="console")
    del env["BACKFILL_ACCESS_TOKEN"]
    result = await run_cli(["run", *_flow_args(FLOW_FILE, 2)], env, tmp_path)
    assert result.code == 2
    assert "BACKFILL_ACCESS_TOKEN" in result.stderr
    assert not (tmp_path / "backfill-checkpoint.jsonl").exists()


async def test_a_flow_the_service_does_not_know_stops_with_exit_2(tmp_path: Path) -> None:
    async with emulator(flows=((FLOW_TABLE, "table"),)) as emu:
        result = await run_cli(
            ["run", *_flow_args(FLOW_FILE, 5, "--checkpoint", "ck.jsonl")], cli_env(emu), tmp_path
        )
        stats = emu.stats()
    # The pre-flight asked for the flow (FLOW-1439-404) before anything was sent, and the
    # checkpoint this command would have started is not left behind.
    assert result.code == 2
    assert "1439-404" in result.stderr
    assert FLOW_FILE in result.stderr
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {}
    assert stats["requests"]["by_endpoint"]["GET /flows/{id}"] == {"404": 1}
    assert not (tmp_path / "ck.jsonl").exists()


async def test_never_more_posts_in_flight_than_concurrency_at_the_service(tmp_path: Path) -> None:
    """``--concurrency`` is requests in flight, as the service counts them (issue 19): twice
    as many windows are in hand, recording their intents, but only that many are ever out."""
    async with emulator(latency=0.05) as emu:
        result = await run_cli(
            [
                "run",
                *_flow_args(FLOW_FILE, 60),
                *("--checkpoint", "ck.jsonl", "--concurrency", "4", "--rate", "1000/s"),
            ],
            cli_env(emu),
            tmp_path,
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 60))
    assert stats["max_in_flight"]["POST /runs"] == 4, stats["max_in_flight"]
