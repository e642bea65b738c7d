"""The flow pre-flight against a fake service: what it asks, what it decides, what it refuses."""

from __future__ import annotations

import pytest

from backfill.client import FlowInfo
from backfill.engine.preflight import preflight
from backfill.errors import (
    ApiUnavailable,
    ConfigError,
    PermanentError,
    RateLimited,
    ServerError,
)
from backfill.limits import Backoff
from backfill.planner import FlowPlan

TABLE = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
FILE = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"


class FakeFlows:
    """Answers ``get_flow`` from a script of results (a FlowInfo or an error) per flow."""

    def __init__(self, script: dict[str, list[FlowInfo | Exception]]) -> None:
        self.script = script
        self.asked: list[str] = []

    async def get_flow(self, flow_id: str) -> FlowInfo:
        self.asked.append(flow_id)
        answer = self.script[flow_id].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def info(flow_id: str, frequency: str | None = "once", column: str | None = None) -> FlowInfo:
    return FlowInfo(flow_id, "a flow", "enabled", frequency, column)


def plan(flow_id: str, column: str | None = None) -> FlowPlan:
    return FlowPlan.single(flow_id, 1704067200, 1704067200 + 86400, 3600, column)


async def nap(seconds: float) -> None:
    return None


async def test_each_flow_is_asked_once_and_the_delta_rule_is_decided() -> None:
    api = FakeFlows(
        {TABLE: [info(TABLE, column="updated_at")], FILE: [info(FILE, frequency="ONCE")]}
    )
    flows = [plan(TABLE, "updated_at"), plan(FILE), plan(TABLE, "updated_at")]

    with_column = await preflight(api, flows, sandbox="prod", sleep=nap)

    assert with_column == {TABLE}
    assert api.asked == [TABLE, FILE]


async def test_throttling_and_server_errors_are_waited_out() -> None:
    api = FakeFlows(
        {
            FILE: [
                RateLimited("slow down", request="GET /flows/{id}", status=429, retry_after=3),
                ServerError("oops", request="GET /flows/{id}", status=502),
                info(FILE),
            ]
        }
    )
    assert await preflight(api, [plan(FILE)], sandbox="prod", sleep=nap, seed=1) == set()

    assert api.asked == [FILE] * 3


@pytest.mark.parametrize(
    ("answer", "column", "words"),
    [
        (info(TABLE, frequency="hour"), None, ["'hour'", "once"]),
        (info(TABLE, frequency=None), None, ["no frequency", "once"]),
        (info(TABLE, column="updated_at"), "DOB", ["'updated_at'", "'DOB'"]),
        (
            PermanentError("gone", request="GET /flows/{id}", status=404, code="1439-404"),
            None,
            ["1439-404", "'dev'", "BACKFILL_SANDBOX_NAME"],
        ),
        (
            PermanentError("labels", request="GET /flows/{id}", status=403, code="2120-403"),
            None,
            ["2120-403", "cannot see it"],
        ),
    ],
    ids=["hourly", "no-frequency", "conflicting-column", "unknown", "hidden"],
)
async def test_a_flow_that_cannot_take_the_backfill_is_exit_2_naming_it(
    answer: FlowInfo | Exception, column: str | None, words: list[str]
) -> None:
    api = FakeFlows({TABLE: [answer]})
    with pytest.raises(ConfigError) as caught:
        await preflight(api, [plan(TABLE, column)], sandbox="dev", sleep=nap)
    message = str(caught.value)
    assert message.startswith(f"flow {TABLE}: ")
    for word in words:
        assert word in message
    assert caught.value.exit_code == 2


async def test_retryable_errors_end_in_api_unavailable() -> None:
    errors: list[FlowInfo | Exception] = [
        ServerError("down", request="GET /flows/{id}", status=503) for _ in range(3)
    ]
    api = FakeFlows({FILE: errors})
    with pytest.raises(ApiUnavailable):
        await preflight(
            api,
            [plan(FILE)],
            sandbox="prod",
            sleep=nap,
            backoff=Backoff(max_retries=2),
        )


async def test_a_retry_after_is_waited_out_unless_beyond_the_bound() -> None:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    def throttled(seconds: float) -> RateLimited:
        return RateLimited("busy", request="GET /flows/{id}", status=429, retry_after=seconds)

    api = FakeFlows({FILE: [throttled(7), info(FILE)]})
    await preflight(api, [plan(FILE)], sandbox="prod", sleep=record, max_retry_after=60)
    assert slept == [7]

    api = FakeFlows({FILE: [throttled(86400)]})
    with pytest.raises(ApiUnavailable, match="86400"):
        await preflight(api, [plan(FILE)], sandbox="prod", sleep=record, max_retry_after=60)
