"""``GET /runs``: filters, ordering, limits, keyset pagination and counting."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.emulator import EmulatorConfig
from backfill.emulator.query import encode_token, parse_query, select
from backfill.emulator.store import DEFAULT_IDENTITY, RunRequest, Store

from .conftest import FLOW, HOUR, START, Api, Start

OTHER = "other-flow"


async def make_runs(api: Api, count: int, flow: str = FLOW, step: float = 0.01) -> list[str]:
    ids = []
    for i in range(count):
        answer = await api.create(flow=flow, start=START + i * HOUR)
        assert answer.status == 201
        ids.append(answer.body["id"])
        api.clock.advance(step)
    return ids


async def list_ids(api: Api, **params: Any) -> tuple[list[str], dict[str, Any]]:
    answer = await api.call("GET", "/runs", params=params)
    assert answer.status == 200, answer.body
    return [run["id"] for run in answer.body["items"]], answer.body["_links"]


async def read_all(api: Api, params: dict[str, str]) -> list[str]:
    """Follow ``_links.next.href`` to the end, as a client does."""
    ids, links = await list_ids(api, **params)
    while links:
        href = links["next"]["href"]
        assert href.startswith("/runs?")
        answer = await api.call("GET", href)
        assert answer.status == 200, answer.body
        ids += [run["id"] for run in answer.body["items"]]
        links = answer.body["_links"]
    return ids


async def test_filter_by_flow_in_created_order(api: Api) -> None:
    mine = await make_runs(api, 3)
    theirs = await make_runs(api, 2, flow=OTHER)
    assert (await list_ids(api, property=f"flowId=={FLOW}")) == (mine, {})
    assert (await list_ids(api, property=f"flowId=={OTHER}"))[0] == theirs
    assert (await list_ids(api, property=f"flowId=={FLOW},{OTHER}"))[0] == mine + theirs
    assert (await list_ids(api))[0] == mine + theirs
    assert (await list_ids(api, property="flowId==nobody")) == ([], {})


async def test_descending_order(api: Api) -> None:
    ids = await make_runs(api, 4)
    assert (await list_ids(api, orderby="-createdAt"))[0] == ids[::-1]
    assert (await list_ids(api, orderby="createdAt"))[0] == ids
    # "+createdAt" arrives decoded as " createdAt".
    assert (await list_ids(api, orderby="+createdAt"))[0] == ids


async def test_filter_by_status_any_case_and_combined(start: Start) -> None:
    api = await start(scheduled_for=1, running_for=1, fail_rate=0.5, seed=3)
    ids = await make_runs(api, 12, step=0)
    api.clock.advance(2)
    await make_runs(api, 2, step=0)  # these are still scheduled
    failed, _ = await list_ids(api, property="metrics.statusSummary.status==failed")
    succeeded, _ = await list_ids(api, property="metrics.statusSummary.status==SUCCESS")
    assert failed
    assert succeeded
    assert sorted(failed + succeeded) == sorted(ids)
    both, _ = await list_ids(api, property="metrics.statusSummary.status==Failed,success")
    assert sorted(both) == sorted(ids)
    scheduled, _ = await list_ids(
        api, property=["metrics.statusSummary.status==scheduled", f"flowId=={FLOW}"]
    )
    assert len(scheduled) == 2


async def test_comparisons_are_numeric_when_both_sides_are(api: Api) -> None:
    ids = await make_runs(api, 5)
    third = START + 2 * HOUR
    assert (await list_ids(api, property=f"params.windowStartTime>={third}"))[0] == ids[2:]
    assert (await list_ids(api, property=f"params.windowStartTime>{third}"))[0] == ids[3:]
    assert (await list_ids(api, property=f"params.windowStartTime<{third}"))[0] == ids[:2]
    assert (await list_ids(api, property=f"params.windowStartTime<={third}"))[0] == ids[:3]
    assert (await list_ids(api, property=f"params.windowStartTime=={third}"))[0] == [ids[2]]
    assert (await list_ids(api, property=f"params.windowStartTime!={third}"))[0] == (
        ids[:2] + ids[3:]
    )
    # An integer window time with a leading zero still equals the stored digits.
    assert (await list_ids(api, property=f"params.windowStartTime==0{third}"))[0] == [ids[2]]
    created = (await api.call("GET", f"/runs/{ids[1]}")).body["items"][0]["createdAt"]
    assert (await list_ids(api, property=f"createdAt>{created}"))[0] == ids[2:]


async def test_filter_by_ids_and_any_dotted_path(api: Api) -> None:
    ids = await make_runs(api, 5)
    wanted = [ids[3], ids[0], "unknown-id"]
    assert (await list_ids(api, property="id==" + ",".join(wanted)))[0] == [ids[0], ids[3]]
    # Paths without a fast accessor are read from the rendered run.
    assert len((await list_ids(api, property="sandboxName==prod"))[0]) == 5
    assert (await list_ids(api, property="metrics.nothing.here==1"))[0] == []


async def test_limit_default_and_cap(start: Start) -> None:
    api = await start(max_page_size=30)
    await make_runs(api, 45, step=0)
    ids, links = await list_ids(api)
    assert len(ids) == 20
    assert links["next"]["href"].startswith("/runs?")
    ids, _ = await list_ids(api, limit="1000")
    assert len(ids) == 30
    ids, _ = await list_ids(api, limit="7")
    assert len(ids) == 7


async def test_next_href_carries_the_original_query(api: Api) -> None:
    await make_runs(api, 5)
    params = {"property": f"flowId=={FLOW}", "orderby": "-createdAt", "limit": "2"}
    _, links = await list_ids(api, **params)
    query = parse_qsl(urlsplit(links["next"]["href"]).query)
    assert ("property", f"flowId=={FLOW}") in query
    assert ("orderby", "-createdAt") in query
    assert ("limit", "2") in query
    assert [k for k, _ in query].count("continuationToken") == 1
    assert (await read_all(api, params))[::-1] == (await list_ids(api, limit="100"))[0]


async def test_pages_cover_every_run_exactly_once(api: Api) -> None:
    ids = await make_runs(api, 23, step=0)  # same millisecond: ties are broken by id
    assert sorted(await read_all(api, {"limit": "5"})) == sorted(ids)
    assert len(await read_all(api, {"limit": "5", "orderby": "-createdAt"})) == 23


async def test_runs_created_between_pages_never_hide_existing_ones(api: Api) -> None:
    existing = await make_runs(api, 10)
    seen, links = await list_ids(api, limit="4", orderby="-createdAt")
    # An offset cursor would now skip existing runs: new ones push everything down a page.
    await make_runs(api, 6, flow=FLOW)
    while links:
        answer = await api.call("GET", links["next"]["href"])
        seen += [run["id"] for run in answer.body["items"]]
        links = answer.body["_links"]
    assert seen == existing[::-1]


async def test_a_token_only_works_for_its_own_query(api: Api) -> None:
    await make_runs(api, 5)
    _, links = await list_ids(api, limit="2", property=f"flowId=={FLOW}")
    token = dict(parse_qsl(urlsplit(links["next"]["href"]).query))["continuationToken"]
    answer = await api.call("GET", "/runs", params={"limit": "2", "continuationToken": token})
    assert answer.status == 400
    answer = await api.call(
        "GET",
        "/runs",
        params={"property": f"flowId=={FLOW}", "limit": "3", "continuationToken": token},
    )
    assert answer.status == 200  # the page size may change between pages


async def test_count(api: Api) -> None:
    await make_runs(api, 4)
    await make_runs(api, 3, flow=OTHER)
    answer = await api.call("GET", "/runs", params={"count": "true"})
    assert answer.body == {"count": 7}
    answer = await api.call(
        "GET", "/runs", params={"count": "true", "property": f"flowId=={OTHER}"}
    )
    assert answer.body == {"count": 3}


async def test_count_with_limit_is_1401(api: Api) -> None:
    # help/sources/errors/flow-service-errors.md: limit and count cannot be given together.
    answer = await api.call("GET", "/runs", params={"count": "true", "limit": "1"})
    assert answer.status == 400
    assert answer.body["type"].endswith("FLOW-1401-400")


# -- the store directly ------------------------------------------------------------------


def store_with_runs(count: int, flows: int = 1) -> tuple[Store, list[str], list[float]]:
    """A store of ``count`` runs spread over ``flows`` flows, created 1 ms apart."""
    now = [1_700_000_000.0]
    store = Store(EmulatorConfig(), lambda: now[0])
    ids = []
    for i in range(count):
        request = RunRequest(
            f"flow-{i % flows}", i, i + 1, None, {"windowStartTime": str(i), "windowEndTime": "x"}
        )
        ids.append(store.create_run(request, DEFAULT_IDENTITY).id)
        now[0] += 0.001
    return store, ids, now


def test_a_hundred_ids_against_a_hundred_thousand_runs_is_indexed() -> None:
    store, ids, now = store_with_runs(100_000, flows=10)
    wanted = ids[::1000]
    assert len(wanted) == 100
    query = parse_query([("property", "id==" + ",".join(wanted)), ("limit", "100")], 100)
    started = time.perf_counter()
    page = select(store, query, now[0])
    elapsed = time.perf_counter() - started
    assert [run.id for run in page.runs] == wanted
    assert page.next_cursor is None
    # A scan of 100k runs takes about a second; the index answers in about a millisecond.
    assert elapsed < 0.1
    query = parse_query([("property", "flowId==flow-3"), ("limit", "100")], 100)
    page = select(store, query, now[0])
    assert [run.id for run in page.runs] == ids[3:1000:10]


@settings(max_examples=60, deadline=None)
@given(
    initial=st.integers(min_value=0, max_value=30),
    limit=st.integers(min_value=1, max_value=7),
    descending=st.booleans(),
    same_millisecond=st.booleans(),
    added_between_pages=st.lists(st.integers(min_value=0, max_value=4), max_size=12),
)
def test_keyset_pagination_never_skips_or_repeats_a_run(
    initial: int,
    limit: int,
    descending: bool,
    same_millisecond: bool,
    added_between_pages: list[int],
) -> None:
    now = [1_700_000_000.0]
    store = Store(EmulatorConfig(max_page_size=100), lambda: now[0])
    serial = [0]

    def add(count: int) -> list[str]:
        made = []
        for _ in range(count):
            serial[0] += 1
            n = serial[0]
            request = RunRequest(FLOW, n, n + 1, None, {"windowStartTime": str(n)})
            made.append(store.create_run(request, DEFAULT_IDENTITY).id)
            if not same_millisecond:
                now[0] += 0.001
        return made

    existing = add(initial)
    params = [("property", f"flowId=={FLOW}"), ("limit", str(limit))]
    if descending:
        params.append(("orderby", "-createdAt"))
    query = parse_query(params, 100)
    seen: list[str] = []
    pages = 0
    while True:
        page = select(store, query, now[0])
        seen += [run.id for run in page.runs]
        if page.next_cursor is None:
            break
        # Runs keep arriving for a while (forever would make an ascending read endless).
        add(added_between_pages[pages] if pages < len(added_between_pages) else 0)
        pages += 1
        query = parse_query(
            [*params, ("continuationToken", encode_token(page.next_cursor, query.fingerprint))], 100
        )
    assert len(seen) == len(set(seen))  # never twice
    assert set(existing) <= set(seen)  # never skipped
