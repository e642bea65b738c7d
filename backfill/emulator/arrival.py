"""When a request reached the emulator's socket, not when its handler ran.

A handler runs after the event loop has read the request's bytes, which can be tens of
milliseconds after they arrived if the emulator's own process was descheduled or busy. Stamped
then, requests a client sent evenly look bunched, and a sliding-second limit counts more than
the client sent: the emulator's lateness, charged to the client. A remote gateway does not
share the client's CPU, and meters requests as they reach it.

The emulator's loop therefore uses a selector that notes each time it looks at its sockets
(``looking_loop``, the loop factory of ``backfill emulator`` and of the tests). Bytes that a
look returns arrived after the previous look returned; if this look waited (nothing was
ready when it began), they are what woke it, so they arrived as it returned. The selector
keeps that moment for each socket it finds readable. (It once kept the start of a look that
waited: a request that ended a second of silence was charged a second early, to a second
that may have been full, and the emulator answered 429 to a client that kept the rate.)
``arrived_after(socket)`` is that moment for the request being handled, whose bytes the
latest look at its socket returned (a client sends the next request on a connection only
after this one's answer). Without such a loop it is now, as before.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import time
import weakref
from typing import Any

__all__ = ["arrived_after", "looking_loop"]

# A look that took this long waited: nothing was ready when it began, and what it returns
# woke it (a look that finds something ready returns in microseconds unless the process is
# descheduled meanwhile; then the previous look's return is the bound, an earlier one).
_WAITED = 0.001

_LOOKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LookingSelector] = (
    weakref.WeakKeyDictionary()
)


class _LookingSelector(selectors.DefaultSelector):
    """The default selector, noting for each look the earliest its events can have arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._returned = time.monotonic()
        self.read_since: dict[int, float] = {}  # fd -> its latest read's earliest arrival

    def select(self, timeout: float | None = None) -> list[Any]:
        began = time.monotonic()
        ready: list[Any] = super().select(timeout)
        returned = time.monotonic()
        earliest = returned if returned - began >= _WAITED else self._returned
        self._returned = returned
        since = self.read_since
        for key, events in ready:
            if events & selectors.EVENT_READ:
                since[key.fd] = earliest
        return ready


def looking_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop whose looks at its sockets ``arrived_after`` can read."""
    selector = _LookingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _LOOKS[loop] = selector
    return loop


def arrived_after(sock: socket.socket | None) -> float:
    """A ``time.monotonic`` moment the request read from ``sock`` cannot have arrived before.

    Called from its handler on the running loop; without a ``looking_loop`` it is now.
    """
    selector = _LOOKS.get(asyncio.get_running_loop())
    now = time.monotonic()
    if selector is None or sock is None:
        return now
    return min(now, selector.read_since.get(sock.fileno(), now))
