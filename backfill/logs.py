"""structlog set-up: JSON lines when not on a terminal, readable console output on one.

A redaction processor runs last before rendering: fields whose name says "secret" are
masked, and any registered secret value is cut out of every string, wherever it hides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, cast

import orjson


def _import_structlog_without_rich() -> None:
    """Import structlog without letting it import rich (a third of ``plan``'s start-up).

    structlog's ``dev`` module imports rich, whenever it is installed, only to offer pretty
    tracebacks; backfill renders tracebacks plainly (see ``configure``) and needs rich only for
    the live display. So rich is hidden while structlog loads, and visible again at once. The
    CLI imports this module before anything else that imports structlog.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail
    try:
        import structlog  # noqa: F401, PLC0415
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402 - after the function above
from structlog.typing import EventDict, Processor, WrappedLogger  # noqa: E402

__all__ = [
    "BestEffortStream",
    "SecretScrubber",
    "best_effort",
    "configure",
    "json_mode",
    "register_secret",
    "silence_stdout",
]

_SENSITIVE_KEYS = frozenset(
    {"authorization", "access_token", "client_secret", "token", "secret", "password"}
)
_MASK = "[redacted]"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class SecretScrubber:
    """A structlog processor that keeps secrets out of every log line."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []

    def register(self, value: str) -> None:
        if len(value) >= 4:  # shorter values would mask ordinary words
            self._secrets.add(value)
            # Longest first: a secret that contains another is masked whole.
            self._ordered = sorted(self._secrets, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._ordered:
                if secret in value:
                    value = value.replace(secret, _MASK)
            return value
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {str(k): _MASK if _sensitive(k) else self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(v) for v in value]
        # Anything else (headers, URLs, exceptions, ...) is logged as its text: scrub that.
        return self.scrub(str(value))

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            event[key] = _MASK if _sensitive(key) else self.scrub(value)
        return event


def _sensitive(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _SENSITIVE_KEYS


scrubber = SecretScrubber()
register_secret = scrubber.register

_json = False
_threshold = logging.DEBUG  # the least level written; everything until ``configure`` says


def json_mode() -> bool:
    """Whether output is JSON lines (set by ``configure``)."""
    return _json


def debug_enabled() -> bool:
    """Whether debug events are written: a hot path skips building one that would not be.

    (Each call of a structlog logger binds a new logger first, filtered or not: a few
    microseconds a window for an event nobody reads.)
    """
    return _threshold <= logging.DEBUG


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    *,
    stream: TextIO | None = None,
) -> bool:
    """Set up structlog; returns True when output is JSON lines.

    JSON lines go to stdout (one event per line, what container log collectors read);
    console output goes to stderr so stdout stays clean for command output.
    """
    global _json, _threshold  # noqa: PLW0603 - one process-wide logging mode, set by the CLI
    _json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _threshold = _LEVELS.get(level, logging.INFO)
    renderer: Processor
    if _json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=(stream or sys.stderr).isatty(),
            sort_keys=False,
            exception_formatter=structlog.dev.plain_traceback,  # rich is for the display only
        )
        shared.append(_iso_window)

    printers: dict[int, tuple[TextIO, structlog.PrintLogger]] = {}

    def factory(*_args: Any) -> structlog.PrintLogger:
        # sys.stderr is looked up per logger, not once: the live progress display redirects
        # it while it runs, so log lines print above the display instead of through it. The
        # printer of each stream is made once (a logger is bound at every call, even a
        # filtered one: building a printer each time cost the engine microseconds a window).
        out = stream or best_effort(sys.stdout if _json else sys.stderr)
        known = printers.get(id(out))
        if known is None or known[0] is not out:
            known = printers[id(out)] = (out, structlog.PrintLogger(out))
        return known[1]

    structlog.configure(
        processors=[*shared, scrubber, _drop_empty, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_threshold),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return _json


def _iso_window(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    """On a console, a window's unix seconds are shown in ISO-8601 as well."""
    start, end = event.get("window_start"), event.get("window_end")
    if isinstance(start, int) and isinstance(end, int):
        event["window"] = f"{_iso(start)}..{_iso(end)}"
    return event


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BestEffortStream:
    """A stream for logs, progress and the summary: a closed pipe (``| head``) or a full
    device loses lines, never the run. The exit code reflects the windows, not the reader."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if self._stream is not _silenced.get(id(self._stream)):
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                _silence(self._stream)
        return len(text)

    def flush(self) -> None:
        if self._stream is not _silenced.get(id(self._stream)):
            try:
                self._stream.flush()
            except (OSError, ValueError):
                _silence(self._stream)

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


def best_effort(stream: TextIO) -> TextIO:
    """``stream`` wrapped so that writing to it can never fail (see ``BestEffortStream``).

    One wrapper per stream, so that structlog's per-file lock is one lock per stream too.
    """
    known = _wrappers.get(id(stream))
    if known is None or known[0] is not stream:
        known = _wrappers[id(stream)] = (stream, cast(TextIO, BestEffortStream(stream)))
    return known[1]


_wrappers: dict[int, tuple[TextIO, TextIO]] = {}


_silenced: dict[int, TextIO] = {}


def _silence(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null: later writes, and the interpreter's last
    flush at exit (which would turn the exit code into 120), go nowhere, quietly."""
    _silenced[id(stream)] = stream
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def silence_stdout() -> None:
    """stdout can no longer be written (its reader went away): send the rest nowhere."""
    _silence(sys.stdout)


def _drop_empty(logger: WrappedLogger, name: str, event: MutableMapping[str, Any]) -> Any:
    return {k: v for k, v in event.items() if v is not None}
