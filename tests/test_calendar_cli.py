"""Calendar windows through the real CLI and the emulator: interrupted, resumed, exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson

from backfill.calendar import local
from backfill.planner import Plan

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    assert_exactly_once,
    cli_env,
    emulator,
    finish,
    interrupt,
    run_cli,
    start_cli,
    wait_for_runs,
)

MADRID = "Europe/Madrid"
NEW_YORK = "America/New_York"


def _config(tmp_path: Path) -> Path:
    """Two years of Madrid days and ten years of New York months, zones set both ways."""
    config = tmp_path / "calendar.toml"
    config.write_text(
        f"""
checkpoint = "ck.jsonl"
rate = "150/s"
concurrency = 8
timezone = "{MADRID}"
window = "1d"
start = 2023-01-01
end = "2025-01-01"

[[flows]]
id = "{FLOW_FILE}"

[[flows]]
id = "{FLOW_TABLE}"
delta_column = "DOB"
timezone = "{NEW_YORK}"
window = "1mo"
start = "2015-01-01"
"""
    )
    return config


async def _planned(config: Path, tmp_path: Path) -> dict[str, list[tuple[int, int]]]:
    result = await run_cli(["plan", "--config", str(config), "--json"], cli_env(None), tmp_path)
    assert result.code == 0, result.stderr
    windows: dict[str, list[tuple[int, int]]] = {FLOW_FILE: [], FLOW_TABLE: []}
    for line in result.json_lines():
        windows[line["flow_id"]].append((line["start"], line["end"]))
    return windows


def _midnight(seconds: int, zone: str) -> bool:
    moment = local(seconds, zone)
    return (moment.hour, moment.minute, moment.second) == (0, 0, 0)


async def test_calendar_windows_interrupted_and_resumed_run_exactly_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    planned = await _planned(config, tmp_path)
    days, months = planned[FLOW_FILE], planned[FLOW_TABLE]
    assert len(days) == 731
    assert len(months) == 120
    # Madrid's days are 23, 24 and 25 hours long; New York's months start at -05:00 or -04:00.
    assert {end - start for start, end in days} == {82800, 86400, 90000}

    args = ["run", "--config", str(config)]
    async with emulator(latency=0.02, seed=16) as emu:
        env = cli_env(emu)
        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, 150)
        interrupt(process, signal.SIGINT)
        stopped = await finish(process)
        assert stopped.code == 130, stopped.stderr
        after_sigint = len(emu.stats()["runs"])
        assert after_sigint < len(days) + len(months), "the interruption left work to resume"

        process = await start_cli(args, env, tmp_path)
        await wait_for_runs(emu, after_sigint + 150)
        process.kill()  # kill -9: requests in flight are left in doubt
        await process.wait()

        resumed = await run_cli(args, env, tmp_path)
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr

    assert_exactly_once(stats, FLOW_FILE, days)
    assert_exactly_once(stats, FLOW_TABLE, months)
    runs = stats["runs"]
    # Judged by what the service received: every window begins and ends at a local midnight.
    for run in runs:
        zone = MADRID if run["flow_id"] == FLOW_FILE else NEW_YORK
        assert _midnight(run["window_start"], zone), run
        assert _midnight(run["window_end"], zone), run
    month_starts = {
        local(r["window_start"], NEW_YORK).day for r in runs if r["flow_id"] == FLOW_TABLE
    }
    assert month_starts == {1}
    assert len([r for r in runs if r["delta_column"] is not None]) == 1

    status = await run_cli(["status", "--checkpoint", "ck.jsonl"], cli_env(None), tmp_path)
    assert status.code == 0, status.stderr
    assert "every 1d in Europe/Madrid, cut on calendar boundaries" in status.stdout
    assert "every 1mo in America/New_York" in status.stdout
    document = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--json"], cli_env(None), tmp_path
    )
    recorded = orjson.loads(document.stdout)["windows"]
    assert sorted((w["start"], w["end"]) for w in recorded) == sorted(days + months)
    assert {w["state"] for w in recorded} == {"submitted"}


async def test_a_checkpoint_from_a_zone_database_that_moves_boundaries_is_refused(
    tmp_path: Path,
) -> None:
    args = [
        "run",
        "--flow-id",
        FLOW_FILE,
        "--timezone",
        MADRID,
        "--window",
        "1mo",
        "--start",
        "2024-01-01",
        "--end",
        "2024-07-01",
        "--checkpoint",
        "ck.jsonl",
    ]
    async with emulator() as emu:
        env = cli_env(emu)
        first = await run_cli(args, env, tmp_path)
        assert first.code == 0, first.stderr
        checkpoint = tmp_path / "ck.jsonl"
        lines = checkpoint.read_bytes().splitlines()
        header = orjson.loads(lines[0])
        assert header["plan"]["flows"][0]["zone"] == MADRID
        assert header["plan"]["flows"][0]["align"] == "calendar"
        # As if an older tzdata with other rules for Madrid had cut these windows.
        header["plan"]["flows"][0]["tzdata"] = "2000a"
        header["plan"]["flows"][0]["boundaries"] = "f" * 16
        header["fingerprint"] = Plan.from_json(header["plan"]).fingerprint()
        checkpoint.write_bytes(b"\n".join([orjson.dumps(header), *lines[1:]]) + b"\n")
        before = checkpoint.read_bytes()

        refused = await run_cli(args, env, tmp_path)
        runs = len(emu.stats()["runs"])
    assert refused.code == 3
    assert "2000a recorded" in refused.stderr
    assert "moves window boundaries in Europe/Madrid" in refused.stderr
    assert "tzdata==2000.1" in refused.stderr
    assert runs == 6, "nothing was sent"
    assert checkpoint.read_bytes() == before


async def test_a_bad_zone_names_its_source_and_the_fix(tmp_path: Path) -> None:
    flow = ["--flow-id", FLOW_FILE, "--start", "2024-01-01", "--end", "2024-02-01"]
    flag = await run_cli(
        ["plan", *flow, "--window", "1d", "--timezone", "Europe/Madird"], cli_env(None), tmp_path
    )
    env = await run_cli(
        ["plan", *flow, "--window", "1d"], cli_env(None, BACKFILL_TIMEZONE="Mars/Olympus"), tmp_path
    )
    config = tmp_path / "zones.toml"
    config.write_text(
        f'window = "1d"\nstart = "2024-01-01"\nend = "2024-02-01"\n'
        f'[[flows]]\nid = "{FLOW_FILE}"\ntimezone = "America/NewYork"\n'
    )
    table = await run_cli(["plan", "--config", str(config)], cli_env(None), tmp_path)
    fixed = await run_cli(
        ["plan", *flow, "--window", "6h", "--align", "calendar"], cli_env(None), tmp_path
    )

    for result, source, fix in (
        (flag, "--timezone", "did you mean Europe/Madrid?"),
        (env, "BACKFILL_TIMEZONE", "give an IANA name such as Europe/Madrid"),
        (table, "flows[0].timezone", "did you mean America/New_York?"),
        (fixed, "--align", "needs a calendar window size"),
    ):
        assert result.code == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert source in result.stderr
        assert fix in result.stderr


async def test_plan_shows_unix_and_local_times_and_says_what_is_clipped(tmp_path: Path) -> None:
    result = await run_cli(
        [
            "plan",
            "--flow-id",
            FLOW_FILE,
            "--timezone",
            MADRID,
            "--window",
            "1w",
            "--start",
            "2024-03-27",
            "--end",
            "2024-04-10T12:00:00",
        ],
        cli_env(None),
        tmp_path,
    )
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "every 1w in Europe/Madrid, cut on calendar boundaries: 3 windows" in out
    assert "first window: 1711494000 .. 1711922400" in out
    assert "(2024-03-27T00:00:00+01:00 .. 2024-04-01T00:00:00+02:00)" in out
    assert "the first window starts at 2024-03-27T00:00:00+01:00, after the 1w boundary" in out
    assert "the last window ends at 2024-04-10T12:00:00+02:00, before the 1w boundary" in out


async def test_a_window_longer_than_the_planned_span_is_a_usage_error(tmp_path: Path) -> None:
    # Found in review: 3000y, 4000000d or 99999999999mo ended in a traceback (year 0 or an
    # overflow in the calendar arithmetic) instead of exit 2 naming --window.
    flow = ["--flow-id", FLOW_FILE, "--start", "2024-01-01", "--end", "2024-02-01"]
    cases = [
        (["--window", "3000y"], "--window", "use at most 10y"),
        (["--window", "11y", "--timezone", MADRID], "--window", "use at most 10y"),
        (["--window", "4000000d"], "--window", "use at most 3652d"),
        (["--window", "99999999999w"], "--window", "use at most 521w"),
        (["--window", "99999999999mo", "--align", "start"], "--window", "use at most 120mo"),
        (["--window", "99999999999q", "--timezone", MADRID], "--window", "use at most 40q"),
        (["--window", "99999999999999999999h"], "--window", "use at most 87658h"),
    ]
    for extra, source, fix in cases:
        result = await run_cli(["plan", *flow, *extra], cli_env(None), tmp_path)
        assert result.code == 2, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert source in result.stderr
        assert "longer than ten years" in result.stderr
        assert fix in result.stderr
    config = tmp_path / "long.toml"
    config.write_text(
        f'start = "2024-01-01"\nend = "2024-02-01"\n'
        f'[[flows]]\nid = "{FLOW_FILE}"\nwindow = "2025y"\n'
    )
    table = await run_cli(["plan", "--config", str(config)], cli_env(None), tmp_path)
    assert table.code == 2, table.stderr
    assert "flows[0].window" in table.stderr
    assert "use at most 10y" in table.stderr
    widest = await run_cli(
        ["plan", *flow, "--window", "10y", "--timezone", MADRID, "--json"], cli_env(None), tmp_path
    )
    assert widest.code == 0, widest.stderr
    assert len(widest.stdout.splitlines()) == 1


async def test_an_inherited_calendar_align_names_the_flow_whose_window_is_fixed(
    tmp_path: Path,
) -> None:
    # Found in review: a top-level align = "calendar" over a flow of 6h windows was refused as
    # "align: ... drop the option or use 1d", without saying which flow's window clashed.
    config = tmp_path / "align.toml"
    config.write_text(
        'start = "2024-01-01"\nend = "2024-03-01"\nwindow = "1mo"\nalign = "calendar"\n'
        f'[[flows]]\nid = "{FLOW_TABLE}"\n'
        f'[[flows]]\nid = "{FLOW_FILE}"\nwindow = "6h"\n'
    )
    result = await run_cli(["plan", "--config", str(config)], cli_env(None), tmp_path)
    assert result.code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "align.toml: align: calendar needs a calendar window size" in result.stderr
    assert "flows[1].window is 6h, a fixed size" in result.stderr


async def test_status_text_shows_a_calendar_plans_windows_in_its_zone(tmp_path: Path) -> None:
    days = [
        "run",
        *("--flow-id", FLOW_FILE, "--start", "2024-03-29", "--end", "2024-04-02"),
        *("--window", "1d", "--timezone", MADRID, "--checkpoint", "ck.jsonl"),
        *("--wait", "--max-attempts", "1", "--rate", "50/s"),
    ]
    async with emulator(fail_rate=1.0) as emu:
        run = await run_cli(days, cli_env(emu), tmp_path)
    assert run.code == 1, run.stderr
    status = await run_cli(["status", "--checkpoint", "ck.jsonl"], cli_env(None), tmp_path)
    assert status.code == 0, status.stderr
    text = status.stdout
    assert f"every 1d in {MADRID}" in text  # the flow line names the zone
    failed = [line for line in text.splitlines() if "failed for good" in line]
    # Each Madrid midnight, with its offset: winter time, then summer time from 31 March.
    assert [line.split()[7] for line in failed] == [
        "2024-03-29T00:00:00+01:00",
        "2024-03-30T00:00:00+01:00",
        "2024-03-31T00:00:00+01:00",
        "2024-04-01T00:00:00+02:00",
    ], text
    assert "T23:00:00Z" not in text  # not in UTC only
    assert "T22:00:00Z" not in text


async def test_status_shows_a_fixed_size_plans_times_in_the_zone_it_was_run_in(
    tmp_path: Path,
) -> None:
    """``--timezone`` with ``--window 6h``: the checkpoint keeps the zone beside the plan."""
    hours = [
        "run",
        *("--flow-id", FLOW_FILE, "--start", "2024-03-29", "--end", "2024-03-30"),
        *("--window", "6h", "--timezone", MADRID, "--checkpoint", "ck.jsonl"),
    ]
    async with emulator() as emu:
        run = await run_cli(hours, cli_env(emu), tmp_path)
    assert run.code == 0, run.stderr
    status = await run_cli(["status", "--checkpoint", "ck.jsonl"], cli_env(None), tmp_path)
    assert status.code == 0, status.stderr
    assert "2024-03-29T00:00:00+01:00 .. 2024-03-30T00:00:00+01:00 every 6h" in status.stdout
    assert "2024-03-28T23:00:00Z" not in status.stdout
