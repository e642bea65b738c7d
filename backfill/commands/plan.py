"""``backfill plan``: print the windows a run would submit; nothing else is touched.

It imports the settings and the planner only: no checkpoint, no HTTP, no engine, so that it
starts as fast as the settings allow (the README's "Performance").
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

from backfill.errors import ExitCode
from backfill.planner import FlowPlan, Order, Plan, Shard
from backfill.settings import Settings

__all__ = ["plan_command", "plan_summary"]


def plan_command(settings: Settings, *, as_json: bool, out: Any = None) -> ExitCode:
    """Print the plan: one JSON object per window, or a line per flow."""
    out = out or sys.stdout
    plan = settings.plan(now=time.time())
    if as_json:
        write = out.buffer.write if hasattr(out, "buffer") else None
        flows = {flow.flow_id: flow for flow in plan.flows}
        for window in plan.windows():
            show = flows[window.flow_id].show
            line = orjson.dumps(
                {
                    "flow_id": window.flow_id,
                    "start": window.start,
                    "end": window.end,
                    "start_time": show(window.start),
                    "end_time": show(window.end),
                }
            )
            if write is not None:
                write(line + b"\n")
            else:
                out.write(line.decode() + "\n")
        return ExitCode.OK
    total = 0
    for flow in plan_summary(plan):
        total += flow["windows"]
        column = f", delta column {flow['delta_column']}" if flow["delta_column"] else ""
        out.write(f"{flow['flow_id']}: {flow['range']}: {flow['windows']:,} windows{column}\n")
        for line in flow["details"]:
            out.write(f"  {line}\n")
    shard = "" if plan.shard.whole else f" (shard {plan.shard})"
    out.write(f"{total:,} windows in all{shard}\n")
    return ExitCode.OK


def plan_summary(plan: Plan) -> list[dict[str, Any]]:
    """One line per flow, for ``backfill plan`` without --json."""
    return [
        {
            "flow_id": flow.flow_id,
            "range": flow.describe(),
            "windows": flow.count(plan.shard),
            "delta_column": flow.delta_column,
            "details": _edges(flow, plan.shard),
        }
        for flow in plan.flows
    ]


def _edges(flow: FlowPlan, shard: Shard) -> list[str]:
    """The first and last windows, in unix seconds and local time, and which are clipped."""
    lines: list[str] = []
    first = next(flow.windows(Order.OLDEST_FIRST, shard), None)
    last = next(flow.windows(Order.NEWEST_FIRST, shard), None)
    for word, window in (("first", first), ("last", last)):
        if window is not None and (word == "first" or window != first):
            lines.append(
                f"{word} window: {window.start} .. {window.end} "
                f"({flow.show(window.start)} .. {flow.show(window.end)})"
            )
    lines.extend(f"note: {note}" for note in flow.clipped())
    return lines
