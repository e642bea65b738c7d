"""The flow pre-flight: what the service says of each flow, checked before anything is sent.

    GET /flows/{id} once per flow (under the rate limit) ->
        unknown, or hidden from these credentials ....... exit 2 naming the flow
        scheduleParams.frequency is not "once" .......... exit 2 with the fix
        Copy transformation already has a delta column:
            a different --delta-column .................. exit 2 naming both
            otherwise: runs never carry deltaColumn (no first-run gate)
        no delta column, --delta-column given ........... the first run carries it (the gate)

Why: on-demand runs need a flow "scheduled for one-time ingestion"
(help/sources/tutorials/api/on-demand-ingestion.md, AdobeDocs/experience-platform.en); a table
flow's delta column is part of its Copy transformation from creation
(help/sources/tutorials/api/collect/database-nosql.md) and runs cannot change it. An unknown flow
is ``FLOW-1439-404`` (help/sources/tutorials/api/labels.md; catalogued as 1439 in
help/sources/errors/flow-service-errors.md), one hidden by access labels ``FLOW-2120-403``.
Learning any of this from the first refused ``POST /runs`` would be learning it in production.

Every shard runs the same pre-flight and so decides the delta rule the same way. ``plan``
never calls this: it stays offline.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable

import structlog

from backfill.client import FlowInfo, FlowsApi
from backfill.errors import (
    ApiUnavailable,
    ConfigError,
    NotFlowService,
    PermanentError,
    RetryableError,
)
from backfill.limits import Backoff, Sleep, real_sleep
from backfill.planner import FlowPlan
from backfill.retry import Retries

__all__ = ["preflight"]

log = structlog.get_logger("backfill.engine")

ONCE = "once"


async def preflight(
    api: FlowsApi,
    flows: Iterable[FlowPlan],
    *,
    sandbox: str,
    backoff: Backoff | None = None,
    sleep: Sleep = real_sleep,
    seed: int | None = None,
    max_retry_after: float = 900.0,
) -> frozenset[str]:
    """Check every flow; return the ids of flows whose delta column the service already has.

    Each ``GET`` takes its rate permit in the client, like every request; 429s and outages are
    retried within the one retry budget (``ApiUnavailable``, exit 75, once it is spent), and a
    ``Retry-After`` is waited out unless it is longer than ``max_retry_after`` (exit 75).
    Raises ``ConfigError`` (exit 2) for a flow that cannot take on-demand runs as planned.
    """
    backoff = backoff or Backoff()
    rng = random.Random(seed)  # noqa: S311 - jitter, not cryptography
    with_column: set[str] = set()
    seen: set[str] = set()
    for plan in flows:
        if plan.flow_id in seen:
            continue
        seen.add(plan.flow_id)
        info = await _get(api, plan.flow_id, sandbox, backoff, sleep, rng, max_retry_after)
        log.info(
            "flow_checked",
            flow=plan.flow_id,
            name=info.name,
            frequency=info.frequency,
            delta_column=info.delta_column,
        )
        _check(plan, info)
        if info.delta_column is not None:
            with_column.add(plan.flow_id)
            if plan.delta_column is not None:
                log.info(
                    "delta_column_already_set",
                    flow=plan.flow_id,
                    delta_column=info.delta_column,
                    hint="runs do not carry deltaColumn: the flow's Copy transformation has it",
                )
    return frozenset(with_column)


def _check(plan: FlowPlan, info: FlowInfo) -> None:
    frequency = (info.frequency or "").strip()
    if frequency.lower() != ONCE:
        shown = repr(frequency) if frequency else "no frequency"
        raise ConfigError(
            f"flow {plan.flow_id}",
            f"is scheduled with {shown} (scheduleParams.frequency); on-demand runs need a flow "
            "scheduled for one-time ingestion: create a flow with frequency 'once' over the "
            "same source connection for the backfill, and give its id",
        )
    column = info.delta_column
    if column is not None and plan.delta_column is not None and plan.delta_column != column:
        raise ConfigError(
            f"flow {plan.flow_id}",
            f"its Copy transformation already has the delta column {column!r}, and runs "
            f"cannot change it to --delta-column {plan.delta_column!r}: give "
            f"--delta-column {column} (or none)",
        )


async def _patiently(
    call: Callable[[], Awaitable[FlowInfo]],
    backoff: Backoff,
    sleep: Sleep,
    rng: random.Random,
    max_wait: float,
) -> FlowInfo:
    """``call()`` within the one retry budget, honouring ``Retry-After`` up to ``max_wait``."""
    retries = Retries(backoff)
    while True:
        try:
            return await call()
        except RetryableError as exc:
            retry = retries.failed(exc)  # ApiUnavailable once the budget is spent
            asked = exc.retry_after
            if asked is not None and asked > max_wait:
                raise ApiUnavailable(
                    f"{exc.request}: the service asked to wait {asked:g} s (Retry-After: "
                    f"{exc.detail}), longer than --max-retry-after {max_wait:g} s; nothing was "
                    "sent: run the same command again later, or raise --max-retry-after"
                ) from exc
            await sleep(asked if asked is not None else backoff.delay(retry, rng))


async def _get(
    api: FlowsApi,
    flow_id: str,
    sandbox: str,
    backoff: Backoff,
    sleep: Sleep,
    rng: random.Random,
    max_wait: float,
) -> FlowInfo:
    try:
        return await _patiently(lambda: api.get_flow(flow_id), backoff, sleep, rng, max_wait)
    except NotFlowService:
        raise  # the base URL is wrong, not the flow: the client's diagnosis says so
    except PermanentError as exc:
        code = exc.code or ""
        if exc.status == 404 or code.startswith("1439"):
            raise ConfigError(
                f"flow {flow_id}",
                f"the service does not know it ({exc.status} {code or 'not found'}) in "
                f"sandbox {sandbox!r}: check the flow id and BACKFILL_SANDBOX_NAME",
            ) from None
        if code.startswith("2120"):
            raise ConfigError(
                f"flow {flow_id}",
                f"these credentials cannot see it ({exc.status} {code}: {exc.detail}); "
                "ask an admin for access to the flow (and its labels) in sandbox "
                f"{sandbox!r}",
            ) from None
        raise
