"""One retry budget for listings: a listing that keeps failing ends the run with exit 75 after
exactly ``--max-retries`` retries, whichever part of the engine lists (issue 19).

The lister retries a failing page itself; nothing above it may retry the listing again with a
budget of its own. Each case runs the real CLI against the real emulator, whose listings all
fail (``list_error_rate=1.0``) while its other endpoints work, and counts the GET /runs the
emulator received: the first try and ``--max-retries`` retries, no more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import FLOW_FILE, FLOW_TABLE, cli_env, emulator, hourly_run, run_cli

MAX_RETRIES = 3
# Spent quickly: retries at most 20 ms apart, and the emulator's 503s ask for no wait.
BUDGET = ["--max-retries", str(MAX_RETRIES), "--backoff-max", "0.02"]
# Sent without looking first for runs the service already has: the listing under test comes
# from the part named, not from that look.
NO_LOOK = ["--existing-runs", "ignore", "--yes"]

CASES = {
    # The look for runs the service already has, before anything is sent.
    "adopt": ({}, hourly_run(FLOW_FILE, 1)),
    # The delta-column gate: does the flow have a run yet?
    "gate": ({}, hourly_run(FLOW_TABLE, 1, "--delta-column", "DOB", *NO_LOOK)),
    # The monitor's status poll of the run it follows (--wait).
    "monitor": ({}, hourly_run(FLOW_FILE, 1, "--wait", *NO_LOOK)),
    # Reconciliation of a request whose answer was lost.
    "reconcile": ({"drop_rate": 1.0}, hourly_run(FLOW_FILE, 1, *NO_LOOK)),
}


@pytest.mark.parametrize("part", list(CASES))
async def test_a_listing_that_keeps_failing_ends_with_75_after_max_retries(
    tmp_path: Path, part: str
) -> None:
    faults, args = CASES[part]
    async with emulator(list_error_rate=1.0, retry_after=0, **faults) as emu:
        result = await run_cli([*args, *BUDGET], cli_env(emu), tmp_path, deadline=60.0)
        stats = emu.stats()
    assert result.code == 75, result.stderr
    assert f"gave up after {MAX_RETRIES} retries" in result.stderr
    listings = stats["requests"]["by_endpoint"]["GET /runs"]
    assert sum(listings.values()) == 1 + MAX_RETRIES, listings
    assert set(listings) <= {"500", "502", "503"}  # every one of them failed
    if part != "adopt":
        assert len(stats["runs"]) == (0 if part == "gate" else 1)
