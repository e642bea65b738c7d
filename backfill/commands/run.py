"""``backfill run`` and ``backfill retry``: submit every window not yet accepted, resumably.

This is where the parts meet -- plan, checkpoint, HTTP session, tokens, limiter, engine,
progress, report, metrics -- and where signals are turned into a graceful stop. The CLI
above it only parses and prints; the modules below it know nothing of each other's setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog

from backfill.auth import TokenProvider
from backfill.choices import CONFIRM_ABOVE
from backfill.client import FlowServiceClient
from backfill.engine import Engine, ExistingRuns, Outcome
from backfill.errors import BackfillError, ConfigError, ExitCode
from backfill.journal import Journal
from backfill.limits import RateLimiter
from backfill.permits import Permits
from backfill.planner import Plan
from backfill.preview import Preview, preview
from backfill.report import Snapshot, duplicate_windows, print_summary, progress_task, write_report
from backfill.settings import Settings
from backfill.state import WindowState

from .wiring import (
    checked_start,
    counts_dict,
    engine_options,
    first_contact,
    http_session,
    identity,
    token_provider,
)

if TYPE_CHECKING:
    from backfill.metrics import Metrics

__all__ = ["NotConfirmed", "run_command"]

log = structlog.get_logger("backfill")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_YOUNGEST_COLLECTED_EVERY = 5_000  # allocations (Python's default: 700); see _collect_less
_SIGNAL_EXITS = {
    signal.SIGINT: ExitCode.SIGINT,
    signal.SIGTERM: ExitCode.SIGTERM,
    signal.SIGHUP: ExitCode.SIGHUP,
}


async def run_command(
    settings: Settings,
    *,
    retry_failed: bool = False,
    retry_empty: bool = False,
    from_checkpoint: bool = False,
    json_lines: bool = True,
    live: bool = False,
) -> ExitCode:
    """``run`` (and ``retry``): submit every window not yet accepted, resumably.

    The checkpoint is opened first (its problems need no network), then the credentials are
    tried and every flow goes through the pre-flight, before anything is sent. A command that
    stops before it recorded anything leaves no checkpoint behind it had just created.
    """
    requested, path = checked_start(settings, from_checkpoint=from_checkpoint)
    # A metrics port in use is a configuration error (exit 2) that must leave the checkpoint
    # as it was: it is tried before the checkpoint is created or changed.
    _check_port(settings.metrics_port)
    if _may_ask(settings):
        # Count on a read-only copy first: a "no" leaves no checkpoint behind.
        ahead = Journal.open(path, requested, extend=settings.extend, readonly=True)
        _confirm(settings, _preview(settings, ahead, retry_failed, retry_empty))
    journal = Journal.open(path, requested, extend=settings.extend)
    untouched = False
    try:
        _log_starting(settings, journal, _preview(settings, journal, retry_failed, retry_empty))
        _log_opened(journal)
        return await _run(
            settings,
            journal,
            retry_failed=retry_failed,
            retry_empty=retry_empty,
            json_lines=json_lines,
            live=live,
        )
    except BackfillError as exc:
        # Refused (exit 2: credentials, the pre-flight) before anything was recorded: the
        # corrected command, maybe with another plan, must not meet a checkpoint this one
        # created. It goes while the lock is still held, so no other process can have started
        # writing to it. An outage (exit 75) keeps it: the same command runs again later.
        untouched = (
            exc.exit_code is ExitCode.USAGE and journal.replay.created and journal.records == 0
        )
        raise
    finally:
        if untouched:
            path.unlink(missing_ok=True)
        await journal.close()


def _preview(settings: Settings, journal: Journal, retry_failed: bool, empty: bool) -> Preview:
    return preview(
        journal,
        order=settings.order,
        max_attempts=settings.max_attempts,
        retry_failed=retry_failed,
        retry_mode=settings.retry_mode,
        retry_empty=empty or settings.retry_empty,
    )


def _may_ask(settings: Settings) -> bool:
    """A question needs someone to answer it: a terminal on both ends, and no --yes."""
    return not settings.yes and sys.stdin.isatty() and sys.stderr.isatty()


def _unchecked(settings: Settings, ahead: Preview) -> int:
    """Windows counted as to send that the run first looks up at the service (and adopts
    rather than sends when it has them): the counts are then only upper bounds."""
    if settings.existing_runs is not ExistingRuns.ADOPT:
        return 0
    return ahead.totals()["unchecked"]


def _confirm(settings: Settings, ahead: Preview) -> None:
    """Ask before more than CONFIRM_ABOVE runs. Counted from the checkpoint: the runs the
    service already holds for windows the checkpoint never saw are known only from the whole
    listing of each flow's runs, which adoption reads after the question; reading it before
    too would double the listing of every fresh backfill. The question says so instead, and
    ``--dry-run`` gives the exact count."""
    if ahead.to_send <= CONFIRM_ABOVE:
        return
    unchecked = _unchecked(settings, ahead)
    bound = "up to " if unchecked else ""
    held = (
        f" ({unchecked:,} windows this checkpoint has never seen are looked up at the service "
        "first: any it already has a run for is adopted, not sent; --dry-run counts them)"
        if unchecked
        else ""
    )
    sys.stderr.write(
        f"This sends {bound}{ahead.to_send:,} runs ({ahead.new_runs:,} new) to organization "
        f"{settings.org_id}, sandbox {settings.sandbox_name}, at {settings.base_url}{held}. "
        "Go ahead? [y/N] "
    )
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise NotConfirmed


class NotConfirmed(BackfillError):
    """The user said no at the terminal: nothing was sent, no checkpoint written."""

    def __init__(self) -> None:
        super().__init__(
            "not confirmed: nothing was sent and no checkpoint written "
            "(--yes, or BACKFILL_YES=true, answers yes)"
        )


def _log_starting(settings: Settings, journal: Journal, ahead: Preview) -> None:
    """The first line of every run: where it sends, and how much.

    Counted from the checkpoint, before adoption: when ``unchecked`` windows are looked up at
    the service first, ``to_send`` and ``new_runs`` are at most that (``at_most``); the
    ``existing_runs_adopted`` lines then say how many the service had.
    """
    unchecked = _unchecked(settings, ahead)
    log.info(
        "backfill_starting",
        org=settings.org_id,
        sandbox=settings.sandbox_name,
        base_url=settings.base_url,
        flows=[flow.flow_id for flow in journal.plan.flows],
        shard=None if journal.plan.shard.whole else str(journal.plan.shard),
        checkpoint=str(journal.path),
        **ahead.totals(),
        at_most=unchecked > 0,
    )


def _collect_less() -> None:
    """Before the engine starts: the garbage collector leaves start-up's objects alone.

    Everything built so far (modules, settings, the checkpoint's index) lives as long as the
    process: ``gc.freeze`` moves it out of the generations the collector scans, and the
    youngest generation is collected every 5,000 allocations rather than 700. Measured on
    the throughput benchmark: the collector's share of a run's CPU falls from about 22 to a
    few microseconds a window; the cycles a request leaves behind are still collected.
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNGEST_COLLECTED_EVERY, middle, oldest)


async def _run(
    settings: Settings,
    journal: Journal,
    *,
    retry_failed: bool,
    retry_empty: bool,
    json_lines: bool,
    live: bool,
) -> ExitCode:
    loop = asyncio.get_running_loop()
    plan = journal.plan
    rate = settings.effective_rate(plan.shard.count)  # a retried checkpoint knows its shard
    options = engine_options(
        settings, retry_failed=retry_failed, retry_empty=retry_empty, shard=plan.shard
    )
    async with http_session(settings) as session:
        tokens = token_provider(settings, session)
        limiter = RateLimiter(rate)
        permits = Permits(limiter)
        client = FlowServiceClient(
            session, settings.base_url, identity(settings), tokens, permits.take
        )
        options = await first_contact(settings, journal, client, tokens, options)
        engine = Engine(journal, client, limiter, options, permits=permits)
        metrics = _metrics(settings, journal, engine, client, limiter, tokens, plan)
        log.info(
            "backfill_started",
            windows=plan.count(),
            shard=str(plan.shard),
            rate=str(rate),
            concurrency=options.concurrency,
            checkpoint=str(journal.path),
            **counts_dict(journal),
        )
        _collect_less()
        work = asyncio.ensure_future(engine.run())
        received: list[signal.Signals] = []
        _install_signals(loop, received, engine, work, settings.grace)
        start_done = _snapshot(journal, engine, client, options.wait, 0.0).done
        progress = asyncio.ensure_future(
            progress_task(
                lambda: _snapshot(
                    journal, engine, client, options.wait, engine.started, start_done
                ),
                interval=settings.progress_interval,
                live=live,
            )
        )
        try:
            outcome = await work
        except asyncio.CancelledError:
            if not work.cancelled():
                raise
            outcome = Outcome(stopped="grace period over: requests still in flight were abandoned")
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        await journal.commit()
        snapshot = _snapshot(journal, engine, client, options.wait, engine.started, start_done)
        duplicates = len(duplicate_windows(journal))
        code = _exit_code(outcome, snapshot, received, duplicates)
        report = settings.shard_path(settings.report, plan.shard)
        if report is not None:
            write_report(report, journal, _totals(snapshot, engine, outcome, code))
        metrics_file = settings.shard_path(settings.metrics_file, plan.shard)
        if metrics is not None and metrics_file is not None:
            metrics.write(metrics_file)
        print_summary(snapshot, json_lines=json_lines, outcome=_outcome_word(code))
        if outcome.error is not None:
            raise outcome.error
        if received:
            log.warning(
                "interrupted",
                signal=received[0].name,
                hint="run the same command again to resume",
                submitting=snapshot.counts[WindowState.SUBMITTING],
            )
        elif code is ExitCode.DUPLICATES:
            log.error(
                "duplicate_runs",
                windows=duplicates,
                hint="the service holds more than one live run for these windows: see "
                "`backfill status` (duplicate_runs) and check what they ingested",
            )
        elif code is ExitCode.WINDOWS_FAILED:
            log.warning(
                "windows_failed",
                failed=snapshot.counts[WindowState.FAILED],
                hint="`backfill retry --checkpoint ...` sends them again",
            )
        return code


def _install_signals(
    loop: asyncio.AbstractEventLoop,
    received: list[signal.Signals],
    engine: Engine,
    work: asyncio.Future[Outcome],
    grace: float,
) -> None:
    """SIGTERM/SIGINT/SIGHUP: stop taking windows, give requests in flight ``grace`` seconds.

    SIGHUP (a closed terminal, some supervisors) is a stop like SIGTERM, not a sudden death.
    """

    def on_signal(sig: signal.Signals) -> None:
        if received and sig is signal.SIGINT:
            # A second Ctrl-C: leave now. Every acted-on request's intent is already on disk.
            os._exit(ExitCode.SIGINT)
        if not received:
            received.append(sig)
            engine.stop(f"received {sig.name}")
            loop.call_later(grace, work.cancel)

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)


def _metrics(
    settings: Settings,
    journal: Journal,
    engine: Engine,
    client: FlowServiceClient,
    limiter: RateLimiter,
    tokens: TokenProvider,
    plan: Plan,
) -> Metrics | None:
    if settings.metrics_port is None and settings.metrics_file is None:
        return None
    from backfill.metrics import Metrics, MetricsSource  # noqa: PLC0415 - prometheus only when asked

    metrics = Metrics(
        MetricsSource(
            window_counts=journal.counts,
            responses=lambda: dict(client.responses),
            submitted=lambda: engine.stats.submitted,
            retries=lambda: engine.stats.request_retries + engine.stats.retried_runs,
            rate_limited=lambda: client.responses.get("429", 0),
            rate_limit_wait=lambda: limiter.waited,
            token_renewals=lambda: tokens.renewals,
            duplicates=lambda: engine.stats.duplicates_found,
            adopted_existing=lambda: engine.stats.adopted_existing,
            records=journal.record_totals,
        ),
        shard=str(plan.shard),
    )
    if settings.metrics_port is not None:
        from backfill.coverage import LivePage  # noqa: PLC0415 - only when asked

        live = LivePage([journal], asyncio.get_running_loop())
        try:
            port = metrics.serve(settings.metrics_port, pages=live.pages())
        except OSError as exc:  # taken since it was checked
            raise _port_taken(settings.metrics_port, exc) from None
        log.info("metrics_serving", port=port)
    return metrics


def _check_port(port: int | None) -> None:
    """Bind the metrics port once (and let it go): exit 2 now if something else holds it."""
    if port is None or port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - where the server will listen
        except OSError as exc:
            raise _port_taken(port, exc) from None


def _port_taken(port: int, exc: OSError) -> ConfigError:
    return ConfigError(
        "metrics_port",
        f"port {port} cannot be bound ({exc.strerror or exc}): another process probably holds "
        "it; choose another --metrics-port",
    )


def _snapshot(
    journal: Journal,
    engine: Engine,
    client: FlowServiceClient,
    wait: bool,
    started: float,
    done_at_start: int = 0,
) -> Snapshot:
    stats = engine.stats
    return Snapshot(
        counts=journal.counts(),
        total=journal.plan.count(),
        elapsed=(time.monotonic() - started) if started else 0.0,
        wait=wait,
        requests=sum(client.responses.values()),
        rate_limited=client.responses.get("429", 0),
        done_at_start=done_at_start,
        records=journal.record_totals(),
        extra={
            "submitted": stats.submitted,
            "answers_lost": stats.in_doubt,
            "adopted_after_doubt": stats.adopted,
            "resent_after_doubt": stats.resent_after_doubt,
            "retried_runs": stats.retried_runs,
            "request_retries": stats.request_retries,
            "duplicates_found": stats.duplicates_found,
            "adopted_existing": stats.adopted_existing,
            "left_in_doubt": stats.left_in_doubt,
            "foreign_runs": stats.foreign_runs,
            "list_requests": stats.list_requests,
            "polls": stats.polls,
            "reconciliations": stats.reconciliations,
        },
    )


def _exit_code(
    outcome: Outcome, snapshot: Snapshot, received: list[signal.Signals], duplicates: int
) -> ExitCode:
    if outcome.error is not None:
        return outcome.error.exit_code
    if duplicates:
        return ExitCode.DUPLICATES
    if received:
        return _SIGNAL_EXITS[received[0]]
    counts = snapshot.counts
    if counts[WindowState.FAILED] or outcome.stopped is not None:
        return ExitCode.WINDOWS_FAILED
    if snapshot.done < snapshot.total:
        return ExitCode.WINDOWS_FAILED
    return ExitCode.OK


def _outcome_word(code: ExitCode) -> str:
    return {
        ExitCode.OK: "finished",
        ExitCode.WINDOWS_FAILED: "finished with failed windows",
        ExitCode.DUPLICATES: "finished with duplicate runs at the service",
        ExitCode.SIGINT: "interrupted",
        ExitCode.SIGTERM: "interrupted",
        ExitCode.SIGHUP: "interrupted",
    }.get(code, "stopped on an error")


def _totals(snapshot: Snapshot, engine: Engine, outcome: Outcome, code: ExitCode) -> dict[str, Any]:
    return {
        "totals": {state.value: n for state, n in snapshot.counts.items()},
        "planned": snapshot.total,
        "outcome": _outcome_word(code),
        "exit_code": int(code),
        "stopped": outcome.stopped,
        "error": str(outcome.error) if outcome.error else None,
        "duration_s": round(snapshot.elapsed, 3),
        "requests_sent": snapshot.requests,
        "rate_limited_429": snapshot.rate_limited,
        **snapshot.extra,
        "records": snapshot.records,
        "unknown_statuses": sorted(engine.unknown_statuses),
    }


def _log_opened(journal: Journal) -> None:
    replay = journal.replay
    if replay.torn_bytes:
        log.warning(
            "checkpoint_torn_line_dropped",
            path=str(journal.path),
            bytes=replay.torn_bytes,
            reason="a crash interrupted the last write; that record never counted",
        )
    if replay.extended:
        log.info("checkpoint_extended", path=str(journal.path))
    if not replay.created:
        log.info("resuming", path=str(journal.path), records=replay.records, **counts_dict(journal))


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A lone error inside the engine's TaskGroup is re-raised as itself."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> Iterator[BaseException]:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                yield from walk(inner)
        else:
            yield exc

    leaves = list(walk(group))
    for leaf in leaves:
        if isinstance(leaf, BackfillError):
            return leaf
    return leaves[0] if leaves else group
