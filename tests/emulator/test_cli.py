"""``backfill emulator``: flags, validation, readiness, signals, and state across restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from backfill.emulator import EmulatorConfig, FlowKind
from backfill.emulator.cli import build_parser, config_from_args, main

from .conftest import HEADERS

FLAGS = [
    "--host",
    "--port",
    "--seed",
    "--response-shape",
    "--flow",
    "--token",
    "--api-key",
    "--org",
    "--sandbox",
    "--client-id",
    "--client-secret",
    "--token-lifetime",
    "--scheduled-for",
    "--running-for",
    "--fail-rate",
    "--rate-limit",
    "--retry-after",
    "--error-rate",
    "--list-error-rate",
    "--latency",
    "--jitter",
    "--drop-rate",
    "--max-active-runs",
    "--max-page-size",
    "--state",
    "--ready-file",
    "--post-error-codes",
    "--runs-without-params",
    "--token-only-links",
    "--self-link",
    "--listing-lag",
    "--retrigger-same-run",
]


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: backfill emulator")
    for flag in FLAGS:
        assert f"\n  {flag} " in out or f"\n  {flag}\n" in out, flag


def test_every_config_field_has_a_flag() -> None:
    dests = {action.dest for action in build_parser()._actions}
    renamed = {
        "flows": "flow",
        "flow_schedules": "flow",
        "hidden_flows": "hidden_flow",
        "state_file": "state",
    }
    for name in EmulatorConfig.__dataclass_fields__:
        assert renamed.get(name, name) in dests, name


def test_flags_build_the_config() -> None:
    args = build_parser().parse_args(
        [
            "--port=0",
            "--seed=7",
            "--response-shape=items",
            "--flow=a:table",
            "--flow=b:file",
            "--token=t",
            "--rate-limit=5",
            "--fail-rate=0.25",
            "--max-active-runs=2",
            "--state=s.json",
        ]
    )
    config = config_from_args(args)
    assert config == EmulatorConfig(
        port=0,
        seed=7,
        response_shape="items",
        flows=(("a", FlowKind.TABLE), ("b", FlowKind.FILE)),
        token="t",
        rate_limit=5,
        fail_rate=0.25,
        max_active_runs=2,
        state_file=Path("s.json"),
    )
    assert config_from_args(build_parser().parse_args([])) == EmulatorConfig()


def test_variant_flags_build_the_config() -> None:
    args = build_parser().parse_args(
        [
            "--runs-without-params",
            "--token-only-links",
            "--self-link",
            "--listing-lag=2.5",
            "--drop-rate=0.2",
            "--post-error-codes=520,408",
            "--retrigger-same-run",
        ]
    )
    assert config_from_args(args) == EmulatorConfig(
        runs_without_params=True,
        token_only_links=True,
        self_link=True,
        listing_lag=2.5,
        drop_rate=0.2,
        post_error_codes=(520, 408),
        retrigger_same_run=True,
    )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--fail-rate", "1.5"], "--fail-rate"),
        (["--error-rate", "-0.1"], "--error-rate"),
        (["--list-error-rate", "1.5"], "--list-error-rate"),
        (["--drop-rate", "nan"], "--drop-rate"),
        (["--port", "70000"], "--port"),
        (["--rate-limit", "0"], "--rate-limit"),
        (["--max-active-runs", "0"], "--max-active-runs"),
        (["--max-page-size", "0"], "--max-page-size"),
        (["--latency", "-1"], "--latency"),
        (["--token-lifetime", "0"], "--token-lifetime"),
        (["--token", ""], "--token"),
        (["--flow", "abc"], "--flow"),
        (["--flow", "abc:database"], "--flow"),
        (["--flow", "a:table", "--flow", "a:file"], "--flow"),
        (["--response-shape", "short"], "--response-shape"),
        (["--fail-rate", "lots"], "--fail-rate"),
        (["--post-error-codes", "520,x"], "--post-error-codes"),
        (["--post-error-codes", ","], "--post-error-codes"),
        (["--error-rate", "0.1", "--post-error-codes", "404"], "--post-error-codes"),
        (["--post-error-codes", "520"], "--post-error-codes"),
        (["--listing-lag", "-2"], "--listing-lag"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("backfill emulator: error: ")
    assert words in err


# -- the real process --------------------------------------------------------------------


@contextmanager
def emulator_process(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    ready = tmp_path / "ready.url"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backfill.emulator",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not get ready"
            time.sleep(0.02)
        yield process, ready.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def http(method: str, url: str, body: object = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=HEADERS)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ready_file_then_clean_stop(tmp_path: Path, signum: signal.Signals) -> None:
    with emulator_process(tmp_path) as (process, base_url):
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/data/foundation/flowservice")
        status, _ = http("GET", base_url + "/runs")
        assert status == 200
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert out == f"backfill emulator listening on {base_url}\n"
        assert "Traceback" not in err
    assert not (tmp_path / "ready.url").exists()


def test_state_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    body = {"flowId": "f", "params": {"windowStartTime": "1", "windowEndTime": "2"}}
    with emulator_process(tmp_path, "--state", str(state)) as (process, base_url):
        status, run = http("POST", base_url + "/runs", body)
        assert status == 201
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "state saved" in err
    assert state.exists()
    with emulator_process(tmp_path, "--state", str(state)) as (process, base_url):
        status, got = http("GET", base_url + f"/runs/{run['id']}")
        assert status == 200
        assert got["items"][0]["id"] == run["id"]
        process.send_signal(signal.SIGTERM)


def test_a_broken_state_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.json"
    state.write_text("not json")
    assert main(["--port", "0", "--state", str(state)]) == 2
    assert "--state" in capsys.readouterr().err


def test_a_taken_port_exits_1(tmp_path: Path) -> None:
    with emulator_process(tmp_path) as (process, base_url):
        port = base_url.split(":")[2].split("/")[0]
        taken = subprocess.run(
            [sys.executable, "-m", "backfill.emulator", "--port", port],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert taken.returncode == 1
        assert taken.stderr.startswith("backfill emulator: error: ")
        process.send_signal(signal.SIGTERM)
