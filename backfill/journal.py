"""The checkpoint's only owner: lock, replay, append with group commit, compaction.

Every record is applied to the in-memory index (index.py) at once and written, in order, by
one writer thread: ``record`` returns once it is durable, and every task waiting at that
moment shares one ``fsync`` (group commit); ``record_nowait`` returns at once and starts no
write of its own: the record is durable with the next commit, or with the lazy flush that
follows it within ``_LAZY_FLUSH`` seconds. What the file holds, and how it is read back, is
journal_file.py's.

Compaction (at open and at close, once more than 10,000 moves were appended since the file
was last written whole) rewrites it atomically as header, "cols" records and "snap" records.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from .errors import (
    CheckpointMissing,
    CheckpointWriteError,
    PlanMismatch,
)
from .index import (
    EMPTY,
    FAILED,
    LEGAL,
    PENDING_STATE,
    SHIFT,
    STATE_AT,
    STATE_BITS,
    STATES,
    SUBMITTING,
    VALUES,
    Entry,
    Index,
    state_of,
    window_key,
)
from .journal_file import Scan, dense_lines, plan_record
from .owner import Owner, Pulled, check_kind, lock_new_file, sidecar_path
from .planner import Plan, Window
from .state import RecordCounts, WindowState, check_transition

__all__ = ["Entry", "Holder", "Journal", "Replay", "holder"]

_COMPACT_SLACK = 10_000  # moves appended since the last compaction before the next is due
# A record made without waiting (``record_nowait``) is written by the next commit, or at the
# latest this many seconds after it was made.
_LAZY_FLUSH = 1.0

log = structlog.get_logger("backfill.journal")


@dataclass(frozen=True, slots=True)
class Replay:
    """What opening a checkpoint found, for the log and the status display."""

    records: int
    torn_bytes: int
    compacted: bool
    created: bool
    extended: bool


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
        self._index = Index()
        self._counts = dict.fromkeys(WindowState, 0)  # recorded windows by state
        self._records = [0, 0, 0]  # input, output, failed records of every window's last run
        self._flow_index = {flow.flow_id: i for i, flow in enumerate(plan.flows)}
        self._buffer: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False  # a commit starts on the loop's next turn (call_soon)
        self._commit_by: float | None = None  # when the next commit must start (loop time)
        self._gathering: asyncio.TimerHandle | None = None  # its start, while it gathers
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
        scan = Scan.read(path) if path.exists() else None
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
        scan: Scan,
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
                journal._write_now(plan_record(plan, "plan"))
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
        header = plan_record(plan, None) | {"created": int(wall()), "gen": generation, "seq": 0}
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
        return self._index.entry(window_key(self._flow_index[window.flow_id], window.start))

    def state(self, window: Window) -> WindowState:
        value = self._index.windows.get(
            window_key(self._flow_index[window.flow_id], window.start), 0
        )
        return STATES[state_of(value)]

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
        wanted = None if states is None else {STATE_AT[state] for state in states}
        if states is not None and not any(self._counts[state] for state in states):
            return  # none in those states: no pass over the index
        index = self._index
        flows = self.plan.flows
        mask = (1 << SHIFT) - 1
        duplicates, candidates = index.duplicates, index.candidates
        if noted and not duplicates and not candidates:
            return
        for key, value in index.windows.items():
            if wanted is not None and state_of(value) not in wanted:
                continue
            if noted and key not in duplicates and key not in candidates:
                continue
            window = flows[key >> SHIFT].window_at(key & mask)
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
            value = get((flow_index[window.flow_id] << SHIFT) | window.start, 0)
            bits = (value if isinstance(value, int) else value[-1]) & STATE_BITS
            if bits in (0, FAILED) or (empty and bits == EMPTY):  # pending (0) or failed
                yield window

    def flow_counts(self, flow_id: str) -> dict[WindowState, int]:
        """``counts()`` of one flow (one pass over the index when the plan has several)."""
        if len(self.plan.flows) == 1:
            return self.counts()
        flow = self._flow_index[flow_id]
        found = Counter(
            state_of(value) for key, value in self._index.windows.items() if key >> SHIFT == flow
        )
        counts = {state: found.get(i, 0) for i, state in enumerate(STATES)}
        counts[WindowState.PENDING] += self.plan.flows[flow].count(self.plan.shard) - sum(
            found.values()
        )
        return counts

    def recorded(self) -> Counter[str]:
        """Windows the journal has a record of, by flow id (no window or entry is built)."""
        flows = self.plan.flows
        if len(flows) == 1:
            return Counter({flows[0].flow_id: len(self._index.windows)})
        found = Counter(map(SHIFT.__rrshift__, self._index.windows))
        return Counter({flows[i].flow_id: n for i, n in found.items() if i < len(flows)})

    def key_of(self, window: Window) -> int:
        """The window's key in the index: one int, for callers that keep many windows."""
        return window_key(self._flow_index[window.flow_id], window.start)

    def window_of(self, key: int) -> Window | None:
        """The planned window of a key from ``key_of``."""
        return self.plan.flows[key >> SHIFT].window_at(key & ((1 << SHIFT) - 1))

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
        gather: float = 0.0,
    ) -> None:
        """Apply a move and return once it (and everything before it) is durable.

        ``gather``: how long the caller can spare before the record must be durable; its
        commit waits up to that long for more records to share one write and one fsync.
        """
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
            gather=gather,
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
        key = window_key(flow, window.start)
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
        gather: float = 0.0,
    ) -> asyncio.Future[None] | None:
        if self._failure is not None:
            raise self._failure
        if self._fd is None:
            raise RuntimeError("the checkpoint is open read-only or closed")
        flow = self._flow_index[window.flow_id]
        start = window.start
        key = (flow << SHIFT) | start
        index = self._index
        value = index.windows.get(key)
        new = STATE_AT[state]
        old = 0 if value is None else state_of(value)
        if (old << 3) | new not in LEGAL:
            check_transition(STATES[old], state)  # raises: say which move, in words
        tally = self._counts
        if value is None:
            tally[PENDING_STATE] += 1
        tally[STATES[old]] -= 1
        tally[state] += 1
        record: dict[str, Any] = {"t": "w", "f": flow, "s": start, "st": VALUES[new]}
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
        if new == SUBMITTING:
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
        self._kick(gather)
        return waiter

    def _flush_lazily(self) -> None:
        """Records made without waiting, and no commit since: write them now."""
        self._lazy = False
        if self._buffer and self._fd is not None and self._failure is None:
            self._kick()

    def _kick(self, gather: float = 0.0) -> None:
        """Have a commit start, at once or within ``gather`` seconds, whichever a record
        waiting for it needs first.

        At once means after every callback ready now: each task that is ready adds its
        record first, and one write and one fsync serve them all. A record that can spare
        time (``record(gather=...)``: an intent made while every seat is busy, engine/
        submit.py) lets the commit wait for more: each commit costs the writer thread an
        fsync and the loop a wake-up, at thousands of windows a second a fifth of the CPU.
        The commit delay of databases (PostgreSQL's ``commit_delay``).
        """
        loop = asyncio.get_running_loop()
        due = loop.time() + gather if gather > 0 else -math.inf
        if self._commit_by is None or due < self._commit_by:
            self._commit_by = due
        if not self._writing:  # else _written starts the next commit, when it is due
            self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._commit_by
        if due is None or self._scheduled:
            return
        if due <= loop.time():
            if self._gathering is not None:  # wanted now: the gathering ends here
                self._gathering.cancel()
                self._gathering = None
            self._scheduled = True
            loop.call_soon(self._start)
        elif self._gathering is None or due < self._gathering.when():
            if self._gathering is not None:
                self._gathering.cancel()
            self._gathering = loop.call_at(due, self._start)

    def _start(self) -> None:
        """Hand what is buffered to the writer thread; its waiters wake once it is on disk.

        Per commit the event loop wakes once (the writer's ``call_soon_threadsafe``); there
        is no flusher task, no executor future and no extra turn of the loop in between.
        """
        self._scheduled = False
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        if self._writing or self._failure is not None:
            return
        if self._group_commit:
            lines, self._buffer = self._buffer, []
            waiters, self._waiters = self._waiters, []
        else:  # one fsync per record: only for the benchmark's comparison
            lines, self._buffer = self._buffer[:1], self._buffer[1:]
            waiters, self._waiters = self._waiters[:1], self._waiters[1:]
        # This commit takes what is buffered; what it leaves (one record a commit) goes next.
        self._commit_by = -math.inf if self._waiters else None
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
        # What came in during the write and is waited for (or was flushed lazily meanwhile)
        # goes when due; records nobody waits for ride the next commit or the lazy flush.
        self._schedule(asyncio.get_running_loop())

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
        header = plan_record(self.plan, None) | {
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
                for line in dense_lines(self._index):
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


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    """The error a failed write is reported as (the watch's own says what happened)."""
    return exc.lost if isinstance(exc, Pulled) else CheckpointWriteError(str(path), exc)


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
