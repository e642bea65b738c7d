"""The engine's value objects: the options that shape it, its counters and how it ended.

Nothing here acts; every part of the engine reads these, and only the parts add to ``Stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from backfill.errors import BackfillError
from backfill.limits import Backoff
from backfill.planner import Order

__all__ = ["EngineOptions", "OnFailure", "Outcome", "RetryMode", "Stats"]


class RetryMode(StrEnum):
    """How a failed run's window is run again."""

    RETRIGGER = "re-trigger"
    NEW_RUN = "new-run"


class OnFailure(StrEnum):
    """What a window failing for good does to the rest of the backfill."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Everything that shapes how the engine works; immutable, passed explicitly."""

    concurrency: int = 16
    order: Order = Order.OLDEST_FIRST
    wait: bool = False
    max_active_runs: int | None = None
    max_attempts: int = 3
    retry_mode: RetryMode = RetryMode.RETRIGGER
    on_failure: OnFailure = OnFailure.CONTINUE
    retry_failed: bool = False
    poll_interval: float = 10.0
    poll_max_interval: float = 120.0
    reconcile_delay: float = 2.0
    # Reconciliation lists runs created since the intent, minus this much for clock skew.
    reconcile_margin: float = 900.0
    page_size: int = 100
    backoff: Backoff = field(default_factory=Backoff)
    # A Retry-After longer than this ends the run (exit 75) rather than pause it.
    max_retry_after: float = 900.0
    seed: int | None = None

    @property
    def monitoring(self) -> bool:
        return self.wait or self.max_active_runs is not None


@dataclass(slots=True)
class Stats:
    """Counters for progress, the report and metrics; the engine only adds to them."""

    submitted: int = 0
    adopted: int = 0
    resent_after_doubt: int = 0
    in_doubt: int = 0
    retried_runs: int = 0
    request_retries: int = 0
    rate_limited: int = 0
    duplicates_found: int = 0
    polls: int = 0
    list_requests: int = 0
    reconciliations: int = 0


@dataclass(slots=True)
class Outcome:
    """How the engine's work ended."""

    stopped: str | None = None  # why it stopped early, if it did
    error: BackfillError | None = None
