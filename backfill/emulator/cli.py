"""``backfill emulator``: parse the flags, serve until SIGINT or SIGTERM, save the state."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .app import serve
from .arrival import looking_loop
from .config import EmulatorConfig, FlowKind

__all__ = ["build_parser", "config_from_args", "main"]

PROG = "backfill emulator"

_DESCRIPTION = """\
Run a local Adobe Flow Service (runs, flows) and IMS token endpoint for demos, tests and
dry rehearsals of a backfill. Point backfill at the printed base URL.

By default every header value is accepted, flows are registered by their first run (a first
run with params.deltaColumn makes a table-based flow, without it a file-based one), runs are
"scheduled" for --scheduled-for seconds, "inProgress" for --running-for seconds, then
"success" (or "failed" at --fail-rate), and nothing misbehaves. Each fault flag makes it
misbehave like production; all draws are deterministic for a --seed.

It plays the API as Adobe documents it: a re-trigger creates a new run (new id, same flow
and window; the failed one stays failed), as help/sources/tutorials/api/retry-flows.md
says. The "API variants" flags play what the documentation leaves open or what sits in
front of the service in production (a lagging listing, a proxy's error codes).
"""

_EPILOG = """\
listing:
  GET /runs orders by createdAt ascending (orderby=-createdAt for newest first), 20 runs a
  page unless limit=N; follow _links.next.href (a keyset cursor: runs created meanwhile
  never hide existing ones). Runs echo their params, and every activity carries the window
  in durationSummary.extensions.windowStart/windowEnd (ms) as in monitor.md

inspection:
  GET  /__emulator/stats   every run with its window, status and the run it re-triggered;
                           per window its run ids, how many runs are live (scheduled, in
                           progress or succeeded) and succeeded; duplicates (windows with
                           two live runs: a failed run re-triggered into a new one is
                           not one); requests per endpoint and status, the most requests
                           in one second, the most active runs per flow
  POST /__emulator/reset   forget runs, undeclared flows and counters
  POST /__emulator/revoke-tokens   every token issued so far is refused (401) from now

examples:
  backfill emulator --port 8080 --flow 3abea21c-7e36-4be1-bec1-d3bad0e3e0de:table
  backfill emulator --flow 3abea21c-7e36-4be1-bec1-d3bad0e3e0de:table:once:updated_at \\
      --empty-rate 0.1 --partial-rate 0.05 --status-vocabulary upper --require-start-time

  backfill emulator --port 0 --ready-file /tmp/emu.url --seed 7 \\
      --rate-limit 20 --error-rate 0.05 --drop-rate 0.01 --fail-rate 0.1
  backfill emulator --state demo-state.json    # restart mid-demo without losing runs
  backfill emulator --port 0 --runs-without-params --token-only-links --listing-lag 5 \\
      --drop-rate 0.2 --error-rate 0.05 --post-error-codes 520,408
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show every default that is a value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], (), False):
            return action.help  # "(default: None)" says nothing a reader can use
        return super()._get_help_string(action)


_FLOW = re.compile(r"(?P<id>.+?):(?P<kind>table|file)(?::(?P<freq>[a-z]+))?(?::(?P<delta>[^:]+))?")
_ADVERBS = {"hourly": "hour", "daily": "day", "weekly": "week", "minutely": "minute"}


def _flow(text: str) -> tuple[str, FlowKind, str | None, str | None]:
    """``ID:KIND[:FREQUENCY[:DELTA_COLUMN]]``: the frequency and the delta column are optional."""
    match = _FLOW.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ID:KIND[:FREQUENCY[:DELTA_COLUMN]] with KIND table or file "
            "(e.g. 3abea21c-...:table, 3abea21c-...:table:hourly, "
            "3abea21c-...:table:once:updated_at)"
        )
    frequency = match.group("freq")
    if frequency is not None:
        frequency = _ADVERBS.get(frequency, frequency)
    return match.group("id"), FlowKind(match.group("kind")), frequency, match.group("delta")


def _status_codes(text: str) -> tuple[int, ...]:
    try:
        codes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of HTTP statuses (e.g. 520,408)"
        ) from None
    if not codes:
        raise argparse.ArgumentTypeError("give at least one HTTP status (e.g. 520,408)")
    return codes


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``backfill emulator``; every flag mirrors an ``EmulatorConfig`` field."""
    default = EmulatorConfig()
    parser = _Parser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_Formatter
    )

    server = parser.add_argument_group("server")
    server.add_argument("--host", default=default.host, help="address to listen on")
    server.add_argument(
        "--port",
        type=int,
        default=default.port,
        metavar="N",
        help="port to listen on; 0 picks a free port",
    )
    server.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=default.seed,
        help="seed of every random draw (run ids, fates, faults): same seed and same "
        "requests give the same outcomes",
    )
    server.add_argument(
        "--response-shape",
        choices=("full", "items"),
        default=default.response_shape,
        help="answer of POST /runs: 'full' is the whole run object (as in the tutorial), "
        '\'items\' is {"items": [{"id", "etag"}]} (as in the API reference)',
    )
    server.add_argument(
        "--max-page-size",
        type=int,
        metavar="N",
        default=default.max_page_size,
        help="cap on the limit of GET /runs (the page size is 20 without limit)",
    )
    server.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help="once listening, write the base URL into FILE (atomically); removed at exit",
    )
    server.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="load runs, flows and issued tokens from FILE at start and save them there "
        "(atomically) at exit, so a restart forgets nothing",
    )

    flows = parser.add_argument_group("flows")
    flows.add_argument(
        "--flow",
        type=_flow,
        action="append",
        default=[],
        metavar="ID:KIND[:FREQ[:COLUMN]]",
        help="declare a flow, KIND 'table' (its first run must carry deltaColumn, unless the "
        "flow has COLUMN from creation) or 'file' (runs must not); FREQ is its "
        "scheduleParams.frequency: once (the default), minute, hour/hourly, day/daily, "
        "week/weekly, and only 'once' flows take on-demand runs (others: 1462-400). "
        "Repeatable. Once any flow is declared, other flow ids get 1430-400 on POST /runs "
        "and 1439-404 on GET /flows",
    )

    flows.add_argument(
        "--hidden-flow",
        action="append",
        default=[],
        metavar="ID",
        help="a flow that access labels hide from every caller: GET /flows and POST /runs "
        "answer 2120-403; repeatable",
    )

    auth = parser.add_argument_group(
        "authentication (each flag makes its check strict; without it any non-empty value passes)"
    )
    auth.add_argument(
        "--token",
        help="the only static bearer token accepted (tokens issued by /ims/token/v3 are "
        "valid too until they expire)",
    )
    auth.add_argument("--api-key", help="the x-api-key value required")
    auth.add_argument("--org", help="the x-gw-ims-org-id value required (e.g. ABC123@AdobeOrg)")
    auth.add_argument("--sandbox", help="the x-sandbox-name value required (e.g. prod)")
    auth.add_argument("--client-id", help="the client_id that /ims/token/v3 requires")
    auth.add_argument("--client-secret", help="the client_secret that /ims/token/v3 requires")
    auth.add_argument(
        "--token-lifetime",
        type=float,
        default=default.token_lifetime,
        metavar="SECONDS",
        help="lifetime of issued tokens; an expired one gets 401 401013 (make it short to "
        "rehearse a token expiring mid-backfill)",
    )

    lifecycle = parser.add_argument_group("run lifecycle")
    lifecycle.add_argument(
        "--scheduled-for",
        type=float,
        default=default.scheduled_for,
        metavar="SECONDS",
        help="how long a new or re-triggered run stays 'scheduled'",
    )
    lifecycle.add_argument(
        "--running-for",
        type=float,
        default=default.running_for,
        metavar="SECONDS",
        help="how long it then stays 'inProgress' before 'success' or 'failed'",
    )
    lifecycle.add_argument(
        "--fail-rate",
        type=float,
        default=default.fail_rate,
        metavar="FRACTION",
        help="fraction of runs (and of re-triggered attempts) that end 'failed'",
    )
    lifecycle.add_argument(
        "--empty-rate",
        type=float,
        default=default.empty_rate,
        metavar="FRACTION",
        help="fraction of successful attempts that ingest no record (recordSummary counts 0; "
        "such a run may be re-triggered)",
    )
    lifecycle.add_argument(
        "--partial-rate",
        type=float,
        default=default.partial_rate,
        metavar="FRACTION",
        help="fraction of successful attempts with failed records (failedRecordCount > 0 and "
        "errors, as in monitor.md)",
    )
    lifecycle.add_argument(
        "--stuck-rate",
        type=float,
        default=default.stuck_rate,
        metavar="FRACTION",
        help="fraction of attempts that never finish, reporting --stuck-status once started",
    )
    lifecycle.add_argument(
        "--stuck-status",
        default=default.stuck_status,
        metavar="WORD",
        help="the status word of a stuck run (a word clients do not know, to rehearse one)",
    )
    lifecycle.add_argument(
        "--status-vocabulary",
        choices=("camel", "upper"),
        default=default.status_vocabulary,
        help="run status words: 'camel' as public material shows them (scheduled, "
        "inProgress, success, failed), 'upper' as the spec's StatusDTO (SCHEDULED, "
        "IN_PROGRESS, SUCCESS, PARTIAL_SUCCESS, FAILED, ...)",
    )
    lifecycle.add_argument(
        "--status-synonyms",
        action="store_true",
        help="draw each attempt's words among every synonym of the vocabulary (queued, "
        "pending, running, completed, partialSuccess, partialFailure, cancelled, canceled, "
        "QUEUED, COMPLETED, PARTIAL_FAILURE, ...)",
    )
    lifecycle.add_argument(
        "--max-active-runs",
        type=int,
        metavar="N",
        help="most runs of one flow scheduled or in progress at once; more gets 429 "
        "(POST /runs and re-trigger)",
    )

    faults = parser.add_argument_group(
        "faults (on Flow Service requests; IMS only gets the latency, stats get none)"
    )
    faults.add_argument(
        "--rate-limit",
        type=int,
        metavar="N",
        help="most requests per sliding second (rejected ones count too); more gets 429 "
        "with Retry-After",
    )
    faults.add_argument(
        "--retry-after",
        type=int,
        default=default.retry_after,
        metavar="SECONDS",
        help="the Retry-After header of every 429 and 503",
    )
    faults.add_argument(
        "--error-rate",
        type=float,
        default=default.error_rate,
        metavar="FRACTION",
        help="fraction of requests answered 500, 502 or 503 before anything is done",
    )
    faults.add_argument(
        "--list-error-rate",
        type=float,
        default=default.list_error_rate,
        metavar="FRACTION",
        help="fraction of listings (GET /runs) answered 500, 502 or 503, on top of "
        "--error-rate: reads that fail while writes work",
    )
    faults.add_argument(
        "--latency",
        type=float,
        default=default.latency,
        metavar="SECONDS",
        help="delay added to every request",
    )
    faults.add_argument(
        "--jitter",
        type=float,
        default=default.jitter,
        metavar="SECONDS",
        help="uniform +/- spread around --latency (never below 0)",
    )
    faults.add_argument(
        "--require-start-time",
        action="store_true",
        help="refuse a POST /runs without params.startTime (1400-400), as the table-based run "
        "spec lists it as required",
    )
    faults.add_argument(
        "--retrigger-spelling",
        choices=("re-trigger", "RE_TRIGGER", "both"),
        default=default.retrigger_spelling,
        help="the op of POST /runs/{id}/action accepted: the tutorial's re-trigger, the "
        "spec's RE_TRIGGER, or both; any other is 1434-400 (unsupported operation)",
    )
    faults.add_argument(
        "--drop-rate",
        type=float,
        default=default.drop_rate,
        metavar="FRACTION",
        help="fraction of POST /runs and re-triggers that create the run, then close the "
        "connection without answering (the client cannot know the run exists)",
    )
    faults.add_argument(
        "--post-error-codes",
        type=_status_codes,
        default=default.post_error_codes,
        metavar="CODES",
        help="HTTP statuses (408 and 5xx, comma separated, e.g. 520,408) that a proxy answers "
        "to POST /runs and re-trigger: the --error-rate ones use them before anything is done, "
        "the --drop-rate ones answer one after the run was created (instead of hanging up)",
    )

    variants = parser.add_argument_group(
        "API variants (what the documentation leaves open, or sits in front of the service)"
    )
    variants.add_argument(
        "--runs-without-params",
        action="store_true",
        help="listed and fetched runs carry no params: their window is only in the "
        "activities' durationSummary.extensions.windowStart/windowEnd, in milliseconds, as "
        "the run of monitor.md (so a scheduled run, with no activity yet, does not say it)",
    )
    variants.add_argument(
        "--token-only-links",
        action="store_true",
        help="_links.next.href carries only continuationToken (as the spec's PageLink "
        "example); a page asked with the token and no filters lists the whole sandbox from "
        "there, unless the client sends its filters again",
    )
    variants.add_argument(
        "--self-link",
        action="store_true",
        help="the last page's _links.next.href points back at that page itself",
    )
    variants.add_argument(
        "--listing-lag",
        type=float,
        default=default.listing_lag,
        metavar="SECONDS",
        help="a run shows in GET /runs listings only this long after its creation "
        "(GET /runs/{id} finds it at once)",
    )
    variants.add_argument(
        "--retrigger-same-run",
        action="store_true",
        help="a re-trigger schedules the failed run again under the same id, as earlier "
        "versions of this emulator did (the documented API creates a new run)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The configuration the flags describe; raises ValueError naming the flag to fix."""
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        seed=args.seed,
        response_shape=args.response_shape,
        flows=tuple((flow_id, kind) for flow_id, kind, _, _ in args.flow),
        flow_schedules=tuple(
            (flow_id, frequency or "once", column)
            for flow_id, _, frequency, column in args.flow
            if frequency is not None or column is not None
        ),
        token=args.token,
        api_key=args.api_key,
        org=args.org,
        sandbox=args.sandbox,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        scheduled_for=args.scheduled_for,
        running_for=args.running_for,
        fail_rate=args.fail_rate,
        rate_limit=args.rate_limit,
        retry_after=args.retry_after,
        error_rate=args.error_rate,
        list_error_rate=args.list_error_rate,
        latency=args.latency,
        jitter=args.jitter,
        drop_rate=args.drop_rate,
        max_active_runs=args.max_active_runs,
        max_page_size=args.max_page_size,
        state_file=args.state,
        runs_without_params=args.runs_without_params,
        token_only_links=args.token_only_links,
        self_link=args.self_link,
        listing_lag=args.listing_lag,
        post_error_codes=args.post_error_codes,
        retrigger_same_run=args.retrigger_same_run,
        empty_rate=args.empty_rate,
        partial_rate=args.partial_rate,
        status_vocabulary=args.status_vocabulary,
        status_synonyms=args.status_synonyms,
        stuck_rate=args.stuck_rate,
        stuck_status=args.stuck_status,
        require_start_time=args.require_start_time,
        retrigger_spelling=args.retrigger_spelling,
        hidden_flows=tuple(args.hidden_flow),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``backfill emulator ARGV``; returns the exit status (0 after SIGINT/SIGTERM)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, or a flag argparse itself refused
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    ready_file: Path | None = args.ready_file
    if ready_file is not None:
        # A stale file from an earlier run would tell a waiting script to go too early.
        ready_file.unlink(missing_ok=True)
    _no_full_collections()
    try:
        # The loop notes when it looks at its sockets: requests are metered as they arrived,
        # not as late as a busy machine lets the emulator read them (see arrival.py).
        with asyncio.Runner(loop_factory=looking_loop) as runner:
            runs = runner.run(_serve_until_signalled(config, ready_file))
    except ValueError as exc:  # an unreadable --state file
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, the state file cannot be written, ...
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
    saved = f"; state saved to {config.state_file}" if config.state_file else ""
    print(f"{PROG} stopped ({runs} runs{saved})", file=sys.stderr)
    return 0


def _no_full_collections() -> None:
    """Keep the cyclic collector off the runs the emulator holds.

    A full collection scans every object the process keeps: with 12,000 runs (a minute at
    200 a second) it stopped the loop for 18 ms, the requests that came meanwhile were read
    together, charged to one moment (arrival.py), and a client that kept the rate got a 429.
    What start-up built is frozen; the young generations are still collected as usual (a
    request's garbage), the oldest only after a million of theirs: never, in practice. The
    emulator's own process only: the tests' in-process emulators leave pytest's alone.
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000)


async def _serve_until_signalled(config: EmulatorConfig, ready_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(config) as emulator:
            print(f"{PROG} listening on {emulator.base_url}", flush=True)
            if ready_file is not None:
                _write_atomically(ready_file, emulator.base_url)
            await stop.wait()
            return len(emulator.app.store.runs)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _write_atomically(path: Path, text: str) -> None:
    # Readers poll for the file: they must never see it empty or half written.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
