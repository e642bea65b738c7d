"""Issue 15: the command line a newcomer meets, each case through the real CLI.

Exit code, the one line on stderr (JSON when stderr is not a terminal), stdout's JSON where
there is one, the checkpoint's bytes unchanged on every error, and the emulator's own record
of what was (not) sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from backfill.journal import Journal
from backfill.planner import FlowPlan, Plan, Shard
from backfill.state import WindowState

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    START,
    CliResult,
    cli_env,
    emulator,
    finish,
    flow_range,
    hourly_run,
    run_cli,
    start_cli,
    two_flow_config,
    wait_for_runs,
)


def error_of(result: CliResult) -> dict[str, Any]:
    """The one JSON line on stderr (stderr is a pipe here, so errors are JSON)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    error: dict[str, Any] = orjson.loads(lines[0])
    assert error["exit_code"] == result.code
    return error


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """An existing checkpoint whose bytes no failed command may change."""
    path = tmp_path / "ck.jsonl"
    path.write_bytes(b"precious bytes\n")
    return path


# ------------------------------------------------------------------ flows from one place


@pytest.mark.parametrize(
    ("how", "blamed"),
    [("env", "BACKFILL_FLOW_ID"), ("flag", "--flow-id")],
)
async def test_a_flow_from_flag_or_environment_does_not_silently_replace_the_files(
    tmp_path: Path, how: str, blamed: str
) -> None:
    config = two_flow_config(tmp_path, 4, checkpoint="ck.jsonl", rate="10/s")
    env = cli_env(None)
    args = ["plan", "--config", str(config)]
    if how == "env":
        env["BACKFILL_FLOW_ID"] = FLOW_FILE
    else:
        args += ["--flow-id", FLOW_FILE]
    result = await run_cli(args, env, tmp_path)
    assert result.code == 2
    message = error_of(result)["message"]
    assert message.startswith(f"{blamed}: ")
    assert f"[[flows]] in {config}" in message
    assert result.stdout == ""


# ------------------------------------------------------------------------- the dry run


def _readme_like_run(hours: int, *extra: str) -> list[str]:
    """The README's worked `run` command, on the emulator's scale."""
    return [
        "run",
        *flow_range(FLOW_TABLE, hours),
        "--delta-column",
        "updated_at",
        "--rate",
        "200/s",
        "--wait",
        "--max-active-runs",
        "10",
        "--checkpoint",
        "ck.jsonl",
        "--report",
        "report.json",
        *extra,
    ]


async def test_dry_run_takes_the_whole_run_command_sends_nothing_and_counts_what_the_run_does(
    tmp_path: Path,
) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        dry = await run_cli([*_readme_like_run(30), "--dry-run", "--json"], env, tmp_path)
        assert dry.code == 0, dry.stderr
        assert emu.stats()["runs"] == []
        assert not (tmp_path / "ck.jsonl").exists()
        assert not (tmp_path / "report.json").exists()
        document = orjson.loads(dry.stdout)
        (flow,) = document["flows"]
        assert (flow["planned"], flow["done"], flow["to_send"]) == (30, 0, 30)
        assert flow["sends_delta_column"] is True
        assert flow["first"]["start"] == START
        assert flow["last"]["end"] == START + 30 * 3600
        assert document["org"]
        assert document["sandbox"] == "prod"
        assert document["base_url"] == emu.base_url

        real = await run_cli(_readme_like_run(30), env, tmp_path)
        assert real.code == 0, real.stderr
        assert len(emu.stats()["runs"]) == flow["new_runs"]


async def test_dry_run_after_an_interruption_counts_what_the_resume_sends(tmp_path: Path) -> None:
    hours = 120
    async with emulator(latency=0.02) as emu:
        env = cli_env(emu)
        args = hourly_run(FLOW_FILE, hours, "--rate", "60/s")
        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 20)
        process.send_signal(2)
        stopped = await finish(process)
        assert stopped.code == 130, stopped.stderr
        checkpoint = (tmp_path / "ck.jsonl").read_bytes()
        before = len(emu.stats()["runs"])

        dry = await run_cli([*args, "--dry-run", "--json"], env, tmp_path)
        assert dry.code == 0, dry.stderr
        assert (tmp_path / "ck.jsonl").read_bytes() == checkpoint
        assert len(emu.stats()["runs"]) == before
        totals = orjson.loads(dry.stdout)["totals"]
        assert totals["done"] + totals["to_send"] + totals["answer_lost"] == hours

        resumed = await run_cli(args, env, tmp_path)
        assert resumed.code == 0, resumed.stderr
        created = len(emu.stats()["runs"]) - before
    # Lost answers are looked up first: each is either adopted or sent again.
    assert totals["to_send"] <= created <= totals["to_send"] + totals["answer_lost"]


async def test_dry_run_exits_2_where_the_real_run_would_refuse(tmp_path: Path) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        first = await run_cli(hourly_run(FLOW_FILE, 5), env, tmp_path)
        assert first.code == 0, first.stderr
        checkpoint = (tmp_path / "ck.jsonl").read_bytes()
        other_plan = await run_cli([*hourly_run(FLOW_FILE, 3), "--dry-run"], env, tmp_path)
        assert other_plan.code == 2
        assert "the run would refuse (exit 3)" in error_of(other_plan)["message"]
        assert "another plan" in error_of(other_plan)["message"]
        assert (tmp_path / "ck.jsonl").read_bytes() == checkpoint
        no_key = dict(env)
        del no_key["BACKFILL_API_KEY"]
        missing = await run_cli([*hourly_run(FLOW_FILE, 5), "--dry-run"], no_key, tmp_path)
        assert missing.code == 2
        assert "BACKFILL_API_KEY" in error_of(missing)["message"]
        assert len(emu.stats()["runs"]) == 5


async def test_json_without_dry_run_is_refused(tmp_path: Path) -> None:
    result = await run_cli([*hourly_run(FLOW_FILE, 2), "--json"], cli_env(None), tmp_path)
    assert result.code == 2
    assert error_of(result)["message"].startswith("--json: has no effect without --dry-run")


# ---------------------------------------------------------------- the start line, the guard


async def test_every_run_starts_by_naming_where_it_sends_and_how_much(tmp_path: Path) -> None:
    config = two_flow_config(tmp_path, 6, checkpoint="ck.jsonl", rate="100/s")
    async with emulator() as emu:
        result = await run_cli(["run", "--config", str(config)], cli_env(emu), tmp_path)
    assert result.code == 0, result.stderr
    first = result.json_lines()[0]
    assert first["event"] == "backfill_starting"
    assert first["org"] == cli_env(None)["BACKFILL_ORG_ID"]
    assert first["sandbox"] == "prod"
    assert first["base_url"] == emu.base_url
    assert first["flows"] == [FLOW_TABLE, FLOW_FILE]
    assert (first["planned"], first["new_runs"]) == (12, 12)
    assert (first["unchecked"], first["at_most"]) == (12, True)  # a fresh checkpoint


async def test_the_start_line_says_its_counts_are_at_most_until_adoption_has_looked(
    tmp_path: Path,
) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        earlier = await run_cli(hourly_run(FLOW_FILE, 12), env, tmp_path)
        assert earlier.code == 0, earlier.stderr
        fresh = await run_cli(hourly_run(FLOW_FILE, 16, "--checkpoint", "new.jsonl"), env, tmp_path)
        posts = len(emu.stats()["runs"])
        # Interrupted by nothing, resumed with a longer plan: the checkpoint knows 16 of 20.
        resumed = await run_cli(
            hourly_run(FLOW_FILE, 20, "--checkpoint", "new.jsonl", "--extend"), env, tmp_path
        )
        again = await run_cli(hourly_run(FLOW_FILE, 20, "--checkpoint", "new.jsonl"), env, tmp_path)
    assert fresh.code == 0, fresh.stderr
    lines = fresh.json_lines()
    start = lines[0]
    assert start["event"] == "backfill_starting"
    assert (start["to_send"], start["unchecked"], start["at_most"]) == (16, 16, True)
    adopted = [line for line in lines if line["event"] == "existing_runs_adopted"]
    assert [line["windows"] for line in adopted] == [12]
    assert posts == 12 + 4  # at most 16, and in fact 4
    assert resumed.code == 0, resumed.stderr
    start = resumed.json_lines()[0]
    assert (start["to_send"], start["unchecked"], start["at_most"]) == (4, 4, True)
    assert again.code == 0, again.stderr
    start = again.json_lines()[0]
    assert (start["to_send"], start["unchecked"], start["at_most"]) == (0, 0, False)


async def _in_terminal(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, answer: bytes | None
) -> tuple[int, str]:
    """Run the CLI with stdin and stderr on a pseudo-terminal; answer a question if asked."""
    controller, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=terminal,
        stderr=terminal,
        stdout=asyncio.subprocess.PIPE,
    )
    os.close(terminal)
    seen = bytearray()
    loop = asyncio.get_running_loop()
    answered = False
    try:
        while process.returncode is None:
            ready = asyncio.Event()
            loop.add_reader(controller, ready.set)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), 0.05)
            finally:
                loop.remove_reader(controller)
            if ready.is_set():
                try:
                    seen += os.read(controller, 65536)
                except OSError:
                    break
            if answer is not None and not answered and b"[y/N]" in seen:
                os.write(controller, answer)
                answered = True
        await asyncio.wait_for(process.wait(), 60)
        with contextlib.suppress(OSError):
            seen += os.read(controller, 65536)
    finally:
        os.close(controller)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode is not None
    return process.returncode, seen.decode(errors="replace")


async def test_more_than_1000_runs_on_a_terminal_asks_first_and_no_sends_nothing(
    tmp_path: Path,
) -> None:
    args = hourly_run(FLOW_FILE, 1100, "--rate", "2000/s", "--concurrency", "64")
    async with emulator() as emu:
        code, terminal = await _in_terminal(args, cli_env(emu), tmp_path, b"n\n")
        assert emu.stats()["runs"] == []
    assert code == 2, terminal
    # A fresh checkpoint: every window is looked up at the service before it is sent.
    assert "This sends up to 1,100 runs" in terminal
    assert "1,100 windows this checkpoint has never seen are looked up at the service" in terminal
    assert "not confirmed" in terminal
    assert not (tmp_path / "ck.jsonl").exists()


async def test_yes_answers_and_without_a_terminal_nothing_is_asked(tmp_path: Path) -> None:
    args = hourly_run(FLOW_FILE, 1100, "--rate", "2000/s", "--concurrency", "64")
    async with emulator() as emu:
        code, terminal = await _in_terminal([*args, "--yes"], cli_env(emu), tmp_path, None)
        assert code == 0, terminal
        assert "[y/N]" not in terminal
        assert len(emu.stats()["runs"]) == 1100
    async with emulator() as emu:
        (tmp_path / "ck.jsonl").unlink()
        piped = await run_cli(args, cli_env(emu), tmp_path)  # stdin/stderr are not terminals
        assert piped.code == 0, piped.stderr
        assert len(emu.stats()["runs"]) == 1100


# -------------------------------------------------------------------------------- retry


async def test_retry_takes_the_config_and_gives_every_failed_window_fresh_attempts(
    tmp_path: Path,
) -> None:
    config = two_flow_config(tmp_path, 3, checkpoint="ck.jsonl", rate="200/s")
    async with emulator(fail_rate=1.0) as emu:
        env = cli_env(emu)
        run = await run_cli(
            ["run", "--config", str(config), "--wait", "--max-attempts", "2"], env, tmp_path
        )
        assert run.code == 1, run.stderr
        retry = await run_cli(["retry", "--config", str(config), "--wait"], env, tmp_path)
        assert retry.code == 1, retry.stderr
        status = await run_cli(["status", "--checkpoint", "ck.jsonl", "--json"], env, tmp_path)
        runs = emu.stats()["runs"]
    windows = orjson.loads(status.stdout)["windows"]
    assert len(windows) == 6
    # 2 attempts, then `retry` with the default --max-attempts 3: 3 more, 5 in all.
    assert {w["attempts"] for w in windows} == {5}
    # The emulator's count: a re-trigger creates a new run of the window (retry-flows.md), so
    # each window has 5 runs, all failed. (Before issue 12 it re-ran the same id 5 times.)
    per_window = Counter((r["flow_id"], r["window_start"]) for r in runs)
    assert set(per_window.values()) == {5}
    assert {r["status"] for r in runs} == {"failed"}


# ------------------------------------------------------------------------------- status


async def test_status_during_a_live_run_names_the_process_and_loses_no_answer(
    tmp_path: Path,
) -> None:
    async with emulator() as emu:
        env = cli_env(emu)
        process = await start_cli(hourly_run(FLOW_FILE, 60, "--rate", "4/s"), env, tmp_path)
        try:
            await wait_for_runs(emu, 2)
            status = await run_cli(["status", "--checkpoint", "ck.jsonl"], env, tmp_path)
            document = await run_cli(
                ["status", "--checkpoint", "ck.jsonl", "--json"], env, tmp_path
            )
        finally:
            process.terminate()
            await finish(process)
    assert status.code == 0, status.stderr
    assert f"in use by process {process.pid} since " in status.stdout
    assert "answer lost" not in status.stdout
    held = orjson.loads(document.stdout)["checkpoints"][0]["held_by"]
    assert held["pid"] == process.pid


async def _write_journal(path: Path, plan: Plan, moves: list[tuple[int, WindowState, Any]]) -> None:
    journal = Journal.open(path, plan)
    windows = list(plan.windows())
    for index, state, kwargs in moves:
        await journal.record(windows[index], state, **kwargs)
    await journal.close()


def _plan(hours: int, shard: Shard | None = None) -> Plan:
    flow = FlowPlan.single(FLOW_FILE, START, START + 3600 * hours, 3600, None)
    return Plan((flow,), shard or Shard())


async def test_status_shows_a_window_waiting_for_its_next_attempt_with_the_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ck.jsonl"
    error = [{"code": "CONNECTOR-2900-400", "message": "The source could not be reached."}]
    await _write_journal(
        path,
        _plan(3),
        [
            (0, WindowState.SUBMITTING, {"attempt": 1}),
            (0, WindowState.SUBMITTED, {"attempt": 1, "run_id": "run-a"}),
            (0, WindowState.FAILED, {"errors": error, "retrying": True}),
            (1, WindowState.SUBMITTING, {"attempt": 1}),
            (1, WindowState.SUBMITTED, {"attempt": 1, "run_id": "run-b"}),
            (1, WindowState.FAILED, {"errors": [], "retrying": False}),
            (2, WindowState.SUBMITTING, {"attempt": 1}),
        ],
    )
    result = await run_cli(["status", "--checkpoint", str(path)], cli_env(None), tmp_path)
    assert result.code == 0, result.stderr
    assert (
        "failed, waiting for attempt 2: "
        f"{FLOW_FILE} 2024-01-01T00:00:00Z run run-a: The source could not be reached."
    ) in result.stdout
    assert (
        "failed for good after 1 attempt(s): "
        f"{FLOW_FILE} 2024-01-01T01:00:00Z run run-b: the service gave no reason"
    ) in result.stdout
    # No process holds the checkpoint: a window left submitting may have been sent.
    assert (
        f"submitting, answer lost or never sent: {FLOW_FILE} 2024-01-01T02:00:00Z"
    ) in result.stdout


async def test_status_over_shards_shows_the_planned_total_and_names_a_missing_shard(
    tmp_path: Path,
) -> None:
    hours = 30
    for index in (0, 2):
        plan = _plan(hours, Shard(index, 3))
        await _write_journal(
            tmp_path / f"ck-{index}.jsonl",
            plan,
            [
                (0, WindowState.SUBMITTING, {"attempt": 1}),
                (0, WindowState.SUBMITTED, {"run_id": "r", "attempt": 1}),
            ],
        )
    pattern = str(tmp_path / "ck-{shard}.jsonl")
    text = await run_cli(["status", "--checkpoint", pattern], cli_env(None), tmp_path)
    document = await run_cli(["status", "--checkpoint", pattern, "--json"], cli_env(None), tmp_path)
    assert text.code == 0, text.stderr
    assert f"all shards: {hours} windows planned; 18 pending, 2 submitted" in text.stdout
    assert f"shard 1: no checkpoint at {tmp_path / 'ck-1.jsonl'}" in text.stdout
    assert "(shard 0/3)" in text.stdout
    assert "(shard 2/3)" in text.stdout
    parsed = orjson.loads(document.stdout)
    assert parsed["planned"] == hours
    assert parsed["missing_shards"] == [{"shard": 1, "path": str(tmp_path / "ck-1.jsonl")}]
    assert [c["shard"] for c in parsed["checkpoints"]] == ["0/3", "2/3"]


# ------------------------------------------------------------------------------ messages


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--max-atempts", "2"], "unknown option --max-atempts (did you mean '--max-attempts'?)"),
        (["--win", "1h"], "unknown option --win (did you mean '--window'?)"),
        (["--js"], "unknown option --js (did you mean '--json'?)"),
        (["--flow", FLOW_FILE], "unknown option --flow (did you mean '--flow-id'?)"),
        # Not "--shard": every option's "--" made any short word look like some option.
        (["--bad"], "unknown option --bad (see backfill run --help)"),
    ],
)
async def test_no_abbreviations_and_did_you_mean(
    tmp_path: Path, precious: Path, extra: list[str], words: str
) -> None:
    result = await run_cli([*hourly_run(FLOW_FILE, 2), *extra], cli_env(None), tmp_path)
    assert result.code == 2
    message = error_of(result)["message"]
    assert message.startswith(words), message
    assert "backfill: error" not in message
    assert precious.read_bytes() == b"precious bytes\n"


async def test_a_usage_error_on_a_terminal_is_one_plain_line_without_a_doubled_prefix(
    tmp_path: Path,
) -> None:
    env = cli_env(None)
    del env["BACKFILL_LOG_FORMAT"]  # auto: stderr is a terminal, so errors are plain text
    code, terminal = await _in_terminal(
        [*hourly_run(FLOW_FILE, 2), "--window"], env, tmp_path, None
    )
    assert code == 2
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert len(lines) == 1, terminal
    assert lines[0].startswith("backfill: error: argument --window: expected one argument")
    assert lines[0].count("backfill:") == 1


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("max_attempt = 2\n", "max_attempt", "unknown option (did you mean 'max_attempts'?)"),
        (
            f'[[flows]]\nflow_id = "{FLOW_FILE}"\n',
            "flows[0].flow_id",
            "unknown option of a flow (did you mean 'id'?)",
        ),
        ('[[flows]]\nwindow = "1h"\n', "flows[0].id", "missing"),
    ],
)
async def test_config_keys_get_did_you_mean(
    tmp_path: Path, precious: Path, text: str, field: str, words: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = await run_cli(
        ["run", "--config", str(config), "--checkpoint", str(precious)], cli_env(None), tmp_path
    )
    assert result.code == 2
    assert error_of(result)["message"].startswith(f"{config}: {field}: {words}")
    assert precious.read_bytes() == b"precious bytes\n"


async def test_a_bad_variable_is_blamed_on_the_variable(tmp_path: Path, precious: Path) -> None:
    config = two_flow_config(tmp_path, 4, checkpoint=str(precious), rate="10/s")
    env = cli_env(None, BACKFILL_START="1651584991000")
    result = await run_cli(["run", "--config", str(config)], env, tmp_path)
    assert result.code == 2
    assert error_of(result)["message"].startswith(
        "BACKFILL_START: 1651584991000 looks like milliseconds"
    )


async def test_a_mistyped_variable_is_refused_with_did_you_mean(
    tmp_path: Path, precious: Path
) -> None:
    env = cli_env(None, BACKFILL_MAX_ATEMPTS="2")
    result = await run_cli(hourly_run(FLOW_FILE, 2, "--wait"), env, tmp_path)
    assert result.code == 2
    assert error_of(result)["message"].startswith(
        "BACKFILL_MAX_ATEMPTS: is not a backfill variable (did you mean 'BACKFILL_MAX_ATTEMPTS'?)"
    )
    assert precious.read_bytes() == b"precious bytes\n"


async def test_a_folder_as_checkpoint_is_named_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ckdir"
    folder.mkdir()
    for command in (["run"], ["retry"]):
        result = await run_cli(
            [*command, *flow_range(FLOW_FILE, 2), "--checkpoint", str(folder)],
            cli_env(None),
            tmp_path,
        )
        assert result.code == 2
        message = error_of(result)["message"]
        assert "is a folder" in message
        assert "corrupt" not in message
    status = await run_cli(["status", "--checkpoint", str(folder)], cli_env(None), tmp_path)
    assert status.code == 2
    assert "is a folder" in error_of(status)["message"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("option", [["--max-attempts", "2"], ["--retry-mode", "new-run"]])
async def test_an_option_without_effect_is_refused_naming_what_it_needs(
    tmp_path: Path, precious: Path, option: list[str]
) -> None:
    result = await run_cli([*hourly_run(FLOW_FILE, 2), *option], cli_env(None), tmp_path)
    assert result.code == 2
    message = error_of(result)["message"]
    assert message.startswith(f"{option[0]}: has no effect without --wait or --max-active-runs")
    assert precious.read_bytes() == b"precious bytes\n"
    with_wait = await run_cli(
        [*hourly_run(FLOW_FILE, 2), *option, "--wait", "--dry-run"], cli_env(None), tmp_path
    )
    assert "has no effect" not in with_wait.stderr


async def test_the_client_id_is_the_api_key(tmp_path: Path) -> None:
    async with emulator(
        client_id="my-client", client_secret="my-secret", api_key="my-client"
    ) as emu:
        env = cli_env(
            emu,
            BACKFILL_CLIENT_ID="my-client",
            BACKFILL_CLIENT_SECRET="my-secret",
            BACKFILL_IMS_URL=emu.base_url.split("/data/")[0] + "/ims/token/v3",
        )
        del env["BACKFILL_API_KEY"]
        del env["BACKFILL_ACCESS_TOKEN"]
        result = await run_cli(hourly_run(FLOW_FILE, 3), env, tmp_path)
        assert result.code == 0, result.stderr
        assert len(emu.stats()["runs"]) == 3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--verison"], "unknown option --verison (did you mean '--version'?)"),
        (["rnu"], "(did you mean 'run'?)"),
        (["status", "--checkpoint", "x.jsonl", "--jsn"], "(did you mean '--json'?)"),
        (["plan", "--flow-id", FLOW_FILE, "stray"], "unexpected argument 'stray'"),
    ],
)
async def test_mistyped_commands_and_options_anywhere(
    tmp_path: Path, args: list[str], words: str
) -> None:
    result = await run_cli(args, cli_env(None), tmp_path)
    assert result.code == 2
    assert words in error_of(result)["message"]


async def test_errors_follow_an_explicit_log_format(tmp_path: Path) -> None:
    env = cli_env(None, BACKFILL_LOG_FORMAT="console")
    result = await run_cli(["plan", "--flow-id", "x"], env, tmp_path)
    assert result.code == 2
    assert result.stderr.startswith("backfill: error: --flow-id: 'x' is not a flow id")
    usage = await run_cli(["plan", "--win", "1h"], env, tmp_path)
    assert usage.code == 2
    assert usage.stderr.startswith("backfill: error: unknown option --win")
