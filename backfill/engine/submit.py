"""Submission: one window's request, from its durable intent to its recorded run id.

    journal "submitting" (durable) -> a seat (one of ``concurrency`` requests out) -> POST /runs
        (or re-trigger; the client takes the rate permit right before the send) -> journal
        "submitted" (durable with the next commit; a crash before it leaves the window in
        doubt, and reconciliation adopts the run)
    answer lost / 5xx -> in doubt, handed to reconciliation; never sent again from here
    stopped before the seat or the permit (RequestNotSent) -> back to where it was: never in
        doubt

The permit comes last, once the intent is on disk and the token in hand: how long an fsync or
a token renewal takes varies, and it must not sit between the permit and the send, or
requests would reach a sliding-window server closer together than the rate.

It may touch: the journal (its window's records), the client's create/re-trigger calls, the
board (its flow's slot, the doubts, the accepted run), the control (errors, backoff) and the
permits (a seat, waited for as a permit is: a stop wakes it).
"""

from __future__ import annotations

import asyncio

import structlog

from backfill.client import CreatedRun, RunsApi
from backfill.errors import (
    ApiUnavailable,
    AuthError,
    PermanentError,
    RateLimited,
    RequestNotSent,
    RetryableError,
)
from backfill.logs import debug_enabled
from backfill.permits import Permits
from backfill.state import WindowState

from .board import Board, Gate, Job, window_fields
from .control import Control
from .options import EngineOptions, RetryMode

__all__ = ["Submitter"]

log = structlog.get_logger("backfill.engine")

# The longest an intent's commit waits for others' (see Submitter._slack).
_MAX_GATHER = 0.1


class Submitter:
    """Makes one window's request and records what came of it."""

    def __init__(
        self,
        board: Board,
        control: Control,
        client: RunsApi,
        options: EngineOptions,
        permits: Permits,
    ) -> None:
        self._board = board
        self._control = control
        self._client = client
        self._options = options
        self._permits = permits
        # Requests that act, out at once: --concurrency. More workers than seats hold a
        # window each (dispatch.py): their intents go to disk while the seats are busy.
        self._seats = asyncio.Semaphore(options.concurrency)
        self._seated = 0  # windows waiting for a seat, their intents on disk
        self._freed: float | None = None  # when a seat was last given back
        self._spacing = 0.0  # between seats given back, smoothed (seconds)

    async def work(self, job: Job) -> None:
        """Send the job's request; the window ends submitted, in doubt, or back where it was."""
        board = self._board
        flow = board.flows[job.window.flow_id]
        settled = False
        try:
            settled = await self._submit(job)
        finally:
            if not settled:  # cancelled mid-request: the window stays in doubt on disk
                flow.active -= 1

    async def _submit(self, job: Job) -> bool:
        """True once the window's fate is recorded (on disk or handed to reconciliation)."""
        board, control = self._board, self._control
        window = job.window
        flow = board.flows[window.flow_id]
        journal = board.journal
        before = journal.state(window)
        await journal.record(
            window,
            WindowState.SUBMITTING,
            attempt=job.attempt,
            mode=job.mode.value if job.mode else None,
            gather=self._slack(),
        )
        retries = throttled = 0
        while True:
            try:
                created = await self._send(job)
                break
            except RequestNotSent:
                # Stopped before its permit: never sent, so not in doubt.
                await journal.record(window, before, attempt=job.attempt - 1)
                board.release(flow)
                return True
            except RetryableError as exc:
                if exc.in_doubt:
                    board.to_doubt(job, exc)
                    return True
                if isinstance(exc, RateLimited):
                    throttled += 1  # the service is alive, only busy: never give up
                else:
                    retries += 1
                if retries > self._options.backoff.max_retries or control.stopping:
                    await journal.record(window, before, attempt=job.attempt - 1)
                    if not control.stopping:
                        control.fail(ApiUnavailable(f"{exc}; gave up after {retries - 1} retries"))
                    board.release(flow)
                    return True
                board.stats.request_retries += 1
                (log.debug if isinstance(exc, RateLimited) else log.warning)(
                    "request_retry",
                    **window_fields(window),
                    attempt=job.attempt,
                    error=str(exc),
                    retries=retries,
                    throttled=throttled,
                )
                await control.nap(control.backoff(exc, retries + throttled))
                if control.halted:  # a stop (or a Retry-After too long) came meanwhile
                    await journal.record(window, before, attempt=job.attempt - 1)
                    board.release(flow)
                    return True
            except PermanentError as exc:
                await journal.record(window, before, attempt=job.attempt - 1)
                board.release(flow)
                if job.mode is RetryMode.RETRIGGER and not isinstance(exc, AuthError):
                    # The run cannot be re-triggered: this window is failed for good.
                    control.give_up(window, f"re-trigger refused: {exc}")
                else:
                    control.fail(exc)
                return True
        if not board.owner_ok(created.run_id, window):
            # The answer names another window's run: what this request did is unknown.
            board.to_doubt(
                job, RuntimeError(f"answered with run {created.run_id} of another window")
            )
            return True
        board.claim(created.run_id, window)
        # Not waited for: the next commit (the next intent's, or the last one at exit) makes
        # it durable. A crash before then loses it, and the window, whose intent is durable,
        # is in doubt on resume: reconciliation adopts this run from the service's listing.
        # One fsync wait per window instead of two.
        journal.record_nowait(
            window, WindowState.SUBMITTED, attempt=job.attempt, run_id=created.run_id
        )
        if debug_enabled():
            log.debug(
                "run_submitted",
                **window_fields(window),
                attempt=job.attempt,
                run_id=created.run_id,
                delta_column=job.first,
            )
        board.stats.submitted += 1
        if job.mode is RetryMode.RETRIGGER:
            board.stats.retried_runs += 1
        if job.first:
            flow.gate = Gate.OPEN
        board.accepted(flow, window, created.run_id)
        return True

    def _slack(self) -> float:
        """How long a new intent can wait for its commit before a seat could want it.

        While a seat is free, none: the request goes as soon as its intent is on disk. While
        every seat is busy, ``_seated`` windows with their intents on disk are ahead of it,
        and a seat comes free about every ``_spacing`` seconds: half their turns, at most
        ``_MAX_GATHER``, is time its commit can spend gathering others' intents (one fsync
        and one wake-up for many windows, journal.py). At thousands of windows a second that
        is a few milliseconds; at 50 a second, tens.
        """
        if not self._seats.locked():
            return 0.0
        return min(_MAX_GATHER, self._seated * self._spacing / 2)

    async def _send(self, job: Job) -> CreatedRun:
        window = job.window
        retrigger = job.mode is RetryMode.RETRIGGER and job.run_id is not None
        seats = self._seats
        self._seated += 1  # a free seat is taken without a wait: nobody sees this count
        try:
            await self._permits.seat("POST /runs" if not retrigger else "re-trigger", seats)
        finally:
            self._seated -= 1
        try:
            if retrigger:
                assert job.run_id is not None
                return await self._client.retrigger(job.run_id)
            plan = self._board.flows[window.flow_id].plan
            delta = plan.delta_column if job.first else None
            return await self._client.create_run(window.flow_id, window.start, window.end, delta)
        finally:
            seats.release()
            now = self._board.clock()
            if self._freed is not None:
                self._spacing += (now - self._freed - self._spacing) / 8
            self._freed = now
