"""The planner: window invariants (by property), sharding, laziness, time parsing, plan changes."""

from __future__ import annotations

import inspect
import itertools
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.planner import (
    EARLIEST,
    LATEST,
    FlowPlan,
    Order,
    Plan,
    Segment,
    Shard,
    Window,
    format_duration,
    format_time,
    parse_duration,
    parse_time,
)

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
OTHER = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
DAY = 86400
START = 1704067200  # 2024-01-01T00:00:00Z
WHOLE = Shard()
MAX_WINDOWS = 400  # keeps every example small enough to list in full


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    """(start, end, window): start < end inside [EARLIEST, LATEST), window of 1 s .. 10 days."""
    window = draw(
        st.one_of(
            st.integers(min_value=1, max_value=10).map(lambda days: days * DAY),
            st.integers(min_value=1, max_value=10 * DAY),
        )
    )
    start = draw(st.integers(min_value=EARLIEST, max_value=LATEST - 2))
    longest = min(LATEST - 1 - start, window * MAX_WINDOWS)
    end = start + draw(st.integers(min_value=1, max_value=max(1, longest)))
    return start, end, window


def assert_contiguous(windows: list[Window], start: int, end: int, size: int) -> None:
    """``windows`` (oldest first) cover [start, end) exactly, back to back, none too long."""
    assert windows, "a non-empty range has at least one window"
    assert windows[0].start == start
    assert windows[-1].end == end
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start, f"gap or overlap between {before} and {after}"
    for window in windows:
        assert 0 < window.end - window.start <= size


def assert_tiles(windows: list[Window], start: int, end: int, size: int) -> None:
    """As ``assert_contiguous``, and every window but the last is exactly ``size`` long."""
    assert_contiguous(windows, start, end, size)
    for window in windows[:-1]:
        assert window.end - window.start == size, f"{window} is short but not the last"


# ----------------------------------------------------------------- window invariants


@settings(deadline=None)
@given(ranges())
def test_windows_tile_the_range_exactly(case: tuple[int, int, int]) -> None:
    start, end, size = case
    flow = FlowPlan.single(FLOW, start, end, size)

    windows = list(flow.windows())

    assert_tiles(windows, start, end, size)
    assert {w.flow_id for w in windows} == {FLOW}
    assert sum(w.end - w.start for w in windows) == end - start


@settings(deadline=None)
@given(ranges())
def test_newest_first_is_the_same_windows_reversed(case: tuple[int, int, int]) -> None:
    start, end, size = case
    flow = FlowPlan.single(FLOW, start, end, size)

    oldest = list(flow.windows(Order.OLDEST_FIRST))
    newest = list(flow.windows(Order.NEWEST_FIRST))

    assert newest == oldest[::-1]


@settings(deadline=None)
@given(ranges())
def test_count_equals_the_number_of_windows(case: tuple[int, int, int]) -> None:
    start, end, size = case
    flow = FlowPlan.single(FLOW, start, end, size)

    assert flow.count() == len(list(flow.windows()))
    assert Plan((flow,)).count() == flow.count()


@settings(deadline=None)
@given(ranges(), st.integers(min_value=1, max_value=6), st.sampled_from([FLOW, OTHER, "x"]))
def test_shards_partition_the_windows(case: tuple[int, int, int], count: int, flow_id: str) -> None:
    start, end, size = case
    flow = FlowPlan.single(flow_id, start, end, size)
    everything = list(flow.windows())

    shares = [list(flow.windows(shard=Shard(index, count))) for index in range(count)]

    union: Counter[Window] = Counter()
    for index, share in enumerate(shares):
        union.update(share)
        assert flow.count(Shard(index, count)) == len(share)
        assert Plan((flow,), Shard(index, count)).count() == len(share)
        assert all(flow.owner(w.start, count) == index for w in share)
        # a shard streams its windows in the plan's order
        mine = set(share)
        assert share == [w for w in everything if w in mine]
    assert union == Counter(everything), "every window in exactly one shard"


@settings(deadline=None)
@given(ranges(), st.integers(min_value=1, max_value=6))
def test_shards_are_even(case: tuple[int, int, int], count: int) -> None:
    start, end, size = case
    flow = FlowPlan.single(FLOW, start, end, size)

    sizes = [flow.count(Shard(index, count)) for index in range(count)]

    assert max(sizes) - min(sizes) <= 1


@settings(deadline=None)
@given(ranges(), st.integers(min_value=1, max_value=6))
def test_sharded_newest_first_is_the_shard_reversed(case: tuple[int, int, int], count: int) -> None:
    start, end, size = case
    flow = FlowPlan.single(FLOW, start, end, size)
    for index in range(count):
        shard = Shard(index, count)
        oldest = list(flow.windows(Order.OLDEST_FIRST, shard))
        assert list(flow.windows(Order.NEWEST_FIRST, shard)) == oldest[::-1]


@st.composite
def segmented(draw: st.DrawFn) -> tuple[int, list[int]]:
    """(window, segment lengths): up to four segments of up to 100 windows each."""
    size = draw(st.integers(min_value=1, max_value=10 * DAY))
    lengths = draw(st.lists(st.integers(min_value=1, max_value=100 * size), min_size=1, max_size=4))
    return size, lengths


@settings(deadline=None)
@given(segmented(), st.integers(min_value=1, max_value=6))
def test_segmented_flows_tile_and_shard(case: tuple[int, list[int]], count: int) -> None:
    size, lengths = case
    bounds = list(itertools.accumulate(lengths, initial=START))
    flow = FlowPlan(FLOW, size, tuple(Segment(a, b) for a, b in itertools.pairwise(bounds)))
    everything = list(flow.windows())

    for segment in flow.segments:
        inside = [w for w in everything if segment.start <= w.start < segment.end]
        assert_tiles(inside, segment.start, segment.end, size)
    assert flow.count() == len(everything)
    union: Counter[Window] = Counter()
    for index in range(count):
        share = list(flow.windows(shard=Shard(index, count)))
        assert flow.count(Shard(index, count)) == len(share)
        union.update(share)
    assert union == Counter(everything)


@settings(deadline=None)
@given(ranges())
def test_window_at_finds_exactly_the_planned_windows(case: tuple[int, int, int]) -> None:
    start, end, size = case
    flow = FlowPlan.single(FLOW, start, end, size)
    windows = list(itertools.islice(flow.windows(), 50))

    for window in windows:
        assert flow.window_at(window.start) == window
    if size > 1:
        assert flow.window_at(start + 1) is None
    assert flow.window_at(start - 1) is None
    assert flow.window_at(end) is None


def test_a_short_range_is_one_clipped_window() -> None:
    flow = FlowPlan.single(FLOW, START, START + 3600, DAY)

    assert list(flow.windows()) == [Window(FLOW, START, START + 3600)]
    assert flow.count() == 1


# ----------------------------------------------------------------------- laziness


def test_ten_years_of_minutes_stream_lazily() -> None:
    end = START + 10 * 365 * DAY
    flow = FlowPlan.single(FLOW, START, end, 60)

    stream = flow.windows()
    first = list(itertools.islice(stream, 10))
    newest = next(flow.windows(Order.NEWEST_FIRST))
    sharded = list(itertools.islice(flow.windows(shard=Shard(5, 6)), 3))

    assert inspect.isgenerator(stream)
    assert first == [Window(FLOW, START + 60 * i, START + 60 * (i + 1)) for i in range(10)]
    assert newest == Window(FLOW, end - 60, end)
    assert all(flow.owner(w.start, 6) == 5 for w in sharded)
    assert flow.count() == 10 * 365 * 24 * 60  # counted without listing 5 million windows
    assert sum(flow.count(Shard(i, 6)) for i in range(6)) == flow.count()


def test_a_plan_of_many_flows_streams_lazily() -> None:
    end = START + 10 * 365 * DAY
    plan = Plan((FlowPlan.single(FLOW, START, end, 60), FlowPlan.single(OTHER, START, end, 60)))

    stream = plan.windows()
    first = list(itertools.islice(stream, 4))

    assert not isinstance(stream, list | tuple)
    assert iter(stream) is stream
    assert [w.start for w in first] == [START, START, START + 60, START + 60]


# ---------------------------------------------------------------------- parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1651584991, 1651584991),
        ("1651584991", 1651584991),
        ("  1651584991 ", 1651584991),
        ("2024-01-31", 1706659200),
        ("2024-01-31T12:00:00Z", 1706702400),
        ("2024-01-31T12:00:00+00:00", 1706702400),
        ("2024-01-31T13:00:00+01:00", 1706702400),
        ("2024-01-31T07:00:00-05:00", 1706702400),
        ("2024-01-31T12:00:00", 1706702400),  # no offset: UTC, not the machine's zone
        ("2024-01-31 12:00:00", 1706702400),
    ],
)
def test_parse_time_accepts(text: str | int, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's zone is UTC-5 (a POSIX TZ string: no zoneinfo files needed)."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_times_without_an_offset_are_utc_whatever_the_machine_zone() -> None:
    assert time.timezone == 5 * 3600, "the fixture took effect"
    assert parse_time("2024-01-31T12:00:00") == 1706702400
    assert parse_time("2024-01-31") == 1706659200
    assert format_time(1706702400) == "2024-01-31T12:00:00Z"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (1651584991000, ["milliseconds", "1651584991"]),
        ("1651584991000", ["milliseconds", "divide it by 1000", "1651584991"]),
        (16515859567, ["not a plausible unix time", "2493", "10 digits"]),
        ("16515859567", ["not a plausible unix time", "2493", "10 digits"]),
        ("garbage", ["'garbage' is not a time", "unix seconds", "ISO-8601"]),
        ("2024-13-45", ["is not a time"]),
        ("2024-01-31T12:00:00.5Z", ["fractions of a second"]),
        ("2024-01-31T12:00:00.250", ["fractions of a second"]),
        ("1651584991.5", ["is not a time", "unix seconds"]),
        ("", ["empty"]),
        ("   ", ["empty"]),
        (-5, ["not a plausible unix time"]),
        ("1989-12-31", ["outside the times backfill plans"]),
        ("2100-01-01", ["outside the times backfill plans"]),
        (LATEST, ["not a plausible unix time"]),
        (EARLIEST - 1, ["not a plausible unix time"]),
    ],
)
def test_parse_time_refuses_with_a_clear_message(value: str | int, words: list[str]) -> None:
    with pytest.raises(ValueError, match=r"\S") as info:
        parse_time(value)
    message = str(info.value)
    for word in words:
        assert word in message


def test_parse_time_refuses_a_boolean() -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_time(True)


@settings(deadline=None)
@given(st.integers(min_value=EARLIEST, max_value=LATEST - 1))
def test_parse_time_round_trips(seconds: int) -> None:
    assert parse_time(seconds) == seconds
    assert parse_time(str(seconds)) == seconds
    assert parse_time(format_time(seconds)) == seconds


# ------------------------------------------------------------------ parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("6h", 21600),
        ("1d", 86400),
        ("7d", 604800),
        ("2w", 1209600),
        (" 1d ", 86400),
        (3600, 3600),
    ],
)
def test_parse_duration_accepts(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0s", "not a positive duration"),
        ("0d", "not a positive duration"),
        (0, "not a positive duration"),
        (-60, "not a positive duration"),
        ("-1d", "not a duration"),
        ("1y", "not a duration"),
        ("", "not a duration"),
        ("abc", "not a duration"),
        ("1.5h", "not a duration"),
        ("d", "not a duration"),
        (True, "boolean"),
    ],
)
def test_parse_duration_refuses(value: str | int, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(value)


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=10**9))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_is_the_shortest_spelling() -> None:
    assert [format_duration(s) for s in (86400, 5400, 45, 604800, 7200)] == [
        "1d",
        "90m",
        "45s",
        "1w",
        "2h",
    ]


# ------------------------------------------------------------------ construction


def test_invalid_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Segment(START, START)
    with pytest.raises(ValueError, match="positive"):
        FlowPlan.single(FLOW, START, START + DAY, 0)
    with pytest.raises(ValueError, match="no range"):
        FlowPlan(FLOW, DAY, ())
    with pytest.raises(ValueError, match="contiguous"):
        FlowPlan(
            FLOW, DAY, (Segment(START, START + DAY), Segment(START + 2 * DAY, START + 3 * DAY))
        )
    with pytest.raises(ValueError, match="no flows"):
        Plan(())
    with pytest.raises(ValueError, match="listed twice"):
        Plan((FlowPlan.single(FLOW, START, START + DAY, DAY),) * 2)
    with pytest.raises(ValueError, match="index < count"):
        Shard(3, 3)
    with pytest.raises(ValueError, match="index < count"):
        Shard(0, 0)


# ------------------------------------------------------------------- fingerprint


def _plan(
    *,
    flow_id: str = FLOW,
    start: int = START,
    end: int = START + 30 * DAY,
    window: int = DAY,
    delta: str | None = "updated_at",
    shard: Shard = WHOLE,
    extra: tuple[FlowPlan, ...] = (),
) -> Plan:
    return Plan((FlowPlan.single(flow_id, start, end, window, delta), *extra), shard)


def test_fingerprint_is_stable() -> None:
    one, two = _plan(), _plan()

    assert one.fingerprint() == two.fingerprint()
    assert one.fingerprint() == Plan.from_json(one.to_json()).fingerprint()
    assert Plan.from_json(one.to_json()) == one
    assert len(one.fingerprint()) == 32
    int(one.fingerprint(), 16)


@pytest.mark.parametrize(
    "changed",
    [
        _plan(flow_id=OTHER),
        _plan(start=START - DAY),
        _plan(end=START + 31 * DAY),
        _plan(window=2 * DAY),
        _plan(delta=None),
        _plan(delta="modified_at"),
        _plan(shard=Shard(1, 2)),
        _plan(extra=(FlowPlan.single(OTHER, START, START + DAY, DAY),)),
    ],
    ids=["flow", "start", "end", "window", "no-delta", "delta", "shard", "added-flow"],
)
def test_fingerprint_changes_with_every_field(changed: Plan) -> None:
    assert changed.fingerprint() != _plan().fingerprint()


# ------------------------------------------------------------- changes to a plan


def test_the_same_plan_has_no_differences_and_extends_to_itself() -> None:
    recorded = _plan()

    assert recorded.differences(_plan()) == []
    assert recorded.extended_to(_plan()).fingerprint() == recorded.fingerprint()


@pytest.mark.parametrize(
    ("requested", "words"),
    [
        (_plan(end=START + 40 * DAY), "2024-01-31T00:00:00Z recorded"),
        (_plan(start=START - 5 * DAY), "2023-12-27T00:00:00Z .. 2024-01-31T00:00:00Z requested"),
        (_plan(extra=(FlowPlan.single(OTHER, START, START + DAY, DAY),)), f"flow {OTHER} is new"),
    ],
    ids=["later-end", "earlier-start", "new-flow"],
)
def test_extensions_are_accepted(requested: Plan, words: str) -> None:
    recorded = _plan()

    differences = recorded.differences(requested)
    extended = recorded.extended_to(requested)

    assert any(words in d for d in differences), differences
    assert extended.flows[0].flow_id == FLOW
    assert extended.flows[0].start == requested.flows[0].start
    assert extended.flows[0].end == requested.flows[0].end
    assert extended.count() == requested.count()
    assert set(recorded.windows()) <= set(extended.windows())


@pytest.mark.parametrize(
    ("requested", "words"),
    [
        (_plan(end=START + 20 * DAY), "drops recorded windows"),
        (_plan(start=START + DAY), "drops recorded windows"),
        (_plan(window=2 * DAY), "window size or delta column changed"),
        (_plan(delta="modified_at"), "window size or delta column changed"),
        (_plan(delta=None), "window size or delta column changed"),
        (_plan(flow_id=OTHER), f"flow {FLOW} is recorded but no longer planned"),
        (_plan(shard=Shard(0, 2)), "shard 0/1 recorded, 0/2 requested"),
    ],
    ids=["earlier-end", "later-start", "window", "delta", "no-delta", "removed-flow", "shard"],
)
def test_changes_that_drop_or_move_windows_are_refused(requested: Plan, words: str) -> None:
    recorded = _plan()

    assert recorded.differences(requested), "a refused change is a difference"
    with pytest.raises(ValueError, match=words):
        recorded.extended_to(requested)


@pytest.mark.parametrize(
    ("requested", "words"),
    [
        (_plan(window=2 * DAY), f"flow {FLOW}: window 24h recorded, 48h requested"),
        (_plan(delta="modified_at"), "delta column 'updated_at' recorded, 'modified_at' requested"),
        (_plan(flow_id=OTHER), f"flow {FLOW} is recorded but no longer planned"),
        (_plan(end=START + 20 * DAY), "2024-01-21T00:00:00Z requested"),
    ],
    ids=["window", "delta", "removed-flow", "range"],
)
def test_differences_say_what_changed(requested: Plan, words: str) -> None:
    assert any(words in d for d in _plan().differences(requested))


def test_extension_keeps_recorded_window_boundaries() -> None:
    # A range that ends mid-window: its last window is clipped, and stays clipped.
    recorded = _plan(start=START, end=START + 10 * DAY + 7200, window=DAY)
    requested = _plan(start=START - 3 * DAY - 600, end=START + 20 * DAY, window=DAY)

    extended = recorded.extended_to(requested)
    old = list(recorded.windows())
    new = list(extended.windows())

    assert old[-1] == Window(FLOW, START + 10 * DAY, START + 10 * DAY + 7200)
    assert [w for w in new if START <= w.start < recorded.flows[0].end] == old
    assert_contiguous(new, START - 3 * DAY - 600, START + 20 * DAY, DAY)
    for segment in extended.flows[0].segments:
        inside = [w for w in new if segment.start <= w.start < segment.end]
        assert_tiles(inside, segment.start, segment.end, DAY)
    assert extended.count() == len(new)
    # windows before and after are cut from their own segments' edges
    assert Window(FLOW, START - 3 * DAY - 600, START - 2 * DAY - 600) in new
    assert Window(FLOW, START - 600, START) in new
    assert Window(FLOW, START + 10 * DAY + 7200, START + 11 * DAY + 7200) in new


def test_extension_with_a_new_flow_keeps_flow_order() -> None:
    recorded = _plan()
    new_flow = FlowPlan.single(OTHER, START, START + 5 * DAY, DAY)
    requested = Plan((new_flow, *recorded.flows))  # listed first, still appended

    extended = recorded.extended_to(requested)

    assert [f.flow_id for f in extended.flows] == [FLOW, OTHER]
    assert extended.flows[1] == new_flow


@st.composite
def extensions(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    """(start, end, window, seconds added before, seconds added after): up to 50 windows each."""
    start, end, size = draw(ranges())
    before = draw(st.integers(min_value=0, max_value=50 * size))
    after = draw(st.integers(min_value=0, max_value=50 * size))
    return start, end, size, before, after


@settings(deadline=None)
@given(extensions())
def test_any_extension_keeps_old_windows(case: tuple[int, int, int, int, int]) -> None:
    start, end, size, before, after = case
    start_new = max(EARLIEST, start - before)
    end_new = min(LATEST - 1, end + after)
    recorded = Plan((FlowPlan.single(FLOW, start, end, size),))
    requested = Plan((FlowPlan.single(FLOW, start_new, end_new, size),))

    extended = recorded.extended_to(requested)
    windows = list(extended.windows())

    assert set(recorded.windows()) <= set(windows)
    assert_contiguous(windows, start_new, end_new, size)
    assert len(extended.flows[0].segments) == 1 + (start_new < start) + (end_new > end)
    assert extended.count() == len(windows)


# ------------------------------------------------------------------ merged flows


@settings(deadline=None)
@given(st.lists(ranges(), min_size=2, max_size=4))
def test_plan_windows_merge_flows_in_time_order(cases: list[tuple[int, int, int]]) -> None:
    flows = tuple(
        FlowPlan.single(f"flow-{i}", start, end, size) for i, (start, end, size) in enumerate(cases)
    )
    plan = Plan(flows)

    oldest = list(plan.windows())
    newest = list(plan.windows(Order.NEWEST_FIRST))

    assert [w.start for w in oldest] == sorted(w.start for w in oldest)
    assert [w.start for w in newest] == sorted((w.start for w in newest), reverse=True)
    expected = Counter(w for flow in flows for w in flow.windows())
    assert Counter(oldest) == expected
    assert Counter(newest) == expected
    assert plan.count() == len(oldest)
    for flow in flows:
        assert [w for w in oldest if w.flow_id == flow.flow_id] == list(flow.windows())


def test_plan_windows_interleave_two_flows() -> None:
    plan = Plan(
        (
            FlowPlan.single(FLOW, START, START + 2 * DAY, DAY),
            FlowPlan.single(OTHER, START + 3600, START + 3600 + 2 * DAY, DAY),
        )
    )

    assert list(plan.windows()) == [
        Window(FLOW, START, START + DAY),
        Window(OTHER, START + 3600, START + 3600 + DAY),
        Window(FLOW, START + DAY, START + 2 * DAY),
        Window(OTHER, START + 3600 + DAY, START + 3600 + 2 * DAY),
    ]


def test_plan_flow_lookup() -> None:
    plan = _plan()

    assert plan.flow(FLOW) is plan.flows[0]
    with pytest.raises(KeyError):
        plan.flow(OTHER)
