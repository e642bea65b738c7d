"""``EmulatorConfig``: the contract's defaults, and refusal of values that cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.emulator import EmulatorConfig, FlowKind


def test_defaults() -> None:
    config = EmulatorConfig()
    assert (config.host, config.port, config.seed) == ("127.0.0.1", 8080, 0)
    assert config.response_shape == "full"
    assert config.flows == ()
    assert config.token_lifetime == 86399.0
    assert (config.scheduled_for, config.running_for) == (0.2, 0.5)
    assert config.rate_limit is None
    assert config.retry_after == 1
    assert config.max_active_runs is None
    assert config.max_page_size == 100
    assert config.state_file is None
    assert not config.strict_flows


def test_flow_kinds_may_be_given_as_strings() -> None:
    config = EmulatorConfig(flows=(("a", "table"), ("b", FlowKind.FILE)))  # type: ignore[arg-type]
    assert config.flows == (("a", FlowKind.TABLE), ("b", FlowKind.FILE))
    assert config.strict_flows


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"fail_rate": 1.01}, "--fail-rate"),
        ({"error_rate": float("inf")}, "--error-rate"),
        ({"drop_rate": -1}, "--drop-rate"),
        ({"scheduled_for": -0.1}, "--scheduled-for"),
        ({"running_for": float("nan")}, "--running-for"),
        ({"jitter": -1}, "--jitter"),
        ({"port": -1}, "--port"),
        ({"host": ""}, "--host"),
        ({"retry_after": -1}, "--retry-after"),
        ({"response_shape": "tiny"}, "--response-shape"),
        ({"api_key": " "}, "--api-key"),
        ({"flows": (("", FlowKind.FILE),)}, "--flow"),
        ({"flows": (("a", "disk"),)}, "--flow"),
    ],
)
def test_refused_values_name_their_flag(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        EmulatorConfig(**changes)  # type: ignore[arg-type]


def test_it_is_a_frozen_value() -> None:
    config = EmulatorConfig(state_file=Path("x"))
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    assert config == EmulatorConfig(state_file=Path("x"))
