"""Every option, validated once: command-line flag > environment variable > TOML file > default.

This is the only module that reads the environment or the config file. Options are named in
snake_case everywhere: ``--max-attempts`` is ``BACKFILL_MAX_ATTEMPTS`` and ``max_attempts``
in the TOML file. Secrets come only from the environment or from files named there (container
secrets), never from flags (process listings show them) nor from the config file (it is
usually committed or kept in a ConfigMap).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .auth import DEFAULT_SCOPES, IMS_URL
from .calendar import Align, Calendar, check_zone
from .choices import ExistingRuns, OnFailure, Order, RetryMode
from .errors import ConfigError
from .limits import Rate
from .paths import describe_kind, path_problem, shown, text_problem, write_target_problem
from .planner import (
    FlowPlan,
    Plan,
    Shard,
    format_time,
    format_window,
    parse_duration,
    parse_time,
    parse_window,
)

__all__ = ["FlowConfig", "Settings", "did_you_mean", "load_settings", "requested_log_format"]

# Flow Service in production, as every request of the on-demand ingestion tutorial addresses it
# (help/sources/tutorials/api/on-demand-ingestion.md, AdobeDocs/experience-platform.en).
PRODUCTION_URL = "https://platform.adobe.io/data/foundation/flowservice"

# Matched with fullmatch: "$" would let a trailing newline (from a secret file) through.
_FLOW_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ORG_ID = re.compile(r"[A-Za-z0-9]+@AdobeOrg")
_SANDBOX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SANDBOX_CASE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SECRETS = ("access_token", "client_secret")

# Bounds of every number (README, "Options"): past them a value is a typo, not a wish.
_MAX_RATE = 1_000_000.0  # requests a second; Flow Service allows far fewer (the emulator more)
_MIN_RATE = 1 / 86_400  # one a day
_MAX_SHARDS = 10_000
_CONFIG_BYTES = 1 << 20  # a config file larger than this is not a config file
_CONFIG_DEPTH = 16  # tables and arrays nested deeper than this are not options
_SECRET_FILE_BYTES = 64 << 10


def _not_bool(value: Any) -> Any:
    """TOML's ``true`` is not 1: a boolean where a number or text belongs is refused."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; give a number or a text value")
    return value


def _bool_only(value: Any) -> Any:
    """A switch is true or false (``"true"``/``"1"`` from the environment), never a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value!r} is a number; give true or false")
    return value


def _integral(value: Any) -> Any:
    """A float where a whole number belongs is refused rather than truncated or overflowed."""
    _not_bool(value)
    if isinstance(value, float):
        raise ValueError(f"{shown(value)} is not a whole number")
    return value


def _rate(value: Any) -> Any:
    _not_bool(value)
    if isinstance(value, str):
        rate = Rate.parse(value)
    elif isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{shown(value)} is not a positive finite rate; write e.g. 10/s")
        rate = Rate(float(value))
    else:
        return value
    if not _MIN_RATE <= rate.per_second <= _MAX_RATE:
        raise ValueError(
            f"{shown(value)} is outside 1/day .. {_MAX_RATE:,.0f}/s; write e.g. 10/s or 600/min"
        )
    return rate


def _seconds(value: Any) -> Any:
    """A duration as ``30s``/``2m`` or a number of seconds."""
    _not_bool(value)
    if isinstance(value, str) and value.strip() and value.strip()[-1] in "smhdw":
        return float(parse_duration(value))
    return value


# NoDecode: an environment value like "10/s" is a string to parse, not JSON to decode.
RateOption = Annotated[Rate, BeforeValidator(_rate), NoDecode]


def _time_value(value: Any) -> Any:
    """TOML's own dates and datetimes (``start = 2024-01-01``) as ISO-8601 text."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


TimeOption = Annotated[str | int | None, BeforeValidator(_time_value), BeforeValidator(_integral)]
WindowOption = Annotated[str | int | None, BeforeValidator(_integral)]
Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, BeforeValidator(_integral)]
Switch = Annotated[bool, BeforeValidator(_bool_only)]


class FlowConfig(BaseModel):
    """One ``[[flows]]`` table of the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    start: TimeOption = None
    end: TimeOption = None
    window: WindowOption = None
    delta_column: str | None = None
    timezone: str | None = None
    align: Align | None = None

    @field_validator("timezone")
    @classmethod
    def _zone_shape(cls, value: str | None) -> str | None:
        return None if value is None else check_zone(value)

    @field_validator("delta_column")
    @classmethod
    def _column_shape(cls, value: str | None) -> str | None:
        return _check_column(value)


_config_data: ContextVar[dict[str, Any] | None] = ContextVar("backfill_config_data", default=None)


class _ConfigFileSource(InitSettingsSource):
    """The TOML file's values, read and checked by ``load_settings`` before validation."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, dict(_config_data.get() or {}))


class Settings(BaseSettings):
    """Every option of every command."""

    model_config = SettingsConfigDict(
        env_prefix="BACKFILL_",
        extra="forbid",
        arbitrary_types_allowed=True,
        populate_by_name=True,
    )

    # The service and credentials
    base_url: str = PRODUCTION_URL
    api_key: str | None = None
    org_id: str | None = None
    sandbox_name: str = "prod"
    access_token: SecretStr | None = None
    access_token_file: Path | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    scopes: str = DEFAULT_SCOPES
    ims_url: str = IMS_URL
    connect_timeout: Annotated[Seconds, Field(le=600)] = 10.0
    request_timeout: Annotated[Seconds, Field(le=3600)] = 60.0

    # What to backfill: one flow from flags/environment, or [[flows]] in the config file
    flow_id: str | None = None
    start: TimeOption = None
    end: TimeOption = None
    window: WindowOption = None
    delta_column: str | None = None
    timezone: str = "UTC"
    align: Align | None = None  # default: calendar for calendar sizes, start for fixed ones
    flows: list[FlowConfig] = Field(default_factory=list)

    # How
    checkpoint: str = "backfill-checkpoint.jsonl"
    rate: RateOption = Rate(10.0)
    concurrency: Count = Field(16, ge=1, le=1024)
    order: Order = Order.OLDEST_FIRST
    extend: Switch = False

    # Following runs
    wait: Switch = False
    max_active_runs: Count | None = Field(None, ge=1, le=100_000)
    max_attempts: Count = Field(3, ge=1, le=100)
    retry_mode: RetryMode = RetryMode.RETRIGGER
    on_failure: OnFailure = OnFailure.CONTINUE
    poll_interval: Annotated[Seconds, Field(ge=0.05, le=3600)] = 10.0
    reconcile_delay: Annotated[float, BeforeValidator(_not_bool)] = Field(
        2.0, ge=0, le=600, allow_inf_nan=False
    )
    reconcile_settle: Annotated[float, BeforeValidator(_not_bool)] = Field(
        60.0, ge=0, le=86400, allow_inf_nan=False
    )
    run_timeout: Seconds = 12 * 3600.0
    retry_empty: bool = False
    existing_runs: ExistingRuns = ExistingRuns.ADOPT

    # Failures
    max_retries: Count = Field(10, ge=0, le=1000)
    backoff_max: Annotated[Seconds, Field(le=3600)] = 30.0
    max_retry_after: Annotated[Seconds, Field(le=86_400)] = 900.0

    # Stopping
    grace: Annotated[float, BeforeValidator(_not_bool)] = Field(
        20.0, ge=0, le=3600, allow_inf_nan=False
    )

    # Asking: --yes answers the questions a terminal would be asked (more than 1,000 runs) and
    # confirms what may ingest twice (--existing-runs ignore)
    yes: bool = False

    # Output
    report: Path | None = None
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    progress_interval: Annotated[Seconds, Field(ge=0.1, le=86_400)] = 10.0

    # Scale-out
    shard: str | None = None
    shard_count: Count | None = Field(None, ge=1, le=_MAX_SHARDS)
    job_completion_index: Count | None = Field(
        None,
        ge=0,
        le=_MAX_SHARDS,
        validation_alias=AliasChoices("job_completion_index", "JOB_COMPLETION_INDEX"),
    )
    rate_per_shard: RateOption | None = None
    metrics_port: Count | None = Field(None, ge=0, le=65535)
    metrics_file: Path | None = None

    # Where each value given came from, as the user would name it: "--rate",
    # "BACKFILL_RATE" or "backfill.toml: rate". Filled by load_settings.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def source(self, field: str) -> str:
        """Where the value of ``field`` came from (the flag's name when it was not given)."""
        return self._sources.get(field, f"--{field.replace('_', '-')}")

    def given(self, field: str) -> bool:
        """Whether ``field`` was set by a flag, a variable or the config file."""
        return field in self._sources

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @field_validator("base_url", "ims_url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        if value in (PRODUCTION_URL, IMS_URL):
            # The defaults (validated too): known good. So plan, which needs no URL, does not
            # load yarl for them (5 ms of its start-up); run has yarl from aiohttp anyway.
            return value
        problem = text_problem(value, limit=2048)
        if problem is not None:
            raise ValueError(problem)
        from yarl import URL  # noqa: PLC0415 - see above

        try:
            url = URL(value)
        except ValueError:
            raise ValueError(f"{shown(value)} is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{shown(value)} is not an http(s) URL")
        if url.scheme == "http" and not _loopback(url.host):
            raise ValueError(
                f"{shown(value)} is plain http to a non-loopback host; use https "
                "(http is only for the local emulator on 127.0.0.1)"
            )
        return value.rstrip("/")

    @field_validator("access_token", "client_secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        # An empty variable (VAR= in a manifest) means "not set", not "the empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_shape(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("access_token", "client_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        # It goes into a header (or a form): a newline would split it. Never shown.
        if value is not None:
            _check_header_value(value.get_secret_value(), secret=True)
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes_shape(cls, value: str) -> str:
        _check_header_value(value, secret=False, spaces=True)
        return value

    @field_validator("delta_column")
    @classmethod
    def _column_shape(cls, value: str | None) -> str | None:
        return _check_column(value)

    @field_validator(
        "checkpoint",
        "report",
        "metrics_file",
        "access_token_file",
        "client_secret_file",
        mode="before",
    )
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            problem = path_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("org_id")
    @classmethod
    def _org_shape(cls, value: str | None) -> str | None:
        if value is not None and not _ORG_ID.fullmatch(value):
            raise ValueError(
                f"{shown(value)} is not an organization id; it looks like ABC123@AdobeOrg"
            )
        return value

    @field_validator("api_key", "client_id")
    @classmethod
    def _token_shape(cls, value: str | None) -> str | None:
        if value is not None:
            if not value or any(c.isspace() for c in value):
                raise ValueError("must be a non-empty value without spaces")
            _check_header_value(value, secret=False)
        return value

    @field_validator("sandbox_name")
    @classmethod
    def _sandbox_shape(cls, value: str) -> str:
        if not _SANDBOX.fullmatch(value):
            raise ValueError(
                f"{shown(value)} is not a sandbox name (letters, digits, - and _), e.g. prod"
            )
        if not _SANDBOX_CASE.fullmatch(value):
            # "x-sandbox-name whose value is the all-lowercase name of the sandbox": the Flow
            # Service spec's introduction (static/swagger-specs/flow-service.yaml,
            # AdobeDocs/experience-platform-apis).
            raise ValueError(
                f"{value!r} has upper-case letters, and sandbox names are all lower case: "
                f"use {value.lower()!r}"
            )
        return value

    @field_validator("flow_id")
    @classmethod
    def _flow_shape(cls, value: str | None) -> str | None:
        if value is not None:
            _check_flow_id(value)
        return value

    @field_validator("shard")
    @classmethod
    def _shard_shape(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_shard(value)
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_shape(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; give a file path, e.g. backfill-checkpoint.jsonl")
        return value

    # -------------------------------------------------------------- derived

    def shard_spec(self) -> Shard:
        """This process's shard: ``--shard I/N``, else ``JOB_COMPLETION_INDEX`` of N."""
        if self.shard is not None:
            return _parse_shard(self.shard)
        if self.job_completion_index is not None or self.shard_count is not None:
            if self.shard_count is None:
                raise ConfigError(
                    "BACKFILL_SHARD_COUNT", "JOB_COMPLETION_INDEX is set: set the shard count too"
                )
            if self.job_completion_index is None:
                # Every pod would be shard 0, and the other shards' windows would never run.
                raise ConfigError(
                    "JOB_COMPLETION_INDEX",
                    "BACKFILL_SHARD_COUNT is set but not the index: run as an Indexed Job, "
                    "or give --shard INDEX/COUNT",
                )
            index = self.job_completion_index
            if index >= self.shard_count:
                raise ConfigError(
                    "JOB_COMPLETION_INDEX",
                    f"{index} is not below BACKFILL_SHARD_COUNT={self.shard_count}",
                )
            return Shard(index, self.shard_count)
        return Shard()

    def checkpoint_path(self, *, existing: bool = False) -> Path:
        """This shard's checkpoint: ``{shard}`` in the path, else a ``.shard-I`` suffix.

        ``existing``: a path that names an existing file is that file, whatever the shard
        settings say (``retry --checkpoint FILE`` in a pod that has a shard count).
        """
        if existing and Path(self.checkpoint).is_file():
            return Path(self.checkpoint)
        path = self.shard_path(self.checkpoint, self.shard_spec())
        assert path is not None
        return path

    @staticmethod
    def shard_path(path: str | Path | None, shard: Shard) -> Path | None:
        """A file of one shard's own (checkpoint, report, metrics): never shared by shards."""
        if path is None:
            return None
        text = str(path)
        if "{shard}" in text:
            return Path(text.replace("{shard}", str(shard.index)))
        if shard.whole:
            return Path(text)
        plain = Path(text)
        return plain.with_name(f"{plain.stem}.shard-{shard.index}{plain.suffix}")

    def effective_rate(self, shards: int | None = None) -> Rate:
        """This process's share of the rate limit, among ``shards`` (default: the settings')."""
        if self.rate_per_shard is not None:
            return self.rate_per_shard
        return self.rate.divided(shards if shards is not None else self.shard_spec().count)

    def effective_max_active_runs(self, shard: Shard) -> int | None:
        """This shard's share of ``max_active_runs``, which holds per flow across all shards.

        The cap is split as evenly as whole runs allow (the first ``cap % N`` shards get one
        more), so the shares add up to the cap; a cap below the shard count would leave a
        shard nothing, and is refused.
        """
        cap = self.max_active_runs
        if cap is None or shard.count == 1:
            return cap
        if cap < shard.count:
            raise ConfigError(
                "max_active_runs",
                f"{cap} is fewer than the {shard.count} shards; the cap holds per flow across "
                f"all shards and each shard needs at least one: set it to {shard.count} or more",
            )
        return cap // shard.count + (1 if shard.index < cap % shard.count else 0)

    def plan(self, *, now: float) -> Plan:
        """The plan the options describe; times past ``now`` are refused."""
        if self.flow_id is not None and self.flows:
            raise ConfigError(
                self.source("flow_id"),
                f"flows are also given by [[flows]] in {self.source('flows')}; give them in "
                f"one place: remove {self.source('flow_id')} (to run the file's flows), or "
                "run without the config file",
            )
        if self.flow_id is not None:
            configs = [
                (
                    "--",
                    FlowConfig(
                        id=self.flow_id,
                        start=self.start,
                        end=self.end,
                        window=self.window,
                        delta_column=self.delta_column,
                    ),
                )
            ]
        elif self.flows:
            if self.delta_column is not None:
                raise ConfigError(
                    self.source("delta_column"), "goes with --flow-id; put it in [[flows]]"
                )
            file = self.source("flows").removesuffix(": flows")
            configs = [(f"{file}: flows[{i}].", flow) for i, flow in enumerate(self.flows)]
        else:
            raise ConfigError(
                "--flow-id",
                "no flow to backfill: give --flow-id, --start, --end and --window, "
                "or [[flows]] in a --config file",
            )
        plans = [self._flow_plan(prefix, flow, now) for prefix, flow in configs]
        try:
            return Plan(tuple(plans), self.shard_spec())
        except ValueError as exc:
            raise ConfigError("flows", str(exc)) from None

    def _flow_plan(self, prefix: str, flow: FlowConfig, now: float) -> FlowPlan:
        def name(field: str) -> str:
            # Blame the value where it came from: the flow's own table, else the top level
            # (a flag, a variable or the file's top-level key) that it inherited.
            top = "flow_id" if field == "id" else field
            own = getattr(flow, field, None) is not None
            if prefix == "--" or (not own and self.given(top)):
                return self.source(top)
            return f"{prefix}{field}"

        if prefix != "--":
            try:
                _check_flow_id(flow.id)
            except ValueError as exc:
                raise ConfigError(name("id"), str(exc)) from None
        zone = flow.timezone or self.timezone
        values: dict[str, Any] = {}
        for field in ("start", "end", "window"):
            raw = getattr(flow, field)
            if raw is None:
                raw = getattr(self, field)
            if raw is None:
                example = {"start": "2024-01-01", "end": "2025-01-01", "window": "1d"}[field]
                raise ConfigError(name(field), f"missing; give e.g. {example}")
            try:
                values[field] = parse_window(raw) if field == "window" else parse_time(raw, zone)
            except ValueError as exc:
                raise ConfigError(name(field), str(exc)) from None
        start, end = values["start"], values["end"]
        size = values["window"]
        if end <= start:
            # Blame the flow's own value over the one it inherited.
            own_start = flow.start is not None and flow.end is None
            raise ConfigError(
                name("start" if own_start else "end"),
                f"{format_time(end)} is not after the start {format_time(start)}; "
                "the range must not be empty",
            )
        if end > now:
            raise ConfigError(
                name("end"),
                f"{format_time(end)} is in the future; a window past now would miss data that "
                "has not arrived yet (end the backfill at or before now)",
            )
        if flow.delta_column is not None and not flow.delta_column.strip():
            raise ConfigError(name("delta_column"), "is empty; give the column's name or omit it")
        size, align = values["window"], flow.align or self.align
        if isinstance(size, tuple):
            size = Calendar(size[0], size[1], zone, align or Align.CALENDAR)
        elif align is Align.CALENDAR:
            # Name the window it clashes with: an inherited align meets one flow's own size.
            window = name("window").rsplit(": ", 1)[-1]
            raise ConfigError(
                name("align"),
                "calendar needs a calendar window size (1d, 1w, 1mo, 1q, 1y), and "
                f"{window} is {format_window(size)}, a fixed size cut from the range's start: "
                "drop the option or use a calendar size such as 1d",
            )
        return FlowPlan.single(flow.id, start, end, size, flow.delta_column, zone)

    def refuse_idle_options(self) -> None:
        """An option given that would have no effect in this combination is an error.

        Failed runs are only seen by following them (``wait`` or ``max_active_runs``), so
        the options that say what to do with a failed run need one of those.
        """
        if self.wait or self.max_active_runs is not None:
            return
        for field in ("max_attempts", "retry_mode"):
            if self.given(field):
                raise ConfigError(
                    self.source(field),
                    "has no effect without --wait or --max-active-runs (failed runs are only "
                    "seen by following them); add --wait, or drop it",
                )

    def check_run_paths(self, *, existing: bool = False) -> None:
        """Before a run opens anything: the checkpoint is a file (or none yet), and the files
        written at the end (report, metrics) can be written, so no finished backfill fails on
        its last step."""
        shard = self.shard_spec()
        checkpoint = self.checkpoint_path(existing=existing)
        kind = describe_kind(checkpoint)
        if kind is not None:
            raise ConfigError(
                self.source("checkpoint"),
                f"{shown(str(checkpoint))} is {kind}; give the path of a regular file "
                "(or of one to create)",
            )
        for name in ("report", "metrics_file"):
            path = self.shard_path(getattr(self, name), shard)
            if path is None:
                continue
            problem = write_target_problem(path)
            if problem is not None:
                raise ConfigError(self.source(name), f"{shown(str(path))} {problem}")

    def require_credentials(self) -> None:
        """The API options a command that talks to the service cannot do without."""
        if not (self.api_key or self.client_id):
            raise ConfigError(
                "BACKFILL_API_KEY",
                "missing; set it (or BACKFILL_CLIENT_ID) to your credential's client id",
            )
        if not self.org_id:
            raise ConfigError("BACKFILL_ORG_ID", "missing; set it to your org id (…@AdobeOrg)")
        if self.access_token is None and not (self.client_id and self.client_secret):
            raise ConfigError(
                "BACKFILL_ACCESS_TOKEN",
                "no credentials; set BACKFILL_ACCESS_TOKEN (or BACKFILL_ACCESS_TOKEN_FILE), or "
                "BACKFILL_CLIENT_ID with BACKFILL_CLIENT_SECRET (or BACKFILL_CLIENT_SECRET_FILE)",
            )


def load_settings(flags: Mapping[str, Any], config_file: Path | None) -> Settings:
    """Settings from flags (only those given), the environment and the TOML file.

    Raises ``ConfigError`` naming the option as the user spelled it.
    """
    environ = os.environ
    _check_environment(environ)
    if config_file is None and environ.get("BACKFILL_CONFIG"):
        config_file = Path(environ["BACKFILL_CONFIG"])
    data = _read_config(config_file) if config_file is not None else {}
    token = _config_data.set(data)
    try:
        settings = Settings(**dict(flags))
    except ValidationError as exc:
        raise _config_error(exc, flags, environ, config_file) from None
    except SettingsError as exc:  # an environment value that is not even the right shape
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"BACKFILL_{field.group(1).upper()}" if field else "environment"
        raise ConfigError(name, "cannot be read as a value of its kind; see the README") from None
    finally:
        _config_data.reset(token)
    settings = _read_secret_files(settings)
    settings._sources = _sources(flags, environ, config_file, data)
    return settings


def requested_log_format(flags: Mapping[str, Any]) -> str | None:
    """The log format asked for by flag or variable, read before (and even if) the rest of
    the settings fail: it decides how that failure is printed."""
    value = flags.get("log_format") or os.environ.get("BACKFILL_LOG_FORMAT")
    return value if value in ("json", "console") else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the known name closest to a mistyped one, or ``""``."""
    known = list(known)
    bare = name.lower().replace("-", "_").strip("_")
    # A name that differs only in separators or case is surely that one.
    for candidate in known:
        if candidate.lower().replace("-", "_").replace("_", "") == bare.replace("_", ""):
            return f" (did you mean {candidate!r}?)"
    # Compared without what every name shares ("--", "BACKFILL_"): those alone made "--bad"
    # look like "--shard".
    cores: dict[str, str] = {}
    for candidate in known:
        cores.setdefault(_core(candidate), candidate)
    close = difflib.get_close_matches(_core(name), list(cores), n=1, cutoff=0.6)
    return f" (did you mean {cores[close[0]]!r}?)" if close else ""


def _core(name: str) -> str:
    return name.lstrip("-").removeprefix("BACKFILL_")


def _known_fields() -> list[str]:
    return sorted(set(Settings.model_fields) - {"job_completion_index"})


def _environment_names() -> list[str]:
    """Every ``BACKFILL_*`` variable the tool reads."""
    names = {f"BACKFILL_{field.upper()}" for field in _known_fields()}
    return sorted(names | {"BACKFILL_CONFIG"})


def _check_environment(environ: Mapping[str, str]) -> None:
    """A mistyped ``BACKFILL_*`` variable is refused rather than silently ignored."""
    known = _environment_names()
    for name in environ:
        if name.upper().startswith("BACKFILL_") and name.upper() not in known:
            raise ConfigError(
                name,
                "is not a backfill variable"
                + did_you_mean(name.upper(), known)
                + "; unset it, or see the README's options",
            )


def _sources(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None,
    data: Mapping[str, Any],
) -> dict[str, str]:
    """Where each given value came from, by the precedence flag > variable > file."""
    upper = {name.upper() for name in environ}
    sources: dict[str, str] = {}
    for field in Settings.model_fields:
        env_name = (
            "JOB_COMPLETION_INDEX"
            if field == "job_completion_index"
            else f"BACKFILL_{field.upper()}"
        )
        if field in flags:
            sources[field] = f"--{field.replace('_', '-')}"
        elif env_name in upper:
            sources[field] = env_name
        elif field in data:
            sources[field] = f"{config_file}: {field}"
    return sources


def _read_config(path: Path) -> dict[str, Any]:
    """The TOML file: a regular file of at most 1 MiB, UTF-8, not nested deeper than 16."""
    problem = path_problem(str(path))
    if problem is not None:
        raise ConfigError(f"--config {shown(str(path))}", problem)
    field = f"--config {path}"
    kind = describe_kind(path)
    if kind is not None:
        hint = "give the TOML file inside it" if kind == "a folder" else "give a TOML file"
        raise ConfigError(field, f"is {kind}; {hint}")
    try:
        with path.open("rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(field, "is not a regular file; give a TOML file")
            raw = handle.read(_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(field, "no such file; check the path") from None
    except IsADirectoryError:
        raise ConfigError(field, "is a folder; give the TOML file inside it") from None
    except OSError as exc:
        raise ConfigError(field, f"cannot be read ({exc.strerror})") from None
    if len(raw) > _CONFIG_BYTES:
        raise ConfigError(field, f"is larger than {_CONFIG_BYTES >> 20} MiB; is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            field, f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(field, f"is not valid TOML ({shown(str(exc))[1:-1]})") from None
    except RecursionError:
        raise ConfigError(field, "is nested too deeply to be a config file") from None
    if _depth(data) > _CONFIG_DEPTH:
        raise ConfigError(field, f"nests tables or arrays deeper than {_CONFIG_DEPTH} levels")
    known = _known_fields()
    for key in data:
        if key in _SECRETS:
            raise ConfigError(
                f"{path}: {key}",
                f"secrets are not read from config files; set BACKFILL_{key.upper()} or "
                f"BACKFILL_{key.upper()}_FILE instead",
            )
        if key not in known:
            hint = did_you_mean(key, known) or " (see the README for the options)"
            raise ConfigError(f"{path}: {shown(key)[1:-1]}", f"unknown option{hint}")
    _check_flow_tables(path, data.get("flows"))
    return data


# Keys people write in a [[flows]] table by analogy with the flags.
_FLOW_KEY_ALIASES = {"flow_id": "id", "flow": "id", "flowid": "id", "flow-id": "id"}


def _check_flow_tables(path: Path, flows: Any) -> None:
    """``[[flows]]``: each a table with an ``id`` and only the keys a flow has."""
    if flows is None:
        return
    if not isinstance(flows, list) or not all(isinstance(f, dict) for f in flows):
        raise ConfigError(f"{path}: flows", 'must be [[flows]] tables, each with id = "<flow id>"')
    known = sorted(FlowConfig.model_fields)
    for i, table in enumerate(flows):
        for key in table:
            if key in known:
                continue
            alias = _FLOW_KEY_ALIASES.get(key.lower())
            hint = f" (did you mean {alias!r}?)" if alias else did_you_mean(key, known)
            raise ConfigError(
                f"{path}: flows[{i}].{key}",
                f"unknown option of a flow{hint or ' (a flow has ' + ', '.join(known) + ')'}",
            )
        if "id" not in table:
            raise ConfigError(f"{path}: flows[{i}].id", "missing; give the flow's id (a UUID)")


def _depth(value: Any) -> int:
    """How deeply tables and arrays nest (without recursion: the input is not trusted)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > _CONFIG_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _read_secret_files(settings: Settings) -> Settings:
    updates: dict[str, SecretStr] = {}
    for name in _SECRETS:
        path: Path | None = getattr(settings, f"{name}_file")
        if path is None:
            continue
        field = f"BACKFILL_{name.upper()}_FILE"
        kind = describe_kind(path)
        if kind is not None:
            raise ConfigError(field, f"{shown(str(path))} is {kind}; give the secret's file")
        try:
            with path.open("rb") as handle:
                raw = handle.read(_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(field, f"{path} cannot be read ({exc.strerror})") from None
        if len(raw) > _SECRET_FILE_BYTES:
            raise ConfigError(field, f"{path} is larger than 64 KiB; is it the right file?")
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(field, f"{path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(field, f"{path} is empty")
        try:
            _check_header_value(value, secret=True)
        except ValueError as exc:
            raise ConfigError(field, f"{path}: {exc}") from None
        updates[name] = SecretStr(value)
    if not updates:
        return settings
    updated = settings.model_copy(update=updates)
    updated._sources = settings._sources
    return updated


# Errors whose message makes sense only with the value that was given.
_SHOW_INPUT = frozenset(
    {
        "int_parsing",
        "float_parsing",
        "bool_parsing",
        "enum",
        "literal_error",
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "int_from_float",
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
    }
)


def _config_error(
    exc: ValidationError,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> ConfigError:
    """The first problem, named the way the user wrote the option."""
    error = exc.errors(include_url=False)[0]
    loc = [shown(part)[1:-1] if isinstance(part, str) else str(part) for part in error["loc"]]
    field = loc[0] if loc else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown option"
    elif error["type"] in _SHOW_INPUT:
        message = f"{shown(error.get('input'))}: {message[0].lower()}{message[1:]}"
    env_name = (
        "JOB_COMPLETION_INDEX" if field == "job_completion_index" else f"BACKFILL_{field.upper()}"
    )
    if field in flags:
        where = f"--{field.replace('_', '-')}"
    elif env_name in environ or env_name.lower() in {k.lower() for k in environ}:
        where = env_name
    elif config_file is not None:
        key = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
        where = f"{config_file}: {key}"
    else:
        where = field
    return ConfigError(where, message)


def _parse_shard(text: str) -> Shard:
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text)
    if match is None:
        raise ValueError(f"{shown(text)} is not a shard; write INDEX/COUNT, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"{shown(text)}: the index must be below the count (0/4 .. 3/4)")
    if count > _MAX_SHARDS:
        raise ValueError(f"{shown(text)}: at most {_MAX_SHARDS:,} shards")
    return Shard(index, count)


def _check_header_value(value: str, *, secret: bool, spaces: bool = False) -> None:
    """Printable ASCII only: what goes into an HTTP header (or IMS's form) as it is."""
    for position, char in enumerate(value):
        if not (0x21 <= ord(char) <= 0x7E or (spaces and char == " ")):
            what = (
                "a control character"
                if ord(char) < 0x20 or ord(char) == 0x7F
                else "a space"
                if char == " "
                else "a non-ASCII character"
            )
            shown_value = "" if secret else f"{shown(value)} "
            raise ValueError(
                f"{shown_value}contains {what} at position {position}; "
                "it must be printable ASCII (copy the value again, without line breaks)"
            )
    if len(value) > 16_384:
        raise ValueError(f"is {len(value):,} characters long; at most 16,384 are accepted")


def _check_column(value: str | None) -> str | None:
    if value is not None:
        problem = text_problem(value, limit=256)
        if problem is not None:
            raise ValueError(problem)
    return value


def _check_flow_id(value: str) -> None:
    if not _FLOW_ID.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a flow id; flow ids are UUIDs like "
            "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
