"""One vocabulary of window states in every view; progress that never runs backwards."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from backfill import report
from backfill.report import Snapshot, print_summary
from backfill.state import LABELS, MEANINGS, WindowState

README = Path(__file__).resolve().parent.parent / "README.md"


def _snapshot(**changes: int) -> Snapshot:
    counts = dict.fromkeys(WindowState, 0)
    counts.update({WindowState(k): v for k, v in changes.items()})
    return Snapshot(counts=counts, total=10, elapsed=2.0, wait=True, done_at_start=8)


def test_every_state_has_one_label_equal_to_its_stored_value_and_a_meaning() -> None:
    assert {state: state.value for state in WindowState} == LABELS
    assert set(MEANINGS) == set(WindowState)


def test_the_live_display_and_the_summary_use_the_same_words() -> None:
    snapshot = _snapshot(succeeded=3, failed=1, submitting=2)
    live = io.StringIO()
    Console(file=live, width=200).print(report._progress_line(snapshot))
    summary = io.StringIO()
    print_summary(snapshot, json_lines=False, outcome="interrupted", stream=summary)
    for text in (live.getvalue(), summary.getvalue()):
        header = next(line for line in text.splitlines() if "pending" in line)
        assert re.findall(r"[a-z]+", header) == [state.value for state in WindowState]
    assert "in doubt" not in live.getvalue() + summary.getvalue()
    assert "in flight" not in live.getvalue() + summary.getvalue()
    assert "2 submitting, answer lost or never sent" in summary.getvalue()


def test_progress_rates_are_never_negative() -> None:
    # `retry` turns failed windows back into work: fewer done than when the run started.
    snapshot = _snapshot(succeeded=5)
    assert snapshot.done < snapshot.done_at_start
    assert snapshot.per_second == 0.0
    assert snapshot.as_dict()["windows_per_s"] == 0.0
    assert snapshot.eta is None


def test_the_readme_names_the_states_as_the_tool_does() -> None:
    text = README.read_text()
    listed = re.search(r"with states (.*?)\.", text, re.S)
    assert listed is not None
    assert re.findall(r"`([a-z]+)`", listed.group(1)) == [s.value for s in WindowState]
    for stale in ("┃ in flight ┃", "┃ in doubt ┃"):
        assert stale not in text
