"""One command's work, wired together: settings in, an exit code out.

This is where the parts meet -- plan, checkpoint, HTTP session, tokens, limiter, engine,
progress, report, metrics -- and where signals are turned into a graceful stop. The CLI
above it only parses and prints; the modules below it know nothing of each other's setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from .auth import ClientCredentials, StaticToken, TokenProvider
from .client import ApiIdentity, FlowServiceClient
from .engine import Engine, EngineOptions, ExistingRuns, Outcome
from .engine.preflight import preflight
from .errors import BackfillError, CheckpointLocked, CheckpointMissing, ConfigError, ExitCode
from .journal import Holder, Journal, holder
from .limits import Backoff, RateLimiter, real_sleep
from .logs import register_secret
from .paths import write_target_problem
from .permits import Permits
from .planner import Plan, Shard, format_time
from .preview import Preview, ServiceView, preview
from .report import (
    Snapshot,
    duplicate_windows,
    plan_summary,
    print_summary,
    progress_task,
    records_line,
    status_document,
    write_report,
)
from .retry import retrying
from .settings import Settings
from .state import LABELS, WindowState

if TYPE_CHECKING:
    import aiohttp

    from .metrics import Metrics

__all__ = ["dry_run_command", "plan_command", "run_command", "status_command"]

# More runs than this are confirmed on a terminal first (unless --yes).
CONFIRM_ABOVE = 1000

log = structlog.get_logger("backfill")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SIGNAL_EXITS = {
    signal.SIGINT: ExitCode.SIGINT,
    signal.SIGTERM: ExitCode.SIGTERM,
    signal.SIGHUP: ExitCode.SIGHUP,
}


def plan_command(settings: Settings, *, as_json: bool, out: Any = None) -> ExitCode:
    """Print the plan: one JSON object per window, or a line per flow."""
    out = out or sys.stdout
    plan = settings.plan(now=time.time())
    if as_json:
        write = out.buffer.write if hasattr(out, "buffer") else None
        flows = {flow.flow_id: flow for flow in plan.flows}
        for window in plan.windows():
            show = flows[window.flow_id].show
            line = orjson.dumps(
                {
                    "flow_id": window.flow_id,
                    "start": window.start,
                    "end": window.end,
                    "start_time": show(window.start),
                    "end_time": show(window.end),
                }
            )
            if write is not None:
                write(line + b"\n")
            else:
                out.write(line.decode() + "\n")
        return ExitCode.OK
    total = 0
    for flow in plan_summary(plan):
        total += flow["windows"]
        column = f", delta column {flow['delta_column']}" if flow["delta_column"] else ""
        out.write(f"{flow['flow_id']}: {flow['range']}: {flow['windows']:,} windows{column}\n")
        for line in flow["details"]:
            out.write(f"  {line}\n")
    shard = "" if plan.shard.whole else f" (shard {plan.shard})"
    out.write(f"{total:,} windows in all{shard}\n")
    return ExitCode.OK


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
    settings.refuse_idle_options()
    settings.require_credentials()
    if settings.existing_runs is ExistingRuns.IGNORE and not settings.yes:
        raise ConfigError(
            "--existing-runs",
            "'ignore' sends windows the service may already have runs for, which ingests them "
            "twice; add --yes to confirm, or leave it at 'adopt'",
        )
    settings.check_run_paths(existing=from_checkpoint)
    _register_secrets(settings)
    requested = _requested_plan(settings, from_checkpoint=from_checkpoint)
    if requested is not None:
        settings.effective_max_active_runs(requested.shard)  # refused before the checkpoint
    path = _checkpoint_file(settings, settings.checkpoint_path(existing=from_checkpoint))
    # A metrics port in use is a configuration error (exit 2) that must leave the checkpoint
    # as it was: it is tried before the checkpoint is created or changed.
    _check_port(settings.metrics_port)
    shard = requested.shard if requested is not None else settings.shard_spec()
    for field in ("report", "metrics_file"):  # written at the end: their folders are now
        _check_writable(settings, field, settings.shard_path(getattr(settings, field), shard))
    if _may_ask(settings):
        # Count on a read-only copy first: a "no" leaves no checkpoint behind.
        ahead = Journal.open(path, requested, extend=settings.extend, readonly=True)
        _confirm(settings, _preview(settings, ahead, retry_failed=retry_failed))
    journal = Journal.open(path, requested, extend=settings.extend)
    untouched = False
    try:
        _log_starting(settings, journal, _preview(settings, journal, retry_failed=retry_failed))
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


def _may_send(journal: Journal, options: EngineOptions) -> bool:
    """Whether any window may still need a request (then the flows are checked first)."""
    counts = journal.counts()
    waiting = counts[WindowState.PENDING] + counts[WindowState.SUBMITTING]
    waiting += counts[WindowState.FAILED]
    if options.retry_empty:
        waiting += counts[WindowState.EMPTY]
    return waiting > 0


def _checkpoint_file(settings: Settings, path: Path) -> Path:
    """A checkpoint is a file: a folder given as one is named as such, not as corrupt."""
    if path.is_dir():
        raise ConfigError(
            f"{settings.source('checkpoint')} {path}",
            f"is a folder; give a file path, e.g. {path / 'checkpoint.jsonl'}",
        )
    return path


def _requested_plan(settings: Settings, *, from_checkpoint: bool) -> Plan | None:
    """The plan the options describe; ``retry`` without flows takes the checkpoint's."""
    if from_checkpoint and settings.flow_id is None and not settings.flows:
        return None
    return settings.plan(now=time.time())


def _preview(settings: Settings, journal: Journal, *, retry_failed: bool) -> Preview:
    return preview(
        journal,
        order=settings.order,
        max_attempts=settings.max_attempts,
        retry_failed=retry_failed,
        retry_mode=settings.retry_mode,
    )


def _may_ask(settings: Settings) -> bool:
    """A question needs someone to answer it: a terminal on both ends, and no --yes."""
    return not settings.yes and sys.stdin.isatty() and sys.stderr.isatty()


def _confirm(settings: Settings, ahead: Preview) -> None:
    if ahead.to_send <= CONFIRM_ABOVE:
        return
    sys.stderr.write(
        f"This sends {ahead.to_send:,} runs ({ahead.new_runs:,} new) to organization "
        f"{settings.org_id}, sandbox {settings.sandbox_name}, at {settings.base_url}. "
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
    """The first line of every run: where it sends, and how much."""
    log.info(
        "backfill_starting",
        org=settings.org_id,
        sandbox=settings.sandbox_name,
        base_url=settings.base_url,
        flows=[flow.flow_id for flow in journal.plan.flows],
        shard=None if journal.plan.shard.whole else str(journal.plan.shard),
        checkpoint=str(journal.path),
        **ahead.totals(),
    )


async def dry_run_command(
    settings: Settings,
    *,
    retry_failed: bool = False,
    from_checkpoint: bool = False,
    as_json: bool = False,
    out: Any = None,
) -> ExitCode:
    """``run --dry-run``: every check of the real run, and its counts; nothing is sent.

    Reads the checkpoint without locking or writing it, asks the service only read-only
    questions (a token; whether each table-based flow has a run yet), under the rate.
    Exit 0 when the real run would proceed; 2, with its reason, when it would refuse.
    """
    out = out or sys.stdout
    try:
        settings.refuse_idle_options()
        settings.require_credentials()
        _register_secrets(settings)
        requested = _requested_plan(settings, from_checkpoint=from_checkpoint)
        path = _checkpoint_file(settings, settings.checkpoint_path(existing=from_checkpoint))
        held = holder(path)
        if held is not None:
            raise CheckpointLocked(str(path), held.pid, held.host)
        journal = Journal.open(path, requested, extend=settings.extend, readonly=True)
        service = await _service_view(settings, journal)
    except BackfillError as exc:
        if exc.exit_code in (ExitCode.USAGE, ExitCode.CHECKPOINT_REFUSED):
            raise WouldRefuse(exc) from None
        raise
    ahead = preview(
        journal,
        order=settings.order,
        max_attempts=settings.max_attempts,
        retry_failed=retry_failed,
        retry_mode=settings.retry_mode,
        service=service,
    )
    document = {
        "dry_run": True,
        "org": settings.org_id,
        "sandbox": settings.sandbox_name,
        "base_url": settings.base_url,
        "checkpoint": str(journal.path),
        "checkpoint_exists": journal.path.exists(),
        "shard": str(journal.plan.shard),
        "flows": [flow.as_dict() for flow in ahead.flows],
        "totals": ahead.totals(),
        "would_confirm": ahead.to_send > CONFIRM_ABOVE,
    }
    if as_json:
        out.write(orjson.dumps(document).decode() + "\n")
        return ExitCode.OK
    _print_dry_run(out, document, ahead)
    return ExitCode.OK


class WouldRefuse(BackfillError):
    """The dry run found what would make the real run refuse to start."""

    exit_code = ExitCode.USAGE

    def __init__(self, cause: BackfillError) -> None:
        super().__init__(f"the run would refuse (exit {int(cause.exit_code)}): {cause}")
        self.cause = cause


async def _service_view(settings: Settings, journal: Journal) -> ServiceView:
    """The read-only questions to the service: credentials, which flows have a run, and (with
    ``--existing-runs adopt``) the runs it already holds for windows the checkpoint never saw.

    Flows with a delta column are asked whether they have any run (one request); flows with
    windows the checkpoint has never seen are listed whole, as the real run lists them before
    it sends anything. Every request is under the rate limit and retried like the run's.
    """
    rate = settings.effective_rate(journal.plan.shard.count)
    permits = Permits(RateLimiter(rate))
    backoff = Backoff(cap=settings.backoff_max, max_retries=settings.max_retries)
    rng = random.Random()  # noqa: S311 - jitter, not secrecy
    view = ServiceView()
    recorded = Counter(window.flow_id for window, _ in journal.items())
    shard = journal.plan.shard
    async with _session(settings) as session:
        tokens = _tokens(settings, session)
        client = FlowServiceClient(
            session, settings.base_url, _identity(settings), tokens, permits.take
        )
        # Bad credentials fail here, as in the real run; an IMS outage is retried.
        await retrying(tokens.token, backoff, real_sleep, rng)
        for flow in journal.plan.flows:
            flow_id = flow.flow_id
            adopt = settings.existing_runs is ExistingRuns.ADOPT
            if adopt and recorded[flow_id] < flow.count(shard):
                runs = view.runs.setdefault(flow_id, {})
                href: str | None = None
                while True:
                    page = await retrying(
                        lambda flow_id=flow_id, href=href: client.list_runs(  # type: ignore[misc]
                            flow_id, href=href
                        ),
                        backoff,
                        real_sleep,
                        rng,
                    )
                    for run in page.runs:
                        if run.flow_id == flow_id and run.window_start is not None:
                            runs.setdefault((run.window_start, run.window_end or 0), []).append(run)
                    href = page.next_href
                    if href is None:
                        break
                view.has_run[flow_id] = bool(runs)
            elif flow.delta_column is not None:
                page = await retrying(
                    lambda flow_id=flow_id: client.list_runs(flow_id, limit=1),  # type: ignore[misc]
                    backoff,
                    real_sleep,
                    rng,
                )
                view.has_run[flow_id] = bool(page.runs)
    return view


def _print_dry_run(out: Any, document: dict[str, Any], ahead: Preview) -> None:
    out.write(
        f"dry run: nothing is sent. Organization {document['org']}, sandbox "
        f"{document['sandbox']}, {document['base_url']}\n"
    )
    exists = "" if document["checkpoint_exists"] else " (does not exist yet: it would be created)"
    out.write(f"checkpoint {document['checkpoint']}{exists}\n")
    for flow in ahead.flows:
        out.write(
            f"{flow.flow_id}: {flow.planned:,} windows planned, {flow.done:,} done in the "
            f"checkpoint, {flow.at_service:,} already at the service (adopted, not sent), "
            f"{flow.to_send:,} to send ({flow.new_runs:,} new runs, "
            f"{flow.retriggers:,} re-triggers)"
        )
        if flow.answer_lost:
            out.write(f", {flow.answer_lost:,} with a lost answer to look up first")
        out.write("\n")
        if flow.first is not None and flow.last is not None:
            out.write(
                f"  first {format_time(flow.first.start)} .. {format_time(flow.first.end)}, "
                f"last {format_time(flow.last.start)} .. {format_time(flow.last.end)}\n"
            )
        if flow.delta_column is not None:
            sent = "sent with the first run" if flow.sends_delta_column else "not sent"
            why = ""
            if not flow.sends_delta_column:
                why = (
                    " (the flow already has a run)"
                    if flow.flow_has_run
                    else " (another shard sends the flow's first run)"
                    if not flow.owns_first
                    else " (no new run to send)"
                )
            out.write(f"  delta column {flow.delta_column}: {sent}{why}\n")
    totals = ahead.totals()
    out.write(
        f"in all: {totals['planned']:,} planned, {totals['done']:,} done, "
        f"{totals['to_send']:,} to send\n"
    )
    if document["would_confirm"]:
        out.write(
            f"more than {CONFIRM_ABOVE:,} runs: on a terminal the run asks first (--yes skips)\n"
        )


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
    options = _engine_options(
        settings, retry_failed=retry_failed, retry_empty=retry_empty, shard=plan.shard
    )
    async with _session(settings) as session:
        tokens = _tokens(settings, session)
        limiter = RateLimiter(rate)
        permits = Permits(limiter)
        client = FlowServiceClient(
            session, settings.base_url, _identity(settings), tokens, permits.take
        )
        # Bad credentials fail here, before anything is sent; an IMS outage is retried.
        await retrying(tokens.token, options.backoff, real_sleep, random.Random())  # noqa: S311
        if _may_send(journal, options):
            # Each flow once, before anything is sent (its GET takes a rate permit).
            with_column = await preflight(
                client,
                plan.flows,
                sandbox=settings.sandbox_name,
                backoff=options.backoff,
                max_retry_after=options.max_retry_after,
            )
            options = replace(options, flows_with_delta_column=with_column)
        engine = Engine(journal, client, limiter, options, permits=permits)
        metrics = _metrics(settings, journal, engine, client, limiter, tokens, plan)
        log.info(
            "backfill_started",
            windows=plan.count(),
            shard=str(plan.shard),
            rate=str(rate),
            concurrency=options.concurrency,
            checkpoint=str(journal.path),
            **_counts_dict(journal),
        )
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


async def status_command(
    settings: Settings,
    paths: list[Path],
    *,
    as_json: bool,
    refresh: bool,
    html: str | None = None,
    out: Any = None,
    patterns: list[str] | None = None,
) -> ExitCode:
    """Show one or several (shard) checkpoints; ``refresh`` asks the service first."""
    out = out or sys.stdout
    if html is not None:
        from .coverage import check_page_path  # noqa: PLC0415 - only when asked

        check_page_path(html)
    if refresh:
        settings.require_credentials()
        _register_secrets(settings)
        for path in paths:
            journal = Journal.open(path, None)
            try:
                async with _session(settings) as session:
                    tokens = _tokens(settings, session)
                    # Follow every unfinished run for one poll, as --wait would.
                    options = replace(
                        _engine_options(settings, retry_failed=False, shard=journal.plan.shard),
                        wait=True,
                    )
                    limiter = RateLimiter(settings.effective_rate(journal.plan.shard.count))
                    permits = Permits(limiter)
                    client = FlowServiceClient(
                        session, settings.base_url, _identity(settings), tokens, permits.take
                    )
                    engine = Engine(journal, client, limiter, options, permits=permits)
                    await engine.refresh()
            finally:
                await journal.close()
    journals = [Journal.open(path, None, readonly=True) for path in paths]
    if html is not None:
        from .coverage import write_page  # noqa: PLC0415 - only when asked

        data = write_page(Path(html), journals)
        out.write(f"{html}: coverage of {data['windows']:,} windows; open it in a browser\n")
        return ExitCode.OK
    holders = {journal.path: holder(journal.path) for journal in journals}
    planned, missing = _shard_coverage(journals, patterns or [])
    if as_json:
        extra = {
            "planned": planned,
            "checkpoints": [
                {
                    "path": str(journal.path),
                    "shard": str(journal.plan.shard),
                    "planned": journal.plan.count(),
                    "counts": {s.value: n for s, n in journal.counts().items()},
                    "held_by": _holder_dict(holders[journal.path]),
                }
                for journal in journals
            ],
            "missing_shards": [{"shard": i, "path": p} for i, p in missing],
        }
        sink = out.buffer if hasattr(out, "buffer") else None
        for chunk in status_document(journals, extra):
            if sink is not None:
                sink.write(chunk)
            else:
                out.write(chunk.decode())
        return ExitCode.OK
    totals = dict.fromkeys(WindowState, 0)
    for journal in journals:
        counts = journal.counts()
        for state, n in counts.items():
            totals[state] += n
        _print_status(out, journal, counts, holders[journal.path])
    if len(journals) > 1 or missing:
        out.write(f"all shards: {planned:,} windows planned; {_describe_counts(totals)}\n")
        for index, where in missing:
            out.write(f"  shard {index}: no checkpoint at {where} (not started, or elsewhere)\n")
    return ExitCode.OK


def _print_status(
    out: Any, journal: Journal, counts: dict[WindowState, int], held: Holder | None
) -> None:
    plan = journal.plan
    shard = "" if plan.shard.whole else f" (shard {plan.shard})"
    out.write(
        f"{journal.path}{shard}: {plan.count():,} windows planned; {_describe_counts(counts)}\n"
    )
    if held is not None:
        where = "" if held.here else f" on {held.host}"
        since = f" since {format_time(int(held.since))}" if held.since else ""
        unsure = "" if held.alive() else " (another host: whether it still runs is not known)"
        out.write(f"  in use by process {held.pid}{where}{since}{unsure}\n")
    for flow in plan.flows:
        out.write(f"  {flow.flow_id}: {flow.describe()}\n")
    out.write(f"  {records_line(journal.record_totals())}\n")
    sending = [w for w, _ in journal.items({WindowState.SUBMITTING})]
    label = LABELS[WindowState.SUBMITTING]
    if held is not None:
        # The holder is sending these now (or waits for its turn under the rate): not lost.
        if sending:
            out.write(f"  {len(sending):,} {label}: being sent by process {held.pid}\n")
    else:
        for window in sending[:20]:
            out.write(
                f"  {label}, answer lost or never sent: {window.flow_id} "
                f"{format_time(window.start)} .. {format_time(window.end)} "
                "(looked up at the service on the next run)\n"
            )
        if len(sending) > 20:
            out.write(f"  ... and {len(sending) - 20:,} more {label}, answer lost or never sent\n")
    for window, entry in journal.items(noted=True):
        if entry.candidates:
            out.write(
                f"  {label}, kept: {window.flow_id} {format_time(window.start)}: the service "
                f"lists run(s) {', '.join(entry.candidates)} without their window; look them "
                "up before running again\n"
            )
    for window, entry in duplicate_windows(journal)[:20]:
        out.write(
            f"  duplicate: {window.flow_id} {format_time(window.start)} run {entry.run_id} "
            f"and live run(s) {', '.join(entry.duplicates)} at the service\n"
        )
    failed = list(journal.items({WindowState.FAILED}))
    for window, entry in failed[:20]:
        reason = _reason(entry.errors)
        what = (
            f"failed, waiting for attempt {entry.attempt + 1}"
            if entry.retrying
            else f"failed for good after {entry.attempt} attempt(s)"
        )
        out.write(
            f"  {what}: {window.flow_id} {format_time(window.start)} run {entry.run_id}: {reason}\n"
        )
    if len(failed) > 20:
        out.write(f"  ... and {len(failed) - 20:,} more failed\n")
    # Empty and partial runs succeeded, so they do not fail the backfill; they are shown.
    for state, hint in (
        (WindowState.EMPTY, "no record ingested; `retry --empty` re-triggers it"),
        (WindowState.PARTIAL, "some records failed"),
    ):
        found = list(journal.items({state}))
        for window, entry in found[:20]:
            records = entry.counts.as_dict() if entry.counts else {}
            counted = ", ".join(f"{k} {v:,}" for k, v in records.items() if k in _RECORDS)
            out.write(
                f"  {LABELS[state]}: {window.flow_id} {format_time(window.start)} run "
                f"{entry.run_id}: {counted or 'no counts'} ({hint})\n"
            )
        if len(found) > 20:
            out.write(f"  ... and {len(found) - 20:,} more {LABELS[state]}\n")


_RECORDS = ("input", "output", "failed")


def _reason(errors: list[dict[str, str]] | None) -> str:
    for error in errors or []:
        message = error.get("message") or error.get("code")
        if message:
            return message
    return "the service gave no reason"


def _holder_dict(held: Holder | None) -> dict[str, Any] | None:
    if held is None:
        return None
    return {"pid": held.pid, "host": held.host, "since": held.since}


def _shard_coverage(
    journals: list[Journal], patterns: list[str]
) -> tuple[int, list[tuple[int, str]]]:
    """The whole plan's windows, and the shards no checkpoint was found for (with where)."""
    plan = journals[0].plan
    count = plan.shard.count
    if count == 1:
        return sum(j.plan.count() for j in journals), []
    planned = Plan(plan.flows, Shard()).count()
    found = {j.plan.shard.index for j in journals}
    pattern = patterns[0] if patterns else str(journals[0].path)
    missing = [
        (i, str(Settings.shard_path(pattern, Shard(i, count))))
        for i in range(count)
        if i not in found
    ]
    return planned, missing


def find_checkpoints(settings: Settings, given: list[str]) -> list[Path]:
    """The checkpoint files ``status`` reads: as given, or every shard's."""
    patterns = given or [settings.checkpoint]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            raise ConfigError(
                f"--checkpoint {path}", "is a folder; give the checkpoint file inside it"
            )
        if "{shard}" in pattern:
            found.extend(_glob(Path(pattern.replace("{shard}", "*"))))
        elif path.exists():
            found.append(path)
        else:
            shards = _glob(path.with_name(f"{path.stem}.shard-*{path.suffix}"))
            if not shards:
                raise CheckpointMissing(str(path))
            found.extend(shards)
    # A file named twice (a path and its shard pattern, ./ck.jsonl and ck.jsonl) is read once:
    # counted twice, every window of it would be too.
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _glob(pattern: Path) -> list[Path]:
    return sorted(p for p in pattern.parent.glob(pattern.name) if not p.name.endswith(".lock"))


# ---------------------------------------------------------------- wiring helpers


@contextlib.asynccontextmanager
async def _session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    import aiohttp  # noqa: PLC0415 - only a run needs HTTP: plan and --help start faster

    connector = aiohttp.TCPConnector(limit=settings.concurrency + 8, ttl_dns_cache=300)
    # One deadline per request rather than aiohttp's per-read timer (sock_read), which is
    # rescheduled on every chunk received: measurably cheaper at thousands of requests a second.
    timeout = aiohttp.ClientTimeout(
        total=settings.request_timeout,
        connect=settings.connect_timeout,
        sock_connect=settings.connect_timeout,
    )
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=False
    ) as session:
        yield session


def _tokens(settings: Settings, session: aiohttp.ClientSession) -> TokenProvider:
    if settings.client_id and settings.client_secret is not None:
        return ClientCredentials(
            session,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            scopes=settings.scopes,
            ims_url=settings.ims_url,
            on_token=register_secret,
        )
    if settings.access_token is None:
        raise ConfigError("BACKFILL_ACCESS_TOKEN", "missing")
    return StaticToken(settings.access_token)


def _identity(settings: Settings) -> ApiIdentity:
    settings.require_credentials()
    # An OAuth credential's client id is its x-api-key: BACKFILL_API_KEY may be left out.
    api_key = settings.api_key or settings.client_id or ""
    return ApiIdentity(api_key, settings.org_id or "", settings.sandbox_name)


def _register_secrets(settings: Settings) -> None:
    for secret in (settings.access_token, settings.client_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())


def _engine_options(
    settings: Settings, *, retry_failed: bool, shard: Shard, retry_empty: bool = False
) -> EngineOptions:
    return EngineOptions(
        concurrency=settings.concurrency,
        order=settings.order,
        wait=settings.wait,
        max_active_runs=settings.effective_max_active_runs(shard),
        max_attempts=settings.max_attempts,
        retry_mode=settings.retry_mode,
        on_failure=settings.on_failure,
        retry_failed=retry_failed,
        retry_empty=retry_empty or settings.retry_empty,
        run_timeout=settings.run_timeout,
        poll_interval=settings.poll_interval,
        poll_max_interval=max(settings.poll_interval, 120.0),
        reconcile_delay=settings.reconcile_delay,
        reconcile_settle=settings.reconcile_settle,
        existing_runs=settings.existing_runs,
        backoff=Backoff(cap=settings.backoff_max, max_retries=settings.max_retries),
        max_retry_after=settings.max_retry_after,
    )


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
    from .metrics import Metrics, MetricsSource  # noqa: PLC0415 - prometheus only when asked

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
        from .coverage import LivePage  # noqa: PLC0415 - only when asked

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


def _check_writable(settings: Settings, field: str, path: Path | None) -> None:
    """A file written at the end (report, metrics) must be writable from the start: exit 2 now,
    before the checkpoint is created or changed, not a traceback after the whole backfill."""
    if path is None:
        return
    problem = write_target_problem(path)  # the settings' own check, on the shard's path
    if problem is not None:
        raise ConfigError(f"{settings.source(field)} {path}", problem)


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


def _counts_dict(journal: Journal) -> dict[str, int]:
    return {state.value: n for state, n in journal.counts().items() if n}


def _describe_counts(counts: dict[WindowState, int]) -> str:
    return ", ".join(f"{n:,} {LABELS[s]}" for s, n in counts.items() if n) or "nothing recorded"


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
        log.info(
            "resuming", path=str(journal.path), records=replay.records, **_counts_dict(journal)
        )


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
