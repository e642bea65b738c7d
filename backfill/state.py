"""The window state machine, and the run status vocabulary it is fed from.

    pending -> submitting (intent written) -> submitted (run id written)
            -> running -> succeeded
                       -> empty    (succeeded, 0 records ingested) [-> submitting: --retry-empty]
                       -> partial  (succeeded, some records failed)
                       -> failed -> submitting (next attempt) ... -> failed for good

``submitting`` with no run id is "in doubt": the request may or may not have reached the
service. Such a window is reconciled against the service's list of runs before any resend.

Run statuses come in two vocabularies: the words of public material (``scheduled``,
``inProgress``, ``success``, ``failed``: help/sources/tutorials/api/monitor.md, AdobeDocs/
experience-platform.en) and the spec's ``StatusDTO`` enum (``SCHEDULED``, ``QUEUED``,
``IN_PROGRESS``, ``SUCCESS``, ``COMPLETED``, ``PARTIAL_SUCCESS``, ``FAILED``,
``PARTIAL_FAILURE``: static/swagger-specs/flow-service.yaml, AdobeDocs/experience-platform-apis).
Both are read case-insensitively, with or without underscores.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BY_VALUE",
    "LABELS",
    "MEANINGS",
    "MOVES",
    "TIMED_OUT",
    "IllegalTransition",
    "RecordCounts",
    "RunStatus",
    "WindowState",
    "check_transition",
    "outcome",
]

# The error code a window failed for good by --run-timeout carries: it is not re-run on its own.
TIMED_OUT = "BACKFILL-TIMED-OUT"


class WindowState(StrEnum):
    """Where a window is; stored by value in the checkpoint."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    EMPTY = "empty"  # succeeded, and ingested no record
    PARTIAL = "partial"  # succeeded, and some records failed
    FAILED = "failed"

    @property
    def accepted(self) -> bool:
        """The service accepted a run for this window (it may still be running or failed)."""
        return self in _ACCEPTED

    @property
    def finished(self) -> bool:
        """The run ended (whatever its outcome)."""
        return self in _FINISHED

    @property
    def active(self) -> bool:
        """A run is scheduled or in progress (as far as we last heard)."""
        return self in (WindowState.SUBMITTED, WindowState.RUNNING)


# The one vocabulary of window states: every view (status, status --json, the live display,
# the summary, the report, the README) uses these words, which are also the values stored in
# the checkpoint and printed by ``status --json``. A view that needs a qualifier adds it
# ("submitting, answer lost") rather than renaming the state.
LABELS: dict[WindowState, str] = {state: state.value for state in WindowState}

MEANINGS: dict[WindowState, str] = {
    WindowState.PENDING: "no run requested yet",
    WindowState.SUBMITTING: (
        "the request to create (or re-trigger) its run is recorded and being sent; if the "
        "process stopped before the answer came, the answer is lost and the next run looks "
        "the window up at the service before sending anything again"
    ),
    WindowState.SUBMITTED: "the service accepted a run (scheduled)",
    WindowState.RUNNING: "its run is in progress",
    WindowState.SUCCEEDED: "its run succeeded",
    WindowState.EMPTY: (
        "its run succeeded and ingested no record (--retry-empty or `retry --empty` re-triggers it)"
    ),
    WindowState.PARTIAL: "its run succeeded, and some of its records failed",
    WindowState.FAILED: (
        "its latest run failed: waiting for its next attempt, or failed for good once its "
        "attempts are used up"
    ),
}

_FINISHED = frozenset(
    {WindowState.SUCCEEDED, WindowState.EMPTY, WindowState.PARTIAL, WindowState.FAILED}
)
_ACCEPTED = _FINISHED | {WindowState.SUBMITTED, WindowState.RUNNING}
_ENDS = frozenset(_FINISHED)

MOVES: dict[WindowState, frozenset[WindowState]] = {
    WindowState.PENDING: frozenset({WindowState.SUBMITTING}),
    # An intent ends with a run id, or -- when the request provably did not create a run
    # (refused before it was processed, or reconciliation found none) -- back where it was.
    WindowState.SUBMITTING: frozenset(
        {WindowState.SUBMITTED, WindowState.PENDING, WindowState.RUNNING, *_ENDS}
    ),
    WindowState.SUBMITTED: frozenset({WindowState.RUNNING, *_ENDS}),
    WindowState.RUNNING: _ENDS,
    WindowState.FAILED: frozenset({WindowState.SUBMITTING}),
    # Adobe allows re-triggering a successful run that ingested nothing (retry-flows.md).
    WindowState.EMPTY: frozenset({WindowState.SUBMITTING}),
    WindowState.SUCCEEDED: frozenset(),
    WindowState.PARTIAL: frozenset(),
}


# Value -> state by a dict lookup: a replay of millions of records cannot afford Enum's call.
BY_VALUE = {state.value: state for state in WindowState}


class IllegalTransition(ValueError):
    """A move the state machine does not allow: a bug, or a checkpoint edited by hand."""


def check_transition(old: WindowState, new: WindowState) -> None:
    if new not in MOVES[old]:
        raise IllegalTransition(f"a window cannot go from {old} to {new}")


class RunStatus(StrEnum):
    """A run's status as the Flow Service reports it, normalised."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "inProgress"
    SUCCESS = "success"
    PARTIAL_SUCCESS = "partialSuccess"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: str | None) -> RunStatus:
        """Case-insensitive, with or without ``_``; anything else is UNKNOWN (not finished)."""
        key = (text or "").lower().replace("_", "").replace("-", "").replace(" ", "")
        return _STATUS_WORDS.get(key, cls.UNKNOWN)

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED)

    def window_state(self, counts: RecordCounts | None = None) -> WindowState:
        """The window's state for a run in this status that reported these record counts."""
        if self is RunStatus.SUCCESS or self is RunStatus.PARTIAL_SUCCESS:
            return outcome(self, counts)
        if self is RunStatus.FAILED:
            return WindowState.FAILED
        if self is RunStatus.IN_PROGRESS:
            return WindowState.RUNNING
        return WindowState.SUBMITTED


# Every word of both vocabularies, normalised (lower case, no underscores). A run that ingested
# with record errors is still "success" with failedRecordCount > 0 (monitor.md); the spec adds
# PARTIAL_SUCCESS and PARTIAL_FAILURE; "cancelled" (either spelling) ends a run without data.
_STATUS_WORDS: dict[str, RunStatus] = {
    **dict.fromkeys(("scheduled", "queued", "pending"), RunStatus.SCHEDULED),
    **dict.fromkeys(("inprogress", "running"), RunStatus.IN_PROGRESS),
    **dict.fromkeys(("success", "succeeded", "completed"), RunStatus.SUCCESS),
    "partialsuccess": RunStatus.PARTIAL_SUCCESS,
    **dict.fromkeys(
        ("failed", "failure", "partialfailure", "cancelled", "canceled"), RunStatus.FAILED
    ),
}


class RecordCounts:
    """``metrics.recordSummary`` (and ``fileSummary``) of a run; ``-1`` means unknown.

    The counts are documented in help/sources/tutorials/api/monitor.md (AdobeDocs/
    experience-platform.en): ``inputRecordCount``, ``outputRecordCount``, ``failedRecordCount``
    and the same for files. In the checkpoint they are one short list: ``[in, out, failed]``,
    followed by the three file counts when the run reported them.
    """

    __slots__ = ("failed", "files", "input", "output")

    def __init__(
        self, input: int, output: int, failed: int, files: tuple[int, int, int] | None = None
    ) -> None:
        self.input = input
        self.output = output
        self.failed = failed
        self.files = files  # input, output, failed files

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordCounts) and self.to_list() == other.to_list()

    def __hash__(self) -> int:
        return hash(tuple(self.to_list()))

    def __repr__(self) -> str:
        return f"RecordCounts{tuple(self.to_list())}"

    @property
    def known(self) -> bool:
        """Whether the service said how many records were ingested (not -1)."""
        return self.output >= 0

    def to_list(self) -> list[int]:
        head = [self.input, self.output, self.failed]
        return head + list(self.files) if self.files is not None else head

    @classmethod
    def from_list(cls, values: list[int]) -> RecordCounts:
        files = (values[3], values[4], values[5]) if len(values) >= 6 else None
        return cls(values[0], values[1], values[2], files)

    def as_dict(self) -> dict[str, int]:
        """As ``status --json`` and the report show it."""
        shown = {"input": self.input, "output": self.output, "failed": self.failed}
        if self.files is not None:
            shown |= {
                "files_input": self.files[0],
                "files_output": self.files[1],
                "files_failed": self.files[2],
            }
        return shown


def outcome(status: RunStatus, counts: RecordCounts | None) -> WindowState:
    """What a successful run amounts to: partial if records failed, empty if none landed.

    retry-flows.md (AdobeDocs/experience-platform.en) treats a successful run that ingested
    zero records as re-triggerable; monitor.md shows a "success" with ``failedRecordCount: 1``.
    Unknown counts (-1, or none reported) leave a success a success.
    """
    if status is RunStatus.PARTIAL_SUCCESS:
        return WindowState.PARTIAL
    if counts is not None:
        if counts.failed > 0:
            return WindowState.PARTIAL
        if counts.output == 0:
            return WindowState.EMPTY
    return WindowState.SUCCEEDED
