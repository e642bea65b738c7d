"""``backfill run --dry-run``: every check of the real run, and its counts; nothing is sent.

The checkpoint is read without locking or writing it; the service is asked only read-only
questions, under the rate limit.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from typing import Any

import orjson

from backfill.choices import CONFIRM_ABOVE
from backfill.client import FlowServiceClient
from backfill.engine import ExistingRuns
from backfill.errors import BackfillError, CheckpointLocked, ExitCode
from backfill.journal import Journal, holder
from backfill.limits import Backoff, RateLimiter, real_sleep
from backfill.permits import Permits
from backfill.planner import format_time
from backfill.preview import Preview, ServiceView, preview
from backfill.retry import retrying
from backfill.settings import Settings

from .wiring import (
    checkpoint_file,
    http_session,
    identity,
    register_secrets,
    requested_plan,
    token_provider,
)

__all__ = ["dry_run_command"]


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
        register_secrets(settings)
        requested = requested_plan(settings, from_checkpoint=from_checkpoint)
        path = checkpoint_file(settings, settings.checkpoint_path(existing=from_checkpoint))
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
    async with http_session(settings) as session:
        tokens = token_provider(settings, session)
        client = FlowServiceClient(
            session, settings.base_url, identity(settings), tokens, permits.take
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
