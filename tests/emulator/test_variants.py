"""The API variants: runs without params, token-only and self links, a lagging listing, a
proxy's codes on POST, and the re-trigger that makes a new run (or, on request, the same)."""

from __future__ import annotations

import email.utils
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from backfill.client import ApiIdentity, FlowServiceClient
from backfill.emulator import EmulatorConfig

from .conftest import FLOW, HOUR, START, Api, Start

OTHER = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"


async def make_runs(api: Api, count: int, flow: str = FLOW) -> list[str]:
    ids = []
    for i in range(count):
        answer = await api.create(flow=flow, start=START + i * HOUR)
        assert answer.status == 201, answer.body
        ids.append(answer.body["id"])
        api.clock.advance(0.01)
    return ids


async def listing(api: Api, href: str = "/runs", **params: Any) -> tuple[list[str], str | None]:
    answer = await api.call("GET", href, params=params or None)
    assert answer.status == 200, answer.body
    following = answer.body["_links"].get("next")
    return [run["id"] for run in answer.body["items"]], following and following["href"]


# -- runs without params ----------------------------------------------------------------


async def test_runs_without_params_say_their_window_only_in_the_activities(start: Start) -> None:
    api = await start(runs_without_params=True, scheduled_for=1, running_for=1)
    created = await api.create(start=START)
    assert created.status == 201
    assert "params" not in created.body
    run_id = created.body["id"]

    scheduled = (await api.call("GET", f"/runs/{run_id}")).body["items"][0]
    assert "params" not in scheduled
    assert scheduled["activities"] == []  # nothing says the window yet

    api.clock.advance(1.5)
    (listed,) = (await api.call("GET", "/runs", params={"property": f"flowId=={FLOW}"})).body[
        "items"
    ]
    assert "params" not in listed
    (activity,) = listed["activities"]
    assert activity["durationSummary"]["extensions"] == {
        "windowStart": START * 1000,
        "windowEnd": (START + HOUR) * 1000,
    }


async def test_by_default_runs_carry_params_and_the_activities_carry_the_window_too(
    api: Api,
) -> None:
    run_id = (await api.create(start=START)).body["id"]
    api.clock.advance(0.3)
    run = (await api.call("GET", f"/runs/{run_id}")).body["items"][0]
    assert run["params"]["windowStartTime"] == str(START)
    assert run["activities"][0]["durationSummary"]["extensions"]["windowStart"] == START * 1000


async def test_the_client_reads_the_window_of_a_run_without_params(start: Start) -> None:
    api = await start(runs_without_params=True, scheduled_for=0, running_for=1)
    await make_runs(api, 2)
    async with aiohttp.ClientSession() as session:
        client = FlowServiceClient(
            session, api.emulator.base_url, ApiIdentity("k", "o@AdobeOrg"), _Tokens()
        )
        page = await client.list_runs(FLOW)
    assert [(r.window_start, r.window_end) for r in page.runs] == [
        (START, START + HOUR),
        (START + HOUR, START + 2 * HOUR),
    ]
    assert all(r.created_at is not None for r in page.runs)


class _Tokens:
    renewals = 0

    async def token(self) -> str:
        return "t"

    async def renew(self, stale: str) -> str:
        return "t"


# -- continuation links -----------------------------------------------------------------


async def test_token_only_links_list_the_whole_sandbox_unless_the_filters_go_again(
    start: Start,
) -> None:
    api = await start(token_only_links=True)
    mine = await make_runs(api, 5)
    theirs = await make_runs(api, 3, flow=OTHER)

    first, href = await listing(api, property=f"flowId=={FLOW}", limit="2")
    assert first == mine[:2]
    assert href is not None
    assert href.startswith("/runs?continuationToken=")
    assert [k for k, _ in parse_qsl(urlsplit(href).query)] == ["continuationToken"]

    # Followed as given: no filter, default page size, every flow of the sandbox.
    verbatim, _ = await listing(api, href)
    assert verbatim == mine[2:] + theirs

    # With the filters sent again: the flow's runs only, on from the token.
    token = dict(parse_qsl(urlsplit(href).query))["continuationToken"]
    again, following = await listing(
        api, property=f"flowId=={FLOW}", limit="2", continuationToken=token
    )
    assert again == mine[2:4]
    assert following is not None
    last, end = await listing(
        api,
        property=f"flowId=={FLOW}",
        limit="2",
        continuationToken=dict(parse_qsl(urlsplit(following).query))["continuationToken"],
    )
    assert (last, end) == (mine[4:], None)


async def test_by_default_links_repeat_the_query_and_a_token_keeps_its_filters(api: Api) -> None:
    mine = await make_runs(api, 3)
    _, href = await listing(api, property=f"flowId=={FLOW}", limit="2")
    assert href is not None
    assert ("property", f"flowId=={FLOW}") in parse_qsl(urlsplit(href).query)
    token = dict(parse_qsl(urlsplit(href).query))["continuationToken"]
    refused = await api.call("GET", "/runs", params={"continuationToken": token})
    assert refused.status == 400  # issued for another query
    assert (await listing(api, href))[0] == mine[2:]


async def test_a_self_link_names_the_last_page_itself(start: Start) -> None:
    api = await start(self_link=True)
    mine = await make_runs(api, 3)
    ids, href = await listing(api, property=f"flowId=={FLOW}", limit="2")
    assert ids == mine[:2]
    assert href is not None
    last, self_href = await listing(api, href)
    assert last == mine[2:]
    assert self_href == href  # the last page links to itself
    again, still = await listing(api, self_href)
    assert (again, still) == (last, href)


async def test_a_self_link_on_a_single_page(start: Start) -> None:
    api = await start(self_link=True)
    mine = await make_runs(api, 1)
    ids, href = await listing(api, property=f"flowId=={FLOW}")
    assert ids == mine
    assert href == f"/runs?property=flowId=={FLOW}"


# -- a lagging listing ------------------------------------------------------------------


async def test_a_run_shows_in_listings_only_after_the_lag(start: Start) -> None:
    api = await start(listing_lag=5)
    run_id = (await api.create()).body["id"]
    assert (await listing(api, property=f"flowId=={FLOW}"))[0] == []
    assert (await api.call("GET", "/runs", params={"count": "true"})).body == {"count": 0}
    assert (await api.call("GET", f"/runs/{run_id}")).status == 200  # found by id at once
    api.clock.advance(4.99)
    assert (await listing(api, property=f"id=={run_id}"))[0] == []
    api.clock.advance(0.01)
    assert (await listing(api, property=f"flowId=={FLOW}"))[0] == [run_id]
    assert (await api.call("GET", "/runs", params={"count": "true"})).body == {"count": 1}


# -- a proxy's codes on POST ------------------------------------------------------------


async def test_post_error_codes_before_anything_is_done(start: Start) -> None:
    api = await start(error_rate=1.0, post_error_codes=(520,))
    answer = await api.create()
    assert answer.status == 520
    assert answer.body == {"error_code": "520000", "message": "Unknown Error"}
    assert (await api.stats())["runs"] == []
    # Other requests keep the service's own codes.
    assert (await api.call("GET", "/runs")).status in (500, 502, 503)


async def test_post_error_codes_after_the_run_was_created(start: Start) -> None:
    api = await start(drop_rate=1.0, post_error_codes=(408,))
    answer = await api.create()
    assert answer.status == 408
    assert answer.body["message"] == "Request Timeout"
    stats = await api.stats()
    assert len(stats["runs"]) == 1  # it exists; the client was told 408
    assert stats["dropped"] == 1
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {"dropped": 1}


async def test_post_error_codes_are_drawn_per_request(start: Start) -> None:
    api = await start(drop_rate=1.0, post_error_codes=(520, 408), seed=3)
    statuses = {(await api.create(start=START + i * HOUR)).status for i in range(30)}
    assert statuses == {520, 408}


# -- re-trigger -------------------------------------------------------------------------


async def _failed_run(api: Api) -> str:
    run_id: str = (await api.create()).body["id"]
    api.clock.advance(3)
    return run_id


async def _lost_run(api: Api) -> str:
    """A run whose POST answer was lost (--drop-rate 1), failed by now."""
    with pytest.raises(aiohttp.ClientError):
        await api.create()
    (run,) = (await api.stats())["runs"]
    api.clock.advance(3)
    run_id: str = run["id"]
    return run_id


async def test_a_retrigger_answer_can_be_lost_after_the_new_run_exists(start: Start) -> None:
    api = await start(fail_rate=1.0, scheduled_for=1, running_for=1, drop_rate=1.0)
    old = await _lost_run(api)
    with pytest.raises(aiohttp.ClientError):
        await api.call("POST", f"/runs/{old}/action?op=re-trigger")
    runs = (await api.stats())["runs"]
    assert [r["retrigger_of"] for r in runs] == [None, old]
    assert runs[0]["status"] == "failed"
    assert (await api.stats())["requests"]["by_endpoint"]["POST /runs/{id}/action"] == {
        "dropped": 1
    }


async def test_a_retrigger_gets_a_proxys_code_after_the_new_run_exists(start: Start) -> None:
    api = await start(
        fail_rate=1.0, scheduled_for=1, running_for=1, drop_rate=1.0, post_error_codes=(520,)
    )
    assert (await api.create()).status == 520  # created, answer replaced
    (created,) = (await api.stats())["runs"]
    api.clock.advance(3)
    answer = await api.call("POST", f"/runs/{created['id']}/action?op=re-trigger")
    assert answer.status == 520
    runs = (await api.stats())["runs"]
    assert [r["retrigger_of"] for r in runs] == [None, created["id"]]


async def test_retrigger_same_run_answers_are_never_dropped(start: Start) -> None:
    api = await start(
        fail_rate=1.0, scheduled_for=1, running_for=1, drop_rate=1.0, retrigger_same_run=True
    )
    old = await _lost_run(api)
    answer = await api.call("POST", f"/runs/{old}/action?op=re-trigger")
    assert (answer.status, answer.body["id"]) == (200, old)
    assert len((await api.stats())["runs"]) == 1


async def test_a_failed_run_may_be_retriggered_again_each_time_a_new_run(start: Start) -> None:
    api = await start(fail_rate=1.0, scheduled_for=1, running_for=1)
    old = await _failed_run(api)
    made = [(await api.call("POST", f"/runs/{old}/action?op=re-trigger")).body["id"]]
    made.append((await api.call("POST", f"/runs/{old}/action?op=re-trigger")).body["id"])
    assert len(set(made)) == 2
    (window,) = (await api.stats())["windows"]
    assert (window["runs"], window["live"]) == (3, 2)
    assert len((await api.stats())["duplicates"]) == 1  # two live runs of one window


# -- the service's clock ----------------------------------------------------------------


async def test_answers_carry_the_emulators_clock_in_date(api: Api) -> None:
    before = email.utils.parsedate_to_datetime((await api.call("GET", "/runs")).headers["Date"])
    api.clock.advance(3600)
    after = email.utils.parsedate_to_datetime((await api.call("GET", "/runs")).headers["Date"])
    assert 3599 <= (after - before).total_seconds() <= 3601


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"listing_lag": -1}, "--listing-lag"),
        ({"listing_lag": float("nan")}, "--listing-lag"),
        ({"post_error_codes": (404,), "error_rate": 0.1}, "--post-error-codes"),
        ({"post_error_codes": (520,)}, "--error-rate or --drop-rate"),
        ({"token_only_links": "no"}, "--token-only-links"),
    ],
)
def test_refused_variants_name_their_flag(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        EmulatorConfig(**changes)  # type: ignore[arg-type]
