"""Runs over HTTP: creation, the lifecycle and its metrics, re-trigger, flows, shapes."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import FLOW, START, Api, Start


async def get_run(api: Api, run_id: str) -> dict[str, Any]:
    answer = await api.call("GET", f"/runs/{run_id}")
    assert answer.status == 200
    assert set(answer.body) == {"items"}
    (run,) = answer.body["items"]
    assert isinstance(run, dict)
    return run


async def test_a_run_goes_scheduled_in_progress_success(start: Start) -> None:
    api = await start(scheduled_for=10, running_for=50)
    created = (await api.create(delta="DOB")).body
    run_id = created["id"]
    created_at = created["createdAt"]

    run = await get_run(api, run_id)
    assert run["metrics"] == {"statusSummary": {"status": "scheduled"}}
    assert run["activities"] == []
    assert run["updatedAt"] == created_at

    api.clock.advance(10)
    run = await get_run(api, run_id)
    metrics = run["metrics"]
    assert metrics["statusSummary"] == {"status": "inProgress"}
    assert metrics["durationSummary"] == {"startedAtUTC": created_at + 10_000}
    assert set(metrics["recordSummary"].values()) == {-1}
    assert set(metrics["fileSummary"].values()) == {-1}
    assert metrics["sizeSummary"] == {"inputBytes": -1, "outputBytes": -1}
    assert run["updatedAt"] == created_at + 10_000
    (activity,) = run["activities"]
    assert activity["name"] == "Copy"
    assert activity["statusSummary"]["status"] == "inProgress"

    api.clock.advance(49.9)
    assert (await get_run(api, run_id))["metrics"]["statusSummary"]["status"] == "inProgress"
    api.clock.advance(0.2)
    run = await get_run(api, run_id)
    metrics = run["metrics"]
    assert metrics["statusSummary"] == {"status": "success"}
    assert metrics["durationSummary"] == {
        "startedAtUTC": created_at + 10_000,
        "completedAtUTC": created_at + 60_000,
    }
    records = metrics["recordSummary"]
    assert records["inputRecordCount"] == records["outputRecordCount"] > 0
    assert records["failedRecordCount"] == 0
    files = metrics["fileSummary"]
    assert files["inputFileCount"] == files["outputFileCount"] > 0
    assert metrics["sizeSummary"]["inputBytes"] > metrics["sizeSummary"]["outputBytes"] > 0
    assert run["updatedAt"] == created_at + 60_000
    assert run["activities"][0]["statusSummary"]["status"] == "success"
    assert run["createdAt"] == created_at
    assert run["etag"] == created["etag"]


async def test_a_failed_run_reports_errors_and_can_be_re_triggered(start: Start) -> None:
    api = await start(fail_rate=1.0, scheduled_for=1, running_for=2)
    run_id = (await api.create()).body["id"]
    api.clock.advance(3)
    run = await get_run(api, run_id)
    summary = run["metrics"]["statusSummary"]
    assert summary["status"] == "failed"
    (error,) = summary["errors"]
    assert set(error) == {"code", "message"}
    assert run["metrics"]["recordSummary"]["outputRecordCount"] == 0
    assert run["metrics"]["fileSummary"]["failedFileCount"] > 0

    # retry-flows.md: "A successful response returns a newly created flow run ID".
    # (Before issue 12 the emulator scheduled the same id again: see the next test.)
    api.clock.advance(1)
    answer = await api.call("POST", f"/runs/{run_id}/action?op=re-trigger")
    assert answer.status == 200
    assert set(answer.body) == {"id", "etag"}
    new_id = answer.body["id"]
    assert new_id != run_id

    new = await get_run(api, new_id)
    assert new["metrics"] == {"statusSummary": {"status": "scheduled"}}
    assert new["etag"] == answer.body["etag"]
    assert new["flowId"] == run["flowId"]
    assert new["params"] == run["params"]
    assert new["createdAt"] == run["createdAt"] + 4000
    assert (await get_run(api, run_id)) == run  # the old run stays failed, untouched
    old_stats, new_stats = (await api.stats())["runs"]
    assert (old_stats["attempts"], old_stats["status"]) == (1, "failed")
    assert (new_stats["retrigger_of"], new_stats["status"]) == (run_id, "scheduled")
    api.clock.advance(3)
    assert (await get_run(api, new_id))["metrics"]["statusSummary"]["status"] == "failed"


async def test_retrigger_same_run_schedules_the_failed_run_again(start: Start) -> None:
    api = await start(fail_rate=1.0, scheduled_for=1, running_for=2, retrigger_same_run=True)
    run_id = (await api.create()).body["id"]
    api.clock.advance(3)
    run = await get_run(api, run_id)

    answer = await api.call("POST", f"/runs/{run_id}/action?op=re-trigger")
    assert answer.status == 200
    assert answer.body["id"] == run_id
    assert answer.body["etag"] != run["etag"]

    again = await get_run(api, run_id)
    assert again["metrics"] == {"statusSummary": {"status": "scheduled"}}
    assert again["etag"] == answer.body["etag"]
    assert again["createdAt"] == run["createdAt"]
    assert again["params"] == run["params"]
    (stats_run,) = (await api.stats())["runs"]
    assert stats_run["attempts"] == 2
    assert stats_run["status"] == "scheduled"
    api.clock.advance(3)
    assert (await get_run(api, run_id))["metrics"]["statusSummary"]["status"] == "failed"


async def test_zero_duration_lifecycle_finishes_at_once(start: Start) -> None:
    api = await start(scheduled_for=0, running_for=0)
    created = (await api.create()).body
    # The answer to POST always shows the run as just scheduled, as the tutorial does.
    assert created["metrics"] == {"statusSummary": {"status": "scheduled"}}
    assert (await get_run(api, created["id"]))["metrics"]["statusSummary"]["status"] == "success"


async def test_window_times_as_integers_are_stored_as_digits(api: Api) -> None:
    body = {"flowId": FLOW, "params": {"windowStartTime": START, "windowEndTime": START + 60}}
    answer = await api.call("POST", "/runs", json=body)
    assert answer.status == 201
    assert answer.body["params"] == {
        "windowStartTime": str(START),
        "windowEndTime": str(START + 60),
    }


async def test_identity_comes_from_the_headers(api: Api) -> None:
    run = (await api.create()).body
    assert run["imsOrgId"] == "TEST@AdobeOrg"
    assert run["sandboxName"] == "prod"
    assert run["createdClient"] == "test-key"
    assert "test-key" in run["createdBy"]


async def test_run_ids_are_uuid4_and_deterministic_for_a_seed(start: Start) -> None:
    first = await start(seed=42)
    second = await start(seed=42)
    other = await start(seed=43)
    ids = [(await first.create(start=START + i * 60)).body["id"] for i in range(5)]
    assert ids == [(await second.create(start=START + i * 60)).body["id"] for i in range(5)]
    assert ids != [(await other.create(start=START + i * 60)).body["id"] for i in range(5)]
    for run_id in ids:
        assert run_id[14] == "4"
        assert run_id[19] in "89ab"


async def test_flow_document(start: Start) -> None:
    api = await start(flows=(("t1", "table"), ("f1", "file")))
    table = (await api.call("GET", "/flows/t1")).body["items"][0]
    assert table["id"] == "t1"
    assert table["scheduleParams"]["frequency"] == "once"
    assert table["transformations"] == [{"name": "Copy", "params": {}}]
    assert "lastRunDetails" not in table

    run_id = (await api.create(flow="t1", delta="modified")).body["id"]
    table = (await api.call("GET", "/flows/t1")).body["items"][0]
    assert table["transformations"] == [
        {"name": "Copy", "params": {"deltaColumn": {"name": "modified"}}}
    ]
    assert table["lastRunDetails"] == {"id": run_id, "state": "scheduled"}
    api.clock.advance(0.7)
    details = (await api.call("GET", "/flows/t1")).body["items"][0]["lastRunDetails"]
    assert details["state"] == "success"
    assert details["completedAtUTC"] > details["startedAtUTC"]

    file_flow = (await api.call("GET", "/flows/f1")).body["items"][0]
    assert file_flow["flowSpec"]["id"] != table["flowSpec"]["id"]
    assert file_flow["transformations"] == [{"name": "Copy", "params": {}}]


async def test_undeclared_flows_are_known_and_decided_by_their_first_run(api: Api) -> None:
    # Without --flow, any id is a flow: the pre-flight GET of a tool must not fail.
    answer = await api.call("GET", "/flows/brand-new")
    assert answer.status == 200
    assert answer.body["items"][0]["id"] == "brand-new"
    assert (await api.create(flow="brand-new", delta="ts")).status == 201
    flow = (await api.call("GET", "/flows/brand-new")).body["items"][0]
    assert flow["transformations"][0]["params"] == {"deltaColumn": {"name": "ts"}}


@pytest.mark.parametrize("path", ["/runs", "/runs/"])
async def test_post_runs_with_or_without_trailing_slash(api: Api, path: str) -> None:
    body = {"flowId": FLOW, "params": {"windowStartTime": "1", "windowEndTime": "2"}}
    assert (await api.call("POST", path, json=body)).status == 201


async def test_the_index_page_points_at_the_routes(api: Api) -> None:
    answer = await api.call("GET", api.emulator.url + "/", absolute=True, headers=None)
    assert answer.body["base_path"] == "/data/foundation/flowservice"
