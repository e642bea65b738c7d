"""Calendar windows in a time zone: units, the zone database, and where boundaries fall. Pure.

A calendar window is ``n`` days, weeks (ISO: from Monday), months, quarters or years, counted
in the wall-clock time of an IANA zone. Its boundaries are local midnights (or, aligned to the
range's start, the start's local time of day), so a day lasts 23, 24 or 25 hours and a month
28 to 31 days. The arithmetic is the standard library's (``zoneinfo``, ``datetime``) and
python-dateutil's ``relativedelta`` for month steps that clip to a month's last day.

Zones come from the ``tzdata`` package only, never from the operating system's copy, so a plan
is the same on every machine and in the container image; ``TZDATA_VERSION`` names the database
(recorded in the checkpoint). Reading a zone's file from the installed package is how a zone is
loaded at all; it is data shipped with the program, like its code, and depends on no clock.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from zoneinfo import ZoneInfo

import tzdata
from dateutil.relativedelta import relativedelta

__all__ = [
    "TZDATA_VERSION",
    "Align",
    "Calendar",
    "Grid",
    "Unit",
    "check_zone",
    "format_local",
    "pip_tzdata",
    "zone",
]

TZDATA_VERSION: str = str(tzdata.IANA_VERSION)  # e.g. "2024a"

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")


class Unit(StrEnum):
    """A calendar unit, spelled as in a window size (``1d``, ``2w``, ``3mo``, ``1q``, ``1y``)."""

    DAY = "d"
    WEEK = "w"
    MONTH = "mo"
    QUARTER = "q"
    YEAR = "y"


# The longest any one unit lasts, in seconds, in any zone since 1990: a day with a 2-hour
# clock change (Antarctica/Troll) or a zone that moved across the date line by a day.
LONGEST = {
    Unit.DAY: 26 * 3600,
    Unit.WEEK: 7 * 86400 + 2 * 3600,
    Unit.MONTH: 31 * 86400 + 2 * 3600,
    Unit.QUARTER: 92 * 86400 + 2 * 3600,
    Unit.YEAR: 366 * 86400 + 2 * 3600,
}


class Align(StrEnum):
    """Where calendar windows are cut."""

    CALENDAR = "calendar"  # on the zone's calendar boundaries (local midnight, Monday, the 1st)
    START = "start"  # from the range's start, every n units of wall-clock time


@dataclass(frozen=True, slots=True)
class Calendar:
    """A calendar window size: ``n`` units in ``zone``, cut as ``align`` says."""

    n: int
    unit: Unit
    zone: str
    align: Align = Align.CALENDAR

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"{self.n}{self.unit} is not a positive window size; use e.g. 1d")
        check_zone(self.zone)

    def __str__(self) -> str:
        return f"{self.n}{self.unit.value}"

    @property
    def longest(self) -> int:
        """An upper bound of one window's length in seconds."""
        return self.n * LONGEST[self.unit]

    def describe(self) -> str:
        cut = "on calendar boundaries" if self.align is Align.CALENDAR else "from the start"
        return f"{self} in {self.zone}, cut {cut}"


@cache
def _zone_names() -> tuple[str, ...]:
    text = importlib.resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return tuple(sorted({*text.split(), "UTC"}))


def check_zone(name: str) -> str:
    """``name`` if the zone database has it; ``ValueError`` saying how to write it otherwise."""
    zone(name)
    return name


@cache
def zone(name: str) -> ZoneInfo:
    """The zone ``name`` from the ``tzdata`` package (never the system's copy)."""
    if not isinstance(name, str) or not _ZONE_NAME.fullmatch(name):
        raise ValueError(_unknown(name))
    resource = importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/"))
    try:
        with resource.open("rb") as handle:
            return ZoneInfo.from_file(handle, key=name)
    except (OSError, ValueError):
        raise ValueError(_unknown(name)) from None


def _unknown(name: object) -> str:
    close = difflib.get_close_matches(str(name), _zone_names(), n=1) if name else []
    hint = f"did you mean {close[0]}?" if close else "give an IANA name such as Europe/Madrid"
    return f"{name!r} is not a time zone of the IANA database ({TZDATA_VERSION}); {hint} (or UTC)"


def pip_tzdata(version: str) -> str:
    """The ``tzdata`` package that ships IANA release ``version``: ``2024a`` -> ``2024.1``."""
    match = re.fullmatch(r"(\d{4})([a-z])", version)
    if match is None:
        return "tzdata"
    return f"tzdata=={match.group(1)}.{ord(match.group(2)) - ord('a') + 1}"


def local(seconds: int, name: str) -> datetime:
    """The wall-clock time in zone ``name`` at unix time ``seconds`` (aware)."""
    return datetime.fromtimestamp(seconds, zone(name))


def format_local(seconds: int, name: str) -> str:
    """ISO-8601 local time with its offset, e.g. ``2024-03-31T00:00:00+01:00``."""
    try:
        return local(seconds, name).isoformat()
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def instant(wall: datetime, name: str) -> int:
    """Unix seconds of a naive wall-clock time in zone ``name``.

    A time that the clocks skipped (a spring-forward gap, a day a zone dropped) is moved
    forward by the gap, as PEP 495's ``fold=0`` does; a time that happens twice is its first
    occurrence.
    """
    return int(wall.replace(tzinfo=zone(name), fold=0).timestamp())


def exists(wall: datetime, name: str) -> bool:
    """Whether the naive wall-clock time happens exactly once in zone ``name``."""
    tz = zone(name)
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        return False  # skipped or repeated
    return datetime.fromtimestamp(first.timestamp(), tz).replace(tzinfo=None) == wall


def unit_index(wall: datetime, unit: Unit) -> int:
    """Which unit (counted from 0001-01-01, a Monday) the wall-clock time falls in."""
    if unit is Unit.DAY:
        return wall.toordinal() - 1
    if unit is Unit.WEEK:
        return (wall.toordinal() - 1) // 7
    if unit is Unit.MONTH:
        return wall.year * 12 + wall.month - 1
    if unit is Unit.QUARTER:
        return wall.year * 4 + (wall.month - 1) // 3
    return wall.year


def unit_start(index: int, unit: Unit) -> datetime:
    """The naive wall-clock time at which unit ``index`` begins."""
    if unit is Unit.DAY:
        return datetime.fromordinal(index + 1)
    if unit is Unit.WEEK:
        return datetime.fromordinal(index * 7 + 1)
    if unit is Unit.MONTH:
        return datetime(index // 12, index % 12 + 1, 1)
    if unit is Unit.QUARTER:
        return datetime(index // 4, index % 4 * 3 + 1, 1)
    return datetime(index, 1, 1)


def _step(calendar: Calendar, k: int) -> timedelta | relativedelta:
    units = k * calendar.n
    if calendar.unit is Unit.DAY:
        return timedelta(days=units)
    if calendar.unit is Unit.WEEK:
        return timedelta(weeks=units)
    months = {Unit.MONTH: 1, Unit.QUARTER: 3, Unit.YEAR: 12}[calendar.unit]
    return relativedelta(months=units * months)


class Grid:
    """The candidate boundaries of one segment's calendar windows.

    ``boundary(k)`` is non-decreasing in ``k`` (equal values happen only where a zone skipped
    a whole unit, and count once). Aligned to the calendar, boundary ``k`` is the start of unit
    ``k * n``; aligned to the start, it is the segment's start plus ``k * n`` units of wall
    time, each step taken from the start (Jan 31 + 1 month is Feb 29, + 2 months is Mar 31).
    """

    __slots__ = ("_anchor", "_calendar", "_origin")

    def __init__(self, calendar: Calendar, segment_start: int) -> None:
        self._calendar = calendar
        self._anchor = local(segment_start, calendar.zone).replace(tzinfo=None)
        self._origin = unit_index(self._anchor, calendar.unit)

    def boundary(self, k: int) -> int:
        calendar = self._calendar
        if calendar.align is Align.CALENDAR:
            wall = unit_start(k * calendar.n, calendar.unit)
        else:
            wall = self._anchor + _step(calendar, k)
        return instant(wall, calendar.zone)

    def locate(self, seconds: int) -> int:
        """The ``k`` with ``boundary(k) <= seconds < boundary(k + 1)``."""
        k = self.guess(seconds)
        while self.boundary(k) > seconds:
            k -= 1
        while self.boundary(k + 1) <= seconds:
            k += 1
        return k

    def guess(self, seconds: int) -> int:
        calendar = self._calendar
        index = unit_index(local(seconds, calendar.zone).replace(tzinfo=None), calendar.unit)
        if calendar.align is Align.CALENDAR:
            return index // calendar.n
        return (index - self._origin) // calendar.n

    def is_boundary(self, seconds: int) -> bool:
        return self.boundary(self.locate(seconds)) == seconds

    def after(self, seconds: int) -> int:
        """The first boundary later than ``seconds``."""
        return self.boundary(self.locate(seconds) + 1)
