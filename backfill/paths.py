"""What a path names, said in words, checked before anything opens it.

Opening the wrong kind of file does damage or hangs: a FIFO blocks the open, a character
device (``/dev/null``) would be replaced by a regular file, a dangling symlink would have its
target created somewhere unexpected. So every path the tool reads or writes is looked at with
``lstat``/``stat`` first, and refused with what it is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = [
    "MAX_PATH",
    "describe_kind",
    "kind_of_mode",
    "path_problem",
    "shown",
    "text_problem",
    "write_target_problem",
]

MAX_PATH = 4096  # Linux's PATH_MAX, terminating NUL included
_MAX_NAME = 255  # NAME_MAX: one path component
_SHOWN = 200


def shown(value: object, limit: int = _SHOWN) -> str:
    """A value as an error message shows it: quoted, escaped, and never longer than ``limit``."""
    text = repr(value)
    if len(text) > limit:
        return f"{text[: limit - 16]}... ({len(str(value)):,} characters)"
    return text


def text_problem(value: str, *, limit: int) -> str | None:
    """What is wrong with a string bound for a header, a path or a URL, if anything."""
    if len(value) > limit:
        return f"is {len(value):,} characters long; at most {limit:,} are accepted"
    for position, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            name = {"\0": "a NUL", "\n": "a newline", "\r": "a carriage return", "\t": "a tab"}
            return (
                f"contains {name.get(char, f'a control character (U+{ord(char):04X})')} "
                f"at position {position}; remove it"
            )
    return None


def path_problem(value: str) -> str | None:
    """What is wrong with a path's text (before looking at the file system), if anything."""
    problem = text_problem(value, limit=MAX_PATH - 1)
    if problem is not None:
        return problem
    longest = max((len(part.encode()) for part in value.split("/")), default=0)
    if longest > _MAX_NAME:
        return f"has a name of {longest} bytes; a file name has at most {_MAX_NAME}"
    return None


def describe_kind(path: Path) -> str | None:
    """What ``path`` names when it is not a regular file (or nothing yet), else ``None``.

    Symlinks are followed: a symlink to a regular file is fine, a dangling one or a loop is not.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        try:
            os.lstat(path)
        except OSError:
            return None  # nothing there yet: it will be created
        return "a dangling symlink (its target does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return None  # not a folder on the way, no permission...: opening it says which
    return _kind(info.st_mode)


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def kind_of_mode(mode: int) -> str | None:
    """``describe_kind`` for a mode already at hand (``fstat`` of an open file)."""
    return _kind(mode)


def write_target_problem(path: Path) -> str | None:
    """Why a file written at the end of a run (report, metrics) could not be, if it could not.

    Checked before the run starts, so a backfill is not done only to fail on its last step.
    """
    kind = describe_kind(path)
    if kind is not None:
        return f"is {kind}; give the path of a regular file"
    folder = path.parent if str(path.parent) else Path()
    if path.exists():
        if not os.access(path, os.W_OK):
            return "is not writable; fix its permissions or choose another path"
        return None
    if not folder.is_dir():
        return f"cannot be created: the folder {shown(str(folder))} does not exist; create it"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be created: the folder {shown(str(folder))} is not writable"
    return None
