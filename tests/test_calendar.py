"""Calendar windows in time zones: exact values, and properties across the whole zone database."""

from __future__ import annotations

import itertools
import os
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.calendar import (
    TZDATA_VERSION,
    Align,
    Calendar,
    Unit,
    _zone_names,
    local,
    pip_tzdata,
    unit_index,
    zone,
)
from backfill.errors import PlanMismatch
from backfill.journal import Journal
from backfill.planner import (
    EARLIEST,
    FlowPlan,
    Order,
    Plan,
    Segment,
    Shard,
    Window,
    parse_time,
    parse_window,
)
from backfill.settings import load_settings

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
HOUR = 3600
DAY = 86400

# Zones chosen for what their clocks do; the property tests also draw from every zone.
SPECIAL = [
    "UTC",
    "Europe/Madrid",  # DST, 23- and 25-hour days
    "America/New_York",
    "America/Havana",  # DST starts at midnight: some days begin at 01:00
    "America/Santiago",  # DST at midnight, southern hemisphere
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Adelaide",  # +09:30 with DST
    "Australia/Lord_Howe",  # half-hour DST
    "America/St_Johns",  # -03:30 with DST
    "Pacific/Chatham",  # +12:45 with DST
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "Pacific/Kiritimati",  # skipped 1994-12-31
    "Antarctica/Troll",  # 2-hour DST
    "Africa/Casablanca",  # DST suspended during Ramadan
    "Asia/Tehran",
]
ALL_ZONES = sorted(set(_zone_names()))


def _cal(n: int, unit: str, zone_name: str, align: Align = Align.CALENDAR) -> Calendar:
    return Calendar(n, Unit(unit), zone_name, align)


def _plan(start: str, end: str, window: str, zone_name: str, **kw: Any) -> FlowPlan:
    size = parse_window(window)
    assert isinstance(size, tuple)
    calendar = Calendar(size[0], size[1], zone_name, kw.pop("align", Align.CALENDAR))
    return FlowPlan.single(
        FLOW, parse_time(start, zone_name), parse_time(end, zone_name), calendar, **kw
    )


def _wall(seconds: int, zone_name: str) -> datetime:
    return local(seconds, zone_name).replace(tzinfo=None)


# ------------------------------------------------------------------------ exact values


def test_madrid_days_around_the_start_of_summer_time() -> None:
    plan = _plan("2024-03-30", "2024-04-02", "1d", "Europe/Madrid")
    windows = list(plan.windows())

    assert [w.end - w.start for w in windows] == [86400, 82800, 86400]
    assert [plan.show(w.start) for w in windows] == [
        "2024-03-30T00:00:00+01:00",
        "2024-03-31T00:00:00+01:00",
        "2024-04-01T00:00:00+02:00",
    ]
    assert windows[0].start == 1711753200  # 2024-03-29T23:00:00Z
    assert plan.clipped() == []


def test_madrid_day_at_the_end_of_summer_time_lasts_25_hours() -> None:
    plan = _plan("2024-10-26", "2024-10-29", "1d", "Europe/Madrid")

    assert [w.end - w.start for w in plan.windows()] == [86400, 90000, 86400]


def test_new_york_months_of_2024_start_at_local_midnight_of_the_first() -> None:
    plan = _plan("2024-01-01", "2025-01-01", "1mo", "America/New_York")
    windows = list(plan.windows())

    assert len(windows) == 12
    for month, window in enumerate(windows, start=1):
        assert _wall(window.start, "America/New_York") == datetime(2024, month, 1)
    offsets = {local(w.start, "America/New_York").utcoffset() for w in windows}
    assert offsets == {timedelta(hours=-5), timedelta(hours=-4)}
    assert windows[-1].end == parse_time("2025-01-01T00:00:00-05:00")


def test_utc_weeks_start_on_mondays_and_are_clipped_at_both_ends() -> None:
    plan = _plan("2024-01-03", "2024-02-01", "1w", "UTC")
    windows = list(plan.windows())

    assert [(w.start, w.end) for w in windows] == [
        (parse_time("2024-01-03"), parse_time("2024-01-08")),
        (parse_time("2024-01-08"), parse_time("2024-01-15")),
        (parse_time("2024-01-15"), parse_time("2024-01-22")),
        (parse_time("2024-01-22"), parse_time("2024-01-29")),
        (parse_time("2024-01-29"), parse_time("2024-02-01")),
    ]
    assert all(_wall(w.start, "UTC").weekday() == 0 for w in windows[1:])
    first, last = plan.clipped()
    assert "first window starts at 2024-01-03T00:00:00Z" in first
    assert "boundary 2024-01-01T00:00:00Z" in first
    assert "last window ends at 2024-02-01T00:00:00Z" in last
    assert "boundary 2024-02-05T00:00:00Z" in last


def test_quarters_years_and_multiples() -> None:
    quarters = _plan("2023-11-15", "2024-12-31", "1q", "Europe/Berlin")
    starts = [_wall(w.start, "Europe/Berlin").date() for w in quarters.windows()]
    assert starts == [date(2023, 11, 15), *(date(2024, m, 1) for m in (1, 4, 7, 10))]

    years = _plan("2020-01-01", "2024-01-01", "2y", "Asia/Tokyo")
    assert [_wall(w.start, "Asia/Tokyo").year for w in years.windows()] == [2020, 2022]

    # Multiples count from the calendar's origin, not from the range: the same fortnights
    # whatever the range, so a later extension cuts them the same way.
    fortnights = list(_plan("2024-01-01", "2024-03-04", "2w", "UTC").windows())
    assert [(w.end - w.start) // DAY for w in fortnights] == [7, 14, 14, 14, 14]
    assert {_wall(w.start, "UTC").weekday() for w in fortnights} == {0}


def test_months_aligned_to_the_start_clip_to_the_months_last_day() -> None:
    plan = _plan("2024-01-31", "2024-05-01", "1mo", "UTC", align=Align.START)
    starts = [_wall(w.start, "UTC").date() for w in plan.windows()]

    assert starts == [date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)]


def test_a_day_the_zone_skipped_is_no_window() -> None:
    plan = _plan("2011-12-28", "2012-01-02", "1d", "Pacific/Apia")
    days = [_wall(w.start, "Pacific/Apia").date() for w in plan.windows()]

    assert days == [date(2011, 12, d) for d in (28, 29, 31)] + [date(2012, 1, 1)]
    with pytest.raises(ValueError, match="skipped that day"):
        parse_time("2011-12-30", "Pacific/Apia")


def test_times_without_an_offset_are_read_in_the_zone() -> None:
    assert parse_time("2024-03-30", "Europe/Madrid") == parse_time("2024-03-30T00:00:00+01:00")
    assert parse_time("2024-07-01T12:00:00", "Asia/Kolkata") == parse_time("2024-07-01T06:30:00Z")
    assert parse_time("2024-07-01T12:00:00Z", "Asia/Kolkata") == parse_time("2024-07-01T12:00:00Z")
    with pytest.raises(ValueError, match="exactly once"):
        parse_time("2024-03-31T02:30:00", "Europe/Madrid")  # skipped
    with pytest.raises(ValueError, match="exactly once"):
        parse_time("2024-10-27T02:30:00", "Europe/Madrid")  # happens twice


def test_days_and_weeks_in_utc_from_a_boundary_are_the_fixed_size_they_equal() -> None:
    """The same windows and fingerprint as before calendar sizes: old checkpoints resume."""
    day = FlowPlan.single(
        FLOW, parse_time("2024-01-01"), parse_time("2024-02-01"), _cal(1, "d", "UTC")
    )
    assert day.window == DAY
    assert day == FlowPlan.single(FLOW, day.start, day.end, DAY)
    week = FlowPlan.single(
        FLOW, parse_time("2024-01-01"), parse_time("2024-02-01"), _cal(1, "w", "UTC")
    )
    assert week.window == 7 * DAY
    clipped = FlowPlan.single(
        FLOW, parse_time("2024-01-03"), parse_time("2024-02-01"), _cal(1, "w", "UTC")
    )
    assert isinstance(clipped.window, Calendar)


def test_unknown_zones_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match="did you mean Europe/Madrid"):
        zone("Europe/Madird")
    for bad in ("", "../../etc/passwd", "Europe/", "/UTC"):
        with pytest.raises(ValueError, match="not a time zone"):
            zone(bad)


def test_pip_names_the_package_of_a_release() -> None:
    assert pip_tzdata("2024a") == "tzdata==2024.1"
    assert pip_tzdata("2026f") == "tzdata==2026.6"


# ----------------------------------------------------------------- properties


def _boundary_at(seconds: int, zone_name: str, unit: Unit, n: int) -> bool:
    """Whether the local calendar turns to a new unit (one of every n) at ``seconds``."""
    before = unit_index(_wall(seconds - 1, zone_name), unit)
    after = unit_index(_wall(seconds, zone_name), unit)
    # A unit the zone skipped (Apia's 2011-12-30) turns the calendar by two at once.
    return any(index % n == 0 for index in range(before + 1, after + 1))


def zone_skipped_a_day(zone_name: str, window: Window) -> bool:
    """Whether a local date is missing around the window (a zone that crossed the date line)."""
    dates = {_wall(t, zone_name).date() for t in range(window.start - DAY, window.end + DAY, HOUR)}
    first, last = min(dates), max(dates)
    return len(dates) < (last - first).days + 1


_UNIT_SPAN = {Unit.DAY: 400, Unit.WEEK: 120, Unit.MONTH: 60, Unit.QUARTER: 24, Unit.YEAR: 12}


# Moments where a zone's clocks did something unusual: plans are drawn around them half the time.
EVENTS = [
    ("Pacific/Apia", "2011-12-30T10:00:00Z"),  # skipped Friday 30 December 2011
    ("Pacific/Kiritimati", "1995-01-01T10:00:00Z"),  # skipped 31 December 1994
    ("Europe/Madrid", "2024-03-31T01:00:00Z"),
    ("Europe/Madrid", "2024-10-27T01:00:00Z"),
    ("America/Havana", "2024-03-10T05:00:00Z"),  # midnight skipped: the day starts at 01:00
    ("America/Santiago", "2024-09-08T04:00:00Z"),
    ("Australia/Lord_Howe", "2024-04-06T15:00:00Z"),  # 30-minute DST
    ("Pacific/Chatham", "2024-04-06T14:00:00Z"),
    ("America/St_Johns", "2024-11-03T04:30:00Z"),
    ("Antarctica/Troll", "2024-03-31T01:00:00Z"),  # 2-hour DST
    ("Asia/Kathmandu", "1990-06-01T00:00:00Z"),
]


@st.composite
def calendar_plans(draw: st.DrawFn) -> FlowPlan:
    unit = draw(st.sampled_from(list(Unit)))
    n = draw(st.integers(1, 3))
    align = draw(st.sampled_from(list(Align)))
    span = _UNIT_SPAN[unit] * LONG[unit]
    if draw(st.booleans()):
        zone_name, moment = draw(st.sampled_from(EVENTS))
        around = parse_time(moment)
        start = draw(st.integers(max(EARLIEST, around - 3 * LONG[unit] * n), around))
    else:
        zone_name = draw(st.sampled_from(SPECIAL) | st.sampled_from(ALL_ZONES))
        start = draw(st.integers(EARLIEST, 4_000_000_000))
    cuts = sorted(draw(st.lists(st.integers(1, span), min_size=1, max_size=3, unique=True)))
    edges = [start, *(start + c for c in cuts)]
    segments = tuple(Segment(a, b) for a, b in itertools.pairwise(edges))
    return FlowPlan(FLOW, Calendar(n, unit, zone_name, align), segments)


LONG = {
    Unit.DAY: DAY,
    Unit.WEEK: 7 * DAY,
    Unit.MONTH: 30 * DAY,
    Unit.QUARTER: 91 * DAY,
    Unit.YEAR: 365 * DAY,
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calendar_plans())
def test_calendar_windows_are_contiguous_cover_exactly_and_start_on_boundaries(
    plan: FlowPlan,
) -> None:
    calendar = plan.calendar
    assert calendar is not None
    windows = list(plan.windows())

    assert windows[0].start == plan.start
    assert windows[-1].end == plan.end
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    assert all(w.start < w.end <= w.start + calendar.longest for w in windows)
    assert list(plan.windows(Order.NEWEST_FIRST)) == windows[::-1]
    assert plan.count() == len(windows)

    segment_starts = {s.start for s in plan.segments}
    segment_ends = {s.end for s in plan.segments}
    starts = {w.start for w in windows}
    for window in windows:
        assert plan.window_at(window.start) == window
        if calendar.align is Align.CALENDAR:
            # Each window starts and ends on a local boundary, unless clipped to the range.
            if window.start not in segment_starts:
                assert _boundary_at(window.start, calendar.zone, calendar.unit, calendar.n)
            if window.end not in segment_ends:
                assert _boundary_at(window.end, calendar.zone, calendar.unit, calendar.n)
        # A whole window spans n units of the local calendar; one more or one fewer where the
        # zone skipped a unit (Apia's 2011-12-30) inside it or at its start.
        if window.start not in segment_starts and window.end not in segment_ends:
            span = unit_index(_wall(window.end, calendar.zone), calendar.unit) - unit_index(
                _wall(window.start, calendar.zone), calendar.unit
            )
            assert calendar.n - 1 <= span <= calendar.n + 1
            assert span == calendar.n or zone_skipped_a_day(plan.zone, window)
        if window.start + 1 not in starts:
            assert plan.window_at(window.start + 1) is None


@settings(max_examples=100, deadline=None)
@given(calendar_plans(), st.integers(2, 5))
def test_shards_split_calendar_windows_exactly(plan: FlowPlan, count: int) -> None:
    everything = list(plan.windows())
    shares = [list(plan.windows(shard=Shard(i, count))) for i in range(count)]

    assert sorted(w for share in shares for w in share) == everything
    assert [plan.count(Shard(i, count)) for i in range(count)] == [len(s) for s in shares]
    for i, share in enumerate(shares):
        assert all(plan.owner(w.start, count) == i for w in share)


@settings(max_examples=100, deadline=None)
@given(calendar_plans())
def test_a_calendar_plan_survives_its_json_and_extends_without_moving_a_boundary(
    plan: FlowPlan,
) -> None:
    again = FlowPlan.from_json(orjson.loads(orjson.dumps(plan.to_json())))
    assert again == plan
    assert again.tzdata == TZDATA_VERSION

    recorded = Plan((plan,))
    calendar = plan.calendar
    assert calendar is not None
    later = FlowPlan(FLOW, calendar, (Segment(plan.start, plan.end + 40 * DAY),))
    extended = recorded.extended_to(Plan((later,)))
    old = set(plan.windows())
    new = list(extended.flows[0].windows())
    assert old <= set(new), "every recorded window keeps its boundaries"
    assert new[-1].end == plan.end + 40 * DAY


def test_align_start_keeps_the_time_of_day_of_the_start() -> None:
    plan = _plan(
        "2024-03-25T06:00:00", "2024-04-05T06:00:00", "1d", "Europe/Madrid", align=Align.START
    )
    walls = [_wall(w.start, "Europe/Madrid") for w in plan.windows()]

    assert {w.hour for w in walls} == {6}
    assert len(walls) == 11


# ------------------------------------------------------- the zone database on resume


def _recorded_under_another_database(path: Path, plan: Plan, *, moved: bool) -> None:
    """Rewrite a checkpoint's header as if an older tzdata had written it."""
    lines = path.read_bytes().splitlines()
    header = orjson.loads(lines[0])
    flow = header["plan"]["flows"][0]
    flow["tzdata"] = "2000a"
    if moved:
        flow["boundaries"] = "0" * 16
    header["fingerprint"] = Plan.from_json(header["plan"]).fingerprint()
    path.write_bytes(b"\n".join([orjson.dumps(header), *lines[1:]]) + b"\n")


@pytest.mark.parametrize("moved", [False, True], ids=["same-boundaries", "moved-boundaries"])
async def test_another_zone_database_resumes_only_if_no_boundary_moves(
    tmp_path: Path, moved: bool
) -> None:
    plan = Plan((_plan("2024-01-01", "2025-01-01", "1d", "Europe/Madrid"),))
    path = tmp_path / "ck.jsonl"
    journal = Journal.open(path, plan)
    await journal.close()
    _recorded_under_another_database(path, plan, moved=moved)

    if not moved:
        resumed = Journal.open(path, plan)
        assert resumed.plan.flows[0].tzdata == "2000a"  # the record is kept as it was
        await resumed.close()
        return
    before = path.read_bytes()
    for extend in (False, True):
        with pytest.raises(PlanMismatch) as info:
            Journal.open(path, plan, extend=extend)
        message = str(info.value)
        assert "2000a recorded" in message
        assert f"{TZDATA_VERSION} installed" in message
        assert "tzdata==2000.1" in message
        assert info.value.exit_code == 3
    assert path.read_bytes() == before, "a refused checkpoint is never touched"


# ----------------------------------------------------------------------- settings


def _settings_plan(flags: dict[str, Any], config: Path | None = None) -> Plan:
    return load_settings(flags, config).plan(now=1_800_000_000)


def test_zone_and_alignment_come_from_flags_environment_and_each_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKFILL_"):
            monkeypatch.delenv(name)
    flags = {"flow_id": FLOW, "start": "2024-03-30", "end": "2024-04-02", "window": "1d"}

    monkeypatch.setenv("BACKFILL_TIMEZONE", "Europe/Madrid")
    madrid = _settings_plan(flags).flows[0]
    assert [w.end - w.start for w in madrid.windows()] == [86400, 82800, 86400]

    tokyo = _settings_plan({**flags, "timezone": "Asia/Tokyo"}).flows[0]
    assert tokyo.start == parse_time("2024-03-30T00:00:00+09:00"), "the flag beats the variable"

    monkeypatch.setenv("BACKFILL_ALIGN", "start")
    started = _settings_plan({**flags, "start": "2024-03-30T06:00:00"}).flows[0]
    assert started.calendar == Calendar(1, Unit.DAY, "Europe/Madrid", Align.START)
    monkeypatch.delenv("BACKFILL_ALIGN")
    monkeypatch.delenv("BACKFILL_TIMEZONE")

    config = tmp_path / "zones.toml"
    config.write_text(
        'timezone = "Europe/Madrid"\nwindow = "1mo"\nstart = 2024-01-01\nend = "2025-01-01"\n'
        f'[[flows]]\nid = "{FLOW}"\n'
        '[[flows]]\nid = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"\ntimezone = "America/New_York"\n'
    )
    first, second = _settings_plan({}, config).flows
    assert first.zone == "Europe/Madrid"
    assert second.zone == "America/New_York"
    assert first.start == parse_time("2024-01-01T00:00:00+01:00")
    assert second.start == parse_time("2024-01-01T00:00:00-05:00")
    assert first.count() == second.count() == 12


_LONGEST_ACCEPTED = {"d": 3652, "w": 521, "mo": 120, "q": 40, "y": 10}


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(_LONGEST_ACCEPTED)),
    st.sampled_from(SPECIAL),
    st.sampled_from(list(Align)),
    st.integers(EARLIEST + 2 * DAY, 1_790_000_000),
    st.integers(HOUR, 30 * 365 * DAY),
    st.data(),
)
def test_every_accepted_calendar_size_plans_without_error(
    unit: str, zone_name: str, align: Align, start: int, length: int, data: st.DataObject
) -> None:
    """Found in review: sizes like 3000y reached year 0 (a traceback). Every size up to ten
    years (what ``parse_window`` accepts) plans in every zone; one unit more is refused."""
    most = _LONGEST_ACCEPTED[unit]
    n = data.draw(st.sampled_from([most, most - 1, most // 2 + 1, 1]))
    size = parse_window(f"{n}{unit}")
    assert isinstance(size, tuple)
    plan = FlowPlan.single(FLOW, start, start + length, Calendar(*size, zone_name, align))
    windows = list(plan.windows())
    assert windows[0].start == start
    assert windows[-1].end == start + length
    plan.clipped()
    with pytest.raises(ValueError, match=f"use at most {most}{unit}"):
        parse_window(f"{most + 1}{unit}")


@pytest.mark.parametrize(
    ("text", "offsets"),
    [
        ("2024-10-27T02:30:00", ("+02:00", "+01:00")),  # repeated as summer time ends
        ("2024-03-31T02:30:00", ("+01:00", "+02:00")),  # skipped as summer time starts
    ],
)
def test_an_ambiguous_local_time_is_refused_with_its_own_offsets(
    text: str, offsets: tuple[str, str]
) -> None:
    """Found in review: a repeated time in October was told to write 2024-03-31T03:30:00+02:00."""
    with pytest.raises(ValueError, match="does not happen exactly once") as refused:
        parse_time(text, "Europe/Madrid")
    message = str(refused.value)
    assert f"{text}{offsets[0]} or {text}{offsets[1]}" in message
    assert "2024-03-31T03:30:00" not in message
    for offset in offsets:  # each suggestion is accepted as written
        assert parse_time(text + offset, "Europe/Madrid")
