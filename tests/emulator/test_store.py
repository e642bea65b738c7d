"""The store without HTTP: body validation, lifecycle rules, re-trigger, persistence."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from backfill.emulator import EmulatorConfig, serve
from backfill.emulator.errors import FlowServiceError
from backfill.emulator.store import (
    DEFAULT_IDENTITY,
    RunStatus,
    Store,
    parse_run_body,
    read_state_file,
    write_state_file,
)

from .conftest import FLOW, HEADERS, HOUR, START, FakeClock, Start


def body(**params: object) -> bytes:
    return orjson.dumps({"flowId": FLOW, "params": params})


def test_window_times_as_digits_or_integers() -> None:
    request = parse_run_body(body(windowStartTime="0100", windowEndTime=200))
    assert (request.window_start, request.window_end) == (100, 200)
    # Digits are kept as sent; integers become digits.
    assert request.params == {"windowStartTime": "0100", "windowEndTime": "200"}
    assert request.delta_column is None


def test_params_are_echoed_with_extras() -> None:
    request = parse_run_body(
        body(windowStartTime=1, windowEndTime=2, startTime=3, deltaColumn={"name": "DOB"}, x=1)
    )
    assert request.params == {
        "windowStartTime": "1",
        "windowEndTime": "2",
        "startTime": "3",
        "deltaColumn": {"name": "DOB"},
        "x": 1,
    }
    assert request.delta_column == "DOB"
    request = parse_run_body(body(windowStartTime=1, windowEndTime=2, deltaColumn=None))
    assert "deltaColumn" not in request.params


def test_the_largest_ten_digit_time_is_accepted() -> None:
    assert parse_run_body(body(windowStartTime=1, windowEndTime="9999999999")).window_end == (
        9_999_999_999
    )
    with pytest.raises(FlowServiceError) as caught:
        parse_run_body(body(windowStartTime=1, windowEndTime="10000000000"))
    assert caught.value.code == 1400


def test_status_follows_the_clock() -> None:
    now = [100.0]
    store = Store(EmulatorConfig(scheduled_for=2, running_for=3), lambda: now[0])
    run = store.create_run(
        parse_run_body(body(windowStartTime=1, windowEndTime=2)), DEFAULT_IDENTITY
    )
    assert run.status(100.0) is RunStatus.SCHEDULED
    assert run.status(101.9) is RunStatus.SCHEDULED
    assert run.status(102.0) is RunStatus.IN_PROGRESS
    assert run.status(104.9) is RunStatus.IN_PROGRESS
    assert run.status(105.0) is RunStatus.SUCCESS


def test_a_success_without_records_may_be_re_triggered() -> None:
    now = [100.0]
    store = Store(EmulatorConfig(), lambda: now[0])
    run = store.create_run(
        parse_run_body(body(windowStartTime=1, windowEndTime=2)), DEFAULT_IDENTITY
    )
    now[0] += 1
    with pytest.raises(FlowServiceError):
        store.retrigger(run.id, DEFAULT_IDENTITY)
    run.output_records = 0  # an empty window
    new = store.retrigger(run.id, DEFAULT_IDENTITY)
    assert new is not run
    assert new.retrigger_of == run.id
    assert (new.window_start, new.window_end, new.attempts) == (1, 2, 1)
    assert new.status(now[0]) is RunStatus.SCHEDULED
    assert run.status(now[0]) is RunStatus.SUCCESS


def test_retrigger_same_run_reschedules_it() -> None:
    now = [100.0]
    store = Store(EmulatorConfig(retrigger_same_run=True), lambda: now[0])
    run = store.create_run(
        parse_run_body(body(windowStartTime=1, windowEndTime=2)), DEFAULT_IDENTITY
    )
    now[0] += 1
    run.output_records = 0  # an empty window
    etag = run.etag
    assert store.retrigger(run.id, DEFAULT_IDENTITY) is run
    assert run.attempts == 2
    assert run.etag != etag
    assert run.status(now[0]) is RunStatus.SCHEDULED


def test_state_file_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    write_state_file(path, {"store": {"runs": []}})
    assert read_state_file(path) == {"format": 1, "store": {"runs": []}}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left
    assert read_state_file(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a state file"):
        read_state_file(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="format"):
        read_state_file(tmp_path / "other.json")


async def test_stopping_writes_the_state_file(tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "state.json"
    async with serve(EmulatorConfig(port=0, state_file=state), clock=clock) as emulator:
        assert not state.exists()
        async with (
            aiohttp.ClientSession(headers=HEADERS) as session,
            session.post(
                emulator.base_url + "/runs",
                json={"flowId": FLOW, "params": {"windowStartTime": 1, "windowEndTime": 2}},
            ) as response,
        ):
            assert response.status == 201
    saved = read_state_file(state)
    assert saved is not None
    assert len(saved["store"]["runs"]) == 1


async def test_state_survives_a_restart(start: Start, tmp_path: Path, clock: FakeClock) -> None:
    config = {
        "state_file": tmp_path / "state.json",
        "seed": 3,
        "fail_rate": 0.5,
        "scheduled_for": 1,
        "running_for": 1,
    }
    first = await start(**config)
    ids = [(await first.create(start=START + i * HOUR, delta="DOB")).body["id"] for i in range(6)]
    issued = await first.call(
        "POST",
        first.emulator.ims_url,
        absolute=True,
        headers=None,
        data={"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"},
    )
    clock.advance(2)
    before = {run["id"]: run for run in (await first.stats())["runs"]}
    failed = next(run_id for run_id, run in before.items() if run["status"] == "failed")
    retriggered = await first.call("POST", f"/runs/{failed}/action?op=re-trigger")
    assert retriggered.status == 200
    first.emulator.app.save()  # what stopping does

    second = await start(**config)
    after = {run["id"]: run for run in (await second.stats())["runs"]}
    assert list(after) == [*ids, retriggered.body["id"]]
    assert after[retriggered.body["id"]]["retrigger_of"] == failed
    for run_id in after:
        original = (await first.call("GET", f"/runs/{run_id}")).body
        assert (await second.call("GET", f"/runs/{run_id}")).body == original
    # The flow keeps its deltaColumn and the issued token stays valid.
    assert (await second.create(start=START + 10 * HOUR, delta="other")).status == 400
    bearer = {**HEADERS, "Authorization": f"Bearer {issued.body['access_token']}"}
    assert (await second.call("GET", "/runs", headers=bearer)).status == 200
    # The random streams carry on where they stopped: no id is ever drawn twice.
    new = (await second.create(start=START + 11 * HOUR)).body["id"]
    assert new not in ids
    assert new == (await first.create(start=START + 11 * HOUR)).body["id"]


async def test_declared_flows_override_the_saved_ones(start: Start, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = await start(state_file=state)
    assert (await first.create(delta="DOB")).status == 201  # a table-based flow
    first.emulator.app.save()
    second = await start(state_file=state, flows=((FLOW, "file"),))
    assert (await second.create(start=START + HOUR)).status == 201
    assert (await second.create(start=START + 2 * HOUR, delta="DOB")).status == 400
    assert len((await second.stats())["runs"]) == 2
