"""The coverage page, opened in a real headless chromium and judged by its rendered DOM.

Checkpoints come from the real CLI run against the bundled emulator with ``--fail-rate``
(finished with failures; killed mid-run with requests in flight; shards), and the page must
say exactly what each checkpoint holds: one cell per window in each state, a failed window's
error one click away, and not a single network request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from backfill import coverage
from backfill.coverage import LivePage, choose_layout, lay_out, page_data, render, write_page
from backfill.journal import Entry, Journal, holder
from backfill.metrics import Metrics, MetricsSource
from backfill.planner import FlowPlan, Plan, Shard, Window, format_time
from backfill.state import RecordCounts, WindowState

from .browser import Browser, Tab, launch
from .harness import (
    FLOW_FILE,
    FLOW_TABLE,
    START,
    cli_env,
    emulator,
    finish,
    hourly_run,
    run_cli,
    start_cli,
    two_flow_config,
    wait_for_runs,
)

# Every window the page drew, by state: a cell of one window counts for its state, a cell of
# many (an aggregate) for the mix it carries.
CELL_COUNTS = """(() => {
  const counts = {};
  for (const cell of document.querySelectorAll("main section.flow .cells .c")) {
    if (cell.dataset.mix) {
      for (const part of cell.dataset.mix.split(" ")) {
        const [state, n] = part.split(":");
        counts[state] = (counts[state] || 0) + Number(n);
      }
    } else {
      counts[cell.dataset.state] = (counts[cell.dataset.state] || 0) + 1;
    }
  }
  return counts;
})()"""
LEGEND_COUNTS = """Object.fromEntries([...document.querySelectorAll(
  ".overview .legend [data-state]")].map(e => [e.dataset.state,
  Number(e.querySelector(".count").textContent.replaceAll(",", ""))]))"""
WINDOWS_DRAWN = """[...document.querySelectorAll("main .cells .c")]
  .reduce((sum, cell) => sum + Number(cell.dataset.n), 0)"""


def checkpoint_counts(*paths: Path) -> dict[str, int]:
    """What the checkpoints themselves say, by state value (states with no window left out)."""
    total: Counter[str] = Counter()
    for path in paths:
        for state, n in Journal.open(path, None, readonly=True).counts().items():
            total[state.value] += n
    return {state: n for state, n in total.items() if n}


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    async with launch(tmp_path) as running:
        yield running


async def open_page(browser: Browser, page: Path, fragment: str = "") -> Tab:
    tab = await browser.tab()
    await tab.goto(page.as_uri() + fragment)
    await tab.until("document.documentElement.dataset.rendered")
    return tab


def assert_offline(tab: Tab, page: Path) -> None:
    """The page asked for nothing but itself, and raised no error (a blocked load is one)."""
    assert tab.requests == [page.as_uri()], tab.requests
    assert tab.errors == []


async def status_html(tmp_path: Path, *checkpoints: str, name: str = "coverage.html") -> Path:
    page = tmp_path / name
    args = ["status", "--html", str(page)]
    for checkpoint in checkpoints:
        args += ["--checkpoint", checkpoint]
    result = await run_cli(args, cli_env(None), tmp_path)
    assert result.code == 0, result.stderr
    assert "open it in a browser" in result.stdout
    return page


async def test_a_finished_backfill_with_failures_is_drawn_window_for_window(
    tmp_path: Path, browser: Browser
) -> None:
    config = two_flow_config(tmp_path, 72, checkpoint=str(tmp_path / "ck.jsonl"), rate="400/s")
    async with emulator(fail_rate=0.3, seed=5) as emu:
        run = await run_cli(
            ["run", "--config", str(config), "--wait", "--max-attempts", "2"],
            cli_env(emu),
            tmp_path,
        )
    assert run.code == 1, run.stderr  # some windows failed for good
    checkpoint = tmp_path / "ck.jsonl"
    expected = checkpoint_counts(checkpoint)
    assert expected.get("failed", 0) > 0
    assert set(expected) == {"succeeded", "failed"}, expected
    page = await status_html(tmp_path, str(checkpoint))

    tab = await open_page(browser, page)
    assert await tab.js(CELL_COUNTS) == expected
    # Hourly windows over three days: one cell per window, a row per day, in both flows.
    assert await tab.js("document.querySelectorAll('main .c[data-n=\"1\"]').length") == 144
    assert await tab.js("document.querySelectorAll('main .c.mix').length") == 0
    assert await tab.js("document.querySelectorAll('section.flow').length") == 2
    assert await tab.js("document.querySelectorAll('section.flow .row').length") == 6
    legend = await tab.js(LEGEND_COUNTS)
    assert {k: v for k, v in legend.items() if v} == expected
    # Every state of the checkpoint's machine is in the legend, with its count (0 too).
    assert set(legend) >= {s.value for s in WindowState}
    legend_text = await tab.js("document.querySelector('.overview .legend').textContent")
    # The checkpoint holds what each finished run ingested: the page sums it.
    journal = Journal.open(checkpoint, None, readonly=True)
    ingested = journal.record_totals()["output"]
    assert ingested > 0
    assert f"records ingested {ingested:,}" in legend_text
    assert "no process" in await tab.js("document.querySelector('td.holder').textContent")
    assert_offline(tab, page)


async def test_a_failed_window_shows_its_error_on_click_and_a_window_its_run_on_hover(
    tmp_path: Path, browser: Browser
) -> None:
    async with emulator(fail_rate=0.4, seed=11) as emu:
        run = await run_cli(
            hourly_run(FLOW_TABLE, 48, "--wait", "--max-attempts", "2", "--rate", "400/s"),
            cli_env(emu),
            tmp_path,
        )
    assert run.code == 1, run.stderr
    journal = Journal.open(tmp_path / "ck.jsonl", None, readonly=True)
    failed = [(w, e) for w, e in journal.items() if e.state is WindowState.FAILED]
    succeeded = [(w, e) for w, e in journal.items() if e.state is WindowState.SUCCEEDED]
    assert failed
    assert succeeded
    window, entry = failed[0]
    assert entry.errors
    page = await status_html(tmp_path, "ck.jsonl")
    tab = await open_page(browser, page)

    # Hover: the details follow the mouse.
    done, done_entry = succeeded[0]
    await tab.hover(f'.c[data-start="{done.start}"]')
    panel = await tab.js("document.getElementById('detail').innerText")
    assert done_entry.run_id is not None
    assert done_entry.run_id in panel
    assert "succeeded" in panel

    # Click: the details of the failed window stay, whatever the mouse does next.
    await tab.click(f'.c[data-start="{window.start}"]')
    await tab.hover(f'.c[data-start="{done.start}"]')
    panel = await tab.js("document.getElementById('detail').innerText")
    assert await tab.js("document.getElementById('detail').dataset.state") == "failed"
    assert entry.errors[-1]["message"] in panel
    assert entry.errors[-1]["code"] in panel
    for run_id in entry.all_runs():
        assert run_id in panel
    assert f"{format_time(window.start)} \u2013 {format_time(window.end)}" in panel  # UTC
    assert f"attempts\n{entry.attempt}" in panel or f"attempts\t{entry.attempt}" in panel
    assert await tab.js("document.querySelectorAll('.c.sel').length") == 1

    # The address of a selected window opens the page with it selected.
    link = await tab.js("location.hash")
    again = await open_page(browser, page, link)
    assert entry.errors[-1]["message"] in await again.js(
        "document.getElementById('detail').innerText"
    )
    assert_offline(tab, page)


async def test_a_killed_backfill_shows_windows_in_doubt_running_and_pending(
    tmp_path: Path, browser: Browser
) -> None:
    async with emulator(latency=0.3, scheduled_for=0.2, running_for=60, fail_rate=0.2) as emu:
        process = await start_cli(
            # 20 requests a second that each take 0.3 s: about six are in flight at any time.
            hourly_run(FLOW_FILE, 240, "--wait", "--rate", "20/s", "--concurrency", "8"),
            cli_env(emu),
            tmp_path,
        )
        await wait_for_runs(emu, 20)
        await asyncio.sleep(0.5)  # let a poll see some runs in progress
        process.send_signal(signal.SIGKILL)
        await finish(process)
    expected = checkpoint_counts(tmp_path / "ck.jsonl")
    assert expected.get("pending", 0) > 0
    assert expected.get("submitting", 0) > 0, expected  # requests in flight at the kill
    page = await status_html(tmp_path, "ck.jsonl")
    tab = await open_page(browser, page)
    assert await tab.js(CELL_COUNTS) == expected
    legend = await tab.js(LEGEND_COUNTS)
    assert {k: v for k, v in legend.items() if v} == expected
    labels = await tab.js("document.querySelector('.overview .legend').innerText")
    assert "in doubt" in labels  # what "submitting" means to a reader of a stopped checkpoint
    # In doubt and failed carry a pattern as well as a colour: readable without colour.
    patterns = await tab.js(
        "[...document.querySelectorAll('.c[data-state=\"submitting\"]')]"
        ".every(c => c.classList.contains('p-dots'))"
    )
    assert patterns is True
    assert_offline(tab, page)


async def test_shards_given_as_a_pattern_make_one_page_of_the_whole_plan(
    tmp_path: Path, browser: Browser
) -> None:
    config = two_flow_config(
        tmp_path, 48, checkpoint=f"{tmp_path}/ck-{{shard}}.jsonl", rate="400/s"
    )
    async with emulator(fail_rate=0.2, seed=2) as emu:
        env = cli_env(emu, BACKFILL_SHARD_COUNT="3")
        processes = [
            await start_cli(
                ["run", "--config", str(config), "--wait", "--max-attempts", "1"],
                env | {"JOB_COMPLETION_INDEX": str(i)},
                tmp_path,
            )
            for i in range(3)
        ]
        results = [await finish(p) for p in processes]
    assert all(r.code in (0, 1) for r in results), [r.stderr for r in results]
    shards = [tmp_path / f"ck-{i}.jsonl" for i in range(3)]
    expected = checkpoint_counts(*shards)
    assert sum(expected.values()) == 96
    page = await status_html(tmp_path, f"{tmp_path}/ck-{{shard}}.jsonl")
    tab = await open_page(browser, page)
    assert await tab.js(CELL_COUNTS) == expected
    assert await tab.js(WINDOWS_DRAWN) == 96
    assert await tab.js("document.querySelectorAll('table.files tr').length") == 4
    shard_column = await tab.js(
        "[...document.querySelectorAll('table.files tr td:nth-child(2)')].map(e => e.textContent)"
    )
    assert shard_column == ["0/3", "1/3", "2/3"]
    assert_offline(tab, page)


async def test_calendar_days_in_a_time_zone_get_a_cell_each_and_their_local_times(
    tmp_path: Path, browser: Browser
) -> None:
    async with emulator(fail_rate=0.2, seed=4) as emu:
        days = ["--start", "2024-01-01", "--end", "2025-01-01", "--window", "1d"]
        how = ["--checkpoint", "ck.jsonl", "--wait", "--max-attempts", "1", "--rate", "400/s"]
        run = await run_cli(
            ["run", "--flow-id", FLOW_TABLE, *days, "--timezone", "Europe/Madrid", *how],
            cli_env(emu),
            tmp_path,
        )
    assert run.code == 1, run.stderr
    expected = checkpoint_counts(tmp_path / "ck.jsonl")
    page = await status_html(tmp_path, "ck.jsonl")
    tab = await open_page(browser, page)
    assert await tab.js(CELL_COUNTS) == expected
    # A row per month, a cell per local day: 23 and 25 hours long on the days the clocks change.
    labels = await tab.js("[...document.querySelectorAll('.row .lab')].map(e => e.textContent)")
    assert labels == [f"2024-{m:02d}" for m in range(1, 13)]
    per_row = await tab.js(
        "[...document.querySelectorAll('.row .cells')].map(e => e.children.length)"
    )
    assert per_row == [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    assert await tab.js("document.querySelectorAll('main .c.mix').length") == 0
    spring = int(datetime(2024, 3, 31, tzinfo=ZoneInfo("Europe/Madrid")).timestamp())
    await tab.click(f'.c[data-start="{spring}"]')
    panel = await tab.js("document.getElementById('detail').innerText")
    assert "2024-03-30T23:00:00Z" in panel
    assert "2024-03-31 00:00:00 GMT+1 \u2013 2024-04-01 00:00:00 GMT+2" in panel
    assert "23h" in panel
    assert_offline(tab, page)


# ---------------------------------------------------------------- many windows


class CountedEntry(Entry):
    """A finished window with the records its run ingested (None: the service did not say)."""

    def __init__(self, source: Entry, records: int | None) -> None:
        super().__init__()
        self.state = source.state
        self.attempt = source.attempt
        self.run_id = source.run_id
        self.errors = source.errors
        self.counts = RecordCounts(-1, records, 0) if records is not None else None


class FutureJournal(Journal):
    """A checkpoint with empty and partial windows, records counted (most, not all)."""

    def get(self, window: Window) -> Entry | None:
        entry = super().get(window)
        if entry is None or entry.state is not WindowState.SUCCEEDED:
            return entry
        hour = window.start // 3600
        later = CountedEntry(entry, None if hour % 7 == 0 else hour % 1000)
        if hour % 5 == 0:
            later.state = WindowState.EMPTY
            later.counts = RecordCounts(0, 0, 0)
        elif hour % 11 == 0:
            later.state = WindowState.PARTIAL
        return later


async def _big_checkpoint(
    path: Path, windows: int, *, journal_type: type[Journal] = Journal
) -> Journal:
    """A checkpoint of ``windows`` hourly windows, one in three recorded (no service needed)."""
    plan = Plan((FlowPlan.single(FLOW_TABLE, START, START + 3600 * windows, 3600),))
    journal = journal_type.open(path, plan, durable=False)
    for i, window in enumerate(plan.windows()):
        if i % 3:
            continue
        journal.record_nowait(window, WindowState.SUBMITTING, attempt=1)
        if i % 51 == 0:
            continue  # in doubt
        journal.record_nowait(window, WindowState.SUBMITTED, attempt=1, run_id=f"run-{i}")
        if i % 17 == 0:
            errors = [{"code": "CONNECTOR-2900-400", "message": f"window {i} failed"}]
            journal.record_nowait(window, WindowState.FAILED, attempt=1, errors=errors)
        elif i % 4:
            journal.record_nowait(window, WindowState.SUCCEEDED, attempt=1)
    await journal.commit()
    return journal


async def test_a_hundred_thousand_windows_aggregate_into_cells_that_carry_their_mix(
    tmp_path: Path, browser: Browser
) -> None:
    journal = await _big_checkpoint(tmp_path / "big.jsonl", 100_000)
    await journal.close()
    expected = checkpoint_counts(tmp_path / "big.jsonl")
    page = await status_html(tmp_path, "big.jsonl")
    tab = await open_page(browser, page)
    assert await tab.js(WINDOWS_DRAWN) == 100_000
    assert await tab.js(CELL_COUNTS) == expected
    cells = await tab.js("document.querySelectorAll('main .c').length")
    assert 4_000 <= cells <= 4_200  # one cell per day of 11.4 years, 24 windows each
    meta = await tab.js("document.querySelector('section.flow .meta').textContent")
    assert "each cell is the windows of one day" in meta
    # A cell of many windows lists them; a click on one shows that window.
    await tab.click(".c.m-alert")
    items = await tab.js("document.querySelectorAll('#detail li').length")
    assert items == 24
    await tab.click("#detail li:nth-child(1)")
    assert await tab.js("document.getElementById('detail').dataset.kind") == "window"
    assert_offline(tab, page)


async def test_states_and_record_counts_of_newer_checkpoints_plug_in(
    tmp_path: Path, browser: Browser
) -> None:
    journal = await _big_checkpoint(tmp_path / "ck.jsonl", 2_000, journal_type=FutureJournal)
    data = page_data([journal])
    await journal.close()
    counts = data["totals"]
    assert counts["empty"] > 0
    assert counts["partial"] > 0
    flow = data["flows"][0]
    known = [n for n in flow["n"] if n is not None]
    assert data["records"]["sum"] == sum(known)
    assert data["records"]["known"] == len(known)
    assert data["records"]["unknown"] > 0  # finished windows whose count is not recorded
    # A plan with a time zone (calendar windows): its times are shown in it too.
    flow["zone"] = "Europe/Madrid"
    page = tmp_path / "later.html"
    page.write_text(render(data))
    tab = await open_page(browser, page)
    assert await tab.js(CELL_COUNTS) == counts
    await tab.click(f'.c[data-start="{START}"]')
    panel = await tab.js("document.getElementById('detail').innerText")
    assert "2024-01-01T00:00:00Z" in panel
    assert "Europe/Madrid" in panel
    assert "2024-01-01 01:00:00 GMT+1" in panel
    legend = await tab.js("document.querySelector('.overview .legend').innerText")
    assert "empty (no records)" in legend
    assert "partial" in legend
    assert f"{data['records']['sum']:,}" in legend
    assert f"unknown for {data['records']['unknown']:,} finished windows" in legend
    assert_offline(tab, page)


# ---------------------------------------------------------------- live


async def test_a_running_backfill_serves_the_page_and_it_follows_the_windows(
    tmp_path: Path, browser: Browser
) -> None:
    async with emulator(scheduled_for=0.2, running_for=0.5) as emu:
        process = await start_cli(
            hourly_run(FLOW_TABLE, 80, "--wait", "--rate", "10/s", "--metrics-port", "0"),
            cli_env(emu),
            tmp_path,
        )
        port = await _metrics_port(process)
        base = f"http://127.0.0.1:{port}"
        tab = await browser.tab()
        await tab.goto(base + "/")
        await tab.until("document.documentElement.dataset.rendered")
        first = await tab.js(CELL_COUNTS)
        holder = await tab.js("document.querySelector('td.holder').textContent")
        assert holder == f"this backfill, process {process.pid}"
        assert await tab.js("document.querySelector('#status .live') !== null")
        # The page asks the backfill again by itself, and shows what has finished since.
        before = first.get("succeeded", 0)
        await tab.until(
            f"Number(document.documentElement.dataset.renders) >= 2 && ({CELL_COUNTS}"
            f").succeeded > {before}"
        )
        later = await tab.js(CELL_COUNTS)
        assert sum(later.values()) == 80
        metrics = await tab.js(f"fetch('{base}/metrics').then(r => r.text())")
        assert "backfill_windows{" in metrics
        assert tab.errors == []  # (once the backfill is over, its page's polls fail: no server)
        result = await finish(process)
    assert result.code == 0, result.stderr
    assert all(url.startswith(base + "/") for url in tab.requests), tab.requests


async def _metrics_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    while line := await asyncio.wait_for(process.stdout.readline(), 60):
        event = orjson.loads(line)
        if event.get("event") == "metrics_serving":
            return int(event["port"])
    raise AssertionError("the backfill never said where it serves its metrics")


# ---------------------------------------------------------------- without a browser


def test_layouts_stay_at_a_glance() -> None:
    day, hour = 86400, 3600
    # Hourly windows over ten days: one cell per window, a row per day.
    assert choose_layout(hour, True, 10 * day, 240, 8000).row == "day"
    # A year of them: a cell per day (of 24 windows), a row per month.
    year = choose_layout(hour, True, 365 * day, 8760, 8000)
    assert (year.unit, year.row) == ("day", "month")
    # A year of days: one per cell, rows of months; ten years of days too.
    assert (choose_layout(day, True, 365 * day, 365, 8000).row) == "month"
    assert (choose_layout(day, True, 3650 * day, 3650, 8000).unit) == "window"
    # Fifteen minutes over a week: a row per day; over a year: aggregated.
    assert choose_layout(900, True, 7 * day, 672, 8000).row == "day"
    assert choose_layout(900, True, 365 * day, 35040, 8000).unit == "day"
    # Calendar months (28 to 31 days): a cell per month, a row per year.
    months = choose_layout(31 * day, False, 3 * 365 * day, 36, 8000)
    assert (months.unit, months.row) == ("month", "year")


def test_local_days_across_daylight_saving_changes_get_one_cell_each() -> None:
    zone = ZoneInfo("Europe/Madrid")
    # Local midnights of March and April 2024: the day of 23 hours included.
    starts = []
    day = datetime(2024, 3, 1, tzinfo=zone)
    while day.month in (3, 4):
        starts.append(int(day.timestamp()))
        day = (day + timedelta(days=1, hours=2)).replace(hour=0)
    lengths = {b - a for a, b in itertools.pairwise(starts)}
    assert lengths == {86400, 82800}
    layout = choose_layout(86400, False, starts[-1] - starts[0], len(starts), 8000)
    assert (layout.unit, layout.row) == ("day", "month")
    rows = lay_out(starts, layout, zone)
    assert [label for label, _ in rows] == ["2024-03", "2024-04"]
    assert [[cell[0] for cell in cells] for _, cells in rows] == [list(range(31)), list(range(30))]
    assert all(cell[2] == 1 for _, cells in rows for cell in cells)


def test_the_page_is_offline_by_policy_and_escapes_what_it_shows(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    flow = "</script><script>alert(1)</script>"
    plan = Plan((FlowPlan.single(flow, START, START + 7200, 3600),))

    async def make() -> Journal:
        journal = Journal.open(path, plan, durable=False)
        await journal.close()
        return Journal.open(path, None, readonly=True)

    page = tmp_path / "page.html"
    write_page(page, [asyncio.run(make())])
    text = page.read_text()
    assert "default-src 'none'" in text
    assert "connect-src 'none'" in text
    assert flow not in text  # the data cannot close its script element
    assert "http://" not in text
    assert "https://" not in text


async def test_lock_holder_names_the_process_that_holds_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    plan = Plan((FlowPlan.single(FLOW_TABLE, START, START + 7200, 3600),))
    journal = Journal.open(path, plan)
    try:
        found = holder(path)
        assert found is not None
        assert found.pid == os.getpid()
    finally:
        await journal.close()
    assert holder(path) is None
    assert holder(tmp_path / "never.jsonl") is None


async def test_a_page_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    plan = Plan((FlowPlan.single(FLOW_TABLE, START, START + 7200, 3600),))
    await Journal.open(path, plan).close()
    before = path.read_bytes()
    for target, problem in (
        (tmp_path / "no" / "p.html", "does not exist"),
        (tmp_path, "folder"),
        ("", "is empty; name the file to write"),  # found in review: "--html:  is a folder"
    ):
        result = await run_cli(
            ["status", "--checkpoint", str(path), "--html", str(target), "--refresh"],
            cli_env(None),
            tmp_path,
        )
        assert result.code == 2
        assert result.stderr.count("\n") == 1
        assert "--html" in result.stderr
        assert problem in result.stderr
    assert path.read_bytes() == before


async def test_a_shard_that_holds_no_window_of_a_flow_still_makes_a_page(tmp_path: Path) -> None:
    flows = (
        FlowPlan.single(FLOW_TABLE, START, START + 3600, 3600),  # one window: one shard has it
        FlowPlan.single(FLOW_FILE, START, START + 3600 * 8, 3600),
    )
    journals = []
    for index in range(4):
        plan = Plan(flows, Shard(index, 4))
        journal = Journal.open(tmp_path / f"ck-{index}.jsonl", plan, durable=False)
        await journal.close()
        journals.append(Journal.open(tmp_path / f"ck-{index}.jsonl", None, readonly=True))
    alone = [page_data([journal]) for journal in journals]
    assert sorted(doc["flows"][0]["windows"] for doc in alone) == [0, 0, 0, 1]
    assert all(doc["flows"][1]["windows"] == 2 for doc in alone)
    whole = page_data(journals)
    assert [flow["windows"] for flow in whole["flows"]] == [1, 8]
    assert whole["totals"] == {"pending": 9}
    assert "<script>" in render(alone[0])


async def test_the_live_page_reads_the_journal_on_its_loop_and_serves_it_beside_metrics(
    tmp_path: Path,
) -> None:
    plan = Plan((FlowPlan.single(FLOW_TABLE, START, START + 3600 * 4, 3600),))
    journal = Journal.open(tmp_path / "ck.jsonl", plan, durable=False)
    now = [100.0]
    live = LivePage([journal], asyncio.get_running_loop(), min_refresh=3.0, clock=lambda: now[0])
    metrics = Metrics(
        MetricsSource(
            window_counts=journal.counts,
            responses=dict,
            submitted=int,
            retries=int,
            rate_limited=int,
            rate_limit_wait=float,
            token_renewals=int,
        ),
        shard="0/1",
    )
    port = metrics.serve(0, "127.0.0.1", pages=live.pages())

    def get(path: str) -> tuple[str, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.headers["Content-Type"], answer.read()

    try:
        kind, body = await asyncio.to_thread(get, "/coverage.json")
        assert kind == "application/json"
        assert orjson.loads(body)["totals"] == {"pending": 4}
        await journal.record(Window(FLOW_TABLE, START, START + 3600), WindowState.SUBMITTING)
        # Within half the refresh interval every viewer gets the same reading ...
        _, body = await asyncio.to_thread(get, "/coverage.json")
        assert orjson.loads(body)["totals"] == {"pending": 4}
        # ... and then a fresh one, read on the loop that owns the journal.
        now[0] += 2.0
        _, body = await asyncio.to_thread(get, "/coverage.json")
        fresh = orjson.loads(body)
        assert fresh["totals"] == {"pending": 3, "submitting": 1}
        assert fresh["live"] is True
        assert fresh["checkpoints"][0]["held_by"] == os.getpid()
        kind, page = await asyncio.to_thread(get, "/")
        assert kind.startswith("text/html")
        assert b"connect-src 'self'" in page
        assert b'"label":"in flight"' in page  # while it runs, "submitting" is in flight
        kind, text = await asyncio.to_thread(get, "/metrics")
        assert kind.startswith("text/plain")
        assert b'backfill_windows{shard="0/1",state="submitting"} 1.0' in text
    finally:
        await journal.close()


async def test_a_live_reading_lets_the_backfill_run_between_chunks_of_windows(
    tmp_path: Path,
) -> None:
    journal = await _big_checkpoint(tmp_path / "ck.jsonl", 20_000)
    reading = asyncio.ensure_future(coverage._read_on_loop([journal]))
    turns = 0
    while not reading.done():  # the loop's other work, e.g. the engine's
        turns += 1
        await asyncio.sleep(0)
    assert turns >= 20_000 // coverage._CHUNK
    assert sum(len(seen) for _, seen in reading.result().flows.values()) == 20_000
    await journal.close()


async def test_a_checkpoint_named_twice_is_read_once(tmp_path: Path) -> None:
    # Found in review: `--checkpoint ck.jsonl --checkpoint ./ck.jsonl` (or a shard pattern and
    # one of its files) counted every window twice, in the text, the JSON and the page.
    flows = (FlowPlan.single(FLOW_TABLE, START, START + 3600 * 6, 3600),)
    for index in range(2):
        await Journal.open(tmp_path / f"ck-{index}.jsonl", Plan(flows, Shard(index, 2))).close()
    named_twice = [
        f"{tmp_path}/ck-{{shard}}.jsonl",
        str(tmp_path / "ck-1.jsonl"),
        "./ck-0.jsonl",
        "ck-0.jsonl",
    ]
    args = [arg for checkpoint in named_twice for arg in ("--checkpoint", checkpoint)]
    document = await run_cli(["status", *args, "--json"], cli_env(None), tmp_path)
    assert document.code == 0, document.stderr
    assert orjson.loads(document.stdout)["counts"]["pending"] == 6
    text = await run_cli(["status", *args], cli_env(None), tmp_path)
    assert text.code == 0, text.stderr
    assert text.stdout.count("ck-0.jsonl") == 1
    assert text.stdout.count("ck-1.jsonl") == 1
    page = await run_cli(["status", *args, "--html", "p.html"], cli_env(None), tmp_path)
    assert page.code == 0, page.stderr
    assert "coverage of 6 windows" in page.stdout


# ------------------------------------------------------------ narrow screens, stdout, flags


async def _checkpoint_of_days(path: Path, days: int) -> list[Window]:
    """Hourly windows over ``days`` days; the first failed with an error, the next submitted."""
    plan = Plan((FlowPlan.single(FLOW_TABLE, START, START + days * 86400, 3600),))
    journal = Journal.open(path, plan)
    windows = list(plan.windows())
    for i, window in enumerate(windows[:48]):
        await journal.record(window, WindowState.SUBMITTING, attempt=1)
        await journal.record(window, WindowState.SUBMITTED, run_id=f"run-{i}")
    await journal.record(
        windows[0], WindowState.FAILED, errors=[{"code": "X-1", "message": "it broke"}]
    )
    await journal.close()
    return windows


async def test_on_a_narrow_screen_the_grid_fits_and_the_details_stay_in_sight(
    tmp_path: Path, browser: Browser
) -> None:
    windows = await _checkpoint_of_days(tmp_path / "ck.jsonl", 60)
    page = await status_html(tmp_path, "ck.jsonl")
    tab = await browser.tab(width=600, height=800)
    await tab.goto(page.as_uri())
    await tab.until("document.documentElement.dataset.rendered")
    # Nothing is wider than the screen: no sideways scrolling to reach a cell.
    assert await tab.js("document.documentElement.scrollWidth") <= 600
    await tab.click(f'.c[data-start="{windows[0].start}"]')
    seen = await tab.js(
        """(() => {
      const panel = document.getElementById('detail').getBoundingClientRect();
      const cell = document.querySelector('.c.sel').getBoundingClientRect();
      const at = document.elementFromPoint(cell.x + cell.width / 2, cell.y + cell.height / 2);
      return {top: panel.top, bottom: panel.bottom, height: innerHeight, width: panel.width,
              cellShown: at !== null && at.classList.contains('sel')};
    })()"""
    )
    # The details of the clicked window are on screen (not below the sixty rows of the grid),
    # and they do not hide the cell that was clicked.
    assert 0 <= seen["top"] < seen["bottom"] <= seen["height"], seen
    assert seen["width"] <= 600
    assert seen["cellShown"], seen
    assert "it broke" in await tab.js("document.getElementById('detail').innerText")
    # Every row can be scrolled clear of the sheet: the last row's cells can be clicked too.
    await tab.click(f'.c[data-start="{windows[-1].start}"]')
    assert await tab.js("document.getElementById('detail').dataset.state") == "pending"
    assert_offline(tab, page)


async def test_html_dash_writes_the_page_to_stdout(tmp_path: Path) -> None:
    await _checkpoint_of_days(tmp_path / "ck.jsonl", 2)
    result = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--html", "-"], cli_env(None), tmp_path
    )
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("<!doctype html>")
    assert result.stdout.rstrip().endswith("</html>")
    assert "it broke" in result.stdout
    assert not (tmp_path / "-").exists()


async def test_html_and_json_together_are_refused_in_one_line(tmp_path: Path) -> None:
    await _checkpoint_of_days(tmp_path / "ck.jsonl", 2)
    before = (tmp_path / "ck.jsonl").read_bytes()
    result = await run_cli(
        ["status", "--checkpoint", "ck.jsonl", "--html", "page.html", "--json"],
        cli_env(None),
        tmp_path,
    )
    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert "--json" in result.stderr
    assert "--html" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "page.html").exists()
    assert (tmp_path / "ck.jsonl").read_bytes() == before
