"""When the emulator says a request arrived (its sliding-second rate limit counts by it)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

from backfill.emulator.arrival import arrived_after, looking_loop


def _reads(sock: socket.socket, ready: asyncio.Event) -> Callable[[], None]:
    """A reader that takes the bytes, as the server's transport does (so the next look does
    not find them again)."""

    def read() -> None:
        sock.recv(1024)
        ready.set()

    return read


def test_bytes_that_end_a_wait_arrived_when_the_wait_ended_not_when_it_began() -> None:
    """A request after a quiet spell is charged to when it came, not to the start of the
    silence (which put it up to a second early, into a second that could be full: a 429)."""
    loop = looking_loop()
    ours, theirs = socket.socketpair()
    try:

        async def look() -> tuple[float, float]:
            ready = asyncio.Event()
            loop.add_reader(ours.fileno(), _reads(ours, ready))
            began = time.monotonic()
            sender = threading.Timer(0.3, theirs.send, args=(b"POST /runs",))
            sender.start()
            await ready.wait()  # the loop's look waits 0.3 s, then the bytes wake it
            loop.remove_reader(ours.fileno())
            sender.join()
            return began, arrived_after(ours)

        began, arrived = loop.run_until_complete(look())
        assert arrived - began >= 0.25, "charged to the end of the silence, not its start"
        assert arrived <= time.monotonic()
    finally:
        ours.close()
        theirs.close()
        loop.close()


def test_bytes_already_waiting_arrived_after_the_previous_look() -> None:
    """A look that finds bytes ready at once: they came after the look before it returned."""
    loop = looking_loop()
    ours, theirs = socket.socketpair()
    try:

        async def look() -> tuple[float, float]:
            await asyncio.sleep(0.01)  # a look returns (a timer)
            after_look = time.monotonic()
            theirs.send(b"POST /runs")
            time.sleep(0.05)  # noqa: ASYNC251 - busy on purpose: the bytes wait for a look
            ready = asyncio.Event()
            loop.add_reader(ours.fileno(), _reads(ours, ready))
            await ready.wait()
            loop.remove_reader(ours.fileno())
            return after_look, arrived_after(ours)

        after_look, arrived = loop.run_until_complete(look())
        assert arrived <= after_look + 0.01, "no later than the busy spell's start"
    finally:
        ours.close()
        theirs.close()
        loop.close()
