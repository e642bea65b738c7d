"""The emulator's settings: one frozen value, checked once, built by the CLI or by tests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, cast

__all__ = ["EmulatorConfig", "FlowKind", "ResponseShape"]

ResponseShape = Literal["full", "items"]


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
            ("--drop-rate", self.drop_rate),
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
        """Declared flows make every other flow id unknown (``1430-400``)."""
        return bool(self.flows)
