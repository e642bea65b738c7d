"""The plan: which time windows each flow is backfilled in. Pure: no I/O, no clock.

A flow's range is cut into contiguous half-open windows ``[start, end)``. A fixed size
(``30s``, ``15m``, ``6h``, ``24h``) is an exact number of seconds cut from the range's start,
the last window clipped to the range's end. A calendar size (``1d``, ``1w``, ``1mo``, ``1q``,
``1y`` and multiples) is cut on the calendar boundaries of a time zone (see ``calendar``), the
first and last windows clipped to the range. Windows are produced lazily, so ten years of
one-minute windows cost no memory. A plan that was extended (``--extend``) keeps the windows it
had and adds segments before or after them, so recorded windows never change their boundaries.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple

import orjson

from .calendar import (
    TZDATA_VERSION,
    Align,
    Calendar,
    Grid,
    Unit,
    exists,
    format_local,
    instant,
    local,
    pip_tzdata,
    unit_index,
)
from .calendar import zone as zone_info
from .choices import Order

__all__ = [
    "EARLIEST",
    "LATEST",
    "FlowPlan",
    "Order",
    "Plan",
    "Segment",
    "Shard",
    "Window",
    "format_duration",
    "format_time",
    "format_window",
    "parse_duration",
    "parse_time",
    "parse_window",
]

# Unix seconds outside [1990, 2100) are not a date anyone backfills: they are milliseconds,
# microseconds, or a typo such as the tutorial's 11-digit "16515859567" (year 2493).
EARLIEST = 631152000  # 1990-01-01T00:00:00Z
LATEST = 4102444800  # 2100-01-01T00:00:00Z

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_DIGITS = re.compile(r"^\s*-?\d+\s*$")
_WINDOW = re.compile(r"^\s*(\d+)\s*(mo|[smhdwqy])\s*$")
_FIXED_UNITS = {"s": 1, "m": 60, "h": 3600}
# The longest window: ten Gregorian years (one window per decade is already no backfill; far
# longer sizes would take the calendar arithmetic of their boundaries out of datetime's years).
# A unit's average length in seconds (Gregorian months and years) measures a size against it.
MAX_WINDOW = 10 * 31556952
_NOMINAL = {**_FIXED_UNITS, "d": 86400, "w": 604800, "mo": 2629746, "q": 7889238, "y": 31556952}


def parse_time(value: str | int, zone: str = "UTC") -> int:
    """Unix seconds from an integer, a string of digits, or an ISO-8601 date or datetime.

    An ISO value without an offset is wall-clock time in ``zone``; a date is the local midnight
    that starts it. Raises ``ValueError`` saying what is wrong and how to write it instead.
    """
    if isinstance(value, bool):
        raise ValueError("expected a time, got a boolean")
    if isinstance(value, int):
        return _plausible(value, str(value))
    text = value.strip()
    if not text:
        raise ValueError("empty; give unix seconds or an ISO date such as 2024-01-31")
    if _DIGITS.match(text):
        return _plausible(int(text), text)
    day: date | None = None
    try:
        if len(text) == 10 and text[4] == "-":
            day = date.fromisoformat(text)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; give unix seconds (e.g. 1651584991) or ISO-8601 "
            "(e.g. 2024-01-31 or 2024-01-31T12:00:00Z)"
        ) from None
    if day is not None:
        return _plausible(_day_start(day, zone, text), text)
    if moment.microsecond:
        raise ValueError(f"{text!r} has fractions of a second; windows are whole seconds")
    if moment.tzinfo is None:
        if not exists(moment, zone):
            raise ValueError(
                f"{text!r} does not happen exactly once in the time zone {zone} (the clocks "
                f"skip or repeat it); add the offset you mean, {_with_offsets(moment, zone)}"
            )
        seconds = instant(moment, zone)
    else:
        seconds = int(moment.timestamp())
    return _plausible(seconds, text)


def _with_offsets(wall: datetime, zone: str) -> str:
    """``wall`` written with each offset the zone's clocks give it around a change."""
    offsets = [wall.replace(tzinfo=zone_info(zone), fold=fold).isoformat() for fold in (0, 1)]
    if offsets[0] == offsets[1]:
        return f"e.g. {offsets[0]}"
    return f"{offsets[0]} or {offsets[1]}"


def _day_start(day: date, zone: str, text: str) -> int:
    """The first moment of a local date (midnight, or when the clocks skipped it, just after)."""
    midnight = datetime.combine(day, datetime.min.time())
    seconds = instant(midnight, zone)
    if seconds < 0 or seconds >= 10**11:
        return seconds  # far out of range: _plausible says so
    if local(seconds, zone).date() != day:
        raise ValueError(
            f"{text!r} did not happen in the time zone {zone}: the clocks skipped that day; "
            "give the day before or after it"
        )
    return seconds


def _plausible(seconds: int, text: str) -> int:
    if seconds >= 10**11:
        raise ValueError(
            f"{text} looks like milliseconds, not unix seconds; divide it by 1000 "
            f"({seconds // 1000}) or give an ISO date"
        )
    if not EARLIEST <= seconds < LATEST and not _DIGITS.match(text):
        raise ValueError(
            f"{text} ({format_time(seconds)}) is outside the times backfill plans: from "
            f"{format_time(EARLIEST)} to before {format_time(LATEST)}"
        )
    if not EARLIEST <= seconds < LATEST:
        raise ValueError(
            f"{text} is not a plausible unix time in seconds ({format_time(seconds)}); "
            "unix seconds in this century have 10 digits"
        )
    return seconds


def format_time(seconds: int) -> str:
    """ISO-8601 UTC, as people read it; out-of-range values print as plain numbers."""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def parse_duration(value: str | int) -> int:
    """Seconds from ``30s``, ``15m``, ``6h``, ``1d``, ``7d``, ``2w`` (or whole seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration; write a whole number and a unit: "
                "30s, 15m, 6h, 1d or 7d"
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration; use e.g. 1h or 1d")
    return seconds


def parse_window(value: str | int) -> int | tuple[int, Unit]:
    """A window size: whole seconds for ``30s``, ``15m``, ``6h``; ``(n, unit)`` for calendar
    sizes ``1d``, ``2w``, ``1mo``, ``3mo``, ``1q``, ``1y``. A bare number is seconds.
    """
    if isinstance(value, bool):
        raise ValueError("expected a window size, got a boolean")
    if isinstance(value, int):
        seconds = parse_duration(value)
        _within_span(seconds, "s", str(value))
        return seconds
    match = _WINDOW.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a window size; write a whole number and a unit: fixed 30s, 15m, "
            "6h, 24h or calendar 1d, 1w, 1mo, 1q, 1y"
        )
    n, unit = int(match.group(1)), match.group(2)
    if n <= 0:
        raise ValueError(f"{value!r} is not a positive window size; use e.g. 1h or 1d")
    _within_span(n, unit, value)
    if unit in _FIXED_UNITS:
        return n * _FIXED_UNITS[unit]
    return n, Unit(unit)


def _within_span(n: int, unit: str, text: str) -> None:
    """``ValueError`` unless ``n`` units fit in the span backfill plans."""
    most = MAX_WINDOW // _NOMINAL[unit]
    if n > most:
        raise ValueError(
            f"{text!r} is longer than ten years, the longest window backfill plans; use at "
            f"most {most}{unit}"
        )


def format_window(size: int | Calendar) -> str:
    """``1mo``, ``1d``, ``6h``: a window size as written."""
    if isinstance(size, Calendar):
        return str(size)
    for unit in ("h", "m"):  # never "d": 1d is a calendar day, 24h a fixed duration
        if size % _FIXED_UNITS[unit] == 0:
            return f"{size // _FIXED_UNITS[unit]}{unit}"
    return f"{size}s"


def format_duration(seconds: int) -> str:
    """The shortest exact spelling: 86400 -> ``1d``, 5400 -> ``90m``."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # pragma: no cover - "s" divides every integer


class Window(NamedTuple):
    """One run's worth of data: ``[start, end)`` in unix seconds.

    A NamedTuple rather than a dataclass: millions are created while streaming a plan, and
    tuple construction is several times cheaper than a frozen dataclass's.
    """

    flow_id: str
    start: int
    end: int


_window = partial(tuple.__new__, Window)  # Window from a (flow, start, end) tuple, in C


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``: a deterministic share of every flow's windows.

    A window belongs to shard ``(crc32(flow) + start // size) % count``: consecutive windows
    go to consecutive shards (even shares), and ownership depends only on the window itself,
    so it survives an extended plan.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1


@dataclass(frozen=True, slots=True)
class Segment:
    """A half-open range ``[start, end)`` of one flow, cut into windows from its start."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(
                f"the range {format_time(self.start)} .. {format_time(self.end)} is empty; "
                "the end must come after the start"
            )


@dataclass(frozen=True, slots=True)
class FlowPlan:
    """One flow's windows: contiguous segments cut into windows of ``window``.

    ``window`` is whole seconds (fixed) or a ``Calendar`` size. A calendar plan records the
    zone database it was made with (``tzdata``) and a digest of every boundary it produced
    (``boundaries``), so a resume under another database can tell whether a boundary moved.
    ``zone`` is only how a fixed plan's times are shown; it is not part of the plan.
    """

    flow_id: str
    window: int | Calendar
    segments: tuple[Segment, ...]
    delta_column: str | None = None
    tzdata: str | None = None
    boundaries: str | None = None
    zone: str = field(default="UTC", compare=False)
    _salt: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.window, int) and self.window <= 0:
            raise ValueError("the window size must be positive")
        if not self.segments:
            raise ValueError(f"flow {self.flow_id} has no range")
        for before, after in zip(self.segments, self.segments[1:], strict=False):
            if before.end != after.start:
                raise ValueError(f"flow {self.flow_id}: segments must be contiguous and sorted")
        object.__setattr__(self, "_salt", zlib.crc32(self.flow_id.encode()))
        if isinstance(self.window, Calendar):
            object.__setattr__(self, "zone", self.window.zone)
            if self.boundaries is None:
                object.__setattr__(self, "tzdata", TZDATA_VERSION)
                object.__setattr__(self, "boundaries", self._digest())
        elif self.tzdata is not None or self.boundaries is not None:
            raise ValueError(f"flow {self.flow_id}: a fixed window size has no zone database")

    @classmethod
    def single(
        cls,
        flow_id: str,
        start: int,
        end: int,
        window: int | Calendar,
        delta_column: str | None = None,
        zone: str = "UTC",
    ) -> FlowPlan:
        """One range. A calendar size whose windows are all exact multiples of a fixed one
        (days and weeks in UTC, from a boundary) is planned as that fixed size: the same
        windows, and the same checkpoint as before calendar sizes existed.
        """
        segment = Segment(start, end)
        if (
            isinstance(window, Calendar)
            and window.zone in ("UTC", "Etc/UTC")
            and window.unit in (Unit.DAY, Unit.WEEK)
            and (window.align is Align.START or Grid(window, start).is_boundary(start))
        ):
            days = window.n * (7 if window.unit is Unit.WEEK else 1)
            return cls(flow_id, days * 86400, (segment,), delta_column, zone=zone)
        return cls(flow_id, window, (segment,), delta_column, zone=zone)

    @property
    def start(self) -> int:
        return self.segments[0].start

    @property
    def end(self) -> int:
        return self.segments[-1].end

    @property
    def calendar(self) -> Calendar | None:
        return self.window if isinstance(self.window, Calendar) else None

    def _digest(self) -> str:
        """A digest of every boundary, to tell whether another zone database moves one."""
        digest = hashlib.sha256()
        for window in self.windows():
            digest.update(b"%d,%d;" % (window.start, window.end))
        return digest.hexdigest()[:16]

    def rebuilt(self) -> FlowPlan:
        """This plan as the installed zone database cuts it (itself if it is fixed)."""
        if self.calendar is None or self.tzdata == TZDATA_VERSION:
            return self
        return FlowPlan(self.flow_id, self.window, self.segments, self.delta_column)

    def count(self, shard: Shard | None = None) -> int:
        """Windows of this flow (those of ``shard`` only, when given), without listing them."""
        if isinstance(self.window, Calendar):
            return sum(1 for _ in self.windows(shard=shard))
        total = 0
        for segment in self.segments:
            n = -(-(segment.end - segment.start) // self.window)
            if shard is None or shard.count == 1:
                total += n
                continue
            # Window i of the segment belongs to shard (salt + first + i) % count.
            offset = (shard.index - self._salt - segment.start // self.window) % shard.count
            total += max(0, -(-(n - offset) // shard.count))
        return total

    def windows(
        self, order: Order = Order.OLDEST_FIRST, shard: Shard | None = None
    ) -> Iterator[Window]:
        """Stream this flow's windows (those of ``shard`` only, when given)."""
        if isinstance(self.window, Calendar):
            return self._calendar_windows(self.window, order, shard)
        return self._fixed_windows(self.window, order, shard)

    def _calendar_windows(
        self, calendar: Calendar, order: Order, shard: Shard | None
    ) -> Iterator[Window]:
        flow_id = self.flow_id
        newest_first = order is Order.NEWEST_FIRST
        segments = reversed(self.segments) if newest_first else self.segments
        for segment in segments:
            grid = Grid(calendar, segment.start)
            cuts = (_cuts_backward if newest_first else _cuts_forward)(grid, segment)
            for start, end in cuts:
                if shard is None or self._owner(start, shard.count) == shard.index:
                    yield Window(flow_id, start, end)

    def _fixed_windows(self, size: int, order: Order, shard: Shard | None) -> Iterator[Window]:
        flow_id = self.flow_id
        segments = self.segments if order is Order.OLDEST_FIRST else reversed(self.segments)
        count, index = (shard.count, shard.index) if shard is not None else (1, 0)
        salt = self._salt
        newest_first = order is Order.NEWEST_FIRST
        for segment in segments:
            first, last = segment.start, segment.end
            if count == 1:
                # The whole windows are zipped from two ranges in C, without a Python call per
                # window (ten years of minutes are 5 million); then the clipped last one.
                cut = first + (last - first) // size * size
                starts, ends = range(first, cut, size), range(first + size, cut + size, size)
                if newest_first:
                    if cut < last:
                        yield Window(flow_id, cut, last)
                    yield from map(_window, zip(repeat(flow_id), starts[::-1], ends[::-1]))
                else:
                    yield from map(_window, zip(repeat(flow_id), starts, ends))
                    if cut < last:
                        yield Window(flow_id, cut, last)
            else:
                starts = range(first, last, size)
                if newest_first:
                    starts = starts[::-1]
                for start in starts:
                    if (salt + start // size) % count == index:
                        end = start + size
                        yield Window(flow_id, start, end if end < last else last)

    def owner(self, window_start: int, shard_count: int) -> int:
        """Index of the shard that owns the window starting at ``window_start``."""
        return self._owner(window_start, shard_count)

    def _owner(self, window_start: int, shard_count: int) -> int:
        calendar = self.calendar
        if calendar is None:
            assert isinstance(self.window, int)
            return (self._salt + window_start // self.window) % shard_count
        # Consecutive calendar windows start in consecutive units of n: consecutive shards.
        wall = local(window_start, calendar.zone).replace(tzinfo=None)
        return (self._salt + unit_index(wall, calendar.unit) // calendar.n) % shard_count

    def window_at(self, start: int) -> Window | None:
        """The planned window that starts at ``start``, if there is one."""
        for segment in self.segments:
            if segment.start <= start < segment.end:
                if isinstance(self.window, Calendar):
                    grid = Grid(self.window, segment.start)
                    if start != segment.start and not grid.is_boundary(start):
                        return None
                    return Window(self.flow_id, start, min(grid.after(start), segment.end))
                if (start - segment.start) % self.window:
                    return None
                return Window(self.flow_id, start, min(start + self.window, segment.end))
        return None

    def clipped(self) -> list[str]:
        """What the user should know about clipped first and last windows, in words."""
        calendar = self.calendar
        notes: list[str] = []
        if calendar is None:
            assert isinstance(self.window, int)
            last = self.segments[-1]
            if (last.end - last.start) % self.window:
                cut = last.end - (last.end - last.start) % self.window
                notes.append(
                    f"the last window {self.show(cut)} .. {self.show(last.end)} is clipped to "
                    f"the range's end ({format_window(self.window)} would end at "
                    f"{self.show(cut + self.window)})"
                )
            return notes
        first, last = self.segments[0], self.segments[-1]
        head = Grid(calendar, first.start)
        if calendar.align is Align.CALENDAR and not head.is_boundary(first.start):
            k = head.locate(first.start)
            notes.append(
                f"the first window starts at {self.show(first.start)}, after the {calendar} "
                f"boundary {self.show(head.boundary(k))}: it is clipped to the range's start"
            )
        tail = Grid(calendar, last.start)
        if last.end != last.start and not tail.is_boundary(last.end):
            notes.append(
                f"the last window ends at {self.show(last.end)}, before the {calendar} boundary "
                f"{self.show(tail.after(last.end))}: it is clipped to the range's end"
            )
        return notes

    def show(self, seconds: int) -> str:
        """A moment as this plan's zone sees it: local ISO-8601 with the offset (Z in UTC)."""
        return format_time(seconds) if self.zone == "UTC" else format_local(seconds, self.zone)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.flow_id,
            "window": self.window if isinstance(self.window, int) else str(self.window),
            "segments": [[s.start, s.end] for s in self.segments],
            "delta_column": self.delta_column,
        }
        if isinstance(self.window, Calendar):
            data |= {
                "zone": self.window.zone,
                "align": self.window.align.value,
                "tzdata": self.tzdata,
                "boundaries": self.boundaries,
            }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlowPlan:
        raw = data["window"]
        window: int | Calendar
        if isinstance(raw, str):
            size = parse_window(raw)
            if not isinstance(size, tuple):
                raise ValueError(f"window {raw!r} is not a calendar size")
            window = Calendar(size[0], size[1], str(data["zone"]), Align(data["align"]))
        else:
            window = int(raw)
        return cls(
            flow_id=str(data["id"]),
            window=window,
            segments=tuple(Segment(int(a), int(b)) for a, b in data["segments"]),
            delta_column=data.get("delta_column"),
            tzdata=data.get("tzdata"),
            boundaries=data.get("boundaries"),
        )

    def describe(self) -> str:
        calendar = self.calendar
        if calendar is None:
            return (
                f"{self.show(self.start)} .. {self.show(self.end)} "
                f"every {format_window(self.window)}"
            )
        return f"{self.show(self.start)} .. {self.show(self.end)} every {calendar.describe()}"

    def moved_boundaries(self) -> str | None:
        """Why the installed zone database cannot resume this recorded plan, if it cannot."""
        calendar = self.calendar
        if calendar is None or self.tzdata == TZDATA_VERSION:
            return None
        if self.rebuilt().boundaries == self.boundaries:
            return None
        return (
            f"flow {self.flow_id}: the time-zone database changed ({self.tzdata} recorded, "
            f"{TZDATA_VERSION} installed) and moves window boundaries in {calendar.zone}; "
            f"install {pip_tzdata(self.tzdata or '')} to resume it"
        )


def _spell(size: int | Calendar) -> str:
    if isinstance(size, Calendar):
        return size.describe()
    return format_window(size)


def _cuts_forward(grid: Grid, segment: Segment) -> Iterator[tuple[int, int]]:
    k = grid.locate(segment.start)
    before, end = segment.start, segment.end
    while before < end:
        k += 1
        boundary = grid.boundary(k)
        if boundary <= before:
            continue  # the zone skipped a whole unit: its boundary is the next one
        boundary = min(boundary, end)
        yield before, boundary
        before = boundary


def _cuts_backward(grid: Grid, segment: Segment) -> Iterator[tuple[int, int]]:
    k = grid.locate(segment.end - 1)
    start, after = segment.start, segment.end
    while after > start:
        boundary = max(grid.boundary(k), start)
        k -= 1
        if boundary >= after:
            continue
        yield boundary, after
        after = boundary


@dataclass(frozen=True, slots=True)
class Plan:
    """Every flow's windows, in the order flows were given."""

    flows: tuple[FlowPlan, ...]
    shard: Shard = Shard()

    def __post_init__(self) -> None:
        ids = [flow.flow_id for flow in self.flows]
        if not ids:
            raise ValueError("the plan has no flows")
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"flow {duplicates[0]} is listed twice; list each flow once")

    def count(self) -> int:
        """Windows of this plan's shard, across all flows."""
        return sum(flow.count(self.shard) for flow in self.flows)

    def flow(self, flow_id: str) -> FlowPlan:
        for flow in self.flows:
            if flow.flow_id == flow_id:
                return flow
        raise KeyError(flow_id)

    def windows(self, order: Order = Order.OLDEST_FIRST) -> Iterator[Window]:
        """This shard's windows of every flow, merged in time order."""
        streams = [flow.windows(order, self.shard) for flow in self.flows]
        if len(streams) == 1:
            return streams[0]
        if order is Order.OLDEST_FIRST:
            return heapq.merge(*streams, key=lambda w: w.start)
        return heapq.merge(*streams, key=lambda w: -w.start)

    def to_json(self) -> dict[str, Any]:
        return {"flows": [flow.to_json() for flow in self.flows], "shard": str(self.shard)}

    def zones(self) -> dict[str, str]:
        """The zone each fixed-size flow's times are shown in, where it is not UTC.

        Not part of the plan (``FlowPlan.zone``), so not in ``to_json`` and its fingerprint:
        the checkpoint keeps them beside it, so ``status`` shows them as the run did.
        """
        return {
            flow.flow_id: flow.zone
            for flow in self.flows
            if flow.calendar is None and flow.zone != "UTC"
        }

    def showing(self, zones: object) -> Plan:
        """This plan with its fixed-size flows' times shown in ``zones`` (``zones()``)."""
        if not zones:
            return self
        if not isinstance(zones, dict):
            raise ValueError(f"zones {zones!r} is not a table of flows and time zones")
        flows = []
        for flow in self.flows:
            zone = zones.get(flow.flow_id)
            if zone is None or flow.calendar is not None:
                flows.append(flow)
                continue
            if not isinstance(zone, str):
                raise ValueError(f"flow {flow.flow_id}: the time zone {zone!r} is no name")
            zone_info(zone)  # an unknown name: ValueError, as for --timezone
            flows.append(replace(flow, zone=zone))
        return replace(self, flows=tuple(flows))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        index, count = (int(part) for part in str(data.get("shard", "0/1")).split("/"))
        return cls(tuple(FlowPlan.from_json(f) for f in data["flows"]), Shard(index, count))

    def fingerprint(self) -> str:
        canonical = orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:32]

    def differences(self, requested: Plan) -> list[str]:
        """What ``requested`` changes about this (recorded) plan, in words."""
        found: list[str] = []
        if self.shard != requested.shard:
            found.append(f"shard {self.shard} recorded, {requested.shard} requested")
        mine = {flow.flow_id: flow for flow in self.flows}
        theirs = {flow.flow_id: flow for flow in requested.flows}
        for flow_id, flow in mine.items():
            other = theirs.get(flow_id)
            if other is None:
                found.append(f"flow {flow_id} is recorded but no longer planned")
                continue
            if flow.window != other.window:
                found.append(
                    f"flow {flow_id}: window {_spell(flow.window)} recorded, "
                    f"{_spell(other.window)} requested"
                )
            elif (moved := flow.moved_boundaries()) is not None:
                found.append(moved)
            if flow.delta_column != other.delta_column:
                found.append(
                    f"flow {flow_id}: delta column {flow.delta_column!r} recorded, "
                    f"{other.delta_column!r} requested"
                )
            if (flow.start, flow.end) != (other.start, other.end):
                found.append(
                    f"flow {flow_id}: {flow.show(flow.start)} .. {flow.show(flow.end)} "
                    f"recorded, {other.show(other.start)} .. {other.show(other.end)} requested"
                )
        found.extend(f"flow {flow_id} is new" for flow_id in theirs if flow_id not in mine)
        return found

    def extended_to(self, requested: Plan) -> Plan:
        """This plan plus the windows ``requested`` adds; ``ValueError`` if it removes any.

        An extension may start earlier, end later or add flows. Recorded windows keep their
        boundaries: the new time is planned as segments of its own before and after them.
        """
        problems: list[str] = []
        if self.shard != requested.shard:
            problems.append(f"shard {self.shard} recorded, {requested.shard} requested")
        theirs = {flow.flow_id: flow for flow in requested.flows}
        flows: list[FlowPlan] = []
        for flow in self.flows:
            other = theirs.pop(flow.flow_id, None)
            if other is None:
                problems.append(f"flow {flow.flow_id} is recorded but no longer planned")
                continue
            if flow.window != other.window or flow.delta_column != other.delta_column:
                problems.append(f"flow {flow.flow_id}: window size or delta column changed")
                continue
            moved = flow.moved_boundaries()
            if moved is not None:
                problems.append(moved)
                continue
            if (other.start, other.end) == (flow.start, flow.end):
                flows.append(flow)  # as recorded, with the zone database that cut it
                continue
            if other.start > flow.start or other.end < flow.end:
                problems.append(
                    f"flow {flow.flow_id}: {format_time(other.start)} .. "
                    f"{format_time(other.end)} drops recorded windows of "
                    f"{format_time(flow.start)} .. {format_time(flow.end)}"
                )
                continue
            segments: list[Segment] = []
            if other.start < flow.start:
                segments.append(Segment(other.start, flow.start))
            segments.extend(flow.segments)
            if other.end > flow.end:
                segments.append(Segment(flow.end, other.end))
            flows.append(FlowPlan(flow.flow_id, flow.window, tuple(segments), flow.delta_column))
        flows.extend(theirs.values())
        if problems:
            raise ValueError("; ".join(problems))
        return Plan(tuple(flows), self.shard)
