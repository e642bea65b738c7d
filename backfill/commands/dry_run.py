"""``backfill run --dry-run``: every check of the real run, and its counts; nothing is sent.

The checkpoint is read without locking or writing it; the service is asked only read-only
questions, under the rate limit.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from backfill.choices import CONFIRM_ABOVE
from backfill.client import FlowServiceClient
from backfill.engine.survey import survey
from backfill.errors import BackfillError, CheckpointLocked, ExitCode
from backfill.journal import Journal, holder
from backfill.limits import RateLimiter
from backfill.permits import Permits
from backfill.planner import format_time
from backfill.preview import Preview, ServiceView, preview
from backfill.settings import Settings

from .wiring import (
    checked_start,
    engine_options,
    first_contact,
    http_session,
    identity,
    token_provider,
)

__all__ = ["dry_run_command"]


async def dry_run_command(
    settings: Settings,
    *,
    retry_failed: bool = False,
    retry_empty: bool = False,
    from_checkpoint: bool = False,
    as_json: bool = False,
    out: Any = None,
) -> ExitCode:
    """``run --dry-run``: every check of the real run, and its counts; nothing is sent.

    Reads the checkpoint without locking or writing it, asks the service only read-only
    questions (a token; each flow's pre-flight; the runs it holds), under the rate.
    Exit 0 when the real run would proceed; 2, with its reason, when it would refuse.
    """
    out = out or sys.stdout
    try:
        requested, path = checked_start(settings, from_checkpoint=from_checkpoint)
        held = holder(path)
        if held is not None:
            raise CheckpointLocked(str(path), held.pid, held.host)
        journal = Journal.open(path, requested, extend=settings.extend, readonly=True)
        service = await _service_view(
            settings, journal, retry_failed=retry_failed, retry_empty=retry_empty
        )
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
        retry_empty=retry_empty or settings.retry_empty,
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


async def _service_view(
    settings: Settings, journal: Journal, *, retry_failed: bool, retry_empty: bool
) -> ServiceView:
    """The read-only questions the real run asks before it sends anything, asked the same way.

    The credentials (a token); when any window may still need a request, the pre-flight of
    every flow (``GET /flows/{id}``: unknown or hidden flow, a schedule other than once, a
    conflicting delta column refuse the run, exit 2); then the runs the real run reads before
    sending (``backfill.engine.survey``: adoption's listings and the delta-column gate's
    question), through the engine's one pager. Every request is under the rate limit and
    retried within the one retry budget, as the run's are.
    """
    plan = journal.plan
    options = engine_options(
        settings, retry_failed=retry_failed, retry_empty=retry_empty, shard=plan.shard
    )
    permits = Permits(RateLimiter(settings.effective_rate(plan.shard.count)))
    async with http_session(settings) as session:
        tokens = token_provider(settings, session)
        client = FlowServiceClient(
            session, settings.base_url, identity(settings), tokens, permits.take
        )
        options = await first_contact(settings, journal, client, tokens, options)
        return await survey(journal, client, permits, options)


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
                    " (the flow's Copy transformation already has it)"
                    if flow.column_at_service
                    else " (the flow already has a run)"
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
