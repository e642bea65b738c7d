"""Shared fixtures: a fake clock and sleep, and emulators started in-process on port 0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from backfill.emulator import Emulator, EmulatorConfig, serve

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
HEADERS = {
    "Authorization": "Bearer test-token",
    "x-api-key": "test-key",
    "x-gw-ims-org-id": "TEST@AdobeOrg",
    "x-sandbox-name": "prod",
}
START = 1_651_584_991  # the tutorial's windowStartTime
HOUR = 3600


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeSleep:
    """Records the delays the emulator asks for and returns at once."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, parsed JSON body (or None), headers."""

    status: int
    body: Any
    headers: Mapping[str, str]


class Api:
    """A small client of one running emulator, for tests."""

    def __init__(self, emulator: Emulator, session: aiohttp.ClientSession, clock: FakeClock):
        self.emulator = emulator
        self.session = session
        self.clock = clock

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        data: bytes | str | dict[str, str] | None = None,
        params: Any = None,
        headers: Mapping[str, str] | None = HEADERS,
        absolute: bool = False,
    ) -> Answer:
        """Send one request; ``path`` is relative to the Flow Service base URL."""
        url = path if absolute else self.emulator.base_url + path
        async with self.session.request(
            method, url, json=json, data=data, params=params, headers=dict(headers or {})
        ) as response:
            raw = await response.read()
            body = await response.json(content_type=None) if raw else None
            return Answer(response.status, body, dict(response.headers))

    async def create(
        self,
        flow: str = FLOW,
        start: int = START,
        end: int | None = None,
        delta: str | None = None,
        **extra: Any,
    ) -> Answer:
        """``POST /runs`` for one window (an hour from ``start`` by default)."""
        params: dict[str, Any] = {
            "windowStartTime": str(start),
            "windowEndTime": str(end if end is not None else start + HOUR),
        }
        if delta is not None:
            params["deltaColumn"] = {"name": delta}
        return await self.call("POST", "/runs", json={"flowId": flow, "params": params, **extra})

    async def stats(self) -> dict[str, Any]:
        """``GET /__emulator/stats`` over HTTP."""
        answer = await self.call("GET", self.emulator.url + "/__emulator/stats", absolute=True)
        assert answer.status == 200
        body: dict[str, Any] = answer.body
        return body


Start = Callable[..., Awaitable[Api]]


@pytest.fixture
def clock() -> FakeClock:
    """The clock every emulator of the test runs on."""
    return FakeClock()


@pytest.fixture
def sleeper() -> FakeSleep:
    """The sleep every emulator of the test uses for latency."""
    return FakeSleep()


@pytest.fixture
async def start(clock: FakeClock, sleeper: FakeSleep) -> AsyncIterator[Start]:
    """Start emulators with ``EmulatorConfig`` overrides; all are stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def starter(**overrides: Any) -> Api:
            config = EmulatorConfig(port=0, **overrides)
            emulator = await stack.enter_async_context(serve(config, clock=clock, sleep=sleeper))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Api(emulator, session, clock)

        yield starter


@pytest.fixture
async def api(start: Start) -> Api:
    """An emulator with the default configuration."""
    return await start()
