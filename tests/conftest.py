"""Fixtures shared by the unit tests: the HTTP client's mocks, the engine's checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest

from backfill.emulator.arrival import looking_loop
from backfill.journal import Journal
from backfill.planner import Plan

from .mock_http import Mocked

OpenJournal = Callable[[Plan], Journal]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test's loop notes when it looks at its sockets, as ``backfill emulator``'s does:
    the in-process emulator meters requests as they reached its socket (arrival.py)."""
    return {"looking": looking_loop}


@pytest.fixture
def mocked() -> Iterator[Mocked]:
    """aioresponses in force for the test: no request leaves the process."""
    mock = Mocked()
    with mock:
        yield mock


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[OpenJournal]:
    """Open the test's checkpoint for a plan; closed at the end."""
    opened: list[Journal] = []

    def open_journal(plan: Plan) -> Journal:
        opened.append(Journal.open(tmp_path / "ck.jsonl", plan))
        return opened[-1]

    yield open_journal
    for each in opened:
        await each.close()
