"""The compacted checkpoint (format 2): columns round trip, a crash between any two steps of
compaction, format-1 files still read and upgraded, and damaged columns refused untouched."""

from __future__ import annotations

import base64
import itertools
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

import backfill.journal as journal_module
import backfill.journal_file as journal_file_module
from backfill.calendar import Calendar, Unit
from backfill.errors import CheckpointCorrupt, ExitCode
from backfill.journal import Journal
from backfill.planner import FlowPlan, Plan, Window
from backfill.state import RecordCounts, WindowState

S = WindowState
FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
OTHER = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
START = 1704067200  # 2024-01-01T00:00:00Z
MINUTE = 60
WINDOWS = 70_000  # more than one "cols" record (65,536 windows each) for the first flow


def make_plan() -> Plan:
    end = START + WINDOWS * MINUTE
    return Plan(tuple(FlowPlan.single(f, START, end, MINUTE) for f in (FLOW, OTHER)))


def window(i: int, flow: str = FLOW) -> Window:
    return Window(flow, START + i * MINUTE, START + (i + 1) * MINUTE)


class Wall:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def everything(journal: Journal) -> dict[Window, tuple[Any, ...]]:
    """All the journal knows of every window, as plain values."""
    return {
        w: (
            e.state,
            e.attempt,
            e.run_id,
            e.old_runs,
            e.errors,
            e.since,
            e.retrigger,
            e.retrying,
            e.duplicates,
            e.candidates,
            e.counts,
        )
        for w, e in journal.items()
    }


def summary(journal: Journal) -> tuple[Any, ...]:
    return (
        journal.counts(),
        journal.record_totals(),
        journal.has_run(FLOW),
        journal.has_run(OTHER),
        journal.recorded(),
        len(journal),
    )


async def fill(journal: Journal) -> None:
    """Every kind of window: most finished with a run id, and each rarer shape at least once."""
    for i in range(WINDOWS - 5):  # the bulk: submitted, then accepted with a run id
        w = window(i)
        journal.record_nowait(w, S.SUBMITTING, attempt=1)
        journal.record_nowait(
            w, S.SUBMITTED, attempt=1, run_id=f"{i:08x}-1111-4222-8333-444455556666"
        )
    other = [window(i, OTHER) for i in range(12)]
    journal.record_nowait(other[0], S.SUBMITTING, attempt=1)  # in doubt, its intent's time
    journal.record_nowait(other[1], S.SUBMITTING, attempt=1)
    journal.record_nowait(other[1], S.SUBMITTED, attempt=1, run_id="short")  # another length
    journal.record_nowait(other[2], S.SUBMITTING, attempt=1)
    journal.record_nowait(other[2], S.SUBMITTED, attempt=1, run_id="ünïcode-run")  # not ASCII
    journal.record_nowait(other[3], S.SUBMITTING, attempt=1)
    journal.record_nowait(other[3], S.SUBMITTED, attempt=1, run_id="r" * 2000)  # very long
    journal.record_nowait(other[4], S.SUBMITTING, attempt=1)
    journal.record_nowait(other[4], S.SUBMITTED, attempt=1, run_id="old-4")
    journal.record_nowait(other[4], S.FAILED, errors=[{"code": "X"}], retrying=True)
    journal.record_nowait(other[4], S.SUBMITTING, attempt=2, mode="re-trigger")
    journal.record_nowait(other[4], S.SUBMITTED, attempt=2, run_id="new-4")  # an old run
    journal.record_nowait(other[5], S.SUBMITTING, attempt=1)
    journal.record_nowait(other[5], S.SUBMITTED, attempt=1, run_id="run-5")
    counts = RecordCounts(10, 9, 1, (1, 1, 0))
    journal.record_nowait(other[5], S.PARTIAL, counts=counts)  # record counts
    journal.record_nowait(other[6], S.SUBMITTING, attempt=3)
    journal.record_nowait(other[6], S.SUBMITTED, attempt=3, run_id="run-6")
    journal.record_nowait(other[6], S.FAILED, retrying=False)  # failed for good, no errors
    journal.record_nowait(other[7], S.SUBMITTING, attempt=7)
    journal.record_nowait(other[7], S.SUBMITTED, attempt=7, run_id="run-7")
    journal.record_nowait(other[7], S.RUNNING)
    journal.record_nowait(other[8], S.SUBMITTING, attempt=1)
    journal.record_nowait(other[8], S.SUBMITTED, attempt=1, run_id="run-8")
    await journal.commit()
    await journal.note(other[8], duplicates=("run-8b",))  # notes
    await journal.note(other[0], candidates=("maybe-0",))
    await journal.commit()


async def crash(journal: Journal) -> None:
    """Durable, and let go without a clean close: what a kill -9 after the last commit leaves."""
    await journal.commit()
    journal._release()


def body(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ckpt" / "checkpoint.jsonl"


async def test_columns_round_trip_everything_a_window_holds(path: Path) -> None:
    plan, wall = make_plan(), Wall()
    journal = Journal.open(path, plan, wall=wall)
    await fill(journal)
    before, totals = everything(journal), summary(journal)
    await crash(journal)

    reopened = Journal.open(path, plan, wall=wall)  # due: replayed, then compacted
    try:
        assert reopened.replay.compacted
        assert everything(reopened) == before
        assert summary(reopened) == totals
    finally:
        await reopened.close()

    records = body(path)
    assert records[0]["format"] == 2
    assert records[0]["compacted"] is True
    columns = [r for r in records if r.get("t") == "cols"]
    # The bulk; and "short", "run-6" (failed, no errors) and "run-7" (running): 5 bytes long.
    assert sum(r["n"] for r in columns) == WINDOWS - 5 + 3
    assert sorted((r["f"], r["w"], r["n"]) for r in columns) == [
        (0, 36, WINDOWS - 5 - 65_536),
        (0, 36, 65_536),
        (1, 5, 3),
    ]
    # Everything else (doubt, errors, old runs, counts, notes, odd run ids) is a snapshot.
    assert {r["t"] for r in records[1:]} == {"cols", "snap"}
    assert len(records) == 1 + len(columns) + 6
    assert path.stat().st_size / WINDOWS < 40  # 173 bytes a window as two lines

    status = Journal.open(path, None, readonly=True)  # the compacted file, as `status` reads it
    assert everything(status) == before
    assert summary(status) == totals
    tally = Counter(e.state for _, e in status.items())
    assert {s: n for s, n in status.counts().items() if s is not S.PENDING} == {
        s: tally.get(s, 0) for s in S if s is not S.PENDING
    }


async def test_a_run_that_exits_leaves_its_checkpoint_compacted(path: Path) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan, wall=Wall())
    await fill(journal)
    before = everything(journal)
    await journal.close()

    assert any(r.get("t") == "cols" for r in body(path))
    reopened = Journal.open(path, plan)
    try:
        assert not reopened.replay.compacted  # nothing appended since
        assert reopened.replay.records == len(body(path))
        assert everything(reopened) == before
        await reopened.record(window(WINDOWS - 1), S.SUBMITTING, attempt=1)  # appends after
    finally:
        await reopened.close()
    again = Journal.open(path, None, readonly=True)
    assert again.state(window(WINDOWS - 1)) is S.SUBMITTING
    assert everything(again) == {
        **before,
        window(WINDOWS - 1): everything(again)[window(WINDOWS - 1)],
    }


class Crash(BaseException):
    """The process dies here (injected): nothing after this step happens."""


STEPS = ["writing", "written", "synced", "locked", "replaced", "dir-synced"]


@pytest.mark.parametrize("step", STEPS)
async def test_a_crash_between_any_two_steps_of_compaction_loses_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan, wall=Wall())
    await fill(journal)
    before = everything(journal)
    await crash(journal)
    lines = path.read_bytes()

    def die(name: str) -> None:
        if name == step:
            raise Crash(name)

    monkeypatch.setattr(journal_module, "_step", die)
    with pytest.raises(Crash):
        Journal.open(path, plan)
    monkeypatch.undo()

    renamed = STEPS.index(step) >= STEPS.index("replaced")
    if renamed:  # the compacted file took the name: the lines are gone, nothing else
        assert path.read_bytes() != lines
        assert any(r.get("t") == "cols" for r in body(path))
    else:  # the old file is exactly as it was; a half-written copy may be left beside it
        assert path.read_bytes() == lines
    assert everything(Journal.open(path, None, readonly=True)) == before

    reopened = Journal.open(path, plan)  # the lock of the "dead" process is gone with it
    try:
        assert reopened.replay.compacted is not renamed
        assert everything(reopened) == before
    finally:
        await reopened.close()
    hidden = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert hidden == []  # a copy left by the crash is replaced by the next compaction


async def test_a_format_1_checkpoint_resumes_and_is_upgraded(path: Path) -> None:
    """A file as the previous version wrote it: format 1, lines and old "snap" records."""
    plan = make_plan()
    header: dict[str, Any] = {"kind": "backfill-checkpoint", "format": 1}
    header |= {"fingerprint": plan.fingerprint(), "plan": plan.to_json(), "gen": "g1", "seq": 0}
    old: list[dict[str, Any]] = [header]
    old.append({"t": "snap", "f": 1, "s": START, "st": "failed", "a": 2, "id": "r0", "n": 1})
    for i in range(6_000):
        start = START + i * MINUTE
        old.append({"t": "w", "f": 0, "s": start, "st": "submitting", "a": 1, "ts": 1.5})
        old.append({"t": "w", "f": 0, "s": start, "st": "submitted", "a": 1, "id": f"run-{i}"})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in old))

    status = Journal.open(path, None, readonly=True)
    expected = everything(status)
    assert status.counts()[S.SUBMITTED] == 6_000
    assert status.get(window(0, OTHER)) is not None

    journal = Journal.open(path, plan)  # 12,000 moves: due, so compacted to format 2
    try:
        assert journal.replay.compacted
        assert everything(journal) == expected
        await journal.record(window(0, OTHER), S.SUBMITTING, attempt=3)
    finally:
        await journal.close()
    records = body(path)
    assert records[0]["format"] == 2
    assert records[0]["gen"] == "g1"  # the lineage, and so the sidecar's check, goes on
    reopened = Journal.open(path, None, readonly=True)
    assert reopened.state(window(0, OTHER)) is S.SUBMITTING
    assert reopened.counts()[S.SUBMITTED] == 6_000


def _pack(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


def _good_columns(path: Path) -> list[bytes]:
    plan = Plan((FlowPlan.single(FLOW, START, START + 4 * MINUTE, MINUTE),))
    header: dict[str, Any] = {"kind": "backfill-checkpoint", "format": 2, "gen": "g"}
    header |= {"fingerprint": plan.fingerprint(), "plan": plan.to_json(), "seq": 0}
    word = ((1 << 5) | 2).to_bytes(8, "big")  # attempt 1, submitted
    cols = {
        "t": "cols",
        "f": 0,
        "w": 3,
        "n": 2,
        "s": _pack(START.to_bytes(8, "little", signed=True) + (60).to_bytes(8, "little")),
        "a": _pack(word * 2),
        "ids": _pack(b"r-0r-1"),
    }
    tail = {"t": "w", "f": 0, "s": START + 120, "st": "submitting", "a": 1, "ts": 2.0}
    return [orjson.dumps(r) + b"\n" for r in (header, cols, tail)]


def test_well_formed_columns_read(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(_good_columns(path)))
    journal = Journal.open(path, None, readonly=True)
    first, second = journal.get(window(0)), journal.get(window(1))
    assert first is not None
    assert second is not None
    assert (first.state, first.attempt, first.run_id) == (S.SUBMITTED, 1, "r-0")
    assert (second.state, second.run_id) == (S.SUBMITTED, "r-1")
    assert journal.counts()[S.SUBMITTED] == 2
    assert journal.counts()[S.SUBMITTING] == 1


def _damaged(field: str, value: Any) -> Any:
    return lambda record: record | {field: value}


DAMAGE = {
    "not base64": _damaged("ids", "*not base64*"),
    "not deflated": _damaged("ids", base64.b64encode(b"plain").decode()),
    "a truncated column": lambda r: (
        r | {"a": base64.b64encode(zlib.compress(b"x" * 16)[:-3]).decode()}
    ),
    "fewer windows than it says": _damaged("n", 3),
    "a run id column too short": _damaged("ids", _pack(b"r-0r-")),
    "run ids not ASCII": _damaged("ids", _pack("r-ér".encode()[:6])),
    "starts going back": _damaged(
        "s", _pack(START.to_bytes(8, "little") + (-60).to_bytes(8, "little", signed=True))
    ),
    "a start twice": _damaged("s", _pack(START.to_bytes(8, "little") + bytes(8))),
    "a start past 2100": _damaged("s", _pack((1 << 33).to_bytes(8, "little") + bytes(8))),
    # Well-formed columns whose windows the plan does not have: read as recorded, they would
    # be counted as done while the plan's own windows were never sent.
    "starts off the plan's grid": _damaged(
        "s", _pack((START + 1).to_bytes(8, "little") + (60).to_bytes(8, "little"))
    ),
    "a start before the plan": _damaged(
        "s", _pack((START - 60).to_bytes(8, "little") + (60).to_bytes(8, "little"))
    ),
    "a start past the plan's end": _damaged(
        "s", _pack(START.to_bytes(8, "little") + (600).to_bytes(8, "little"))
    ),
    "a flow not in the plan": _damaged("f", 4),
    "a run id width out of range": _damaged("w", 5000),
    "a column that is not text": _damaged("a", 7),
    "a missing column": lambda r: {k: v for k, v in r.items() if k != "ids"},
    "a format-1 header": None,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_columns_are_refused_and_the_file_left_untouched(path: Path, damage: str) -> None:
    lines = _good_columns(path)
    change = DAMAGE[damage]
    if change is None:  # columns in a file that says it is format 1
        lines[0] = lines[0].replace(b'"format":2', b'"format":1')
    else:
        lines[1] = orjson.dumps(change(orjson.loads(lines[1]))) + b"\n"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()

    for readonly in (True, False):
        with pytest.raises(CheckpointCorrupt) as info:
            Journal.open(path, None, readonly=readonly)
        assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
        assert info.value.line == 2
        assert path.read_bytes() == before


def test_a_window_in_columns_and_again_in_columns_is_refused(path: Path) -> None:
    lines = _good_columns(path)
    lines.insert(2, lines[1])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(lines))
    with pytest.raises(CheckpointCorrupt, match="recorded before") as info:
        Journal.open(path, None, readonly=True)
    assert info.value.line == 3


def test_status_reading_while_a_run_appends_never_sees_a_torn_line_as_corrupt(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader without the lock (``status``) can see a run's write half done: the file ends
    mid-line. If the run finishes that write before the next read, the rest of the line must
    not be parsed as a line of its own (it would be "corrupt" in a healthy checkpoint)."""
    header, cols, tail = _good_columns(path)
    later = orjson.dumps({"t": "w", "f": 0, "s": START + 180, "st": "submitting", "a": 1})
    later = later[:-1] + b',"ts":3.0}\n'
    cut = len(tail) // 2
    path.parent.mkdir(parents=True)
    path.write_bytes(header + cols + tail[:cut])  # the run's write, half visible

    class Appending:
        """The file as a reader sees it while the run's write completes between two reads."""

        def __init__(self, raw: Any) -> None:
            self.raw, self.reads = raw, 0

        def __enter__(self) -> Appending:
            return self

        def __exit__(self, *exc: object) -> None:
            self.raw.close()

        def readline(self) -> bytes:
            return bytes(self.raw.readline())

        def readlines(self, hint: int) -> list[bytes]:
            lines: list[bytes] = self.raw.readlines(hint)
            self.reads += 1
            if self.reads == 1:
                with open(path, "ab") as out:  # the write completes, and one more follows
                    out.write(tail[cut:] + later)
            return lines

    real_open = open
    monkeypatch.setattr(
        journal_file_module, "open", lambda p, mode: Appending(real_open(p, mode)), raising=False
    )
    journal = Journal.open(path, None, readonly=True)
    assert journal.counts()[S.SUBMITTED] == 2
    assert journal.get(window(2)) is None  # the torn line is not read: as if read a moment before


def _line_file(path: Path, plan: Plan, record: dict[str, Any]) -> bytes:
    header: dict[str, Any] = {"kind": "backfill-checkpoint", "format": 2, "gen": "g"}
    header |= {"fingerprint": plan.fingerprint(), "plan": plan.to_json(), "seq": 0}
    good = {"t": "w", "f": 0, "s": START, "st": "submitting", "a": 1, "ts": 1.0}
    data = b"".join(orjson.dumps(r) + b"\n" for r in (header, good, record))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


FIXED = Plan((FlowPlan.single(FLOW, START, START + 4 * MINUTE, MINUTE),))
DAYS = Plan(
    (FlowPlan.single(FLOW, START, START + 4 * 86_400, Calendar(1, Unit.DAY, "Europe/Madrid")),)
)


@pytest.mark.parametrize("plan", [FIXED, DAYS], ids=["fixed", "calendar"])
@pytest.mark.parametrize("kind", ["w", "snap"])
@pytest.mark.parametrize("start", [START + 1, START - 60, START + 4 * 86_400])
def test_a_line_for_a_window_the_plan_does_not_have_is_refused(
    path: Path, plan: Plan, kind: str, start: int
) -> None:
    """Read as recorded, a move of a window off the plan would count as one of the plan's
    (the counts say nothing is left) and a resume would never send the window it stands for."""
    before = _line_file(
        path, plan, {"t": kind, "f": 0, "s": start, "st": "submitting", "a": 1, "ts": 2.0}
    )
    for readonly in (True, False):
        with pytest.raises(CheckpointCorrupt, match="not in the plan") as info:
            Journal.open(path, None, readonly=readonly)
        assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
        assert info.value.line == 3
        assert path.read_bytes() == before


@pytest.mark.parametrize("plan", [FIXED, DAYS], ids=["fixed", "calendar"])
def test_a_line_for_a_planned_window_reads(path: Path, plan: Plan) -> None:
    second = next(itertools.islice(plan.windows(), 1, None))
    _line_file(path, plan, {"t": "w", "f": 0, "s": second.start, "st": "submitting", "a": 1})
    journal = Journal.open(path, None, readonly=True)
    assert journal.counts()[S.SUBMITTING] == 2
