"""Adoption: the runs the service already holds for windows the checkpoint has never seen.

    for each flow with windows the checkpoint never saw: one paginated listing of its runs
    -> each planned window (of this shard) that has runs is recorded with the best of them
       (succeeded, then still going, then failed) and every listed run counts as an attempt
    -> windows without a run are left to dispatch, which sends them

A fresh, lost or mistyped checkpoint therefore never re-ingests what the service already has.
A flow whose runs do not say their window could hold a run for any window: nothing of it is
sent (``--existing-runs ignore`` sends regardless).

It may touch: the journal (new windows' records), the board (gates, slots, run owners) and
the lister.
"""

from __future__ import annotations

import structlog

from backfill.errors import RequestNotSent, RetryableError, ServiceDataError
from backfill.state import WindowState

from .board import Board, Flow, Gate, window_fields
from .listing import Lister
from .options import EngineOptions
from .reconcile import Found, adoption_rank

__all__ = ["Adopter", "unreadable_runs"]

log = structlog.get_logger("backfill.engine")

# Run ids named in the error when a flow's runs cannot be read.
_SHOWN = 5


class Adopter:
    """Records, before anything is sent, the runs the service already has for new windows."""

    def __init__(self, board: Board, lister: Lister, options: EngineOptions) -> None:
        self._board = board
        self._lister = lister
        self._options = options

    async def adopt_existing(self) -> None:
        """One listing per flow that has windows the checkpoint has never seen."""
        board = self._board
        shard = board.journal.plan.shard
        for flow in board.flows.values():
            if flow.recorded >= flow.plan.count(shard):
                continue  # the checkpoint knows every window: nothing is new
            found = await self._list(flow.plan.flow_id)
            if found.by_id and flow.gate is not Gate.OPEN:
                flow.gate = Gate.OPEN  # the flow has had a run: its delta column is set
                board.wake.set()
            if found.unreadable:
                raise unreadable_runs(flow.plan.flow_id, found)
            await self._adopt_flow(flow, found)

    async def _list(self, flow_id: str) -> Found:
        """Every run of the flow. The lister retries a failing page within the one budget (and
        stops the run with exit 75 when it is spent); it gives up early only on a stop."""
        found = Found()
        try:
            async for run in self._lister.runs(flow_id):
                found.add(run)
        except RetryableError as exc:
            raise RequestNotSent("stopping") from exc
        return found

    async def _adopt_flow(self, flow: Flow, found: Found) -> None:
        board = self._board
        journal = board.journal
        plan = flow.plan
        shard = journal.plan.shard
        adopted = 0
        for (start, end), listed in found.by_window.items():
            window = plan.window_at(start)
            if window is None or window.end != end or plan.owner(start, shard.count) != shard.index:
                continue  # not a window of this plan (or of this shard)
            entry = journal.get(window)
            if entry is not None and entry.state is not WindowState.PENDING:
                continue  # the checkpoint knows it; doubts are reconciliation's
            runs = [run for run in listed if board.owner_ok(run.run_id, window)]
            if not runs:
                continue
            best = min(runs, key=adoption_rank)
            attempts = max(len(runs), (entry.attempt if entry is not None else 0) + 1)
            journal.record_nowait(window, WindowState.SUBMITTING, attempt=attempts)
            journal.record_nowait(window, WindowState.SUBMITTED, run_id=best.run_id)
            state = best.status.window_state()
            if not state.active:
                # Finished already. A failed one is the stream's to re-run (dispatch has not
                # reached it yet), within the attempts left.
                errors = [dict(e) for e in best.errors] or None
                journal.record_nowait(window, state, errors=errors)
            elif self._options.monitoring:
                flow.active += 1
                board.accepted(flow, window, best.run_id)
            board.claim(best.run_id, window)
            flow.recorded += 1
            adopted += 1
            log.debug("existing_run_adopted", **window_fields(window), run_id=best.run_id)
            await board.check_duplicates(window, best, runs)
        await journal.commit()
        board.stats.adopted_existing += adopted
        if adopted:
            log.info("existing_runs_adopted", flow=plan.flow_id, windows=adopted)


def unreadable_runs(flow_id: str, found: Found) -> ServiceDataError:
    """Why nothing is sent for a flow whose listed runs do not all say their window."""
    ids = [run.run_id for run in found.unreadable]
    return ServiceDataError(
        f"flow {flow_id} has {len(ids)} run(s) whose window the service "
        f"does not say ({', '.join(ids[:_SHOWN])}{' ...' if len(ids) > _SHOWN else ''})"
        ": any of them may hold a planned window, so nothing is sent for it; check "
        "those runs, then use --existing-runs ignore --yes to send regardless"
    )
