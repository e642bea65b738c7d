"""The README's worked example, run in order and as printed, against the emulator.

Only what the README itself says to change for a rehearsal is changed: the base URL and the
IMS URL point at the emulator (its "Rehearsing" section), the client secret file is a
temporary file, and runs are polled faster than the 10 s default so the test is quick.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson

from backfill.cli import build_parser
from backfill.settings import Settings

from .harness import FLOW_TABLE, cli_env, emulator, run_cli

README = Path(__file__).resolve().parent.parent / "README.md"


def _worked_example() -> list[list[str]]:
    """The first ``sh`` block after "A worked example": one argv per command line."""
    text = README.read_text()
    section = text[text.index("## A worked example") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_the_worked_example_is_what_the_test_runs() -> None:
    commands = [c for c in _worked_example() if c]
    exports = [c for c in commands if c[0] == "export"]
    runs = [c for c in commands if c[0] == "backfill"]
    assert len(exports) == 4
    assert [c[1] for c in runs][:6] == ["plan", "run", "run", "status", "status", "retry"]
    assert "--dry-run" in runs[1]
    assert runs[1][:-1] == runs[2]  # the dry run is the real command plus --dry-run


async def test_the_readme_commands_work_as_printed(tmp_path: Path) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("the-client-secret\n")
    commands = [c for c in _worked_example() if c]
    env = cli_env(None)
    for name in ("BACKFILL_API_KEY", "BACKFILL_ACCESS_TOKEN"):
        del env[name]
    for command in commands:
        if command[0] == "export":
            name, value = command[1].split("=", 1)
            env[name] = value
    env["BACKFILL_CLIENT_SECRET_FILE"] = str(secret)
    env["BACKFILL_POLL_INTERVAL"] = "0.2"
    async with emulator(
        client_id=env["BACKFILL_CLIENT_ID"],
        client_secret="the-client-secret",
        api_key=env["BACKFILL_CLIENT_ID"],  # the client id is the x-api-key
        org=env["BACKFILL_ORG_ID"],
        sandbox=env["BACKFILL_SANDBOX_NAME"],
        flows=((FLOW_TABLE, "table"),),
    ) as emu:
        env["BACKFILL_BASE_URL"] = emu.base_url
        env["BACKFILL_IMS_URL"] = emu.base_url.split("/data/")[0] + "/ims/token/v3"
        results = []
        for command in commands:
            if command[0] != "backfill":
                continue
            result = await run_cli(command[1:], env, tmp_path)
            assert result.code == 0, (command, result.stderr)
            results.append(result)
            if command[1] == "run" and "--dry-run" in command:
                assert emu.stats()["runs"] == []
        stats = emu.stats()
    plan, dry, run, status, refreshed, retry, *later = results
    assert "31 windows" in plan.stdout
    assert "31 to send (31 new runs, 0 re-triggers)" in dry.stdout
    assert "delta column updated_at: sent with the first run" in dry.stdout
    assert len(stats["runs"]) == 31
    assert run.json_lines()[0]["event"] == "backfill_starting"
    assert stats["duplicates"] == []
    report = orjson.loads((tmp_path / "jan-2025.json").read_bytes())
    assert report["totals"]["succeeded"] == 31
    assert "31 succeeded" in status.stdout
    assert "31 succeeded" in refreshed.stdout
    assert retry.code == 0
    assert all(result.code == 0 for result in later)


def test_every_option_of_the_readme_table_has_its_flag_or_says_why_not() -> None:
    text = README.read_text()
    table = text[text.index("## Options") : text.index("## Exit codes")]
    documented = set(re.findall(r"^\| `([a-z_]+)`|, `([a-z_]+)`", table, re.M))
    names = {n for pair in documented for n in pair if n}
    run = next(
        a.choices["run"]
        for a in build_parser()._actions
        if hasattr(a, "choices") and isinstance(a.choices, dict) and "run" in a.choices
    )
    flags = {flag for action in run._actions for flag in action.option_strings}
    environment_only = {
        "access_token",
        "access_token_file",
        "client_id",
        "client_secret",
        "client_secret_file",
    }
    for field in Settings.model_fields:
        if field in ("job_completion_index", "flows"):
            continue  # set by Kubernetes; [[flows]] tables: both said in the README
        assert field in names, f"{field} is not in the README's options table"
        if field in environment_only:
            continue
        assert f"--{field.replace('_', '-')}" in flags, f"{field} has no flag"
