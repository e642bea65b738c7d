"""The checkpoint: an append-only journal of every window's moves, and its only owner.

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
(1: it waits for its next attempt; 0: failed for good). Every record is applied to the
in-memory index at once and written, in order, by one writer thread: ``record`` returns once
it is durable, and every task waiting at that moment shares one ``fsync`` (group commit);
``record_nowait`` returns at once and starts no write of its own: the record is durable with
the next commit, or with the lazy flush that follows it within ``_LAZY_FLUSH`` seconds. A torn
last line is dropped; a bad line anywhere else stops everything and the file is left exactly
as it was. Secrets never enter it.

Compaction (at open and at close, once more than 10,000 moves were appended since the file
was last written whole) rewrites it atomically as header, "cols" records and "snap" records.
A "cols" record holds up to 65,536 windows of one flow whose run ids have one length (``w``
bytes, ASCII; 0: no run id) and nothing more than a state, an attempt and flags: ``s`` their
starts (int64, the first then differences, so they only grow), ``a`` their packed words
(uint64 big-endian, as in the index below), ``ids`` their run ids end to end; each column
deflated, then base64. They are read into the index in bulk (C loops, no Python object per
window but the index's own). Every other window is a "snap" record of its own.
``rc`` (optional, added after format 1 was first written; older files simply lack it) holds
a finished run's record counts, ``[input, output, failed]`` and then the file counts if known.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import itertools
import operator
import os
import queue
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
import structlog

from .errors import (
    CheckpointCorrupt,
    CheckpointMissing,
    CheckpointWriteError,
    PlanMismatch,
)
from .owner import Owner, Pulled, check_kind, lock_new_file, sidecar_path
from .planner import Plan, Window
from .state import MOVES, IllegalTransition, RecordCounts, WindowState, check_transition

__all__ = ["Entry", "Holder", "Journal", "Replay", "holder"]

FORMAT = 2  # written; format 1 (no "cols" records) is still read
READS = frozenset((1, 2))
KIND = "backfill-checkpoint"
_SHIFT = 33  # window starts are < 2**33 (the planner refuses times past 2100)
_COMPACT_SLACK = 10_000  # moves appended since the last compaction before the next is due
_COLUMN_WINDOWS = 65_536  # windows per "cols" record: bounds the memory one record takes
# A record made without waiting (``record_nowait``) is written by the next commit, or at the
# latest this many seconds after it was made.
_LAZY_FLUSH = 1.0
_CHUNK = 1 << 20  # bytes of lines parsed at once on replay
_HEADER_START = b'{"kind":"' + KIND.encode() + b'"'

log = structlog.get_logger("backfill.journal")


class Entry:
    """What the journal knows of one window, as handed out (a copy; the index stores less)."""

    __slots__ = (
        "attempt",
        "candidates",
        "counts",
        "duplicates",
        "errors",
        "old_runs",
        "retrigger",
        "retrying",
        "run_id",
        "since",
        "state",
    )

    def __init__(self) -> None:
        self.state = WindowState.PENDING
        self.attempt = 0
        self.run_id: str | None = None
        self.old_runs: tuple[str, ...] = ()  # earlier attempts' runs (new-run retries)
        self.errors: list[dict[str, str]] | None = None
        self.since = 0.0  # wall time of the pending intent: bounds the reconciliation search
        self.retrigger = False  # the pending intent re-triggers run_id rather than creating one
        self.retrying = False  # failed, with an attempt left when it was recorded
        # Other live runs the service holds for this window: a duplicate, never silent.
        self.duplicates: tuple[str, ...] = ()
        # Runs created since the intent whose window the service did not say: while any may be
        # this window's, the window stays in doubt and is not sent again.
        self.candidates: tuple[str, ...] = ()
        self.counts: RecordCounts | None = None  # what the latest finished run ingested

    @property
    def in_doubt(self) -> bool:
        return self.state is WindowState.SUBMITTING

    def all_runs(self) -> tuple[str, ...]:
        return (*self.old_runs, self.run_id) if self.run_id else self.old_runs


# A window is one value in one dict, by key ``flow << 33 | start``: its state, attempt and
# flags packed in an int, `attempt << 5 | retrying << 4 | re-trigger << 3 | state`; once it
# has a run, its
# run id's UTF-8 bytes followed by that int in 8 bytes (big-endian: the state is in the last
# byte). Ints and bytes are all the index holds for the common case, so its dicts are untracked
# by the cyclic garbage collector (a million windows cost it nothing), and a window costs one
# dict slot, its key and one small object: about 160 bytes with a run id of 36 characters.
_STATES = tuple(WindowState)
_STATE_AT = {state: i for i, state in enumerate(_STATES)}
_VALUES = tuple(state.value for state in _STATES)
_PENDING_STATE = WindowState.PENDING
_INDEX_OF = {state.value: i for i, state in enumerate(_STATES)}
_SUBMITTING = _STATE_AT[WindowState.SUBMITTING]
_FAILED = _STATE_AT[WindowState.FAILED]
_EMPTY = _STATE_AT[WindowState.EMPTY]
_STATE_BITS = 7
_RETRIGGER = 8
_RETRYING = 16
_ATTEMPT_SHIFT = 5
_WORD = 8  # bytes of the packed int after a run id
_LOW_BITS = bytes(i & _STATE_BITS for i in range(256))  # a word's last byte -> its state
_MAX_RUN_ID = 1024  # bytes of a run id kept in columns (a longer one goes in a "snap" record)
_LEGAL = frozenset(
    (_STATE_AT[old] << 3) | _STATE_AT[new] for old, targets in MOVES.items() for new in targets
)
if _STATE_AT[WindowState.PENDING] != 0:  # pragma: no cover - a layout fact, checked on import
    raise RuntimeError("an absent window (packed 0) must read as pending")

Value = int | bytes


def _word(value: Value) -> int:
    """The packed state, attempt and flag of a value."""
    return value if isinstance(value, int) else int.from_bytes(value[-_WORD:])


def _state_of(value: Value) -> int:
    """The state's position alone: the low bits of the int, or of the last byte."""
    return (value if isinstance(value, int) else value[-1]) & _STATE_BITS


class _Index:
    """Every recorded window, in flat dicts of plain values (see above)."""

    __slots__ = (
        "candidates",
        "duplicates",
        "errors",
        "old_runs",
        "records",
        "run_flows",
        "since",
        "suffixes",
        "windows",
    )

    def __init__(self) -> None:
        self.windows: dict[int, Value] = {}
        self.since: dict[int, float] = {}  # windows in SUBMITTING: when the intent was made
        self.errors: dict[int, list[dict[str, str]]] = {}  # FAILED windows' run errors
        self.old_runs: dict[int, tuple[str, ...]] = {}  # earlier runs (new-run retries)
        self.run_flows: set[int] = set()  # flows with at least one run
        self.suffixes: dict[int, bytes] = {}  # packed int -> its 8 bytes (a handful in use)
        self.duplicates: dict[int, tuple[str, ...]] = {}  # notes: other live runs (rare)
        self.candidates: dict[int, tuple[str, ...]] = {}  # notes: runs that may be its (rare)
        # finished windows' record counts as recorded: [in, out, failed(, files in, out, failed)]
        self.records: dict[int, list[int]] = {}

    def suffix(self, word: int) -> bytes:
        known = self.suffixes.get(word)
        if known is None:
            known = self.suffixes[word] = word.to_bytes(_WORD)
        return known

    def apply(self, key: int, record: dict[str, Any], new: int) -> None:
        """One record's effect (``new`` is the state's position; the move was checked)."""
        get = record.get
        value = self.windows.get(key, 0)
        attempt = get("a")
        if attempt is None:
            attempt = _word(value) >> _ATTEMPT_SHIFT
        if attempt >= 1 << 59:
            raise ValueError(f"attempt {attempt} is not a number of attempts")
        word = (attempt << _ATTEMPT_SHIFT) | new
        retrying = get("n")
        if retrying is None:
            word |= _word(value) & _RETRYING
        elif retrying:
            word |= _RETRYING
        if self.candidates:  # a move settles the doubt they kept open
            self.candidates.pop(key, None)
        if new == _SUBMITTING:
            since = get("ts")
            if since is not None:
                self.since[key] = since
            if get("m") == "re-trigger":
                word |= _RETRIGGER
        elif self.since:
            self.since.pop(key, None)
        counts = get("rc")
        if counts is not None:
            self.records[key] = counts
        elif new == _SUBMITTING and self.records:
            self.records.pop(key, None)  # a new attempt: the earlier run's counts are not its
        errors = get("err")
        if errors is not None:
            self.errors[key] = errors
        elif new != _FAILED and self.errors:
            self.errors.pop(key, None)
        old = get("old")  # snapshots only
        if old is not None:
            self.old_runs[key] = tuple(old)
        run = value[:-_WORD] if isinstance(value, bytes) else None
        run_id = get("id")
        if run_id is not None:
            given = run_id.encode()
            if run is not None and run != given:
                self.old_runs[key] = (*self.old_runs.get(key, ()), run.decode())
            elif run is None:
                self.run_flows.add(key >> _SHIFT)
            run = given
        self.windows[key] = word if run is None else run + self.suffix(word)

    def move(
        self,
        key: int,
        new: int,
        attempt: int | None,
        run_id: str | None,
        since: float | None,
        retrigger: bool,
    ) -> None:
        """``apply`` of a record that has no ``n``, ``rc``, ``err`` or ``old``: the write
        path's common moves (an intent, an accepted run), without a dict to read them from."""
        value = self.windows.get(key, 0)
        if isinstance(value, int):
            before, run = value, None
        else:
            before, run = int.from_bytes(value[-_WORD:]), value[:-_WORD]
        if attempt is None:
            attempt = before >> _ATTEMPT_SHIFT
        if attempt >= 1 << 59:
            raise ValueError(f"attempt {attempt} is not a number of attempts")
        word = (attempt << _ATTEMPT_SHIFT) | new | (before & _RETRYING)
        if self.candidates:  # a move settles the doubt they kept open
            self.candidates.pop(key, None)
        if new == _SUBMITTING:
            if since is not None:
                self.since[key] = since
            if retrigger:
                word |= _RETRIGGER
            if self.records:
                self.records.pop(key, None)  # a new attempt: the earlier run's counts are not its
        elif self.since:
            self.since.pop(key, None)
        if new != _FAILED and self.errors:
            self.errors.pop(key, None)
        if run_id is not None:
            given = run_id.encode()
            if run is not None and run != given:
                self.old_runs[key] = (*self.old_runs.get(key, ()), run.decode())
            elif run is None:
                self.run_flows.add(key >> _SHIFT)
            run = given
        self.windows[key] = word if run is None else run + self.suffix(word)

    def note(self, key: int, record: dict[str, Any]) -> None:
        """A note's effect: what the service showed of the window, beside its state."""
        duplicates = record.get("dup")
        if duplicates is not None:
            self.duplicates[key] = tuple(duplicates)
        candidates = record.get("cand")
        if candidates is not None:
            self.candidates[key] = tuple(candidates)

    def entry(self, key: int) -> Entry | None:
        value = self.windows.get(key)
        if value is None:
            return None
        word = _word(value)
        entry = Entry()
        entry.state = _STATES[word & _STATE_BITS]
        entry.attempt = word >> _ATTEMPT_SHIFT
        entry.retrigger = bool(word & _RETRIGGER)
        entry.retrying = bool(word & _RETRYING)
        if self.duplicates:
            entry.duplicates = self.duplicates.get(key, ())
        if self.candidates:
            entry.candidates = self.candidates.get(key, ())
        if isinstance(value, bytes):
            entry.run_id = value[:-_WORD].decode()
        if self.old_runs:
            entry.old_runs = self.old_runs.get(key, ())
        if self.errors:
            entry.errors = self.errors.get(key)
        if self.since:
            entry.since = self.since.get(key, 0.0)
        if self.records:
            counts = self.records.get(key)
            if counts is not None:
                entry.counts = RecordCounts.from_list(counts)
        return entry

    def counts(self) -> dict[WindowState, int]:
        found = Counter(map(_state_of, self.windows.values()))
        return {state: found.get(i, 0) for i, state in enumerate(_STATES)}

    def record_totals(self) -> list[int]:
        """Known (not -1) input, output and failed records, summed over the windows."""
        totals = [0, 0, 0]
        for counts in self.records.values():
            for i, value in enumerate(counts[:3]):
                if value > 0:
                    totals[i] += value
        return totals


@dataclass(frozen=True, slots=True)
class Replay:
    """What opening a checkpoint found, for the log and the status display."""

    records: int
    torn_bytes: int
    compacted: bool
    created: bool
    extended: bool


def _key(flow_index: int, start: int) -> int:
    return (flow_index << _SHIFT) | start


class Journal:
    """One checkpoint file: lock, replay, append with group commit, compaction."""

    def __init__(
        self,
        path: Path,
        plan: Plan,
        *,
        fd: int | None,
        owner: Owner | None,
        group_commit: bool = True,
        durable: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.plan = plan
        self._planned = plan.count()
        self._fd = fd
        self._owner = owner
        self._group_commit = group_commit
        self._durable = durable
        self._wall = wall
        self._index = _Index()
        self._counts = dict.fromkeys(WindowState, 0)  # recorded windows by state
        self._records = [0, 0, 0]  # input, output, failed records of every window's last run
        self._flow_index = {flow.flow_id: i for i, flow in enumerate(plan.flows)}
        self._buffer: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False  # a flush is due on the loop (call_soon)
        self._lazy = False  # a lazy flush is due (call_later): records wait without a waiter
        self._writing = False  # a batch is with the writer thread
        self._writer: _Writer | None = None
        self._failure: CheckpointWriteError | None = None
        self.records = 0
        self.syncs = 0
        self._moves = 0  # lines appended before this process, since the file was written whole
        self._compacted_at = 0  # self.records when this process last compacted
        self.replay = Replay(0, 0, compacted=False, created=False, extended=False)

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: Path,
        requested: Plan | None,
        *,
        extend: bool = False,
        readonly: bool = False,
        group_commit: bool = True,
        durable: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> Journal:
        """Open (or create) the checkpoint at ``path`` for ``requested``.

        ``requested=None`` means "the plan the checkpoint was written for" (status, retry).
        ``readonly`` takes no lock and never writes: a running backfill may hold the lock.
        """
        path = Path(path)
        if readonly:
            check_kind(path)  # a FIFO would hang the read, a device is no checkpoint
            owner = None
        else:
            owner = Owner.acquire(path, create=requested is not None)
        try:
            return cls._open_locked(
                path,
                requested,
                extend=extend,
                readonly=readonly,
                owner=owner,
                group_commit=group_commit,
                durable=durable,
                wall=wall,
            )
        except BaseException:
            if owner is not None:
                owner.release(abandon=True)
            raise

    @classmethod
    def _open_locked(
        cls,
        path: Path,
        requested: Plan | None,
        *,
        extend: bool,
        readonly: bool,
        owner: Owner | None,
        group_commit: bool,
        durable: bool,
        wall: Callable[[], float],
    ) -> Journal:
        scan = _Scan.read(path) if path.exists() else None
        if scan is None or scan.header is None:
            if requested is None:
                raise CheckpointMissing(str(path))
            if owner is None:
                return cls(path, requested, fd=None, owner=None, wall=wall)
            torn = scan.torn_bytes if scan is not None else 0
            journal = cls._create(path, requested, owner, group_commit, durable, wall)
            journal.replay = Replay(0, torn, compacted=False, created=True, extended=False)
            return journal

        recorded = scan.plan
        plan = recorded
        if requested is not None and requested.fingerprint() != recorded.fingerprint():
            try:
                candidate = recorded.extended_to(requested)
            except ValueError as exc:
                # With --extend, say why it cannot extend; without, say what differs.
                differences = [str(exc)] if extend else recorded.differences(requested)
                raise PlanMismatch(str(path), differences or [str(exc)], extendable=False) from None
            # After an --extend the recorded plan has several segments: the same command
            # again asks for exactly what is recorded, and is no change at all.
            if candidate.fingerprint() != recorded.fingerprint():
                if not extend:
                    differences = recorded.differences(requested)
                    raise PlanMismatch(str(path), differences, extendable=True)
                plan = candidate
        extended = plan is not recorded

        fd = None
        if owner is not None:
            generation = scan.header.get("gen")
            owner.check_not_older(generation, scan.sequence)
            if scan.torn_bytes:
                _truncate(path, scan.good_bytes)
            fd = _open_append(path)
            owner.reset_size()
            owner.claim(generation, scan.sequence)
        try:
            return cls._replayed(
                path, plan, scan, fd, owner, group_commit, durable, wall, extended=extended
            )
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    @classmethod
    def _replayed(
        cls,
        path: Path,
        plan: Plan,
        scan: _Scan,
        fd: int | None,
        owner: Owner | None,
        group_commit: bool,
        durable: bool,
        wall: Callable[[], float],
        *,
        extended: bool,
    ) -> Journal:
        readonly = fd is None
        journal = cls(
            path,
            plan,
            fd=fd,
            owner=owner,
            group_commit=group_commit,
            durable=durable,
            wall=wall,
        )
        journal._index = scan.index
        journal._counts = scan.counts()
        journal._records = scan.index.record_totals()
        journal._moves = scan.moves
        compacted = False
        if not readonly:
            if extended:
                journal._write_now(_plan_record(plan, "plan"))
            if journal._due():
                journal._compact()
                compacted = True
        journal.replay = Replay(scan.lines, scan.torn_bytes, compacted, False, extended)
        return journal

    @classmethod
    def _create(
        cls,
        path: Path,
        plan: Plan,
        owner: Owner,
        group_commit: bool,
        durable: bool,
        wall: Callable[[], float],
    ) -> Journal:
        # The header is written into the locked file itself (a rename would put an unlocked
        # file in its place). A crash mid-write leaves a torn header: a file with no records.
        generation = uuid.uuid4().hex
        header = _plan_record(plan, None) | {"created": int(wall()), "gen": generation, "seq": 0}
        fd = _open_append(path)
        try:
            os.ftruncate(fd, 0)  # a torn header of an earlier attempt
            os.write(fd, orjson.dumps(header) + b"\n")
            os.fsync(fd)
            _fsync_dir(path.parent)
            owner.reset_size()
            owner.claim(generation, 0)
        except OSError as exc:
            os.close(fd)
            raise CheckpointWriteError(str(path), exc) from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(
            path,
            plan,
            fd=fd,
            owner=owner,
            group_commit=group_commit,
            durable=durable,
            wall=wall,
        )

    # ---------------------------------------------------------------- reading

    def get(self, window: Window) -> Entry | None:
        """What is recorded of the window (a copy), or None: it is pending."""
        return self._index.entry(_key(self._flow_index[window.flow_id], window.start))

    def state(self, window: Window) -> WindowState:
        value = self._index.windows.get(_key(self._flow_index[window.flow_id], window.start), 0)
        return _STATES[_state_of(value)]

    def __len__(self) -> int:
        """Windows the journal has a record of (every other planned window is pending)."""
        return len(self._index.windows)

    def items(
        self, states: Collection[WindowState] | None = None, *, noted: bool = False
    ) -> Iterator[tuple[Window, Entry]]:
        """Every recorded window (in one of ``states``; with ``noted``, only those with a note)
        with its entry; windows no longer planned are skipped.

        A window filtered out costs a dict read, not a window and an entry: ``status`` of a
        million finished windows builds entries only for the few it shows.
        """
        wanted = None if states is None else {_STATE_AT[state] for state in states}
        if states is not None and not any(self._counts[state] for state in states):
            return  # none in those states: no pass over the index
        index = self._index
        flows = self.plan.flows
        mask = (1 << _SHIFT) - 1
        duplicates, candidates = index.duplicates, index.candidates
        if noted and not duplicates and not candidates:
            return
        for key, value in index.windows.items():
            if wanted is not None and _state_of(value) not in wanted:
                continue
            if noted and key not in duplicates and key not in candidates:
                continue
            window = flows[key >> _SHIFT].window_at(key & mask)
            entry = index.entry(key)
            if window is not None and entry is not None:
                yield window, entry

    def unfinished(self, windows: Iterable[Window], *, empty: bool = False) -> Iterator[Window]:
        """Those of ``windows`` that are pending or failed (or, with ``empty``, ingested
        nothing: --retry-empty): the only ones a run may send.

        A resume walks every planned window; this skips the finished ones at the cost of one
        dict read each, without building an entry or a state.
        """
        counts = self.counts()
        if not (
            counts[WindowState.PENDING]
            or counts[WindowState.FAILED]
            or (empty and counts[WindowState.EMPTY])
        ):
            return  # nothing left to send: the plan is not walked at all
        get = self._index.windows.get
        flow_index = self._flow_index
        for window in windows:
            value = get((flow_index[window.flow_id] << _SHIFT) | window.start, 0)
            bits = (value if isinstance(value, int) else value[-1]) & _STATE_BITS
            if bits in (0, _FAILED) or (empty and bits == _EMPTY):  # pending (0) or failed
                yield window

    def flow_counts(self, flow_id: str) -> dict[WindowState, int]:
        """``counts()`` of one flow (one pass over the index when the plan has several)."""
        if len(self.plan.flows) == 1:
            return self.counts()
        flow = self._flow_index[flow_id]
        found = Counter(
            _state_of(value) for key, value in self._index.windows.items() if key >> _SHIFT == flow
        )
        counts = {state: found.get(i, 0) for i, state in enumerate(_STATES)}
        counts[WindowState.PENDING] += self.plan.flows[flow].count(self.plan.shard) - sum(
            found.values()
        )
        return counts

    def recorded(self) -> Counter[str]:
        """Windows the journal has a record of, by flow id (no window or entry is built)."""
        flows = self.plan.flows
        if len(flows) == 1:
            return Counter({flows[0].flow_id: len(self._index.windows)})
        found = Counter(map(_SHIFT.__rrshift__, self._index.windows))
        return Counter({flows[i].flow_id: n for i, n in found.items() if i < len(flows)})

    def key_of(self, window: Window) -> int:
        """The window's key in the index: one int, for callers that keep many windows."""
        return _key(self._flow_index[window.flow_id], window.start)

    def window_of(self, key: int) -> Window | None:
        """The planned window of a key from ``key_of``."""
        return self.plan.flows[key >> _SHIFT].window_at(key & ((1 << _SHIFT) - 1))

    def has_run(self, flow_id: str) -> bool:
        """Whether any window of the flow has a run (its delta column is then set)."""
        return self._flow_index[flow_id] in self._index.run_flows

    def counts(self) -> dict[WindowState, int]:
        """Windows of this checkpoint's plan in each state (kept up to date, not counted)."""
        counts = dict(self._counts)
        counts[WindowState.PENDING] += self._planned - len(self._index.windows)
        return counts

    def record_totals(self) -> dict[str, int]:
        """Records read, ingested and failed, summed over every window's latest run (known
        counts only: -1 is "unknown")."""
        return dict(zip(("input", "output", "failed"), self._records, strict=True))

    def _add_records(self, counts: list[int], sign: int) -> None:
        totals = self._records
        for i, value in enumerate(counts[:3]):
            if value > 0:
                totals[i] += sign * value

    # ---------------------------------------------------------------- writing

    def record_nowait(
        self,
        window: Window,
        state: WindowState,
        *,
        attempt: int | None = None,
        run_id: str | None = None,
        errors: list[dict[str, str]] | None = None,
        mode: str | None = None,
        retrying: bool | None = None,
        counts: RecordCounts | None = None,
    ) -> None:
        """Apply a move now; it becomes durable with the next commit.

        ``retrying`` (a failure only): whether the window has an attempt left; ``counts``: the
        finished run's record counts.
        """
        self._append(
            window,
            state,
            attempt,
            run_id,
            errors,
            mode,
            durable=False,
            retrying=retrying,
            counts=counts,
        )

    async def record(
        self,
        window: Window,
        state: WindowState,
        *,
        attempt: int | None = None,
        run_id: str | None = None,
        errors: list[dict[str, str]] | None = None,
        mode: str | None = None,
        retrying: bool | None = None,
        counts: RecordCounts | None = None,
    ) -> None:
        """Apply a move and return once it (and everything before it) is durable."""
        waiter = self._append(
            window,
            state,
            attempt,
            run_id,
            errors,
            mode,
            durable=True,
            retrying=retrying,
            counts=counts,
        )
        if waiter is not None:
            await waiter

    async def note(
        self,
        window: Window,
        *,
        duplicates: tuple[str, ...] | None = None,
        candidates: tuple[str, ...] | None = None,
    ) -> None:
        """Record what the service showed of a window without moving it; durable on return."""
        if self._failure is not None:
            raise self._failure
        if self._fd is None:
            raise RuntimeError("the checkpoint is open read-only or closed")
        flow = self._flow_index[window.flow_id]
        key = _key(flow, window.start)
        if key not in self._index.windows:
            raise RuntimeError("a note needs a window the checkpoint has a record of")
        record: dict[str, Any] = {"t": "note", "f": flow, "s": window.start}
        if duplicates is not None:
            record["dup"] = list(duplicates)
        if candidates is not None:
            record["cand"] = list(candidates)
        self._index.note(key, record)
        self._buffer.append(orjson.dumps(record) + b"\n")
        self.records += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick()
        await waiter

    async def commit(self) -> None:
        """Make every record so far durable."""
        if self._failure is not None:
            raise self._failure
        if not self._buffer and not self._writing and not self._scheduled:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick()
        await waiter

    async def close(self) -> None:
        """Commit what is buffered, compact if due, and release the file and the lock.

        A compaction that fails here loses nothing (every record is durable in the file it
        would have replaced): it is logged, and tried again by the next run."""
        try:
            if self._fd is not None and self._failure is None:
                await self.commit()
                if self._failure is None and self._due():
                    try:
                        self._compact()
                    except CheckpointWriteError as exc:
                        log.warning(
                            "checkpoint_compaction_failed", path=str(self.path), error=str(exc)
                        )
        finally:
            self._release()

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._owner is not None:
            self._owner.release()
            self._owner = None

    def _append(
        self,
        window: Window,
        state: WindowState,
        attempt: int | None,
        run_id: str | None,
        errors: list[dict[str, str]] | None,
        mode: str | None,
        *,
        durable: bool,
        retrying: bool | None = None,
        counts: RecordCounts | None = None,
    ) -> asyncio.Future[None] | None:
        if self._failure is not None:
            raise self._failure
        if self._fd is None:
            raise RuntimeError("the checkpoint is open read-only or closed")
        flow = self._flow_index[window.flow_id]
        start = window.start
        key = (flow << _SHIFT) | start
        index = self._index
        value = index.windows.get(key)
        new = _STATE_AT[state]
        old = 0 if value is None else _state_of(value)
        if (old << 3) | new not in _LEGAL:
            check_transition(_STATES[old], state)  # raises: say which move, in words
        tally = self._counts
        if value is None:
            tally[_PENDING_STATE] += 1
        tally[_STATES[old]] -= 1
        tally[state] += 1
        record: dict[str, Any] = {"t": "w", "f": flow, "s": start, "st": _VALUES[new]}
        if attempt is not None:
            record["a"] = attempt
        if run_id is not None:
            record["id"] = run_id
        if errors:
            record["err"] = errors
        if retrying is not None:
            record["n"] = int(retrying)
        if counts is not None:
            record["rc"] = counts.to_list()
        since = None
        if new == _SUBMITTING:
            record["ts"] = since = round(self._wall(), 3)
            if mode:
                record["m"] = mode
        held = index.records
        earlier = held.get(key) if held else None
        if errors or retrying is not None or counts is not None:
            index.apply(key, record, new)
        else:  # the common moves: the same effect, read from the arguments
            index.move(key, new, attempt, run_id, since, mode == "re-trigger")
        later = held.get(key) if held else None
        if later is not earlier:
            if earlier is not None:
                self._add_records(earlier, -1)
            if later is not None:
                self._add_records(later, 1)
        self._buffer.append(orjson.dumps(record) + b"\n")
        self.records += 1
        if not durable:
            # Rides the next commit (the next durable record's), or the lazy flush at the
            # latest: no write, fsync and wake-up of its own.
            if not self._lazy:
                self._lazy = True
                asyncio.get_running_loop().call_later(_LAZY_FLUSH, self._flush_lazily)
            return None
        # A future of its own (one shared by a batch would be cancelled with any task waiting).
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick()
        return waiter

    def _flush_lazily(self) -> None:
        """Records made without waiting, and no commit since: write them now."""
        self._lazy = False
        if self._buffer and self._fd is not None and self._failure is None:
            self._kick()

    def _kick(self) -> None:
        if not self._scheduled and not self._writing:
            self._scheduled = True
            # After every callback ready now: each task that is ready adds its record first,
            # and one write and one fsync serve them all.
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        """Hand what is buffered to the writer thread; its waiters wake once it is on disk.

        Per commit the event loop wakes once (the writer's ``call_soon_threadsafe``); there
        is no flusher task, no executor future and no extra turn of the loop in between.
        """
        self._scheduled = False
        if self._writing or self._failure is not None:
            return
        if self._group_commit:
            lines, self._buffer = self._buffer, []
            waiters, self._waiters = self._waiters, []
        else:  # one fsync per record: only for the benchmark's comparison
            lines, self._buffer = self._buffer[:1], self._buffer[1:]
            waiters, self._waiters = self._waiters[:1], self._waiters[1:]
        if not lines:  # a commit with nothing new: what it waited for is on disk
            self._wake(waiters)
            if self._buffer or self._waiters:
                self._kick()
            return
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._writer = _Writer(self._write_sync)
        self._writing = True

        def written(error: OSError | None) -> None:  # in the writer thread
            loop.call_soon_threadsafe(self._written, waiters, error)

        self._writer.submit(b"".join(lines), written)

    def _written(self, waiters: list[asyncio.Future[None]], error: OSError | None) -> None:
        self._writing = False
        if error is not None:
            self._failure = _write_error(self.path, error)
            log.error("checkpoint_write_failed", path=str(self.path), error=str(error))
            for waiter in (*waiters, *self._waiters):
                if not waiter.done():
                    waiter.set_exception(self._failure)
            self._waiters = []
            self._buffer = []
            return
        self._wake(waiters)
        if self._buffer or self._waiters:
            self._start()  # what came in during the write goes at once

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _write_sync(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise OSError("checkpoint closed")
        if self._owner is not None:
            self._owner.watch(fd)  # removed, replaced or truncated under us: not one byte more
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self._durable:
            os.fsync(fd)
        self.syncs += 1
        if self._owner is not None:
            self._owner.wrote(data)

    def _write_now(self, record: dict[str, Any]) -> None:
        """Synchronous append, only while opening (before any task writes)."""
        try:
            self._write_sync(orjson.dumps(record) + b"\n")
        except OSError as exc:
            raise _write_error(self.path, exc) from exc

    # ---------------------------------------------------------------- compaction

    def _due(self) -> bool:
        """Whether compaction is due: enough moves appended since the file was written whole,
        and the file may be replaced (an owner, no hard link to it)."""
        moves = self._moves + self.records - self._compacted_at
        return moves > _COMPACT_SLACK and self._owner is not None and self._owner.replaceable()

    def _compact(self) -> None:
        """Rewrite the file as header + columns (+ a snapshot per window with more to say),
        atomically: written beside it, fsynced, locked, renamed over it, directory fsynced."""
        # Beside the file itself, not a symlink to it: the link keeps leading to the checkpoint.
        target = Path(os.path.realpath(self.path))
        tmp = target.with_name(f".{target.name}.compact")
        owner = self._owner
        assert owner is not None, "only an owner compacts"
        generation = owner.generation or uuid.uuid4().hex
        header = _plan_record(self.plan, None) | {
            "created": int(self._wall()),
            "compacted": True,
            "gen": generation,
            "seq": owner.sequence,
        }
        lock = None
        try:
            with open(tmp, "wb") as out:
                os.fchmod(out.fileno(), 0o600)
                out.write(orjson.dumps(header) + b"\n")
                for line in _dense_lines(self._index):
                    out.write(line)
                    _step("writing")
                out.flush()
                _step("written")
                os.fsync(out.fileno())
            _step("synced")
            # Locked before it takes the name: no moment when the path names an unlocked file.
            lock = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            lock_new_file(lock)
            _step("locked")
            os.replace(tmp, target)
            _step("replaced")
            _fsync_dir(target.parent)
            _step("dir-synced")
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if lock is not None:
                os.close(lock)
            raise CheckpointWriteError(str(self.path), exc) from exc
        except BaseException:  # a crash (in tests, injected): the process would drop its locks
            if lock is not None:
                os.close(lock)
            raise
        owner.replaced(lock)
        owner.claim(generation, owner.sequence)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = _open_append(self.path)
        self._moves, self._compacted_at = 0, self.records
        log.info("checkpoint_compacted", path=str(self.path), windows=len(self))


def _step(name: str) -> None:
    """A point between two steps of compaction: tests make a crash happen at each one."""


def _dense_lines(index: _Index) -> Iterator[bytes]:
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
            width = len(value) - _WORD
            if not 0 < width <= _MAX_RUN_ID or not value[:-_WORD].isascii():
                extra.add(key)  # an empty, long or non-ASCII run id: kept as a snapshot
                continue
        group = groups.get((key >> _SHIFT, width))
        if group is None:
            group = groups[key >> _SHIFT, width] = []
        group.append(key)
    windows = index.windows
    mask = (1 << _SHIFT) - 1
    for (flow, width), keys in groups.items():
        keys.sort()
        for first in range(0, len(keys), _COLUMN_WINDOWS):
            chunk = keys[first : first + _COLUMN_WINDOWS]
            starts = [key & mask for key in chunk]
            deltas = array("q", [starts[0]])
            deltas.extend(map(operator.sub, itertools.islice(starts, 1, None), starts))
            values = [windows[key] for key in chunk]
            record: dict[str, Any] = {"t": "cols", "f": flow, "w": width, "n": len(chunk)}
            record["s"] = _pack(deltas.tobytes())
            if width:
                runs = cast("list[bytes]", values)
                record["ids"] = _pack(b"".join([value[:-_WORD] for value in runs]))
                record["a"] = _pack(b"".join([value[-_WORD:] for value in runs]))
            else:
                words = array("Q", cast("list[int]", values))
                if sys.byteorder == "little":
                    words.byteswap()
                record["a"] = _pack(words.tobytes())
            yield orjson.dumps(record) + b"\n"
    for key in extra:
        entry = index.entry(key)
        if entry is not None:
            yield orjson.dumps(_snapshot(key, entry)) + b"\n"


class _Writer:
    """One thread that writes and fsyncs batches, so the event loop never waits on the disk."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._queue: queue.SimpleQueue[tuple[bytes, Callable[[OSError | None], None]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="backfill-journal", daemon=True)
        self._thread.start()

    def submit(self, data: bytes, done: Callable[[OSError | None], None]) -> None:
        self._queue.put((data, done))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            data, done = item
            error: OSError | None = None
            try:
                self._write(data)
            except OSError as exc:
                error = exc
            try:
                done(error)
            except RuntimeError:  # the event loop is closed: nobody waits any more
                return


class _Scan:
    """One pass over an existing checkpoint file."""

    def __init__(self) -> None:
        self.header: dict[str, Any] | None = None
        self.plan: Plan
        self.index = _Index()
        self.lines = 0
        self.snapshots = 0  # "snap" and "cols" lines: what a compaction wrote
        self.good_bytes = 0
        self.torn_bytes = 0
        # Recorded windows by state position, counted as they move (a window's first record
        # takes one from position 0): no pass over the index afterwards.
        self.tally = [0] * len(_STATES)

    @property
    def moves(self) -> int:
        """Lines appended since the file was written whole (by creation or compaction)."""
        return self.lines - 1 - self.snapshots

    def counts(self) -> dict[WindowState, int]:
        """Recorded windows by state (a window recorded is no longer counted as pending)."""
        tally = self.tally
        found = {state: tally[i] for i, state in enumerate(_STATES)}
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
    def read(cls, path: Path) -> _Scan:
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
            raise CheckpointCorrupt(str(path), 1, _describe(exc)) from None
        lines, good = 1, len(first)
        while chunk := handle.readlines(_CHUNK):
            if not chunk[-1].endswith(b"\n"):
                # Only the file's last line can lack its newline: a crash mid-write, dropped.
                self.torn_bytes = len(chunk.pop())
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
            raise CheckpointCorrupt(str(path), number, _describe(exc)) from None

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
        positions = _INDEX_OF
        legal = _LEGAL
        flows = len(self.plan.flows)
        number = before
        try:
            for number, record in enumerate(records, before + 1):  # noqa: B007 - in the error
                if record["t"] == "w":  # the hot path: a window's move
                    flow = record["f"]
                    start = record["s"]
                    if not (0 <= flow < flows and type(start) is int):
                        raise ValueError(f"window {flow}/{start} is not in the plan")  # noqa: TRY301
                    key = (flow << _SHIFT) | start
                    old = windows.get(key, 0)
                    new = positions[record["st"]]
                    was = (old if isinstance(old, int) else old[-1]) & _STATE_BITS
                    if (was << 3) | new not in legal:
                        raise IllegalTransition(  # noqa: TRY301 - reported with its line below
                            f"a window cannot go from {_STATES[was]} to {_STATES[new]}"
                        )
                    tally[was] -= 1
                    tally[new] += 1
                    # The two records of nearly every window, applied inline (what `apply` does
                    # for them, without a call and its lookups): an intent, then its run id.
                    attempt = record.get("a")
                    if len(record) == 6 and type(attempt) is int and type(old) is int:
                        if new == _SUBMITTING:
                            since_at = record.get("ts")
                            if since_at is not None:  # {t f s st a ts}, no run yet
                                windows[key] = (attempt << _ATTEMPT_SHIFT) | (old & _RETRYING) | new
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
                                    (attempt << _ATTEMPT_SHIFT) | (old & _RETRYING) | new
                                )
                                if candidates:
                                    candidates.pop(key, None)
                                if since:
                                    since.pop(key, None)
                                if errors and new != _FAILED:
                                    errors.pop(key, None)
                                if flow not in run_flows:
                                    run_flows.add(flow)
                                continue
                    apply(key, record, new)
                else:
                    self._other(record)
                    flows = len(self.plan.flows)
        except (ValueError, KeyError, TypeError, IndexError, IllegalTransition) as exc:
            # A crash can only tear the last line short of its newline. A complete line that
            # does not read, wherever it is, was damaged after it was written: it may be a
            # durable record, so nothing is dropped.
            raise CheckpointCorrupt(str(path), number, _describe(exc)) from None

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
        self.header = record

    def _columns(self, record: dict[str, Any]) -> None:
        """A "cols" record: up to 65,536 windows of one flow, parsed in bulk (see `_columns`)."""
        if self.header is None or self.header.get("format") == 1:
            raise ValueError("a cols record in a format-1 checkpoint")
        flow, width, count = record["f"], record["w"], record["n"]
        if not (type(flow) is int and 0 <= flow < len(self.plan.flows)):
            raise ValueError(f"flow {flow} is not in the plan")
        if not (type(count) is int and 0 < count <= _COLUMN_WINDOWS):
            raise ValueError(f"a cols record of {count!r} windows")
        if not (type(width) is int and 0 <= width <= _MAX_RUN_ID):
            raise ValueError(f"a cols record of run ids {width!r} bytes long")
        deltas = array("q", _unpack(record["s"], count * 8))
        words = _unpack(record["a"], count * _WORD)  # the packed words, big-endian
        if deltas[0] < 0 or (count > 1 and min(itertools.islice(deltas, 1, None)) <= 0):
            raise ValueError("a cols record's window starts are not increasing")
        if sum(deltas) >= 1 << _SHIFT:
            raise ValueError("a cols record's window start is past the year 2100")
        keys = itertools.islice(itertools.accumulate(deltas, initial=flow << _SHIFT), 1, None)
        values: Iterable[Value]
        if width:
            ids = _unpack(record["ids"], count * width)
            if not ids.isascii():
                raise ValueError("a cols record's run ids are not ASCII")
            # Interleaved in C (one strided copy per byte column), then cut in one pass.
            size = width + _WORD
            blob = bytearray(count * size)
            for column in range(width):
                blob[column::size] = ids[column::width]
            for column in range(_WORD):
                blob[width + column :: size] = words[column::_WORD]
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
        states = words[_WORD - 1 :: _WORD].translate(_LOW_BITS)  # each word's state, in C
        for position in set(states):
            tally[position] += states.count(position)

    def _other(self, record: dict[str, Any]) -> None:
        """Records other than a window's move: snapshots (compaction) and plan extensions."""
        kind = record["t"]
        if kind == "snap":
            flow = record["f"]
            start = record["s"]
            if not (0 <= flow < len(self.plan.flows) and type(start) is int):
                raise ValueError(f"window {flow}/{start} is not in the plan")
            key = (flow << _SHIFT) | start
            new = _INDEX_OF[record["st"]]
            self.tally[_state_of(self.index.windows.get(key, 0))] -= 1
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
            key = (flow << _SHIFT) | start if type(start) is int and type(flow) is int else -1
            if key not in self.index.windows:
                raise ValueError(f"a note for window {flow}/{start}, which has no record")
            self.index.note(key, record)
        elif kind == "plan":
            plan = Plan.from_json(record["plan"])
            if plan.fingerprint() != record.get("fingerprint"):
                raise ValueError("a plan record's fingerprint does not match its plan")
            self.plan = plan
        else:
            raise ValueError(f"unknown record type {kind!r}")


def _snapshot(key: int, entry: Entry) -> dict[str, Any]:
    record: dict[str, Any] = {
        "t": "snap",
        "f": key >> _SHIFT,
        "s": key & ((1 << _SHIFT) - 1),
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


def _plan_record(plan: Plan, kind: str | None) -> dict[str, Any]:
    head: dict[str, Any] = {"t": kind} if kind else {"kind": KIND, "format": FORMAT}
    return head | {"fingerprint": plan.fingerprint(), "plan": plan.to_json()}


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    """The error a failed write is reported as (the watch's own says what happened)."""
    return exc.lost if isinstance(exc, Pulled) else CheckpointWriteError(str(path), exc)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"a record lacks the field {exc}"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Holder:
    """The process that holds a checkpoint's lock, as its lock file names it."""

    pid: int
    host: str
    since: float

    @property
    def here(self) -> bool:
        """Whether it runs on this host (so whether it still runs can be checked)."""
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """True/False on this host; None when it runs elsewhere and cannot be checked."""
        if not self.here:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def holder(path: Path) -> Holder | None:
    """Who holds the checkpoint's lock, if anyone: a lock file left by a crash on this host
    names a process that no longer exists, and counts as no holder."""
    try:
        raw = sidecar_path(path).read_bytes()
    except OSError:
        return None
    found = _parse_holder(raw)
    if found is None or found.alive() is False:
        return None
    return found


def _parse_holder(raw: bytes) -> Holder | None:
    """The sidecar's holder, if it names one (between runs it keeps only gen and seq)."""
    text = raw.strip()
    if text.isdigit():  # the first format: the pid alone
        return Holder(int(text), socket.gethostname(), 0.0)
    try:
        data = orjson.loads(text)
        return Holder(int(data["pid"]), str(data["host"]), float(data["since"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _open_append(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointWriteError(str(path), exc) from exc


def _truncate(path: Path, size: int) -> None:
    """Drop a torn tail (a crash mid-write), so the next append starts on a fresh line."""
    try:
        os.truncate(path, size)
    except OSError as exc:
        raise CheckpointWriteError(str(path), exc) from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
