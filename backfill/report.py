"""What people and machines are told: live progress, the final summary, the JSON report.

Nothing here changes state: it reads the journal's counts and the engine's counters.
On a terminal, progress is a live rich display; elsewhere it is a ``progress`` log event at a
fixed interval, and the summary is one ``summary`` event, so every line parses as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import structlog

from .journal import Entry, Journal
from .logs import best_effort
from .planner import Window, format_time
from .state import LABELS, WindowState

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "Snapshot",
    "duplicate_windows",
    "print_summary",
    "progress_task",
    "records_line",
    "status_document",
    "window_rows",
    "write_report",
]

log = structlog.get_logger("backfill.report")

_ORDER = list(WindowState)

_SUMMARY_WIDTH = 120


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A moment of a backfill: window counts and request counters."""

    counts: dict[WindowState, int]
    total: int
    elapsed: float
    wait: bool
    requests: int = 0
    rate_limited: int = 0
    done_at_start: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)  # input, output, failed: summed

    @property
    def done(self) -> int:
        """Windows that need nothing more: accepted (or, with --wait, finished)."""
        c = self.counts
        if self.wait:
            return sum(c[s] for s in WindowState if s.finished)
        return sum(c[s] for s in WindowState if s.accepted)

    @property
    def per_second(self) -> float:
        # `retry` turns failed windows back into work, so "done" can fall below where it
        # started: the rate of this invocation is never negative.
        gained = max(0, self.done - self.done_at_start)
        return gained / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.per_second
        return (self.total - self.done) / rate if rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {state.value: self.counts[state] for state in _ORDER},
            "total": self.total,
            "done": self.done,
            "elapsed_s": round(self.elapsed, 3),
            "windows_per_s": round(self.per_second, 2),
            "eta_s": round(self.eta, 1) if self.eta is not None else None,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            **self.extra,
            "records": dict(self.records),
        }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _table(snapshot: Snapshot, title: str) -> Table:
    from rich.table import Table  # noqa: PLC0415 - rich only for a terminal (start-up cost)

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for state in _ORDER:
        table.add_column(LABELS[state], justify="right")
    table.add_row(*(f"{snapshot.counts[state]:,}" for state in _ORDER))
    return table


def _progress_line(snapshot: Snapshot) -> Table:
    from rich.table import Table  # noqa: PLC0415 - rich only for a terminal (start-up cost)

    grid = Table.grid(padding=(0, 2))
    share = snapshot.done / snapshot.total if snapshot.total else 1.0
    width = 30
    filled = int(share * width)
    grid.add_row(
        f"[bold]{snapshot.done:,}/{snapshot.total:,}[/] windows",
        "[green]" + "█" * filled + "[/]" + "░" * (width - filled) + f" {share:6.1%}",
        f"{snapshot.per_second:,.1f}/s",
        f"ETA {_duration(snapshot.eta)}",
        f"{snapshot.requests:,} requests, {snapshot.rate_limited:,} throttled",
    )
    outer = Table.grid()
    outer.add_row(grid)
    outer.add_row(_table(snapshot, ""))
    return outer


async def progress_task(
    snapshot: Callable[[], Snapshot],
    *,
    interval: float,
    live: bool,
    stream: TextIO | None = None,
) -> None:
    """Show progress until cancelled: a live display on a terminal, else log events."""
    if live:
        from rich.console import Console  # noqa: PLC0415 - rich only for a terminal
        from rich.live import Live  # noqa: PLC0415

        console = Console(file=stream or sys.stderr)
        with Live(_progress_line(snapshot()), console=console, refresh_per_second=4) as display:
            with contextlib.suppress(asyncio.CancelledError):
                while True:
                    await asyncio.sleep(0.25)
                    display.update(_progress_line(snapshot()))
            display.update(_progress_line(snapshot()))
        return
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(interval)
            log.info("progress", **snapshot().as_dict())


def print_summary(
    snapshot: Snapshot, *, json_lines: bool, outcome: str, stream: TextIO | None = None
) -> None:
    """The last word of a run: counts by state and how it ended."""
    if json_lines:
        log.info("summary", outcome=outcome, **snapshot.as_dict())
        return
    from rich.console import Console  # noqa: PLC0415 - rich only for a terminal

    console = Console(file=stream or best_effort(sys.stdout))
    if not console.is_terminal:
        # A pipe or a file gets rich's 80 columns, and the eight states' table is wider: its
        # headers would be cut ("submitti"). Nothing wraps a file: give it the room it needs.
        console.width = max(console.width, _SUMMARY_WIDTH)
    title = f"backfill {outcome} after {_duration(snapshot.elapsed)}"
    console.print(_table(snapshot, title))
    console.print(
        f"{snapshot.requests:,} requests sent, {snapshot.rate_limited:,} answered 429"
        + "".join(f", {v:,} {k.replace('_', ' ')}" for k, v in snapshot.extra.items() if v)
    )
    lost = snapshot.counts[WindowState.SUBMITTING]
    if lost:
        console.print(
            f"{lost:,} {LABELS[WindowState.SUBMITTING]}, answer lost or never sent: the next run "
            "looks them up at the service before sending anything again"
        )
    if snapshot.records:
        console.print(records_line(snapshot.records))


def records_line(records: dict[str, int]) -> str:
    """Records summed over every window's latest run, as the service counted them."""
    return (
        f"records: {records.get('output', 0):,} ingested, {records.get('failed', 0):,} failed, "
        f"{records.get('input', 0):,} read"
    )


def window_rows(journal: Journal) -> Iterator[tuple[Window, Entry | None]]:
    """Every window of the checkpoint's plan (its shard) with what is recorded of it."""
    plan = journal.plan
    for window in plan.windows():
        yield window, journal.get(window)


def _row(window: Window, entry: Entry | None, *, detail: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "flow_id": window.flow_id,
        "start": window.start,
        "end": window.end,
        "state": entry.state.value if entry else WindowState.PENDING.value,
        "run_id": entry.run_id if entry else None,
        "attempts": entry.attempt if entry else 0,
    }
    if entry is not None and entry.duplicates:
        row["duplicate_runs"] = list(entry.duplicates)  # other live runs the service holds
    if entry is not None and entry.candidates:
        row["unreadable_runs"] = list(entry.candidates)  # may be this window's: kept in doubt
    if detail:
        row["start_time"] = format_time(window.start)
        row["end_time"] = format_time(window.end)
        row["in_doubt"] = bool(entry and entry.in_doubt)
        row["errors"] = (entry.errors or []) if entry else []
        row["previous_runs"] = list(entry.old_runs) if entry else []
    row["records"] = entry.counts.as_dict() if entry and entry.counts else None
    return row


def duplicate_windows(journal: Journal) -> list[tuple[Window, Entry]]:
    """Windows for which the service holds more than one live run."""
    return [(window, entry) for window, entry in journal.items(noted=True) if entry.duplicates]


def write_report(path: Path, journal: Journal, totals: dict[str, Any]) -> None:
    """The JSON report: every window with its run, attempts and errors, then the totals.

    Written window by window (a plan can have millions) to a temp file, then renamed.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        out.write(b'{"windows": [')
        for i, (window, entry) in enumerate(window_rows(journal)):
            if i:
                out.write(b",")
            out.write(b"\n  " + orjson.dumps(_row(window, entry, detail=True)))
        out.write(b"\n],\n" + orjson.dumps(totals)[1:-1] + b"}\n")
    tmp.replace(path)


def status_document(
    journals: Iterable[Journal], extra: dict[str, Any] | None = None
) -> Iterator[bytes]:
    """``status --json``: one document over one or several (shard) checkpoints, streamed.

    ``windows`` and ``counts`` (by state, the checkpoint's words) come first; ``extra`` keys
    (planned total, each checkpoint and its holder, missing shards) follow.
    """
    counts = dict.fromkeys(WindowState, 0)
    records = dict.fromkeys(("input", "output", "failed"), 0)
    yield b'{"windows": ['
    first = True
    for journal in journals:
        for state, n in journal.counts().items():
            counts[state] += n
        for kind, n in journal.record_totals().items():
            records[kind] += n
        for window, entry in window_rows(journal):
            yield (b"\n  " if first else b",\n  ") + orjson.dumps(_row(window, entry, detail=False))
            first = False
    tail = orjson.dumps({s.value: n for s, n in counts.items()})
    tail += b', "records": ' + orjson.dumps(records)
    more = b", " + orjson.dumps(extra)[1:-1] if extra else b""
    yield b'\n], "counts": ' + tail + more + b"}\n"
