"""What every command that talks to the service or opens a checkpoint builds the same way.

The HTTP session, the token provider, the API identity, the engine's options from the
settings, the questions asked before anything is sent, and the checkpoint path checks:
``run``, ``retry``, ``run --dry-run`` and ``status --refresh`` share them, so each is written
once.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from backfill.auth import ClientCredentials, StaticToken, TokenProvider
from backfill.client import ApiIdentity, FlowServiceClient
from backfill.engine import EngineOptions, ExistingRuns
from backfill.engine.preflight import preflight
from backfill.errors import ConfigError
from backfill.journal import Journal
from backfill.limits import Backoff, real_sleep
from backfill.logs import register_secret
from backfill.planner import Plan, Shard
from backfill.retry import retrying
from backfill.settings import Settings
from backfill.state import LABELS, WindowState

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "checked_start",
    "checkpoint_file",
    "counts_dict",
    "describe_counts",
    "engine_options",
    "first_contact",
    "http_session",
    "identity",
    "may_send",
    "refuse_unconfirmed_ignore",
    "register_secrets",
    "requested_plan",
    "token_provider",
]


def checked_start(settings: Settings, *, from_checkpoint: bool) -> tuple[Plan | None, Path]:
    """What ``run``, ``retry`` and their dry run check before they open the checkpoint: the
    options, the credentials, the confirmation ``ignore`` needs, the paths written (the
    checkpoint's, the report's, the metrics file's), the plan and its shard's
    ``max_active_runs``. Returns the plan asked for (``None``: ``retry`` takes the
    checkpoint's) and the checkpoint's path. Nothing is written."""
    settings.refuse_idle_options()
    settings.require_credentials()
    refuse_unconfirmed_ignore(settings)
    settings.check_run_paths(existing=from_checkpoint)
    register_secrets(settings)
    requested = requested_plan(settings, from_checkpoint=from_checkpoint)
    if requested is not None:
        settings.effective_max_active_runs(requested.shard)  # refused before the checkpoint
    return requested, checkpoint_file(settings, settings.checkpoint_path(existing=from_checkpoint))


def checkpoint_file(settings: Settings, path: Path) -> Path:
    """A checkpoint is a file: a folder given as one is named as such, not as corrupt."""
    if path.is_dir():
        raise ConfigError(
            f"{settings.source('checkpoint')} {path}",
            f"is a folder; give a file path, e.g. {path / 'checkpoint.jsonl'}",
        )
    return path


def requested_plan(settings: Settings, *, from_checkpoint: bool) -> Plan | None:
    """The plan the options describe; ``retry`` without flows takes the checkpoint's."""
    if from_checkpoint and settings.flow_id is None and not settings.flows:
        return None
    return settings.plan(now=time.time())


@contextlib.asynccontextmanager
async def http_session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
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


def token_provider(settings: Settings, session: aiohttp.ClientSession) -> TokenProvider:
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


def identity(settings: Settings) -> ApiIdentity:
    settings.require_credentials()
    # An OAuth credential's client id is its x-api-key: BACKFILL_API_KEY may be left out.
    api_key = settings.api_key or settings.client_id or ""
    return ApiIdentity(api_key, settings.org_id or "", settings.sandbox_name)


def register_secrets(settings: Settings) -> None:
    for secret in (settings.access_token, settings.client_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())


def engine_options(
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


def refuse_unconfirmed_ignore(settings: Settings) -> None:
    """``--existing-runs ignore`` may ingest windows twice: only with ``--yes``."""
    if settings.existing_runs is ExistingRuns.IGNORE and not settings.yes:
        raise ConfigError(
            "--existing-runs",
            "'ignore' sends windows the service may already have runs for, which ingests them "
            "twice; add --yes to confirm, or leave it at 'adopt'",
        )


async def first_contact(
    settings: Settings,
    journal: Journal,
    client: FlowServiceClient,
    tokens: TokenProvider,
    options: EngineOptions,
) -> EngineOptions:
    """What a run asks before it sends anything, and its dry run the same way: a token (bad
    credentials fail here; an IMS outage is retried), then, when any window may still need a
    request, each flow's pre-flight (``GET /flows/{id}``, under the rate). The options come
    back knowing which flows' Copy transformation already has its delta column."""
    await retrying(tokens.token, options.backoff, real_sleep, random.Random())  # noqa: S311
    if not may_send(journal, options):
        return options
    with_column = await preflight(
        client,
        journal.plan.flows,
        sandbox=settings.sandbox_name,
        backoff=options.backoff,
        max_retry_after=options.max_retry_after,
    )
    return replace(options, flows_with_delta_column=with_column)


def may_send(journal: Journal, options: EngineOptions) -> bool:
    """Whether any window may still need a request (then the flows are checked first)."""
    counts = journal.counts()
    waiting = counts[WindowState.PENDING] + counts[WindowState.SUBMITTING]
    waiting += counts[WindowState.FAILED]
    if options.retry_empty:
        waiting += counts[WindowState.EMPTY]
    return waiting > 0


def counts_dict(journal: Journal) -> dict[str, int]:
    return {state.value: n for state, n in journal.counts().items() if n}


def describe_counts(counts: dict[WindowState, int]) -> str:
    return ", ".join(f"{n:,} {LABELS[s]}" for s, n in counts.items() if n) or "nothing recorded"
