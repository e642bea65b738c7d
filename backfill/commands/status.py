"""``backfill status``: one or several (shard) checkpoints, as text, JSON or a coverage page.

Read-only, except with ``--refresh``: then each unfinished run is polled once (as ``--wait``
would) and its outcome recorded before the checkpoints are shown.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from backfill.client import FlowServiceClient
from backfill.engine import Engine
from backfill.errors import CheckpointMissing, ConfigError, ExitCode
from backfill.journal import Holder, Journal, holder
from backfill.limits import RateLimiter
from backfill.permits import Permits
from backfill.planner import Plan, Shard, Window, format_time
from backfill.report import duplicate_windows, records_line, status_document
from backfill.settings import Settings
from backfill.state import LABELS, WindowState

from .wiring import (
    describe_counts,
    engine_options,
    http_session,
    identity,
    register_secrets,
    token_provider,
)

__all__ = ["find_checkpoints", "status_command"]

STDOUT = "-"  # --html -: the page goes to standard output


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
        if as_json:
            raise ConfigError(
                "--json",
                "cannot go with --html: --html writes the coverage page, --json a JSON "
                "document; give one of them",
            )
        if html != STDOUT:
            from backfill.coverage import check_page_path  # noqa: PLC0415 - only when asked

            check_page_path(html)
    if refresh:
        settings.require_credentials()
        register_secrets(settings)
        for path in paths:
            journal = Journal.open(path, None)
            try:
                async with http_session(settings) as session:
                    tokens = token_provider(settings, session)
                    # Follow every unfinished run for one poll, as --wait would.
                    options = replace(
                        engine_options(settings, retry_failed=False, shard=journal.plan.shard),
                        wait=True,
                    )
                    limiter = RateLimiter(settings.effective_rate(journal.plan.shard.count))
                    permits = Permits(limiter)
                    client = FlowServiceClient(
                        session, settings.base_url, identity(settings), tokens, permits.take
                    )
                    engine = Engine(journal, client, limiter, options, permits=permits)
                    await engine.refresh()
            finally:
                await journal.close()
    journals = [Journal.open(path, None, readonly=True) for path in paths]
    if html == STDOUT:
        from backfill.coverage import page_data, render  # noqa: PLC0415 - only when asked

        out.write(render(page_data(journals)))  # the page alone: `> page.html`, or a pipe
        return ExitCode.OK
    if html is not None:
        from backfill.coverage import write_page  # noqa: PLC0415 - only when asked

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
        out.write(f"all shards: {planned:,} windows planned; {describe_counts(totals)}\n")
        for index, where in missing:
            out.write(f"  shard {index}: no checkpoint at {where} (not started, or elsewhere)\n")
    return ExitCode.OK


def _print_status(
    out: Any, journal: Journal, counts: dict[WindowState, int], held: Holder | None
) -> None:
    plan = journal.plan
    flows = {flow.flow_id: flow for flow in plan.flows}

    def at(window: Window, moment: int | None = None) -> str:
        """A window's moment as its plan's zone shows it (local with the offset; Z in UTC)."""
        return flows[window.flow_id].show(window.start if moment is None else moment)

    shard = "" if plan.shard.whole else f" (shard {plan.shard})"
    out.write(
        f"{journal.path}{shard}: {plan.count():,} windows planned; {describe_counts(counts)}\n"
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
                f"{at(window)} .. {at(window, window.end)} "
                "(looked up at the service on the next run)\n"
            )
        if len(sending) > 20:
            out.write(f"  ... and {len(sending) - 20:,} more {label}, answer lost or never sent\n")
    for window, entry in journal.items(noted=True):
        if entry.candidates:
            out.write(
                f"  {label}, kept: {window.flow_id} {at(window)}: the service "
                f"lists run(s) {', '.join(entry.candidates)} without their window; look them "
                "up before running again\n"
            )
    for window, entry in duplicate_windows(journal)[:20]:
        out.write(
            f"  duplicate: {window.flow_id} {at(window)} run {entry.run_id} "
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
        out.write(f"  {what}: {window.flow_id} {at(window)} run {entry.run_id}: {reason}\n")
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
                f"  {LABELS[state]}: {window.flow_id} {at(window)} run "
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
