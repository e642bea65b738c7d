"""The engine's value objects: the options that shape it, its counters and how it ended.

Nothing here acts; every part of the engine reads these, and only the parts add to ``Stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backfill.choices import ExistingRuns, OnFailure, Order, RetryMode
from backfill.errors import BackfillError
from backfill.limits import Backoff

__all__ = ["EngineOptions", "ExistingRuns", "OnFailure", "Outcome", "RetryMode", "Stats"]


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
    # --retry-empty: a run that succeeded with 0 records is re-triggered within max_attempts.
    retry_empty: bool = False
    # --run-timeout: a run still not finished this long after its creation fails for good.
    run_timeout: float = 12 * 3600.0
    # Flows whose Copy transformation already has its delta column (the pre-flight saw it):
    # their runs never carry deltaColumn, so they need no first-run gate.
    flows_with_delta_column: frozenset[str] = frozenset()
    poll_interval: float = 10.0
    poll_max_interval: float = 120.0
    reconcile_delay: float = 2.0
    # "The service has no run" only after the listing was looked at for this long: a run
    # created just before a lost answer may show up in listings later.
    reconcile_settle: float = 60.0
    # Reconciliation lists runs created since the intent (in the service's time, measured
    # from its Date headers), minus this much for the clocks' resolution and drift.
    reconcile_margin: float = 900.0
    existing_runs: ExistingRuns = ExistingRuns.ADOPT
    page_size: int = 100
    backoff: Backoff = field(default_factory=Backoff)
    # A Retry-After longer than this ends the run (exit 75) rather than pause it.
    max_retry_after: float = 900.0
    seed: int | None = None

    @property
    def monitoring(self) -> bool:
        return self.wait or self.max_active_runs is not None

    @property
    def workers(self) -> int:
        """Windows in hand at once: ``concurrency`` requests in flight, and as many again
        whose intents are recorded while those are out, each waiting for a seat."""
        return 2 * self.concurrency


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
    duplicates_found: int = 0  # windows with more than one live run at the service
    adopted_existing: int = 0  # windows whose run the service already had
    left_in_doubt: int = 0  # windows not sent: runs exist whose window is unreadable
    foreign_runs: int = 0  # run ids answered or listed for a window they do not belong to
    polls: int = 0
    list_requests: int = 0
    reconciliations: int = 0


@dataclass(slots=True)
class Outcome:
    """How the engine's work ended."""

    stopped: str | None = None  # why it stopped early, if it did
    error: BackfillError | None = None
