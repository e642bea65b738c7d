"""The benchmark suite runs end to end (``scripts/bench --quick``); no assertion on speed."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "startup",
    "emulator",
    "rate",
    "throughput",
    "planning",
    "journal",
    "monitoring",
    "scaling",
    "coverage",
}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_bench_measures_every_scenario(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    bench = subprocess.Popen(
        [str(ROOT / "scripts" / "bench"), "--quick", "--results", str(results)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the suite stops its emulators and clients on the way out
        stdout, stderr = bench.communicate(timeout=30)
        pytest.fail(f"scripts/bench --quick did not finish in 360 s:\n{stdout[-3000:]}")
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    document = orjson.loads(results.read_bytes())
    assert document["quick"] is True
    assert {"cpu_model", "cores", "python", "date"} <= document["machine"].keys()
    assert set(document["scenarios"]) == SCENARIOS
    for name, scenario in document["scenarios"].items():
        assert scenario["error"] is None, name
        assert scenario["figures"], name
        for figure in scenario["figures"]:
            values = [figure["measured"], *figure["repetitions"]]
            assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), (
                name,
                figure,
            )
            assert figure["passed"] in (True, False, None)
    assert "MISSED" in stdout or "every target met" in stdout
