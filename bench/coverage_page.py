"""Scenario "coverage": the coverage page of 100,000 windows, opened in headless chromium.

A checkpoint of 100,000 hourly windows (2010-2021; most succeeded with a run id, some failed
with an error, some in doubt, the last ones pending) is written through the journal; then
``backfill status --html`` makes the page (timed as a subprocess), and Debian's chromium,
driven over the DevTools protocol (``tests/browser.py``), opens it in a fresh tab per
repetition. "Open and render" is the time from the navigation request to the first frame
painted after the page's script drew every cell; the target is 2 s.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from backfill.journal import Journal
from backfill.planner import FlowPlan, Plan
from backfill.state import WindowState
from bench.common import FLOW_ID, HOUR, START, Result, Settings
from tests.browser import launch

NAME = "coverage"
TITLE = "Coverage page: 100,000 windows written, opened and drawn in headless chromium"
WINDOWS = 100_000
OPEN_TARGET_S = 2.0
FIRST_PAINT = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))"


async def _checkpoint(path: Path, windows: int) -> None:
    plan = Plan((FlowPlan.single(FLOW_ID, START, START + HOUR * windows, HOUR),))
    journal = Journal.open(path, plan, durable=False)
    pending_from = windows * 95 // 100
    for i, window in enumerate(plan.windows()):
        if i >= pending_from:
            break
        journal.record_nowait(window, WindowState.SUBMITTING, attempt=1)
        if i % 997 == 0:
            continue  # in doubt
        run = f"{i:08x}-7e36-4be1-bec1-d3bad0e3e0de"
        journal.record_nowait(window, WindowState.SUBMITTED, attempt=1, run_id=run)
        if i % 31 == 0:
            errors = [{"code": "CONNECTOR-2900-400", "message": "The source could not be reached."}]
            journal.record_nowait(window, WindowState.FAILED, attempt=1, errors=errors)
        else:
            journal.record_nowait(window, WindowState.SUCCEEDED, attempt=1)
    await journal.close()


async def _open(page: Path, repetitions: int, work: Path) -> tuple[list[float], list[float]]:
    opened: list[float] = []
    drawn: list[float] = []
    async with launch(work) as browser:
        for _ in range(repetitions):
            tab = await browser.tab()
            started = time.perf_counter()
            await tab.goto(page.as_uri())
            await tab.js(FIRST_PAINT)
            opened.append(time.perf_counter() - started)
            drawn.append(float(await tab.js("document.documentElement.dataset.rendered")) / 1000)
            cells = await tab.js(
                "[...document.querySelectorAll('main .c')].reduce((s, c) => s + +c.dataset.n, 0)"
            )
            if cells != WINDOWS:
                raise RuntimeError(f"the page drew {cells} windows, not {WINDOWS}")
            await tab.call("Page.close")
    return opened, drawn


def run(settings: Settings) -> Result:
    result = Result(NAME, TITLE)
    checkpoint = settings.work / "coverage.jsonl"
    page = settings.work / "coverage.html"
    asyncio.run(_checkpoint(checkpoint, WINDOWS))
    written: list[float] = []
    for _ in range(settings.repetitions):
        started = time.perf_counter()
        command = ["status", "--checkpoint", str(checkpoint), "--html", str(page)]
        subprocess.run(
            [sys.executable, "-m", "backfill", *command, "--log-format", "json"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        written.append(time.perf_counter() - started)
    opened, drawn = asyncio.run(_open(page, settings.repetitions, settings.work))
    size = page.stat().st_size / 1e6
    result.details = {"windows": WINDOWS, "window": "1h", "page_mb": round(size, 2)}
    result.figure("backfill status --html (whole command)", "s", written)
    result.figure("page size", "MB", [size] * len(written))
    result.figure("open and render in chromium", "s", opened, "<=", OPEN_TARGET_S)
    result.figure("of which the page's script, from navigation", "s", drawn)
    return result
