"""Drive the real CLI as a subprocess against an in-process emulator, and read its record."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from asyncio.subprocess import PIPE
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from backfill.emulator import Emulator, EmulatorConfig, serve

FLOW_TABLE = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
FLOW_FILE = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
ORG = "ABC123DEF456@AdobeOrg"

# ``backfill status --json`` of the checkpoint the helpers below write (ck.jsonl).
STATUS = ["status", "--checkpoint", "ck.jsonl", "--json"]

# 2024-01-01 .. 2024-01-11 in hours: 240 windows; small enough to be quick, big enough to race.
START = 1704067200
DAY = 86400


@dataclass(frozen=True, slots=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        """stdout as JSON lines (every line must parse)."""
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


def cli_env(emulator: Emulator | None, **extra: str) -> dict[str, str]:
    """A clean environment for the CLI: no inherited BACKFILL_* variables, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    env.pop("JOB_COMPLETION_INDEX", None)
    env.update(
        {
            "BACKFILL_API_KEY": "test-api-key",
            "BACKFILL_ORG_ID": ORG,
            "BACKFILL_SANDBOX_NAME": "prod",
            "BACKFILL_ACCESS_TOKEN": "test-token",
            "BACKFILL_LOG_FORMAT": "json",
            "BACKFILL_RECONCILE_DELAY": "0.05",
            # A lost answer whose run the emulator does not list is sent again after 3 s, not
            # the default 60: the emulator lists a run as soon as it exists (a test of
            # --listing-lag sets a settle period above its lag), so the wait tests nothing more.
            "BACKFILL_RECONCILE_SETTLE": "3",
            "BACKFILL_POLL_INTERVAL": "0.1",
            "BACKFILL_PROGRESS_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if emulator is not None:
        env["BACKFILL_BASE_URL"] = emulator.base_url
    env.update(extra)
    return env


async def start_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, *, stdout: int | IO[Any] = PIPE
) -> asyncio.subprocess.Process:
    """``python -m backfill ARGS``; stdout a pipe of ours unless given (a file, a descriptor)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        *args,
        env=dict(env),
        cwd=cwd,
        stdout=stdout,
        stderr=PIPE,
    )


async def finish(process: asyncio.subprocess.Process, deadline: float = 120.0) -> CliResult:
    try:
        out, err = await asyncio.wait_for(process.communicate(), deadline)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(
            f"the CLI did not finish in {deadline} s:\n{err.decode()[-3000:]}"
        ) from None
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())


async def outcome(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """Exit code and stderr of a CLI whose stdout is not a pipe of ours."""
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, deadline: float = 120.0
) -> CliResult:
    return await finish(await start_cli(args, env, cwd), deadline)


def status_counts(stdout: str) -> dict[str, int]:
    """The window counts of a ``backfill status --json`` document."""
    counts: dict[str, int] = orjson.loads(stdout)["counts"]
    return counts


async def checkpoint_counts(folder: Path) -> dict[str, int]:
    """``backfill status`` of ``folder``/ck.jsonl (offline): its window counts."""
    result = await run_cli(STATUS, cli_env(None), folder)
    assert result.code == 0, result.stderr
    return status_counts(result.stdout)


async def wait_for_runs(emulator: Emulator, at_least: int, deadline: float = 60.0) -> None:
    """Return once the emulator has created ``at_least`` runs."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while len(emulator.stats()["runs"]) < at_least:
        if loop.time() > give_up:
            raise AssertionError(f"the emulator never reached {at_least} runs")
        await asyncio.sleep(0.01)


def interrupt(process: asyncio.subprocess.Process, sig: signal.Signals = signal.SIGINT) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


@contextlib.asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[Emulator]:
    config.setdefault("port", 0)
    config.setdefault("scheduled_for", 0.05)
    config.setdefault("running_for", 0.1)
    async with serve(EmulatorConfig(**config)) as running:
        yield running


def flow_range(flow: str, hours: int) -> list[str]:
    """The flags of ``hours`` hourly windows of ``flow`` from START."""
    return [
        "--flow-id",
        flow,
        "--start",
        str(START),
        "--end",
        str(START + 3600 * hours),
        "--window",
        "1h",
    ]


def hourly_run(flow: str, hours: int, *extra: str) -> list[str]:
    """``backfill run`` of ``hours`` hourly windows into ck.jsonl; later flags override."""
    return ["run", *flow_range(flow, hours), "--checkpoint", "ck.jsonl", *extra]


def two_flow_config(tmp_path: Path, hours: int, *, checkpoint: str, rate: str) -> Path:
    """A TOML config of a table-based and a file-based flow, ``hours`` hourly windows each.

    Times are given both ways the file allows: ``start`` as an integer, ``end`` as a string.
    """
    config = tmp_path / "backfill.toml"
    config.write_text(
        f"""
checkpoint = "{checkpoint}"
rate = "{rate}"
concurrency = 8
start = {START}
end = "{START + 3600 * hours}"
window = "1h"

[[flows]]
id = "{FLOW_TABLE}"
delta_column = "DOB"

[[flows]]
id = "{FLOW_FILE}"
"""
    )
    return config


def hourly(start: int, hours: int) -> list[tuple[int, int]]:
    return [(start + 3600 * i, start + 3600 * (i + 1)) for i in range(hours)]


def runs_per_window(stats: Mapping[str, Any], flow_id: str) -> Counter[tuple[int, int]]:
    """How many runs the emulator created for each window of a flow (re-triggers included)."""
    return Counter(
        (run["window_start"], run["window_end"])
        for run in stats["runs"]
        if run["flow_id"] == flow_id
    )


def live_runs_per_window(stats: Mapping[str, Any], flow_id: str) -> Counter[tuple[int, int]]:
    """How many live runs (scheduled, in progress or succeeded) each window of a flow has."""
    return Counter(
        {
            (w["window_start"], w["window_end"]): w["live"]
            for w in stats["windows"]
            if w["flow_id"] == flow_id
        }
    )


def assert_exactly_once(
    stats: Mapping[str, Any], flow_id: str, windows: Sequence[tuple[int, int]]
) -> None:
    """The emulator's own record: every planned window sent, none with two live runs, no extra.

    A failed run re-triggered into a new run (the documented re-trigger) is one live run; two
    live runs of one window ingest it twice.
    """
    counts = runs_per_window(stats, flow_id)
    live = live_runs_per_window(stats, flow_id)
    missing = [w for w in windows if counts[w] == 0]
    twice = {w: n for w, n in live.items() if n > 1}
    extra = [w for w in counts if w not in set(windows)]
    assert not missing, f"{len(missing)} windows never submitted, e.g. {missing[:3]}"
    assert not twice, (
        f"{len(twice)} windows with more than one live run, e.g. {list(twice.items())[:3]}"
    )
    assert not extra, f"runs for windows that were never planned: {extra[:3]}"
