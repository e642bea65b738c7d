"""The IMS token endpoint: OAuth server-to-server client credentials, form-encoded."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import HEADERS, Api, Start

GOOD = {
    "grant_type": "client_credentials",
    "client_id": "my-client",
    "client_secret": "p8e-secret",
    "scope": "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session",
}


async def post_form(api: Api, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    answer = await api.call("POST", api.emulator.ims_url, absolute=True, headers=None, data=form)
    return answer.status, answer.body


async def test_client_credentials_grant(start: Start) -> None:
    api = await start(token_lifetime=86399)
    status, body = await post_form(api, GOOD)
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86399
    status, again = await post_form(api, GOOD)
    assert again["access_token"] != body["access_token"]
    stats = await api.stats()
    assert stats["tokens_issued"] == 2
    assert stats["requests"]["by_endpoint"]["POST /ims/token/v3"] == {"200": 2}


async def test_an_issued_token_passes_a_strict_gateway(start: Start) -> None:
    api = await start(token="only-this", client_id="my-client", client_secret="p8e-secret")
    _, body = await post_form(api, GOOD)
    headers = {**HEADERS, "Authorization": f"Bearer {body['access_token']}"}
    assert (await api.call("GET", "/runs", headers=headers)).status == 200
    headers["Authorization"] = "Bearer only-this"
    assert (await api.call("GET", "/runs", headers=headers)).status == 200
    headers["Authorization"] = "Bearer something-else"
    assert (await api.call("GET", "/runs", headers=headers)).status == 401


async def test_revoked_tokens_are_refused_and_new_ones_pass(start: Start) -> None:
    api = await start(token_lifetime=86399)
    _, before = await post_form(api, GOOD)
    headers = {**HEADERS, "Authorization": f"Bearer {before['access_token']}"}
    assert (await api.call("GET", "/runs", headers=headers)).status == 200

    revoked = await api.call("POST", api.emulator.url + "/__emulator/revoke-tokens", absolute=True)

    assert revoked.status == 200
    assert revoked.body == {"revoked": 1}
    refused = await api.call("GET", "/runs", headers=headers)
    assert refused.status == 401
    assert refused.body == {"error_code": "401013", "message": "Oauth token is not valid"}
    _, after = await post_form(api, GOOD)
    headers["Authorization"] = f"Bearer {after['access_token']}"
    assert (await api.call("GET", "/runs", headers=headers)).status == 200


@pytest.mark.parametrize("grant", ["", "authorization_code", "password"])
async def test_other_grants_are_unsupported(api: Api, grant: str) -> None:
    status, body = await post_form(api, {**GOOD, "grant_type": grant})
    assert status == 400
    assert body["error"] == "unsupported_grant_type"
    assert body["error_description"]


@pytest.mark.parametrize("missing", ["client_id", "client_secret"])
async def test_missing_client_fields(api: Api, missing: str) -> None:
    form = {k: v for k, v in GOOD.items() if k != missing}
    status, body = await post_form(api, form)
    assert status == 400
    assert body["error"] == "invalid_request"
    assert missing in body["error_description"]


@pytest.mark.parametrize(
    "form",
    [{**GOOD, "client_id": "someone"}, {**GOOD, "client_secret": "wrong"}],
    ids=["client_id", "client_secret"],
)
async def test_strict_client_mismatch_is_invalid_client(start: Start, form: dict[str, str]) -> None:
    api = await start(client_id="my-client", client_secret="p8e-secret")
    status, body = await post_form(api, form)
    assert status == 401
    assert body["error"] == "invalid_client"
    assert (await api.stats())["tokens_issued"] == 0


async def test_fields_must_be_form_encoded(api: Api) -> None:
    answer = await api.call("POST", api.emulator.ims_url, absolute=True, headers=None, json=GOOD)
    assert answer.status == 400
    assert answer.body["error"] == "invalid_request"


async def test_client_id_may_come_in_the_query_string(api: Api) -> None:
    form = {k: v for k, v in GOOD.items() if k != "client_id"}
    answer = await api.call(
        "POST",
        api.emulator.ims_url + "?client_id=my-client",
        absolute=True,
        headers=None,
        data=form,
    )
    assert answer.status == 200
