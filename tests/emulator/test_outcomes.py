"""Issue 13 in the emulator: schedules, preset delta columns, empty and partial runs, status
vocabularies, a required startTime, both re-trigger spellings, documented error codes."""

from __future__ import annotations

from typing import Any

import pytest

from backfill.emulator.cli import build_parser, config_from_args
from backfill.emulator.config import EmulatorConfig, FlowKind

from .conftest import FLOW, HOUR, START, Api, Start


def _status(body: dict[str, Any]) -> str:
    status: str = body["items"][0]["metrics"]["statusSummary"]["status"]
    return status


async def _finished(api: Api, run_id: str) -> dict[str, Any]:
    api.clock.advance(10)
    answer = await api.call("GET", f"/runs/{run_id}")
    body: dict[str, Any] = answer.body
    return body


async def test_a_once_flow_has_no_interval_and_an_hourly_flow_takes_no_runs(start: Start) -> None:
    other = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
    api = await start(
        flows=((FLOW, "table"), (other, "file")),
        flow_schedules=((FLOW, "once", "updated_at"), (other, "hour", None)),
    )
    once = (await api.call("GET", f"/flows/{FLOW}")).body["items"][0]
    assert once["scheduleParams"].keys() == {"startTime", "frequency"}
    assert once["scheduleParams"]["frequency"] == "once"
    assert once["transformations"][0]["params"] == {"deltaColumn": {"name": "updated_at"}}
    hourly = (await api.call("GET", f"/flows/{other}")).body["items"][0]
    assert hourly["scheduleParams"]["frequency"] == "hour"
    assert hourly["scheduleParams"]["interval"] == "1"
    refused = await api.create(flow=other)
    assert refused.status == 400
    assert refused.body["type"].endswith("FLOW-1462-400")
    # The table flow has its delta column from creation: its first run needs none.
    assert (await api.create(flow=FLOW)).status == 201
    assert (await api.create(flow=FLOW, start=START + HOUR, delta="other")).status == 400


async def test_unknown_flow_on_get_is_1439_404(start: Start) -> None:
    api = await start(flows=((FLOW, "file"),))
    answer = await api.call("GET", "/flows/9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10")
    assert answer.status == 404
    assert answer.body["type"].endswith("FLOW-1439-404")


async def test_start_time_can_be_required(start: Start) -> None:
    api = await start(require_start_time=True)
    refused = await api.create()
    assert refused.status == 400
    assert "startTime" in refused.body["report"]["detailed-message"]
    answer = await api.call(
        "POST",
        "/runs",
        json={
            "flowId": FLOW,
            "params": {
                "windowStartTime": str(START),
                "windowEndTime": str(START + HOUR),
                "startTime": str(START + 5 * HOUR),
            },
        },
    )
    assert answer.status == 201
    assert (await api.stats())["runs"][0]["start_time"] == str(START + 5 * HOUR)


@pytest.mark.parametrize(
    ("spelling", "accepted"),
    [
        ("re-trigger", {"re-trigger"}),
        ("RE_TRIGGER", {"RE_TRIGGER"}),
        ("both", {"re-trigger", "RE_TRIGGER"}),
    ],
)
async def test_retrigger_spellings(start: Start, spelling: str, accepted: set[str]) -> None:
    api = await start(fail_rate=1.0, retrigger_spelling=spelling)
    run_id = (await api.create()).body["id"]
    for op in ("re-trigger", "RE_TRIGGER"):
        await _finished(api, run_id)
        answer = await api.call("POST", f"/runs/{run_id}/action", params={"op": op})
        if op in accepted:
            assert answer.status == 200
        else:
            assert answer.status == 400
            assert answer.body["type"].endswith("FLOW-1434-400")
            assert "operation" in answer.body["report"]["detailed-message"]


async def test_empty_and_partial_runs_report_their_counts(start: Start) -> None:
    api = await start(empty_rate=1.0)
    run_id = (await api.create()).body["id"]
    body = await _finished(api, run_id)
    records = body["items"][0]["metrics"]["recordSummary"]
    assert (records["inputRecordCount"], records["outputRecordCount"]) == (0, 0)
    assert _status(body) == "success"
    # Adobe allows re-triggering a success that ingested nothing (retry-flows.md).
    again = await api.call("POST", f"/runs/{run_id}/action", params={"op": "re-trigger"})
    assert again.status == 200

    api = await start(partial_rate=1.0)
    run_id = (await api.create(flow="9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10")).body["id"]
    body = await _finished(api, run_id)
    summary = body["items"][0]["metrics"]
    assert summary["recordSummary"]["failedRecordCount"] > 0
    assert summary["statusSummary"]["status"] == "success"  # as monitor.md shows it
    assert summary["statusSummary"]["errors"]
    assert (await api.stats())["runs"][0]["outcome"] == "partial"


async def test_upper_vocabulary_and_stuck_runs(start: Start) -> None:
    api = await start(status_vocabulary="upper", partial_rate=1.0)
    run_id = (await api.create()).body["id"]
    assert _status((await api.call("GET", f"/runs/{run_id}")).body) == "SCHEDULED"
    assert _status(await _finished(api, run_id)) == "PARTIAL_SUCCESS"
    assert (await api.stats())["status_words"] == {"SCHEDULED": 1, "PARTIAL_SUCCESS": 1}

    api = await start(stuck_rate=1.0, stuck_status="paused")
    run_id = (await api.create()).body["id"]
    assert _status(await _finished(api, run_id)) == "paused"
    api.clock.advance(10**6)
    assert _status(await _finished(api, run_id)) == "paused"


def test_flow_flag_takes_a_schedule_and_a_delta_column() -> None:
    args = build_parser().parse_args(
        ["--flow", f"{FLOW}:table:once:updated_at", "--flow", "b:file:hourly", "--flow", "c:file"]
    )
    config = config_from_args(args)
    assert config.flows == ((FLOW, FlowKind.TABLE), ("b", FlowKind.FILE), ("c", FlowKind.FILE))
    assert config.flow_schedules == ((FLOW, "once", "updated_at"), ("b", "hour", None))


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"empty_rate": 1.5}, "--empty-rate"),
        ({"partial_rate": -0.1}, "--partial-rate"),
        ({"stuck_rate": 2.0}, "--stuck-rate"),
        ({"status_vocabulary": "lower"}, "--status-vocabulary"),
        ({"retrigger_spelling": "retrigger"}, "--retrigger-spelling"),
        ({"stuck_status": " "}, "--stuck-status"),
        ({"flows": (("a", "table"),), "flow_schedules": (("a", "yearly", None),)}, "--flow a"),
        ({"flows": (("a", "file"),), "flow_schedules": (("a", "once", "x"),)}, "--flow a"),
        ({"flow_schedules": (("a", "once", None),)}, "--flow a"),
        ({"hidden_flows": (" ",)}, "--hidden-flow"),
    ],
)
def test_bad_values_name_the_flag(overrides: dict[str, Any], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        EmulatorConfig(**overrides)


async def test_a_hidden_flow_is_2120_403(start: Start) -> None:
    api = await start(hidden_flows=(FLOW,))
    for answer in (await api.call("GET", f"/flows/{FLOW}"), await api.create()):
        assert answer.status == 403
        assert answer.body["type"].endswith("FLOW-2120-403")
