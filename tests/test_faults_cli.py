"""Faults that must not overrun the rate, hang, or stop a backfill for nothing (issue 14).

Each case runs the real CLI against the real emulator (or, where the emulator cannot misbehave
that way, a port with nothing behind it or a plain socket) and is judged from the server's
side: the most requests it saw in one second, the runs it holds, the requests it answered.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from backfill.emulator import Emulator

from .harness import (
    FLOW_FILE,
    START,
    STATUS,
    assert_exactly_once,
    cli_env,
    emulator,
    finish,
    hourly,
    hourly_run,
    interrupt,
    run_cli,
    start_cli,
    status_counts,
    wait_for_runs,
)

# Tests of the retry budget spend it quickly: 2 retries, at most 50 ms apart.
FAST_BUDGET = ["--max-retries", "2", "--backoff-max", "0.05"]


async def _until_finished(emu: Emulator, deadline: float = 30.0) -> None:
    """Return once every run the emulator holds has succeeded."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while any(run["status"] != "success" for run in emu.stats()["runs"]):
        if loop.time() > give_up:
            raise AssertionError("the emulator's runs never finished")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------ 1. token renewal and the rate


@pytest.mark.serial
async def test_expiring_and_revoked_tokens_never_push_the_rate_past_the_limit(
    tmp_path: Path,
) -> None:
    """Client credentials with 3-second tokens, revoked twice mid-run (every request in flight
    gets a 401 and renews), 0.3 s of latency, --rate 10/s against a 10-per-second server."""
    hours = 60
    async with emulator(latency=0.3, rate_limit=10, token_lifetime=3.0) as emu:
        env = cli_env(
            emu,
            BACKFILL_CLIENT_ID="backfill-test",
            BACKFILL_CLIENT_SECRET="s3cret-value",
            BACKFILL_IMS_URL=emu.ims_url,
        )
        del env["BACKFILL_ACCESS_TOKEN"]
        process = await start_cli(
            hourly_run(FLOW_FILE, hours, "--rate", "10/s", "--concurrency", "16"), env, tmp_path
        )
        for at in (15, 35):
            await wait_for_runs(emu, at)
            assert emu.revoke_tokens() >= 1
        result = await finish(process)
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, hours))
    assert stats["requests"]["by_endpoint"]["POST /runs"].get("401", 0) >= 2  # revoked: renewed
    assert stats["tokens_issued"] >= 3
    assert stats["max_requests_per_second"] <= 10
    assert stats["rate_limited"] == 0


# -------------------------------------------------- 2. a stop wakes requests waiting for permits


async def test_sigterm_wakes_requests_waiting_for_a_permit_and_leaves_none_in_doubt(
    tmp_path: Path,
) -> None:
    """--rate 30/min, 20 windows: SIGTERM after two runs exits at once (not after the grace);
    only requests the server received can be in doubt, and it answered them all."""
    async with emulator() as emu:
        env = cli_env(emu)
        process = await start_cli(
            hourly_run(FLOW_FILE, 20, "--rate", "30/min", "--grace", "600"), env, tmp_path
        )
        await wait_for_runs(emu, 2)
        interrupt(process, signal.SIGTERM)
        # Waiting out the grace (600 s) would blow this deadline.
        stopped = await finish(process, deadline=60.0)
        status = await run_cli(STATUS, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert stopped.code == 143, stopped.stderr
    assert status.code == 0, status.stderr
    counts = status_counts(status.stdout)
    received = stats["requests"]["by_endpoint"]["POST /runs"]
    assert counts["submitting"] == 0  # in doubt: none (every request sent was answered)
    assert counts["submitted"] == len(stats["runs"]) == sum(received.values())
    assert counts["pending"] == 20 - len(stats["runs"])


# ----------------------------------------------------------------- 3. an unbounded Retry-After


async def test_a_retry_after_beyond_the_bound_ends_the_run_with_75_naming_it(
    tmp_path: Path,
) -> None:
    """A server that answers 429 with Retry-After: 86400 does not pause the run for a day."""
    async with emulator(rate_limit=1, retry_after=86400) as emu:
        result = await run_cli(
            hourly_run(FLOW_FILE, 10, "--rate", "20/s"), cli_env(emu), tmp_path, deadline=60.0
        )
        status = await run_cli(STATUS, cli_env(emu), tmp_path)
        stats = emu.stats()
    assert result.code == 75, result.stderr
    assert "86400" in result.stderr
    assert "--max-retry-after" in result.stderr
    assert stats["rate_limited"] >= 1
    counts = status_counts(status.stdout)
    assert counts["submitted"] == len(stats["runs"])
    assert counts["submitting"] == 0


# --------------------------------------------------------------- 4. 5xx to everything: exit 75


async def test_a_service_that_answers_5xx_to_everything_ends_with_75_within_the_budget(
    tmp_path: Path,
) -> None:
    """Every POST is answered 5xx (in doubt), so reconciliation lists, and the listing fails
    too: it is retried within the budget (2 retries), then the run ends with exit 75."""
    async with emulator(error_rate=1.0) as emu:
        result = await run_cli(
            hourly_run(FLOW_FILE, 3, "--concurrency", "1", *FAST_BUDGET),
            cli_env(emu),
            tmp_path,
            deadline=60.0,
        )
        stats = emu.stats()
    assert result.code == 75, result.stderr
    assert "gave up after 2 retries" in result.stderr
    # The first request is the flow pre-flight's GET: it fails like everything else, and is
    # retried within the same budget.
    tries = sum(stats["requests"]["by_endpoint"].get("GET /flows/{id}", {}).values())
    assert tries == 3  # the first try and 2 retries: not 119
    assert stats["requests"]["total"] <= 3 + 3


# ---------------------------------------------------------------------- 5. a wrong base URL


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_nothing_listening_is_retried_then_75_naming_the_url_and_base_url(
    tmp_path: Path,
) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/data/foundation/flowservice"
    result = await run_cli(
        hourly_run(FLOW_FILE, 3, "--base-url", base, *FAST_BUDGET),
        cli_env(None),
        tmp_path,
        deadline=60.0,
    )
    assert result.code == 75, result.stderr
    assert base in result.stderr
    assert "check --base-url" in result.stderr
    assert "gave up after 2 retries" in result.stderr


async def test_an_unreachable_token_endpoint_is_retried_then_75_naming_it(
    tmp_path: Path,
) -> None:
    ims = f"http://127.0.0.1:{_closed_port()}/ims/token/v3"
    async with emulator() as emu:
        env = cli_env(
            emu,
            BACKFILL_CLIENT_ID="backfill-test",
            BACKFILL_CLIENT_SECRET="s3cret-value",
            BACKFILL_IMS_URL=ims,
        )
        del env["BACKFILL_ACCESS_TOKEN"]
        result = await run_cli(hourly_run(FLOW_FILE, 3, *FAST_BUDGET), env, tmp_path, deadline=60.0)
        stats = emu.stats()
    assert result.code == 75, result.stderr
    assert ims in result.stderr
    assert "gave up after 2 retries" in result.stderr
    assert stats["requests"]["total"] == 0  # nothing is sent without a token


async def test_https_to_a_plain_http_server_is_exit_2_at_once(tmp_path: Path) -> None:
    async with emulator() as emu:
        base = emu.base_url.replace("http://", "https://")
        result = await run_cli(
            hourly_run(FLOW_FILE, 3, "--base-url", base), cli_env(emu), tmp_path, deadline=60.0
        )
        stats = emu.stats()
    assert result.code == 2, result.stderr
    assert "TLS handshake" in result.stderr
    assert "--base-url" in result.stderr
    assert stats["requests"]["total"] == 0
    assert "Traceback" not in result.stderr


async def test_a_base_url_that_is_not_flow_service_is_exit_2_naming_the_fix(
    tmp_path: Path,
) -> None:
    async with emulator() as emu:
        result = await run_cli(
            hourly_run(FLOW_FILE, 3, "--base-url", emu.url), cli_env(emu), tmp_path, deadline=60.0
        )
        stats = emu.stats()
    assert result.code == 2, result.stderr
    assert "/data/foundation/flowservice" in result.stderr
    assert "--base-url" in result.stderr
    assert stats["runs"] == []
    # The first contact was the flow pre-flight's GET: nothing was sent nor recorded, so the
    # checkpoint this command created is not left behind.
    assert not (tmp_path / "ck.jsonl").exists()


# --------------------------------------------- 6. a metrics port in use, before the checkpoint


async def test_a_metrics_port_in_use_is_exit_2_and_the_checkpoint_is_not_created(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # as the metrics server would bind
        taken.listen(1)
        port = taken.getsockname()[1]
        async with emulator() as emu:
            result = await run_cli(
                hourly_run(FLOW_FILE, 3, "--metrics-port", str(port)), cli_env(emu), tmp_path
            )
            stats = emu.stats()
    assert result.code == 2, result.stderr
    assert "metrics_port" in result.stderr
    assert str(port) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ck.jsonl").exists()
    assert stats["requests"]["total"] == 0


async def test_a_report_or_metrics_file_that_cannot_be_written_is_exit_2_before_the_checkpoint(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-folder").mkdir()
    async with emulator() as emu:
        results = [
            await run_cli(hourly_run(FLOW_FILE, 3, flag, path), cli_env(emu), tmp_path)
            for flag, path in (
                ("--report", "missing/report.json"),
                ("--metrics-file", "missing/metrics.prom"),
                ("--report", "a-folder"),
            )
        ]
        stats = emu.stats()
    for result, named in zip(results, ("report", "metrics-file", "report"), strict=True):
        assert result.code == 2, result.stderr
        assert named in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "ck.jsonl").exists()
    assert stats["requests"]["total"] == 0


# ------------------------------------------------ 7. status --refresh --json: stdout is JSON only


async def test_status_refresh_json_prints_only_the_document_on_stdout(tmp_path: Path) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        run = await run_cli(hourly_run(FLOW_FILE, 6, "--rate", "100/s"), env, tmp_path)
        assert run.code == 0, run.stderr
        await _until_finished(emu)
        status = await run_cli(
            [
                "status",
                "--checkpoint",
                "ck.jsonl",
                "--refresh",
                "--json",
                "--log-level",
                "debug",
            ],
            env,
            tmp_path,
        )
    assert status.code == 0, status.stderr
    counts = status_counts(status.stdout)  # the whole of stdout is one JSON document
    assert counts["succeeded"] == 6
    assert '"run_finished"' in status.stderr  # the refresh's log lines went to stderr


async def test_status_refresh_that_cannot_ask_the_service_says_so_and_is_not_exit_0(
    tmp_path: Path,
) -> None:
    async with emulator(scheduled_for=60.0) as emu:  # runs stay unfinished: refresh polls them
        run = await run_cli(hourly_run(FLOW_FILE, 3), cli_env(emu), tmp_path)
        assert run.code == 0, run.stderr
        refresh = ["status", "--checkpoint", "ck.jsonl", "--refresh", "--json"]
        not_flow_service = await run_cli(
            refresh, cli_env(emu, BACKFILL_BASE_URL=emu.url), tmp_path, deadline=60.0
        )
    closed = f"http://127.0.0.1:{_closed_port()}/data/foundation/flowservice"
    budget = {"BACKFILL_MAX_RETRIES": "2", "BACKFILL_BACKOFF_MAX": "0.05"}
    nothing_listening = await run_cli(
        refresh, cli_env(None, BACKFILL_BASE_URL=closed, **budget), tmp_path, deadline=60.0
    )
    # Stale states are not printed as if the service had just confirmed them.
    assert not_flow_service.code == 2, not_flow_service.stderr
    assert "/data/foundation/flowservice" in not_flow_service.stderr
    assert not_flow_service.stdout == ""
    assert nothing_listening.code == 75, nothing_listening.stderr
    assert "gave up after 2 retries" in nothing_listening.stderr
    assert nothing_listening.stdout == ""


# ------------------------------------------- 8. max_active_runs holds per flow across shards


async def test_max_active_runs_holds_per_flow_across_three_shards(tmp_path: Path) -> None:
    hours, cap = 45, 12
    async with emulator(scheduled_for=0.3, running_for=0.6) as emu:
        env = cli_env(emu)
        processes = [
            await start_cli(
                hourly_run(
                    FLOW_FILE,
                    hours,
                    "--checkpoint",
                    "ck-{shard}.jsonl",
                    "--shard",
                    f"{index}/3",
                    "--rate",
                    "300/s",
                    "--wait",
                    "--max-active-runs",
                    str(cap),
                ),
                env,
                tmp_path,
            )
            for index in range(3)
        ]
        results = [await finish(process) for process in processes]
        stats = emu.stats()
    assert [r.code for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    assert_exactly_once(stats, FLOW_FILE, hourly(START, hours))
    assert stats["max_active_runs"][FLOW_FILE] <= cap


async def test_a_cap_below_the_shard_count_is_refused_before_the_checkpoint(
    tmp_path: Path,
) -> None:
    result = await run_cli(
        hourly_run(FLOW_FILE, 3, "--shard", "0/4", "--max-active-runs", "3"),
        cli_env(None),
        tmp_path,
    )
    assert result.code == 2, result.stderr
    assert "max_active_runs" in result.stderr
    assert not list(tmp_path.glob("ck*.jsonl"))
