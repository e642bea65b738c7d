"""aioresponses, made to work with aiohttp 3.14 (for the client and auth unit tests).

aioresponses 0.7.9 builds its canned responses without the ``stream_writer`` argument that
aiohttp 3.14 (a security release) made required: pnuckowski/aioresponses#289, fix pending in
#288. Until a release has it, answers are built with a response class that supplies one.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aioresponses import aioresponses
from yarl import URL

__all__ = ["CompatResponse", "Mocked"]


class _NoStreamWriter:
    output_size = 0


class CompatResponse(aiohttp.ClientResponse):
    """A ClientResponse that does not need a real stream writer."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoStreamWriter())
        super().__init__(method, url, **kwargs)


class Mocked(aioresponses):
    """aioresponses whose canned answers are built with ``CompatResponse``."""

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", CompatResponse)
        super().add(url, method, *args, **kwargs)

    def sent(self, method: str, url: str) -> list[dict[str, Any]]:
        """The keyword arguments of every request sent to ``method url``."""
        return [dict(call.kwargs) for call in self.requests.get((method, URL(url)), [])]
