"""What the real run reads from the service before it sends, asked read-only: the dry run's view.

    each flow with windows the checkpoint never saw (--existing-runs adopt): its whole listing,
        read as adoption reads it -> runs by window (a run that does not say its window
        refuses the flow, as adoption does)
    each other flow with a delta column the service does not have yet, and no run on record:
        its listing up to the flow's first run, as the delta-column gate asks

Every page goes through the engine's one pager (``Lister``): the flow filter, links resolved
against the request, the loop bound, and retries within the one retry budget (exit 75 when it
is spent). Each request takes its rate permit in the client. Nothing is written: the journal
is only read, and no part of the engine that acts is built.
"""

from __future__ import annotations

from backfill.client import RunsApi
from backfill.journal import Journal
from backfill.limits import Sleep, monotonic, real_sleep
from backfill.permits import Permits
from backfill.preview import ServiceView

from .adopt import unreadable_runs
from .board import Board
from .control import Control
from .listing import Lister
from .options import EngineOptions, ExistingRuns, Stats
from .reconcile import Found

__all__ = ["survey"]


async def survey(
    journal: Journal,
    client: RunsApi,
    permits: Permits,
    options: EngineOptions,
    *,
    sleep: Sleep = real_sleep,
) -> ServiceView:
    """The runs the real run would read before sending anything, and which flows have one.

    ``options.flows_with_delta_column``: what the pre-flight found (those flows need no gate).
    Raises ``ServiceDataError`` (exit 2) where adoption would refuse a flow, ``ApiUnavailable``
    (exit 75) when a listing runs out of retries.
    """
    stats = Stats()
    control = Control(Board(journal, options, stats, monotonic), permits, options, stats, sleep)
    lister = Lister(client, control, stats, options)
    view = ServiceView(column_set=options.flows_with_delta_column)
    recorded = journal.recorded()  # counted in the journal: no window or entry built
    with_run = {flow.flow_id for flow in journal.plan.flows if journal.has_run(flow.flow_id)}
    shard = journal.plan.shard
    for flow in journal.plan.flows:
        flow_id = flow.flow_id
        if options.existing_runs is ExistingRuns.ADOPT and recorded[flow_id] < flow.count(shard):
            found = Found()
            async for run in lister.runs(flow_id):
                found.add(run)
            if found.unreadable:
                raise unreadable_runs(flow_id, found)
            view.runs[flow_id] = found.by_window
            view.has_run[flow_id] = bool(found.by_id)
        elif (
            flow.delta_column is not None
            and flow_id not in options.flows_with_delta_column
            and flow_id not in with_run
        ):
            view.has_run[flow_id] = await lister.has_run(flow_id)
    return view
