"""Each fault flag: it happens at about the configured rate, and the same seed replays it."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time

import aiohttp
import pytest

from backfill.emulator import EmulatorConfig, serve
from backfill.emulator.arrival import _LookingSelector
from backfill.emulator.faults import FaultModel

from .conftest import FLOW, HEADERS, HOUR, START, Answer, Api, FakeClock, Start


async def outcome(api: Api, i: int) -> int | str:
    """Create the run of window ``i``: its status, or "dropped" when the connection died."""
    try:
        return (await api.create(start=START + i * HOUR)).status
    except aiohttp.ClientError:
        return "dropped"


async def outcomes(api: Api, count: int) -> list[int | str]:
    return [await outcome(api, i) for i in range(count)]


# -- rate limit --------------------------------------------------------------------------


async def test_rate_limit_admits_exactly_the_limit_per_sliding_second(start: Start) -> None:
    api = await start(rate_limit=10, retry_after=3)
    answers = [await api.call("GET", "/runs") for _ in range(15)]
    assert [a.status for a in answers] == [200] * 10 + [429] * 5
    limited = answers[-1]
    assert limited.headers["Retry-After"] == "3"
    assert limited.body == {"error_code": "429050", "message": "Too many requests"}

    # The window is (now - 1, now]: one second later, every earlier arrival has left it.
    api.clock.advance(1.0)
    assert [(await api.call("GET", "/runs")).status for _ in range(11)] == [200] * 10 + [429]

    stats = await api.stats()
    assert stats["rate_limited"] == 6
    assert stats["requests"]["by_endpoint"]["GET /runs"] == {"200": 20, "429": 6}
    assert stats["max_requests_per_second"] == 15


async def test_the_second_slides_and_rejected_requests_count(start: Start) -> None:
    api = await start(rate_limit=4)
    for _ in range(2):
        assert (await api.call("GET", "/runs")).status == 200
    api.clock.advance(0.5)
    statuses = [(await api.call("GET", "/runs")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    api.clock.advance(0.5)
    # The first two left the window; the 429 at 0.5 s still counts, as do its neighbours.
    statuses = [(await api.call("GET", "/runs")).status for _ in range(2)]
    assert statuses == [200, 429]


async def test_every_flow_service_endpoint_counts_but_ims_and_stats_do_not(start: Start) -> None:
    api = await start(rate_limit=3)
    await api.call("GET", "/runs", headers={})  # refused by the gateway: still counted
    await api.call("GET", "/flows/x")
    for _ in range(5):
        await api.stats()
        answer = await api.call(
            "POST",
            api.emulator.ims_url,
            absolute=True,
            headers=None,
            data={"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"},
        )
        assert answer.status == 200
    assert (await api.create()).status == 201
    answer = await api.create(start=START + HOUR)
    assert answer.status == 429
    assert (await api.stats())["runs"][0]["window_start"] == START  # nothing else created


def test_a_request_read_late_is_metered_when_it_arrived() -> None:
    """The emulator's own lateness (``lag``) is not the client sending requests together."""
    clock = FakeClock(10.0)
    late = FaultModel(EmulatorConfig(rate_limit=1), clock)
    stamped = FaultModel(EmulatorConfig(rate_limit=1), clock)

    # Read at 10.0, but its bytes were there since 9.7 (the loop was stalled).
    assert not late.admit(lag=0.3).rate_limited
    assert not stamped.admit().rate_limited
    clock.advance(0.75)  # 10.75: 1.05 s after it arrived, 0.75 s after it was read
    assert not late.admit().rate_limited
    assert stamped.admit().rate_limited
    assert (late.max_requests_per_second, late.max_requests_per_second_as_read) == (1, 2)
    assert late.max_read_lag == pytest.approx(0.3)


def test_the_looking_selector_bounds_when_bytes_arrived() -> None:
    """Bytes found by a look after a stall arrived after the look before it, not when read."""
    selector = _LookingSelector()
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, selectors.EVENT_READ)
        selector.select(0)  # a look that finds nothing
        looked = time.monotonic()
        writer.send(b"x")
        sent = time.monotonic()
        time.sleep(0.05)  # the emulator's process is descheduled
        assert selector.select(0)
        assert looked - 0.001 <= selector.read_since[reader.fileno()] <= sent

        # A look that waits: what it returns arrived after it began.
        reader.recv(1)
        timer = threading.Timer(0.05, writer.send, (b"y",))
        began = time.monotonic()
        timer.start()
        assert selector.select(5)
        timer.join()
        assert began <= selector.read_since[reader.fileno()] <= time.monotonic()
    finally:
        selector.close()
        reader.close()
        writer.close()


async def test_rate_limited_requests_do_nothing(start: Start) -> None:
    api = await start(rate_limit=1)
    assert (await api.create()).status == 201
    assert (await api.create(start=START + HOUR)).status == 429
    assert len((await api.stats())["runs"]) == 1


# -- injected 5xx ------------------------------------------------------------------------


async def test_error_rate(start: Start) -> None:
    api = await start(error_rate=0.3, seed=11, retry_after=2)
    statuses: list[int] = []
    for i in range(400):
        answer = await api.create(start=START + i * HOUR)
        statuses.append(answer.status)
        if answer.status == 503:
            assert answer.headers["Retry-After"] == "2"
            assert answer.body["error_code"] == "503000"
        elif answer.status == 502:
            assert "Retry-After" not in answer.headers
        elif answer.status == 500:
            assert answer.body["type"].endswith("FLOW-1500-500")
    injected = [s for s in statuses if s != 201]
    assert set(injected) == {500, 502, 503}
    assert 0.23 <= len(injected) / 400 <= 0.37
    stats = await api.stats()
    assert stats["injected_errors"] == len(injected)
    # An injected error happens before anything is done: no run behind it.
    assert len(stats["runs"]) == statuses.count(201)


async def test_injected_errors_come_before_auth(start: Start) -> None:
    api = await start(error_rate=1.0)
    answer = await api.call("GET", "/runs", headers={})
    assert answer.status in (500, 502, 503)


async def test_error_rate_is_deterministic_for_a_seed(start: Start) -> None:
    first = await outcomes(await start(error_rate=0.2, seed=5), 100)
    again = await outcomes(await start(error_rate=0.2, seed=5), 100)
    other = await outcomes(await start(error_rate=0.2, seed=6), 100)
    assert first == again
    assert first != other
    # Streams are independent: turning latency and drops on does not move the errors.
    noisy = await start(error_rate=0.2, seed=5, latency=0.1, jitter=0.05)
    assert await outcomes(noisy, 100) == first


async def test_list_error_rate_fails_listings_and_only_them(start: Start) -> None:
    api = await start(list_error_rate=1.0, seed=3)
    created = [(await api.create(start=START + i * HOUR)).status for i in range(5)]
    listed = [(await api.call("GET", "/runs")).status for _ in range(30)]
    assert created == [201] * 5  # writes work
    assert set(listed) == {500, 502, 503}  # every listing fails, with each injected status
    stats = await api.stats()
    assert stats["injected_errors"] == 30
    assert stats["requests"]["by_endpoint"]["GET /runs"] == {
        str(code): listed.count(code) for code in set(listed)
    }


async def test_list_error_rate_is_its_own_stream(start: Start) -> None:
    # Turning listing faults on does not move which POSTs --error-rate fails, for the seed.
    plain = await outcomes(await start(error_rate=0.2, seed=5), 100)
    with_lists = await outcomes(await start(error_rate=0.2, list_error_rate=0.5, seed=5), 100)
    assert with_lists == plain


# -- latency -----------------------------------------------------------------------------


async def test_latency_with_jitter(start: Start) -> None:
    api = await start(latency=0.2, jitter=0.05, seed=1)
    for i in range(200):
        await api.create(start=START + i * HOUR)
    delays = api.emulator.app._sleep.delays  # type: ignore[attr-defined]
    assert len(delays) == 200
    assert all(0.15 <= d <= 0.25 for d in delays)
    assert abs(sum(delays) / len(delays) - 0.2) < 0.01
    assert len(set(delays)) > 150


async def test_latency_without_jitter(start: Start) -> None:
    api = await start(latency=0.05)
    await api.call("GET", "/runs")
    await api.call("GET", "/nothing")
    await api.call("GET", "/runs", headers={})
    assert api.emulator.app._sleep.delays == [0.05, 0.05, 0.05]  # type: ignore[attr-defined]


def test_jitter_never_makes_a_negative_delay() -> None:
    model = FaultModel(EmulatorConfig(latency=0.01, jitter=0.5, seed=2), lambda: 0.0)
    delays = [model.admit().delay for _ in range(400)]
    assert min(delays) == 0.0
    assert 0.4 <= delays.count(0.0) / 400 <= 0.6  # the draws below zero are clamped
    assert max(delays) <= 0.51


async def test_latency_is_deterministic_for_a_seed(clock: FakeClock) -> None:
    async def delays(seed: int) -> list[float]:
        recorded: list[float] = []

        async def sleep(seconds: float) -> None:
            recorded.append(seconds)

        config = EmulatorConfig(port=0, seed=seed, latency=0.3, jitter=0.2)
        async with (
            serve(config, clock=clock, sleep=sleep) as emulator,
            aiohttp.ClientSession(headers=HEADERS) as session,
        ):
            for _ in range(20):
                async with session.get(emulator.base_url + "/runs") as response:
                    await response.read()
        return recorded

    assert await delays(9) == await delays(9)
    assert await delays(9) != await delays(10)


async def test_latency_really_delays_the_answer() -> None:
    config = EmulatorConfig(port=0, latency=0.05)
    async with serve(config) as emulator, aiohttp.ClientSession(headers=HEADERS) as session:
        started = time.monotonic()
        async with session.get(emulator.base_url + "/runs") as response:
            assert response.status == 200
        assert time.monotonic() - started >= 0.05


# -- dropped connections -----------------------------------------------------------------


async def test_drop_rate(start: Start) -> None:
    api = await start(drop_rate=0.25, seed=4)
    results = await outcomes(api, 200)
    dropped = results.count("dropped")
    assert 0.17 <= dropped / 200 <= 0.33
    assert set(results) == {201, "dropped"}
    stats = await api.stats()
    # Accepted, then dropped: every one of them created its run.
    assert len(stats["runs"]) == 200
    assert stats["dropped"] == dropped
    assert stats["requests"]["by_endpoint"]["POST /runs"] == {
        "201": 200 - dropped,
        "dropped": dropped,
    }


async def test_drop_only_hits_requests_that_created_a_run(start: Start) -> None:
    api = await start(drop_rate=1.0)
    answer = await api.call("POST", "/runs", data=b"")
    assert answer.status == 400  # nothing created: answered normally
    assert (await api.call("GET", "/runs")).status == 200
    assert await outcome(api, 0) == "dropped"


async def test_drops_are_deterministic_for_a_seed(start: Start) -> None:
    first = await outcomes(await start(drop_rate=0.3, seed=8), 60)
    assert first == await outcomes(await start(drop_rate=0.3, seed=8), 60)
    assert first != await outcomes(await start(drop_rate=0.3, seed=9), 60)


# -- failing runs ------------------------------------------------------------------------


async def final_statuses(api: Api, count: int) -> list[str]:
    for i in range(count):
        assert (await api.create(start=START + i * HOUR)).status == 201
    api.clock.advance(1.0)
    return [run["status"] for run in (await api.stats())["runs"]]


async def test_fail_rate(start: Start) -> None:
    api = await start(fail_rate=0.2, seed=21)
    statuses = await final_statuses(api, 300)
    assert set(statuses) == {"success", "failed"}
    assert 0.14 <= statuses.count("failed") / 300 <= 0.26

    # Re-triggered attempts (new runs of the same windows) fail at the same rate.
    failed = [run["id"] for run in (await api.stats())["runs"] if run["status"] == "failed"]
    made = []
    for run_id in failed:
        answer = await api.call("POST", f"/runs/{run_id}/action", params={"op": "re-trigger"})
        assert answer.status == 200
        made.append(answer.body["id"])
    api.clock.advance(1.0)
    again = {run["id"]: run for run in (await api.stats())["runs"]}
    assert all(again[run_id]["status"] == "failed" for run_id in failed)  # they stay failed
    assert [again[new]["retrigger_of"] for new in made] == failed
    still = sum(again[new]["status"] == "failed" for new in made)
    assert still < len(failed) / 2


async def test_fail_rate_is_deterministic_for_a_seed(start: Start) -> None:
    first = await final_statuses(await start(fail_rate=0.5, seed=1), 40)
    assert first == await final_statuses(await start(fail_rate=0.5, seed=1), 40)
    assert first != await final_statuses(await start(fail_rate=0.5, seed=2), 40)


async def test_windows_count_runs_and_successes(start: Start) -> None:
    api = await start(fail_rate=1.0)
    for _ in range(3):
        await api.create()
    await api.create(start=START + HOUR)
    api.clock.advance(1)
    stats = await api.stats()
    windows = {(w["window_start"], w["runs"], w["live"], w["succeeded"]) for w in stats["windows"]}
    assert windows == {(START, 3, 0, 0), (START + HOUR, 1, 0, 0)}
    assert stats["duplicates"] == []  # failed runs ingest nothing: no window has two live runs


async def test_a_retriggered_window_is_not_a_duplicate_two_live_runs_are(start: Start) -> None:
    api = await start(fail_rate=0.5, seed=21, scheduled_for=1, running_for=1)
    for i in range(20):
        await api.create(start=START + i * HOUR)
    api.clock.advance(2)
    runs = (await api.stats())["runs"]
    failed = next(r for r in runs if r["status"] == "failed")
    ok = next(r for r in runs if r["status"] == "success")
    answer = await api.call("POST", f"/runs/{failed['id']}/action", params={"op": "re-trigger"})
    assert answer.status == 200
    await api.create(start=ok["window_start"])  # a second live run of a succeeded window
    stats = await api.stats()
    by_start = {w["window_start"]: w for w in stats["windows"]}
    retried = by_start[failed["window_start"]]
    assert (retried["runs"], retried["live"]) == (2, 1)
    assert retried["run_ids"] == [failed["id"], answer.body["id"]]
    assert [d["window_start"] for d in stats["duplicates"]] == [ok["window_start"]]
    assert stats["duplicates"][0]["live"] == 2


# -- expiring tokens ---------------------------------------------------------------------


async def issue(api: Api, **fields: str) -> Answer:
    form = {"grant_type": "client_credentials", "client_id": "id", "client_secret": "secret"}
    form.update(fields)
    return await api.call("POST", api.emulator.ims_url, absolute=True, headers=None, data=form)


async def test_issued_tokens_expire_after_their_lifetime(start: Start) -> None:
    api = await start(token_lifetime=60, token="static")
    answer = await issue(api)
    assert answer.status == 200
    assert answer.body["expires_in"] == 60
    bearer = {**HEADERS, "Authorization": f"Bearer {answer.body['access_token']}"}
    assert (await api.call("GET", "/runs", headers=bearer)).status == 200
    api.clock.advance(59.5)
    assert (await api.call("GET", "/runs", headers=bearer)).status == 200
    api.clock.advance(0.5)
    expired = await api.call("GET", "/runs", headers=bearer)
    assert expired.status == 401
    assert expired.body == {"error_code": "401013", "message": "Oauth token is not valid"}
    # A fresh token works again; the static one never expires.
    fresh = (await issue(api)).body["access_token"]
    assert (
        await api.call("GET", "/runs", headers={**bearer, "Authorization": f"Bearer {fresh}"})
    ).status == 200
    static = {**HEADERS, "Authorization": "Bearer static"}
    api.clock.advance(10**6)
    assert (await api.call("GET", "/runs", headers=static)).status == 200


async def test_expired_issued_tokens_are_refused_even_when_tokens_are_lenient(
    start: Start,
) -> None:
    api = await start(token_lifetime=5)
    token = (await issue(api)).body["access_token"]
    api.clock.advance(5)
    bearer = {**HEADERS, "Authorization": f"Bearer {token}"}
    assert (await api.call("GET", "/runs", headers=bearer)).status == 401
    assert (await api.call("GET", "/runs")).status == 200  # any other value still passes


# -- active runs per flow ----------------------------------------------------------------


async def test_max_active_runs_per_flow(start: Start) -> None:
    api = await start(max_active_runs=3, scheduled_for=1, running_for=1, retry_after=4)
    for i in range(3):
        assert (await api.create(start=START + i * HOUR)).status == 201
    refused = await api.create(start=START + 3 * HOUR)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "4"
    assert refused.body["type"].endswith("FLOW-1429-429")
    # Another flow has its own allowance.
    assert (await api.create(flow="other", start=START)).status == 201
    api.clock.advance(1.5)  # in progress still counts
    assert (await api.create(start=START + 3 * HOUR)).status == 429
    api.clock.advance(0.5)  # all three finished
    assert (await api.create(start=START + 3 * HOUR)).status == 201
    stats = await api.stats()
    assert stats["max_active_runs"] == {FLOW: 3, "other": 1}
    assert stats["requests"]["by_endpoint"]["POST /runs"]["429"] == 2
    assert len(stats["runs"]) == 5


async def test_max_active_runs_applies_to_re_trigger(start: Start) -> None:
    api = await start(max_active_runs=1, fail_rate=1.0, scheduled_for=1, running_for=1)
    run_id = (await api.create()).body["id"]
    api.clock.advance(2)
    assert (await api.create(start=START + HOUR)).status == 201  # now the only active one
    answer = await api.call("POST", f"/runs/{run_id}/action", params={"op": "re-trigger"})
    assert answer.status == 429
    api.clock.advance(2)
    answer = await api.call("POST", f"/runs/{run_id}/action", params={"op": "re-trigger"})
    assert answer.status == 200


async def test_max_active_runs_statistic_without_a_cap(start: Start) -> None:
    api = await start(scheduled_for=1, running_for=1)
    for i in range(4):
        await api.create(start=START + i * HOUR)
        api.clock.advance(0.6)
    # Runs last 2 s and start 0.6 s apart: at most 4 overlap (at 1.8 s).
    assert (await api.stats())["max_active_runs"] == {FLOW: 4}
    api.clock.advance(5)
    await api.create(start=START + 9 * HOUR)
    assert (await api.stats())["max_active_runs"] == {FLOW: 4}


@pytest.mark.parametrize("concurrency", [8])
async def test_max_requests_per_second_counts_concurrent_arrivals(
    start: Start, concurrency: int
) -> None:
    api = await start()
    await asyncio.gather(*(api.call("GET", "/runs") for _ in range(concurrency)))
    api.clock.advance(1.0)
    await api.call("GET", "/runs")
    assert (await api.stats())["max_requests_per_second"] == concurrency
