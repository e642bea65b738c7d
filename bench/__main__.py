"""The benchmark suite: ``python -m bench [--quick] [--only NAME,...] [--results PATH]``.

Runs each scenario (a module of this package), prints one table of figures against their
targets and writes the results, with a description of the machine, as JSON. A missed target
is reported (MISSED), not an error: the exit status is 0 unless a scenario could not be
measured (1) or the suite was interrupted (130, 143 on SIGTERM). Every process it starts is
stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import atexit
import math
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import orjson

from bench import (
    coverage_page,
    emulator,
    journal,
    monitoring,
    planning,
    rate,
    scaling,
    startup,
    throughput,
)
from bench.common import ROOT, Result, Settings, byte_compile, fmt, machine, stop_all

SCENARIOS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        startup,
        emulator,
        rate,
        throughput,
        planning,
        journal,
        monitoring,
        scaling,
        coverage_page,
    )
}
DEFAULT_RESULTS = ROOT / "bench" / "results.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of backfill against the bundled emulator (127.0.0.1 only).",
        epilog="scenarios: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--quick", action="store_true", help="one repetition, smaller sizes (a smoke test)"
    )
    parser.add_argument("--only", metavar="NAME,...", help="run only these scenarios")
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        metavar="PATH",
        help=f"where to write the JSON results (default {DEFAULT_RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--repetitions", type=int, metavar="N", help="repetitions per figure (default 3, quick 1)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else []
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.names = names or list(SCENARIOS)
    if args.repetitions is not None and args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    return args


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (exit 143 rather than 130)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated  # unwinds through every finally: emulators are stopped


def _verdict(passed: bool | None) -> str:
    return {True: "ok", False: "MISSED", None: ""}[passed]


def table(results: list[Result]) -> str:
    """Scenario, figure, target, measured (median), spread of repetitions, verdict."""
    header = ("scenario", "figure", "target", "measured", "unit", "min..max", "result")
    rows: list[tuple[str, ...]] = []
    for result in results:
        if result.error is not None:
            rows.append((result.name, f"ERROR: {result.error[:70]}", "", "", "", "", "ERROR"))
            continue
        for figure in result.figures:
            finite = [v for v in figure.values if math.isfinite(v)]
            spread = f"{fmt(min(finite))}..{fmt(max(finite))}" if len(finite) > 1 else ""
            rows.append(
                (
                    result.name,
                    figure.name,
                    figure.target,
                    fmt(figure.measured),
                    figure.unit,
                    spread,
                    _verdict(figure.passed),
                )
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def document(
    results: list[Result], settings: Settings, machine_at_start: dict[str, Any]
) -> dict[str, Any]:
    missed = [f"{r.name}: {f.name}" for r in results for f in r.figures if f.passed is False]
    return {
        "machine": machine_at_start | {"load_average_end": machine()["load_average"]},
        "command": " ".join(["scripts/bench", *sys.argv[1:]]),
        "quick": settings.quick,
        "repetitions": settings.repetitions,
        "scenarios": {r.name: r.as_json() for r in results},
        "missed": missed,
        "errors": {r.name: r.error for r in results if r.error is not None},
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    repetitions = args.repetitions or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="backfill-bench-"))
    settings = Settings(quick=args.quick, repetitions=repetitions, work=work)
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(stop_all)
    results: list[Result] = []
    described = machine()
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    print(f"backfill benchmarks ({mode}, {repetitions} repetition(s) each); work dir {work}")
    print(f"byte-compiled, as an install is: {byte_compile()}")
    try:
        for name in args.names:
            module = SCENARIOS[name]
            print(f"== {name}: {module.TITLE}", flush=True)
            began = time.perf_counter()
            try:
                result: Result = module.run(settings)
            except Exception as exc:  # a scenario that cannot be measured must not stop the rest
                result = Result(name, module.TITLE, error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            finally:
                stop_all()
            result.seconds = time.perf_counter() - began
            results.append(result)
            for figure in result.figures:
                verdict = _verdict(figure.passed)
                print(f"   {figure.name}: {fmt(figure.measured)} {figure.unit} {verdict}".rstrip())
            for note in result.notes:
                print(f"   note: {note}")
            print(f"   ({result.seconds:.1f} s)", flush=True)
    except KeyboardInterrupt as interrupt:
        stop_all()
        print("\ninterrupted: every emulator and client was stopped; no results written")
        return 143 if isinstance(interrupt, _Terminated) else 130
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    doc = document(results, settings, described)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print()
    print(table(results))
    print()
    cpu = doc["machine"]
    print(
        f"{cpu['cpu_model']}, {cpu['cores']} cores, Python {cpu['python']}; "
        f"{time.perf_counter() - started:.0f} s in all; results in {args.results}"
    )
    if settings.quick:
        print("quick: sizes are reduced and start-up weighs more; verdicts are indicative only")
    if doc["missed"]:
        print(f"MISSED {len(doc['missed'])} target(s):")
        for item in doc["missed"]:
            print(f"  MISSED  {item}")
    else:
        print("every target met")
    if doc["errors"]:
        print(f"ERROR: {len(doc['errors'])} scenario(s) could not be measured")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
