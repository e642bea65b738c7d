"""Credentials that outlive a backfill, secrets never written down, and bad input refused."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from backfill.cli import main

from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    ORG,
    START,
    assert_exactly_once,
    cli_env,
    emulator,
    hourly,
    hourly_run,
    run_cli,
)

CLIENT_ID = "backfill-test-client"
CLIENT_SECRET = "sEcReT-client-7f3a9c0d51"
STATIC_TOKEN = "tOkEn-static-51b2e8aa90"


def _oauth_env(ims_url: str, base_url: str, **extra: str) -> dict[str, str]:
    env = cli_env(None, BACKFILL_BASE_URL=base_url, **extra)
    del env["BACKFILL_ACCESS_TOKEN"]
    env |= {
        "BACKFILL_CLIENT_ID": CLIENT_ID,
        "BACKFILL_CLIENT_SECRET": CLIENT_SECRET,
        "BACKFILL_IMS_URL": ims_url,
    }
    return env


@pytest.mark.serial
async def test_tokens_are_renewed_once_per_lifetime_across_several_lifetimes(
    tmp_path: Path,
) -> None:
    lifetime = 2
    async with emulator(
        token_lifetime=lifetime, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    ) as emu:
        env = _oauth_env(emu.ims_url, emu.base_url)
        result = await run_cli(
            hourly_run(FLOW_FILE, 320, "--rate", "40/s", "--concurrency", "16"), env, tmp_path
        )
        stats = emu.stats()
    assert result.code == 0, result.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 320))
    summary = next(line for line in result.json_lines() if line["event"] == "summary")
    lifetimes = summary["elapsed_s"] / lifetime
    assert lifetimes > 3
    # Renewed a fifth of a lifetime early, once for all 16 workers: about 1.25 per lifetime.
    assert lifetimes <= stats["tokens_issued"] <= 1.25 * lifetimes + 2
    assert "401" not in stats["requests"]["by_endpoint"]["POST /runs"]


async def test_a_refused_static_token_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    async with emulator(token="the-right-token") as emu:
        refused = await run_cli(
            hourly_run(FLOW_FILE, 20),
            cli_env(emu, BACKFILL_ACCESS_TOKEN="an-expired-token"),
            tmp_path,
        )
        assert refused.code == 2, refused.stderr
        assert "expired" in refused.stderr
        assert emu.stats()["runs"] == []
        resumed = await run_cli(
            hourly_run(FLOW_FILE, 20),
            cli_env(emu, BACKFILL_ACCESS_TOKEN="the-right-token"),
            tmp_path,
        )
        stats = emu.stats()
    assert resumed.code == 0, resumed.stderr
    assert_exactly_once(stats, FLOW_FILE, hourly(START, 20))


async def test_no_secret_reaches_any_byte_the_tool_writes(tmp_path: Path) -> None:
    async with emulator(
        token_lifetime=1, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, fail_rate=0.3, seed=9
    ) as emu:
        secret_file = tmp_path / "client-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        env = _oauth_env(emu.ims_url, emu.base_url, BACKFILL_LOG_LEVEL="debug")
        del env["BACKFILL_CLIENT_SECRET"]
        env["BACKFILL_CLIENT_SECRET_FILE"] = str(secret_file)
        outputs = [
            await run_cli(
                hourly_run(
                    FLOW_FILE,
                    120,
                    "--rate",
                    "60/s",
                    "--wait",
                    "--max-attempts",
                    "1",
                    "--report",
                    "report.json",
                    "--metrics-file",
                    "metrics.prom",
                ),
                env,
                tmp_path,
            ),
            await run_cli(["status", "--checkpoint", "ck.jsonl", "--refresh"], env, tmp_path),
            await run_cli(
                hourly_run(FLOW_FILE, 4, "--checkpoint", "static.jsonl"),
                cli_env(emu, BACKFILL_ACCESS_TOKEN=STATIC_TOKEN, BACKFILL_LOG_LEVEL="debug"),
                tmp_path,
            ),
        ]
        wrong = _oauth_env(emu.ims_url, emu.base_url)
        wrong["BACKFILL_CLIENT_SECRET"] = CLIENT_SECRET + "x"
        outputs.append(
            await run_cli(hourly_run(FLOW_FILE, 4, "--checkpoint", "wrong.jsonl"), wrong, tmp_path)
        )
        issued = list(emu.app.gate.snapshot()["issued"])
    assert [o.code for o in outputs] == [1, 0, 0, 2]
    assert "refused the client credentials" in outputs[3].stderr
    assert len(issued) >= 2
    written = b"".join(
        [o.stdout.encode() + o.stderr.encode() for o in outputs]
        + [path.read_bytes() for path in tmp_path.iterdir() if path.is_file()]
    )
    assert (tmp_path / "report.json").exists()
    assert (tmp_path / "metrics.prom").exists()
    for secret in (CLIENT_SECRET, STATIC_TOKEN, *issued):
        if secret == CLIENT_SECRET:
            # The secret file itself is the user's, not something the tool wrote.
            written_by_tool = written.replace((CLIENT_SECRET + "\n").encode(), b"", 1)
            assert secret.encode() not in written_by_tool
        else:
            assert secret.encode() not in written


async def test_secrets_cannot_be_given_as_flags(tmp_path: Path) -> None:
    for flag in ("--access-token", "--client-secret"):
        result = await run_cli(hourly_run(FLOW_FILE, 2, flag, "x"), cli_env(None), tmp_path)
        assert result.code == 2
        assert "unknown option" in result.stderr
        assert "secrets are never flags" in result.stderr


# ---------------------------------------------------------------- bad input, table-driven

_GOOD_FLOW = [
    "--flow-id",
    FLOW_TABLE,
    "--start",
    "2024-01-01",
    "--end",
    "2024-02-01",
    "--window",
    "1d",
]
_BAD_INPUTS: list[tuple[str, list[str], dict[str, str], str | None, str]] = [
    # (id, extra argv, extra env, config file text, the field the message must name)
    ("start after end", ["--start", "2024-03-01"], {}, None, "--end"),
    ("empty range", ["--end", "2024-01-01"], {}, None, "--end"),
    ("start garbage", ["--start", "last tuesday"], {}, None, "--start"),
    ("start milliseconds", ["--start", "1704067200000"], {}, None, "--start"),
    ("start tutorial typo", ["--start", "16515859567"], {}, None, "--start"),
    ("start before 1990", ["--start", "86400"], {}, None, "--start"),
    ("end in the future", ["--end", "2099-01-01"], {}, None, "--end"),
    ("end fractional", ["--end", "2024-02-01T00:00:00.5"], {}, None, "--end"),
    ("window zero", ["--window", "0d"], {}, None, "--window"),
    ("window negative", ["--window", "-1d"], {}, None, "--window"),
    ("window unit", ["--window", "1yr"], {}, None, "--window"),
    ("window words", ["--window", "daily"], {}, None, "--window"),
    ("flow id shape", ["--flow-id", "not-a-uuid"], {}, None, "--flow-id"),
    ("rate unit", ["--rate", "10/sec2"], {}, None, "--rate"),
    ("rate zero", ["--rate", "0/s"], {}, None, "--rate"),
    ("rate bare", ["--rate", "10"], {}, None, "--rate"),
    ("concurrency word", ["--concurrency", "many"], {}, None, "--concurrency"),
    ("concurrency zero", ["--concurrency", "0"], {}, None, "--concurrency"),
    ("max attempts zero", ["--max-attempts", "0"], {}, None, "--max-attempts"),
    ("max active runs zero", ["--max-active-runs", "0"], {}, None, "--max-active-runs"),
    ("retry mode", ["--retry-mode", "again"], {}, None, "--retry-mode"),
    ("on failure", ["--on-failure", "panic"], {}, None, "--on-failure"),
    ("order", ["--order", "random"], {}, None, "--order"),
    ("poll interval", ["--poll-interval", "-3"], {}, None, "--poll-interval"),
    ("grace", ["--grace", "soon"], {}, None, "--grace"),
    ("shard shape", ["--shard", "2"], {}, None, "--shard"),
    ("shard index", ["--shard", "4/4"], {}, None, "--shard"),
    ("log format", ["--log-format", "xml"], {}, None, "--log-format"),
    ("base url http remote", ["--base-url", "http://platform.adobe.io/x"], {}, None, "--base-url"),
    ("base url scheme", ["--base-url", "ftp://127.0.0.1/x"], {}, None, "--base-url"),
    ("unknown flag", ["--rat", "10/s"], {}, None, "--rat"),
    ("env org id", [], {"BACKFILL_ORG_ID": "ABC123"}, None, "BACKFILL_ORG_ID"),
    ("env rate", [], {"BACKFILL_RATE": "fast"}, None, "BACKFILL_RATE"),
    ("env concurrency", [], {"BACKFILL_CONCURRENCY": "-1"}, None, "BACKFILL_CONCURRENCY"),
    ("env sandbox", [], {"BACKFILL_SANDBOX_NAME": "my sandbox"}, None, "BACKFILL_SANDBOX_NAME"),
    ("env api key missing", [], {"BACKFILL_API_KEY": ""}, None, "BACKFILL_API_KEY"),
    ("env no credentials", [], {"BACKFILL_ACCESS_TOKEN": ""}, None, "BACKFILL_ACCESS_TOKEN"),
    (
        "env secret file",
        [],
        {"BACKFILL_CLIENT_SECRET_FILE": "/nonexistent/secret"},
        None,
        "BACKFILL_CLIENT_SECRET_FILE",
    ),
    ("env shard count", [], {"JOB_COMPLETION_INDEX": "2"}, None, "BACKFILL_SHARD_COUNT"),
    (
        "env job index",
        [],
        {"JOB_COMPLETION_INDEX": "5", "BACKFILL_SHARD_COUNT": "4"},
        None,
        "JOB_COMPLETION_INDEX",
    ),
    ("env wait", [], {"BACKFILL_WAIT": "perhaps"}, None, "BACKFILL_WAIT"),
    ("config unknown key", [], {}, 'rat = "10/s"', "rat"),
    ("config secret", [], {}, 'client_secret = "x"', "client_secret"),
    ("config not toml", [], {}, "rate = 10/s", "--config"),
    ("config bad rate", [], {}, 'rate = "lots"', "rate"),
    ("config flow id", [], {}, '[[flows]]\nid = "nope"', "flows[0].id"),
    (
        "config flow end",
        [],
        {},
        f'[[flows]]\nid = "{FLOW_FILE}"\nstart = "2024-01-01"\nend = "2023-01-01"\nwindow = "1d"',
        "flows[0].end",
    ),
    ("config flow unknown key", [], {}, f'[[flows]]\nid = "{FLOW_FILE}"\nwindw = "1d"', "flows"),
    (
        "config flow missing window",
        [],
        {},
        f'[[flows]]\nid = "{FLOW_FILE}"\nstart = "2024-01-01"\nend = "2024-02-01"',
        "flows[0].window",
    ),
    (
        "config duplicate flow",
        [],
        {},
        f'start = "2024-01-01"\nend = "2024-02-01"\nwindow = "1d"\n'
        f'[[flows]]\nid = "{FLOW_FILE}"\n[[flows]]\nid = "{FLOW_FILE}"',
        "listed twice",
    ),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("BACKFILL_") or name == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(name)
    for name, value in {
        "BACKFILL_API_KEY": "key",
        "BACKFILL_ORG_ID": ORG,
        "BACKFILL_ACCESS_TOKEN": "token",
        "BACKFILL_BASE_URL": "http://127.0.0.1:9/data/foundation/flowservice",
        "BACKFILL_LOG_FORMAT": "console",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.mark.parametrize(
    ("argv", "env", "config", "field"),
    [pytest.param(a, e, c, f, id=i) for i, a, e, c, f in _BAD_INPUTS],
)
def test_bad_input_exits_2_naming_the_field_and_leaves_the_checkpoint_alone(
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    config: str | None,
    field: str,
) -> None:
    assert len(_BAD_INPUTS) >= 40
    checkpoint = tmp_path / "ck.jsonl"
    checkpoint.write_bytes(b"a checkpoint that must survive\n")
    for name, value in env.items():
        clean_env.setenv(name, value)
    args = ["run", *(_GOOD_FLOW if config is None else []), *argv, "--checkpoint", str(checkpoint)]
    if config is not None:
        path = tmp_path / "config.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1, stderr.getvalue()
    assert field in lines[0]
    assert checkpoint.read_bytes() == b"a checkpoint that must survive\n"
