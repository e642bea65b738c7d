"""The checkpoint journal: replay, durability, group commit, torn tails, locks, compaction."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from backfill import journal as journal_module
from backfill.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointLocked,
    CheckpointWriteError,
    ExitCode,
    PlanMismatch,
)
from backfill.journal import Entry, Journal
from backfill.planner import FlowPlan, Plan, Window
from backfill.state import (
    MOVES,
    IllegalTransition,
    RecordCounts,
    WindowState,
    check_transition,
)

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
OTHER = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
START = 1704067200  # 2024-01-01T00:00:00Z
HOUR = 3600
DAY = 86400

S = WindowState


def make_plan(hours: int = 100, *, start: int = START, flows: tuple[str, ...] = (FLOW,)) -> Plan:
    return Plan(tuple(FlowPlan.single(f, start, START + hours * HOUR, HOUR) for f in flows))


def window(i: int, flow: str = FLOW) -> Window:
    return Window(flow, START + i * HOUR, START + (i + 1) * HOUR)


class Wall:
    """An injected wall clock for the intent timestamps."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ckpt" / "checkpoint.jsonl"


@pytest.fixture
def wall() -> Wall:
    return Wall()


# Small synchronous file helpers: the tests are async, the files are tiny and local.


def read(path: Path) -> bytes:
    return path.read_bytes()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def size_of(path: Path) -> int:
    return path.stat().st_size


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hidden_files(path: Path) -> list[str]:
    """Temporary files (``.name.new``, ``.name.compact``) left next to the checkpoint."""
    return [p.name for p in path.parent.iterdir() if p.name.startswith(".")]


def lines(path: Path) -> list[dict[str, Any]]:
    data = read(path)
    assert data.endswith(b"\n"), "a closed checkpoint ends with a whole line"
    return [orjson.loads(line) for line in data.splitlines()]


def snapshot(journal: Journal) -> dict[Window, tuple[Any, ...]]:
    """Everything the journal knows, as plain values."""
    return {
        w: (
            e.state,
            e.attempt,
            e.run_id,
            e.old_runs,
            e.errors,
            e.since,
            e.retrigger if e.state is S.SUBMITTING else None,  # only an intent has a mode
            e.in_doubt,
            e.all_runs(),
        )
        for w, e in journal.items()
    }


async def write_history(journal: Journal) -> None:
    """A representative history: retries, re-triggers, errors, an in-doubt intent, a refusal."""
    w0, w1, w2, w3, w4 = (window(i) for i in range(5))
    errors = [{"code": "CONNECTOR-2001", "message": "source unreachable"}]
    # w0: new run, failed, re-triggered (same run), failed, new run, succeeded
    await journal.record(w0, S.SUBMITTING, attempt=1)
    await journal.record(w0, S.SUBMITTED, attempt=1, run_id="run-a")
    await journal.record(w0, S.RUNNING)
    await journal.record(w0, S.FAILED, errors=errors)
    await journal.record(w0, S.SUBMITTING, attempt=2, mode="re-trigger")
    await journal.record(w0, S.SUBMITTED, attempt=2, run_id="run-a")
    await journal.record(w0, S.FAILED, errors=errors)
    await journal.record(w0, S.SUBMITTING, attempt=3, mode="new-run")
    await journal.record(w0, S.SUBMITTED, attempt=3, run_id="run-b")
    await journal.record(w0, S.SUCCEEDED)
    # w1: failed for good, with errors
    await journal.record(w1, S.SUBMITTING, attempt=1)
    await journal.record(w1, S.SUBMITTED, attempt=1, run_id="run-c")
    await journal.record(w1, S.FAILED, errors=errors)
    # w2: in doubt (intent written, no answer)
    await journal.record(w2, S.SUBMITTING, attempt=1)
    # w3: the request was refused before it was processed: back to pending
    await journal.record(w3, S.SUBMITTING, attempt=1)
    await journal.record(w3, S.PENDING, attempt=0)
    # w4: only buffered, then committed
    journal.record_nowait(w4, S.SUBMITTING, attempt=1, mode="re-trigger")
    journal.record_nowait(w4, S.SUBMITTED, attempt=1, run_id="run-d")
    await journal.commit()


# ------------------------------------------------------------------ create / reopen


async def test_create_writes_a_private_header(path: Path, wall: Wall) -> None:
    plan = make_plan()

    journal = Journal.open(path, plan, wall=wall)
    await journal.close()

    assert journal.replay.created
    assert mode_of(path) == 0o600
    (header,) = lines(path)
    assert header["kind"] == "backfill-checkpoint"
    assert header["format"] == 2
    assert header["fingerprint"] == plan.fingerprint()
    assert Plan.from_json(header["plan"]) == plan
    assert hidden_files(path) == [], "no temporary file is left behind"


async def test_reopen_restores_every_field(path: Path, wall: Wall) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan, wall=wall)
    await write_history(journal)
    before = snapshot(journal)
    counts = journal.counts()
    await journal.close()

    reopened = Journal.open(path, plan, wall=wall)
    try:
        assert snapshot(reopened) == before
        assert reopened.counts() == counts
        assert not reopened.replay.created
        assert reopened.replay.torn_bytes == 0
    finally:
        await reopened.close()

    w0 = before[window(0)]
    assert w0[:4] == (S.SUCCEEDED, 3, "run-b", ("run-a",))
    assert before[window(1)][0] is S.FAILED
    assert before[window(1)][4] == [{"code": "CONNECTOR-2001", "message": "source unreachable"}]
    assert before[window(2)][7], "an intent without a run id is in doubt"
    assert before[window(2)][5] > 1_700_000_000, "the intent's wall time is kept"
    assert before[window(3)][0] is S.PENDING
    assert before[window(4)][:3] == (S.SUBMITTED, 1, "run-d")


async def test_entry_fields_after_a_retrigger_intent(path: Path, wall: Wall) -> None:
    journal = Journal.open(path, make_plan(), wall=wall)
    w = window(7)
    await journal.record(w, S.SUBMITTING, attempt=1)
    await journal.record(w, S.SUBMITTED, attempt=1, run_id="run-1")
    await journal.record(w, S.FAILED, errors=[{"code": "X", "message": "boom"}])
    await journal.record(w, S.SUBMITTING, attempt=2, mode="re-trigger")
    await journal.close()

    reopened = Journal.open(path, None, readonly=True)
    entry = reopened.get(w)

    assert entry is not None
    assert (entry.state, entry.attempt, entry.run_id, entry.retrigger) == (
        S.SUBMITTING,
        2,
        "run-1",
        True,
    )
    assert entry.in_doubt
    assert entry.errors is None, "the failed run's errors do not describe the new attempt"
    assert reopened.state(window(8)) is S.PENDING
    assert reopened.get(window(8)) is None


async def test_open_without_a_plan_uses_the_recorded_one(path: Path) -> None:
    plan = make_plan(hours=12)
    journal = Journal.open(path, plan)
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    await journal.close()

    reopened = Journal.open(path, None)
    try:
        assert reopened.plan == plan
        assert reopened.state(window(0)) is S.SUBMITTING
    finally:
        await reopened.close()


def test_open_without_a_plan_and_without_a_checkpoint_is_refused(path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Journal.open(path, None)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Journal.open(path, None, readonly=True)


# ------------------------------------------------------------------- durability


async def test_a_record_is_in_the_file_when_record_returns(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    try:
        syncs = journal.syncs
        await journal.record(window(3), S.SUBMITTING, attempt=1)

        last = orjson.loads(read(path).splitlines()[-1])
        assert last["t"] == "w"
        assert (last["f"], last["s"], last["st"], last["a"]) == (
            0,
            window(3).start,
            "submitting",
            1,
        )
        assert journal.syncs == syncs + 1

        await journal.record(window(3), S.SUBMITTED, attempt=1, run_id="run-x")
        last = orjson.loads(read(path).splitlines()[-1])
        assert (last["st"], last["id"]) == ("submitted", "run-x")
    finally:
        await journal.close()


class FsyncSpy:
    """Records, in order, the writes and fsyncs made to one file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
        self.target = target
        self.events: list[str] = []
        self._write = os.write
        self._fsync = os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def _ours(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == self.target.stat().st_ino
        except OSError:
            return False

    def write(self, fd: int, data: Any) -> int:
        if self._ours(fd):
            self.events.append("write")
        return self._write(fd, data)

    def fsync(self, fd: int) -> None:
        if self._ours(fd):
            self.events.append("fsync")
        self._fsync(fd)


async def test_record_returns_after_the_fsync(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(path, make_plan())
    spy = FsyncSpy(monkeypatch, path)
    try:
        await journal.record(window(0), S.SUBMITTING, attempt=1)
        assert spy.events == ["write", "fsync"]

        journal.record_nowait(window(1), S.SUBMITTING, attempt=1)
        await journal.record(window(2), S.SUBMITTING, attempt=1)
        assert spy.events == ["write", "fsync"] * 2, "one batch, one fsync"
    finally:
        await journal.close()


async def test_a_journal_that_is_not_durable_never_fsyncs(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(path, make_plan(), durable=False)
    spy = FsyncSpy(monkeypatch, path)
    try:
        await journal.record(window(0), S.SUBMITTING, attempt=1)
    finally:
        await journal.close()

    assert spy.events == ["write"]


async def test_commit_makes_buffered_records_durable(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    try:
        for i in range(10):
            journal.record_nowait(window(i), S.SUBMITTING, attempt=1)
        await journal.commit()

        written = read(path).splitlines()
        assert len(written) == 11
        assert journal.records == 10
    finally:
        await journal.close()


async def test_concurrent_records_share_fsyncs(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    try:
        await asyncio.gather(
            *(journal.record(window(i), S.SUBMITTING, attempt=1) for i in range(64))
        )

        assert journal.records == 64
        assert 1 <= journal.syncs <= 4, journal.syncs
        assert len(read(path).splitlines()) == 65
    finally:
        await journal.close()


async def test_without_group_commit_every_record_is_its_own_fsync(path: Path) -> None:
    journal = Journal.open(path, make_plan(), group_commit=False)
    try:
        await asyncio.gather(
            *(journal.record(window(i), S.SUBMITTING, attempt=1) for i in range(64))
        )

        assert journal.syncs == 64
    finally:
        await journal.close()


async def test_group_commit_keeps_every_record_in_order(path: Path) -> None:
    journal = Journal.open(path, make_plan())

    async def lifecycle(i: int) -> None:
        await journal.record(window(i), S.SUBMITTING, attempt=1)
        await journal.record(window(i), S.SUBMITTED, attempt=1, run_id=f"run-{i}")
        await journal.record(window(i), S.SUCCEEDED)

    await asyncio.gather(*(lifecycle(i) for i in range(40)))
    await journal.close()

    per_window: dict[int, list[str]] = {}
    for record in lines(path)[1:]:
        per_window.setdefault(record["s"], []).append(record["st"])
    assert all(states == ["submitting", "submitted", "succeeded"] for states in per_window.values())
    assert len(per_window) == 40


# ------------------------------------------------------------------ torn / corrupt


async def _history_file(path: Path) -> tuple[Plan, dict[Window, tuple[Any, ...]]]:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await write_history(journal)
    state = snapshot(journal)
    await journal.close()
    return plan, state


async def test_a_torn_last_line_is_dropped_and_the_file_repaired(path: Path) -> None:
    plan, state = await _history_file(path)
    good = read(path)
    torn = b'{"t":"w","f":0,"s":17040'
    write(path, good + torn)

    journal = Journal.open(path, plan)
    try:
        assert journal.replay.torn_bytes == len(torn)
        assert read(path) == good, "truncated to the last whole line"
        assert snapshot(journal) == state
        await journal.record(window(9), S.SUBMITTING, attempt=1)
    finally:
        await journal.close()

    records = lines(path)  # every line parses
    assert records[-1]["s"] == window(9).start
    reopened = Journal.open(path, plan)
    try:
        assert reopened.replay.torn_bytes == 0
        assert reopened.state(window(9)) is S.SUBMITTING
    finally:
        await reopened.close()


async def test_a_torn_tail_is_left_alone_by_a_readonly_open(path: Path) -> None:
    plan, state = await _history_file(path)
    write(path, read(path) + b'{"t":"w"')
    before = read(path)

    journal = Journal.open(path, plan, readonly=True)

    assert journal.replay.torn_bytes == len(b'{"t":"w"')
    assert snapshot(journal) == state
    assert read(path) == before


@pytest.mark.parametrize(
    "bad",
    [
        b"this is not json\n",
        b'{"t":"w","f":0,"s":1704067200}\n',  # no state
        b'{"t":"w","f":7,"s":1704067200,"st":"submitting"}\n',  # no such flow
        b'{"t":"w","f":0,"s":1704085200,"st":"succeeded"}\n',  # pending -> succeeded
        b'{"t":"w","f":0,"s":1704067200,"st":"exploded"}\n',  # no such state
        b'{"t":"mystery"}\n',
        b"\n",
    ],
    ids=["not-json", "no-state", "no-flow", "illegal-move", "bad-state", "unknown-type", "blank"],
)
async def test_a_corrupt_middle_line_is_refused_and_left_untouched(path: Path, bad: bytes) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    await journal.close()
    header_and_one = read(path)
    after = orjson.dumps({"t": "w", "f": 0, "s": window(1).start, "st": "submitting", "a": 1})
    write(path, header_and_one + bad + after + b"\n" + b'{"torn')
    before = read(path)

    with pytest.raises(CheckpointCorrupt) as info:
        Journal.open(path, plan)

    assert info.value.line == 3
    assert f"{path}:3" in str(info.value)
    assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
    assert read(path) == before


async def test_a_truncated_header_is_recreated(path: Path) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.close()
    partial = read(path)[:25]
    write(path, partial)

    journal = Journal.open(path, plan)
    try:
        assert journal.replay.created
        assert journal.replay.torn_bytes == len(partial)
        await journal.record(window(0), S.SUBMITTING, attempt=1)
    finally:
        await journal.close()

    header, record = lines(path)
    assert header["fingerprint"] == plan.fingerprint()
    assert record["st"] == "submitting"


async def test_an_empty_file_is_recreated(path: Path) -> None:
    write(path, b"")

    journal = Journal.open(path, make_plan())
    await journal.close()

    assert journal.replay.created
    assert lines(path)[0]["kind"] == "backfill-checkpoint"


@pytest.mark.parametrize(
    "content",
    [b"hello world\n", b"hello", b'{"some": "json"}\n', b"[1, 2, 3]\n", b"id,state\nx,y\n"],
    ids=["text", "text-no-newline", "other-json", "json-list", "csv"],
)
def test_a_file_that_is_not_a_checkpoint_is_refused_and_untouched(
    path: Path, content: bytes
) -> None:
    path.parent.mkdir(parents=True)
    write(path, content)

    with pytest.raises(CheckpointCorrupt) as info:
        Journal.open(path, make_plan())

    assert info.value.line == 1
    assert read(path) == content


async def test_another_format_version_is_refused(path: Path) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.close()
    header = orjson.loads(read(path))
    write(path, orjson.dumps(header | {"format": 3}) + b"\n")
    before = read(path)

    with pytest.raises(CheckpointError, match="format 3") as info:
        Journal.open(path, plan)

    assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
    assert int(info.value.exit_code) == 3
    assert read(path) == before


async def test_a_header_whose_fingerprint_lies_is_refused(path: Path) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.close()
    header = orjson.loads(read(path))
    write(path, orjson.dumps(header | {"fingerprint": "0" * 32}) + b"\n")

    with pytest.raises(CheckpointCorrupt, match="fingerprint"):
        Journal.open(path, plan)


async def test_the_zone_a_fixed_size_plan_is_shown_in_is_kept_beside_it(path: Path) -> None:
    """``--timezone`` with a fixed window size only changes how times are shown: not part of
    the plan (the same fingerprint as in UTC), but kept in the header, through compaction,
    so ``status`` shows the times as the run did. A zone that is no zone is refused."""
    madrid = make_plan(48).showing({FLOW: "Europe/Madrid"})
    assert madrid.fingerprint() == make_plan(48).fingerprint()
    journal = Journal.open(path, madrid)
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    await journal.close()
    assert Journal.open(path, None, readonly=True).plan.flows[0].zone == "Europe/Madrid"
    assert Journal.open(path, make_plan(48), readonly=True).plan.flows[0].zone == "Europe/Madrid"

    header = orjson.loads(read(path).splitlines()[0])
    write(path, orjson.dumps(header | {"zones": {FLOW: "Europe/Madird"}}) + b"\n")
    with pytest.raises(CheckpointCorrupt, match="Madird"):
        Journal.open(path, None, readonly=True)


# ------------------------------------------------------------------ plan changes


async def test_another_plan_is_refused_with_what_differs(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    await journal.close()
    before = read(path)
    other_window = Plan((FlowPlan.single(FLOW, START, START + 100 * HOUR, 2 * HOUR),))

    with pytest.raises(PlanMismatch) as info:
        Journal.open(path, other_window)

    assert any("window 1h recorded, 2h requested" in d for d in info.value.differences)
    assert "--extend" not in str(info.value)
    assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
    assert read(path) == before


async def test_a_later_end_is_refused_but_says_extend(path: Path) -> None:
    journal = Journal.open(path, make_plan(100))
    await journal.close()
    before = read(path)

    with pytest.raises(PlanMismatch) as info:
        Journal.open(path, make_plan(200))

    assert info.value.differences, "the message says what differs"
    assert "--extend" in str(info.value)
    assert read(path) == before


async def test_extend_accepts_a_later_end_and_keeps_records(path: Path) -> None:
    journal = Journal.open(path, make_plan(100))
    await write_history(journal)
    state = snapshot(journal)
    await journal.close()

    extended = Journal.open(path, make_plan(200), extend=True)
    try:
        assert extended.replay.extended
        assert extended.plan.count() == 200
        assert snapshot(extended) == state
        assert extended.counts()[S.PENDING] == 200 - 5 + 1  # w3 went back to pending
        await extended.record(window(150), S.SUBMITTING, attempt=1)
    finally:
        await extended.close()

    reopened = Journal.open(path, None)
    try:
        assert reopened.plan.count() == 200
        assert reopened.state(window(150)) is S.SUBMITTING
        assert {w: v for w, v in snapshot(reopened).items() if w != window(150)} == state
    finally:
        await reopened.close()


async def test_extend_accepts_a_new_flow(path: Path) -> None:
    journal = Journal.open(path, make_plan(10))
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    await journal.close()

    extended = Journal.open(path, make_plan(10, flows=(OTHER, FLOW)), extend=True)
    try:
        assert [f.flow_id for f in extended.plan.flows] == [FLOW, OTHER]
        assert extended.state(window(0)) is S.SUBMITTING
        await extended.record(window(0, OTHER), S.SUBMITTING, attempt=1)
    finally:
        await extended.close()

    reopened = Journal.open(path, None, readonly=True)
    assert reopened.state(window(0)) is S.SUBMITTING
    assert reopened.state(window(0, OTHER)) is S.SUBMITTING


async def test_extend_refuses_a_narrower_plan(path: Path) -> None:
    journal = Journal.open(path, make_plan(100))
    await journal.close()
    before = read(path)

    with pytest.raises(PlanMismatch, match="drops recorded windows") as info:
        Journal.open(path, make_plan(50), extend=True)

    assert "--extend" not in str(info.value)
    assert read(path) == before


async def test_the_same_command_after_an_extension_resumes(path: Path) -> None:
    """``--extend`` once, then the same command again (a restart) must resume, not refuse."""
    journal = Journal.open(path, make_plan(100))
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    await journal.close()
    journal = Journal.open(path, make_plan(200), extend=True)
    await journal.close()

    resumed = Journal.open(path, make_plan(200))
    try:
        assert resumed.state(window(0)) is S.SUBMITTING
        assert resumed.plan.count() == 200
    finally:
        await resumed.close()


async def test_extending_again_to_the_same_plan_changes_nothing(path: Path) -> None:
    journal = Journal.open(path, make_plan(100))
    await journal.close()
    journal = Journal.open(path, make_plan(200), extend=True)
    await journal.close()
    before = read(path)

    again = Journal.open(path, make_plan(200), extend=True)
    await again.close()

    assert not again.replay.extended
    assert read(path) == before


# ----------------------------------------------------------------------- locking


async def test_a_second_open_is_refused_with_the_holders_pid(path: Path) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    try:
        await journal.record(window(0), S.SUBMITTING, attempt=1)
        with pytest.raises(CheckpointLocked) as info:
            Journal.open(path, plan)
        assert info.value.pid == os.getpid()
        assert f"process {os.getpid()}" in str(info.value)
        assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED

        readonly = Journal.open(path, None, readonly=True)
        assert readonly.state(window(0)) is S.SUBMITTING
        assert readonly.plan == plan
        with pytest.raises(RuntimeError, match="read-only"):
            readonly.record_nowait(window(1), S.SUBMITTING, attempt=1)
    finally:
        await journal.close()

    again = Journal.open(path, plan)  # the lock went with close()
    await again.close()


async def test_a_refused_open_releases_its_lock(path: Path) -> None:
    journal = Journal.open(path, make_plan(100))
    await journal.close()
    with pytest.raises(PlanMismatch):
        Journal.open(path, make_plan(50))

    journal = Journal.open(path, make_plan(100))  # not locked by the failed attempt
    await journal.close()


async def test_a_closed_journal_refuses_records(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    await journal.close()

    with pytest.raises(RuntimeError, match="closed"):
        await journal.record(window(0), S.SUBMITTING, attempt=1)


# -------------------------------------------------------------------- compaction


async def test_a_long_journal_is_compacted_at_open(path: Path, wall: Wall) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan, durable=False, wall=wall)
    rng = random.Random(5)
    for cycle in range(700):  # five windows retried over and over: 10,500 records
        for i in range(5):
            w = window(i)
            journal.record_nowait(w, S.SUBMITTING, attempt=cycle + 1, mode="re-trigger")
            journal.record_nowait(w, S.SUBMITTED, attempt=cycle + 1, run_id=f"run-{i}-{cycle}")
            journal.record_nowait(w, S.FAILED, errors=[{"code": str(rng.random())}])
    journal.record_nowait(window(5), S.SUBMITTING, attempt=1)
    await crash(journal)  # a clean close would have compacted it already
    state = snapshot(journal)
    size = size_of(path)

    compacted = Journal.open(path, plan, wall=wall)
    try:
        assert compacted.replay.compacted
        assert compacted.replay.records > 10_000
        assert snapshot(compacted) == state
        assert size_of(path) < size / 10
        assert hidden_files(path) == []
        await compacted.record(window(6), S.SUBMITTING, attempt=1)
    finally:
        await compacted.close()

    records = lines(path)
    assert records[0]["kind"] == "backfill-checkpoint"
    assert len(records) == 1 + 7
    assert mode_of(path) == 0o600
    reopened = Journal.open(path, plan, wall=wall)
    try:
        assert not reopened.replay.compacted
        assert {w: v for w, v in snapshot(reopened).items() if w != window(6)} == state
        assert reopened.state(window(6)) is S.SUBMITTING
        entry = reopened.get(window(0))
        assert entry is not None
        assert len(entry.old_runs) == 699
    finally:
        await reopened.close()


async def _long_file(path: Path) -> tuple[Plan, dict[Window, tuple[Any, ...]]]:
    """A checkpoint with far more records than windows: it is due for compaction."""
    plan = make_plan()
    journal = Journal.open(path, plan, durable=False)
    for cycle in range(3400):
        w = window(cycle % 2)
        journal.record_nowait(w, S.SUBMITTING, attempt=cycle + 1)
        journal.record_nowait(w, S.SUBMITTED, attempt=cycle + 1, run_id=f"run-{cycle}")
        journal.record_nowait(w, S.FAILED)
    await crash(journal)  # left as a kill -9 leaves it: a clean close would have compacted it
    return plan, snapshot(journal)


async def crash(journal: Journal) -> None:
    """Make every record durable and let the file go without closing (compacting) it, as a
    process killed after its last commit does."""
    await journal.commit()
    journal._release()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("step", ["replace", "fsync"])
async def test_a_failed_compaction_leaves_the_checkpoint_as_it_was(
    path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    plan, state = await _long_file(path)
    before = read(path)

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, step, no_space)
    with pytest.raises(CheckpointWriteError) as info:
        Journal.open(path, plan)
    monkeypatch.undo()

    assert info.value.exit_code == ExitCode.CHECKPOINT_UNWRITABLE
    assert read(path) == before
    assert hidden_files(path) == []
    reopened = Journal.open(path, plan)  # and the lock was released
    try:
        assert reopened.replay.compacted
        assert snapshot(reopened) == state
    finally:
        await reopened.close()


async def test_a_failed_open_leaves_no_descriptor_open(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan, _ = await _long_file(path)

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = open_descriptors()
    monkeypatch.setattr(os, "replace", no_space)  # compaction fails after the file was opened
    with pytest.raises(CheckpointWriteError):
        Journal.open(path, plan)
    monkeypatch.undo()

    assert open_descriptors() == before


async def test_a_short_journal_is_not_compacted(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    await write_history(journal)
    await journal.close()
    before = read(path)

    reopened = Journal.open(path, make_plan())
    await reopened.close()

    assert not reopened.replay.compacted
    assert read(path) == before


# ---------------------------------------------------------------------- failures


def test_an_unwritable_folder_is_a_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")

    with pytest.raises(CheckpointWriteError) as info:
        Journal.open(blocker / "checkpoint.jsonl", make_plan())

    assert info.value.exit_code == ExitCode.CHECKPOINT_UNWRITABLE
    assert int(info.value.exit_code) == 74
    assert "records written before are intact" in str(info.value)


@pytest.fixture
def refuse_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Make every os.open for writing fail with ``code`` (a read-only or full file system)."""
    real_open = os.open

    def arm(code: int) -> None:
        def fake_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(code, os.strerror(code), str(file))
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)

    yield arm
    monkeypatch.setattr(os, "open", real_open)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
async def test_a_read_only_file_system_is_a_write_error_and_keeps_records(
    path: Path, refuse_writes: Callable[[int], None], monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    plan, state = await _history_file(path)
    before = read(path)
    refuse_writes(code)

    with pytest.raises(CheckpointWriteError) as info:
        Journal.open(path, plan)

    assert info.value.exit_code == ExitCode.CHECKPOINT_UNWRITABLE
    assert os.strerror(code) in str(info.value)
    readonly = Journal.open(path, plan, readonly=True)  # status still works
    assert snapshot(readonly) == state
    monkeypatch.undo()
    assert read(path) == before
    reopened = Journal.open(path, plan)
    try:
        assert snapshot(reopened) == state
    finally:
        await reopened.close()


def test_a_new_checkpoint_on_a_read_only_file_system_is_a_write_error(
    path: Path, refuse_writes: Callable[[int], None]
) -> None:
    path.parent.mkdir(parents=True)
    refuse_writes(errno.EROFS)

    with pytest.raises(CheckpointWriteError) as info:
        Journal.open(path, make_plan())

    assert info.value.exit_code == 74
    assert not path.exists()


class DiskFault:
    """Fails writes to one file with ENOSPC once armed; writes to other files are unaffected."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
        self.target = target
        self.armed = False
        self.partial = False
        self.failures = 0
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def _hits(self, fd: int) -> bool:
        if not self.armed:
            return False
        try:
            return os.fstat(fd).st_ino == self.target.stat().st_ino
        except OSError:
            return False

    def write(self, fd: int, data: Any) -> int:
        if self._hits(fd):
            self.failures += 1
            if self.partial:
                self.partial = False
                return self._write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._write(fd, data)


async def test_a_full_disk_fails_the_record_and_keeps_what_was_durable(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    for i in range(3):
        await journal.record(window(i), S.SUBMITTING, attempt=1)
    fault = DiskFault(monkeypatch, path)
    fault.armed = True

    with pytest.raises(CheckpointWriteError) as info:
        await journal.record(window(3), S.SUBMITTING, attempt=1)
    assert info.value.exit_code == ExitCode.CHECKPOINT_UNWRITABLE
    assert "No space left on device" in str(info.value)
    with pytest.raises(CheckpointWriteError):
        await journal.record(window(4), S.SUBMITTING, attempt=1)
    with pytest.raises(CheckpointWriteError):
        journal.record_nowait(window(4), S.SUBMITTING, attempt=1)
    with pytest.raises(CheckpointWriteError):
        await journal.commit()
    await journal.close()  # closing a failed journal does not raise again
    assert fault.failures == 1, "nothing is written after the first failure"

    fault.armed = False
    reopened = Journal.open(path, plan)
    try:
        assert [reopened.state(window(i)) for i in range(5)] == [S.SUBMITTING] * 3 + [S.PENDING] * 2
    finally:
        await reopened.close()


async def test_a_full_disk_fails_every_waiter_of_the_batch(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    fault = DiskFault(monkeypatch, path)
    fault.armed = True

    results = await asyncio.gather(
        *(journal.record(window(i), S.SUBMITTING, attempt=1) for i in range(1, 20)),
        return_exceptions=True,
    )
    await journal.close()

    assert all(isinstance(r, CheckpointWriteError) for r in results), results
    fault.armed = False
    reopened = Journal.open(path, plan, readonly=True)
    assert reopened.state(window(0)) is S.SUBMITTING
    assert all(reopened.state(window(i)) is S.PENDING for i in range(1, 20))


async def test_a_full_disk_fails_records_that_arrive_during_the_failing_write(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    inside, release = threading.Event(), threading.Event()
    real_write = os.write
    target = path.stat().st_ino

    def stuck_then_full(fd: int, data: Any) -> int:
        if os.fstat(fd).st_ino == target:
            inside.set()
            release.wait(timeout=10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", stuck_then_full)
    first = asyncio.create_task(journal.record(window(1), S.SUBMITTING, attempt=1))
    assert await asyncio.to_thread(inside.wait, 10), "the flusher is writing"
    second = asyncio.create_task(journal.record(window(2), S.SUBMITTING, attempt=1))
    await asyncio.sleep(0)  # queued behind the write in progress
    release.set()
    # a guard only: with the fault handled, both finish at once
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
    await journal.close()

    assert [type(r) for r in results] == [CheckpointWriteError, CheckpointWriteError]


async def test_a_half_written_batch_is_dropped_on_reopen(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan)
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    durable = read(path)
    fault = DiskFault(monkeypatch, path)
    fault.armed = True
    fault.partial = True  # the first write gets half its bytes out, the next fails

    with pytest.raises(CheckpointWriteError):
        await journal.record(window(1), S.SUBMITTING, attempt=1)
    await journal.close()
    fault.armed = False

    reopened = Journal.open(path, plan)
    try:
        assert reopened.replay.torn_bytes > 0
        assert read(path) == durable
        assert reopened.state(window(0)) is S.SUBMITTING
        assert reopened.state(window(1)) is S.PENDING
    finally:
        await reopened.close()


async def test_a_failing_fsync_is_a_write_error(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(path, make_plan())
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointWriteError, match="Input/output error"):
        await journal.record(window(0), S.SUBMITTING, attempt=1)
    monkeypatch.setattr(os, "fsync", real_fsync)
    await journal.close()


# ------------------------------------------------------------ the state machine


@pytest.mark.parametrize(
    ("moves", "illegal"),
    [
        ([], S.SUBMITTED),
        ([], S.SUCCEEDED),
        ([], S.RUNNING),
        ([], S.FAILED),
        ([S.SUBMITTING, S.SUBMITTED], S.SUBMITTING),
        ([S.SUBMITTING, S.SUBMITTED], S.PENDING),
        ([S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED], S.SUBMITTING),
        ([S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED], S.FAILED),
        ([S.SUBMITTING, S.SUBMITTED, S.RUNNING], S.SUBMITTED),
        ([S.SUBMITTING, S.FAILED], S.SUCCEEDED),
    ],
)
async def test_illegal_transitions_are_refused_and_change_nothing(
    path: Path, moves: list[WindowState], illegal: WindowState
) -> None:
    journal = Journal.open(path, make_plan())
    try:
        w = window(0)
        for move in moves:
            await journal.record(w, move, attempt=1, run_id="run-1")
        records, counts = journal.records, journal.counts()
        on_disk = read(path)

        with pytest.raises(IllegalTransition, match=f"from {moves[-1] if moves else 'pending'}"):
            await journal.record(w, illegal, attempt=1)

        assert journal.state(w) is (moves[-1] if moves else S.PENDING)
        assert journal.records == records
        assert journal.counts() == counts
        await journal.commit()
        assert read(path) == on_disk
    finally:
        await journal.close()


@pytest.mark.parametrize("illegal", [S.SUBMITTED, S.SUCCEEDED])
async def test_a_refused_first_move_leaves_no_entry(path: Path, illegal: WindowState) -> None:
    journal = Journal.open(path, make_plan())
    try:
        with pytest.raises(IllegalTransition):
            journal.record_nowait(window(0), illegal, attempt=1)

        assert journal.get(window(0)) is None
        assert len(journal) == 0
        assert list(journal.items()) == []
    finally:
        await journal.close()


_LEGAL: dict[WindowState, list[WindowState]] = {
    S.PENDING: [S.SUBMITTING],
    S.SUBMITTING: [S.SUBMITTED, S.PENDING, S.FAILED, S.RUNNING, S.SUCCEEDED],
    S.SUBMITTED: [S.RUNNING, S.SUCCEEDED, S.FAILED],
    S.RUNNING: [S.SUCCEEDED, S.FAILED],
    S.FAILED: [S.SUBMITTING],
    S.SUCCEEDED: [],
}


@pytest.mark.parametrize("seed", range(5))
async def test_counts_match_the_states(path: Path, seed: int) -> None:
    plan = make_plan(30)
    windows = list(plan.windows())
    rng = random.Random(seed)
    journal = Journal.open(path, plan)
    try:
        for step in range(300):
            w = rng.choice(windows)
            choices = _LEGAL[journal.state(w)]
            if not choices:
                continue
            journal.record_nowait(w, rng.choice(choices), attempt=1, run_id=f"run-{step}")
            expected = Counter(journal.state(x) for x in windows)
            assert journal.counts() == {state: expected[state] for state in WindowState}
        counts = journal.counts()
        assert sum(counts.values()) == plan.count()
    finally:
        await journal.close()

    reopened = Journal.open(path, plan, readonly=True)
    assert reopened.counts() == counts


def test_entry_defaults() -> None:
    entry = Entry()

    assert (entry.state, entry.attempt, entry.run_id, entry.old_runs) == (S.PENDING, 0, None, ())
    assert not entry.in_doubt
    assert entry.all_runs() == ()


# --------------------------------------------------------------- index and commits


async def test_an_accepted_record_not_yet_committed_leaves_the_window_in_doubt(
    path: Path, wall: Wall
) -> None:
    """`record_nowait` is durable with the next commit; a crash before it loses only that."""
    journal = Journal.open(path, make_plan(), wall=wall)
    w = window(3)
    await journal.record(w, S.SUBMITTING, attempt=1)
    journal.record_nowait(w, S.SUBMITTED, attempt=1, run_id="run-3")

    crashed = Journal.open(path, None, readonly=True)  # the loop has not turned: not written
    entry = crashed.get(w)
    assert entry is not None
    assert (entry.state, entry.in_doubt, entry.since) == (S.SUBMITTING, True, wall.now)

    await journal.record(window(4), S.SUBMITTING, attempt=1)  # the next intent's commit
    later = Journal.open(path, None, readonly=True).get(w)
    assert later is not None
    assert (later.state, later.run_id) == (S.SUBMITTED, "run-3")
    await journal.close()


async def test_one_write_serves_every_record_ready_at_once(path: Path) -> None:
    journal = Journal.open(path, make_plan(), durable=False)

    await asyncio.gather(*(journal.record(window(i), S.SUBMITTING, attempt=1) for i in range(50)))
    await journal.close()

    assert (journal.records, journal.syncs) == (50, 1)


async def test_the_index_adds_nothing_for_the_garbage_collector(path: Path) -> None:
    """A window costs plain ints and bytes in flat dicts, which the cyclic GC never scans."""
    plan = make_plan(hours=3000)
    journal = Journal.open(path, plan, durable=False)
    gc.collect()
    before = len(gc.get_objects())
    for i, w in enumerate(plan.windows()):
        journal.record_nowait(w, S.SUBMITTING, attempt=1)
        journal.record_nowait(w, S.SUBMITTED, attempt=1, run_id=f"{i:08x}-0000-4000-8000-0")
    await journal.commit()
    gc.collect()
    tracked = len(gc.get_objects()) - before
    await journal.close()

    assert len(journal) == 3000
    assert tracked < 100, f"{tracked} more objects for the GC to scan"
    reopened = Journal.open(path, plan, readonly=True)
    gc.collect()
    assert len(reopened) == 3000
    assert len(gc.get_objects()) - before < 200


async def test_items_of_some_states_only(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    await journal.record(window(1), S.SUBMITTING, attempt=1)
    await journal.record(window(2), S.SUBMITTING, attempt=1)
    await journal.record(window(2), S.SUBMITTED, attempt=1, run_id="r2")
    await journal.record(window(3), S.SUBMITTING, attempt=1)
    await journal.record(window(3), S.FAILED, attempt=1, run_id="r3", errors=[{"message": "x"}])

    assert [w for w, _ in journal.items({S.SUBMITTING})] == [window(1)]
    assert [(w, e.errors) for w, e in journal.items({S.FAILED})] == [
        (window(3), [{"message": "x"}])
    ]
    assert {w for w, _ in journal.items()} == {window(1), window(2), window(3)}
    assert journal.has_run(FLOW)
    await journal.close()


async def test_items_with_a_note_only(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    for i in range(3):
        await journal.record(window(i), S.SUBMITTING, attempt=1)
    await journal.note(window(1), candidates=("r-9",))

    assert [(w, e.candidates) for w, e in journal.items(noted=True)] == [(window(1), ("r-9",))]
    await journal.record(window(1), S.SUBMITTED, attempt=1, run_id="r-1")  # a move settles it
    assert list(journal.items(noted=True)) == []
    await journal.close()


# ------------------------------------------------- record counts and new outcomes (issue 13)


async def test_record_counts_are_kept_replayed_compacted_and_summed(path: Path, wall: Wall) -> None:
    plan = make_plan()
    journal = Journal.open(path, plan, durable=False, wall=wall)
    outcomes = [
        (S.SUCCEEDED, RecordCounts(100, 100, 0, (2, 2, 0))),
        (S.PARTIAL, RecordCounts(50, 45, 5)),
        (S.EMPTY, RecordCounts(0, 0, 0)),
        (S.SUCCEEDED, RecordCounts(-1, -1, -1)),  # unknown counts are not summed
    ]
    for i, (state, counts) in enumerate(outcomes):
        journal.record_nowait(window(i), S.SUBMITTING, attempt=1)
        journal.record_nowait(window(i), S.SUBMITTED, attempt=1, run_id=f"run-{i}")
        journal.record_nowait(window(i), state, counts=counts)
    totals = {"input": 150, "output": 145, "failed": 5}
    assert journal.record_totals() == totals
    # An empty window re-triggered: its old counts leave the totals with the new intent.
    journal.record_nowait(window(2), S.SUBMITTING, attempt=2, mode="re-trigger")
    entry = journal.get(window(2))
    assert entry is not None
    assert entry.counts is None
    journal.record_nowait(window(2), S.SUBMITTED, attempt=2, run_id="run-2b")
    journal.record_nowait(window(2), S.SUCCEEDED, counts=RecordCounts(7, 7, 0))
    totals = {"input": 157, "output": 152, "failed": 5}
    assert journal.record_totals() == totals
    await journal.close()
    assert lines(path)[3]["rc"] == [100, 100, 0, 2, 2, 0]

    reopened = Journal.open(path, plan, wall=wall)
    try:
        assert reopened.record_totals() == totals
        first = reopened.get(window(0))
        assert first is not None
        assert first.counts == RecordCounts(100, 100, 0, (2, 2, 0))
        reopened._compact()
    finally:
        await reopened.close()
    compacted = Journal.open(path, plan, wall=wall)
    try:
        assert compacted.record_totals() == totals
        assert compacted.counts()[S.PARTIAL] == 1
    finally:
        await compacted.close()


def test_a_checkpoint_written_before_record_counts_still_replays(path: Path) -> None:
    plan = make_plan()
    header = {"kind": "backfill-checkpoint", "format": 1, "fingerprint": plan.fingerprint()}
    header["plan"] = plan.to_json()
    old = [
        header,
        {"t": "w", "f": 0, "s": START, "st": "submitting", "a": 1, "ts": 1700000000.0},
        {"t": "w", "f": 0, "s": START, "st": "submitted", "a": 1, "id": "run-1"},
        {"t": "w", "f": 0, "s": START, "st": "succeeded"},
    ]
    write(path, b"".join(orjson.dumps(record) + b"\n" for record in old))
    journal = Journal.open(path, None, readonly=True)
    entry = journal.get(window(0))
    assert entry is not None
    assert (entry.state, entry.counts) == (S.SUCCEEDED, None)
    assert journal.record_totals() == {"input": 0, "output": 0, "failed": 0}


def test_empty_may_be_run_again_and_partial_is_final() -> None:
    check_transition(S.EMPTY, S.SUBMITTING)
    for state in (S.SUBMITTED, S.RUNNING, S.SUBMITTING):
        check_transition(state, S.EMPTY)
        check_transition(state, S.PARTIAL)
    with pytest.raises(IllegalTransition):
        check_transition(S.PARTIAL, S.SUBMITTING)


# ------------------------------------------------- records made without waiting (issue 19)


async def test_a_record_made_without_waiting_rides_the_next_commit(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(path, make_plan())
    spy = FsyncSpy(monkeypatch, path)
    try:
        await journal.record(window(0), S.SUBMITTING, attempt=1)
        journal.record_nowait(window(0), S.SUBMITTED, attempt=1, run_id="run-0")
        for _ in range(20):
            await asyncio.sleep(0)
        assert spy.events == ["write", "fsync"], "no write, fsync or wake-up of its own"

        await journal.record(window(1), S.SUBMITTING, attempt=1)  # the next intent
        assert spy.events == ["write", "fsync"] * 2
        assert [(r["s"], r["st"]) for r in lines(path)[1:]] == [
            (window(0).start, "submitting"),
            (window(0).start, "submitted"),
            (window(1).start, "submitting"),
        ]
    finally:
        await journal.close()


async def test_a_record_made_without_waiting_is_written_by_the_lazy_flush(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "_LAZY_FLUSH", 0.0)
    journal = Journal.open(path, make_plan())
    try:
        journal.record_nowait(window(0), S.SUBMITTING, attempt=1)
        for _ in range(2000):  # no commit comes: the flush does, on its own
            if journal.syncs:
                break
            await asyncio.sleep(0.005)
        assert journal.syncs == 1
        assert [r["st"] for r in lines(path)[1:]] == ["submitting"]
    finally:
        await journal.close()


@pytest.mark.parametrize("seed", range(8))
async def test_the_moves_written_are_the_moves_replayed(path: Path, seed: int) -> None:
    """The write path applies its common moves without a dict (``_Index.move``); reopening
    replays the same lines through ``_Index.apply``: both must know exactly the same."""
    rng = random.Random(seed)
    plan = make_plan(12)
    journal = Journal.open(path, plan)
    errors = [{"code": "CONNECTOR-2001", "message": "source unreachable"}]
    attempts: dict[Window, int] = {}
    for _ in range(300):
        w = window(rng.randrange(12))
        targets = sorted(MOVES[journal.state(w)], key=lambda s: s.value)
        if not targets:
            continue  # a window that has finished for good
        new = rng.choice(targets)
        kwargs: dict[str, Any] = {}
        if new is S.SUBMITTING:
            attempts[w] = attempts.get(w, 0) + 1
            kwargs = {"attempt": attempts[w], "mode": rng.choice([None, "re-trigger", "new-run"])}
        elif new is S.SUBMITTED:
            kwargs = {"attempt": attempts.get(w, 1), "run_id": f"run-{rng.randrange(6)}"}
        elif new is S.FAILED:
            kwargs = {"errors": errors, "retrying": rng.random() < 0.5}
        elif new.finished and rng.random() < 0.5:
            kwargs = {"counts": RecordCounts(rng.randrange(9), rng.randrange(9), 0)}
        elif new is S.PENDING:
            kwargs = {"attempt": max(0, attempts.get(w, 0) - 1)}
        if rng.random() < 0.5:
            journal.record_nowait(w, new, **kwargs)
        else:
            await journal.record(w, new, **kwargs)
    live = snapshot(journal), journal.counts(), journal.record_totals()
    await journal.close()

    reopened = Journal.open(path, plan)
    try:
        assert (snapshot(reopened), reopened.counts(), reopened.record_totals()) == live
    finally:
        await reopened.close()


# ------------------------------------------------------ commits that gather (issue 19)


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_records_that_can_spare_time_wait_for_one_another_and_share_one_fsync(
    path: Path,
) -> None:
    """Intents made a few loop turns apart, each able to wait (every seat busy), share one
    commit: without the gathering each would be written and fsynced on its own."""
    journal = Journal.open(path, make_plan())
    try:
        syncs = journal.syncs
        waiting = []
        for i in range(6):
            waiting.append(
                asyncio.ensure_future(
                    journal.record(window(i), S.SUBMITTING, attempt=1, gather=30.0)
                )
            )
            await _turns(3)  # a commit started at once would have gone by now
        await _turns(10)
        assert not any(task.done() for task in waiting), "they wait for one another"
        assert journal.syncs == syncs

        await journal.commit()  # a commit asked for (as at close) does not wait
        assert all(task.done() for task in waiting)
        assert journal.syncs == syncs + 1
        assert [r["s"] for r in lines(path)[-6:]] == [window(i).start for i in range(6)]
    finally:
        await journal.close()


async def test_a_record_that_cannot_wait_takes_the_gathered_ones_with_it(path: Path) -> None:
    journal = Journal.open(path, make_plan())
    try:
        syncs = journal.syncs
        patient = asyncio.ensure_future(
            journal.record(window(0), S.SUBMITTING, attempt=1, gather=30.0)
        )
        await _turns()
        await asyncio.wait_for(journal.record(window(1), S.SUBMITTING, attempt=1), 10.0)
        assert patient.done()
        assert journal.syncs == syncs + 1
    finally:
        await journal.close()


async def test_a_gathering_commit_starts_on_its_own_when_it_is_due(path: Path) -> None:
    """Nobody else comes: the record is durable once its slack is spent, not later."""
    journal = Journal.open(path, make_plan())
    try:
        syncs = journal.syncs
        await asyncio.wait_for(
            journal.record(window(0), S.SUBMITTING, attempt=1, gather=0.05), 10.0
        )
        assert journal.syncs == syncs + 1
        assert lines(path)[-1]["s"] == window(0).start
    finally:
        await journal.close()


async def test_records_nobody_waits_for_start_no_commit_of_their_own_after_a_write(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run id that came back while a commit was being written waits for the next intent
    (or the lazy flush), not for a write and fsync of its own right after."""
    journal = Journal.open(path, make_plan())
    spy = FsyncSpy(monkeypatch, path)
    try:
        intent = asyncio.ensure_future(journal.record(window(0), S.SUBMITTING, attempt=1))
        await asyncio.sleep(0)  # the commit is with the writer thread
        journal.record_nowait(window(5), S.SUBMITTING, attempt=1)
        await intent
        for _ in range(20):
            await asyncio.sleep(0.001)
        assert spy.events == ["write", "fsync"]

        await journal.record(window(1), S.SUBMITTING, attempt=1)
        assert spy.events == ["write", "fsync"] * 2
        assert [r["s"] for r in lines(path)[1:]] == [window(i).start for i in (0, 5, 1)]
    finally:
        await journal.close()
