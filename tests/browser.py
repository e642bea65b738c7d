"""A real headless browser for the tests: Debian's ``chromium``, driven over the DevTools protocol.

A small client of the Chrome DevTools Protocol (CDP) over aiohttp's websockets: start
chromium, open a tab, load a page, evaluate JavaScript in it, click and hover with real
mouse events, and record every network request and every error the page produced. The
browser's proxy is a dead port on loopback, so a page that tried to reach anything but
127.0.0.1 would fail -- and the recorded requests show that it tried.

``./scripts/test`` installs chromium when it is missing (``apt-get install chromium``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

__all__ = ["Browser", "Tab", "chromium_path", "launch"]

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    """The browser answered a command with an error, or the page threw."""


class Browser:
    """One chromium process and the websocket to it."""

    def __init__(
        self, process: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        self._process = process
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tabs: dict[str, Tab] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = orjson.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif "sessionId" in data and data["sessionId"] in self._tabs:
                self._tabs[data["sessionId"]].event(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the connection"))

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self._ws.send_str(orjson.dumps(message).decode())
        answer = await asyncio.wait_for(future, 60)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def tab(self, width: int = 1280, height: int = 900) -> Tab:
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        tab = Tab(self, attached["sessionId"])
        self._tabs[tab.session] = tab
        for domain in ("Page", "Network", "Runtime", "Log"):
            await tab.call(f"{domain}.enable")
        await tab.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return tab

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call("Browser.close")
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        try:
            await asyncio.to_thread(self._process.wait, 10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)


class Tab:
    """One page of the browser: navigation, JavaScript, mouse, what it requested."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []

    def event(self, data: dict[str, Any]) -> None:
        self.events.append(data)
        for name, future in list(self._waiters):
            if name == data["method"] and not future.done():
                future.set_result(data)
                self._waiters.remove((name, future))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.call(method, self.session, **params)

    async def goto(self, url: str) -> float:
        """Load ``url``; the seconds from the request to the load event."""
        loaded: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(("Page.loadEventFired", loaded))
        started = time.perf_counter()
        answer = await self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise CdpError(f"could not open {url}: {answer['errorText']}")
        await asyncio.wait_for(loaded, 60)
        return time.perf_counter() - started

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises are awaited); its JSON value."""
        answer = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise CdpError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def until(self, expression: str, deadline: float = 60.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        give_up = time.monotonic() + deadline
        while True:
            value = await self.js(expression)
            if value:
                return value
            if time.monotonic() > give_up:
                raise AssertionError(f"{expression!r} never became true in {deadline} s")
            await asyncio.sleep(0.1)

    async def _centre(self, selector: str) -> tuple[float, float]:
        box = await self.js(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
            " })()"
        )
        if box is None:
            raise AssertionError(f"nothing matches {selector!r}")
        return float(box[0]), float(box[1])

    async def hover(self, selector: str) -> None:
        x, y = await self._centre(selector)
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    async def click(self, selector: str) -> None:
        """A real click: the mouse moves to the element's centre, presses and releases."""
        x, y = await self._centre(selector)
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def screenshot(self, path: Path) -> None:
        import base64  # noqa: PLC0415 - only for screenshots

        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(shot["data"]))

    @property
    def requests(self) -> list[str]:
        """Every URL the page asked the network stack for, in order."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    @property
    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and policy violations the page produced."""
        found: list[str] = []
        for e in self.events:
            if e["method"] == "Runtime.exceptionThrown":
                found.append(str(e["params"]["exceptionDetails"]))
            elif e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error":
                found.append(str(e["params"]["entry"].get("text")))
            elif e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                found.append(str(e["params"]["args"]))
        return found


@contextlib.asynccontextmanager
async def launch(work: Path | None = None) -> AsyncIterator[Browser]:
    """Start headless chromium (its proxy a dead port) and connect to it."""
    binary = chromium_path()
    if binary is None:
        raise RuntimeError("chromium is not installed; ./scripts/test installs it (apt-get)")
    with tempfile.TemporaryDirectory(prefix="chromium-", dir=work) as profile:
        port_file = Path(profile) / "DevToolsActivePort"
        log = open(Path(profile) / "stderr.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(  # noqa: ASYNC220 - it returns at once
            [
                binary,
                "--headless",
                "--no-sandbox",  # as root (in a container) chromium refuses its sandbox
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                f"--proxy-server={DEAD_PROXY}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--mute-audio",
                "--hide-scrollbars",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LANG": "C.UTF-8"},
        )
        try:
            give_up = time.monotonic() + 60
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                if process.poll() is not None or time.monotonic() > give_up:
                    log.flush()
                    tail = (Path(profile) / "stderr.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"chromium did not start:\n{tail}")
                await asyncio.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
                browser = Browser(process, ws)
                try:
                    yield browser
                finally:
                    await browser.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
