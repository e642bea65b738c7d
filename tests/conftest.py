"""Fixtures shared by the unit tests: the HTTP client's mocks, the engine's checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from backfill.journal import Journal
from backfill.planner import Plan

from .mock_http import Mocked

OpenJournal = Callable[[Plan], Journal]


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
