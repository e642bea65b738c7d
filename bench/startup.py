"""Scenario "startup": CPU of ``backfill --help`` and ``backfill plan``, and what imports cost.

Each command runs to its end in a fresh process (``os.wait4`` gives its user + system CPU);
the figure is the median of the repetitions, each the best of five runs (start-up is short
and the machine is shared). Then ``python -X importtime`` of the modules ``plan`` and ``run``
import (the best of five, wall time) prints the heaviest imports, and the scenario checks that
``--help`` and ``plan`` load neither aiohttp, nor rich, nor the emulator.
"""

from __future__ import annotations

import sys

from bench.common import (
    FLOW_ID,
    Result,
    Settings,
    backfill_command,
    check,
    clean_env,
    measure,
    python_c,
)

NAME = "startup"
TITLE = "Start-up: CPU of backfill --help and backfill plan; python -X importtime"
CPU_TARGET = 0.2  # seconds
TRIES = 5
HEAVY = ("aiohttp", "rich", "backfill.emulator")
PLAN = [
    "plan",
    "--flow-id",
    FLOW_ID,
    "--start",
    "2024-01-01",
    "--end",
    "2024-02-01",
    "--window",
    "1h",
]
# What `plan` and `--help` import, as the CLI does it (it imports nothing else before parsing).
PLAN_IMPORTS = "import backfill.cli, backfill.settings, backfill.commands.plan"
RUN_IMPORTS = PLAN_IMPORTS + ", backfill.logs, backfill.commands.run, aiohttp"


def _best_cpu(settings: Settings, argv: list[str], label: str) -> float:
    best = float("inf")
    for i in range(TRIES):
        log = settings.work / f"startup-{label}-{i}.log"
        measured = measure(argv, timeout=60, env=clean_env(), stdout=log, stderr=log)
        check(measured, " ".join(argv[-2:]), log)
        best = min(best, measured.cpu)
    return best


def _importtime(statement: str) -> tuple[float, list[tuple[str, float]]]:
    """The least total import time (ms) of ``TRIES`` runs, with its ten heaviest packages."""
    return min((_importtime_once(statement) for _ in range(TRIES)), key=lambda found: found[0])


def _importtime_once(statement: str) -> tuple[float, list[tuple[str, float]]]:
    """Total import time (ms, wall) and the ten heaviest packages (self time, ms)."""
    done = python_c(statement, "-X", "importtime")
    packages: dict[str, float] = {}
    total = 0.0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        name = line.rsplit("|", 1)[1].strip()
        own = float(line.split(":", 1)[1].split("|")[0])
        total += own
        top = (
            name.split(".")[0] if not name.startswith("backfill") else ".".join(name.split(".")[:2])
        )
        packages[top] = packages.get(top, 0.0) + own
    heaviest = sorted(packages.items(), key=lambda item: -item[1])[:10]
    return total / 1000, [(k, v / 1000) for k, v in heaviest]


def _loaded(statement: str) -> list[str]:
    """Which of the heavy packages the statement leaves in ``sys.modules``."""
    probe = f"{statement}; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    return python_c(probe).stdout.split()


def run(settings: Settings) -> Result:
    result = Result(NAME, TITLE)
    cli = backfill_command()
    bare = [sys.executable, "-c", "pass"]
    python, helped, planned = [], [], []
    for rep in range(settings.repetitions):
        python.append(_best_cpu(settings, bare, f"python-{rep}"))
        helped.append(_best_cpu(settings, [*cli, "--help"], f"help-{rep}"))
        planned.append(_best_cpu(settings, [*cli, *PLAN], f"plan-{rep}"))
    result.figure("python -c pass (the floor)", "CPU s", python)
    result.figure("backfill --help", "CPU s", helped, "<=", CPU_TARGET)
    result.figure("backfill plan (744 windows)", "CPU s", planned, "<=", CPU_TARGET)
    details: dict[str, object] = {}
    for label, statement in (("plan", PLAN_IMPORTS), ("run", RUN_IMPORTS)):
        total, heaviest = _importtime(statement)
        details[label] = {"total_ms": round(total, 1), "heaviest_ms": dict(heaviest)}
        result.figure(f"imports of {label} (python -X importtime)", "ms", [total])
        listed = ", ".join(f"{name} {ms:.0f}" for name, ms in heaviest[:8])
        result.notes.append(f"importtime, {label}: {listed} (ms, self time by package)")
        if label == "plan":
            loaded = _loaded(statement)
            details["plan_loads"] = loaded
            result.figure(
                "plan/--help load aiohttp, rich or the emulator", "modules", [len(loaded)], "==", 0
            )
            if loaded:
                result.notes.append(f"plan loads {', '.join(loaded)}")
    result.details = details
    return result
