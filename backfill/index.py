"""What the checkpoint knows of every window, in memory: the journal's index.

The journal (journal.py) is its only writer: every record it makes is applied here at once,
and a file read back (journal_file.py) is applied here record by record or, for compacted
columns, in bulk. Nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .state import MOVES, RecordCounts, WindowState

__all__ = ["Entry", "Index", "Value", "window_key"]

SHIFT = 33  # window starts are < 2**33 (the planner refuses times past 2100)


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
STATES = tuple(WindowState)
STATE_AT = {state: i for i, state in enumerate(STATES)}
VALUES = tuple(state.value for state in STATES)
PENDING_STATE = WindowState.PENDING
INDEX_OF = {state.value: i for i, state in enumerate(STATES)}
SUBMITTING = STATE_AT[WindowState.SUBMITTING]
FAILED = STATE_AT[WindowState.FAILED]
EMPTY = STATE_AT[WindowState.EMPTY]
STATE_BITS = 7
RETRIGGER = 8
RETRYING = 16
ATTEMPT_SHIFT = 5
WORD = 8  # bytes of the packed int after a run id
LOW_BITS = bytes(i & STATE_BITS for i in range(256))  # a word's last byte -> its state
MAX_RUN_ID = 1024  # bytes of a run id kept in columns (a longer one goes in a "snap" record)
LEGAL = frozenset(
    (STATE_AT[old] << 3) | STATE_AT[new] for old, targets in MOVES.items() for new in targets
)
if STATE_AT[WindowState.PENDING] != 0:  # pragma: no cover - a layout fact, checked on import
    raise RuntimeError("an absent window (packed 0) must read as pending")

Value = int | bytes


def word_of(value: Value) -> int:
    """The packed state, attempt and flag of a value."""
    return value if isinstance(value, int) else int.from_bytes(value[-WORD:])


def state_of(value: Value) -> int:
    """The state's position alone: the low bits of the int, or of the last byte."""
    return (value if isinstance(value, int) else value[-1]) & STATE_BITS


class Index:
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
            known = self.suffixes[word] = word.to_bytes(WORD)
        return known

    def apply(self, key: int, record: dict[str, Any], new: int) -> None:
        """One record's effect (``new`` is the state's position; the move was checked)."""
        get = record.get
        value = self.windows.get(key, 0)
        attempt = get("a")
        if attempt is None:
            attempt = word_of(value) >> ATTEMPT_SHIFT
        if attempt >= 1 << 59:
            raise ValueError(f"attempt {attempt} is not a number of attempts")
        word = (attempt << ATTEMPT_SHIFT) | new
        retrying = get("n")
        if retrying is None:
            word |= word_of(value) & RETRYING
        elif retrying:
            word |= RETRYING
        if self.candidates:  # a move settles the doubt they kept open
            self.candidates.pop(key, None)
        if new == SUBMITTING:
            since = get("ts")
            if since is not None:
                self.since[key] = since
            if get("m") == "re-trigger":
                word |= RETRIGGER
        elif self.since:
            self.since.pop(key, None)
        counts = get("rc")
        if counts is not None:
            self.records[key] = counts
        elif new == SUBMITTING and self.records:
            self.records.pop(key, None)  # a new attempt: the earlier run's counts are not its
        errors = get("err")
        if errors is not None:
            self.errors[key] = errors
        elif new != FAILED and self.errors:
            self.errors.pop(key, None)
        old = get("old")  # snapshots only
        if old is not None:
            self.old_runs[key] = tuple(old)
        run = value[:-WORD] if isinstance(value, bytes) else None
        run_id = get("id")
        if run_id is not None:
            given = run_id.encode()
            if run is not None and run != given:
                self.old_runs[key] = (*self.old_runs.get(key, ()), run.decode())
            elif run is None:
                self.run_flows.add(key >> SHIFT)
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
            before, run = int.from_bytes(value[-WORD:]), value[:-WORD]
        if attempt is None:
            attempt = before >> ATTEMPT_SHIFT
        if attempt >= 1 << 59:
            raise ValueError(f"attempt {attempt} is not a number of attempts")
        word = (attempt << ATTEMPT_SHIFT) | new | (before & RETRYING)
        if self.candidates:  # a move settles the doubt they kept open
            self.candidates.pop(key, None)
        if new == SUBMITTING:
            if since is not None:
                self.since[key] = since
            if retrigger:
                word |= RETRIGGER
            if self.records:
                self.records.pop(key, None)  # a new attempt: the earlier run's counts are not its
        elif self.since:
            self.since.pop(key, None)
        if new != FAILED and self.errors:
            self.errors.pop(key, None)
        if run_id is not None:
            given = run_id.encode()
            if run is not None and run != given:
                self.old_runs[key] = (*self.old_runs.get(key, ()), run.decode())
            elif run is None:
                self.run_flows.add(key >> SHIFT)
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
        word = word_of(value)
        entry = Entry()
        entry.state = STATES[word & STATE_BITS]
        entry.attempt = word >> ATTEMPT_SHIFT
        entry.retrigger = bool(word & RETRIGGER)
        entry.retrying = bool(word & RETRYING)
        if self.duplicates:
            entry.duplicates = self.duplicates.get(key, ())
        if self.candidates:
            entry.candidates = self.candidates.get(key, ())
        if isinstance(value, bytes):
            entry.run_id = value[:-WORD].decode()
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
        found = Counter(map(state_of, self.windows.values()))
        return {state: found.get(i, 0) for i, state in enumerate(STATES)}

    def record_totals(self) -> list[int]:
        """Known (not -1) input, output and failed records, summed over the windows."""
        totals = [0, 0, 0]
        for counts in self.records.values():
            for i, value in enumerate(counts[:3]):
                if value > 0:
                    totals[i] += value
        return totals


def window_key(flow_index: int, start: int) -> int:
    return (flow_index << SHIFT) | start
