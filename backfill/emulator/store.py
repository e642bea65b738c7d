"""Runs and flows: creation rules, the lazy lifecycle, rendering, statistics and persistence."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from .config import EmulatorConfig, FlowKind
from .errors import FlowServiceError
from .faults import rng_from_state, rng_state, seeded

__all__ = [
    "Flow",
    "Identity",
    "Run",
    "RunRequest",
    "RunStatus",
    "Store",
    "epoch_ms",
    "parse_run_body",
    "read_state_file",
    "write_state_file",
]

STATE_FORMAT = 1
# Ten digits of seconds reach the year 2286: anything longer is milliseconds or a typo such
# as the tutorial's ``16515859567`` (year 2493), and deserves a clear 400 rather than a run.
MAX_UNIX_SECONDS = 10**10
_SANDBOX_NAMESPACE = uuid.UUID("6f1d2a47-0c55-4d0e-9a43-5e4b0b6f7a10")
# Real flow spec ids of a table-based (CRM) and a file-based (cloud storage) batch source.
_FLOW_SPECS = {
    FlowKind.TABLE: "14518937-270c-4525-bdec-c2ba7cce3860",
    FlowKind.FILE: "9753525b-82c7-4dce-8a9b-5ccfce2b9876",
}
_UNDECIDED_SPEC = "00000000-0000-4000-8000-000000000000"
# What failed runs report, drawn per attempt; shaped like the connector errors of the UI.
_RUN_ERRORS = (
    ("CONNECTOR-1001-500", "Something went wrong while reading data from the source."),
    ("CONNECTOR-2900-400", "The source connection could not be reached: timeout."),
    ("CONNECTOR-2002-400", "The delta column holds values that cannot be compared."),
    ("INGEST-1206-500", "Batch ingestion failed: the batch was not promoted."),
)


def epoch_ms(seconds: float) -> int:
    """Epoch milliseconds, rounded: float noise must never move a timestamp by 1 ms."""
    return round(seconds * 1000)


class RunStatus(StrEnum):
    """The run statuses public material shows, as the API spells them."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "inProgress"
    SUCCESS = "success"
    FAILED = "failed"


_ACTIVE = (RunStatus.SCHEDULED, RunStatus.IN_PROGRESS)
# A run that ingests, has ingested or will: two of these for one window is a duplicate.
_LIVE = (RunStatus.SCHEDULED, RunStatus.IN_PROGRESS, RunStatus.SUCCESS)

_PARTIAL = "partial"  # a success with failed records: its own words in the spec's vocabulary

# The words a status is rendered with, per vocabulary; the first unless --status-synonyms, which
# draws one per attempt. "camel": the words of public material (monitor.md shows a run that
# ingested with record errors as "success" with failedRecordCount > 0), plus the camel-case
# forms of the spec's words and both spellings of "cancelled". "upper": the spec's StatusDTO
# enum (static/swagger-specs/flow-service.yaml, AdobeDocs/experience-platform-apis).
STATUS_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "camel": {
        RunStatus.SCHEDULED: ("scheduled", "queued", "pending"),
        RunStatus.IN_PROGRESS: ("inProgress", "running"),
        RunStatus.SUCCESS: ("success", "completed"),
        _PARTIAL: ("success", "partialSuccess"),
        RunStatus.FAILED: ("failed", "partialFailure", "cancelled", "canceled"),
    },
    "upper": {
        RunStatus.SCHEDULED: ("SCHEDULED", "QUEUED"),
        RunStatus.IN_PROGRESS: ("IN_PROGRESS",),
        RunStatus.SUCCESS: ("SUCCESS", "COMPLETED"),
        _PARTIAL: ("PARTIAL_SUCCESS",),
        RunStatus.FAILED: ("FAILED", "PARTIAL_FAILURE"),
    },
}
# A stuck run (--stuck-rate) never ends: it stays in progress this long (not inf: JSON state).
_FOREVER = 1e9


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request, as the run object reports it (from the gateway headers)."""

    org: str
    sandbox: str
    client: str
    sandbox_id: str
    user: str

    @staticmethod
    @lru_cache(maxsize=256)
    def of(org: str, sandbox: str, client: str) -> Identity:
        """The identity for these headers; cached, so 100k runs share a handful of objects."""
        sandbox_id = str(uuid.uuid5(_SANDBOX_NAMESPACE, f"{org}/{sandbox}"))
        return Identity(org, sandbox, client, sandbox_id, f"{client}@techacct.adobe.com")


DEFAULT_IDENTITY = Identity.of("EMULATOR@AdobeOrg", "prod", "backfill-emulator")


@dataclass(slots=True)
class Fate:
    """How one attempt of a run ends, drawn from the seeded stream when it is scheduled."""

    failed: bool
    records: int
    files: int
    record_bytes: int
    error: tuple[str, str]
    empty: bool = False  # succeeds having ingested nothing (--empty-rate)
    failed_records: int = 0  # succeeds with this many records failed (--partial-rate)
    stuck: bool = False  # never finishes (--stuck-rate)
    word: int = 0  # which synonym its status words use (--status-synonyms)


@dataclass(slots=True, eq=False)
class Run:
    """One flow run. Its status is not stored: it follows from the clock (see :meth:`status`)."""

    id: str
    flow_id: str
    window_start: int
    window_end: int
    params: dict[str, Any]
    delta_column: str | None
    created_at: float  # epoch seconds
    creator: Identity
    scheduled_for: float
    running_for: float
    seq: int
    updater: Identity = DEFAULT_IDENTITY
    retrigger_of: str | None = None  # the failed run whose re-trigger created this one
    attempts: int = 0
    started_at: float = 0.0  # this attempt was scheduled (creation or re-trigger)
    starts_at: float = 0.0  # it is inProgress from here
    ends_at: float = 0.0  # and finished from here
    etag: str = ""
    failed: bool = False
    input_records: int = 0
    output_records: int = 0
    input_files: int = 0
    input_bytes: int = 0
    error: tuple[str, str] = ("", "")
    stuck: bool = False
    word: int = 0
    created_ms: int = field(init=False)
    key: tuple[int, str] = field(init=False)  # the order of every listing: (createdAt, id)

    def __post_init__(self) -> None:
        self.created_ms = epoch_ms(self.created_at)
        self.key = (self.created_ms, self.id)

    def status(self, now: float) -> RunStatus:
        """The status at ``now`` (epoch seconds)."""
        if now < self.starts_at:
            return RunStatus.SCHEDULED
        if now < self.ends_at:
            return RunStatus.IN_PROGRESS
        return RunStatus.FAILED if self.failed else RunStatus.SUCCESS

    def updated_ms(self, now: float) -> int:
        """``updatedAt``: the last transition that already happened."""
        if now < self.starts_at:
            return epoch_ms(self.started_at)
        if now < self.ends_at:
            return epoch_ms(self.starts_at)
        return epoch_ms(self.ends_at)

    def start_attempt(self, now: float, fate: Fate, etag: str, who: Identity) -> None:
        """Schedule a new attempt at ``now`` that will end as ``fate`` says."""
        self.attempts += 1
        self.updater = who
        self.started_at = now
        self.starts_at = now + self.scheduled_for
        self.stuck = fate.stuck
        self.ends_at = self.starts_at + (_FOREVER if fate.stuck else self.running_for)
        self.etag = etag
        self.failed = fate.failed
        records = 0 if fate.empty and not fate.failed else fate.records
        self.input_records = records
        self.output_records = 0 if fate.failed else records - fate.failed_records
        self.input_files = 0 if records == 0 else fate.files
        self.input_bytes = records * fate.record_bytes
        self.error = fate.error
        self.word = fate.word

    @property
    def partial(self) -> bool:
        """Succeeded, with some records failed."""
        return not self.failed and self.output_records < self.input_records

    def outcome(self, now: float) -> str:
        """How the emulator's record judges the run: success, empty, partial, failed, or its
        status while it is not finished."""
        status = self.status(now)
        if status is RunStatus.SUCCESS:
            if self.partial:
                return "partial"
            return "empty" if self.output_records == 0 else "success"
        return status.value


@dataclass(slots=True, eq=False)
class Flow:
    """A dataflow the emulator knows: declared with ``--flow`` or registered by its first run."""

    id: str
    kind: FlowKind | None
    declared: bool
    created_at: float
    delta_column: str | None = None
    owner: Identity | None = None
    last_run: Run | None = None
    frequency: str = "once"  # scheduleParams.frequency


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A validated ``POST /runs`` body."""

    flow_id: str
    window_start: int
    window_end: int
    delta_column: str | None
    params: dict[str, Any]


def parse_run_body(raw: bytes) -> RunRequest:
    """Validate a ``POST /runs`` body, raising the Flow Service error a client would get."""
    if not raw.strip():
        raise FlowServiceError(1405, "The request body is empty: send a JSON object with flowId.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FlowServiceError(1400, f"The request body is not valid JSON: {exc}") from None
    if body is None:
        raise FlowServiceError(1405, "The request body is empty: send a JSON object with flowId.")
    if not isinstance(body, dict):
        raise FlowServiceError(1400, "The request body must be a JSON object.")
    flow_id = body.get("flowId")
    if flow_id is None or (isinstance(flow_id, str) and not flow_id.strip()):
        raise FlowServiceError(1446, "Flow id cannot be null or empty.")
    if not isinstance(flow_id, str):
        raise FlowServiceError(1400, "flowId must be a string.")
    params = body.get("params")
    if not isinstance(params, dict):
        raise FlowServiceError(
            1400, "params is required: {windowStartTime, windowEndTime} in unix seconds."
        )
    start, start_text = _unix_seconds(params, "windowStartTime")
    end, end_text = _unix_seconds(params, "windowEndTime")
    if start >= end:
        raise FlowServiceError(
            1400,
            f"params.windowStartTime ({start}) must be before params.windowEndTime ({end}).",
        )
    echoed = dict(params)
    echoed["windowStartTime"] = start_text
    echoed["windowEndTime"] = end_text
    if params.get("startTime") is not None:
        echoed["startTime"] = _unix_seconds(params, "startTime")[1]
    delta = params.get("deltaColumn")
    delta_name: str | None = None
    if delta is None:
        echoed.pop("deltaColumn", None)
    else:
        name = delta.get("name") if isinstance(delta, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise FlowServiceError(
                1400, 'params.deltaColumn must be an object with a non-empty "name".'
            )
        delta_name = name
    return RunRequest(flow_id, start, end, delta_name, echoed)


def _unix_seconds(params: dict[str, Any], name: str) -> tuple[int, str]:
    """A window time: a string of digits (as the tutorial sends) or an integer (as the spec)."""
    value = params.get(name)
    if value is None:
        raise FlowServiceError(1400, f"params.{name} is required: unix time in seconds.")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        seconds, text = int(value), value
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        seconds, text = value, str(value)
    else:
        raise FlowServiceError(
            1400, f"params.{name} must be unix time in seconds (digits), got {value!r}."
        )
    if seconds >= MAX_UNIX_SECONDS:
        raise FlowServiceError(
            1400,
            f"params.{name} {value!r} is not unix time in seconds: {len(str(seconds))} digits "
            "is milliseconds or a typo (seconds have 10 digits until 2286).",
        )
    return seconds, text


class Store:
    """All runs and flows, indexed by id and by flow in listing order.

    Time is epoch seconds from ``now``: the app derives it from the injectable monotonic
    clock, so tests move the lifecycle forward without sleeping.
    """

    def __init__(self, config: EmulatorConfig, now: Callable[[], float]) -> None:
        self._config = config
        self._now = now
        self._ids = seeded(config.seed, "ids")
        self._fate_salt = f"backfill-emulator/{config.seed}/fates/".encode()
        # Attempts so far per window, across all of its runs: the key of the next fate.
        self._window_attempts: dict[tuple[str, int, int], int] = {}
        self.runs: dict[str, Run] = {}
        self._all: list[Run] = []  # sorted by Run.key
        self._by_flow: dict[str, list[Run]] = {}  # each sorted by Run.key
        self.flows: dict[str, Flow] = {}
        # Per flow, a heap of the end times of attempts that were still active when last seen.
        self._active: dict[str, list[float]] = {}
        self.max_active: dict[str, int] = {}
        self._seq = 0
        self._declare(config, now())

    def _declare(self, config: EmulatorConfig, now: float) -> None:
        schedules = {flow_id: (freq, column) for flow_id, freq, column in config.flow_schedules}
        for flow_id, kind in config.flows:
            known = self.flows.get(flow_id)
            if known is None:
                known = self.flows[flow_id] = Flow(flow_id, kind, declared=True, created_at=now)
            else:
                # The command line wins over a saved state: it is what the user asked for now.
                known.kind, known.declared = kind, True
                if kind is FlowKind.FILE:
                    known.delta_column = None
            frequency, column = schedules.get(flow_id, ("once", None))
            known.frequency = frequency
            if column is not None:
                # A table flow may carry its delta column from creation, in its Copy
                # transformation (help/sources/tutorials/api/collect/database-nosql.md).
                known.delta_column = column

    # -- reading ---------------------------------------------------------------------------

    def all_runs(self) -> list[Run]:
        """Every run in listing order (createdAt, id). Callers must not modify it."""
        return self._all

    def runs_of_flow(self, flow_id: str) -> list[Run]:
        """A flow's runs in listing order. Callers must not modify it."""
        return self._by_flow.get(flow_id, [])

    def get_run(self, run_id: str) -> Run:
        """The run, or the 404 a client gets for an unknown id."""
        run = self.runs.get(run_id)
        if run is None:
            raise FlowServiceError(1431, f"Flow run {run_id} was not found.", status=404)
        return run

    def _check_visible(self, flow_id: str) -> None:
        if flow_id in self._config.hidden_flows:
            # A flow hidden by access labels: FLOW-2120-403 (help/sources/tutorials/api/
            # labels.md; 2120-403 in help/sources/errors/flow-service-errors.md).
            raise FlowServiceError(
                2120,
                "You do not have sufficient permissions to perform the operation. Please "
                "contact your administrator to resolve permissions and try again.",
                status=403,
            )

    def get_flow(self, flow_id: str) -> Flow:
        """The flow; with no declared flows, an unused id is a flow whose kind is undecided."""
        self._check_visible(flow_id)
        flow = self.flows.get(flow_id)
        if flow is not None:
            return flow
        if self._config.strict_flows:
            # FLOW-1439-404 (help/sources/tutorials/api/labels.md; 1439 in
            # help/sources/errors/flow-service-errors.md).
            raise FlowServiceError(
                1439,
                f"The requested flows resource {flow_id} is not found. Verify the resource ID "
                "before trying again.",
                status=404,
            )
        return Flow(flow_id, None, declared=False, created_at=self._now())

    # -- writing ---------------------------------------------------------------------------

    def create_run(self, request: RunRequest, who: Identity) -> Run:
        """Apply the flow's rules to a validated request and schedule the run."""
        self._check_visible(request.flow_id)
        flow = self.flows.get(request.flow_id)

        if flow is None and self._config.strict_flows:
            raise FlowServiceError(1430, f"Flow {request.flow_id} was not found.")
        if flow is not None and flow.frequency != "once":
            # On-demand runs need a flow "scheduled for one-time ingestion"
            # (help/sources/tutorials/api/on-demand-ingestion.md). The code is not
            # documented: the emulator's own (see errors.py).
            raise FlowServiceError(
                1462,
                f"Flow {request.flow_id} is scheduled every {flow.frequency}: on-demand runs "
                "need a flow scheduled for one-time ingestion (frequency once).",
            )
        if self._config.require_start_time and "startTime" not in request.params:
            # Required by the table-based run spec (help/sources/tutorials/api/collect/
            # database-nosql.md); sent by every request of on-demand-ingestion.md.
            raise FlowServiceError(
                1400, "params.startTime is required: unix time in seconds, e.g. now."
            )
        delta = request.delta_column
        kind = flow.kind if flow is not None else None
        if kind is None:
            kind = FlowKind.TABLE if delta is not None else FlowKind.FILE
        if kind is FlowKind.FILE and delta is not None:
            raise FlowServiceError(
                1452,
                f"Flow {request.flow_id} reads files: params.deltaColumn is only for "
                "table-based sources and must not be sent.",
            )
        known_delta = flow.delta_column if flow is not None else None
        if kind is FlowKind.TABLE:
            if known_delta is None and delta is None:
                raise FlowServiceError(
                    1450,
                    f"Flow {request.flow_id} reads a table: its first run must carry "
                    "params.deltaColumn.name.",
                )
            if known_delta is not None and delta is not None and delta != known_delta:
                raise FlowServiceError(
                    1451,
                    f"Flow {request.flow_id} already uses deltaColumn {known_delta!r} (its Copy "
                    f"transformation is the source of truth); it cannot be changed to {delta!r}.",
                )
        now = self._now()
        self._check_capacity(request.flow_id, now)
        if flow is None:
            flow = Flow(request.flow_id, kind, declared=False, created_at=now, owner=who)
            self.flows[flow.id] = flow
        if kind is FlowKind.TABLE and flow.delta_column is None:
            flow.delta_column = delta
        if flow.owner is None:
            flow.owner = who
        self._seq += 1
        run = Run(
            id=self._new_id(),
            flow_id=request.flow_id,
            window_start=request.window_start,
            window_end=request.window_end,
            params=request.params,
            delta_column=delta,
            created_at=now,
            creator=who,
            scheduled_for=self._config.scheduled_for,
            running_for=self._config.running_for,
            seq=self._seq,
        )
        self._start(run, now, who)
        self._insert(run)
        flow.last_run = run
        return run

    def retrigger(self, run_id: str, who: Identity) -> Run:
        """Run a failed run's window again: as a new run (the documented API), or the same one.

        help/sources/tutorials/api/retry-flows.md (AdobeDocs/experience-platform.en): "A
        successful response returns a newly created flow run ID" -- it re-triggers
        4fb0418e-... and gets 3fb0418e-...; the old run stays failed (and may be re-triggered
        again: nothing documented forbids it). ``--retrigger-same-run`` schedules the same id
        again instead, as earlier versions of this emulator did.
        """
        run = self.get_run(run_id)
        now = self._now()
        status = run.status(now)
        zero_record_success = status is RunStatus.SUCCESS and run.output_records == 0
        if status is not RunStatus.FAILED and not zero_record_success:
            raise FlowServiceError(
                1460,
                f"Flow run {run_id} is {status.value}: only a failed run, or a successful one "
                "that ingested no records, can be re-triggered.",
            )
        self._check_capacity(run.flow_id, now)
        if self._config.retrigger_same_run:
            self._start(run, now, who)
            return run
        # The same window and flow; the delta column is the flow's by now (its Copy
        # transformation holds it), so the new run does not carry one of its own.
        params = {k: v for k, v in run.params.items() if k != "deltaColumn"}
        self._seq += 1
        new = Run(
            id=self._new_id(),
            flow_id=run.flow_id,
            window_start=run.window_start,
            window_end=run.window_end,
            params=params,
            delta_column=None,
            created_at=now,
            creator=who,
            scheduled_for=self._config.scheduled_for,
            running_for=self._config.running_for,
            seq=self._seq,
            retrigger_of=run.id,
        )
        self._start(new, now, who)
        self._insert(new)
        flow = self.flows.get(run.flow_id)
        if flow is not None:
            flow.last_run = new
        return new

    def _check_capacity(self, flow_id: str, now: float) -> None:
        cap = self._config.max_active_runs
        if cap is not None and self._active_count(flow_id, now) >= cap:
            raise FlowServiceError(
                1429,
                f"Flow {flow_id} already has {cap} runs scheduled or in progress "
                "(--max-active-runs); retry when one finishes.",
                status=429,
                retry_after=True,
            )

    def _active_count(self, flow_id: str, now: float) -> int:
        heap = self._active.get(flow_id)
        if not heap:
            return 0
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return len(heap)

    def _start(self, run: Run, now: float, who: Identity) -> None:
        window = (run.flow_id, run.window_start, run.window_end)
        attempt = self._window_attempts.get(window, 0) + 1
        self._window_attempts[window] = attempt
        run.start_attempt(now, self._fate(window, attempt), self._new_etag(now), who)
        self._track_active(run, now)

    def _track_active(self, run: Run, now: float) -> None:
        # An attempt is active over [started_at, ends_at); all attempts are equally long, so
        # the most active runs at one instant is always reached at the start of an attempt.
        if run.ends_at <= now:
            return
        count = self._active_count(run.flow_id, now) + 1
        heapq.heappush(self._active.setdefault(run.flow_id, []), run.ends_at)
        if count > self.max_active.get(run.flow_id, 0):
            self.max_active[run.flow_id] = count

    def _insert(self, run: Run) -> None:
        self.runs[run.id] = run
        _insort(self._all, run)
        _insort(self._by_flow.setdefault(run.flow_id, []), run)

    def _new_id(self) -> str:
        while True:
            run_id = uuid4_text(self._ids.getrandbits(128))
            if run_id not in self.runs:  # only a restored state could ever collide
                return run_id

    def _new_etag(self, now: float) -> str:
        # Shaped like the tutorial's ``"1100c53e-0000-0200-0000-627138980000"``, whose tail is
        # the epoch seconds in hex.
        return f'"{self._ids.getrandbits(32):08x}-0000-0200-0000-{int(now):08x}0000"'

    def _fate(self, window: tuple[str, int, int], attempt: int) -> Fate:
        """How attempt ``attempt`` of a window ends: a pure function of seed, window, attempt.

        Not a draw from a shared stream: with concurrent clients the order of requests varies
        from run to run, and a window's fate must not depend on which request came first.
        """
        flow_id, start, end = window
        key = self._fate_salt + f"{flow_id}/{start}/{end}/{attempt}".encode()
        digest = hashlib.blake2b(key, digest_size=40).digest()
        draws = [int.from_bytes(digest[i : i + 8], "big") / 2.0**64 for i in range(0, 40, 8)]
        failed = draws[0] < self._config.fail_rate
        records = 500 + int(draws[1] * 49_501)
        files = 1 + int(draws[2] * 12)
        record_bytes = 180 + int(draws[3] * 1_021)
        error = _RUN_ERRORS[int(draws[4] * len(_RUN_ERRORS))]
        # The outcome's own draws, from a second digest: the first one's draws (and so every
        # fate of an existing seed) stay what they were before these flags existed.
        more = hashlib.blake2b(key + b"/outcome", digest_size=40).digest()
        extra = [int.from_bytes(more[i : i + 8], "big") / 2.0**64 for i in range(0, 40, 8)]
        config = self._config
        empty = not failed and extra[0] < config.empty_rate
        partial = not failed and not empty and extra[1] < config.partial_rate
        failed_records = 1 + int(extra[2] * records / 10) if partial else 0
        stuck = extra[3] < config.stuck_rate
        word = int(extra[4] * 2**16) if config.status_synonyms else 0
        return Fate(failed, records, files, record_bytes, error, empty, failed_records, stuck, word)

    def reset(self) -> None:
        """Forget every run and every flow that was not declared (``POST /__emulator/reset``)."""
        self.runs.clear()
        self._all.clear()
        self._by_flow.clear()
        self._active.clear()
        self.max_active.clear()
        self.flows.clear()
        self._declare(self._config, self._now())

    # -- rendering -------------------------------------------------------------------------

    def render_run(self, run: Run, now: float, *, as_created: bool = False) -> dict[str, Any]:
        """The run object as Flow Service answers it; ``as_created``: as ``POST /runs`` does."""
        status = RunStatus.SCHEDULED if as_created else run.status(now)
        creator, updater = run.creator, run.updater
        metrics: dict[str, Any]
        if status is RunStatus.SCHEDULED:
            metrics = {"statusSummary": {"status": self.status_word(run, status)}}
            activities: list[dict[str, Any]] = []
            updated_ms = epoch_ms(run.started_at)
        else:
            metrics, activity = self._progress(run, status, self.status_word(run, status))
            activities = [activity]
            updated_ms = run.updated_ms(now)
        body: dict[str, Any] = {
            "id": run.id,
            "createdAt": run.created_ms,
            "updatedAt": updated_ms,
            "createdBy": creator.user,
            "updatedBy": updater.user,
            "createdClient": creator.client,
            "updatedClient": updater.client,
            "sandboxId": creator.sandbox_id,
            "sandboxName": creator.sandbox,
            "imsOrgId": creator.org,
            "flowId": run.flow_id,
            "params": run.params,
            "etag": run.etag,
            "metrics": metrics,
            "activities": activities,
        }
        if self._config.runs_without_params:
            # The run of help/sources/tutorials/api/monitor.md, and the spec's run object
            # (static/swagger-specs/flow-service.yaml, AdobeDocs/experience-platform-apis), have
            # no params: the window is only in the activities' extensions (none while scheduled).
            del body["params"]
        return body

    def status_word(self, run: Run, status: RunStatus) -> str:
        """The word this run's status is rendered with, in the configured vocabulary."""
        if run.stuck and status is RunStatus.IN_PROGRESS:
            return self._config.stuck_status
        key: str = _PARTIAL if status is RunStatus.SUCCESS and run.partial else status
        words = STATUS_WORDS[self._config.status_vocabulary][key]
        return words[run.word % len(words)]

    @staticmethod
    def _progress(run: Run, status: RunStatus, word: str) -> tuple[dict[str, Any], dict[str, Any]]:
        started_ms = epoch_ms(run.starts_at)
        if status is RunStatus.IN_PROGRESS:
            # Counts are unknown (-1) until the run ends, as Flow Service reports them.
            duration: dict[str, int] = {"startedAtUTC": started_ms}
            records = {
                "inputRecordCount": -1,
                "outputRecordCount": -1,
                "failedRecordCount": -1,
                "skippedRecordCount": -1,
            }
            files = {
                "inputFileCount": -1,
                "outputFileCount": -1,
                "failedFileCount": -1,
                "skippedFileCount": -1,
            }
            sizes = {"inputBytes": -1, "outputBytes": -1}
            summary: dict[str, Any] = {"status": word}
        else:
            failed = status is RunStatus.FAILED
            duration = {"startedAtUTC": started_ms, "completedAtUTC": epoch_ms(run.ends_at)}
            records = {
                "inputRecordCount": run.input_records,
                "outputRecordCount": run.output_records,
                "failedRecordCount": run.input_records - run.output_records,
                "skippedRecordCount": 0,
            }
            files = {
                "inputFileCount": run.input_files,
                "outputFileCount": 0 if failed else run.input_files,
                "failedFileCount": run.input_files if failed else 0,
                "skippedFileCount": 0,
            }
            sizes = {
                "inputBytes": run.input_bytes,
                # Parquet written to the data lake is smaller than what was read.
                "outputBytes": 0 if failed else run.input_bytes * 3 // 5,
            }
            summary = {"status": word}
            if failed:
                code, message = run.error
                summary["errors"] = [{"code": code, "message": message}]
            elif run.partial:
                # As in monitor.md: a success whose failed records are listed as errors.
                failures = run.input_records - run.output_records
                summary["errors"] = [
                    {
                        "code": "CONNECTOR-2003-400",
                        "message": f"{failures} records failed validation and were skipped.",
                    }
                ]
        metrics = {
            "statusSummary": summary,
            "durationSummary": duration,
            "recordSummary": records,
            "fileSummary": files,
            "sizeSummary": sizes,
        }
        # As monitor.md shows the copy activity: its window in milliseconds, in extensions.
        extensions = {"windowStart": run.window_start * 1000, "windowEnd": run.window_end * 1000}
        activity = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{run.id}/{run.attempts}")),
            "name": "Copy",
            "updatedAtUTC": duration.get("completedAtUTC", started_ms),
            "durationSummary": {**duration, "extensions": extensions},
            "statusSummary": dict(summary),
            "recordSummary": dict(records),
            "fileSummary": dict(files),
            "sizeSummary": dict(sizes),
        }
        return metrics, activity

    def render_flow(self, flow: Flow, now: float, who: Identity) -> dict[str, Any]:
        """The flow object of ``GET /flows/{id}``; its Copy transformation holds deltaColumn."""
        owner = flow.owner or who
        created_ms = epoch_ms(flow.created_at)
        copy_params: dict[str, Any] = {}
        if flow.delta_column is not None:
            copy_params["deltaColumn"] = {"name": flow.delta_column}
        body: dict[str, Any] = {
            "id": flow.id,
            "name": f"Emulated {flow.kind or 'batch'} flow {flow.id}",
            "description": "A one-time batch flow of the backfill emulator.",
            "flowSpec": {
                "id": _FLOW_SPECS[flow.kind] if flow.kind else _UNDECIDED_SPEC,
                "version": "1.0",
            },
            "state": "enabled",
            "createdAt": created_ms,
            "updatedAt": created_ms,
            "createdBy": owner.user,
            "updatedBy": owner.user,
            "createdClient": owner.client,
            "updatedClient": owner.client,
            "sandboxId": owner.sandbox_id,
            "sandboxName": owner.sandbox,
            "imsOrgId": owner.org,
            "sourceConnectionIds": [str(uuid.uuid5(uuid.NAMESPACE_OID, f"{flow.id}/source"))],
            "targetConnectionIds": [str(uuid.uuid5(uuid.NAMESPACE_OID, f"{flow.id}/target"))],
            # A one-time flow has no interval nor backfill (update-dataflows.md shows a
            # scheduled one: values as strings).
            "scheduleParams": {"startTime": str(int(flow.created_at)), "frequency": flow.frequency}
            | ({} if flow.frequency == "once" else {"interval": "1", "backfill": "true"}),
            "transformations": [{"name": "Copy", "params": copy_params}],
            "runs": f"/runs?property=flowId=={flow.id}",
        }
        last = flow.last_run
        if last is not None:
            status = last.status(now)
            details: dict[str, Any] = {"id": last.id, "state": status.value}
            if status is not RunStatus.SCHEDULED:
                details["startedAtUTC"] = epoch_ms(last.starts_at)
            if status not in _ACTIVE:
                details["completedAtUTC"] = epoch_ms(last.ends_at)
            body["lastRunDetails"] = details
        return body

    # -- statistics ------------------------------------------------------------------------

    def stats(self, now: float) -> dict[str, Any]:
        """The store's part of ``GET /__emulator/stats``: runs, windows, duplicates.

        Per window: its runs (ids in creation order), how many are live (scheduled, in progress
        or succeeded) and how many succeeded. A duplicate is a window with two live runs: a
        failed run re-triggered into a new one is not.
        """
        runs = []
        windows: dict[tuple[str, int, int], dict[str, Any]] = {}
        for run in sorted(self._all, key=_by_seq):
            status = run.status(now)
            runs.append(
                {
                    "id": run.id,
                    "flow_id": run.flow_id,
                    "window_start": run.window_start,
                    "window_end": run.window_end,
                    "status": status.value,
                    "attempts": run.attempts,
                    "delta_column": run.delta_column,
                    "created_at": run.created_at,
                    "retrigger_of": run.retrigger_of,
                    "start_time": run.params.get("startTime"),
                    "outcome": run.outcome(now),
                    "records": {
                        "input": run.input_records,
                        "output": run.output_records,
                        "failed": run.input_records - run.output_records,
                    },
                }
            )
            slot = (run.flow_id, run.window_start, run.window_end)
            window = windows.get(slot)
            if window is None:
                window = windows[slot] = {
                    "flow_id": run.flow_id,
                    "window_start": run.window_start,
                    "window_end": run.window_end,
                    "runs": 0,
                    "run_ids": [],
                    "live": 0,
                    "succeeded": 0,
                }
            window["runs"] += 1
            window["run_ids"].append(run.id)
            if status in _LIVE:
                window["live"] += 1
            if status is RunStatus.SUCCESS:
                window["succeeded"] += 1
        for flow_id in self._active:
            self._active_count(flow_id, now)
        return {
            "runs": runs,
            "windows": list(windows.values()),
            "duplicates": [w for w in windows.values() if w["live"] > 1],
            "max_active_runs": dict(self.max_active),
        }

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart, as JSON-friendly data."""
        return {
            "seq": self._seq,
            "rng": {"ids": rng_state(self._ids)},
            "flows": [_flow_to_json(flow) for flow in self.flows.values()],
            "runs": [_run_to_json(run) for run in sorted(self._all, key=_by_seq)],
            "max_active": dict(self.max_active),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load what :meth:`snapshot` saved; the command line's declared flows still win."""
        now = self._now()
        for item in snapshot.get("runs", []):
            run = _run_from_json(item)
            self._insert(run)
            self._track_active(run, now)
        for item in snapshot.get("flows", []):
            flow = _flow_from_json(item, self.runs)
            self.flows[flow.id] = flow
        self._declare(self._config, now)
        for flow_id, count in snapshot.get("max_active", {}).items():
            self.max_active[flow_id] = max(int(count), self.max_active.get(flow_id, 0))
        self._seq = max(int(snapshot.get("seq", 0)), len(self.runs))
        rng = snapshot.get("rng", {})
        rng_from_state(self._ids, rng.get("ids"))
        for run in self.runs.values():
            window = (run.flow_id, run.window_start, run.window_end)
            self._window_attempts[window] = self._window_attempts.get(window, 0) + run.attempts


def uuid4_text(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))``, without building a UUID on the hot path."""
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _insort(runs: list[Run], run: Run) -> None:
    # New runs almost always sort last (the clock is monotonic): append is the fast path.
    if not runs or runs[-1].key <= run.key:
        runs.append(run)
    else:
        bisect.insort(runs, run, key=_by_key)


def _by_key(run: Run) -> tuple[int, str]:
    return run.key


def _by_seq(run: Run) -> int:
    return run.seq


def _identity_to_json(who: Identity) -> list[str]:
    return [who.org, who.sandbox, who.client]


def _identity_from_json(data: object) -> Identity:
    if isinstance(data, list) and len(data) == 3 and all(isinstance(x, str) for x in data):
        return Identity.of(data[0], data[1], data[2])
    return DEFAULT_IDENTITY


def _run_to_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "flow_id": run.flow_id,
        "window_start": run.window_start,
        "window_end": run.window_end,
        "params": run.params,
        "delta_column": run.delta_column,
        "created_at": run.created_at,
        "creator": _identity_to_json(run.creator),
        "updater": _identity_to_json(run.updater),
        "scheduled_for": run.scheduled_for,
        "running_for": run.running_for,
        "seq": run.seq,
        "retrigger_of": run.retrigger_of,
        "attempts": run.attempts,
        "started_at": run.started_at,
        "starts_at": run.starts_at,
        "ends_at": run.ends_at,
        "etag": run.etag,
        "failed": run.failed,
        "input_records": run.input_records,
        "output_records": run.output_records,
        "input_files": run.input_files,
        "input_bytes": run.input_bytes,
        "error": list(run.error),
        "stuck": run.stuck,
        "word": run.word,
    }


def _run_from_json(item: dict[str, Any]) -> Run:
    run = Run(
        id=item["id"],
        flow_id=item["flow_id"],
        window_start=int(item["window_start"]),
        window_end=int(item["window_end"]),
        params=dict(item["params"]),
        delta_column=item.get("delta_column"),
        created_at=float(item["created_at"]),
        creator=_identity_from_json(item.get("creator")),
        scheduled_for=float(item["scheduled_for"]),
        running_for=float(item["running_for"]),
        seq=int(item["seq"]),
        retrigger_of=item.get("retrigger_of"),
    )
    run.updater = _identity_from_json(item.get("updater"))
    run.attempts = int(item["attempts"])
    run.started_at = float(item["started_at"])
    run.starts_at = float(item["starts_at"])
    run.ends_at = float(item["ends_at"])
    run.etag = item["etag"]
    run.failed = bool(item["failed"])
    run.input_records = int(item["input_records"])
    run.output_records = int(item["output_records"])
    run.input_files = int(item["input_files"])
    run.input_bytes = int(item["input_bytes"])
    code, message = item["error"]
    run.error = (str(code), str(message))
    run.stuck = bool(item.get("stuck", False))
    run.word = int(item.get("word", 0))
    return run


def _flow_to_json(flow: Flow) -> dict[str, Any]:
    return {
        "id": flow.id,
        "kind": flow.kind.value if flow.kind else None,
        "declared": flow.declared,
        "created_at": flow.created_at,
        "delta_column": flow.delta_column,
        "owner": _identity_to_json(flow.owner) if flow.owner else None,
        "last_run": flow.last_run.id if flow.last_run else None,
        "frequency": flow.frequency,
    }


def _flow_from_json(item: dict[str, Any], runs: dict[str, Run]) -> Flow:
    kind = item.get("kind")
    owner = item.get("owner")
    return Flow(
        id=item["id"],
        kind=FlowKind(kind) if kind else None,
        declared=bool(item.get("declared", False)),
        created_at=float(item["created_at"]),
        delta_column=item.get("delta_column"),
        owner=_identity_from_json(owner) if owner else None,
        last_run=runs.get(item.get("last_run") or ""),
        frequency=str(item.get("frequency") or "once"),
    )


def read_state_file(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when the file does not exist yet (a first start)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(
            f"--state {path}: not a state file written by the emulator ({exc})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ValueError(f"--state {path}: not a state file of format {STATE_FORMAT}")
    return data


def write_state_file(path: Path, sections: dict[str, Any]) -> None:
    """Write the state atomically: a crash leaves the old file or the new one, never half."""
    data = orjson.dumps({"format": STATE_FORMAT, **sections})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
