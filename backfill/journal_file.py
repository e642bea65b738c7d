"""The checkpoint's bytes: a file read into an index, and an index written as a compacted body.

File format (2; format 1, the same without "cols" records, is still read), one JSON object
per line:

    {"kind": "backfill-checkpoint", "format": 2, "fingerprint": ..., "plan": {...}}   header
    {"t": "cols", "f": 0, "w": 36, "n": 65536, "s": ..., "a": ..., "ids": ...}   compaction
    {"t": "w", "f": 0, "s": 1651584991, "st": "submitting", "a": 1, "ts": 1700000000}
    {"t": "w", "f": 0, "s": 1651584991, "st": "submitted", "a": 1, "id": "<run id>"}
    {"t": "w", "f": 0, "s": 1651584991, "st": "failed", "err": [...], "n": 1}   run failed
    {"t": "w", "f": 0, "s": 1651584991, "st": "empty", "rc": [0, 0, 0]}       record counts
    {"t": "plan", "fingerprint": ..., "plan": {...}}                           --extend
    {"t": "snap", ...}                                                         compaction

``f`` indexes the plan's flows (an extension only appends flows, so indexes are stable) and
``s`` is the window's start; ``n`` on a failure says whether the window has an attempt left
(1: it waits for its next attempt; 0: failed for good). A torn last line is dropped; a bad
line anywhere else stops everything and the file is left exactly as it was. Secrets never
enter it.

A compacted body is the header, "cols" records and "snap" records. A "cols" record holds up
to 65,536 windows of one flow whose run ids have one length (``w`` bytes, ASCII; 0: no run
id) and nothing more than a state, an attempt and flags: ``s`` their starts (int64, the first
then differences, so they only grow), ``a`` their packed words (uint64 big-endian, as in the
index), ``ids`` their run ids end to end; each column deflated, then base64. They are read
into the index in bulk (C loops, no Python object per window but the index's own). Every
other window is a "snap" record of its own.
``rc`` (optional, added after format 1 was first written; older files simply lack it) holds
a finished run's record counts, ``[input, output, failed]`` and then the file counts if known.
"""

from __future__ import annotations

import base64
import binascii
import gc
import itertools
import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from .errors import CheckpointCorrupt
from .index import (
    ATTEMPT_SHIFT,
    FAILED,
    INDEX_OF,
    LEGAL,
    LOW_BITS,
    MAX_RUN_ID,
    RETRYING,
    SHIFT,
    STATE_BITS,
    STATES,
    SUBMITTING,
    WORD,
    Entry,
    Index,
    Value,
    state_of,
)
from .planner import FlowPlan, Plan
from .state import IllegalTransition, WindowState

__all__ = ["FORMAT", "KIND", "Scan", "dense_lines", "describe", "plan_record", "snapshot_record"]

FORMAT = 2  # written; format 1 (no "cols" records) is still read
READS = frozenset((1, 2))
KIND = "backfill-checkpoint"
COLUMN_WINDOWS = 65_536  # windows per "cols" record: bounds the memory one record takes
_CHUNK = 1 << 20  # bytes of lines parsed at once on replay
_HEADER_START = b'{"kind":"' + KIND.encode() + b'"'


class Scan:
    """One pass over an existing checkpoint file."""

    def __init__(self) -> None:
        self.header: dict[str, Any] | None = None
        self.plan: Plan
        self.index = Index()
        self.lines = 0
        self.snapshots = 0  # "snap" and "cols" lines: what a compaction wrote
        self.good_bytes = 0
        self.torn_bytes = 0
        # Recorded windows by state position, counted as they move (a window's first record
        # takes one from position 0): no pass over the index afterwards.
        self.tally = [0] * len(STATES)

    @property
    def moves(self) -> int:
        """Lines appended since the file was written whole (by creation or compaction)."""
        return self.lines - 1 - self.snapshots

    def counts(self) -> dict[WindowState, int]:
        """Recorded windows by state (a window recorded is no longer counted as pending)."""
        tally = self.tally
        found = {state: tally[i] for i, state in enumerate(STATES)}
        found[WindowState.PENDING] += len(self.index.windows)
        return found

    @property
    def sequence(self) -> int:
        """Records ever appended to this file's lineage (snapshots and the header not counted)."""
        assert self.header is not None
        base = self.header.get("seq")
        base = base if type(base) is int else 0
        return base + self.lines - 1 - self.snapshots

    @classmethod
    def read(cls, path: Path) -> Scan:
        scan = cls()
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CheckpointCorrupt(str(path), None, f"cannot be read ({exc.strerror})") from exc
        # Millions of records are parsed into dicts that die young: the cyclic collector would
        # run every few hundred of them for nothing (what the index keeps, ints and bytes in
        # flat dicts, is never tracked). So it is off during the scan.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with handle:
                scan._read(handle, path)
        finally:
            if collecting:
                gc.enable()
        return scan

    def _read(self, handle: BinaryIO, path: Path) -> None:
        first = handle.readline()
        if not first.endswith(b"\n"):
            if first and not _HEADER_START.startswith(first[: len(_HEADER_START)]):
                raise CheckpointCorrupt(str(path), 1, "it is not a backfill checkpoint")
            self.torn_bytes = len(first)  # a torn header alone: nothing was ever recorded
            return
        try:
            self._header(orjson.loads(first), path)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorrupt(str(path), 1, describe(exc)) from None
        lines, good = 1, len(first)
        torn = False
        while not torn and (chunk := handle.readlines(_CHUNK)):
            if not chunk[-1].endswith(b"\n"):
                # Only the file's last line can lack its newline: a crash mid-write, dropped.
                # The read ends there: a reader without the lock (status) may have seen a
                # run's write half done, and the next read would start inside that line.
                self.torn_bytes = len(chunk.pop())
                torn = True
                if not chunk:
                    break
            # One parse for a whole chunk of lines is much cheaper than one call per line.
            try:
                records = orjson.loads(b"[" + b",".join(chunk) + b"]")
            except orjson.JSONDecodeError:
                records = None
            if records is None or len(records) != len(chunk):
                records = [self._parse(line, lines + i, path) for i, line in enumerate(chunk, 1)]
            self._replay(records, lines, path)
            lines += len(chunk)
            good += sum(map(len, chunk))
        self.lines = lines
        self.good_bytes = good

    @staticmethod
    def _parse(line: bytes, number: int, path: Path) -> Any:
        """One line, when its chunk did not parse: which line is bad, and why."""
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CheckpointCorrupt(str(path), number, describe(exc)) from None

    def _replay(self, records: list[Any], before: int, path: Path) -> None:
        """Apply a chunk of records; ``before`` lines of the file precede it."""
        index = self.index
        windows = index.windows
        run_flows = index.run_flows
        since = index.since
        errors = index.errors
        candidates = index.candidates
        suffix = index.suffix
        apply = index.apply
        tally = self.tally
        positions = INDEX_OF
        legal = LEGAL
        # A move of a window the plan does not have is refused: counted as recorded, it would
        # stand for one of the plan's windows, which a resume would then never send.
        plan = self.plan
        grids = [_grid(flow) for flow in plan.flows]
        flows = len(plan.flows)
        number = before
        try:
            for number, record in enumerate(records, before + 1):  # noqa: B007 - in the error
                if record["t"] == "w":  # the hot path: a window's move
                    flow = record["f"]
                    start = record["s"]
                    if not (0 <= flow < flows and type(start) is int):
                        raise ValueError(f"window {flow}/{start} is not in the plan")  # noqa: TRY301
                    grid = grids[flow]
                    if grid is None:
                        if plan.flows[flow].window_at(start) is None:
                            raise ValueError(f"window {flow}/{start} is not in the plan")  # noqa: TRY301
                    elif not (grid[0] <= start < grid[1] and not (start - grid[0]) % grid[2]):
                        raise ValueError(f"window {flow}/{start} is not in the plan")  # noqa: TRY301
                    key = (flow << SHIFT) | start
                    old = windows.get(key, 0)
                    new = positions[record["st"]]
                    was = (old if isinstance(old, int) else old[-1]) & STATE_BITS
                    if (was << 3) | new not in legal:
                        raise IllegalTransition(  # noqa: TRY301 - reported with its line below
                            f"a window cannot go from {STATES[was]} to {STATES[new]}"
                        )
                    tally[was] -= 1
                    tally[new] += 1
                    # The two records of nearly every window, applied inline (what `apply` does
                    # for them, without a call and its lookups): an intent, then its run id.
                    attempt = record.get("a")
                    if len(record) == 6 and type(attempt) is int and type(old) is int:
                        if new == SUBMITTING:
                            since_at = record.get("ts")
                            if since_at is not None:  # {t f s st a ts}, no run yet
                                windows[key] = (attempt << ATTEMPT_SHIFT) | (old & RETRYING) | new
                                if candidates:
                                    candidates.pop(key, None)
                                since[key] = since_at
                                if errors:
                                    errors.pop(key, None)
                                continue
                        else:
                            run_id = record.get("id")
                            if type(run_id) is str and attempt < 1 << 59:  # {t f s st a id}
                                windows[key] = run_id.encode() + suffix(
                                    (attempt << ATTEMPT_SHIFT) | (old & RETRYING) | new
                                )
                                if candidates:
                                    candidates.pop(key, None)
                                if since:
                                    since.pop(key, None)
                                if errors and new != FAILED:
                                    errors.pop(key, None)
                                if flow not in run_flows:
                                    run_flows.add(flow)
                                continue
                    apply(key, record, new)
                else:
                    self._other(record)
                    if self.plan is not plan:  # an extension: more flows or segments
                        plan = self.plan
                        grids = [_grid(flow) for flow in plan.flows]
                        flows = len(plan.flows)
        except (ValueError, KeyError, TypeError, IndexError, IllegalTransition) as exc:
            # A crash can only tear the last line short of its newline. A complete line that
            # does not read, wherever it is, was damaged after it was written: it may be a
            # durable record, so nothing is dropped.
            raise CheckpointCorrupt(str(path), number, describe(exc)) from None

    def _header(self, record: Any, path: Path) -> None:
        if not isinstance(record, dict) or record.get("kind") != KIND:
            raise ValueError(f"{path} is not a backfill checkpoint (no header on line 1)")
        if record.get("format") not in READS:
            raise ValueError(
                f"format {record.get('format')!r} is not one this backfill reads "
                f"({', '.join(map(str, sorted(READS)))}); use the backfill version that wrote it"
            )
        self.plan = Plan.from_json(record["plan"])
        if self.plan.fingerprint() != record.get("fingerprint"):
            raise ValueError("the header's fingerprint does not match its plan")
        self.plan = self.plan.showing(record.get("zones"))
        self.header = record

    def _columns(self, record: dict[str, Any]) -> None:
        """A "cols" record: up to 65,536 windows of one flow, parsed in bulk (see `_columns`)."""
        if self.header is None or self.header.get("format") == 1:
            raise ValueError("a cols record in a format-1 checkpoint")
        flow, width, count = record["f"], record["w"], record["n"]
        if not (type(flow) is int and 0 <= flow < len(self.plan.flows)):
            raise ValueError(f"flow {flow} is not in the plan")
        if not (type(count) is int and 0 < count <= COLUMN_WINDOWS):
            raise ValueError(f"a cols record of {count!r} windows")
        if not (type(width) is int and 0 <= width <= MAX_RUN_ID):
            raise ValueError(f"a cols record of run ids {width!r} bytes long")
        deltas = array("q", _unpack(record["s"], count * 8))
        words = _unpack(record["a"], count * WORD)  # the packed words, big-endian
        if deltas[0] < 0 or (count > 1 and min(itertools.islice(deltas, 1, None)) <= 0):
            raise ValueError("a cols record's window starts are not increasing")
        if sum(deltas) >= 1 << SHIFT:
            raise ValueError("a cols record's window start is past the year 2100")
        if not _planned(self.plan.flows[flow], deltas):
            # Read as recorded, windows the plan does not have would be counted as done while
            # the plan's own windows were never sent (a resume would skip them).
            raise ValueError("a cols record holds a window start the plan does not have")
        keys = itertools.islice(itertools.accumulate(deltas, initial=flow << SHIFT), 1, None)
        values: Iterable[Value]
        if width:
            ids = _unpack(record["ids"], count * width)
            if not ids.isascii():
                raise ValueError("a cols record's run ids are not ASCII")
            # Interleaved in C (one strided copy per byte column), then cut in one pass.
            size = width + WORD
            blob = bytearray(count * size)
            for column in range(width):
                blob[column::size] = ids[column::width]
            for column in range(WORD):
                blob[width + column :: size] = words[column::WORD]
            values = map(operator.itemgetter(0), struct.iter_unpack(f"{size}s", blob))
            self.index.run_flows.add(flow)
        else:
            native = array("Q", words)
            if sys.byteorder == "little":
                native.byteswap()
            values = native.tolist()
        windows = self.index.windows
        before = len(windows)
        windows.update(zip(keys, values, strict=True))
        if len(windows) != before + count:
            raise ValueError("a cols record holds a window recorded before it")
        tally = self.tally
        tally[0] -= count
        states = words[WORD - 1 :: WORD].translate(LOW_BITS)  # each word's state, in C
        for position in set(states):
            tally[position] += states.count(position)

    def _other(self, record: dict[str, Any]) -> None:
        """Records other than a window's move: snapshots (compaction) and plan extensions."""
        kind = record["t"]
        if kind == "snap":
            flow = record["f"]
            start = record["s"]
            if not (
                0 <= flow < len(self.plan.flows)
                and type(start) is int
                and self.plan.flows[flow].window_at(start) is not None
            ):
                raise ValueError(f"window {flow}/{start} is not in the plan")
            key = (flow << SHIFT) | start
            new = INDEX_OF[record["st"]]
            self.tally[state_of(self.index.windows.get(key, 0))] -= 1
            self.tally[new] += 1
            self.index.apply(key, record, new)
            self.index.note(key, record)
            self.snapshots += 1
        elif kind == "cols":
            self._columns(record)
            self.snapshots += 1
        elif kind == "note":
            flow = record["f"]
            start = record["s"]
            key = (flow << SHIFT) | start if type(start) is int and type(flow) is int else -1
            if key not in self.index.windows:
                raise ValueError(f"a note for window {flow}/{start}, which has no record")
            self.index.note(key, record)
        elif kind == "plan":
            plan = Plan.from_json(record["plan"])
            if plan.fingerprint() != record.get("fingerprint"):
                raise ValueError("a plan record's fingerprint does not match its plan")
            self.plan = plan.showing(record.get("zones"))
        else:
            raise ValueError(f"unknown record type {kind!r}")


def dense_lines(index: Index) -> Iterator[bytes]:
    """The compacted body: "cols" records, one per flow, run id length and 65,536 windows;
    then a "snap" record for each window with more than a state, an attempt and a run id."""
    extra: set[int] = set()
    for rare in (
        index.since,
        index.errors,
        index.old_runs,
        index.duplicates,
        index.candidates,
        index.records,
    ):
        extra.update(rare)
    groups: dict[tuple[int, int], list[int]] = {}
    for key, value in index.windows.items():
        if extra and key in extra:
            continue
        if isinstance(value, int):
            width = 0
        else:
            width = len(value) - WORD
            if not 0 < width <= MAX_RUN_ID or not value[:-WORD].isascii():
                extra.add(key)  # an empty, long or non-ASCII run id: kept as a snapshot
                continue
        group = groups.get((key >> SHIFT, width))
        if group is None:
            group = groups[key >> SHIFT, width] = []
        group.append(key)
    windows = index.windows
    mask = (1 << SHIFT) - 1
    for (flow, width), keys in groups.items():
        keys.sort()
        for first in range(0, len(keys), COLUMN_WINDOWS):
            chunk = keys[first : first + COLUMN_WINDOWS]
            starts = [key & mask for key in chunk]
            deltas = array("q", [starts[0]])
            deltas.extend(map(operator.sub, itertools.islice(starts, 1, None), starts))
            values = [windows[key] for key in chunk]
            record: dict[str, Any] = {"t": "cols", "f": flow, "w": width, "n": len(chunk)}
            record["s"] = _pack(deltas.tobytes())
            if width:
                runs = cast("list[bytes]", values)
                record["ids"] = _pack(b"".join([value[:-WORD] for value in runs]))
                record["a"] = _pack(b"".join([value[-WORD:] for value in runs]))
            else:
                words = array("Q", cast("list[int]", values))
                if sys.byteorder == "little":
                    words.byteswap()
                record["a"] = _pack(words.tobytes())
            yield orjson.dumps(record) + b"\n"
    for key in extra:
        entry = index.entry(key)
        if entry is not None:
            yield orjson.dumps(snapshot_record(key, entry)) + b"\n"


def snapshot_record(key: int, entry: Entry) -> dict[str, Any]:
    record: dict[str, Any] = {
        "t": "snap",
        "f": key >> SHIFT,
        "s": key & ((1 << SHIFT) - 1),
        "st": entry.state.value,
        "a": entry.attempt,
    }
    if entry.run_id is not None:
        record["id"] = entry.run_id
    if entry.old_runs:
        record["old"] = list(entry.old_runs)
    if entry.since:
        record["ts"] = entry.since
    if entry.retrigger and entry.state is WindowState.SUBMITTING:
        record["m"] = "re-trigger"
    if entry.errors:
        record["err"] = entry.errors
    if entry.retrying:
        record["n"] = 1
    if entry.duplicates:
        record["dup"] = list(entry.duplicates)
    if entry.candidates:
        record["cand"] = list(entry.candidates)
    if entry.counts is not None:
        record["rc"] = entry.counts.to_list()
    return record


def _pack(data: bytes) -> str:
    """A column as it is stored: deflated (zlib's fastest level), then base64."""
    return base64.b64encode(zlib.compress(data, 1)).decode("ascii")


def _unpack(value: Any, size: int) -> bytes:
    """A stored column back, refused unless it is exactly ``size`` bytes once inflated (a
    damaged or hostile column is found here, and never inflated past its size)."""
    if type(value) is not str:
        raise ValueError("a cols column is not text")
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(base64.b64decode(value, validate=True), size + 1)
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"a cols column does not decode ({exc})") from None
    if len(data) != size or not inflate.eof or inflate.unused_data:
        raise ValueError("a cols column does not hold what its record says")
    return data


def plan_record(plan: Plan, kind: str | None) -> dict[str, Any]:
    head: dict[str, Any] = {"t": kind} if kind else {"kind": KIND, "format": FORMAT}
    record = head | {"fingerprint": plan.fingerprint(), "plan": plan.to_json()}
    zones = plan.zones()
    if zones:  # how fixed-size flows' times are shown: beside the plan, not in it
        record["zones"] = zones
    return record


def describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"a record lacks the field {exc}"
    return str(exc) or type(exc).__name__


def _grid(flow: FlowPlan) -> tuple[int, int, int] | None:
    """A fixed window size over one segment (the common plan): its start, end and size, so a
    start is checked with arithmetic alone; ``None`` for any other plan (``window_at``)."""
    size = flow.window
    if isinstance(size, int) and len(flow.segments) == 1:
        segment = flow.segments[0]
        return segment.start, segment.end, size
    return None


def _planned(flow: FlowPlan, deltas: array[int]) -> bool:
    """Whether every start of a "cols" record (the first, then differences) is a window of the
    flow's plan. A fixed window size over one segment, the common case, is checked on the
    differences in C; any other plan one start at a time."""
    grid = _grid(flow)
    if grid is not None:
        low, high, size = grid
        first, last = deltas[0], sum(deltas)
        return (
            low <= first
            and last < high
            and not (first - low) % size
            and not any(map(size.__rmod__, itertools.islice(deltas, 1, None)))
        )
    return all(flow.window_at(start) is not None for start in itertools.accumulate(deltas))
