"""The Flow Service client against aioresponses: requests, answer shapes, typed errors, paging."""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import ssl
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.client_reqrep import ConnectionKey
from yarl import URL

from backfill.client import ApiIdentity, CreatedRun, FlowServiceClient
from backfill.errors import (
    ApiError,
    AuthError,
    NotFlowService,
    PermanentError,
    RateLimited,
    RetryableError,
    ServerError,
    TransportError,
)
from backfill.state import RunStatus

from .mock_http import Mocked

BASE = "https://platform.adobe.io/data/foundation/flowservice"
RUNS = f"{BASE}/runs"
RUNS_ANY = re.compile(r"^https://platform\.adobe\.io/data/foundation/flowservice/runs(\?.*)?$")
FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
IDENTITY = ApiIdentity(api_key="my-client-id", org_id="ABC123@AdobeOrg", sandbox_name="dev")

# The tutorial's answer to POST /runs: the whole run object.
TUTORIAL_RUN: dict[str, Any] = {
    "id": "3abea21c-7e36-4be1-bec1-d3bad0e3e0de",
    "createdAt": 1651584991000,
    "updatedAt": 1651584991000,
    "createdBy": "acme@AdobeID",
    "updatedBy": "acme@AdobeID",
    "createdClient": "acme",
    "updatedClient": "acme",
    "sandboxId": "d537df80-c5d7-11e9-aafb-87c71c35cac8",
    "sandboxName": "prod",
    "imsOrgId": "ABC123@AdobeOrg",
    "flowId": "3abea21c-7e36-4be1-bec1-d3bad0e3e0de",
    "params": {
        "startTime": "1651584991",
        "windowStartTime": "1651584991",
        "windowEndTime": "1651585956",
    },
    "etag": '"8e0052a2-0000-0200-0000-6271d1df0000"',
    "metrics": {"statusSummary": {"status": "scheduled"}},
    "activities": [],
}


class FakeTokens:
    """A token provider that hands out tok-1, then tok-2, ... on every renewal."""

    def __init__(self) -> None:
        self.current = "tok-1"
        self.renewed: list[str] = []
        self.renewals = 0

    async def token(self) -> str:
        return self.current

    async def renew(self, stale: str) -> str:
        self.renewed.append(stale)
        self.renewals += 1
        self.current = f"tok-{self.renewals + 1}"
        return self.current


@pytest.fixture
def tokens() -> FakeTokens:
    return FakeTokens()


@pytest.fixture
def client(session: aiohttp.ClientSession, tokens: FakeTokens) -> FlowServiceClient:
    return FlowServiceClient(session, BASE + "/", IDENTITY, tokens)


def calls(mock: Mocked) -> list[tuple[str, URL, dict[str, Any]]]:
    """Every request aioresponses saw, in order: (method, url, keyword arguments)."""
    found: list[tuple[int, str, URL, dict[str, Any]]] = []
    order = 0
    for (method, url), requests in mock.requests.items():
        for request in requests:
            found.append((order, method, url, dict(request.kwargs)))
            order += 1
    return [(method, url, kwargs) for _, method, url, kwargs in found]


def connection_refused() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("platform.adobe.io", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


# ------------------------------------------------------------------- POST /runs


async def test_create_run_sends_the_headers_and_the_window_as_digits(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(RUNS, status=201, payload={"items": [{"id": "run-1", "etag": "e1"}]})

    await client.create_run(FLOW, 1651584991, 1651585956)

    ((method, url, kwargs),) = calls(mocked)
    assert (method, str(url)) == ("POST", RUNS)
    headers = kwargs["headers"]
    assert headers["Authorization"] == "Bearer tok-1"
    assert headers["x-api-key"] == "my-client-id"
    assert headers["x-gw-ims-org-id"] == "ABC123@AdobeOrg"
    assert headers["x-sandbox-name"] == "dev"
    assert headers["Content-Type"] == "application/json"
    body = orjson.loads(kwargs["data"])
    assert body == {
        "flowId": FLOW,
        "params": {"windowStartTime": "1651584991", "windowEndTime": "1651585956"},
    }


async def test_create_run_sends_the_delta_column_only_when_given(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(RUNS, status=201, payload={"items": [{"id": "run-1"}]})

    await client.create_run(FLOW, 1651584991, 1651585956, delta_column="DOB")

    ((_, _, kwargs),) = calls(mocked)
    params = orjson.loads(kwargs["data"])["params"]
    assert params == {
        "windowStartTime": "1651584991",
        "windowEndTime": "1651585956",
        "deltaColumn": {"name": "DOB"},
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (TUTORIAL_RUN, CreatedRun(TUTORIAL_RUN["id"], TUTORIAL_RUN["etag"])),
        ({"items": [{"id": "run-2", "etag": '"e2"'}]}, CreatedRun("run-2", '"e2"')),
        ({"items": [{"id": "run-3"}]}, CreatedRun("run-3", None)),
    ],
    ids=["run-object", "items", "items-no-etag"],
)
async def test_the_run_id_is_read_from_every_documented_answer(
    client: FlowServiceClient, mocked: Mocked, answer: dict[str, Any], expected: CreatedRun
) -> None:
    mocked.post(RUNS, status=201, payload=answer)

    assert await client.create_run(FLOW, 1651584991, 1651585956) == expected


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"items": []}', b'{"items": [{"etag": "x"}]}', b'{"id": ""}', b'{"id": 7}', b""],
    ids=["empty-object", "no-items", "item-without-id", "empty-id", "numeric-id", "no-body"],
)
async def test_a_created_answer_without_a_run_id_is_an_error_in_doubt(
    client: FlowServiceClient, mocked: Mocked, body: bytes
) -> None:
    mocked.post(RUNS, status=201, body=body)

    with pytest.raises(ServerError, match="no run id") as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.in_doubt, "the service may have created a run it did not tell us about"


@pytest.mark.parametrize("body", [b"<html>created</html>", b'{"items": [{"id": "run-'])
async def test_a_created_answer_that_is_not_json_is_an_api_error_in_doubt(
    client: FlowServiceClient, mocked: Mocked, body: bytes
) -> None:
    mocked.post(RUNS, status=201, body=body, content_type="text/html")

    with pytest.raises(ApiError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.in_doubt


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("status", "kind", "in_doubt"),
    [
        (429, RateLimited, False),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
        (504, ServerError, True),
        (400, PermanentError, False),
        (404, PermanentError, False),
        (409, PermanentError, False),
        (422, PermanentError, False),
        (403, AuthError, False),
    ],
)
async def test_error_classes(
    client: FlowServiceClient,
    mocked: Mocked,
    status: int,
    kind: type[ApiError],
    in_doubt: bool,
) -> None:
    client.confirmed = True  # a bare 404 at first contact is a wrong base URL (see below)
    mocked.post(RUNS, status=status, body=b"")

    with pytest.raises(ApiError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert type(info.value) is kind
    assert info.value.status == status
    assert info.value.in_doubt is in_doubt
    assert info.value.request == "POST /runs"
    assert isinstance(info.value, RetryableError) == (status == 429 or status >= 500)
    assert f"HTTP {status}" in str(info.value)


async def test_permanent_errors_are_not_auth_errors_unless_401_or_403(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(RUNS, status=400, payload={"error_code": "400003", "message": "Missing header"})

    with pytest.raises(PermanentError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert not isinstance(info.value, AuthError)


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), ("0", 0.0), ("2.5", 2.5)])
async def test_retry_after_in_seconds(
    client: FlowServiceClient, mocked: Mocked, value: str, expected: float
) -> None:
    mocked.post(RUNS, status=429, headers={"Retry-After": value}, body=b"")

    with pytest.raises(RateLimited) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.retry_after == expected


async def test_retry_after_as_an_http_date(client: FlowServiceClient, mocked: Mocked) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    mocked.post(RUNS, status=429, headers={"Retry-After": when}, body=b"")

    with pytest.raises(RateLimited) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.retry_after is not None
    assert 100.0 <= info.value.retry_after <= 121.0


async def test_retry_after_in_the_past_is_zero(client: FlowServiceClient, mocked: Mocked) -> None:
    mocked.post(
        RUNS, status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, body=b""
    )

    with pytest.raises(ServerError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.retry_after == 0.0


@pytest.mark.parametrize("value", ["soon", "", "-5x", "inf", "1e999"])
async def test_a_retry_after_that_is_not_a_time_is_ignored(
    client: FlowServiceClient, mocked: Mocked, value: str
) -> None:
    mocked.post(RUNS, status=429, headers={"Retry-After": value}, body=b"")

    with pytest.raises(RateLimited) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.retry_after is None


async def test_a_503_with_retry_after_carries_it(client: FlowServiceClient, mocked: Mocked) -> None:
    mocked.post(RUNS, status=503, headers={"Retry-After": "30"}, body=b"")

    with pytest.raises(RetryableError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.retry_after == 30.0


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (
            403,
            {"error_code": "403003", "message": "Api Key is invalid"},
            "403003",
            "Api Key is invalid",
        ),
        (
            400,
            {
                "type": "https://ns.adobe.com/aep/errors/FLOW-1430-400",
                "title": "Bad request",
                "status": 400,
                "report": {"detailed-message": "Flow not found: abc", "request-id": "r-1"},
            },
            "1430-400",
            "Flow not found: abc",
        ),
        (
            400,
            {"type": "https://ns.adobe.com/aep/errors/FLOW-1405-400", "title": "Empty body"},
            "1405-400",
            "Empty body",
        ),
        (
            401,
            {"error": "invalid_token", "error_description": "the token has expired"},
            "invalid_token",
            "the token has expired",
        ),
        (500, {"message": "Internal failure"}, None, "Internal failure"),
    ],
    ids=["gateway", "flow-service", "flow-service-title", "ims", "plain-message"],
)
async def test_errors_carry_the_bodys_code_and_message(
    client: FlowServiceClient,
    mocked: Mocked,
    status: int,
    body: dict[str, Any],
    code: str | None,
    message: str,
) -> None:
    mocked.post(RUNS, status=status, payload=body, repeat=True)

    with pytest.raises(ApiError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.status == status
    assert info.value.code == code
    assert info.value.detail == message
    assert message in str(info.value)
    if code:
        assert f"[{code}]" in str(info.value)


async def test_an_error_body_that_is_text_is_the_message(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(RUNS, status=502, body=b"Bad Gateway from the edge\n", content_type="text/plain")

    with pytest.raises(ServerError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.detail == "Bad Gateway from the edge"


async def test_a_401_renews_the_token_once_and_retries(
    client: FlowServiceClient, mocked: Mocked, tokens: FakeTokens
) -> None:
    mocked.post(
        RUNS, status=401, payload={"error_code": "401013", "message": "Oauth token is not valid"}
    )
    mocked.post(RUNS, status=201, payload={"items": [{"id": "run-1"}]})

    created = await client.create_run(FLOW, 1651584991, 1651585956)

    assert created.run_id == "run-1"
    assert tokens.renewed == ["tok-1"]
    sent = [kwargs["headers"]["Authorization"] for _, _, kwargs in calls(mocked)]
    assert sent == ["Bearer tok-1", "Bearer tok-2"]
    assert client.responses == Counter({"401": 1, "201": 1})


async def test_tokens_refused_as_soon_as_issued_are_an_auth_error_after_two_renewals(
    client: FlowServiceClient, mocked: Mocked, tokens: FakeTokens
) -> None:
    body = {"error_code": "401013", "message": "Oauth token is not valid"}
    mocked.post(RUNS, status=401, payload=body, repeat=True)

    with pytest.raises(AuthError, match="Oauth token is not valid") as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.status == 401
    assert tokens.renewed == ["tok-1", "tok-2"]  # each 401 on a new token, then it stops
    assert len(calls(mocked)) == 3


async def test_a_renewal_that_fails_is_the_error(
    session: aiohttp.ClientSession, mocked: Mocked
) -> None:
    class Expired(FakeTokens):
        async def renew(self, stale: str) -> str:
            raise AuthError("the access token was refused", request="Authorization", status=401)

    client = FlowServiceClient(session, BASE, IDENTITY, Expired())
    mocked.post(RUNS, status=401, body=b"")

    with pytest.raises(AuthError, match="the access token was refused"):
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert len(calls(mocked)) == 1


# -------------------------------------------------------------------- transport


@pytest.mark.parametrize(
    ("exception", "in_doubt"),
    [
        (connection_refused(), False),
        (aiohttp.ConnectionTimeoutError("connect timed out"), False),
        (aiohttp.ServerDisconnectedError(), True),
        (TimeoutError(), True),
        (aiohttp.SocketTimeoutError("read timed out"), True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True),
        (aiohttp.ClientPayloadError("Response payload is not completed"), True),
    ],
    ids=["refused", "connect-timeout", "disconnect", "timeout", "read-timeout", "reset", "payload"],
)
async def test_transport_errors(
    client: FlowServiceClient, mocked: Mocked, exception: Exception, in_doubt: bool
) -> None:
    mocked.post(RUNS, exception=exception)

    with pytest.raises(TransportError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.in_doubt is in_doubt
    assert info.value.status is None
    assert info.value.request == "POST /runs"
    assert isinstance(info.value, RetryableError)
    assert info.value.__cause__ is exception
    assert client.responses == Counter({"error": 1})


async def test_a_cancelled_request_is_not_a_transport_error(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(RUNS, exception=asyncio.CancelledError())

    with pytest.raises(asyncio.CancelledError):
        await client.create_run(FLOW, 1651584991, 1651585956)


# ---------------------------------------------------------------------- re-trigger


async def test_retrigger_posts_the_action(client: FlowServiceClient, mocked: Mocked) -> None:
    url = f"{RUNS}/run-1/action?op=re-trigger"
    mocked.post(url, status=200, payload={"id": "run-1", "etag": '"e9"'})

    created = await client.retrigger("run-1")

    assert created == CreatedRun("run-1", '"e9"')
    ((method, sent, kwargs),) = calls(mocked)
    assert (method, sent.path, sent.query.get("op")) == (
        "POST",
        "/data/foundation/flowservice/runs/run-1/action",
        "re-trigger",
    )
    assert kwargs["headers"]["Authorization"] == "Bearer tok-1"


async def test_retrigger_without_an_id_in_the_answer_keeps_the_run(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(f"{RUNS}/run-1/action?op=re-trigger", status=200, payload={"etag": '"e9"'})

    created = await client.retrigger("run-1")

    assert created.run_id == "run-1"


# ------------------------------------------------------------------------ listing


def run(run_id: str, status: str, start: int = 1651584991, **extra: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "flowId": FLOW,
        "params": {"windowStartTime": str(start), "windowEndTime": str(start + 3600)},
        "metrics": {"statusSummary": {"status": status, **extra}},
    }


async def test_list_runs_builds_the_query(client: FlowServiceClient, mocked: Mocked) -> None:
    mocked.get(RUNS_ANY, payload={"items": [], "_links": {}})

    page = await client.list_runs(FLOW, ids=["r1", "r2"], created_since_ms=1651584991000, limit=50)

    ((method, url, kwargs),) = calls(mocked)
    assert method == "GET"
    assert url.path == "/data/foundation/flowservice/runs"
    assert sorted(url.query.getall("property")) == sorted(
        [f"flowId=={FLOW}", "id==r1,r2", "createdAt>=1651584991000"]
    )
    assert url.query.get("limit") == "50"
    assert url.query.get("orderby") == "createdAt"
    assert kwargs["headers"]["x-sandbox-name"] == "dev"
    assert page.runs == []
    assert page.next_href is None


async def test_list_runs_with_only_a_flow(client: FlowServiceClient, mocked: Mocked) -> None:
    mocked.get(RUNS_ANY, payload={"items": []})

    await client.list_runs(FLOW)

    ((_, url, _),) = calls(mocked)
    assert url.query.getall("property") == [f"flowId=={FLOW}"]
    assert url.query.get("limit") == "100"


async def test_list_runs_parses_run_objects(client: FlowServiceClient, mocked: Mocked) -> None:
    errors = [{"code": "CONNECTOR-2001", "message": "source unreachable"}, "not an error object"]
    items = [
        run("r1", "SUCCESS"),
        run("r2", "inprogress", start=1651588591),
        run("r3", "Failed", errors=errors),
        run("r4", "exploded"),
        run("r5", "scheduled"),
        {"id": "r6"},  # no params, no metrics
        {"flowId": FLOW},  # no id: skipped
        "not even an object",
    ]
    mocked.get(RUNS_ANY, payload={"items": items, "_links": {}})

    page = await client.list_runs(FLOW)

    assert [r.run_id for r in page.runs] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert [r.status for r in page.runs] == [
        RunStatus.SUCCESS,
        RunStatus.IN_PROGRESS,
        RunStatus.FAILED,
        RunStatus.UNKNOWN,
        RunStatus.SCHEDULED,
        RunStatus.UNKNOWN,
    ]
    assert page.runs[3].raw_status == "exploded"
    assert (page.runs[1].window_start, page.runs[1].window_end) == (1651588591, 1651592191)
    assert page.runs[0].flow_id == FLOW
    assert page.runs[2].errors == ({"code": "CONNECTOR-2001", "message": "source unreachable"},)
    assert (page.runs[5].window_start, page.runs[5].window_end) == (None, None)


async def test_a_listing_that_is_not_an_object_is_an_empty_page(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.get(RUNS_ANY, status=200, body=b"[]")

    page = await client.list_runs(FLOW)

    assert page.runs == []
    assert page.next_href is None


async def test_a_listing_that_is_not_json_is_an_api_error(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.get(RUNS_ANY, status=200, body=b"<html>maintenance</html>", content_type="text/html")

    with pytest.raises(ApiError):
        await client.list_runs(FLOW)


@pytest.mark.parametrize(
    ("base", "href", "expected"),
    [
        (BASE, "/runs?continuationToken=abc", f"{RUNS}?continuationToken=abc"),
        (BASE, "runs?continuationToken=abc", f"{RUNS}?continuationToken=abc"),
        (
            BASE,
            "/data/foundation/flowservice/runs?continuationToken=abc",
            f"{RUNS}?continuationToken=abc",
        ),
        (BASE, f"{RUNS}?continuationToken=abc", f"{RUNS}?continuationToken=abc"),
        (
            "http://127.0.0.1:8080",
            "/runs?continuationToken=abc",
            "http://127.0.0.1:8080/runs?continuationToken=abc",
        ),
    ],
    ids=["relative", "relative-no-slash", "absolute-path", "absolute-url", "emulator"],
)
async def test_the_next_page_is_followed(
    session: aiohttp.ClientSession,
    tokens: FakeTokens,
    mocked: Mocked,
    base: str,
    href: str,
    expected: str,
) -> None:
    client = FlowServiceClient(session, base, IDENTITY, tokens)
    mocked.get(
        re.compile(re.escape(base) + r"/runs\?.*property=.*"),
        payload={
            "items": [run("r1", "success")],
            "_links": {"next": {"href": href}},
        },
    )
    mocked.get(expected, payload={"items": [run("r2", "success")], "_links": {}})

    first = await client.list_runs(FLOW)
    second = await client.list_runs(FLOW, href=first.next_href)

    assert first.next_href == href
    assert [r.run_id for r in second.runs] == ["r2"]
    assert second.next_href is None
    assert str(calls(mocked)[-1][1]) == expected


@pytest.mark.parametrize(
    "href",
    [
        "https://evil.example/runs?continuationToken=abc",
        "http://platform.adobe.io/data/foundation/flowservice/runs?continuationToken=abc",
        "https://platform.adobe.io:8443/data/foundation/flowservice/runs?x=1",
    ],
    ids=["other-host", "other-scheme", "other-port"],
)
async def test_a_next_page_on_another_origin_is_refused(
    client: FlowServiceClient, mocked: Mocked, href: str
) -> None:
    with pytest.raises(PermanentError, match="another host"):
        await client.list_runs(FLOW, href=href)

    assert calls(mocked) == []


async def test_responses_are_counted_by_status(client: FlowServiceClient, mocked: Mocked) -> None:
    mocked.post(RUNS, status=201, payload={"items": [{"id": "run-1"}]})
    mocked.post(RUNS, status=429, body=b"")
    mocked.post(RUNS, status=500, body=b"")
    mocked.post(RUNS, exception=connection_refused())
    mocked.get(RUNS_ANY, payload={"items": []}, repeat=True)

    await client.create_run(FLOW, 1, 2)
    for _ in range(3):
        with pytest.raises(RetryableError):
            await client.create_run(FLOW, 1, 2)
    await client.list_runs(FLOW)
    await client.list_runs(FLOW)

    assert client.responses == Counter({"201": 1, "429": 1, "500": 1, "error": 1, "200": 2})


async def test_a_new_token_changes_the_header(
    client: FlowServiceClient, mocked: Mocked, tokens: FakeTokens
) -> None:
    mocked.get(RUNS_ANY, payload={"items": []}, repeat=True)

    await client.list_runs(FLOW)
    tokens.current = "tok-new"
    await client.list_runs(FLOW)

    sent = [kwargs["headers"]["Authorization"] for _, _, kwargs in calls(mocked)]
    assert sent == ["Bearer tok-1", "Bearer tok-new"]


# ---------------------------------------------------------------- first contact


def _key() -> ConnectionKey:
    return ConnectionKey("platform.adobe.io", 443, True, True, None, None, None)


def dns_failure() -> aiohttp.ClientConnectorDNSError:
    return aiohttp.ClientConnectorDNSError(_key(), socket.gaierror(-2, "Name does not resolve"))


def tls_failure() -> aiohttp.ClientConnectorSSLError:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    return aiohttp.ClientConnectorSSLError(_key(), error)


@pytest.mark.parametrize(
    ("exception", "says"),
    [(dns_failure(), "does not resolve"), (tls_failure(), "TLS handshake failed")],
    ids=["dns", "tls"],
)
async def test_a_wrong_base_url_at_first_contact_is_a_configuration_error(
    client: FlowServiceClient, mocked: Mocked, exception: Exception, says: str
) -> None:
    mocked.post(RUNS, exception=exception)

    with pytest.raises(NotFlowService, match=says) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert info.value.exit_code == 2
    assert "--base-url" in str(info.value)
    assert BASE in str(info.value)


async def test_after_first_contact_a_dns_failure_is_an_outage_not_a_wrong_url(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.get(RUNS_ANY, payload={"items": []})
    mocked.post(RUNS, exception=dns_failure())

    await client.list_runs(FLOW)
    with pytest.raises(TransportError) as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert client.confirmed
    assert info.value.in_doubt is False


async def test_a_refused_first_contact_is_retryable_and_names_the_url(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    mocked.post(RUNS, exception=connection_refused())

    with pytest.raises(TransportError, match="check --base-url") as info:
        await client.create_run(FLOW, 1651584991, 1651585956)

    assert BASE in str(info.value)
    assert info.value.in_doubt is False


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (404, b"404: Not Found", "text/plain"),
        (404, b"<html><body>Not here</body></html>", "text/html"),
        (200, b"<!DOCTYPE html><html>a web site</html>", "text/html"),
    ],
    ids=["plain-404", "html-404", "html-200-listing"],
)
async def test_an_answer_that_is_not_flow_service_is_a_configuration_error(
    client: FlowServiceClient, mocked: Mocked, status: int, body: bytes, content_type: str
) -> None:
    mocked.get(RUNS_ANY, status=status, body=body, content_type=content_type)

    with pytest.raises(NotFlowService, match="/data/foundation/flowservice") as info:
        await client.list_runs(FLOW)

    assert info.value.exit_code == 2
    assert not client.confirmed


async def test_flow_services_own_404_is_not_mistaken_for_a_wrong_url(
    client: FlowServiceClient, mocked: Mocked
) -> None:
    envelope = {
        "type": "https://ns.adobe.com/aep/errors/FLOW-1101-404",
        "title": "Resource not found",
        "status": 404,
        "report": {"detailed-message": "The resource with the given id does not exist."},
    }
    mocked.post(re.compile(r".*/action\?op=re-trigger$"), status=404, payload=envelope)

    with pytest.raises(PermanentError) as info:
        await client.retrigger("run-1")

    assert type(info.value) is PermanentError
    assert client.confirmed


# ---------------------------------------------------------------- the permit


async def test_the_permit_comes_after_the_token_and_a_401_resend_takes_its_own(
    session: aiohttp.ClientSession, mocked: Mocked, tokens: FakeTokens
) -> None:
    order: list[str] = []

    class Recording(FakeTokens):
        async def token(self) -> str:
            order.append("token")
            return await super().token()

    async def permit(what: str, *, acts: bool) -> None:
        order.append(f"permit {what} acts={acts}")

    client = FlowServiceClient(session, BASE, IDENTITY, Recording(), permit)
    mocked.post(RUNS, status=401, payload={"error_code": "401013", "message": "expired"})
    mocked.post(RUNS, status=201, payload={"id": "run-1"})

    await client.create_run(FLOW, 1651584991, 1651585956)

    permits = [step for step in order if step.startswith("permit")]
    assert permits == ["permit POST /runs acts=True"] * 2  # one per request actually sent
    assert order[0] == "token"  # credentials first, the permit right before the send
    assert order.index(permits[0]) > 0


async def test_a_token_gone_stale_while_waiting_for_the_permit_is_renewed_first(
    session: aiohttp.ClientSession, mocked: Mocked
) -> None:
    class Expiring(FakeTokens):
        async def token(self) -> str:
            return self.current

    tokens = Expiring()
    permits = 0

    async def permit(what: str, *, acts: bool) -> None:
        nonlocal permits
        permits += 1
        if permits == 1:
            tokens.current = "tok-renewed"  # renewed by another worker meanwhile

    client = FlowServiceClient(session, BASE, IDENTITY, tokens, permit)
    mocked.get(RUNS_ANY, payload={"items": []})

    await client.list_runs(FLOW)

    sent = [kwargs["headers"]["Authorization"] for _, _, kwargs in calls(mocked)]
    assert sent == ["Bearer tok-renewed"]
    assert permits == 2
