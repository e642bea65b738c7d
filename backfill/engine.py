"""The engine: a dispatcher, a worker per request, reconciliation and the run monitor.

    dispatcher --(concurrency slot, flow ready)--> worker
    worker:     journal "submitting" (durable) -> rate permit -> POST /runs
                -> journal "submitted" (durable); answer lost / 5xx -> in doubt -> reconciler
    reconciler: one paginated listing per flow, adopts the run whose window matches, or
                sends the window back to the dispatcher when the service has none
    monitor:    one list call per flow and page of tracked run ids -> status records;
                failed runs go back to the dispatcher until their attempts run out

The dispatcher is the only task that waits for new work: it takes a concurrency slot, picks
the next ready window (retries first, then windows from the flows' streams, oldest or newest
first) and only then starts a worker, so at most ``concurrency`` windows are ever in hand and
memory stays flat however long the plan is. A worker takes its rate permit after its intent
is durable, right before it sends: the limiter hands out reserved slots (nobody polls), and
the permit-to-send delay stays short and even. A flow with a delta column sends its first run
alone; its other windows wait until that run is accepted.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import structlog

from .client import RunInfo, RunsApi
from .errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    BackfillError,
    PermanentError,
    RateLimited,
    RetryableError,
)
from .journal import Entry, Journal
from .limits import Backoff, Clock, RateLimiter, Sleep, monotonic, real_sleep
from .planner import FlowPlan, Order, Window
from .state import RunStatus, WindowState

__all__ = ["Engine", "EngineOptions", "OnFailure", "Outcome", "RetryMode", "Stats"]

log = structlog.get_logger("backfill.engine")


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


class _Gate(Enum):
    """May a flow's windows go? Only matters for flows with a delta column."""

    OPEN = "open"
    CHECKING = "checking"  # asking the service whether the flow has a run already
    NEEDS_FIRST = "needs-first"  # the next window picked carries the delta column
    FIRST_IN_FLIGHT = "first-in-flight"
    WAITING_FOR_SHARD = "waiting-for-shard"  # another shard sends the first run


class _Job:
    """One request to make for one window."""

    __slots__ = ("attempt", "first", "mode", "run_id", "window")

    def __init__(
        self,
        window: Window,
        attempt: int,
        mode: RetryMode | None = None,
        run_id: str | None = None,
        *,
        first: bool = False,
    ) -> None:
        self.window = window
        self.attempt = attempt
        self.mode = mode  # None: a new run; RETRIGGER: re-trigger run_id
        self.run_id = run_id
        self.first = first


class _Flow:
    """The engine's view of one flow: its window stream, gate and active runs."""

    __slots__ = ("active", "exhausted", "gate", "head", "plan", "retries", "stream", "tracked")

    def __init__(self, plan: FlowPlan, stream: Iterator[Window], gate: _Gate) -> None:
        self.plan = plan
        self.stream = stream
        self.head: _Job | None = None
        self.exhausted = False
        self.gate = gate
        self.active = 0  # in flight + in doubt + tracked runs
        self.retries: deque[_Job] = deque()
        self.tracked: dict[str, Window] = {}  # run id -> window, for the monitor


class Engine:
    """Runs one plan's windows (one shard's) to completion against the service."""

    def __init__(
        self,
        journal: Journal,
        client: RunsApi,
        limiter: RateLimiter,
        options: EngineOptions,
        *,
        clock: Clock = monotonic,
        sleep: Sleep = real_sleep,
    ) -> None:
        self._journal = journal
        self._client = client
        self._limiter = limiter
        self._options = options
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(options.seed)  # noqa: S311 - jitter, not cryptography
        self._plan = journal.plan
        self._slots = asyncio.Semaphore(options.concurrency)
        self._wake = asyncio.Event()
        self._doubt_added = asyncio.Event()
        self._tracking = asyncio.Event()
        self._closed = asyncio.Event()
        self._flows: dict[str, _Flow] = {}
        self._doubt: dict[str, dict[Window, _Job]] = {}
        self._budget: dict[Window, int] = {}
        self._in_flight = 0
        self._reconciling = 0
        self._stopping: str | None = None
        self._draining: str | None = None
        self._error: BackfillError | None = None
        self._unknown_statuses: set[str] = set()
        self.stats = Stats()
        self.started = 0.0

    # ------------------------------------------------------------------ public

    async def run(self) -> Outcome:
        """Submit (and, when asked, follow) every window of the plan; return how it ended."""
        self.started = self._clock()
        self._prepare()
        async with asyncio.TaskGroup() as group:
            for flow in self._flows.values():
                if flow.gate is _Gate.CHECKING:
                    group.create_task(self._check_gate(flow))
            group.create_task(self._reconcile_loop())
            if self._options.monitoring:
                group.create_task(self._monitor_loop())
            await self._dispatch(group)
            self._close()
        return Outcome(self._stopping or self._draining, self._error)

    async def refresh(self) -> None:
        """One reconciliation and one status poll of everything unfinished; no submissions."""
        self._prepare()
        await self._reconcile_batch()
        await self._poll()

    def stop(self, reason: str) -> None:
        """Take no new windows; requests in flight finish; returns at once."""
        if self._stopping is None:
            self._stopping = reason
            log.info("stopping", reason=reason, in_flight=self._in_flight)
        self._close()

    @property
    def unknown_statuses(self) -> frozenset[str]:
        return frozenset(self._unknown_statuses)

    # ----------------------------------------------------------------- startup

    def _prepare(self) -> None:
        """Build each flow's stream and gate, and pick up what the checkpoint left open."""
        options = self._options
        self._flows = {
            plan.flow_id: _Flow(
                plan,
                plan.windows(options.order, self._plan.shard),
                _Gate.OPEN if plan.delta_column is None else _Gate.CHECKING,
            )
            for plan in self._plan.flows
        }
        for window, entry in self._journal.items():
            flow = self._flows[window.flow_id]
            if entry.run_id is not None:
                flow.gate = _Gate.OPEN  # the flow has a run: its delta column is set
            state = entry.state
            if state is WindowState.SUBMITTING:
                job = _Job(window, entry.attempt)
                if entry.retrigger:
                    job.mode, job.run_id = RetryMode.RETRIGGER, entry.run_id
                self._doubt.setdefault(window.flow_id, {})[window] = job
                flow.active += 1
            elif state.active and options.monitoring and entry.run_id is not None:
                flow.tracked[entry.run_id] = window
                flow.active += 1
            elif (
                state is WindowState.FAILED
                and options.retry_failed
                and entry.attempt >= options.max_attempts
            ):
                self._budget[window] = entry.attempt  # `retry`: a fresh set of attempts
        if self._doubt:
            log.info("in_doubt_on_resume", windows=sum(len(d) for d in self._doubt.values()))

    async def _check_gate(self, flow: _Flow) -> None:
        """Does the flow have a run yet? If not, one shard sends the first, with the column."""
        plan = flow.plan
        first = next(plan.windows(self._options.order), None)
        shard = self._plan.shard
        owner = plan.owner(first.start, shard.count) if first is not None else shard.index
        told = False
        while not self._closed.is_set():
            try:
                await self._limiter.acquire()
                page = await self._client.list_runs(plan.flow_id, limit=1)
            except RetryableError as exc:
                await self._nap(self._backoff(exc, 1))
                continue
            except ApiError as exc:
                self._fail(exc)
                return
            if flow.gate is not _Gate.CHECKING and flow.gate is not _Gate.WAITING_FOR_SHARD:
                return  # reconciliation adopted a run meanwhile
            if page.runs:
                flow.gate = _Gate.OPEN
            elif owner == shard.index:
                flow.gate = _Gate.NEEDS_FIRST
            else:
                flow.gate = _Gate.WAITING_FOR_SHARD
                if not told:
                    log.info("waiting_for_first_run", flow=plan.flow_id, shard=owner)
                    told = True
                await self._nap(self._options.poll_interval)
                continue
            self._wake.set()
            return

    # --------------------------------------------------------------- dispatch

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while True:
            await self._slots.acquire()
            job = await self._next_job()
            if job is None:
                self._slots.release()
                return
            self._in_flight += 1
            group.create_task(self._work(job))

    async def _next_job(self) -> _Job | None:
        while True:
            if self._stopping is not None:
                return None
            if self._draining is not None:
                # --on-failure stop: nothing new goes out; what is out is followed to its end.
                if self._quiet():
                    return None
            else:
                job = self._pick()
                if job is not None:
                    return job
                if self._all_done():
                    return None
            self._wake.clear()
            await self._wake.wait()

    def _pick(self) -> _Job | None:
        """The next job of a ready flow: retries first, then the oldest (or newest) window."""
        cap = self._options.max_active_runs
        newest_first = self._options.order is Order.NEWEST_FIRST
        best: _Flow | None = None
        best_job: _Job | None = None
        for flow in self._flows.values():
            job = self._candidate(flow)
            if job is None or (cap is not None and flow.active >= cap):
                continue
            if best_job is None or (
                job.window.start > best_job.window.start
                if newest_first
                else job.window.start < best_job.window.start
            ):
                best, best_job = flow, job
        if best is None or best_job is None:
            return None
        if best.retries and best.retries[0] is best_job:
            best.retries.popleft()
        else:
            best.head = None
        if best.gate is _Gate.NEEDS_FIRST:
            best.gate = _Gate.FIRST_IN_FLIGHT
            best_job.first = True
        best.active += 1
        return best_job

    def _candidate(self, flow: _Flow) -> _Job | None:
        gate = flow.gate
        if flow.retries:
            job = flow.retries[0]
            if gate is _Gate.OPEN or job.first or gate is _Gate.NEEDS_FIRST:
                return job
            return None
        if gate is not _Gate.OPEN and gate is not _Gate.NEEDS_FIRST:
            return None
        if flow.head is None and not flow.exhausted:
            flow.head = self._next_window(flow)
        return flow.head

    def _next_window(self, flow: _Flow) -> _Job | None:
        """Advance the flow's stream to the next window that needs a request."""
        journal = self._journal
        for window in flow.stream:
            entry = journal.get(window)
            if entry is None:
                return _Job(window, 1)
            state = entry.state
            if state is WindowState.PENDING:
                return _Job(window, entry.attempt + 1)
            if state is WindowState.FAILED and entry.attempt < self._allowed(window):
                return self._retry_job(window, entry)
        flow.exhausted = True
        return None

    def _retry_job(self, window: Window, entry: Entry) -> _Job:
        if self._options.retry_mode is RetryMode.RETRIGGER and entry.run_id is not None:
            return _Job(window, entry.attempt + 1, RetryMode.RETRIGGER, entry.run_id)
        return _Job(window, entry.attempt + 1)

    def _allowed(self, window: Window) -> int:
        return self._budget.get(window, 0) + self._options.max_attempts

    def _all_done(self) -> bool:
        """Nothing left to send, nothing in flight, and (with --wait) nothing running."""
        return self._quiet() and all(
            flow.exhausted and flow.head is None and not flow.retries
            for flow in self._flows.values()
        )

    def _quiet(self) -> bool:
        """No request in flight or in doubt, and (with --wait) no run still going."""
        if self._in_flight or self._doubt or self._reconciling:
            return False
        return not (self._options.wait and any(flow.tracked for flow in self._flows.values()))

    # ------------------------------------------------------------------ worker

    async def _work(self, job: _Job) -> None:
        window = job.window
        flow = self._flows[window.flow_id]
        journal = self._journal
        before = journal.state(window)
        settled = False
        try:
            await journal.record(
                window,
                WindowState.SUBMITTING,
                attempt=job.attempt,
                mode=job.mode.value if job.mode else None,
            )
            retries = throttled = 0
            while True:
                # The permit comes last, once the intent is on disk: how long an fsync takes
                # varies, and it must not sit between the permit and the send, or requests
                # would reach a sliding-window server closer together than the rate.
                await self._limiter.acquire()
                if self._stopping is not None or self._draining is not None:
                    await journal.record(window, before, attempt=job.attempt - 1)
                    settled = True
                    self._release(flow)
                    return
                try:
                    if job.mode is RetryMode.RETRIGGER and job.run_id is not None:
                        created = await self._client.retrigger(job.run_id)
                    else:
                        delta = flow.plan.delta_column if job.first else None
                        created = await self._client.create_run(
                            window.flow_id, window.start, window.end, delta
                        )
                    break
                except RetryableError as exc:
                    if exc.in_doubt:
                        self._to_doubt(job, exc)
                        settled = True
                        return
                    if isinstance(exc, RateLimited):
                        throttled += 1  # the service is alive, only busy: never give up
                    else:
                        retries += 1
                    if retries > self._options.backoff.max_retries or self._stopping:
                        await journal.record(window, before, attempt=job.attempt - 1)
                        settled = True
                        if not self._stopping:
                            self._fail(ApiUnavailable(f"{exc}; gave up after {retries} retries"))
                        self._release(flow)
                        return
                    self.stats.request_retries += 1
                    log.debug(
                        "request_retry",
                        **_fields(window),
                        attempt=job.attempt,
                        error=str(exc),
                        retries=retries,
                        throttled=throttled,
                    )
                    await self._sleep(self._backoff(exc, retries + throttled))
                except PermanentError as exc:
                    await journal.record(window, before, attempt=job.attempt - 1)
                    settled = True
                    self._release(flow)
                    if job.mode is RetryMode.RETRIGGER and not isinstance(exc, AuthError):
                        # The run cannot be re-triggered: this window is failed for good.
                        self._give_up(window, f"re-trigger refused: {exc}")
                    else:
                        self._fail(exc)
                    return
            await journal.record(
                window, WindowState.SUBMITTED, attempt=job.attempt, run_id=created.run_id
            )
            settled = True
            log.debug(
                "run_submitted",
                **_fields(window),
                attempt=job.attempt,
                run_id=created.run_id,
                delta_column=job.first,
            )
            self.stats.submitted += 1
            if job.mode is RetryMode.RETRIGGER:
                self.stats.retried_runs += 1
            if job.first:
                flow.gate = _Gate.OPEN
            self._accepted(flow, window, created.run_id)
        finally:
            if not settled:  # cancelled mid-request: the window stays in doubt on disk
                flow.active -= 1
            self._in_flight -= 1
            self._slots.release()
            self._wake.set()

    def _accepted(self, flow: _Flow, window: Window, run_id: str) -> None:
        """A run is known for the window: follow it, or let go of its slot."""
        if self._options.monitoring:
            flow.tracked[run_id] = window
            self._tracking.set()
        else:
            flow.active -= 1

    def _release(self, flow: _Flow) -> None:
        flow.active -= 1
        self._wake.set()

    def _backoff(self, exc: RetryableError, retries: int) -> float:
        """How long this task waits before trying again; 429s and Retry-After pause everyone."""
        throttled = isinstance(exc, RateLimited)
        if throttled:
            self.stats.rate_limited += 1
        if exc.retry_after is not None:
            self._limiter.pause(exc.retry_after)
            return 0.0
        delay = self._options.backoff.delay(retries, self._rng)
        if throttled:
            self._limiter.pause(delay)
            return 0.0
        return delay

    def _fail(self, error: BackfillError) -> None:
        if self._error is None:
            self._error = error
            log.error("stopping_on_error", error=str(error))
        self.stop(f"error: {error}")

    def _give_up(self, window: Window, reason: str) -> None:
        log.warning("window_failed_for_good", **_fields(window), reason=reason)
        if self._options.on_failure is OnFailure.STOP and self._draining is None:
            self._draining = "a window failed for good (--on-failure stop)"
            log.info("draining", reason=self._draining, in_flight=self._in_flight)
            self._wake.set()

    # ------------------------------------------------------------- reconciling

    def _to_doubt(self, job: _Job, error: Exception) -> None:
        self.stats.in_doubt += 1
        log.warning(
            "request_in_doubt", **_fields(job.window), attempt=job.attempt, error=str(error)
        )
        self._doubt.setdefault(job.window.flow_id, {})[job.window] = job
        self._doubt_added.set()

    async def _reconcile_loop(self) -> None:
        delay = 0.0  # what the checkpoint left in doubt is settled at once
        while not self._closed.is_set():
            if not self._doubt:
                self._doubt_added.clear()
                await self._wait_or_close(self._doubt_added)
                delay = self._options.reconcile_delay
                continue
            if delay:
                # Let a just-created run show up in the service's listing before we look.
                await self._nap(delay)
                if self._closed.is_set():
                    return
            await self._reconcile_batch()

    async def _reconcile_batch(self) -> None:
        batch, self._doubt = self._doubt, {}
        self._reconciling += 1
        try:
            for flow_id, jobs in batch.items():
                try:
                    runs = await self._runs_for(flow_id, jobs)
                except RetryableError as exc:
                    for window, job in jobs.items():
                        self._doubt.setdefault(flow_id, {})[window] = job
                    log.warning("reconcile_retry", flow=flow_id, error=str(exc))
                    await self._nap(self._backoff(exc, 1) or self._options.reconcile_delay)
                    continue
                except ApiError as exc:
                    self._fail(exc)
                    return
                self.stats.reconciliations += 1
                for job in jobs.values():
                    await self._settle(job, runs)
        finally:
            self._reconciling -= 1
            self._wake.set()

    async def _runs_for(
        self, flow_id: str, jobs: dict[Window, _Job]
    ) -> dict[tuple[int, int] | str, list[RunInfo]]:
        """The flow's runs that may answer these doubts, by window and by run id."""
        found: dict[tuple[int, int] | str, list[RunInfo]] = {}
        new = [job for job in jobs.values() if job.mode is None]
        retriggered = [job.run_id for job in jobs.values() if job.run_id is not None]
        if new:
            since = min(self._since(job.window) for job in new) - self._options.reconcile_margin
            try:
                runs = [
                    r async for r in self._list_all(flow_id, created_since_ms=int(since * 1000))
                ]
            except PermanentError as exc:
                if isinstance(exc, AuthError):
                    raise
                # A service that refuses the createdAt filter still answers the plain listing.
                log.warning("reconcile_unfiltered", flow=flow_id, error=str(exc))
                runs = [r async for r in self._list_all(flow_id)]
            for run in runs:
                if run.window_start is not None and run.window_end is not None:
                    found.setdefault((run.window_start, run.window_end), []).append(run)
        size = self._options.page_size
        for i in range(0, len(retriggered), size):
            async for run in self._list_all(flow_id, ids=retriggered[i : i + size]):
                found[run.run_id] = [run]
        return found

    def _since(self, window: Window) -> float:
        entry = self._journal.get(window)
        return entry.since if entry is not None else 0.0

    async def _list_all(self, flow_id: str, **query: Any) -> AsyncIterator[RunInfo]:
        """Every page of a listing, each page one rate-limited request."""
        href: str | None = None
        while True:
            await self._limiter.acquire()
            self.stats.list_requests += 1
            page = await self._client.list_runs(
                flow_id, limit=self._options.page_size, href=href, **query
            )
            for run in page.runs:
                yield run
            href = page.next_href
            if href is None:
                return

    async def _settle(self, job: _Job, runs: dict[tuple[int, int] | str, list[RunInfo]]) -> None:
        window = job.window
        flow = self._flows[window.flow_id]
        entry = self._journal.get(window)
        known = set(entry.all_runs()) if entry is not None else set()
        if job.mode is RetryMode.RETRIGGER and job.run_id is not None:
            matches = runs.get(job.run_id, [])
            took_effect = bool(matches) and matches[0].status is not RunStatus.FAILED
            adopted = matches[0] if took_effect else None
        else:
            matches = [r for r in runs.get((window.start, window.end), []) if r.run_id not in known]
            if len(matches) > 1:
                self.stats.duplicates_found += len(matches) - 1
                log.error(
                    "duplicate_runs_found", **_fields(window), runs=[r.run_id for r in matches]
                )
            adopted = min(matches, key=_adoption_rank) if matches else None
        if adopted is not None:
            await self._journal.record(
                window, WindowState.SUBMITTED, attempt=job.attempt, run_id=adopted.run_id
            )
            log.info("run_adopted", **_fields(window), attempt=job.attempt, run_id=adopted.run_id)
            self.stats.adopted += 1
            if flow.gate is not _Gate.OPEN and flow.plan.delta_column is not None:
                flow.gate = _Gate.OPEN
            self._accepted(flow, window, adopted.run_id)
            if self._options.monitoring:
                self._observe(flow, window, adopted)
            return
        # The service has no run for it: the request never took effect. Send it again.
        before = WindowState.FAILED if entry is not None and entry.run_id else WindowState.PENDING
        await self._journal.record(window, before, attempt=job.attempt - 1)
        self.stats.resent_after_doubt += 1
        flow.active -= 1
        flow.retries.append(job)
        self._wake.set()

    # ---------------------------------------------------------------- monitor

    async def _monitor_loop(self) -> None:
        interval = self._options.poll_interval
        while not self._closed.is_set():
            if not any(flow.tracked for flow in self._flows.values()):
                self._tracking.clear()
                await self._wait_or_close(self._tracking)
                continue
            await self._nap(interval)
            if self._closed.is_set():
                return
            changed = await self._poll()
            if changed:
                interval = self._options.poll_interval
            else:
                interval = min(interval * 1.5, self._options.poll_max_interval)

    async def _poll(self) -> bool:
        """One pass over every tracked run: one request per flow and page of run ids."""
        self.stats.polls += 1
        changed = False
        size = self._options.page_size
        for flow in list(self._flows.values()):
            ids = list(flow.tracked)
            for i in range(0, len(ids), size):
                chunk = ids[i : i + size]
                try:
                    async for run in self._list_all(flow.plan.flow_id, ids=chunk):
                        window = flow.tracked.get(run.run_id)
                        if window is not None:
                            changed |= self._observe(flow, window, run)
                except RetryableError as exc:
                    log.warning("poll_failed", flow=flow.plan.flow_id, error=str(exc))
                    await self._nap(self._backoff(exc, 1))
                    return changed
                except ApiError as exc:
                    self._fail(exc)
                    return changed
        return changed

    def _observe(self, flow: _Flow, window: Window, run: RunInfo) -> bool:
        """Record what the service says of a tracked run; True if anything changed."""
        entry = self._journal.get(window)
        if entry is None or entry.run_id != run.run_id:
            return False
        if run.status is RunStatus.UNKNOWN and run.raw_status not in self._unknown_statuses:
            self._unknown_statuses.add(run.raw_status)
            log.warning("unknown_run_status", status=run.raw_status, run_id=run.run_id)
        new = run.status.window_state()
        old = entry.state
        if new is old or new is WindowState.SUBMITTED or not old.active:
            return False
        if new is WindowState.RUNNING:
            if old is not WindowState.SUBMITTED:
                return False
            self._journal.record_nowait(window, new)
            return True
        errors = [dict(e) for e in run.errors] if new is WindowState.FAILED else None
        self._journal.record_nowait(window, new, errors=errors)
        log.debug(
            "run_finished", **_fields(window), attempt=entry.attempt, run_id=run.run_id, status=new
        )
        del flow.tracked[run.run_id]
        flow.active -= 1
        if new is WindowState.FAILED:
            if entry.attempt < self._allowed(window):
                flow.retries.append(self._retry_job(window, entry))
            else:
                first_error = errors[0].get("message", "") if errors else "no error given"
                self._give_up(window, f"run {run.run_id} failed: {first_error}")
        self._wake.set()
        return True

    # ------------------------------------------------------------------ timing

    async def _nap(self, seconds: float) -> None:
        """Sleep, but wake when the engine closes."""
        if seconds <= 0 or self._closed.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({sleeper, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closer.cancel()

    async def _wait_or_close(self, event: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(event.wait())
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()

    def _close(self) -> None:
        self._closed.set()
        self._wake.set()


def _fields(window: Window) -> dict[str, Any]:
    """How a window appears in every log event."""
    return {"flow": window.flow_id, "window_start": window.start, "window_end": window.end}


def _adoption_rank(run: RunInfo) -> int:
    """Which of several matching runs to adopt: one that succeeded, then one still going."""
    if run.status is RunStatus.SUCCESS:
        return 0
    if not run.status.finished:
        return 1
    return 2
