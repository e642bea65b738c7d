"""Settings: precedence, the TOML file, secrets, shards, the plan, and errors naming the option."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backfill.errors import ConfigError, ExitCode
from backfill.limits import Rate
from backfill.planner import FlowPlan, Order, Plan, Shard
from backfill.settings import Settings, load_settings

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
OTHER = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
JAN = 1704067200  # 2024-01-01T00:00:00Z
FEB = 1706745600  # 2024-02-01T00:00:00Z
DAY = 86400
NOW = 1735689600.0  # 2025-01-01T00:00:00Z: the injected "now" for plans
BASE = {"flow_id": FLOW, "start": "2024-01-01", "end": "2024-02-01", "window": "1d"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BACKFILL_* (or Kubernetes) variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("BACKFILL_") or name.upper() == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(name)


def load(
    flags: Mapping[str, Any] | None = None,
    config: Path | None = None,
) -> Settings:
    """``load_settings`` the way the CLI calls it: the process environment is the environment."""
    return load_settings(dict(flags or {}), config)


def toml(tmp_path: Path, text: str, name: str = "backfill.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("option", "default", "in_file", "in_env", "in_flag", "expected"),
    [
        ("concurrency", 16, "4", "8", "12", (4, 8, 12)),
        ("max_attempts", 3, "5", "6", "7", (5, 6, 7)),
        ("sandbox_name", "prod", '"dev"', "stage", "qa", ("dev", "stage", "qa")),
        ("checkpoint", "backfill-checkpoint.jsonl", '"a.jsonl"', "b.jsonl", "c.jsonl", None),
        ("order", Order.OLDEST_FIRST, '"newest-first"', "oldest-first", "newest-first", None),
        ("rate", Rate(10.0), '"5/s"', "600/min", "2/s", (Rate(5.0), Rate(600.0, 60.0), Rate(2.0))),
        ("poll_interval", 10.0, '"2m"', "30s", "5", (120.0, 30.0, 5.0)),
        ("log_level", "info", '"debug"', "warning", "error", None),
    ],
)
def test_flag_beats_env_beats_file_beats_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: str,
    default: Any,
    in_file: str,
    in_env: str,
    in_flag: str,
    expected: tuple[Any, Any, Any] | None,
) -> None:
    from_file, from_env, from_flag = expected or (
        json.loads(in_file) if in_file.startswith('"') else in_file,
        in_env,
        in_flag,
    )
    config = toml(tmp_path, f"{option} = {in_file}\n")
    env = f"BACKFILL_{option.upper()}"

    assert getattr(load(), option) == default
    assert getattr(load(config=config), option) == from_file
    monkeypatch.setenv(env, in_env)
    assert getattr(load(config=config), option) == from_env
    assert getattr(load({option: in_flag}, config), option) == from_flag
    monkeypatch.delenv(env)
    assert getattr(load({option: in_flag}, config), option) == from_flag


@pytest.mark.parametrize(("text", "rate"), [("10/s", Rate(10.0)), ("120/min", Rate(120.0, 60.0))])
def test_a_rate_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, rate: Rate
) -> None:
    """BACKFILL_RATE is written like --rate: N/s, N/min or N/h."""
    monkeypatch.setenv("BACKFILL_RATE", text)
    monkeypatch.setenv("BACKFILL_RATE_PER_SHARD", text)

    settings = load()

    assert settings.rate == rate
    assert settings.rate_per_shard == rate


def test_backfill_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = toml(tmp_path, "concurrency = 3\n")
    monkeypatch.setenv("BACKFILL_CONFIG", str(config))

    assert load().concurrency == 3


def test_the_environment_is_read_where_the_values_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values, BACKFILL_CONFIG and the source named in an error all come from os.environ."""
    monkeypatch.setenv("BACKFILL_CONCURRENCY", "4")
    assert load_settings({}, None).concurrency == 4
    monkeypatch.setenv("BACKFILL_CONCURRENCY", "x")
    with pytest.raises(ConfigError, match=r"^BACKFILL_CONCURRENCY:"):
        load_settings({}, None)


# ---------------------------------------------------------------------- the file


def test_flows_in_the_file_with_string_and_integer_times(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        f"""
start = "2024-01-01"
end = {FEB}
window = "1d"

[[flows]]
id = "{FLOW}"
delta_column = "updated_at"

[[flows]]
id = "{OTHER}"
start = {JAN + 10 * DAY}
end = "2024-01-21T00:00:00Z"
window = 21600
""",
    )

    plan = load(config=config).plan(now=NOW)

    assert plan == Plan(
        (
            FlowPlan.single(FLOW, JAN, FEB, DAY, "updated_at"),
            FlowPlan.single(OTHER, JAN + 10 * DAY, JAN + 20 * DAY, 6 * 3600),
        )
    )


def test_a_single_flow_from_flags(tmp_path: Path) -> None:
    settings = load({**BASE, "delta_column": "DOB", "start": "1704067200"})

    assert settings.plan(now=NOW) == Plan((FlowPlan.single(FLOW, JAN, FEB, DAY, "DOB"),))


def test_flags_for_times_complete_flows_from_the_file(tmp_path: Path) -> None:
    config = toml(tmp_path, f'window = "1d"\n[[flows]]\nid = "{FLOW}"\n')

    plan = load({"start": "2024-01-01", "end": "2024-02-01"}, config).plan(now=NOW)

    assert plan.flows[0] == FlowPlan.single(FLOW, JAN, FEB, DAY)


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("concurency", "unknown option"),
        ("max-attempts", "did you mean 'max_attempts'?"),
        ("maxattempts", "did you mean 'max_attempts'?"),
    ],
)
def test_an_unknown_key_in_the_file_is_refused_by_name(tmp_path: Path, key: str, hint: str) -> None:
    config = toml(tmp_path, f"{key} = 4\n")

    with pytest.raises(ConfigError) as info:
        load(config=config)

    assert info.value.field == f"{config}: {key}"
    assert hint in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_an_unknown_key_in_a_flow_table_is_refused_by_name(tmp_path: Path) -> None:
    config = toml(tmp_path, f'[[flows]]\nid = "{FLOW}"\nwindw = "1d"\n')

    with pytest.raises(ConfigError, match="windw") as info:
        load(config=config)

    assert "unknown option" in str(info.value)


@pytest.mark.parametrize("key", ["client_secret", "access_token"])
def test_secrets_in_the_file_are_refused(tmp_path: Path, key: str) -> None:
    config = toml(tmp_path, f'{key} = "hunter2-not-here"\n')

    with pytest.raises(ConfigError) as info:
        load(config=config)

    message = str(info.value)
    assert key in info.value.field
    assert f"BACKFILL_{key.upper()}" in message
    assert "hunter2-not-here" not in message


def test_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load(config=tmp_path / "nope.toml")

    assert "nope.toml" in info.value.field


def test_a_config_file_that_is_not_toml(tmp_path: Path) -> None:
    config = toml(tmp_path, "concurrency: 4\n[unclosed\n")

    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(config=config)

    assert str(config) in info.value.field


def test_a_config_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load(config=tmp_path)


# ----------------------------------------------------------------------- secrets


def test_secrets_are_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("p8e-SECRET-VALUE\n", encoding="utf-8")
    token = tmp_path / "token"
    token.write_text("  eyJ.token.value  \n", encoding="utf-8")
    monkeypatch.setenv("BACKFILL_CLIENT_SECRET_FILE", str(secret))
    monkeypatch.setenv("BACKFILL_ACCESS_TOKEN_FILE", str(token))

    settings = load()

    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == "p8e-SECRET-VALUE"
    assert settings.access_token is not None
    assert settings.access_token.get_secret_value() == "eyJ.token.value"
    assert "p8e-SECRET-VALUE" not in repr(settings)
    assert "eyJ.token.value" not in repr(settings)


def test_secrets_from_the_environment_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_CLIENT_SECRET", "p8e-FROM-ENV")

    settings = load()

    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == "p8e-FROM-ENV"
    assert "p8e-FROM-ENV" not in repr(settings)


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot be read"), ("\n", "is empty")])
def test_an_unreadable_or_empty_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, problem: str
) -> None:
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_text(content, encoding="utf-8")
    monkeypatch.setenv("BACKFILL_CLIENT_SECRET_FILE", str(secret))

    with pytest.raises(ConfigError, match=problem) as info:
        load()

    assert info.value.field == "BACKFILL_CLIENT_SECRET_FILE"


def test_credentials_are_required_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="BACKFILL_API_KEY"):
        load().require_credentials()
    monkeypatch.setenv("BACKFILL_API_KEY", "client-id")
    with pytest.raises(ConfigError, match="BACKFILL_ORG_ID"):
        load().require_credentials()
    monkeypatch.setenv("BACKFILL_ORG_ID", "ABC123@AdobeOrg")
    with pytest.raises(ConfigError, match="BACKFILL_ACCESS_TOKEN"):
        load().require_credentials()
    monkeypatch.setenv("BACKFILL_CLIENT_ID", "client-id")
    monkeypatch.setenv("BACKFILL_CLIENT_SECRET", "secret")
    load().require_credentials()


# ------------------------------------------------------------------------ shards


def test_shard_from_the_flag() -> None:
    assert load({"shard": "2/4"}).shard_spec() == Shard(2, 4)
    assert load({"shard": " 0 / 1 "}).shard_spec() == Shard(0, 1)
    assert load().shard_spec() == Shard(0, 1)


def test_shard_from_an_indexed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    monkeypatch.setenv("BACKFILL_SHARD_COUNT", "4")

    settings = load(BASE)

    assert settings.shard_spec() == Shard(3, 4)
    assert settings.plan(now=NOW).shard == Shard(3, 4)


def test_a_completion_index_needs_a_shard_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")

    with pytest.raises(ConfigError, match="shard count") as info:
        load().shard_spec()

    assert info.value.field == "BACKFILL_SHARD_COUNT"


def test_a_completion_index_must_be_below_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "4")
    monkeypatch.setenv("BACKFILL_SHARD_COUNT", "4")

    with pytest.raises(ConfigError, match="BACKFILL_SHARD_COUNT=4") as info:
        load().shard_spec()

    assert info.value.field == "JOB_COMPLETION_INDEX"


@pytest.mark.parametrize(
    ("checkpoint", "shard", "expected"),
    [
        ("ck.jsonl", None, "ck.jsonl"),
        ("ck.jsonl", "2/4", "ck.shard-2.jsonl"),
        ("state/ck.jsonl", "0/2", "state/ck.shard-0.jsonl"),
        ("state/ck-{shard}.jsonl", "3/4", "state/ck-3.jsonl"),
        ("state/{shard}/ck.jsonl", "1/2", "state/1/ck.jsonl"),
        ("state/ck-{shard}.jsonl", None, "state/ck-0.jsonl"),
    ],
)
def test_checkpoint_path(checkpoint: str, shard: str | None, expected: str) -> None:
    flags: dict[str, str] = {"checkpoint": checkpoint}
    if shard is not None:
        flags["shard"] = shard

    assert load(flags).checkpoint_path() == Path(expected)


def test_every_shard_has_its_own_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_SHARD_COUNT", "6")
    paths = set()
    for index in range(6):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        paths.add(load({"checkpoint": "/data/ck.jsonl"}).checkpoint_path())

    assert len(paths) == 6


def test_effective_rate() -> None:
    assert load({"rate": "40/s"}).effective_rate() == Rate(40.0)
    assert load({"rate": "40/s", "shard": "1/4"}).effective_rate().per_second == 10.0
    assert load({"rate": "40/s", "shard": "1/4", "rate_per_shard": "3/s"}).effective_rate() == (
        Rate(3.0)
    )


# -------------------------------------------------------------------------- plan


def plan_error(flags: Mapping[str, Any], config: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(flags, config).plan(now=NOW)
    return info.value


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"start": "2024-02-01", "end": "2024-01-01"}, "--end", "not after the start"),
        ({"start": "2024-01-01", "end": "2024-01-01"}, "--end", "must not be empty"),
        ({"window": "0s"}, "--window", "not a positive window size"),
        ({"window": "-1d"}, "--window", "not a window size"),
        ({"window": "1yr"}, "--window", "not a window size"),
        ({"window": "soon"}, "--window", "not a window size"),
        ({"start": "last tuesday"}, "--start", "not a time"),
        ({"start": "1651584991000"}, "--start", "milliseconds"),
        ({"end": "16515859567"}, "--end", "10 digits"),
        ({"end": "2024-01-31T00:00:00.5Z"}, "--end", "fractions of a second"),
        ({"end": "2030-01-01"}, "--end", "in the future"),
        ({"start": None}, "--start", "missing"),
        ({"window": None}, "--window", "missing"),
        ({"delta_column": "  "}, "--delta-column", "is empty"),
        ({"flow_id": None}, "--flow-id", "no flow"),
    ],
)
def test_plan_errors_name_the_flag(changes: dict[str, Any], field: str, words: str) -> None:
    flags = {k: v for k, v in (BASE | changes).items() if v is not None}

    error = plan_error(flags)

    assert error.field == field
    assert words in str(error)
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("second_flow", "field", "words"),
    [
        ('end = "2030-01-01"', "flows[1].end", "in the future"),
        ('start = "2024-03-01"', "flows[1].start", "not after the start"),
        ('window = "0s"', "flows[1].window", "not a positive window size"),
        ("start = 1651584991000", "flows[1].start", "milliseconds"),
        ('end = "16515859567"', "flows[1].end", "10 digits"),
    ],
)
def test_plan_errors_name_the_flow_table(
    tmp_path: Path, second_flow: str, field: str, words: str
) -> None:
    config = toml(
        tmp_path,
        f"""
start = "2024-01-01"
end = "2024-02-01"
window = "1d"
[[flows]]
id = "{FLOW}"
[[flows]]
id = "{OTHER}"
{second_flow}
""",
    )

    error = plan_error({}, config)

    assert error.field == f"{config}: {field}"
    assert words in str(error)


def test_a_flow_listed_twice_is_refused(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        f'start = "2024-01-01"\nend = "2024-02-01"\nwindow = "1d"\n'
        f'[[flows]]\nid = "{FLOW}"\n[[flows]]\nid = "{FLOW}"\n',
    )

    error = plan_error({}, config)

    assert "listed twice" in str(error)


def test_the_delta_column_flag_goes_with_a_flow_id(tmp_path: Path) -> None:
    config = toml(tmp_path, f'window = "1d"\n[[flows]]\nid = "{FLOW}"\n')

    error = plan_error({"start": "2024-01-01", "end": "2024-02-01", "delta_column": "x"}, config)

    assert error.field == "--delta-column"


def test_the_end_may_be_now() -> None:
    plan = load(BASE).plan(now=float(FEB))

    assert plan.flows[0].end == FEB


# ---------------------------------------------------------------- shapes of values


@pytest.mark.parametrize(
    "url",
    [
        "https://platform.adobe.io/data/foundation/flowservice",
        "http://127.0.0.1:8080",
        "http://127.0.0.1",
        "http://localhost:9000/flowservice",
        "http://[::1]:8080",
    ],
)
def test_accepted_base_urls(url: str) -> None:
    assert load({"base_url": url + "/"}).base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://platform.adobe.io/data/foundation/flowservice",
        "http://10.0.0.5:8080",
        "http://127.0.0.1.example.com",
        "http://127.0.0.1@evil.example.com",
        "ftp://platform.adobe.io",
        "platform.adobe.io",
        "https://",
    ],
)
def test_refused_base_urls(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"base_url": url})

    assert info.value.field == "--base-url"


@pytest.mark.parametrize("org", ["ABC123@AdobeOrg", "0123456789ABCDEF01234567@AdobeOrg"])
def test_accepted_org_ids(org: str) -> None:
    assert load({"org_id": org}).org_id == org


@pytest.mark.parametrize(
    "org", ["ABC123", "ABC123@adobeorg", "@AdobeOrg", "ABC 123@AdobeOrg", "ABC123@AdobeOrg\n"]
)
def test_refused_org_ids(org: str) -> None:
    with pytest.raises(ConfigError, match="ABC123@AdobeOrg") as info:
        load({"org_id": org})

    assert info.value.field == "--org-id"


@pytest.mark.parametrize("flow", [FLOW, FLOW.upper()])
def test_accepted_flow_ids(flow: str) -> None:
    assert load({"flow_id": flow}).flow_id == flow


@pytest.mark.parametrize(
    "flow", ["3abea21c", "not-a-uuid", FLOW + "0", " " + FLOW, FLOW + "\n", FLOW.replace("-", "")]
)
def test_refused_flow_ids(flow: str) -> None:
    with pytest.raises(ConfigError, match="flow ids are UUIDs") as info:
        load({"flow_id": flow})

    assert info.value.field == "--flow-id"


# ------------------------------------------------------------ a table of bad input


@dataclass(frozen=True)
class Bad:
    """One bad input: where it comes from, the options given there, and the name to expect."""

    source: str  # "flag", "env" or "toml"
    values: Mapping[str, Any]
    names: str
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        shown = ",".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{self.source}:{shown}"


BAD_INPUTS = [
    # flags
    Bad("flag", {"concurrency": "0"}, "--concurrency"),
    Bad("flag", {"concurrency": "many"}, "--concurrency"),
    Bad("flag", {"concurrency": "5000"}, "--concurrency"),
    Bad("flag", {"max_attempts": "0"}, "--max-attempts"),
    Bad("flag", {"max_attempts": "101"}, "--max-attempts"),
    Bad("flag", {"max_active_runs": "0"}, "--max-active-runs"),
    Bad("flag", {"rate": "10"}, "--rate"),
    Bad("flag", {"rate": "0/s"}, "--rate"),
    Bad("flag", {"rate": "-1/s"}, "--rate"),
    Bad("flag", {"rate": "fast"}, "--rate"),
    Bad("flag", {"rate_per_shard": "1/fortnight"}, "--rate-per-shard"),
    Bad("flag", {"order": "random"}, "--order"),
    Bad("flag", {"retry_mode": "sometimes"}, "--retry-mode"),
    Bad("flag", {"on_failure": "explode"}, "--on-failure"),
    Bad("flag", {"log_format": "xml"}, "--log-format"),
    Bad("flag", {"log_level": "trace"}, "--log-level"),
    Bad("flag", {"poll_interval": "0s"}, "--poll-interval"),
    Bad("flag", {"poll_interval": "-5"}, "--poll-interval"),
    Bad("flag", {"request_timeout": "0"}, "--request-timeout"),
    Bad("flag", {"connect_timeout": "abc"}, "--connect-timeout"),
    Bad("flag", {"grace": "-1"}, "--grace"),
    Bad("flag", {"metrics_port": "70000"}, "--metrics-port"),
    Bad("flag", {"base_url": "http://example.com"}, "--base-url"),
    Bad("flag", {"ims_url": "http://ims.example.com/ims/token/v3"}, "--ims-url"),
    Bad("flag", {"org_id": "ABC123"}, "--org-id"),
    Bad("flag", {"org_id": "ABC123@AdobeOrg\n"}, "--org-id"),
    Bad("flag", {"sandbox_name": "my sandbox"}, "--sandbox-name"),
    Bad("flag", {"sandbox_name": ""}, "--sandbox-name"),
    Bad("flag", {"sandbox_name": "prod\n"}, "--sandbox-name"),
    Bad("flag", {"sandbox_name": "Prod"}, "--sandbox-name"),
    Bad("flag", {"run_timeout": "0s"}, "--run-timeout"),
    Bad("flag", {"run_timeout": "soon"}, "--run-timeout"),
    Bad("flag", {"api_key": "has space"}, "--api-key"),
    Bad("flag", {"client_id": ""}, "--client-id"),
    Bad("flag", {"flow_id": "not-a-uuid"}, "--flow-id"),
    Bad("flag", {"flow_id": FLOW + "\n"}, "--flow-id"),
    Bad("flag", {"shard": "3/3"}, "--shard"),
    Bad("flag", {"shard": "first"}, "--shard"),
    Bad("flag", {"checkpoint": "  "}, "--checkpoint"),
    Bad("flag", {"start": "1651584991000"}, "--start"),
    Bad("flag", {"end": "16515859567"}, "--end"),
    Bad("flag", {"window": "0s"}, "--window"),
    Bad("flag", {"window": "1yr"}, "--window"),
    Bad("flag", {"start": "yesterday"}, "--start"),
    Bad("flag", {"start": "2024-02-01", "end": "2024-01-01"}, "--end"),
    Bad("flag", {"end": "2099-01-01"}, "--end"),
    Bad("flag", {"start": "2024-01-01T00:00:00.5Z"}, "--start"),
    Bad("flag", {"no_such_option": "1"}, "--no-such-option"),
    # environment variables
    Bad("env", {"concurrency": "zero"}, "BACKFILL_CONCURRENCY"),
    Bad("env", {"rate": "10/sec2"}, "BACKFILL_RATE"),
    Bad("env", {"rate": "0/s"}, "BACKFILL_RATE"),
    Bad("env", {"flows": "not json"}, "BACKFILL_FLOWS"),
    Bad("env", {"max_attempts": "-1"}, "BACKFILL_MAX_ATTEMPTS"),
    Bad("env", {"base_url": "http://10.0.0.1"}, "BACKFILL_BASE_URL"),
    Bad("env", {"org_id": "nope"}, "BACKFILL_ORG_ID"),
    Bad("env", {"org_id": "ABC123@AdobeOrg\n"}, "BACKFILL_ORG_ID"),
    Bad("env", {"sandbox_name": "bad name"}, "BACKFILL_SANDBOX_NAME"),
    Bad("env", {"sandbox_name": "DEV"}, "BACKFILL_SANDBOX_NAME"),
    Bad("env", {"retry_empty": "maybe"}, "BACKFILL_RETRY_EMPTY"),
    Bad("env", {"shard": "5/4"}, "BACKFILL_SHARD"),
    Bad("env", {"shard_count": "0"}, "BACKFILL_SHARD_COUNT"),
    Bad("env", {"wait": "maybe"}, "BACKFILL_WAIT"),
    Bad("env", {"extend": "perhaps"}, "BACKFILL_EXTEND"),
    Bad("env", {"order": "sideways"}, "BACKFILL_ORDER"),
    Bad("env", {"window": "0s"}, "BACKFILL_WINDOW"),
    Bad("env", {"start": "1651584991000"}, "BACKFILL_START"),
    Bad("env", {}, "JOB_COMPLETION_INDEX", {"JOB_COMPLETION_INDEX": "-1"}),
    Bad("env", {}, "JOB_COMPLETION_INDEX", {"JOB_COMPLETION_INDEX": "x"}),
    Bad(
        "env",
        {},
        "JOB_COMPLETION_INDEX",
        {"JOB_COMPLETION_INDEX": "4", "BACKFILL_SHARD_COUNT": "4"},
    ),
    # the config file
    Bad("toml", {"concurrency": 0}, "concurrency"),
    Bad("toml", {"rate": "fast"}, "rate"),
    Bad("toml", {"order": "sideways"}, "order"),
    Bad("toml", {"max_active_runs": 0}, "max_active_runs"),
    Bad("toml", {"base_url": "http://example.com"}, "base_url"),
    Bad("toml", {"concurency": 4}, "concurency"),
    Bad("toml", {"client_secret": "s3cr3t"}, "client_secret"),
    Bad("toml", {"access_token": "s3cr3t"}, "access_token"),
    Bad("toml", {"job_completion_index": 1}, "job_completion_index"),
    Bad("toml", {"poll_interval": "0s"}, "poll_interval"),
    Bad("toml", {"wait": "yes please"}, "wait"),
    Bad("toml", {"flows": [{"id": "not-a-uuid"}]}, "flows[0].id"),
    Bad("toml", {"flows": [{"id": FLOW, "window": "0s"}]}, "flows[0].window"),
    Bad("toml", {"flows": [{"id": FLOW, "windw": "1d"}]}, "windw"),
    Bad("toml", {"flows": [{"id": FLOW}, {"id": OTHER, "end": "2099-01-01"}]}, "flows[1].end"),
    Bad("toml", {"flows": [{"id": FLOW, "start": 1651584991000}]}, "flows[0].start"),
]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def _toml_text(values: Mapping[str, Any]) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in values.items() if k != "flows"]
    tables = []
    for flow in values.get("flows", []):
        body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in flow.items())
        tables.append(f"[[flows]]\n{body}")
    return "\n".join([*top, *tables]) + "\n"


def _build_from(case: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Load the settings with the bad input where the case puts it, then use them all."""
    values: dict[str, Any] = {**BASE, **case.values}
    if "flows" in values:
        values.pop("flow_id")
    for name, value in case.extra_env.items():
        monkeypatch.setenv(name, value)
    flags: dict[str, Any] = {}
    config = None
    if case.source == "flag":
        flags = values
    elif case.source == "env":
        for name, value in values.items():
            monkeypatch.setenv(f"BACKFILL_{name.upper()}", str(value))
    else:
        config = toml(tmp_path, _toml_text(values))
    settings = load(flags, config)
    settings.shard_spec()
    settings.checkpoint_path()
    settings.effective_rate()
    settings.plan(now=NOW)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_is_a_config_error_naming_the_option(
    case: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as info:
        _build_from(case, tmp_path, monkeypatch)

    error = info.value
    assert error.exit_code == ExitCode.USAGE
    assert int(error.exit_code) == 2
    assert case.names in error.field
    assert str(error).startswith(error.field)
    assert error.problem.strip(), "the message says what is wrong"


def test_the_table_of_bad_inputs_is_large_and_the_base_is_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(BAD_INPUTS) >= 40
    for source in ("flag", "env", "toml"):
        _build_from(Bad(source, {}, ""), tmp_path, monkeypatch)


def test_an_upper_case_sandbox_name_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKFILL_SANDBOX_NAME", "Dev-Europe")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, None)
    assert str(caught.value).startswith("BACKFILL_SANDBOX_NAME: ")
    assert "'dev-europe'" in str(caught.value)


def test_run_timeout_and_retry_empty() -> None:
    settings = load_settings({"run_timeout": "30m", "retry_empty": True}, None)
    assert (settings.run_timeout, settings.retry_empty) == (1800.0, True)
    assert load_settings({}, None).run_timeout == 12 * 3600
