"""Tokens: OAuth client credentials (cached, renewed in time, single-flight) and a static token."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from pydantic import SecretStr
from yarl import URL

from backfill.auth import DEFAULT_SCOPES, IMS_URL, ClientCredentials, StaticToken
from backfill.errors import AuthError, ConfigError, PermanentError, RetryableError, TransportError

from .mock_http import Mocked

SECRET = "p8e-very-secret-value"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def credentials(session: aiohttp.ClientSession, clock: FakeClock) -> ClientCredentials:
    return ClientCredentials(
        session, client_id="my-client-id", client_secret=SecretStr(SECRET), clock=clock
    )


def token_answer(token: str, expires_in: int = 86399) -> dict[str, Any]:
    return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}


# -------------------------------------------------------------- client credentials


async def test_the_form_is_posted_to_ims(credentials: ClientCredentials, mocked: Mocked) -> None:
    mocked.post(IMS_URL, payload=token_answer("t1"))

    assert await credentials.token() == "t1"

    (request,) = mocked.sent("POST", IMS_URL)
    assert request["data"] == {
        "grant_type": "client_credentials",
        "client_id": "my-client-id",
        "client_secret": SECRET,
        "scope": DEFAULT_SCOPES,
    }
    assert credentials.renewals == 1


async def test_custom_scopes_and_ims_url(session: aiohttp.ClientSession, mocked: Mocked) -> None:
    url = "https://ims-eu1.example.test/ims/token/v3"
    provider = ClientCredentials(
        session,
        client_id="id",
        client_secret=SecretStr(SECRET),
        scopes="openid,AdobeID",
        ims_url=url,
    )
    mocked.post(url, payload=token_answer("t-eu"))

    assert await provider.token() == "t-eu"
    ((_, sent),) = [(key, calls) for key, calls in mocked.requests.items()]
    assert sent[0].kwargs["data"]["scope"] == "openid,AdobeID"


async def test_the_token_is_cached(
    credentials: ClientCredentials, mocked: Mocked, clock: FakeClock
) -> None:
    mocked.post(IMS_URL, payload=token_answer("t1"))

    tokens = []
    for _ in range(5):
        tokens.append(await credentials.token())
        clock.now += 3600

    assert tokens == ["t1"] * 5
    assert len(mocked.sent("POST", IMS_URL)) == 1


@pytest.mark.parametrize(
    ("expires_in", "renew_after"),
    [(86399, 86399 - 300), (3600, 3300), (100, 80), (1000, 800)],
    ids=["a-day", "an-hour", "short-lived", "margin-is-a-fifth"],
)
async def test_the_token_is_renewed_a_margin_before_it_expires(
    credentials: ClientCredentials,
    mocked: Mocked,
    clock: FakeClock,
    expires_in: int,
    renew_after: int,
) -> None:
    mocked.post(IMS_URL, payload=token_answer("t1", expires_in))
    mocked.post(IMS_URL, payload=token_answer("t2", expires_in))
    started = clock.now

    assert await credentials.token() == "t1"
    clock.now = started + renew_after - 0.001
    assert await credentials.token() == "t1"
    clock.now = started + renew_after
    assert await credentials.token() == "t2"

    assert len(mocked.sent("POST", IMS_URL)) == 2
    assert credentials.renewals == 2


async def test_concurrent_callers_share_one_request(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    mocked.post(IMS_URL, payload=token_answer("t1"))
    mocked.post(IMS_URL, payload=token_answer("t2"))

    first = await asyncio.gather(*(credentials.token() for _ in range(50)))
    renewed = await asyncio.gather(
        *(credentials.renew("t1") for _ in range(25)), *(credentials.token() for _ in range(25))
    )

    assert first == ["t1"] * 50
    assert renewed == ["t2"] * 50
    assert len(mocked.sent("POST", IMS_URL)) == 2


async def test_renew_after_someone_else_renewed_needs_no_request(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    mocked.post(IMS_URL, payload=token_answer("t1"))
    mocked.post(IMS_URL, payload=token_answer("t2"))

    stale = await credentials.token()
    assert await credentials.renew(stale) == "t2"  # the first worker's 401
    assert await credentials.renew(stale) == "t2"  # a second worker's 401 on the old token

    assert len(mocked.sent("POST", IMS_URL)) == 2
    assert await credentials.token() == "t2"


async def test_renew_with_the_current_token_fetches_a_new_one(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    mocked.post(IMS_URL, payload=token_answer("t1"))
    mocked.post(IMS_URL, payload=token_answer("t2"))
    mocked.post(IMS_URL, payload=token_answer("t3"))

    await credentials.token()
    assert await credentials.renew("t1") == "t2"
    assert await credentials.renew("t2") == "t3"

    assert len(mocked.sent("POST", IMS_URL)) == 3


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            400,
            {"error": "invalid_client", "error_description": "invalid client_id parameter"},
            "invalid client_id parameter",
        ),
        (401, {"error": "invalid_client"}, "invalid_client"),
        (400, {"error": "invalid_scope", "error_description": "bad scope"}, "bad scope"),
        (403, {}, "HTTP 403"),
        (200, {"token_type": "bearer"}, "HTTP 200"),
    ],
    ids=["bad-client", "no-description", "bad-scope", "no-body", "no-token"],
)
async def test_ims_refusals_are_auth_errors_with_the_reason(
    credentials: ClientCredentials,
    mocked: Mocked,
    status: int,
    body: dict[str, Any],
    reason: str,
) -> None:
    mocked.post(IMS_URL, status=status, payload=body)

    with pytest.raises(AuthError) as info:
        await credentials.token()

    message = str(info.value)
    assert reason in message
    assert "BACKFILL_CLIENT_ID" in message
    assert SECRET not in message
    assert info.value.status == status
    assert isinstance(info.value, PermanentError)
    assert credentials.renewals == 0


@pytest.mark.parametrize("status", [404, 405])
async def test_a_url_that_is_not_a_token_endpoint_is_named_not_the_credentials(
    credentials: ClientCredentials, mocked: Mocked, status: int
) -> None:
    mocked.post(IMS_URL, status=status, body=b"404: Not Found", content_type="text/plain")

    with pytest.raises(ConfigError) as info:
        await credentials.token()

    message = str(info.value)
    assert message.startswith("ims_url: ")
    assert IMS_URL in message
    assert "BACKFILL_IMS_URL" in message
    assert "BACKFILL_CLIENT_ID" not in message  # credentials are not what is wrong


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_ims_outages_are_retryable(
    credentials: ClientCredentials, mocked: Mocked, status: int
) -> None:
    mocked.post(IMS_URL, status=status, body=b"<html>down</html>", content_type="text/html")

    with pytest.raises(RetryableError) as info:
        await credentials.token()

    assert not isinstance(info.value, AuthError)
    assert info.value.status == status


async def test_a_failed_fetch_is_tried_again_by_the_next_caller(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    mocked.post(IMS_URL, status=503, body=b"")
    mocked.post(IMS_URL, payload=token_answer("t1"))

    with pytest.raises(RetryableError):
        await credentials.token()
    assert await credentials.token() == "t1"

    assert len(mocked.sent("POST", IMS_URL)) == 2


async def test_every_concurrent_caller_sees_the_failure(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    mocked.post(IMS_URL, status=401, payload={"error": "invalid_client"})

    results = await asyncio.gather(
        *(credentials.token() for _ in range(10)), return_exceptions=True
    )

    assert all(isinstance(r, AuthError) for r in results)
    assert len(mocked.sent("POST", IMS_URL)) == 1


async def test_ims_unreachable_is_a_transport_error(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    key = ConnectionKey("ims-na1.adobelogin.com", 443, True, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))
    mocked.post(IMS_URL, exception=refused)

    with pytest.raises(TransportError) as info:
        await credentials.token()

    assert not info.value.in_doubt
    assert isinstance(info.value, RetryableError)


async def test_an_ims_host_that_does_not_resolve_at_first_is_a_configuration_error(
    credentials: ClientCredentials, mocked: Mocked, clock: FakeClock
) -> None:
    key = ConnectionKey("ims-na1.adobelogin.com", 443, True, True, None, None, None)
    unresolved = aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name does not resolve"))
    mocked.post(IMS_URL, exception=unresolved)

    with pytest.raises(ConfigError, match="check BACKFILL_IMS_URL") as info:
        await credentials.token()
    assert info.value.exit_code == 2

    # Once a token came from there, the same failure is an outage, retried like any other.
    mocked.post(IMS_URL, payload=token_answer("tok-1", expires_in=600))
    await credentials.token()
    clock.now += 600
    mocked.post(IMS_URL, exception=unresolved)
    with pytest.raises(TransportError):
        await credentials.token()


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    credentials: ClientCredentials, mocked: Mocked
) -> None:
    release = asyncio.Event()

    async def slow_ims(url: URL, **kwargs: Any) -> None:
        await release.wait()

    mocked.post(IMS_URL, payload=token_answer("t1"), callback=slow_ims)
    impatient = asyncio.create_task(credentials.token())
    patient = asyncio.create_task(credentials.token())
    for _ in range(5):
        await asyncio.sleep(0)

    impatient.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()

    assert await patient == "t1"
    assert impatient.cancelled()
    assert len(mocked.sent("POST", IMS_URL)) == 1


# ---------------------------------------------------------------------- static token


async def test_static_token() -> None:
    provider = StaticToken(SecretStr("eyJ.static"))

    assert await provider.token() == "eyJ.static"
    assert provider.renewals == 0
    assert "eyJ.static" not in repr(provider.__dict__)


async def test_a_static_token_cannot_be_renewed() -> None:
    provider = StaticToken(SecretStr("eyJ.static"))

    with pytest.raises(AuthError, match="expired") as info:
        await provider.renew("eyJ.static")

    message = str(info.value)
    assert "BACKFILL_ACCESS_TOKEN" in message
    assert "eyJ.static" not in message
    assert info.value.status == 401
