"""The run-owner index: one run id is one window's, kept as two ints a run, and exact."""

from __future__ import annotations

from pathlib import Path

from backfill.engine.board import Board
from backfill.engine.options import EngineOptions, Stats
from backfill.journal import Journal
from backfill.planner import FlowPlan, Plan, Window
from backfill.state import WindowState

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
T0 = 1704067200
HOUR = 3600


def window(i: int) -> Window:
    return Window(FLOW, T0 + i * HOUR, T0 + (i + 1) * HOUR)


async def test_a_run_of_one_window_is_refused_for_another(tmp_path: Path) -> None:
    journal = Journal.open(
        tmp_path / "ck.jsonl", Plan((FlowPlan.single(FLOW, T0, T0 + 4 * HOUR, HOUR),))
    )
    try:
        board = Board(journal, EngineOptions(), Stats(), lambda: 0.0)
        a, b = window(0), window(1)
        assert board.owner_ok("run-a", a)
        board.claim("run-a", a)
        journal.record_nowait(a, WindowState.SUBMITTING, attempt=1)
        journal.record_nowait(a, WindowState.SUBMITTED, attempt=1, run_id="run-a")

        assert board.owner_ok("run-a", a)  # its own window, again
        assert not board.owner_ok("run-a", b)
        assert board.stats.foreign_runs == 1
        assert board.owner_ok("run-b", b)
        assert all(type(k) is int and type(v) is int for k, v in board.owners.items())
    finally:
        await journal.close()


async def test_the_journal_decides_when_two_run_ids_share_a_hash(tmp_path: Path) -> None:
    """An entry under a run id's hash whose window never had that run (what a collision of
    two ids' hashes looks like) does not make the run another window's."""
    journal = Journal.open(
        tmp_path / "ck.jsonl", Plan((FlowPlan.single(FLOW, T0, T0 + 4 * HOUR, HOUR),))
    )
    try:
        board = Board(journal, EngineOptions(), Stats(), lambda: 0.0)
        a, b = window(0), window(1)
        journal.record_nowait(a, WindowState.SUBMITTING, attempt=1)
        journal.record_nowait(a, WindowState.SUBMITTED, attempt=1, run_id="run-other")
        board.owners[hash("run-x")] = journal.key_of(a)  # "run-x" hashes like a's run

        assert board.owner_ok("run-x", b)
        assert board.stats.foreign_runs == 0
    finally:
        await journal.close()
