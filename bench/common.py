"""Shared pieces of the suite: figures, measured subprocesses, the emulator, the machine."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

ROOT = Path(__file__).resolve().parent.parent
FLOW_ID = "3abea21c-7e36-4be1-bec1-d3bad0e3e0de"
TOKEN = "bench-token"
API_KEY = "bench-client-id"
ORG_ID = "BENCH0RG1234@AdobeOrg"
SANDBOX = "prod"
HOUR = 3600
START = 1262304000  # 2010-01-01T00:00:00Z: 100,000 hourly windows from here end in 2021
LOOPBACK = "127.0.0.1"
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}

Op = Literal[">=", "<=", "=="]


class BenchError(RuntimeError):
    """A measurement could not be made (as opposed to a target being missed)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How this run of the suite goes: sizes, repetitions, where files go."""

    quick: bool
    repetitions: int
    work: Path


@dataclass(slots=True)
class Figure:
    """One measured quantity: every repetition, its median, and the target it is held to."""

    name: str
    unit: str
    values: list[float]
    op: Op | None = None
    bound: float | None = None
    note: str = ""

    @property
    def measured(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return float(statistics.median(finite)) if finite else math.nan

    @property
    def target(self) -> str:
        if self.op is None or self.bound is None:
            return ""
        return f"{self.op} {fmt(self.bound)}"

    @property
    def passed(self) -> bool | None:
        """True or False against the target; None for a figure that is only reported."""
        if self.op is None or self.bound is None:
            return None
        value = self.measured
        if not math.isfinite(value):
            return False
        if self.op == ">=":
            return value >= self.bound
        if self.op == "<=":
            return value <= self.bound
        return value == self.bound

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "measured": _finite_or_none(self.measured),
            "repetitions": [_finite_or_none(v) for v in self.values],
            "target": self.target or None,
            "op": self.op,
            "bound": self.bound,
            "passed": self.passed,
            "note": self.note or None,
        }


@dataclass(slots=True)
class Result:
    """What one scenario found: its figures, raw details per repetition, notes."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def figure(
        self,
        name: str,
        unit: str,
        values: Sequence[float],
        op: Op | None = None,
        bound: float | None = None,
        note: str = "",
    ) -> Figure:
        made = Figure(name, unit, [float(v) for v in values], op, bound, note)
        self.figures.append(made)
        return made

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": [f.as_json() for f in self.figures],
            "details": self.details,
            "notes": self.notes,
            "error": self.error,
            "seconds": round(self.seconds, 2),
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def fmt(value: float) -> str:
    """A number as a person reads it in a table."""
    if not math.isfinite(value):
        return "n/a"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# ------------------------------------------------------------------------------ processes

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class Measured:
    """How a finished subprocess went: exit code, wall time, CPU and memory of its tree."""

    code: int
    wall: float
    cpu: float  # user + system seconds of the process and every descendant it waited for
    max_rss_mb: float


_PR_SET_PDEATHSIG = 1
_prctl: Any = None
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not after fork


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it if the suite dies, even by SIGKILL (Linux)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in a session of its own (so its whole tree can be stopped) and track it."""
    process = subprocess.Popen(
        list(argv),
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
        # Only the timeout timer thread runs meanwhile, and it holds no lock: fork is safe.
        preexec_fn=_die_with_parent if _prctl is not None else None,  # noqa: PLW1509
    )
    _LIVE[process.pid] = process
    return process


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace`` seconds; reap it."""
    try:
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(10)
        else:  # the leader is gone; anything it left behind in its group goes too
            _signal_group(process.pid, signal.SIGKILL)
    finally:
        _LIVE.pop(process.pid, None)


def stop_all() -> None:
    """Stop every process the suite started that is still running (Ctrl-C, errors, exit)."""
    for process in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            stop(process, grace=3.0)


def measure(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    stdin: Path | None = None,
    stdout: Path | None = None,
    stderr: Path | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run ``argv`` to its end; measure wall time and the CPU and peak RSS of its tree.

    ``os.wait4`` gives the resource use of exactly this child and of every descendant it
    reaped (xargs' curls, for instance), never that of the emulator or of this process.
    """
    with contextlib.ExitStack() as files:
        handles = {
            "stdin": files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL,
            "stdout": files.enter_context(open(stdout, "ab")) if stdout else subprocess.DEVNULL,
            "stderr": files.enter_context(open(stderr, "ab")) if stderr else subprocess.DEVNULL,
        }
        timed_out = threading.Event()

        def on_timeout(pid: int) -> None:
            timed_out.set()
            _signal_group(pid, signal.SIGKILL)

        # Through the probe: the command's peak RSS is then its own, not this process's
        # (see bench/probe.py), and its CPU excludes the probe's.
        probed = Path(tempfile.mkstemp(prefix="probe-", suffix=".txt")[1])
        files.callback(probed.unlink, missing_ok=True)
        started = time.perf_counter()
        process = spawn(
            [sys.executable, str(ROOT / "bench" / "probe.py"), str(probed), "--", *argv],
            env=env,
            cwd=cwd,
            **handles,
        )
        timer = threading.Timer(timeout, on_timeout, (process.pid,))
        timer.daemon = True
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stop(process)  # anything the leader left running in its group
        own = probed.read_text().split()
    if timed_out.is_set():
        raise BenchError(f"{Path(argv[0]).name} did not finish in {timeout:.0f} s")
    if len(own) != 2:  # the probe itself was killed: its own figures are all there is
        return Measured(
            process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        )
    return Measured(process.returncode, wall, float(own[1]), int(own[0]) / 1024)


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def check(measured: Measured, what: str, log: Path | None = None) -> None:
    if measured.code != 0:
        detail = f": {tail(log)}" if log is not None else ""
        raise BenchError(f"{what} exited {measured.code}{detail}")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def child_json(argv: Sequence[str], *, timeout: float, work: Path, label: str) -> Any:
    """Run a measuring child that prints one JSON object; return it with the child's rusage."""
    out = work / f"{label}.out"
    err = work / f"{label}.err"
    out.unlink(missing_ok=True)
    measured = measure(argv, timeout=timeout, stdout=out, stderr=err, env=clean_env())
    check(measured, label, err)
    lines = [line for line in out.read_bytes().splitlines() if line.strip()]
    if not lines:
        raise BenchError(f"{label} printed nothing: {tail(err)}")
    return orjson.loads(lines[-1]), measured


def backfill_command() -> list[str]:
    """The installed ``backfill`` console script (the real CLI), or ``python -m backfill``."""
    script = Path(sys.executable).with_name("backfill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "backfill"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for children: no BACKFILL_* leaking in, no proxy between us and 127.0.0.1."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BACKFILL_") and k.lower() not in _PROXY_VARIABLES
    }
    env.pop("JOB_COMPLETION_INDEX", None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


_COMPILE = (
    "import compileall, importlib.util, pathlib\n"
    "folder = pathlib.Path(importlib.util.find_spec('backfill').origin).parent\n"
    "ok = compileall.compile_dir(folder, quiet=1)\n"
    "print(folder if ok else '')\n"
)


def python_c(code: str, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python [FLAGS] -c CODE`` in a clean environment; its output as text."""
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=True,
    )


def byte_compile() -> str:
    """Byte-compile the ``backfill`` package the commands import, as installing it does.

    Every child runs with PYTHONDONTWRITEBYTECODE=1, so in a checkout without current .pyc
    files each command would compile backfill's source again: 0.03 s of ``plan``'s CPU that
    no installed copy (a wheel, the container image) pays. Returns the folder compiled.
    """
    done = python_c(_COMPILE, timeout=120)
    folder = done.stdout.strip()
    if not folder:
        raise BenchError(f"backfill could not be byte-compiled: {done.stderr[-500:]}")
    return folder


def cli_env(base_url: str, **extra: str) -> dict[str, str]:
    """What a user exports before running ``backfill`` against the emulator; JSON logs."""
    return clean_env(
        BACKFILL_BASE_URL=base_url,
        BACKFILL_API_KEY=API_KEY,
        BACKFILL_ORG_ID=ORG_ID,
        BACKFILL_SANDBOX_NAME=SANDBOX,
        BACKFILL_ACCESS_TOKEN=TOKEN,
        BACKFILL_LOG_FORMAT="json",
        **extra,
    )


def plan_flags(windows: int) -> list[str]:
    """``--flow-id/--start/--end/--window`` for ``windows`` hourly windows of the bench flow."""
    return [
        "--flow-id",
        FLOW_ID,
        "--start",
        str(START),
        "--end",
        str(START + windows * HOUR),
        "--window",
        "1h",
    ]


def run_body(index: int) -> bytes:
    """The exact body ``backfill`` sends for hourly window ``index`` (no delta column)."""
    start = START + index * HOUR
    params = {"windowStartTime": str(start), "windowEndTime": str(start + HOUR)}
    return orjson.dumps({"flowId": FLOW_ID, "params": params})


def write_bodies(path: Path, windows: int) -> Path:
    if not path.exists():
        path.write_bytes(b"".join(run_body(i) + b"\n" for i in range(windows)))
    return path


def cli_summary(log: Path) -> dict[str, Any]:
    """The ``summary`` event of a JSON-lines log of ``backfill run``."""
    for line in reversed(log.read_bytes().splitlines()):
        if b'"summary"' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict) and event.get("event") == "summary":
                    return event
    raise BenchError(f"no summary in {log.name}: {tail(log)}")


# ------------------------------------------------------------------------------- emulator


def http_json(method: str, url: str, timeout: float = 120.0) -> Any:
    """One request to the emulator's inspection API, never through a proxy."""
    # Imported here: urllib pulls in ssl, and measured children import this module too.
    import urllib.request  # noqa: PLC0415

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with opener.open(request, timeout=timeout) as response:
        return orjson.loads(response.read())


@dataclass(frozen=True, slots=True)
class Emulator:
    """A running ``backfill emulator`` subprocess."""

    base_url: str
    root: str
    pid: int

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = http_json("GET", self.root + "/__emulator/stats")
        return stats

    def reset(self) -> None:
        http_json("POST", self.root + "/__emulator/reset")


def created(stats: dict[str, Any]) -> int:
    """Runs the emulator created (201 answers to POST /runs)."""
    return int(stats["requests"]["by_endpoint"].get("POST /runs", {}).get("201", 0))


def sustained_rate(stats: dict[str, Any]) -> float:
    """Runs per second between the first and the last run the emulator created."""
    times = sorted(float(run["created_at"]) for run in stats["runs"])
    if len(times) < 2 or times[-1] <= times[0]:
        return math.nan
    return (len(times) - 1) / (times[-1] - times[0])


def requests_to(stats: dict[str, Any], endpoint: str) -> int:
    return sum(int(n) for n in stats["requests"]["by_endpoint"].get(endpoint, {}).values())


_emulators = 0


@contextlib.contextmanager
def emulator(settings: Settings, *flags: str) -> Iterator[Emulator]:
    """``backfill emulator --port 0 --ready-file F --flow FLOW:file FLAGS`` until the block ends."""
    global _emulators  # noqa: PLW0603 - a counter for unique file names
    _emulators += 1
    ready = settings.work / f"emulator-{_emulators}.url"
    log = settings.work / f"emulator-{_emulators}.log"
    argv = [
        *backfill_command(),
        "emulator",
        "--host",
        LOOPBACK,
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--flow",
        f"{FLOW_ID}:file",
        *flags,
    ]
    with open(log, "wb") as out:
        process = spawn(argv, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20.0
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the emulator did not start: {tail(log)}")
            time.sleep(0.02)
        base_url = ready.read_text().strip()
        if not base_url.startswith(f"http://{LOOPBACK}:"):
            raise BenchError(f"the emulator is not on {LOOPBACK}: {base_url}")
        root = base_url.split("/data/", 1)[0]
        yield Emulator(base_url, root, process.pid)
    finally:
        stop(process)


@contextlib.contextmanager
def canned_server(settings: Settings) -> Iterator[Emulator]:
    """``python -m bench.canned`` (201 to every POST /runs, nothing kept) until the block ends."""
    global _emulators  # noqa: PLW0603 - a counter for unique file names
    _emulators += 1
    ready = settings.work / f"canned-{_emulators}.url"
    log = settings.work / f"canned-{_emulators}.log"
    with open(log, "wb") as out:
        process = spawn(
            python_module("bench.canned", "--host", LOOPBACK, "--ready-file", str(ready)),
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 20.0
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the canned server did not start: {tail(log)}")
            time.sleep(0.02)
        base_url = ready.read_text().strip()
        yield Emulator(base_url, base_url.split("/data/", 1)[0], process.pid)
    finally:
        stop(process)


def canned_created(server: Emulator) -> int:
    return int(http_json("GET", server.root + "/__stats")["created"])


# -------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = done.stdout.strip() or None
    return {
        "cpu_model": model or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mb": memory_mb,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
    }
