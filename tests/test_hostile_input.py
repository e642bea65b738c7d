"""Hostile or careless input through the CLI's entry point: exit 2, one line, checkpoint intact.

Every case runs ``backfill run`` (``backfill.cli.main``, what the console script calls) in
this process with a clean environment, a real checkpoint of the same plan in the working
folder, and a base URL nobody answers on. A case is passed when the exit code is 2, stderr is
exactly one line naming the source (the flag, the variable, or the file and key), and the
checkpoint's sha256 is what it was. A few cases that need a real process (a 1 MB argument,
``--config /dev/zero``) run the CLI as a subprocess as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backfill.cli import main
from backfill.journal import Journal
from backfill.settings import load_settings
from backfill.state import WindowState

from .harness import FLOW_FILE, ORG, run_cli

BASE = [
    "run",
    "--flow-id",
    FLOW_FILE,
    "--start",
    "2024-01-01",
    "--end",
    "2024-01-02",
    "--window",
    "1h",
    "--checkpoint",
    "ck.jsonl",
]
ENV = {
    "BACKFILL_API_KEY": "test-api-key",
    "BACKFILL_ORG_ID": ORG,
    "BACKFILL_ACCESS_TOKEN": "test-token",
    "BACKFILL_BASE_URL": "http://127.0.0.1:9",
    "BACKFILL_LOG_FORMAT": "console",
}


@dataclass(frozen=True)
class Case:
    """One bad input: the flags, variables or TOML text that carry it, and the name to see."""

    name: str
    names: str  # what the stderr line must contain: the flag, the variable, or file: key
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    toml: str | None = None
    unset: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name


def _numbers() -> Iterator[Case]:
    """Every number option, from each source, with values out of type or range."""
    seconds = {
        "connect_timeout": ["0", "-1", "inf", "nan", "1e30", "601", "soon"],
        "request_timeout": ["0", "-5", "inf", "nan", "1e9", "3601"],
        "poll_interval": ["0", "inf", "nan", "1e-9", "1e30", "-1"],
        "reconcile_delay": ["-1", "inf", "nan", "1e30", "601"],
        "grace": ["-1", "inf", "nan", "1e30", "3601"],
        "progress_interval": ["0", "1e-9", "inf", "nan", "-1", "1e30"],
        "concurrency": ["0", "-1", "5000", "1.5", "99999999999999999999", "many"],
        "max_attempts": ["0", "101", "1e3", "three"],
        "max_active_runs": ["0", "-1", "1000001", "1.5"],
        "metrics_port": ["70000", "-1", "8080.5"],
        "shard_count": ["0", "100001"],
        "max_retries": ["-1", "1001", "1.5", "inf"],
        "backoff_max": ["0", "inf", "nan", "3601"],
        "max_retry_after": ["0", "inf", "86401"],
        "reconcile_settle": ["-1", "inf", "nan", "86401"],
    }
    for option, values in seconds.items():
        flag = "--" + option.replace("_", "-")
        variable = "BACKFILL_" + option.upper()
        for value in values:
            if option != "shard_count":
                yield Case(f"flag {flag}={value}", flag, args=(flag, value))
            yield Case(f"env {variable}={value}", variable, env={variable: value})
    toml_values = {
        "connect_timeout": ["inf", "nan", "1e30", "true", "-1.0"],
        "request_timeout": ["inf", "false"],
        "poll_interval": ["inf", "1e-9", "true"],
        "reconcile_delay": ["inf", "nan", "true"],
        "grace": ["inf", "true"],
        "progress_interval": ["1e-9", "nan"],
        "concurrency": ["true", "1.5", "1e30", "0"],
        "max_attempts": ["true", "2.0"],
        "max_active_runs": ["false", "1e6"],
        "metrics_port": ["true", "1e30"],
        "max_retries": ["true", "1e3"],
        "backoff_max": ["inf", "true"],
        "max_retry_after": ["nan", "1e30"],
        "reconcile_settle": ["true", "inf"],
        "wait": ["1", "1.5", '"maybe"'],
        "extend": ["0", '"yes please"'],
    }
    for option, values in toml_values.items():
        for value in values:
            yield Case(f"toml {option}={value}", f"bad.toml: {option}", toml=f"{option} = {value}")


def _rates() -> Iterator[Case]:
    for value in [
        "100000000000000000000/s",
        "1e30/s",
        "inf/s",
        "nan/s",
        "1000001/s",
        "0/s",
        "-1/s",
        "0.00001/h",
        "10",
        "fast",
        "1/fortnight",
        "",
    ]:
        yield Case(f"flag --rate={value}", "--rate", args=("--rate", value))
    for value in ["100000000000000000000/s", "inf/s", "0.5/day"]:
        yield Case(f"env BACKFILL_RATE={value}", "BACKFILL_RATE", env={"BACKFILL_RATE": value})
        yield Case(
            f"flag --rate-per-shard={value}", "--rate-per-shard", args=("--rate-per-shard", value)
        )
    for value in ["inf", "nan", "1e30", "-inf", "true", "0", "-1", "1e-30", '"1e30/s"', "[1]"]:
        yield Case(f"toml rate={value}", "bad.toml: rate", toml=f"rate = {value}")


def _plan_values() -> Iterator[Case]:
    for value in ["true", "1e23", "1.5", "-1", "0", '"1e23s"', "99999999999999999999999"]:
        yield Case(f"toml window={value}", "bad.toml: window", toml=f"window = {value}")
    for value in ["true", "1e300", "nan", "1.5"]:
        yield Case(f"toml start={value}", "bad.toml: start", toml=f"start = {value}")
    yield Case("toml end=true", "bad.toml: end", toml="end = true")
    for value in ["99999999999999999999999s", "1e23s", "true", "99999999999999999999y", "200y"]:
        yield Case(f"flag --window={value}", "--window", args=("--window", value))
    yield Case(
        "env window huge",
        "BACKFILL_WINDOW",
        env={"BACKFILL_WINDOW": "99999999999999999999d"},
        unset=("--window",),
    )
    flows = [
        ("flows window true", f'[[flows]]\nid = "{FLOW_FILE}"\nwindow = true', "flows[0].window"),
        ("flows start 1.5", f'[[flows]]\nid = "{FLOW_FILE}"\nstart = 1.5', "flows[0].start"),
        ("flows id NUL", '[[flows]]\nid = "a\\u0000b"', "flows"),
        ("flows delta newline", f'[[flows]]\nid = "{FLOW_FILE}"\ndelta_column = "a\\nb"', "flows"),
        ("flows not a table", "flows = 3", "bad.toml: flows"),
    ]
    for name, text, names in flows:
        yield Case(f"toml {name}", names, toml=text)


def _strings() -> Iterator[Case]:
    """Values that go into headers, URLs, bodies: no control characters, no giant values."""
    for variable in ["BACKFILL_ACCESS_TOKEN", "BACKFILL_API_KEY", "BACKFILL_CLIENT_ID"]:
        for name, value in [
            ("newline", "abc\ndef"),
            ("carriage return", "abc\rdef"),
            ("control", "abc\x01def"),
            ("delete", "abc\x7fdef"),
            ("non-ASCII", "abcdéf"),
            ("tab", "abc\tdef"),
        ]:
            env = {variable: value}
            if variable == "BACKFILL_CLIENT_ID":
                env["BACKFILL_CLIENT_SECRET"] = "a-client-secret"
            yield Case(f"env {variable} {name}", variable, env=env)
    secret = {"BACKFILL_CLIENT_ID": "client-id", "BACKFILL_CLIENT_SECRET": "abc\ndef"}
    yield Case("env client secret newline", "BACKFILL_CLIENT_SECRET", env=secret)
    yield Case(
        "env client secret bell",
        "BACKFILL_CLIENT_SECRET",
        env={**secret, "BACKFILL_CLIENT_SECRET": "a\x07b"},
    )
    yield Case("flag api key newline", "--api-key", args=("--api-key", "key\nX-Evil: 1"))
    yield Case("flag org newline", "--org-id", args=("--org-id", f"{ORG}\nX-Evil: 1"))
    yield Case("flag sandbox tab", "--sandbox-name", args=("--sandbox-name", "prod\t"))
    yield Case(
        "env sandbox newline", "BACKFILL_SANDBOX_NAME", env={"BACKFILL_SANDBOX_NAME": "a\nb"}
    )
    yield Case("env scopes newline", "BACKFILL_SCOPES", env={"BACKFILL_SCOPES": "openid\nAdobeID"})
    yield Case("flag base url newline", "--base-url", args=("--base-url", "http://127.0.0.1:9/\nx"))
    yield Case(
        "flag base url huge", "--base-url", args=("--base-url", "http://127.0.0.1/" + "a" * 5000)
    )
    yield Case("flag ims url control", "--ims-url", args=("--ims-url", "https://ims\x00.example/"))
    yield Case("flag base url not a url", "--base-url", args=("--base-url", "http://[::1"))
    yield Case("flag delta column newline", "--delta-column", args=("--delta-column", "a\nb"))
    yield Case("flag delta column huge", "--delta-column", args=("--delta-column", "c" * 1000))
    yield Case("flag flow id NUL", "--flow-id", args=("--flow-id", FLOW_FILE + "\x00"))
    yield Case("flag shard huge", "--shard", args=("--shard", "0/99999999999999999999"))
    yield Case("flag shard too many", "--shard", args=("--shard", "0/20000"))
    yield Case(
        "env job index float",
        "JOB_COMPLETION_INDEX",
        env={"JOB_COMPLETION_INDEX": "1e3", "BACKFILL_SHARD_COUNT": "4"},
    )
    yield Case("toml sandbox newline", "bad.toml: sandbox_name", toml='sandbox_name = "a\\nb"')
    yield Case("toml ims url control", "bad.toml: ims_url", toml='ims_url = "https://ims/\\u0001"')
    yield Case("toml unknown key with control", "bad.toml", toml='"a\\u0000b" = 1')


def _paths() -> Iterator[Case]:
    """Paths: control characters, length, and files that are not regular files."""
    for name, value in [
        ("NUL", "ck\x00.jsonl"),
        ("newline", "ck\n.jsonl"),
        ("escape", "ck\x1b[2J.jsonl"),
        ("huge", "x" * 100_000),
        ("long component", "d/" + "x" * 300),
        ("FIFO", "fifo"),
        ("character device", "/dev/null"),
        ("folder", "folder"),
        ("symlink loop", "loop"),
        ("dangling symlink", "dangling"),
        ("socket", "socket"),
    ]:
        yield Case(f"flag checkpoint {name}", "--checkpoint", args=("--checkpoint", value))
        yield Case(
            f"env checkpoint {name}",
            "BACKFILL_CHECKPOINT",
            env={"BACKFILL_CHECKPOINT": value.replace("\x00", "\x01")},
            unset=("--checkpoint",),
        )
    yield Case("toml checkpoint NUL", "bad.toml: checkpoint", toml='checkpoint = "a\\u0000b"')
    yield Case("toml checkpoint device", "bad.toml: checkpoint", toml='checkpoint = "/dev/zero"')
    yield Case("toml checkpoint number", "bad.toml: checkpoint", toml="checkpoint = 3")
    for option in ["report", "metrics_file"]:
        flag = "--" + option.replace("_", "-")
        for name, value in [
            ("missing folder", "no/such/folder/out.json"),
            ("folder", "folder"),
            ("FIFO", "fifo"),
            ("device", "/dev/full"),
            ("NUL", "out\x00.json"),
            ("under a file", "ck.jsonl/out.json"),
        ]:
            yield Case(f"flag {option} {name}", flag, args=(flag, value))
        yield Case(
            f"env {option} missing folder",
            f"BACKFILL_{option.upper()}",
            env={f"BACKFILL_{option.upper()}": "missing/out.json"},
        )
        yield Case(f"toml {option} folder", f"bad.toml: {option}", toml=f'{option} = "folder"')
    for variable in ["BACKFILL_ACCESS_TOKEN_FILE", "BACKFILL_CLIENT_SECRET_FILE"]:
        extra = {"BACKFILL_CLIENT_ID": "client"} if "CLIENT" in variable else {}
        for name, value in [
            ("missing", "no-such-secret"),
            ("folder", "folder"),
            ("FIFO", "fifo"),
            ("zero device", "/dev/zero"),
            ("newline inside", "secret-with-newline"),
            ("empty", "empty-secret"),
            ("huge", "huge-secret"),
            ("not UTF-8", "latin1-secret"),
        ]:
            yield Case(f"env {variable} {name}", variable, env={variable: value, **extra})


def _configs() -> Iterator[Case]:
    """The config file itself: what it is, how big, how it decodes and nests."""
    for name, path in [
        ("missing", "no-such.toml"),
        ("folder", "folder"),
        ("FIFO", "fifo"),
        ("dev zero", "/dev/zero"),
        ("NUL in path", "bad\x00.toml"),
        ("invalid UTF-8", "latin1.toml"),
        ("nested 1000 deep arrays", "deep-arrays.toml"),
        ("nested 1000 deep tables", "deep-tables.toml"),
        ("nested inline tables", "deep-inline.toml"),
        ("2 MB", "big.toml"),
        ("not TOML", "broken.toml"),
        ("binary", "binary.toml"),
    ]:
        yield Case(f"config {name}", "--config", args=("--config", path))
    yield Case("env config FIFO", "--config", env={"BACKFILL_CONFIG": "fifo"})
    yield Case("env config dev zero", "--config", env={"BACKFILL_CONFIG": "/dev/zero"})


def _write_fixtures(folder: Path) -> None:
    (folder / "folder").mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "dangling").symlink_to(folder / "nowhere" / "ck.jsonl")
    (folder / "secret-with-newline").write_text("abc\ndef\n")
    (folder / "empty-secret").write_text("\n")
    (folder / "huge-secret").write_text("s" * 100_000)
    (folder / "latin1-secret").write_bytes(b"caf\xe9")
    (folder / "latin1.toml").write_bytes(b'sandbox_name = "caf\xe9"\n')
    (folder / "deep-arrays.toml").write_text("rate = " + "[" * 1000 + "]" * 1000 + "\n")
    (folder / "deep-tables.toml").write_text(
        "\n".join("[" + ".".join(["x"] * i) + "]" for i in range(1, 1001)) + "\n"
    )
    (folder / "deep-inline.toml").write_text("rate = " + "{a=" * 30 + "1" + "}" * 30 + "\n")
    (folder / "big.toml").write_text("# padding\n" * 200_000)
    (folder / "broken.toml").write_text("rate = = 3\n")
    (folder / "binary.toml").write_bytes(bytes(range(256)) * 4)
    import socket  # noqa: PLC0415 - only here

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket"))
    sock.close()


def _all_cases() -> list[Case]:
    return [*_numbers(), *_rates(), *_plan_values(), *_strings(), *_paths(), *_configs()]


CASES = _all_cases()


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real checkpoint of the base plan, with records: what each case must leave as it is."""
    folder = tmp_path_factory.mktemp("checkpoint")
    flags = dict(zip(BASE[1::2], BASE[2::2], strict=True))
    settings = load_settings({k[2:].replace("-", "_"): v for k, v in flags.items()}, None)
    plan = settings.plan(now=1.8e9)
    path = folder / "ck.jsonl"

    async def write() -> None:
        journal = Journal.open(path, plan)
        for window in list(plan.windows())[:5]:
            await journal.record(window, WindowState.SUBMITTING, attempt=1)
        await journal.close()

    asyncio.run(write())
    return path.read_bytes()


@pytest.fixture
def in_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_bytes: bytes
) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("BACKFILL_") or name == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(name)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    _write_fixtures(tmp_path)
    (tmp_path / "ck.jsonl").write_bytes(checkpoint_bytes)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield tmp_path
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _argv(case: Case) -> list[str]:
    """The base command, less the flags the case gives another way (a flag would win)."""
    args = list(BASE)
    dropped = set(case.unset)
    if case.toml is not None:
        keys = {line.split("=")[0].strip() for line in case.toml.splitlines() if "=" in line}
        dropped |= {"--" + key.replace("_", "-") for key in keys}
        if "flows" in case.toml:
            dropped.add("--flow-id")
    for flag in dropped:
        if flag in args:
            index = args.index(flag)
            del args[index : index + 2]
    extra = list(case.args)
    if case.toml is not None:
        extra += ["--config", "bad.toml"]
    return [*args, *extra]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_exit_2_one_line_naming_the_source_and_the_checkpoint_is_untouched(
    case: Case, in_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.toml is not None:
        (in_folder / "bad.toml").write_text(case.toml + "\n")
    before = _sha(in_folder / "ck.jsonl")

    try:
        code = main(_argv(case))
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err[-2000:]
    assert len(lines) == 1, captured.err[-2000:]
    assert case.names in lines[0], lines[0]
    assert len(lines[0]) <= 2000
    assert "Traceback" not in captured.err
    assert _sha(in_folder / "ck.jsonl") == before
    assert not (in_folder / "nowhere").exists(), "a dangling symlink's target was created"
    for secret in ("abc\ndef", "a-client-secret"):
        assert secret not in captured.err


def test_the_table_has_at_least_150_cases_across_flags_variables_and_toml() -> None:
    assert len(CASES) >= 150
    assert len({c.name for c in CASES}) == len(CASES), "case names are unique"
    assert sum(bool(c.args) and c.toml is None and not c.env for c in CASES) >= 50
    assert sum(bool(c.env) for c in CASES) >= 50
    assert sum(c.toml is not None for c in CASES) >= 40


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--config", "/dev/zero"], {}, "--config"),
        (["--checkpoint", "x" * 1_000_000], {}, "--checkpoint"),
        (["--connect-timeout", "inf"], {}, "--connect-timeout"),
        ([], {"BACKFILL_ACCESS_TOKEN": "tok\nen"}, "BACKFILL_ACCESS_TOKEN"),
        (["--report", "missing/report.json"], {}, "--report"),
    ],
    ids=["config /dev/zero", "1 MB path", "connect timeout inf", "token newline", "report"],
)
async def test_bad_input_through_a_real_process(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    checkpoint = tmp_path / "ck.jsonl"
    checkpoint.write_bytes(b"precious\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    base = list(BASE)
    if len("".join(args)) > 100_000:  # one argument may not exceed 128 KiB: use a config file
        (tmp_path / "long.toml").write_text(f'checkpoint = "{"x" * 1_000_000}"\n')
        args, names = ["--config", "long.toml"], "long.toml: checkpoint"
        del base[base.index("--checkpoint") : base.index("--checkpoint") + 2]
    result = await run_cli([*base, *args], {**clean, **ENV, **env}, tmp_path, deadline=60)
    assert result.code == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert names in lines[0]
    assert checkpoint.read_bytes() == b"precious\n"
