"""A small parent for a measured command, so its peak RSS is its own.

Linux keeps a process's peak RSS across ``exec`` (``signal->maxrss`` takes the old memory
map's high-water mark), so a command started by a large process reports at least that
process's size: the benchmark's own process, grown by the scenarios before, set the floor of
every "peak RSS" it measured (a 22 MB planner child showed 66 MB). This probe starts small,
runs the command as its own child, reaps it with ``wait4`` and writes that child's peak RSS
(and CPU) to a file; it exits with the child's exit status. The floor is now the probe's own
size at fork (a bare interpreter).

    python bench/probe.py RESULT_FILE -- COMMAND [ARG...]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python bench/probe.py RESULT_FILE -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    result, command = argv[0], argv[2:]
    prctl = None
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl
    pid = os.fork()
    if pid == 0:  # the command: same session and group, so the bench can stop both at once
        try:
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the probe gone, the command goes
            os.execvp(command[0], command)
        finally:
            os._exit(127)

    def forward(sig: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
    cpu = usage.ru_utime + usage.ru_stime
    with open(result, "w") as out:
        out.write(f"{usage.ru_maxrss} {cpu!r}\n")
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
