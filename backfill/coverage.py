"""The coverage page: a whole backfill at a glance, as one self-contained HTML file.

``backfill status --html FILE`` writes it from one or several (shard) checkpoints; a running
``backfill run --metrics-port`` serves the same page at ``/`` and its data at
``/coverage.json``, and the page refreshes itself from there.

The page is a template (``templates/coverage.html``, with its stylesheet and script inlined)
and one JSON document, the data. Python lays the windows out -- which cell of which row each
window falls in, in the plan's time zone -- and the page's small script only draws what it is
given and shows a window's details on hover or click. Nothing is loaded from anywhere: the
page's Content-Security-Policy forbids it.

States are keyed by their string value everywhere (legend, colours, totals, cells), so a state
the page has no style for is still drawn (in grey, under its own name); ``empty`` and
``partial`` have their colours already. Colours are the Okabe-Ito palette, which stays
distinguishable with the common colour-vision deficiencies, and the states that need action
(failed, in doubt) also carry a pattern, so no reader depends on colour alone.
"""

from __future__ import annotations

import asyncio
import html
import os
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from .errors import ConfigError
from .journal import Entry, Journal, holder
from .planner import FlowPlan, format_duration, format_time
from .state import WindowState

__all__ = [
    "STYLES",
    "Layout",
    "LivePage",
    "StateStyle",
    "check_page_path",
    "choose_layout",
    "lay_out",
    "page_data",
    "render",
    "write_page",
]


@dataclass(frozen=True, slots=True)
class StateStyle:
    """How a state is drawn: its name in the legend, its colour, and a pattern if any."""

    label: str
    colour: str
    pattern: str = ""  # "stripes", "dots" or "" (solid)
    done: bool = False  # a finished window: its records count is expected


# Okabe & Ito, "Color Universal Design" (2008): eight colours told apart with protanopia,
# deuteranopia and tritanopia. The order is the legend's, and the stacking order of a mix.
STYLES: dict[str, StateStyle] = {
    "succeeded": StateStyle("succeeded", "#009E73", done=True),  # bluish green
    "empty": StateStyle("empty (no records)", "#56B4E9", done=True),  # sky blue
    "partial": StateStyle("partial", "#F0E442", "dots", done=True),  # yellow
    "failed": StateStyle("failed", "#D55E00", "stripes"),  # vermillion
    "submitting": StateStyle("in doubt", "#CC79A7", "dots"),  # reddish purple
    "running": StateStyle("running", "#0072B2"),  # blue
    "submitted": StateStyle("submitted", "#E69F00"),  # orange
    "pending": StateStyle("pending", "#E4E4E4"),  # light grey
}
_CORE = frozenset(state.value for state in WindowState)  # always in the legend
_UNKNOWN = StateStyle("", "#8C8C8C", "stripes")
# While a run goes on, "submitting" is a request in flight (as in the live progress table).
_LIVE_LABELS = {"submitting": "in flight"}

_MAX_ROWS = 150  # more rows than this is no longer "at a glance": cells aggregate instead
_MAX_CELLS = 8_000  # per flow; the whole page's DOM stays small however many windows
_MIN = 60
_HOUR = 3600
_DAY = 86400


# ------------------------------------------------------------------ calendar units


def _floor(ts: int, unit: str, zone: ZoneInfo) -> datetime:
    """The start of the ``unit`` (minute .. decade) holding ``ts``, in ``zone``."""
    moment = datetime.fromtimestamp(ts, zone)
    if unit == "minute":
        return moment.replace(second=0, microsecond=0)
    if unit == "quarter-hour":
        return moment.replace(minute=moment.minute // 15 * 15, second=0, microsecond=0)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=zone)
    if unit == "day":
        return day
    if unit == "week":  # ISO weeks start on Monday
        monday = day.date() - timedelta(days=day.weekday())
        return datetime(monday.year, monday.month, monday.day, tzinfo=zone)
    if unit == "month":
        return datetime(moment.year, moment.month, 1, tzinfo=zone)
    if unit == "year":
        return datetime(moment.year, 1, 1, tzinfo=zone)
    return datetime(moment.year // 10 * 10, 1, 1, tzinfo=zone)  # decade


def _next(start: datetime, unit: str, zone: ZoneInfo) -> int:
    """The unix time where the ``unit`` beginning at ``start`` ends."""
    fixed = {"minute": _MIN, "quarter-hour": 900, "hour": _HOUR}
    if unit in fixed:  # absolute: a DST change does not make an hour last two
        return int(start.timestamp()) + fixed[unit]
    if unit in ("day", "week"):
        step = start.date() + timedelta(days=1 if unit == "day" else 7)
        return int(datetime(step.year, step.month, step.day, tzinfo=zone).timestamp())
    if unit == "month":
        year, month = divmod(start.month, 12)
        return int(datetime(start.year + year, month + 1, 1, tzinfo=zone).timestamp())
    years = 1 if unit == "year" else 10
    return int(datetime(start.year + years, 1, 1, tzinfo=zone).timestamp())


def _column(cell: datetime, unit: str, row: datetime, zone: ZoneInfo) -> int:
    """Where a calendar cell sits in its row."""
    if unit == "minute":
        return cell.minute
    if unit == "quarter-hour":
        return (cell.hour * 60 + cell.minute) // 15
    if unit == "hour":
        return cell.hour
    if unit == "day":
        return cell.day - 1
    if unit == "week":
        return (cell.date() - _floor(int(row.timestamp()), "week", zone).date()).days // 7
    if unit == "month":
        return cell.month - 1
    return cell.year % 10  # year in a decade


@dataclass(frozen=True, slots=True)
class Layout:
    """How a flow's windows become cells: what one cell covers, what one row is."""

    unit: str  # a calendar unit, or "window" (one fixed-size window per cell)
    row: str  # the calendar unit of a row
    cols: int
    size: int = 0  # seconds, for unit == "window"

    def describe(self, *, single: bool) -> str:
        """For the reader; ``single``: no cell holds more than one window."""
        if self.unit == "window":
            return f"rows are {self.row}s, each cell is one {format_duration(self.size)} window"
        if single:
            return f"rows are {self.row}s, each cell is one window (a {self.unit})"
        return f"rows are {self.row}s, each cell is the windows of one {self.unit}"


# Cell units, finest first: (unit, the longest window it holds, its row, cells per row).
_CALENDAR = (
    ("minute", _MIN, "hour", 60),
    ("quarter-hour", 900, "day", 96),
    ("hour", _HOUR, "day", 24),
    ("day", _DAY + _HOUR, "month", 31),  # a local day lasts 23 to 25 hours
    ("week", 7 * _DAY + _HOUR, "year", 54),
    ("month", 31 * _DAY + _HOUR, "year", 12),
    ("year", 366 * _DAY + _HOUR, "decade", 10),
)
_NOMINAL = {
    "minute": _MIN,
    "quarter-hour": 900,
    "hour": _HOUR,
    "day": _DAY,
    "week": 7 * _DAY,
    "month": 2_629_746,
    "year": 31_556_952,
    "decade": 315_569_520,
}


def choose_layout(size: int, fixed: bool, span: int, windows: int, max_cells: int) -> Layout:
    """The finest layout that stays at a glance: few enough rows and cells.

    ``size`` is a typical window's length, ``fixed`` whether every whole window has it,
    ``span`` the seconds from the first window's start to the last one's end.
    """
    if fixed:  # one window per cell, rows a calendar unit holding 12 to 130 of them
        for row in ("hour", "day", "month", "year", "decade"):
            cols = -(-_NOMINAL[row] // size)
            if 12 <= cols <= 130 or (row == "decade" and cols <= 130):
                if span / _NOMINAL[row] <= _MAX_ROWS and windows <= max_cells:
                    return Layout("window", row, cols, size)
                break
    for unit, longest, row, cols in _CALENDAR:
        if size > longest:
            continue
        cells = min(windows, span // _NOMINAL[unit] + 2)
        if span / _NOMINAL[row] <= _MAX_ROWS and cells <= max_cells:
            return Layout(unit, row, cols)
    return Layout("year", "decade", 10)


# ------------------------------------------------------------------ the data


def _records(entry: Entry | None) -> int | None:
    """Records a window's run ingested, when the checkpoint knows (None: unknown)."""
    counts = entry.counts if entry is not None else None  # newer checkpoints only
    if counts is None or counts.output < 0:  # -1: the service did not say
        return None
    return counts.output


def _error_text(entry: Entry | None) -> str | None:
    if entry is None or not entry.errors:
        return None
    parts = [
        f"{error.get('code', '')}: {error.get('message', '')}".strip(": ") for error in entry.errors
    ]
    return "\n".join(parts) or None


# One window as read: (start, end, state, attempts, run ids, records, last error).
_Seen = tuple[int, int, str, int, tuple[str, ...], int | None, str | None]
_VALUES = {state: state.value for state in WindowState}  # Enum's .value is slow
_PENDING = WindowState.PENDING.value
_CHUNK = 5_000  # windows read on a live backfill's loop before it gets a turn again


def _seen(start: int, end: int, entry: Entry | None) -> _Seen:
    if entry is None:
        return (start, end, _PENDING, 0, (), None, None)
    state = _VALUES.get(entry.state) or entry.state.value
    runs = entry.all_runs()
    return (start, end, state, entry.attempt, runs, _records(entry), _error_text(entry))


@dataclass(frozen=True, slots=True)
class _Reading:
    """What the checkpoints held: every flow's windows, and each file's facts."""

    flows: dict[str, tuple[FlowPlan, list[_Seen]]]
    checkpoints: list[dict[str, Any]]


def _reading(journals: list[Journal], *, live: bool) -> Generator[None, None, _Reading]:
    """Read every window of every checkpoint (shard), pausing every ``_CHUNK`` windows."""
    flows: dict[str, tuple[FlowPlan, list[_Seen]]] = {}
    for journal in journals:
        for flow in journal.plan.flows:
            flows.setdefault(flow.flow_id, (flow, []))
    read = 0
    for journal in journals:
        plan, get = journal.plan, journal.get
        for flow in plan.flows:
            seen = flows[flow.flow_id][1]
            for window in flow.windows(shard=plan.shard):
                seen.append(_seen(window.start, window.end, get(window)))
                read += 1
                if read % _CHUNK == 0:
                    yield
    checkpoints = [_checkpoint_document(journal, live=live) for journal in journals]
    return _Reading(flows, checkpoints)


def _read_now(journals: list[Journal], *, live: bool) -> _Reading:
    reading = _reading(journals, live=live)
    while True:
        try:
            next(reading)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def _read_on_loop(journals: list[Journal]) -> _Reading:
    """The same, on the loop that owns the journals, letting it run between chunks."""
    reading = _reading(journals, live=True)
    while True:
        try:
            next(reading)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(0)


def _flow_document(
    flow: FlowPlan,
    windows: list[_Seen],
    state_index: dict[str, int],
    states: list[str],
    max_cells: int,
) -> dict[str, Any]:
    zone_name = flow.zone
    zone = ZoneInfo(zone_name)
    windows.sort(key=lambda seen: seen[0])  # shards interleave
    lengths = Counter(seen[1] - seen[0] for seen in windows[1:-1] or windows)
    # The first and the last window may be clipped; the others tell the plan's size.
    size = lengths.most_common(1)[0][0] if lengths else 1
    fixed = len(lengths) <= 1
    span = windows[-1][1] - windows[0][0] if windows else 0
    layout = choose_layout(size, fixed, span, len(windows), max_cells)

    starts: list[int] = []
    durations: list[int] = []
    codes: list[int] = []
    attempts: list[int] = []
    runs: list[list[str] | int] = []
    records: list[int | None] = []
    errors: list[str | None] = []
    counts: dict[str, int] = {}
    recorded = known = unknown = 0
    finished = {key for key, style in STYLES.items() if style.done}
    for start, end, state, attempt, ids, count, error in windows:
        code = state_index.get(state)
        if code is None:
            code = state_index[state] = len(states)
            states.append(state)
        counts[state] = counts.get(state, 0) + 1
        starts.append(start)
        durations.append(end - start)
        codes.append(code)
        attempts.append(attempt)
        runs.append(list(ids) if ids else 0)
        records.append(count)
        if count is not None:
            recorded += count
            known += 1
        elif state in finished:
            unknown += 1
        errors.append(error)

    rows = lay_out(starts, layout, zone)
    cols = max([layout.cols, *(row[1][-1][0] + 1 for row in rows if row[1])])
    if layout.unit == "window":  # as many columns as the rows use
        cols = max([1, *(row[1][-1][0] + 1 for row in rows if row[1])])
    return {
        "id": flow.flow_id,
        "range": flow.describe(),
        "window": format_duration(size),
        "zone": zone_name,
        "windows": len(windows),
        "layout": {"cell": layout.unit, "row": layout.row, "cols": cols},
        "describe": layout.describe(single=all(cell[2] == 1 for row in rows for cell in row[1])),
        "axis": _axis(layout),
        "counts": counts,
        "records": {"sum": recorded, "known": known, "unknown": unknown},
        "rows": rows,
        "s": starts,
        "d": durations,
        "st": codes,
        "a": attempts,
        "r": runs,
        "n": records,
        "x": errors,
    }


def lay_out(starts: list[int], layout: Layout, zone: ZoneInfo) -> list[list[Any]]:
    """Rows as ``[label, [[column, first window, windows], ...]]``, windows in start order.

    Windows are sorted, so a cell's windows are consecutive and a row's cells too: row and
    cell boundaries are computed once per row and per cell, not once per window.
    """
    rows: list[list[Any]] = []
    cells: list[list[int]] = []
    row_end = -1
    row_start = 0
    row_moment: datetime | None = None
    cell_end = -1
    calendar = layout.unit != "window"
    for i, start in enumerate(starts):
        if start >= row_end:
            row_moment = _floor(start, layout.row, zone)
            row_start = int(row_moment.timestamp())
            row_end = _next(row_moment, layout.row, zone)
            cells = []
            rows.append([_row_label(row_moment, layout.row), cells])
            cell_end = -1
        if calendar:
            if start < cell_end:
                cells[-1][2] += 1
                continue
            cell = _floor(start, layout.unit, zone)
            cell_end = _next(cell, layout.unit, zone)
            assert row_moment is not None
            column = _column(cell, layout.unit, row_moment, zone)
        else:
            column = (start - row_start) // layout.size
            if cells and cells[-1][0] == column:  # two checkpoints with the same window
                cells[-1][2] += 1
                continue
        if cells and column <= cells[-1][0]:  # a local hour that happens twice (DST ends)
            column = cells[-1][0] + 1
        cells.append([column, i, 1])
    return rows


_MONTH_TICKS = ((0, "Jan"), (90, "Apr"), (181, "Jul"), (273, "Oct"))  # days into a year
_TICKS: dict[str, tuple[tuple[int, str], ...]] = {  # a row's ticks: (seconds in, label)
    "hour": tuple((m * _MIN, f"{m}m") for m in (0, 15, 30, 45)),
    "day": tuple((h * _HOUR, f"{h:02d}h") for h in (0, 6, 12, 18)),
    "month": tuple(((d - 1) * _DAY, str(d)) for d in (1, 8, 15, 22, 29)),
    "year": tuple((d * _DAY, name) for d, name in _MONTH_TICKS),
    "decade": ((0, "+0y"), (5 * 365 * _DAY, "+5y")),
}
_CALENDAR_TICKS: dict[str, list[list[Any]]] = {  # a calendar cell's ticks: [column, label]
    "minute": [[0, "0m"], [15, "15m"], [30, "30m"], [45, "45m"]],
    "quarter-hour": [[0, "00h"], [24, "06h"], [48, "12h"], [72, "18h"]],
    "hour": [[0, "00h"], [6, "06h"], [12, "12h"], [18, "18h"]],
    "day": [[0, "1"], [7, "8"], [14, "15"], [21, "22"], [28, "29"]],
    "week": [[0, "Jan"], [13, "Apr"], [26, "Jul"], [39, "Oct"]],
    "month": [[0, "Jan"], [3, "Apr"], [6, "Jul"], [9, "Oct"]],
    "year": [[0, "+0y"], [5, "+5y"]],
}


def _axis(layout: Layout) -> list[list[Any]]:
    """Labels above the columns: ``[column, label]``."""
    if layout.unit != "window":
        return _CALENDAR_TICKS.get(layout.unit, [])
    ticks: list[list[Any]] = []
    for offset, label in _TICKS[layout.row]:
        column = offset // layout.size
        if not ticks or column > ticks[-1][0]:
            ticks.append([column, label])
    return ticks


def _row_label(moment: datetime, row: str) -> str:
    if row == "hour":
        return moment.strftime("%Y-%m-%d %H:%M")
    if row == "day":
        return moment.strftime("%Y-%m-%d %a")
    if row == "month":
        return moment.strftime("%Y-%m")
    if row == "year":
        return moment.strftime("%Y")
    return f"{moment.year}s"


def _checkpoint_document(journal: Journal, *, live: bool) -> dict[str, Any]:
    path = journal.path
    try:
        written: str | None = format_time(int(path.stat().st_mtime))
    except OSError:
        written = None
    held = None if live else holder(path)
    holder_pid = os.getpid() if live else (held.pid if held is not None else None)
    plan = journal.plan
    return {
        "path": str(path),
        "shard": None if plan.shard.whole else str(plan.shard),
        "windows": plan.count(),
        "written": written,
        "held_by": holder_pid,
        "counts": {state.value: n for state, n in journal.counts().items() if n},
    }


def page_data(
    journals: list[Journal],
    *,
    live: bool = False,
    refresh: float = 0.0,
    now: float | None = None,
    max_cells: int = _MAX_CELLS,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready document."""
    reading = _read_now(journals, live=live)
    return _document(reading, live=live, refresh=refresh, now=now, max_cells=max_cells)


def _document(
    reading: _Reading, *, live: bool, refresh: float, now: float | None, max_cells: int
) -> dict[str, Any]:
    states = list(STYLES)
    state_index = {state: i for i, state in enumerate(states)}
    flows = [
        _flow_document(flow, windows, state_index, states, max_cells)
        for flow, windows in reading.flows.values()
    ]
    totals: dict[str, int] = {}
    for flow in flows:
        for state, n in flow["counts"].items():
            totals[state] = totals.get(state, 0) + n
    labels = _LIVE_LABELS if live else {}
    return {
        "generated": format_time(int(time.time() if now is None else now)),
        "live": live,
        "refresh": refresh,
        "states": [
            {
                "key": state,
                "label": labels.get(state) or STYLES.get(state, _UNKNOWN).label or state,
                "colour": STYLES.get(state, _UNKNOWN).colour,
                "pattern": STYLES.get(state, _UNKNOWN).pattern,
                "done": STYLES.get(state, _UNKNOWN).done,
                "alert": STYLES.get(state, _UNKNOWN).pattern == "stripes" or state == "submitting",
                "core": state in _CORE,
            }
            for state in states
        ],
        "totals": totals,
        "windows": sum(flow["windows"] for flow in flows),
        "records": {
            "sum": sum(flow["records"]["sum"] for flow in flows),
            "known": sum(flow["records"]["known"] for flow in flows),
            "unknown": sum(flow["records"]["unknown"] for flow in flows),
        },
        "checkpoints": reading.checkpoints,
        "flows": flows,
    }


# ------------------------------------------------------------------ the page


def _asset(name: str) -> str:
    return (resources.files("backfill") / "templates" / name).read_text(encoding="utf-8")


def data_json(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def render(data: dict[str, Any]) -> str:
    """The page: the template with its stylesheet, script and data inlined."""
    # "</" cannot close the data's <script> element once escaped; JSON reads it back the same.
    payload = data_json(data).decode().replace("</", "<\\/")
    paths = ", ".join(c["path"] for c in data["checkpoints"])
    connect = "'self'" if data["live"] else "'none'"
    return Template(_asset("coverage.html")).substitute(
        title=html.escape(f"backfill coverage: {paths}"),
        connect=connect,
        css=_asset("coverage.css"),
        js=_asset("coverage.js"),
        data=payload,
    )


def check_page_path(path: str) -> None:
    """Refuse, before anything is read, a page that could not be written there."""
    if not path.strip():
        raise ConfigError("--html", "is empty; name the file to write, e.g. coverage.html")
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise ConfigError(
            "--html", f"{path} is a folder; name the file to write, e.g. {target / 'coverage.html'}"
        )
    if not folder.is_dir():
        raise ConfigError(
            "--html", f"the folder {folder} does not exist; create it or write elsewhere"
        )
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            "--html", f"the folder {folder} is not writable; write the page elsewhere"
        )


def write_page(path: Path, journals: list[Journal]) -> dict[str, Any]:
    """Write the page for ``journals`` to ``path`` (whole or not at all); return its data."""
    data = page_data(journals)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(render(data), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError("--html", f"cannot write {path} ({exc.strerror or exc})") from None
    return data


class LivePage:
    """The page of a running backfill, for the metrics server's threads.

    The journal belongs to the event loop, so its windows are read there, a few thousand at
    a time with the loop's other work in between; the page is built in the server's thread.
    It costs some microseconds per window, so the page asks again no sooner than twenty times
    what the last reading took, and every viewer in between gets the same one.
    """

    def __init__(
        self,
        journals: list[Journal],
        loop: asyncio.AbstractEventLoop,
        *,
        min_refresh: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journals = journals
        self._loop = loop
        self._min_refresh = min_refresh
        self._clock = clock
        self._refresh = min_refresh
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0

    def _read(self) -> _Reading | None:
        """Read on the loop; None when the loop is gone (the run is over)."""
        coroutine = _read_on_loop(self._journals)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed: nothing touches the journals any more
            coroutine.close()
            return None
        try:
            return future.result(timeout=60)
        except TimeoutError:  # a loop that no longer runs
            future.cancel()
            return None

    def data(self) -> dict[str, Any]:
        """The page's data now (at most ``refresh`` seconds old); safe from any thread."""
        if self._cached is not None and self._clock() - self._cached_at < self._refresh / 2:
            return self._cached
        started = self._clock()
        reading = self._read()
        if reading is None:
            if self._cached is not None:
                return self._cached  # the run is over: its last state stays on show
            reading = _read_now(self._journals, live=True)
        data = _document(reading, live=True, refresh=self._refresh, now=None, max_cells=_MAX_CELLS)
        self._refresh = max(self._min_refresh, round(20 * (self._clock() - started), 1))
        self._cached, self._cached_at = data, self._clock()
        return data

    def pages(self) -> dict[str, Callable[[], tuple[str, bytes]]]:
        """The paths the metrics server answers besides ``/metrics``."""

        def page() -> tuple[str, bytes]:
            return "text/html; charset=utf-8", render(self.data()).encode()

        def document() -> tuple[str, bytes]:
            return "application/json", data_json(self.data())

        return {"/": page, "/index.html": page, "/coverage.json": document}
