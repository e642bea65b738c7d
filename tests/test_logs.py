"""Logging: the secret scrubber, and JSON lines with timestamp, level and event."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson
import pytest
import structlog
from multidict import CIMultiDict
from yarl import URL

from backfill import logs
from backfill.logs import SecretScrubber, configure, json_mode

SECRET = "p8e-very-secret-value"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.payload.signature"
MASK = "[redacted]"


@pytest.fixture
def scrubber() -> SecretScrubber:
    scrubber = SecretScrubber()
    scrubber.register(SECRET)
    scrubber.register(TOKEN)
    return scrubber


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch, scrubber: SecretScrubber) -> Iterator[io.StringIO]:
    """``configure("json")`` into a buffer with a fresh scrubber; structlog restored after."""
    monkeypatch.setattr(logs, "scrubber", scrubber)
    monkeypatch.setattr(logs, "_json", False)
    buffer = io.StringIO()
    configure("json", "info", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def events(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------------- scrubber


def test_a_secret_inside_a_string_is_masked(scrubber: SecretScrubber) -> None:
    text = f"curl -d client_secret={SECRET} -H 'Authorization: Bearer {TOKEN}' twice {SECRET}"

    scrubbed = scrubber.scrub(text)

    assert SECRET not in scrubbed
    assert TOKEN not in scrubbed
    assert scrubbed == (
        f"curl -d client_secret={MASK} -H 'Authorization: Bearer {MASK}' twice {MASK}"
    )


def test_secrets_are_masked_in_nested_containers(scrubber: SecretScrubber) -> None:
    value = {
        "request": {"url": f"https://x.test/?code={SECRET}", "attempt": 2, "ok": None},
        "history": [f"sent {TOKEN}", ("tuple", SECRET), [{"deep": [TOKEN]}]],
        "count": 7,
    }

    scrubbed = scrubber.scrub(value)

    assert scrubbed == {
        "request": {"url": f"https://x.test/?code={MASK}", "attempt": 2, "ok": None},
        "history": [f"sent {MASK}", ["tuple", MASK], [{"deep": [MASK]}]],
        "count": 7,
    }
    assert value["count"] == 7, "the original is not modified"
    assert SECRET in value["request"]["url"]  # type: ignore[index]


def test_an_exception_is_logged_without_the_secret(scrubber: SecretScrubber) -> None:
    error = RuntimeError(f"IMS refused client_secret={SECRET}")

    assert scrubber.scrub(error) == f"IMS refused client_secret={MASK}"
    assert scrubber.scrub({"error": error}) == {"error": f"IMS refused client_secret={MASK}"}


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "Authorization",
        "client_secret",
        "client-secret",
        "CLIENT_SECRET",
        "access_token",
        "token",
        "secret",
        "password",
    ],
)
def test_sensitive_keys_are_masked_whatever_their_value(scrubber: SecretScrubber, key: str) -> None:
    event = {key: "an unregistered value", "event": "x"}

    scrubbed = scrubber(None, "info", event)

    assert scrubbed[key] == MASK
    assert scrubber.scrub({"headers": {key: "another value"}}) == {"headers": {key: MASK}}


def test_ordinary_keys_and_values_are_left_alone(scrubber: SecretScrubber) -> None:
    event = {"event": "run_submitted", "flow": "f-1", "run_id": "r-1", "api_key": "client-id"}

    assert scrubber(None, "info", dict(event)) == event


def test_short_values_are_not_registered() -> None:
    scrubber = SecretScrubber()
    scrubber.register("abc")

    assert scrubber.scrub("abc abcdef") == "abc abcdef"


def test_nothing_registered_masks_nothing() -> None:
    assert SecretScrubber().scrub(f"value {SECRET}") == f"value {SECRET}"


@pytest.mark.parametrize(
    "value",
    [
        CIMultiDict({"x-debug": f"uses {TOKEN}"}),  # aiohttp's headers are not dicts
        MappingProxyType({"note": f"uses {TOKEN}"}),
        URL(f"https://x.test/callback?access_token={TOKEN}"),
    ],
    ids=["headers", "mapping", "url"],
)
def test_a_secret_inside_any_logged_object_is_masked(stream: io.StringIO, value: object) -> None:
    structlog.get_logger().info("something", value=value)

    assert TOKEN not in stream.getvalue()
    assert MASK in stream.getvalue()


# ------------------------------------------------------------------------ output


def test_json_lines_with_timestamp_level_and_event(stream: io.StringIO) -> None:
    log = structlog.get_logger("backfill.test")

    log.info("window_submitted", flow="f-1", attempt=2)
    log.warning("slow_down", retry_after=1.5)
    log.debug("too_detailed")  # below the level: dropped

    first, second = events(stream)
    assert first["event"] == "window_submitted"
    assert first["level"] == "info"
    assert (first["flow"], first["attempt"]) == ("f-1", 2)
    assert second["level"] == "warning"
    assert second["retry_after"] == 1.5
    moment = datetime.fromisoformat(first["timestamp"])
    assert moment.utcoffset() is not None
    assert moment.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert json_mode()


def test_json_lines_carry_the_bound_context(stream: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(flow="f-1", run_id="r-9")

    structlog.get_logger().info("run_finished", status="success", empty=None)

    (event,) = events(stream)
    assert (event["flow"], event["run_id"], event["status"]) == ("f-1", "r-9", "success")
    assert "empty" not in event, "fields without a value are dropped"


def test_json_lines_never_carry_secrets(stream: io.StringIO) -> None:
    log = structlog.get_logger()

    def fail() -> None:
        raise RuntimeError(f"boom with {SECRET}")

    log.info("token_renewed", authorization=f"Bearer {TOKEN}", note=f"secret was {SECRET}")
    try:
        fail()
    except RuntimeError:
        log.exception("failed")
    log.error("request_failed", error=ValueError(TOKEN), headers={"Authorization": TOKEN})

    text = stream.getvalue()
    assert SECRET not in text
    assert TOKEN not in text
    token_event, failure, request = events(stream)
    assert token_event["authorization"] == MASK
    assert token_event["note"] == f"secret was {MASK}"
    assert "RuntimeError" in failure["exception"]
    assert request["headers"] == {"Authorization": MASK}


def test_one_line_per_event_even_with_newlines_in_values(stream: io.StringIO) -> None:
    structlog.get_logger().info("multi", text="first line\nsecond line")

    (event,) = events(stream)
    assert event["text"] == "first line\nsecond line"


def test_console_mode_is_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_json", True)
    buffer = io.StringIO()
    try:
        assert configure("console", "info", stream=buffer) is False
        structlog.get_logger().info("hello_console", answer=42)
    finally:
        structlog.reset_defaults()

    assert not json_mode()
    assert "hello_console" in buffer.getvalue()
    assert "answer" in buffer.getvalue()
    assert not buffer.getvalue().startswith("{")


def test_console_lines_show_a_window_in_iso_8601_as_well(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_json", False)
    buffer = io.StringIO()
    try:
        configure("console", "info", stream=buffer)
        structlog.get_logger().info("window_failed", window_start=1735689600, window_end=1735776000)
    finally:
        structlog.reset_defaults()

    line = buffer.getvalue()
    assert "window=2025-01-01T00:00:00Z..2025-01-02T00:00:00Z" in line
    assert "window_start=1735689600" in line
