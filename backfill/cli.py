"""The ``backfill`` command: parse arguments, build settings, run the command, map errors to exits.

backfill plan       [--config F] [--flow-id ID --start T --end T --window D] [--json]
backfill run        [--config F] [--flow-id ...] [--delta-column NAME] [options] [--dry-run]
backfill retry      --checkpoint PATH [run options]
backfill status     --checkpoint PATH [--json] [--refresh] [--html FILE]
backfill completion bash|zsh
backfill emulator   [--host 127.0.0.1] [--port 8080] [faults]

Usage errors are one line on stderr, JSON when stderr is not a terminal (like every error),
with "did you mean" for a mistyped option. Option names are never abbreviated: ``--win`` is
not ``--window``.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .choices import CONFIRM_ABOVE, OnFailure, Order, RetryMode
from .errors import BackfillError, ConfigError, ExitCode

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2, and no abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            known = re.findall(r"'([^']*)'", choice.group(2))
            message = f"{message}{_did_you_mean(choice.group(1), known)}"
        _fail(f"{message} (see {self.prog} --help)", ExitCode.USAGE)


# Whether errors are JSON lines: set from --log-format once settings are read; before that
# (a usage error), JSON exactly when stderr is not a terminal.
_errors_as_json: bool | None = None


_LONGEST_MESSAGE = 2000  # a value pasted by mistake must not become a megabyte error line


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    from .settings import did_you_mean  # noqa: PLC0415 - only on a usage error

    return did_you_mean(name, known)


def _fail(message: str, code: int) -> NoReturn:
    if "backfill.logs" in sys.modules:  # else no secret was registered: nothing to scrub
        from .logs import scrubber  # noqa: PLC0415

        message = scrubber.scrub(message)
    if len(message) > _LONGEST_MESSAGE:
        message = f"{message[: _LONGEST_MESSAGE - 30]}... ({len(message):,} characters)"
    as_json = _errors_as_json
    if as_json is None:
        from .settings import requested_log_format  # noqa: PLC0415 - only on an error

        # BACKFILL_LOG_FORMAT holds for usage errors too; else JSON off a terminal.
        wanted = requested_log_format({})
        as_json = wanted == "json" if wanted is not None else not sys.stderr.isatty()
    if as_json:
        # Only here: --help needs no orjson (it loads json, uuid and dataclasses with it).
        import orjson  # noqa: PLC0415

        line = orjson.dumps(
            {"level": "error", "event": "error", "message": message, "exit_code": code}
        )
        print(line.decode(), file=sys.stderr)
    else:
        print(f"backfill: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _flag(group: Any, name: str, help: str, values: Sequence[str] = (), **kwargs: Any) -> None:
    action = group.add_argument(f"--{name}", default=argparse.SUPPRESS, help=help, **kwargs)
    action.completion_values = tuple(values)  # what shell completion offers


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
    _flag(
        group,
        "shard-count",
        "shards in all, with JOB_COMPLETION_INDEX as this one's index",
        metavar="N",
    )


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """Every option of ``run``; ``retry`` takes them all too."""
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
    _flag(api, "scopes", "IMS scopes, comma-separated (default: the Platform's)", metavar="LIST")
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
    _flag(
        how,
        "order",
        "oldest-first (default) or newest-first",
        values=[o.value for o in Order],
        metavar="ORDER",
    )
    _flag(
        how,
        "max-retries",
        "retries of a failing request, listing, poll or token fetch before exit 75 (default 10)",
        metavar="N",
    )
    _flag(how, "backoff-max", "longest wait between two retries (default 30)", metavar="S")
    _flag(
        how,
        "max-retry-after",
        "a longer Retry-After ends the run with exit 75 (default 900)",
        metavar="S",
    )
    _flag(
        how,
        "grace",
        "seconds in-flight requests get after SIGTERM/SIGINT/SIGHUP (default 20)",
        metavar="S",
    )
    runs = parser.add_argument_group("following runs")
    _flag(runs, "wait", "follow every run until it succeeds or fails", action="store_true")
    _flag(runs, "max-active-runs", "runs of one flow scheduled or running at once", metavar="N")
    _flag(runs, "max-attempts", "runs per window before it fails for good (default 3)", metavar="N")
    _flag(
        runs,
        "retry-mode",
        "re-trigger (default) or new-run",
        values=[m.value for m in RetryMode],
        metavar="MODE",
    )
    _flag(
        runs,
        "on-failure",
        "continue (default) or stop after a window fails for good",
        values=[o.value for o in OnFailure],
        metavar="WHAT",
    )
    _flag(runs, "poll-interval", "seconds between status polls (default 10)", metavar="S")
    _flag(
        runs,
        "retry-empty",
        "re-trigger runs that succeeded with 0 records, within --max-attempts",
        action="store_true",
    )
    _flag(
        runs,
        "run-timeout",
        "a run not finished this long after its creation fails for good: 30m, 12h (default 12h)",
        metavar="D",
    )
    _flag(
        runs, "reconcile-delay", "seconds before looking up a lost answer (default 2)", metavar="S"
    )
    _flag(
        runs,
        "reconcile-settle",
        "seconds a lost answer is looked up before its window is sent again (default 60)",
        metavar="S",
    )
    _flag(
        runs,
        "existing-runs",
        "adopt (default): windows the service already has runs for are recorded, not sent; "
        "ignore: send regardless (needs --yes)",
        metavar="WHAT",
    )
    out = parser.add_argument_group("output")
    _flag(out, "report", "write a JSON report here at the end", metavar="FILE")
    _log_flags(out)
    _flag(
        out,
        "progress-interval",
        "seconds between progress lines in JSON mode (default 10)",
        metavar="S",
    )
    _flag(out, "metrics-port", "serve Prometheus metrics on this port", metavar="PORT")
    _flag(out, "metrics-file", "write Prometheus metrics here at exit", metavar="FILE")
    ask = parser.add_argument_group("before sending")
    _flag(
        ask,
        "dry-run",
        "check everything and print what would be sent; send nothing, write nothing",
        action="store_true",
    )
    _flag(ask, "json", "with --dry-run: one JSON document", action="store_true")
    _flag(
        ask,
        "yes",
        f"do not ask on a terminal before creating more than {CONFIRM_ABOVE:,} runs; confirm "
        "--existing-runs ignore (which may ingest windows twice)",
        action="store_true",
    )


_LOG_FORMATS = ("auto", "json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_flags(group: Any) -> None:
    _flag(group, "log-format", "auto (default), json or console", _LOG_FORMATS, metavar="FMT")
    _flag(group, "log-level", "debug, info (default), warning or error", _LOG_LEVELS, metavar="L")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backfill",
        description="Re-ingest history into Adobe Experience Platform as Flow Service runs: "
        "planned windows, a rate limit, a checkpoint, exactly once.",
        epilog="Exit codes: 0 done, 1 windows failed for good, 2 usage/configuration, "
        "3 checkpoint refused, 4 duplicate runs at the service, 74 checkpoint unwritable, "
        "75 service unavailable (resumable), "
        "129/130/143 interrupted by SIGHUP/SIGINT/SIGTERM (resumable).",
    )
    parser.add_argument("--version", action="version", version=f"backfill {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = commands.add_parser("plan", help="print the windows a run would submit")
    _plan_flags(plan)
    _flag(plan, "json", "one JSON object per window per line", action="store_true")

    run = commands.add_parser("run", help="submit every window not yet accepted; resumable")
    _run_flags(run)

    retry = commands.add_parser(
        "retry",
        help="send again the windows that failed for good, each with fresh --max-attempts",
    )
    _run_flags(retry)
    _flag(
        retry,
        "empty",
        "also re-trigger windows whose run succeeded with 0 records ingested",
        action="store_true",
    )

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
    _flag(
        status,
        "html",
        "write a self-contained coverage page (HTML) instead; - writes it to stdout",
        metavar="FILE",
    )
    _flag(status, "base-url", "Flow Service base URL", metavar="URL")
    _log_flags(status)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script: source <(backfill completion bash)",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="bash or zsh")

    commands.add_parser(
        "emulator", help="serve a local Flow Service (see backfill emulator --help)", add_help=False
    )
    return parser


_NOT_SETTINGS = {
    "command",
    "json",
    "refresh",
    "html",
    "config_file",
    "retry_failed",
    "dry_run",
    "shell",
    "empty",
}


def _terminated(signum: int, frame: object) -> None:
    # Until the run installs its graceful handler, SIGTERM (or SIGHUP) ends the process at
    # once: nothing has been sent yet. (As PID 1 in a container, an unhandled SIGTERM would be
    # ignored.)
    raise SystemExit(ExitCode.SIGHUP if signum == signal.SIGHUP else ExitCode.SIGTERM)


def _standard_streams() -> None:
    """Started with stdout or stderr closed (``>&-``), a process would hand out descriptor 1
    or 2 to the next file it opens -- the checkpoint -- and Python would have ``None`` for the
    stream. Both are filled with /dev/null first: that output goes nowhere, nothing fails."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    _standard_streams()
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["emulator"]:
        from .emulator.cli import main as emulator_main  # noqa: PLC0415 - only when asked

        return emulator_main(args[1:])
    parser = build_parser()
    top = [flag for action in parser._actions for flag in action.option_strings]
    if args[:1] and args[0].startswith("-") and args[0] not in top:
        hint = _did_you_mean(args[0].split("=", 1)[0], top)
        _fail(f"unknown option {args[0]}{hint} (see backfill --help)", ExitCode.USAGE)
    parsed, unknown = parser.parse_known_args(args)
    namespace = vars(parsed)
    command = namespace["command"]
    if unknown:
        _unknown_arguments(parser, command, unknown)
    if command == "completion":
        from .completion import bash_script, zsh_script  # noqa: PLC0415 - only when asked

        script = bash_script if namespace["shell"] == "bash" else zsh_script
        sys.stdout.write(script(parser))
        return 0
    collecting = gc.isenabled()
    gc.disable()  # see _started
    try:
        try:
            settings, checkpoints, json_lines = _start(command, namespace)
        finally:
            _started(collecting, own_process=argv is None)
        return int(_dispatch(command, settings, namespace, checkpoints, json_lines))
    except BackfillError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.SIGINT)


def _start(command: str, namespace: dict[str, Any]) -> tuple[Settings, list[str], bool]:
    """The settings, and logging configured: the command's checkpoint patterns (status) and
    whether log lines are JSON come with them."""
    global _errors_as_json  # noqa: PLW0603 - one process, one way of printing errors
    # Only now, with a command that needs them: --help and usage errors never load these.
    from .settings import load_settings, requested_log_format  # noqa: PLC0415

    flags = {k: v for k, v in namespace.items() if k not in _NOT_SETTINGS}
    checkpoints: list[str] = []
    if command == "status":
        checkpoints = flags.pop("checkpoint")
    config = namespace.get("config_file")
    wanted = requested_log_format(flags)
    if wanted is not None:
        _errors_as_json = wanted == "json"
    try:
        settings = load_settings(flags, Path(config) if config else None)
        if namespace.get("json") and command in ("run", "retry") and not namespace.get("dry_run"):
            raise ConfigError("--json", "has no effect without --dry-run; add --dry-run")
    except BackfillError as exc:
        _fail(str(exc), exc.exit_code)
    # With --json, stdout carries the JSON document alone: log lines go to stderr.
    document = bool(namespace.get("json")) and (
        command in ("plan", "status") or bool(namespace.get("dry_run"))
    )
    json_lines = False
    # ``plan`` prints and logs nothing: it needs no logging (structlog is a seventh of its
    # start-up). Its errors, like every command's, go through _fail.
    if command != "plan":
        # Before anything else imports structlog: this loads it without rich (see logs.py).
        from .logs import configure  # noqa: PLC0415

        json_lines = configure(
            settings.log_format, settings.log_level, stream=sys.stderr if document else None
        )
    if settings.log_format != "auto":
        _errors_as_json = settings.log_format == "json"
    return settings, checkpoints, json_lines


def _started(collecting: bool, *, own_process: bool) -> None:
    """Start-up is over: the cyclic garbage collector, off while it ran, is on again.

    Loading pydantic and building the settings makes some 35,000 objects that the collector
    tracks and that live as long as the process. With the collector on, it scans them again
    and again while they are made (a young generation fills every 700 allocations), then all
    of them once more at exit. In the command's own process (``main()`` reading
    ``sys.argv``), ``gc.freeze`` moves them out of the generations the collector scans:
    neither the command nor the exit looks at them again (``run`` freezes what it built once
    more before its engine starts). Called in-process (tests), the caller's objects are not
    frozen, and the collector's state is the caller's again.
    """
    if own_process:
        gc.freeze()
    if collecting:
        gc.enable()


_SECRET_NAMES = frozenset(
    {"ACCESS_TOKEN", "ACCESS_TOKEN_FILE", "CLIENT_SECRET", "CLIENT_SECRET_FILE"}
)


def _unknown_arguments(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """An unknown option, with the known option of this command it most resembles."""
    sub = _subparser(parser, command)
    known = [flag for action in sub._actions for flag in action.option_strings]
    first = unknown[0]
    if first.startswith("-"):
        name = first.split("=", 1)[0]
        hint = _did_you_mean(name, known)
        secret = name.removeprefix("--").replace("-", "_").upper()
        if secret in _SECRET_NAMES:
            hint = (
                f": secrets are never flags (a process listing shows them); "
                f"set BACKFILL_{secret} in the environment instead"
            )
        _fail(
            f"unknown option {name}{hint} (see backfill {command} --help)",
            ExitCode.USAGE,
        )
    _fail(
        f"unexpected argument {first!r} (see backfill {command} --help)",
        ExitCode.USAGE,
    )


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def _dispatch(
    command: str,
    settings: Settings,
    namespace: dict[str, Any],
    checkpoints: list[str],
    json_lines: bool,
) -> ExitCode:
    import asyncio  # noqa: PLC0415 - --help and plan need no event loop

    if command in ("plan", "status"):
        try:
            return _print(command, settings, namespace, checkpoints)
        except BrokenPipeError:  # the reader went away (| head): what it wanted, it has
            from .logs import silence_stdout  # noqa: PLC0415

            silence_stdout()
            return ExitCode.OK
    if namespace.get("dry_run"):
        from .commands.dry_run import dry_run_command  # noqa: PLC0415 - this command's only

        return asyncio.run(
            dry_run_command(
                settings,
                retry_failed=command == "retry" or bool(namespace.get("retry_failed")),
                retry_empty=bool(namespace.get("empty")),
                from_checkpoint=command == "retry",
                as_json=bool(namespace.get("json")),
            )
        )
    from .commands.run import run_command  # noqa: PLC0415 - this command's only

    live = not json_lines and sys.stderr.isatty()
    return asyncio.run(
        run_command(
            settings,
            retry_failed=command == "retry" or bool(namespace.get("retry_failed")),
            retry_empty=bool(namespace.get("empty")),
            from_checkpoint=command == "retry",
            json_lines=json_lines,
            live=live,
        )
    )


def _print(
    command: str, settings: Settings, namespace: dict[str, Any], checkpoints: list[str]
) -> ExitCode:
    """``plan`` and ``status``: their output is their work."""
    import asyncio  # noqa: PLC0415 - plan needs no event loop

    if command == "plan":
        from .commands.plan import plan_command  # noqa: PLC0415 - this command's only

        return plan_command(settings, as_json=bool(namespace.get("json")))
    from .commands.status import find_checkpoints, status_command  # noqa: PLC0415

    return asyncio.run(
        status_command(
            settings,
            find_checkpoints(settings, checkpoints),
            as_json=bool(namespace.get("json")),
            refresh=bool(namespace.get("refresh")),
            html=namespace.get("html"),
            patterns=checkpoints or [settings.checkpoint],
        )
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
