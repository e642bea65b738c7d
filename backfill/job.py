"""One command's work, wired together: settings in, an exit code out.

This is where the parts meet -- plan, checkpoint, HTTP session, tokens, limiter, engine,
progress, report, metrics -- and where signals are turned into a graceful stop. The CLI
above it only parses and prints; the modules below it know nothing of each other's setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from .auth import ClientCredentials, StaticToken, TokenProvider
from .client import ApiIdentity, FlowServiceClient
from .engine import Engine, EngineOptions, Outcome
from .errors import BackfillError, CheckpointMissing, ConfigError, ExitCode
from .journal import Journal
from .limits import Backoff, RateLimiter
from .logs import register_secret
from .planner import Plan, format_time
from .report import (
    Snapshot,
    plan_summary,
    print_summary,
    progress_task,
    status_document,
    write_report,
)
from .settings import Settings
from .state import WindowState

if TYPE_CHECKING:
    import aiohttp

    from .metrics import Metrics

__all__ = ["plan_command", "run_command", "status_command"]

log = structlog.get_logger("backfill")


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
    from_checkpoint: bool = False,
    json_lines: bool = True,
    live: bool = False,
) -> ExitCode:
    """``run`` (and ``retry``): submit every window not yet accepted, resumably."""
    settings.require_credentials()
    _register_secrets(settings)
    requested = None if from_checkpoint else settings.plan(now=time.time())
    path = settings.checkpoint_path(existing=from_checkpoint)
    journal = Journal.open(path, requested, extend=settings.extend)
    try:
        _log_opened(journal)
        return await _run(
            settings, journal, retry_failed=retry_failed, json_lines=json_lines, live=live
        )
    finally:
        await journal.close()


async def _run(
    settings: Settings, journal: Journal, *, retry_failed: bool, json_lines: bool, live: bool
) -> ExitCode:
    loop = asyncio.get_running_loop()
    plan = journal.plan
    rate = settings.effective_rate(plan.shard.count)  # a retried checkpoint knows its shard
    options = _engine_options(settings, retry_failed=retry_failed)
    async with _session(settings) as session:
        tokens = _tokens(settings, session)
        client = FlowServiceClient(session, settings.base_url, _identity(settings), tokens)
        limiter = RateLimiter(rate)
        engine = Engine(journal, client, limiter, options)
        metrics = _metrics(settings, journal, engine, client, limiter, tokens, plan)
        await tokens.token()  # bad credentials fail here, before anything is sent
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
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        await journal.commit()
        snapshot = _snapshot(journal, engine, client, options.wait, engine.started, start_done)
        code = _exit_code(outcome, snapshot, received)
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
                in_doubt=snapshot.counts[WindowState.SUBMITTING],
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
    """SIGTERM/SIGINT: stop taking windows, give requests in flight ``grace`` seconds."""

    def on_signal(sig: signal.Signals) -> None:
        if received and sig is signal.SIGINT:
            # A second Ctrl-C: leave now. Every acted-on request's intent is already on disk.
            os._exit(ExitCode.SIGINT)
        if not received:
            received.append(sig)
            engine.stop(f"received {sig.name}")
            loop.call_later(grace, work.cancel)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


async def status_command(
    settings: Settings, paths: list[Path], *, as_json: bool, refresh: bool, out: Any = None
) -> ExitCode:
    """Show one or several (shard) checkpoints; ``refresh`` asks the service first."""
    out = out or sys.stdout
    if refresh:
        settings.require_credentials()
        _register_secrets(settings)
        for path in paths:
            journal = Journal.open(path, None)
            try:
                async with _session(settings) as session:
                    tokens = _tokens(settings, session)
                    client = FlowServiceClient(
                        session, settings.base_url, _identity(settings), tokens
                    )
                    # Follow every unfinished run for one poll, as --wait would.
                    options = replace(_engine_options(settings, retry_failed=False), wait=True)
                    limiter = RateLimiter(settings.effective_rate(journal.plan.shard.count))
                    engine = Engine(journal, client, limiter, options)
                    await engine.refresh()
            finally:
                await journal.close()
    journals = [Journal.open(path, None, readonly=True) for path in paths]
    if as_json:
        sink = out.buffer if hasattr(out, "buffer") else None
        for chunk in status_document(journals):
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
        plan = journal.plan
        shard = "" if plan.shard.whole else f" (shard {plan.shard})"
        out.write(f"{journal.path}{shard}: {_describe_counts(counts)}\n")
        for flow in plan.flows:
            out.write(f"  {flow.flow_id}: {flow.describe()}\n")
        doubt = [w for w, _ in journal.items({WindowState.SUBMITTING})]
        for window in doubt[:20]:
            out.write(
                f"  in doubt: {window.flow_id} {format_time(window.start)} .. "
                f"{format_time(window.end)} (answer lost; reconciled on the next run)\n"
            )
        if len(doubt) > 20:
            out.write(f"  ... and {len(doubt) - 20} more in doubt\n")
        failed = list(journal.items({WindowState.FAILED}))
        for window, entry in failed[:20]:
            message = (entry.errors or [{}])[0].get("message", "")
            out.write(
                f"  failed: {window.flow_id} {format_time(window.start)} run {entry.run_id} "
                f"after {entry.attempt} attempt(s): {message}\n"
            )
    if len(journals) > 1:
        out.write(f"all shards: {_describe_counts(totals)}\n")
    return ExitCode.OK


def find_checkpoints(settings: Settings, given: list[str]) -> list[Path]:
    """The checkpoint files ``status`` reads: as given, or every shard's."""
    patterns = given or [settings.checkpoint]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if "{shard}" in pattern:
            found.extend(_glob(Path(pattern.replace("{shard}", "*"))))
        elif path.exists():
            found.append(path)
        else:
            shards = _glob(path.with_name(f"{path.stem}.shard-*{path.suffix}"))
            if not shards:
                raise CheckpointMissing(str(path))
            found.extend(shards)
    return found


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
    return ApiIdentity(settings.api_key or "", settings.org_id or "", settings.sandbox_name)


def _register_secrets(settings: Settings) -> None:
    for secret in (settings.access_token, settings.client_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())


def _engine_options(settings: Settings, *, retry_failed: bool) -> EngineOptions:
    return EngineOptions(
        concurrency=settings.concurrency,
        order=settings.order,
        wait=settings.wait,
        max_active_runs=settings.max_active_runs,
        max_attempts=settings.max_attempts,
        retry_mode=settings.retry_mode,
        on_failure=settings.on_failure,
        retry_failed=retry_failed,
        poll_interval=settings.poll_interval,
        poll_max_interval=max(settings.poll_interval, 120.0),
        reconcile_delay=settings.reconcile_delay,
        backoff=Backoff(),
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
        ),
        shard=str(plan.shard),
    )
    if settings.metrics_port is not None:
        port = metrics.serve(settings.metrics_port)
        log.info("metrics_serving", port=port)
    return metrics


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
        extra={
            "submitted": stats.submitted,
            "answers_lost": stats.in_doubt,
            "adopted_after_doubt": stats.adopted,
            "resent_after_doubt": stats.resent_after_doubt,
            "retried_runs": stats.retried_runs,
            "request_retries": stats.request_retries,
            "duplicates_found": stats.duplicates_found,
            "list_requests": stats.list_requests,
            "polls": stats.polls,
            "reconciliations": stats.reconciliations,
        },
    )


def _exit_code(outcome: Outcome, snapshot: Snapshot, received: list[signal.Signals]) -> ExitCode:
    if outcome.error is not None:
        return outcome.error.exit_code
    if received:
        return ExitCode.SIGTERM if received[0] is signal.SIGTERM else ExitCode.SIGINT
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
        ExitCode.SIGINT: "interrupted",
        ExitCode.SIGTERM: "interrupted",
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
        "unknown_statuses": sorted(engine.unknown_statuses),
    }


def _counts_dict(journal: Journal) -> dict[str, int]:
    return {state.value: n for state, n in journal.counts().items() if n}


def _describe_counts(counts: dict[WindowState, int]) -> str:
    labels = {WindowState.SUBMITTING: "in doubt"}
    return ", ".join(f"{n:,} {labels.get(s, s.value)}" for s, n in counts.items() if n) or "empty"


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
