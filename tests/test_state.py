"""The status vocabulary and the outcome of a finished run (issue 13)."""

from __future__ import annotations

import pytest

from backfill.state import RecordCounts, RunStatus, WindowState, outcome

WORDS: dict[RunStatus, list[str | None]] = {
    RunStatus.SUCCESS: ["success", "SUCCESS", "Success", "completed", "COMPLETED", "succeeded"],
    RunStatus.PARTIAL_SUCCESS: ["partialSuccess", "PARTIAL_SUCCESS", "partial_success"],
    RunStatus.FAILED: [
        "failed",
        "Failed",
        "FAILED",
        "partialFailure",
        "PARTIAL_FAILURE",
        "cancelled",
        "canceled",
        "CANCELLED",
    ],
    RunStatus.SCHEDULED: ["scheduled", "SCHEDULED", "queued", "QUEUED", "pending", "PENDING"],
    RunStatus.IN_PROGRESS: ["inProgress", "IN_PROGRESS", "in_progress", "running", "RUNNING"],
    RunStatus.UNKNOWN: ["", "paused", "weird", None],
}


@pytest.mark.parametrize(
    ("status", "word"), [(status, word) for status, words in WORDS.items() for word in words]
)
def test_every_status_word_of_both_vocabularies(status: RunStatus, word: str | None) -> None:
    assert RunStatus.parse(word) is status


@pytest.mark.parametrize(
    ("status", "counts", "state"),
    [
        (RunStatus.SUCCESS, RecordCounts(10, 10, 0), WindowState.SUCCEEDED),
        (RunStatus.SUCCESS, RecordCounts(0, 0, 0), WindowState.EMPTY),
        (RunStatus.SUCCESS, RecordCounts(10, 9, 1), WindowState.PARTIAL),
        (RunStatus.SUCCESS, RecordCounts(3, 0, 3), WindowState.PARTIAL),
        (RunStatus.SUCCESS, RecordCounts(-1, -1, -1), WindowState.SUCCEEDED),
        (RunStatus.SUCCESS, None, WindowState.SUCCEEDED),
        (RunStatus.PARTIAL_SUCCESS, None, WindowState.PARTIAL),
        (RunStatus.FAILED, RecordCounts(0, 0, 0), WindowState.FAILED),
        (RunStatus.IN_PROGRESS, None, WindowState.RUNNING),
        (RunStatus.SCHEDULED, None, WindowState.SUBMITTED),
        (RunStatus.UNKNOWN, None, WindowState.SUBMITTED),
    ],
)
def test_what_a_run_amounts_to(
    status: RunStatus, counts: RecordCounts | None, state: WindowState
) -> None:
    assert status.window_state(counts) is state
    if status in (RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS):
        assert outcome(status, counts) is state


def test_new_outcomes_are_finished_and_accepted() -> None:
    for state in (WindowState.EMPTY, WindowState.PARTIAL):
        assert state.finished
        assert state.accepted
        assert not state.active
