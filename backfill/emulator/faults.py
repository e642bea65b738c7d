"""The seeded fault model: which request is delayed, rate limited, failed or dropped."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import EmulatorConfig

__all__ = ["CLEAN", "FaultModel", "Verdict", "rng_from_state", "rng_state"]

INJECTED_STATUSES = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the fault model decided for one request, all of it drawn when the request arrived."""

    delay: float = 0.0
    rate_limited: bool = False
    injected_status: int | None = None
    # Only meaningful for a request that creates a run (POST /runs, a re-trigger): create it,
    # then hang up -- or, with --post-error-codes, answer this status instead of the run.
    drop: bool = False
    drop_status: int | None = None


CLEAN = Verdict()


def seeded(seed: int, stream: str) -> random.Random:
    """One independent random stream per kind of draw.

    Separate streams keep outcomes stable when another fault is switched on: turning on
    latency must not change which requests get a 503 for the same seed and request sequence.
    String seeds are hashed with SHA-512 by ``random``, so they do not depend on
    ``PYTHONHASHSEED``.
    """
    return random.Random(f"backfill-emulator/{seed}/{stream}")


def rng_state(rng: random.Random) -> list[Any]:
    """A JSON-friendly copy of a generator's state: a restarted emulator continues the stream."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_from_state(rng: random.Random, state: object) -> None:
    """Restore what :func:`rng_state` saved; anything malformed leaves ``rng`` as it was."""
    if isinstance(state, list) and len(state) == 3 and isinstance(state[1], list):
        rng.setstate((state[0], tuple(state[1]), state[2]))


class FaultModel:
    """Decides, at each Flow Service request's arrival, how that request will misbehave.

    Every draw happens synchronously on arrival, before any awaiting, so the same seed and
    the same sequence of requests give the same outcomes even with latency and jitter on.
    The model also counts arrivals over a sliding second: that feeds both the rate limit and
    the ``max_requests_per_second`` statistic, so it runs even when no limit is set. A request
    arrived when it reached the emulator's socket: ``lag`` (how long before its handler ran
    it can have arrived, see ``arrival.py``) is taken off, so the emulator's own lateness in
    reading requests is not counted as the client sending them together. The count as the
    handlers ran is kept too (``max_requests_per_second_as_read``), with the largest lag.
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rate_limit = config.rate_limit
        self._latency = config.latency
        self._jitter = config.jitter
        self._error_rate = config.error_rate
        self._list_error_rate = config.list_error_rate
        self._drop_rate = config.drop_rate
        self._post_codes = config.post_error_codes
        self._latency_rng = seeded(config.seed, "latency")
        self._error_rng = seeded(config.seed, "errors")
        self._list_error_rng = seeded(config.seed, "list-errors")
        self._drop_rng = seeded(config.seed, "drops")
        # Arrival times inside the current sliding second, oldest first: the earliest each
        # request can have reached the socket, and when its handler ran.
        self._arrivals: deque[float] = deque()
        self._reads: deque[float] = deque()
        self._quiet = not (
            config.latency
            or config.jitter
            or config.error_rate
            or config.list_error_rate
            or config.drop_rate
        )
        self.max_requests_per_second = 0
        self.max_requests_per_second_as_read = 0
        self.max_read_lag = 0.0
        self.rate_limited = 0
        self.injected_errors = 0

    def admit(self, *, creates_run: bool = False, lists: bool = False, lag: float = 0.0) -> Verdict:
        """Count one Flow Service request arriving now and decide its faults.

        ``lists``: the request is a listing (GET /runs), which ``--list-error-rate`` also fails.
        ``lag``: how long before now the request can have reached the socket (at most).
        """
        now = self._clock()
        arrivals = self._arrivals
        # The window is (now - 1, now]: an arrival exactly one second ago has left it. An
        # earlier one counts if it certainly arrived within it: its earliest is in it.
        cutoff = now - 1.0
        while arrivals and arrivals[0] <= cutoff:
            arrivals.popleft()
        # Every arrival counts, rejected ones included: a gateway meters what reaches it,
        # so a client that keeps hammering through 429s stays limited.
        limited = self._rate_limit is not None and len(arrivals) >= self._rate_limit
        arrivals.append(now - lag)
        self.max_requests_per_second = max(self.max_requests_per_second, len(arrivals))
        reads = self._reads
        while reads and reads[0] <= cutoff:
            reads.popleft()
        reads.append(now)
        self.max_requests_per_second_as_read = max(self.max_requests_per_second_as_read, len(reads))
        self.max_read_lag = max(self.max_read_lag, lag)
        if self._quiet and not limited:
            return CLEAN
        delay = self._draw_delay()
        if limited:
            self.rate_limited += 1
            return Verdict(delay=delay, rate_limited=True)
        injected = None
        # A proxy in front of the service answers a POST with its own codes (520, 408, ...).
        post_codes = self._post_codes if creates_run else ()
        if self._error_rate and self._error_rng.random() < self._error_rate:
            injected = self._error_rng.choice(post_codes or INJECTED_STATUSES)
            self.injected_errors += 1
        elif (
            lists
            and self._list_error_rate
            and self._list_error_rng.random() < self._list_error_rate
        ):
            injected = self._list_error_rng.choice(INJECTED_STATUSES)
            self.injected_errors += 1
        drop = bool(
            creates_run
            and injected is None
            and self._drop_rate
            and self._drop_rng.random() < self._drop_rate
        )
        drop_status = self._drop_rng.choice(post_codes) if drop and post_codes else None
        return Verdict(delay=delay, injected_status=injected, drop=drop, drop_status=drop_status)

    def draw_delay(self) -> float:
        """Latency for a request that is not metered (IMS): same distribution, same stream."""
        return self._draw_delay()

    def _draw_delay(self) -> float:
        if not self._jitter:
            return self._latency
        return max(0.0, self._latency + self._latency_rng.uniform(-self._jitter, self._jitter))

    def snapshot(self) -> dict[str, Any]:
        """The generators' states, saved with ``--state`` so a restart continues the streams."""
        return {
            "latency": rng_state(self._latency_rng),
            "errors": rng_state(self._error_rng),
            "drops": rng_state(self._drop_rng),
            "list-errors": rng_state(self._list_error_rng),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue the streams saved by :meth:`snapshot`."""
        rng_from_state(self._latency_rng, snapshot.get("latency"))
        rng_from_state(self._error_rng, snapshot.get("errors"))
        rng_from_state(self._drop_rng, snapshot.get("drops"))
        rng_from_state(self._list_error_rng, snapshot.get("list-errors"))

    def reset(self) -> None:
        """Forget the counters and the sliding second (the streams go on)."""
        self._arrivals.clear()
        self._reads.clear()
        self.max_requests_per_second = 0
        self.max_requests_per_second_as_read = 0
        self.max_read_lag = 0.0
        self.rate_limited = 0
        self.injected_errors = 0
