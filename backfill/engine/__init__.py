"""The engine: long-lived workers, reconciliation and the run monitor.

    Engine (core) -- builds the parts around one Board (shared state) and one Control
       |             (lifecycle, naps, backoff), and runs them in one TaskGroup
       v
    dispatch  --(one of `workers` workers, flow ready)--> submit (one request at a time)
    submit:     journal "submitting" (durable) -> a seat (one of `concurrency`) -> rate
                permit -> POST /runs
                -> journal "submitted" (durable with the next commit); answer lost / 5xx
                -> in doubt -> reconcile
    reconcile:  one paginated listing per flow, adopts the run whose window matches, or
                sends the window back to dispatch when the service has none
    monitor:    one list call per flow and page of tracked run ids -> status records;
                failed runs go back to dispatch until their attempts run out
    adopt:      before anything is sent, the runs the service already holds for windows the
                checkpoint never saw are recorded (one listing per flow), never sent again
    listing:    the one place that pages through ``GET /runs`` (every part above)
    survey:     the dry run's read-only view: what adoption and the delta-column gate would
                read before anything is sent, through the same lister

The parts talk only through the board and the control, never through one another's private
state; the reconciler hands an adopted run to the monitor's ``observe``.
"""

from __future__ import annotations

from .core import Engine
from .options import EngineOptions, ExistingRuns, OnFailure, Outcome, RetryMode, Stats

__all__ = ["Engine", "EngineOptions", "ExistingRuns", "OnFailure", "Outcome", "RetryMode", "Stats"]
