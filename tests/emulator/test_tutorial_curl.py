"""The tutorial's own ``curl`` requests, run with the real curl against the emulator."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import orjson
import pytest

from .conftest import Start

CURL = "/usr/bin/curl"
TUTORIAL_FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
# The tutorial's response, key for key: the emulator must answer exactly these fields.
RUN_FIELDS = {
    "id",
    "createdAt",
    "updatedAt",
    "createdBy",
    "updatedBy",
    "createdClient",
    "updatedClient",
    "sandboxId",
    "sandboxName",
    "imsOrgId",
    "flowId",
    "params",
    "etag",
    "metrics",
    "activities",
}
TABLE_BODY = """{
      "flowId": "3abea21c-7e36-4be1-bec1-d3bad0e3e0de",
      "params": {
          "windowStartTime": "1651584991",
          "windowEndTime": "1651585956",
          "deltaColumn": {
              "name": "DOB"
          }
      }
  }"""
FILE_BODY = """{
      "flowId": "3abea21c-7e36-4be1-bec1-d3bad0e3e0de",
      "params": {
          "windowStartTime": "1651584991",
          "windowEndTime": "1651585956"
      }
  }"""

pytestmark = pytest.mark.skipif(shutil.which(CURL) is None, reason="needs /usr/bin/curl")


async def curl(base_url: str, *args: str, body: str | None = None) -> tuple[int, Any]:
    """Run the tutorial's curl command line (its URL rebased); return status and JSON body.

    The emulator runs in this event loop, so curl must run as an asyncio subprocess: a
    blocking ``subprocess.run`` would stop the server it is talking to.
    """
    command = [
        CURL,
        "--silent",
        "--show-error",
        "--write-out",
        "\n%{http_code}",
        *args,
        "-H",
        "Authorization: Bearer {ACCESS_TOKEN}",
        "-H",
        "x-api-key: {API_KEY}",
        "-H",
        "x-gw-ims-org-id: {ORG_ID}",
        "-H",
        "x-sandbox-name: {SANDBOX_NAME}",
        "-H",
        "Content-Type: application/json",
    ]
    if body is not None:
        command += ["-d", body]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text, _, code = out.decode().rpartition("\n")
    return int(code), orjson.loads(text) if text else None


def assert_tutorial_run(run: dict[str, Any], params: dict[str, Any]) -> None:
    """The shape the tutorial documents for a freshly created run."""
    assert set(run) == RUN_FIELDS
    assert run["flowId"] == TUTORIAL_FLOW
    assert run["params"] == params
    assert run["metrics"] == {"statusSummary": {"status": "scheduled"}}
    assert run["activities"] == []
    assert isinstance(run["createdAt"], int)
    assert isinstance(run["updatedAt"], int)
    assert run["updatedAt"] >= run["createdAt"] > 1_600_000_000_000  # epoch milliseconds
    assert run["sandboxName"] == "{SANDBOX_NAME}"
    assert run["imsOrgId"] == "{ORG_ID}"
    assert run["createdClient"] == run["updatedClient"] == "{API_KEY}"
    assert isinstance(run["createdBy"], str)
    assert isinstance(run["updatedBy"], str)
    assert isinstance(run["sandboxId"], str)
    assert run["etag"].startswith('"')
    assert run["etag"].endswith('"')
    assert len(run["id"]) == 36


async def test_table_then_file_requests_of_the_tutorial(start: Start) -> None:
    api = await start()
    base = api.emulator.base_url

    status, run = await curl(base, "-X", "POST", f"{base}/runs", body=TABLE_BODY)
    assert status == 201
    assert_tutorial_run(
        run,
        {
            "windowStartTime": "1651584991",
            "windowEndTime": "1651585956",
            "deltaColumn": {"name": "DOB"},
        },
    )

    # The tutorial's second request, on the same flow: after the first run, deltaColumn lives
    # in the flow's Copy transformation and later runs leave it out.
    api.clock.advance(0.01)  # a later millisecond: listings order by (createdAt, id)
    status, second = await curl(base, "-X", "POST", f"{base}/runs", body=FILE_BODY)
    assert status == 201
    assert_tutorial_run(second, {"windowStartTime": "1651584991", "windowEndTime": "1651585956"})
    assert second["id"] != run["id"]

    status, flow = await curl(base, f"{base}/flows/{TUTORIAL_FLOW}")
    assert status == 200
    assert flow["items"][0]["transformations"] == [
        {"name": "Copy", "params": {"deltaColumn": {"name": "DOB"}}}
    ]
    assert flow["items"][0]["scheduleParams"]["frequency"] == "once"

    status, got = await curl(base, f"{base}/runs/{run['id']}")
    assert status == 200
    assert set(got) == {"items"}
    assert set(got["items"][0]) == RUN_FIELDS

    status, listed = await curl(base, f"{base}/runs?property=flowId=={TUTORIAL_FLOW}")
    assert status == 200
    assert [r["id"] for r in listed["items"]] == [run["id"], second["id"]]
    assert listed["_links"] == {}


async def test_file_request_of_the_tutorial_on_a_file_based_flow(start: Start) -> None:
    api = await start(flows=((TUTORIAL_FLOW, "file"),))
    base = api.emulator.base_url

    status, run = await curl(base, "-X", "POST", f"{base}/runs/", body=FILE_BODY)
    assert status == 201
    assert_tutorial_run(run, {"windowStartTime": "1651584991", "windowEndTime": "1651585956"})

    status, refused = await curl(base, "-X", "POST", f"{base}/runs", body=TABLE_BODY)
    assert status == 400
    assert refused["type"] == "https://ns.adobe.com/aep/errors/FLOW-1452-400"


async def test_the_tutorials_typo_end_time_gets_a_clear_error(start: Start) -> None:
    api = await start()
    base = api.emulator.base_url
    body = TABLE_BODY.replace("1651585956", "16515859567")

    status, error = await curl(base, "-X", "POST", f"{base}/runs", body=body)

    assert status == 400
    assert error["type"] == "https://ns.adobe.com/aep/errors/FLOW-1400-400"
    assert "windowEndTime" in error["report"]["detailed-message"]
    assert "11 digits" in error["report"]["detailed-message"]
    assert (await api.stats())["runs"] == []


async def test_items_shape_answers_id_and_etag_only(start: Start) -> None:
    api = await start(response_shape="items")
    base = api.emulator.base_url

    status, answer = await curl(base, "-X", "POST", f"{base}/runs", body=TABLE_BODY)

    assert status == 201
    assert set(answer) == {"items"}
    (item,) = answer["items"]
    assert set(item) == {"id", "etag"}
    status, got = await curl(base, f"{base}/runs/{item['id']}")
    assert got["items"][0]["etag"] == item["etag"]
