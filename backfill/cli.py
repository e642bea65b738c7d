"""The ``backfill`` command: parse arguments, build settings, call the job, map errors to exits.

backfill plan     [--config F] [--flow-id ID --start T --end T --window D] [--json]
backfill run      [--config F] [--flow-id ...] [--delta-column NAME] [options]
backfill retry    --checkpoint PATH [options]
backfill status   --checkpoint PATH [--json] [--refresh]
backfill emulator [--host 127.0.0.1] [--port 8080] [faults]
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import BackfillError, ExitCode

if TYPE_CHECKING:
    from .settings import Settings

# Start-up: this module imports only argparse and the error codes, so ``--help`` and a usage
# error cost little. Settings (pydantic), logging (structlog), the job (asyncio, and aiohttp
# once a run opens its session) are imported once the command line has parsed.

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message} (see {self.prog} --help)", ExitCode.USAGE)


def _fail(message: str, code: int) -> NoReturn:
    import orjson  # noqa: PLC0415 - see the top: imported when needed

    from .logs import json_mode, scrubber  # noqa: PLC0415

    message = scrubber.scrub(message)
    if json_mode():
        line = orjson.dumps(
            {"level": "error", "event": "error", "message": message, "exit_code": code}
        )
        print(line.decode(), file=sys.stderr)
    else:
        print(f"backfill: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _flag(group: Any, name: str, help: str, **kwargs: Any) -> None:
    group.add_argument(f"--{name}", default=argparse.SUPPRESS, help=help, **kwargs)


def _plan_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to backfill (or [[flows]] in --config)")
    _flag(group, "config", "TOML config file (BACKFILL_CONFIG)", metavar="FILE", dest="config_file")
    _flag(group, "flow-id", "the flow to run (a UUID)", metavar="ID")
    _flag(
        group,
        "start",
        "range start: unix seconds or ISO-8601 (in --timezone if no offset)",
        metavar="T",
    )
    _flag(group, "end", "range end, exclusive; not in the future", metavar="T")
    _flag(
        group,
        "window",
        "window size. Fixed durations, cut from the range's start: 30s, 15m, 6h, 24h (exactly "
        "86,400 s). Calendar sizes in --timezone: 1d (local midnight to midnight: 23, 24 or "
        "25 h), 1w (from Monday), 1mo, 1q, 1y, and multiples such as 2w or 3mo",
        metavar="D",
    )
    _flag(
        group,
        "timezone",
        "IANA time zone (e.g. Europe/Madrid; default UTC): times without an offset are read "
        "in it and calendar windows follow its calendar",
        metavar="ZONE",
    )
    _flag(
        group,
        "align",
        "calendar (default for calendar sizes): cut on local midnights, Mondays, the 1st, a "
        "clipped first/last window where the range is not on one; start: cut from the range's "
        "start (always so for fixed sizes)",
        metavar="HOW",
    )
    _flag(
        group, "shard", "this process's shard INDEX/COUNT (or JOB_COMPLETION_INDEX)", metavar="I/N"
    )


def _run_flags(parser: argparse.ArgumentParser, *, plan: bool) -> None:
    if plan:
        _plan_flags(parser)
        _flag(
            parser,
            "delta-column",
            "delta column of a table-based flow (first run only)",
            metavar="NAME",
        )
        _flag(
            parser,
            "extend",
            "accept a plan that only adds windows to the checkpoint's",
            action="store_true",
        )
        _flag(
            parser,
            "retry-failed",
            "also send again windows that failed for good",
            action="store_true",
        )
    api = parser.add_argument_group("service (credentials come from the environment only)")
    _flag(api, "base-url", "Flow Service base URL (https, or http to loopback)", metavar="URL")
    _flag(api, "ims-url", "IMS token endpoint for client credentials", metavar="URL")
    _flag(api, "api-key", "x-api-key: the credential's client id", metavar="KEY")
    _flag(api, "org-id", "x-gw-ims-org-id, like ABC123@AdobeOrg", metavar="ORG")
    _flag(api, "sandbox-name", "x-sandbox-name (default prod)", metavar="NAME")
    _flag(api, "connect-timeout", "seconds to connect (default 10)", metavar="S")
    _flag(api, "request-timeout", "seconds to wait for an answer (default 60)", metavar="S")
    how = parser.add_argument_group("how")
    _flag(how, "checkpoint", "checkpoint file (may hold {shard})", metavar="PATH")
    _flag(
        how,
        "rate",
        "requests per time, all requests counted: N/s, N/min, N/h (default 10/s)",
        metavar="RATE",
    )
    _flag(
        how,
        "rate-per-shard",
        "rate of this shard (default: --rate divided by shards)",
        metavar="RATE",
    )
    _flag(how, "concurrency", "requests in flight at most (default 16)", metavar="N")
    _flag(how, "order", "oldest-first (default) or newest-first", metavar="ORDER")
    _flag(
        how,
        "grace",
        "seconds in-flight requests get after SIGTERM/SIGINT (default 20)",
        metavar="S",
    )
    runs = parser.add_argument_group("following runs")
    _flag(runs, "wait", "follow every run until it succeeds or fails", action="store_true")
    _flag(runs, "max-active-runs", "runs of one flow scheduled or running at once", metavar="N")
    _flag(runs, "max-attempts", "runs per window before it fails for good (default 3)", metavar="N")
    _flag(runs, "retry-mode", "re-trigger (default) or new-run", metavar="MODE")
    _flag(
        runs,
        "on-failure",
        "continue (default) or stop after a window fails for good",
        metavar="WHAT",
    )
    _flag(runs, "poll-interval", "seconds between status polls (default 10)", metavar="S")
    _flag(
        runs, "reconcile-delay", "seconds before looking up a lost answer (default 2)", metavar="S"
    )
    out = parser.add_argument_group("output")
    _flag(out, "report", "write a JSON report here at the end", metavar="FILE")
    _flag(out, "log-format", "auto (default), json or console", metavar="FMT")
    _flag(out, "log-level", "debug, info (default), warning or error", metavar="LEVEL")
    _flag(
        out,
        "progress-interval",
        "seconds between progress lines in JSON mode (default 10)",
        metavar="S",
    )
    _flag(out, "metrics-port", "serve Prometheus metrics on this port", metavar="PORT")
    _flag(out, "metrics-file", "write Prometheus metrics here at exit", metavar="FILE")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backfill",
        description="Re-ingest history into Adobe Experience Platform as Flow Service runs: "
        "planned windows, a rate limit, a checkpoint, exactly once.",
        epilog="Exit codes: 0 done, 1 windows failed for good, 2 usage/configuration, "
        "3 checkpoint refused, 74 checkpoint unwritable, 75 service unavailable (resumable), "
        "130/143 interrupted (resumable).",
    )
    parser.add_argument("--version", action="version", version=f"backfill {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = commands.add_parser("plan", help="print the windows a run would submit")
    _plan_flags(plan)
    _flag(plan, "json", "one JSON object per window per line", action="store_true")

    run = commands.add_parser("run", help="submit every window not yet accepted; resumable")
    _run_flags(run, plan=True)

    retry = commands.add_parser("retry", help="send again the windows that failed for good")
    _run_flags(retry, plan=False)

    status = commands.add_parser("status", help="show a checkpoint (or several shards')")
    status.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PATH",
        help="checkpoint file; repeat for shards, or use {shard}",
    )
    _flag(status, "json", "one JSON document", action="store_true")
    _flag(status, "refresh", "ask the service for unfinished runs first", action="store_true")
    _flag(status, "base-url", "Flow Service base URL", metavar="URL")
    _flag(status, "log-format", "auto, json or console", metavar="FMT")
    _flag(status, "log-level", "debug, info, warning or error", metavar="LEVEL")

    commands.add_parser(
        "emulator", help="serve a local Flow Service (see backfill emulator --help)", add_help=False
    )
    return parser


_NOT_SETTINGS = {"command", "json", "refresh", "config_file", "retry_failed"}


def _terminated(signum: int, frame: object) -> None:
    # Until the run installs its graceful handler, SIGTERM ends the process at once: nothing
    # has been sent yet. (As PID 1 in a container, an unhandled SIGTERM would be ignored.)
    raise SystemExit(ExitCode.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["emulator"]:
        from .emulator.cli import main as emulator_main  # noqa: PLC0415 - only when asked

        return emulator_main(args[1:])
    namespace = vars(build_parser().parse_args(args))
    command = namespace["command"]
    flags = {k: v for k, v in namespace.items() if k not in _NOT_SETTINGS}
    checkpoints: list[str] = []
    if command == "status":
        checkpoints = flags.pop("checkpoint")
    config = namespace.get("config_file")
    from .logs import configure  # noqa: PLC0415 - see the top: imported once parsed
    from .settings import load_settings  # noqa: PLC0415

    try:
        settings = load_settings(flags, Path(config) if config else None)
    except BackfillError as exc:
        configure("auto", "info")
        _fail(str(exc), exc.exit_code)
    json_lines = configure(settings.log_format, settings.log_level)
    try:
        return int(_dispatch(command, settings, namespace, checkpoints, json_lines))
    except BackfillError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.SIGINT)


def _dispatch(
    command: str,
    settings: Settings,
    namespace: dict[str, Any],
    checkpoints: list[str],
    json_lines: bool,
) -> ExitCode:
    if command == "plan":
        from .job import plan_command  # noqa: PLC0415 - see the top: what the command needs

        return plan_command(settings, as_json=bool(namespace.get("json")))
    import asyncio  # noqa: PLC0415

    from .job import find_checkpoints, run_command, status_command  # noqa: PLC0415

    if command == "status":
        return asyncio.run(
            status_command(
                settings,
                find_checkpoints(settings, checkpoints),
                as_json=bool(namespace.get("json")),
                refresh=bool(namespace.get("refresh")),
            )
        )
    live = not json_lines and sys.stderr.isatty()
    return asyncio.run(
        run_command(
            settings,
            retry_failed=command == "retry" or bool(namespace.get("retry_failed")),
            from_checkpoint=command == "retry",
            json_lines=json_lines,
            live=live,
        )
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
