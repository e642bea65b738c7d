"""Start-up (README "Performance"): what ``plan`` loads, and the collector around start-up."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from backfill.cli import main

FLOW = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
PLAN = ["plan", "--flow-id", FLOW, "--start", "2024-01-01", "--end", "2024-02-01", "--window", "1h"]
HEAVY = ("aiohttp", "yarl", "structlog", "rich", "backfill.emulator")


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}


def _probe(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` as its own process, with no BACKFILL_* variables."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=60,
        check=True,
    )


def test_plan_in_its_own_process_loads_no_http_and_freezes_what_start_up_built() -> None:
    probe = (
        "import gc, sys\n"
        "from backfill.cli import main\n"
        f"sys.argv = ['backfill', *{PLAN!r}]\n"
        "code = main()\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(code, loaded, gc.isenabled(), gc.get_freeze_count() > 10_000, file=sys.stderr)\n"
    )
    done = _probe(probe)
    assert "744 windows in all" in done.stdout
    assert done.stderr.strip() == "0 [] True True"


def test_help_loads_neither_the_settings_nor_orjson() -> None:
    probe = (
        "import sys\n"
        "from backfill.cli import main\n"
        "sys.argv = ['backfill', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "loaded = [m for m in ('pydantic', 'orjson', 'backfill.settings') if m in sys.modules]\n"
        "print(code, loaded, file=sys.stderr)\n"
    )
    done = _probe(probe)
    assert "usage: backfill" in done.stdout
    assert done.stderr.strip() == "0 []"


def test_in_process_the_collector_is_left_as_the_caller_had_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [k for k in os.environ if k.startswith("BACKFILL_")]:
        monkeypatch.delenv(name)
    frozen = gc.get_freeze_count()
    assert main(PLAN) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # a test process's objects are not frozen
    gc.disable()
    try:
        with pytest.raises(SystemExit) as info:
            main([*PLAN[:-1], "1x"])  # refused while the settings are read
        assert info.value.code == 2
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert "744 windows in all" in capsys.readouterr().out


def test_ctrl_c_while_the_settings_load_is_exit_130_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The settings load is the slowest part of start-up (pydantic): a Ctrl-C there is the
    same one-line "interrupted" and exit 130 as anywhere later."""
    import backfill.cli as cli  # noqa: PLC0415 - the module whose step is replaced

    def interrupted(command: str, namespace: dict[str, object]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_start", interrupted)
    with pytest.raises(SystemExit) as info:
        main(PLAN)
    assert info.value.code == 130
    assert "interrupted" in capsys.readouterr().err
    assert gc.isenabled()
