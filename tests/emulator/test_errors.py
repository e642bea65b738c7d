"""Every documented error, with its status code and body, plus the codes the emulator chose."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import FLOW, HEADERS, START, Api, Start

ERRORS = "https://ns.adobe.com/aep/errors/"


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in HEADERS.items() if k != name}


def with_header(name: str, value: str) -> dict[str, str]:
    return {**HEADERS, name: value}


def assert_envelope(body: Any, code: str, status: int) -> str:
    """The Flow Service error envelope; returns its detailed message."""
    assert set(body) == {"type", "title", "status", "report"}
    assert body["type"] == f"{ERRORS}FLOW-{code}"
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert set(body["report"]) == {"detailed-message", "request-id"}
    assert body["report"]["request-id"]
    message: str = body["report"]["detailed-message"]
    assert message
    return message


# -- gateway ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "error_code", "message"),
    [
        (without("Authorization"), 403, "403010", "Oauth token is missing."),
        (with_header("Authorization", ""), 403, "403010", "Oauth token is missing."),
        (with_header("Authorization", "Basic abc"), 401, "401013", "Oauth token is not valid"),
        (with_header("Authorization", "Bearer "), 401, "401013", "Oauth token is not valid"),
        (without("x-api-key"), 403, "403000", "Api Key is required"),
        (without("x-gw-ims-org-id"), 400, "400003", "Missing header"),
    ],
    ids=["no-token", "empty-token", "not-bearer", "bearer-nothing", "no-api-key", "no-org"],
)
async def test_gateway_errors(
    api: Api, headers: dict[str, str], status: int, error_code: str, message: str
) -> None:
    for method, path in [("POST", "/runs"), ("GET", "/runs"), ("GET", f"/flows/{FLOW}")]:
        answer = await api.call(method, path, headers=headers, json={})
        assert answer.status == status
        assert answer.body == {"error_code": error_code, "message": message}
    assert (await api.stats())["runs"] == []


async def test_sandbox_header_missing_is_flow_service_2105(api: Api) -> None:
    answer = await api.call("GET", "/runs", headers=without("x-sandbox-name"))
    assert answer.status == 400
    message = assert_envelope(answer.body, "2105-400", 400)
    assert message == "The header x-sandbox-name is missing"


async def test_headers_are_checked_in_the_gateways_order(api: Api) -> None:
    # Nothing at all: the token is what the gateway looks at first.
    answer = await api.call("GET", "/runs", headers={})
    assert answer.body["error_code"] == "403010"
    answer = await api.call("GET", "/runs", headers={"Authorization": "Bearer x"})
    assert answer.body["error_code"] == "403000"
    answer = await api.call("GET", "/runs", headers={"Authorization": "Bearer x", "x-api-key": "k"})
    assert answer.body["error_code"] == "400003"


@pytest.mark.parametrize(
    ("headers", "status", "error_code", "message"),
    [
        (with_header("Authorization", "Bearer other"), 401, "401013", "Oauth token is not valid"),
        (with_header("x-api-key", "other"), 403, "403003", "Api Key is invalid"),
        (with_header("x-gw-ims-org-id", "OTHER@AdobeOrg"), 403, "403025", "Profile is not valid"),
    ],
    ids=["token", "api-key", "org"],
)
async def test_strict_values(
    start: Start, headers: dict[str, str], status: int, error_code: str, message: str
) -> None:
    api = await start(token="test-token", api_key="test-key", org="TEST@AdobeOrg", sandbox="prod")
    assert (await api.call("GET", "/runs")).status == 200
    answer = await api.call("GET", "/runs", headers=headers)
    assert answer.status == status
    assert answer.body == {"error_code": error_code, "message": message}


async def test_strict_sandbox(start: Start) -> None:
    api = await start(sandbox="prod")
    answer = await api.call("GET", "/runs", headers=with_header("x-sandbox-name", "dev"))
    assert answer.status == 403
    assert_envelope(answer.body, "2106-403", 403)


async def test_lenient_by_default(api: Api) -> None:
    headers = {
        "Authorization": "Bearer {ACCESS_TOKEN}",
        "x-api-key": "{API_KEY}",
        "x-gw-ims-org-id": "{ORG_ID}",
        "x-sandbox-name": "{SANDBOX_NAME}",
    }
    assert (await api.call("GET", "/runs", headers=headers)).status == 200


# -- POST /runs --------------------------------------------------------------------------


async def test_empty_body_is_1405(api: Api) -> None:
    for data in (b"", b"   ", b"null"):
        answer = await api.call("POST", "/runs", data=data)
        assert answer.status == 400
        assert_envelope(answer.body, "1405-400", 400)


@pytest.mark.parametrize("flow_id", [None, "", "   "], ids=["null", "empty", "blank"])
async def test_null_or_empty_flow_id_is_1446(api: Api, flow_id: str | None) -> None:
    body = {"flowId": flow_id, "params": {"windowStartTime": "1", "windowEndTime": "2"}}
    answer = await api.call("POST", "/runs", json=body)
    assert answer.status == 400
    assert_envelope(answer.body, "1446-400", 400)
    answer = await api.call("POST", "/runs", json={"params": body["params"]})
    assert_envelope(answer.body, "1446-400", 400)


async def test_unknown_flow_is_1430_when_flows_are_declared(start: Start) -> None:
    api = await start(flows=((FLOW, "file"),))
    answer = await api.create(flow="not-a-flow")
    assert answer.status == 400
    assert "not-a-flow" in assert_envelope(answer.body, "1430-400", 400)
    assert (await api.create(flow=FLOW)).status == 201
    answer = await api.call("GET", "/flows/not-a-flow")
    assert answer.status == 404
    assert_envelope(answer.body, "1439-404", 404)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"windowStartTime": "1651584991"}, "windowEndTime is required"),
        ({"windowEndTime": "1651584991"}, "windowStartTime is required"),
        ({"windowStartTime": "20", "windowEndTime": "10"}, "must be before"),
        ({"windowStartTime": "10", "windowEndTime": "10"}, "must be before"),
        ({"windowStartTime": "1651584991", "windowEndTime": "16515859567"}, "11 digits"),
        ({"windowStartTime": "1651584991000", "windowEndTime": "1651585956000"}, "milliseconds"),
        ({"windowStartTime": "-5", "windowEndTime": "10"}, "unix time in seconds"),
        ({"windowStartTime": "1.5", "windowEndTime": "10"}, "unix time in seconds"),
        ({"windowStartTime": True, "windowEndTime": "10"}, "unix time in seconds"),
        ({"windowStartTime": "1", "windowEndTime": "2", "deltaColumn": {}}, "deltaColumn"),
        ({"windowStartTime": "1", "windowEndTime": "2", "deltaColumn": "DOB"}, "deltaColumn"),
    ],
)
async def test_bad_params_are_1400_with_a_clear_message(
    api: Api, params: dict[str, Any], words: str
) -> None:
    answer = await api.call("POST", "/runs", json={"flowId": FLOW, "params": params})
    assert answer.status == 400
    assert words in assert_envelope(answer.body, "1400-400", 400)


async def test_malformed_bodies_are_1400(api: Api) -> None:
    for data in (b"{not json", b"[1, 2]", b'{"flowId": 5, "params": {}}', b'{"flowId": "f"}'):
        answer = await api.call("POST", "/runs", data=data)
        assert answer.status == 400
        assert_envelope(answer.body, "1400-400", 400)


# -- deltaColumn -------------------------------------------------------------------------


async def test_table_flow_first_run_needs_delta_column(start: Start) -> None:
    api = await start(flows=((FLOW, "table"),))
    answer = await api.create()
    assert answer.status == 400
    assert "deltaColumn" in assert_envelope(answer.body, "1450-400", 400)
    assert (await api.create(delta="DOB")).status == 201
    # Later runs may leave it out, or repeat the same one.
    assert (await api.create(start=START + 3600)).status == 201
    assert (await api.create(start=START + 7200, delta="DOB")).status == 201


async def test_delta_column_cannot_change(api: Api) -> None:
    assert (await api.create(delta="DOB")).status == 201
    answer = await api.create(start=START + 3600, delta="updated_at")
    assert answer.status == 400
    message = assert_envelope(answer.body, "1451-400", 400)
    assert "DOB" in message
    assert "updated_at" in message
    flow = (await api.call("GET", f"/flows/{FLOW}")).body["items"][0]
    assert flow["transformations"][0]["params"]["deltaColumn"] == {"name": "DOB"}


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "first-run-decides"])
async def test_file_flow_refuses_delta_column(start: Start, declared: bool) -> None:
    api = await start(flows=((FLOW, "file"),) if declared else ())
    if not declared:
        assert (await api.create()).status == 201  # no deltaColumn: a file-based flow
    answer = await api.create(start=START + 3600, delta="DOB")
    assert answer.status == 400
    assert "deltaColumn" in assert_envelope(answer.body, "1452-400", 400)


# -- runs and re-trigger -----------------------------------------------------------------


async def test_unknown_run_is_404(api: Api) -> None:
    for method, path in [("GET", "/runs/nope"), ("POST", "/runs/nope/action?op=re-trigger")]:
        answer = await api.call(method, path)
        assert answer.status == 404
        assert_envelope(answer.body, "1431-404", 404)


async def test_retrigger_of_a_run_that_did_not_fail_is_refused(api: Api) -> None:
    run_id = (await api.create()).body["id"]
    # Default lifecycle: scheduled for 0.2 s, then inProgress for 0.5 s, then success.
    for status, wait in (("scheduled", 0.3), ("inProgress", 0.5), ("success", 0.0)):
        answer = await api.call("POST", f"/runs/{run_id}/action", params={"op": "re-trigger"})
        assert answer.status == 400
        assert f"is {status}:" in assert_envelope(answer.body, "1460-400", 400)
        api.clock.advance(wait)


async def test_unsupported_action(api: Api) -> None:
    run_id = (await api.create()).body["id"]
    answer = await api.call("POST", f"/runs/{run_id}/action", params={"op": "cancel"})
    assert answer.status == 400
    assert_envelope(answer.body, "1434-400", 400)


async def test_bad_list_queries_are_1400(api: Api) -> None:
    for params in (
        {"property": "flowId"},
        {"property": "flowId=="},
        {"orderby": "updatedAt"},
        {"limit": "0"},
        {"limit": "ten"},
        {"continuationToken": "garbage"},
    ):
        answer = await api.call("GET", "/runs", params=params)
        assert answer.status == 400, params
        assert_envelope(answer.body, "1400-400", 400)


async def test_unknown_route_under_the_prefix_is_an_enveloped_404(api: Api) -> None:
    answer = await api.call("GET", "/connections")
    assert answer.status == 404
    assert_envelope(answer.body, "1404-404", 404)
    # Like every Flow Service request, it needs the headers first.
    answer = await api.call("GET", "/connections", headers={})
    assert answer.status == 403
