"""The emulator's settings: one frozen value, checked once, built by the CLI or by tests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, cast

__all__ = [
    "FREQUENCIES",
    "RETRIGGER_SPELLINGS",
    "EmulatorConfig",
    "FlowKind",
    "ResponseShape",
    "StatusVocabulary",
]

ResponseShape = Literal["full", "items"]
# Run status words: "camel" as public material shows them (help/sources/tutorials/api/monitor.md),
# "upper" as the spec's StatusDTO enum (static/swagger-specs/flow-service.yaml).
StatusVocabulary = Literal["camel", "upper"]
# scheduleParams.frequency: "Valid values include once, minute, hour, day, week" (the spec's
# POST /flows description, static/swagger-specs/flow-service.yaml).
FREQUENCIES = ("once", "minute", "hour", "day", "week")
# op of POST /runs/{id}/action: the tutorial's (retry-flows.md) and the spec's enum.
RETRIGGER_SPELLINGS = ("re-trigger", "RE_TRIGGER", "both")


class FlowKind(StrEnum):
    """What a flow reads from, which decides whether its runs carry ``deltaColumn``."""

    TABLE = "table"  # databases, CRM, ...: the first run must name the delta column
    FILE = "file"  # cloud storage: runs never carry a delta column


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything the emulator can be told; every field has a CLI flag of the same name."""

    host: str = "127.0.0.1"
    port: int = 8080
    seed: int = 0
    response_shape: ResponseShape = "full"
    flows: tuple[tuple[str, FlowKind], ...] = ()
    # Declared flows' schedule and Copy delta column at creation: (flow id, frequency, column).
    flow_schedules: tuple[tuple[str, str, str | None], ...] = ()
    token: str | None = None
    api_key: str | None = None
    org: str | None = None
    sandbox: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_lifetime: float = 86399.0
    scheduled_for: float = 0.2
    running_for: float = 0.5
    fail_rate: float = 0.0
    rate_limit: int | None = None
    retry_after: int = 1
    error_rate: float = 0.0
    # Listings only (GET /runs): a service whose reads fail while its writes work.
    list_error_rate: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0
    drop_rate: float = 0.0
    max_active_runs: int | None = None
    max_page_size: int = 100
    state_file: Path | None = None
    # How far the emulator departs from the documented API, for rehearsing each variant.
    runs_without_params: bool = False
    token_only_links: bool = False
    self_link: bool = False
    listing_lag: float = 0.0
    post_error_codes: tuple[int, ...] = ()
    retrigger_same_run: bool = False
    empty_rate: float = 0.0
    partial_rate: float = 0.0
    status_vocabulary: StatusVocabulary = "camel"
    status_synonyms: bool = False
    stuck_rate: float = 0.0
    stuck_status: str = "paused"
    require_start_time: bool = False
    retrigger_spelling: str = "re-trigger"
    # Flows that exist but that access labels hide from every caller (FLOW-2120-403).
    hidden_flows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept "table"/"file" strings too, so callers need not import the enum.
        flows = []
        for flow_id, kind in self.flows:
            try:
                flows.append((flow_id, FlowKind(kind)))
            except ValueError:
                raise ValueError(
                    f"--flow {flow_id}: kind must be 'table' or 'file', got {kind!r}"
                ) from None
        object.__setattr__(self, "flows", tuple(flows))
        object.__setattr__(self, "post_error_codes", tuple(self.post_error_codes))
        problem = next(iter(self.problems()), None)
        if problem is not None:
            raise ValueError(problem)

    def problems(self) -> list[str]:
        """Every reason this configuration cannot run, each phrased as the fix (flag names)."""
        found: list[str] = []
        if not self.host:
            found.append("--host must not be empty")
        if not 0 <= self.port <= 65535:
            found.append(
                f"--port must be between 0 and 65535 (0 picks a free port), got {self.port}"
            )
        if self.response_shape not in ("full", "items"):
            found.append(f"--response-shape must be 'full' or 'items', got {self.response_shape!r}")
        for name, value in (
            ("--fail-rate", self.fail_rate),
            ("--error-rate", self.error_rate),
            ("--list-error-rate", self.list_error_rate),
            ("--drop-rate", self.drop_rate),
            ("--empty-rate", self.empty_rate),
            ("--partial-rate", self.partial_rate),
            ("--stuck-rate", self.stuck_rate),
        ):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                found.append(f"{name} must be a fraction between 0 and 1, got {value}")
        for name, value in (
            ("--scheduled-for", self.scheduled_for),
            ("--running-for", self.running_for),
            ("--latency", self.latency),
            ("--jitter", self.jitter),
            ("--listing-lag", self.listing_lag),
        ):
            if not (math.isfinite(value) and value >= 0.0):
                found.append(f"{name} must be a number of seconds >= 0, got {value}")
        if not (math.isfinite(self.token_lifetime) and self.token_lifetime > 0):
            found.append(
                f"--token-lifetime must be a number of seconds > 0, got {self.token_lifetime}"
            )
        if self.rate_limit is not None and self.rate_limit < 1:
            found.append(
                f"--rate-limit must be at least 1 request per second, got {self.rate_limit}"
            )
        if self.retry_after < 0:
            found.append(f"--retry-after must be a number of seconds >= 0, got {self.retry_after}")
        if self.max_active_runs is not None and self.max_active_runs < 1:
            found.append(f"--max-active-runs must be at least 1, got {self.max_active_runs}")
        if self.status_vocabulary not in ("camel", "upper"):
            found.append(
                f"--status-vocabulary must be 'camel' or 'upper', got {self.status_vocabulary!r}"
            )
        if not self.stuck_status.strip():
            found.append("--stuck-status must be a non-empty status word")
        if self.retrigger_spelling not in RETRIGGER_SPELLINGS:
            found.append(
                "--retrigger-spelling must be 're-trigger', 'RE_TRIGGER' or 'both', "
                f"got {self.retrigger_spelling!r}"
            )
        found.extend(
            f"--hidden-flow needs a flow id without spaces, got {flow_id!r}"
            for flow_id in self.hidden_flows
            if not flow_id or flow_id != flow_id.strip()
        )
        kinds = dict(self.flows)
        for flow_id, frequency, column in self.flow_schedules:
            if flow_id not in kinds:
                found.append(f"--flow {flow_id}: a schedule needs the flow declared with a kind")
            if frequency not in FREQUENCIES:
                found.append(
                    f"--flow {flow_id}: frequency must be one of {', '.join(FREQUENCIES)} "
                    f"(or hourly, daily, weekly), got {frequency!r}"
                )
            if column is not None and (not column.strip() or kinds.get(flow_id) is FlowKind.FILE):
                found.append(
                    f"--flow {flow_id}: a delta column needs a table flow and a non-empty name"
                )
        if self.max_page_size < 1:
            found.append(f"--max-page-size must be at least 1, got {self.max_page_size}")
        odd = [code for code in self.post_error_codes if code != 408 and not 500 <= code <= 599]
        if odd:
            found.append(
                "--post-error-codes takes 408 and 5xx statuses (e.g. 520,408), "
                f"got {','.join(map(str, odd))}"
            )
        if self.post_error_codes and not (self.error_rate or self.drop_rate):
            found.append(
                "--post-error-codes needs --error-rate or --drop-rate: they decide which POSTs "
                "fail (before or after the run is created)"
            )
        for name, flag in (
            ("--runs-without-params", self.runs_without_params),
            ("--token-only-links", self.token_only_links),
            ("--self-link", self.self_link),
            ("--retrigger-same-run", self.retrigger_same_run),
        ):
            if not isinstance(cast(object, flag), bool):  # a stray "no" from a config would be true
                found.append(f"{name} is a switch (true or false), got {flag!r}")
        for name, secret in (
            ("--token", self.token),
            ("--api-key", self.api_key),
            ("--org", self.org),
            ("--sandbox", self.sandbox),
            ("--client-id", self.client_id),
            ("--client-secret", self.client_secret),
        ):
            if secret is not None and not secret.strip():
                found.append(f"{name} must not be empty; leave it out to accept any value")
        seen: dict[str, FlowKind] = {}
        for flow_id, kind in self.flows:
            if not flow_id or flow_id != flow_id.strip():
                found.append(f"--flow needs a non-empty flow id without spaces, got {flow_id!r}")
            elif seen.get(flow_id, kind) is not kind:
                found.append(f"--flow {flow_id} is declared both as {seen[flow_id]} and {kind}")
            else:
                seen[flow_id] = kind
        return found

    @property
    def strict_flows(self) -> bool:
        """Declared flows make every other flow id unknown.

        ``1430-400`` on ``POST /runs``, ``1439-404`` on ``GET /flows``.
        """
        return bool(self.flows)
