"""The window state machine: the states a window moves through, and the legal moves.

    pending -> submitting (intent written) -> submitted (run id written)
            -> running -> succeeded
                       -> failed -> submitting (next attempt) ... -> failed for good

``submitting`` with no run id is "in doubt": the request may or may not have reached the
service. Such a window is reconciled against the service's list of runs before any resend.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BY_VALUE",
    "LABELS",
    "MEANINGS",
    "MOVES",
    "IllegalTransition",
    "RunStatus",
    "WindowState",
    "check_transition",
]


class WindowState(StrEnum):
    """Where a window is; stored by value in the checkpoint."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def accepted(self) -> bool:
        """The service accepted a run for this window (it may still be running or failed)."""
        return self in _ACCEPTED

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
    WindowState.FAILED: (
        "its latest run failed: waiting for its next attempt, or failed for good once its "
        "attempts are used up"
    ),
}

_ACCEPTED = frozenset(
    {WindowState.SUBMITTED, WindowState.RUNNING, WindowState.SUCCEEDED, WindowState.FAILED}
)

MOVES: dict[WindowState, frozenset[WindowState]] = {
    WindowState.PENDING: frozenset({WindowState.SUBMITTING}),
    # An intent ends with a run id, or -- when the request provably did not create a run
    # (refused before it was processed, or reconciliation found none) -- back where it was.
    WindowState.SUBMITTING: frozenset(
        {
            WindowState.SUBMITTED,
            WindowState.PENDING,
            WindowState.FAILED,
            WindowState.RUNNING,
            WindowState.SUCCEEDED,
        }
    ),
    WindowState.SUBMITTED: frozenset(
        {WindowState.RUNNING, WindowState.SUCCEEDED, WindowState.FAILED}
    ),
    WindowState.RUNNING: frozenset({WindowState.SUCCEEDED, WindowState.FAILED}),
    WindowState.FAILED: frozenset({WindowState.SUBMITTING}),
    WindowState.SUCCEEDED: frozenset(),
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
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: str | None) -> RunStatus:
        """Case-insensitive; anything unrecognised is UNKNOWN (treated as not finished)."""
        return _STATUS_BY_LOWER.get((text or "").lower(), cls.UNKNOWN)

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCESS, RunStatus.FAILED)

    def window_state(self) -> WindowState:
        if self is RunStatus.SUCCESS:
            return WindowState.SUCCEEDED
        if self is RunStatus.FAILED:
            return WindowState.FAILED
        if self is RunStatus.IN_PROGRESS:
            return WindowState.RUNNING
        return WindowState.SUBMITTED


_STATUS_BY_LOWER = {status.value.lower(): status for status in RunStatus}
