"""The one paging routine, with the real client against aioresponses: filters, links, retries."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aioresponses import CallbackResult
from structlog.testing import capture_logs
from yarl import URL

from backfill.client import ApiIdentity, FlowServiceClient, Page, RunInfo
from backfill.engine import Engine
from backfill.engine.board import Board
from backfill.engine.control import Control
from backfill.engine.listing import SPARE_PAGES, Lister
from backfill.engine.options import EngineOptions, Stats
from backfill.errors import ApiUnavailable, PermanentError, RequestNotSent, ServerError
from backfill.journal import Journal
from backfill.limits import Backoff, RateLimiter
from backfill.permits import Permits
from backfill.planner import FlowPlan, Plan
from backfill.state import WindowState

from .mock_http import CompatResponse, Mocked
from .test_engine import FakeService

BASE = "https://platform.adobe.io/data/foundation/flowservice"
RUNS = re.compile(r"^https://platform\.adobe\.io(:443)?/data/foundation/flowservice/runs(\?.*)?$")
FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
OTHER = "9c0c3e35-1d2b-4d39-9a8e-6b1f2a7c4d10"
T0 = 1704067200


class Tokens:
    renewals = 0

    async def token(self) -> str:
        return "tok"

    async def renew(self, stale: str) -> str:
        return "tok"


def item(run_id: str, flow_id: str = FLOW, start: int = T0) -> dict[str, Any]:
    return {
        "id": run_id,
        "flowId": flow_id,
        "params": {"windowStartTime": str(start), "windowEndTime": str(start + 3600)},
        "metrics": {"statusSummary": {"status": "success"}},
    }


def page(*items: dict[str, Any], next_href: str | None = None) -> dict[str, Any]:
    return {"items": list(items), "_links": {"next": {"href": next_href}} if next_href else {}}


class Harness:
    """A Lister on the real client and a real Control; what it slept and sent is recorded."""

    def __init__(self, lister: Lister, control: Control, stats: Stats, mocked: Mocked) -> None:
        self.lister = lister
        self.control = control
        self.stats = stats
        self.mocked = mocked
        self.slept: list[float] = []
        self.stop_in_backoff = False

    def sent(self) -> list[URL]:
        """Every GET, grouped by URL in the order each URL was first asked (retries together)."""
        return [
            url
            for (method, url), calls in self.mocked.requests.items()
            for _ in calls
            if method == "GET"
        ]

    async def runs(self, **kwargs: Any) -> list[RunInfo]:
        return [run async for run in self.lister.runs(FLOW, **kwargs)]


MakeHarness = Callable[..., Harness]


@pytest.fixture(autouse=True)
def every_level_logged() -> Iterator[None]:
    """Another test may have configured structlog to drop debug events: start from defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
async def make(
    tmp_path: Path, mocked: Mocked, session: aiohttp.ClientSession
) -> AsyncIterator[MakeHarness]:
    opened: list[Journal] = []

    def build(max_retries: int = 3) -> Harness:
        options = EngineOptions(
            page_size=2, seed=5, backoff=Backoff(base=1.0, cap=8.0, max_retries=max_retries)
        )
        stats = Stats()
        journal = Journal.open(
            tmp_path / f"ck{len(opened)}.jsonl",
            Plan((FlowPlan.single(FLOW, T0, T0 + 7200, 3600),)),
        )
        opened.append(journal)
        board = Board(journal, options, stats, lambda: 0.0)
        limiter = RateLimiter(None)
        harness: Harness

        async def sleep(seconds: float) -> None:
            harness.slept.append(seconds)
            if harness.stop_in_backoff:
                harness.control.stop("stopped during a backoff")

        permits = Permits(limiter)
        control = Control(board, permits, options, stats, sleep)
        client = FlowServiceClient(
            session, BASE, ApiIdentity("k", "o@AdobeOrg"), Tokens(), permits.take
        )
        harness = Harness(Lister(client, control, stats, options), control, stats, mocked)
        return harness

    yield build
    for journal in opened:
        await journal.close()


def token(url: URL) -> str | None:
    return url.query.get("continuationToken")


async def test_every_page_is_read_with_the_filters_and_only_the_flows_runs_come_out(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    # The service pages with token-only links and ignores filters: another flow's run shows.
    mocked.get(RUNS, payload=page(item("r1"), item("x1", OTHER), next_href="?continuationToken=t2"))
    mocked.get(RUNS, payload=page(item("r2"), next_href="/runs?continuationToken=t3"))
    mocked.get(RUNS, payload=page(item("x2", OTHER), item("r3")))

    with capture_logs() as logs:
        runs = await h.runs(created_since_ms=17)

    assert [r.run_id for r in runs] == ["r1", "r2", "r3"]
    sent = h.sent()
    assert [token(u) for u in sent] == [None, "t2", "t3"]
    for url in sent:  # every page asked with every filter
        assert sorted(url.query.getall("property")) == sorted([f"flowId=={FLOW}", "createdAt>=17"])
        assert url.query.get("limit") == "2"
    other = [e for e in logs if e["event"] == "listed_run_of_another_flow"]
    assert [e["run_id"] for e in other] == ["x1", "x2"]
    assert all(e["log_level"] == "debug" for e in other)
    assert h.stats.list_requests == 3


async def test_a_single_page_drops_other_flows_and_runs_not_asked_for(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    mocked.get(RUNS, payload=page(item("x1", OTHER), item("r1"), item("r9")))

    got = await h.lister.page(FLOW, ids=["r1"])

    assert [r.run_id for r in got.runs] == ["r1"]


async def test_a_link_with_the_explicit_default_port_is_followed(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    absolute = "https://platform.adobe.io:443/data/foundation/flowservice/runs?continuationToken=t2"
    mocked.get(RUNS, payload=page(item("r1"), next_href=absolute))
    mocked.get(RUNS, payload=page(item("r2")))

    assert [r.run_id for r in await h.runs()] == ["r1", "r2"]


async def test_a_link_to_another_origin_stops_the_listing(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    mocked.get(RUNS, payload=page(item("r1"), next_href="https://evil.example/runs?c=1"))

    with pytest.raises(PermanentError, match="another host"):
        await h.runs()


async def test_a_failed_page_is_asked_again_not_the_listing_from_the_start(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make(max_retries=3)
    mocked.get(RUNS, payload=page(item("r1"), next_href="?continuationToken=t2"))
    mocked.get(RUNS, status=500, body=b"")
    mocked.get(RUNS, status=502, body=b"")
    mocked.get(RUNS, status=429, body=b"", headers={"Retry-After": "0"})  # not counted
    mocked.get(RUNS, status=503, body=b"")
    mocked.get(RUNS, payload=page(item("r2")))

    runs = await h.runs()

    assert [r.run_id for r in runs] == ["r1", "r2"]
    assert [token(u) for u in h.sent()] == [None] + ["t2"] * 5  # page 1 read once
    assert h.stats.request_retries == 4
    assert h.stats.rate_limited == 1
    # Exponential backoff with full jitter: each nap under base * 2**n.
    assert len(h.slept) == 3
    assert all(0 <= s <= 2.0 ** (n + 1) for n, s in enumerate(h.slept))
    assert h.control.error is None


async def test_a_listing_that_keeps_failing_spends_the_budget_and_is_unavailable(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make(max_retries=2)
    mocked.get(RUNS, payload=page(item("r1"), next_href="?continuationToken=t2"))
    mocked.get(RUNS, status=500, body=b"", repeat=True)

    seen: list[str] = []

    async def read() -> None:
        async for run in h.lister.runs(FLOW):
            seen.append(run.run_id)  # noqa: PERF401 - what came out before the error counts

    with pytest.raises(ApiUnavailable, match="gave up after 2 retries") as raised:
        await read()

    assert seen == ["r1"]
    assert raised.value.exit_code == 75
    assert [token(u) for u in h.sent()] == [None, "t2", "t2", "t2"]
    assert h.control.error is raised.value  # the engine stops, with exit 75
    assert h.control.closed.is_set()


async def test_a_listing_failing_while_the_engine_closes_raises_the_error_itself(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make(max_retries=5)
    mocked.get(RUNS, status=503, body=b"", repeat=True)
    h.stop_in_backoff = True

    with pytest.raises(ServerError):
        await h.runs()

    assert len(h.sent()) == 1  # the page is not asked again once the engine stops
    assert h.control.error is None  # a stop, not an outage


async def test_a_listing_asked_once_the_engine_stopped_is_not_sent(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    mocked.get(RUNS, payload=page(item("r1")))
    h.control.stop("test")

    with pytest.raises(RequestNotSent):
        await h.runs()

    assert h.sent() == []


async def test_a_last_page_linking_to_itself_ends_the_listing(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    selfish = f"/runs?property=flowId=={FLOW}&orderby=createdAt&limit=2"
    mocked.get(RUNS, payload=page(item("r1"), next_href=selfish), repeat=True)

    with capture_logs() as logs:
        runs = await h.runs()

    assert [r.run_id for r in runs] == ["r1"]
    assert len(h.sent()) == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["listing_link_repeats"]


async def test_links_that_loop_end_once_every_page_was_read(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        # Page a links to b, b links back to a.
        which = token(url)
        following = {None: "a", "a": "b", "b": "a"}[which]
        run = {None: "r0", "a": "ra", "b": "rb"}[which]
        return CallbackResult(
            response_class=CompatResponse,
            payload=page(item(run), next_href=f"?continuationToken={following}"),
        )

    mocked.get(RUNS, callback=answer, repeat=True)

    runs = await h.runs()

    assert [r.run_id for r in runs] == ["r0", "ra", "rb"]
    assert [token(u) for u in h.sent()] == [None, "a", "b"]


async def test_links_that_never_end_are_an_error_after_a_bound(
    make: MakeHarness, mocked: Mocked
) -> None:
    h = make()
    count = [0]

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        # Always the same run, always a fresh token: more pages than the runs could fill.
        count[0] += 1
        return CallbackResult(
            response_class=CompatResponse,
            payload=page(item("r1"), next_href=f"?continuationToken={count[0]}"),
        )

    mocked.get(RUNS, callback=answer, repeat=True)

    with pytest.raises(ApiUnavailable, match="does not end"):
        await h.runs()

    assert len(h.sent()) == SPARE_PAGES + 2
    assert isinstance(h.control.error, ApiUnavailable)


async def test_a_run_on_two_pages_comes_out_once(make: MakeHarness, mocked: Mocked) -> None:
    h = make()
    mocked.get(RUNS, payload=page(item("r1"), item("r2"), next_href="?continuationToken=t2"))
    mocked.get(RUNS, payload=page(item("r2"), item("r3")))

    assert [r.run_id for r in await h.runs()] == ["r1", "r2", "r3"]


# -- in the engine ----------------------------------------------------------------------


async def test_a_listing_that_never_answers_ends_the_backfill_with_exit_75(
    tmp_path: Path,
) -> None:
    service = FakeService()

    async def unavailable(*args: object, **kwargs: object) -> Page:
        raise ServerError("busy", request="GET /runs", status=503)

    service.list_runs = unavailable  # type: ignore[method-assign]
    plan = Plan((FlowPlan.single(OTHER, T0, T0 + 3 * 3600, 3600),))
    journal = Journal.open(tmp_path / "ck.jsonl", plan)
    options = EngineOptions(
        wait=True, poll_interval=0.01, seed=2, backoff=Backoff(base=0.01, max_retries=2)
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    try:
        outcome = await Engine(journal, service, RateLimiter(None), options, sleep=sleep).run()
        assert isinstance(outcome.error, ApiUnavailable)
        assert outcome.error.exit_code == 75
        # The service could not be asked what it already holds: nothing was sent.
        assert [journal.state(w) for w in plan.windows()] == [WindowState.PENDING] * 3
        assert [c[0] for c in service.calls].count("create") == 0
        assert len(slept) == 2  # the first try and two retries of the page, with backoff
    finally:
        await journal.close()
