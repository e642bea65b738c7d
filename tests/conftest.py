"""Fixtures shared by the unit tests of the HTTP client and the token providers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from .mock_http import Mocked


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
