"""One owner per checkpoint file, whatever path leads to it, and a watch on the file it owns.

The lock is an ``flock`` on the checkpoint file itself, so it belongs to the file (its inode),
not to a name: a symlink, a hard link or a deleted sidecar cannot admit a second process. The
kernel drops an ``flock`` when its process dies, so on this host a lock is never stale: the
sidecar below may still name a dead process, and is not trusted as a lock.

The sidecar ``<resolved path>.lock`` says who holds the file (pid, host) and how far its
journal got: the header's generation (a random id made with the file) and the sequence of
records written. A checkpoint opened with fewer records of the same generation than the
sidecar remembers is an older copy put back in place, and is refused.

Before every write, the watch compares the open file with what the path names now (identity
and size): a checkpoint removed, replaced or truncated under the running process stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from .errors import (
    CheckpointLocked,
    CheckpointLost,
    CheckpointMissing,
    CheckpointStale,
    CheckpointWriteError,
    ConfigError,
)
from .paths import describe_kind, kind_of_mode, shown

__all__ = ["Owner", "Pulled", "check_kind", "sidecar_path"]

_SIDECAR_BYTES = 256  # the sidecar is rewritten in place, padded to a fixed size
_ATTEMPTS = 50  # opens retried when the path is replaced between open and lock
_HOST = socket.gethostname()  # in the sidecar, rewritten after every commit


def sidecar_path(path: Path) -> Path:
    """``<resolved path>.lock``: one sidecar per file, whichever symlink leads to it."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".lock")


def check_kind(path: Path) -> None:
    """Refuse a checkpoint path that is not a regular file (or nothing yet)."""
    _refuse_kind(path, describe_kind(path))


def _refuse_kind(path: Path, kind: str | None) -> None:
    if kind is not None:
        raise ConfigError(
            f"checkpoint {shown(str(path))}",
            f"is {kind}; give the path of a regular file (or of one to create)",
        )


class Pulled(OSError):
    """The watch's finding, raised where writes fail with ``OSError`` (the writer thread);
    ``lost`` is the error the run stops with."""

    def __init__(self, lost: CheckpointLost) -> None:
        super().__init__(0, lost.what)
        self.lost = lost


class Owner:
    """The lock on one checkpoint file, its sidecar, and the watch before each write."""

    def __init__(self, path: Path, fd: int, sidecar: Path, sidecar_fd: int) -> None:
        self.path = path
        self._fd = fd  # the locked descriptor (read-only: the journal appends through its own)
        self._sidecar = sidecar
        self._sidecar_fd: int | None = sidecar_fd
        self.created = False
        self._since = round(time.time(), 3)
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        self.size = info.st_size
        self.generation: str | None = None
        self.sequence = 0
        self.previous = _read_sidecar(sidecar_fd)

    # ---------------------------------------------------------------- taking it

    @classmethod
    def acquire(cls, path: Path, *, create: bool) -> Owner:
        """Lock the file ``path`` leads to, or say who holds it; ``create`` it if missing."""
        check_kind(path)
        fd, created = _open_locked(path, create=create)
        try:
            sidecar = sidecar_path(path)
            try:
                sidecar_fd = os.open(sidecar, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise CheckpointWriteError(str(path), exc) from exc
            owner = cls(path, fd, sidecar, sidecar_fd)
        except BaseException:
            if created:
                _remove_if_empty(path, fd)
            os.close(fd)
            raise
        owner.created = created
        return owner

    def check_not_older(self, generation: str | None, sequence: int) -> None:
        """Refuse an older copy of the file this host last wrote (same generation, fewer)."""
        previous = self.previous
        if (
            generation is not None
            and previous.get("gen") == generation
            and isinstance(previous.get("seq"), int)
            and previous["seq"] > sequence
        ):
            raise CheckpointStale(str(self.path), sequence, previous["seq"], str(self._sidecar))

    def claim(self, generation: str | None, sequence: int) -> None:
        """Record this process as the holder, at ``sequence`` of ``generation``."""
        self.generation = generation
        self.sequence = sequence
        self._write_sidecar()

    # ---------------------------------------------------------------- the watch

    def watch(self, fd: int) -> None:
        """Before a write: is ``fd`` still the file the path names, and as long as we left it?

        Runs in the flusher's thread; costs a ``stat`` and an ``fstat``.
        """
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise _pulled(str(self.path), "was removed (or its folder was)") from None
        except OSError as exc:
            raise _pulled(str(self.path), f"could no longer be reached ({exc.strerror})") from None
        mine = os.fstat(fd)
        identity = (mine.st_dev, mine.st_ino)
        if (now.st_dev, now.st_ino) != identity or identity != self._identity:
            raise _pulled(
                str(self.path), "was replaced by another file (moved, copied over or restored)"
            )
        if mine.st_size < self.size:
            raise _pulled(
                str(self.path), f"was truncated from {self.size:,} to {mine.st_size:,} bytes"
            )
        if mine.st_size > self.size:
            raise _pulled(
                str(self.path),
                f"was written by someone else ({mine.st_size - self.size:,} bytes appended)",
            )

    def wrote(self, data: bytes) -> None:
        """After a durable write of ``data``: the size to expect, the sequence reached."""
        self.size += len(data)
        self.sequence += data.count(b"\n")
        with contextlib.suppress(OSError):  # the sidecar is a hint; the checkpoint is the truth
            self._write_sidecar()

    def replaced(self, fd: int) -> None:
        """The journal put a new file in place (compaction): ``fd`` is it, locked already."""
        info = os.fstat(fd)
        os.close(self._fd)
        self._fd = fd
        self._identity = (info.st_dev, info.st_ino)
        self.size = info.st_size

    def replaceable(self) -> bool:
        """Whether the file may be replaced by a new one (compaction): not when hard links
        lead to it too, as they would keep the old file, unlocked once it is let go."""
        return os.fstat(self._fd).st_nlink == 1

    def reset_size(self) -> None:
        """The file was truncated or written by this process outside ``wrote`` (opening)."""
        self.size = os.fstat(self._fd).st_size

    def release(self, *, abandon: bool = False) -> None:
        """Let the file go; ``abandon``: opening failed, so an empty file it made goes too.

        The sidecar keeps the generation and sequence (an older copy put back later is still
        recognised) but no longer names a holder (``status`` reads it)."""
        if abandon and self.created and self._fd >= 0:
            _remove_if_empty(self.path, self._fd)
        if self._sidecar_fd is not None:
            with contextlib.suppress(OSError):
                if self.generation is not None:
                    self._write_sidecar(held=False)
                elif self.previous.get("gen") is None:
                    os.ftruncate(self._sidecar_fd, 0)
            os.close(self._sidecar_fd)
            self._sidecar_fd = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write_sidecar(self, *, held: bool = True) -> None:
        if self._sidecar_fd is None:
            return
        record: dict[str, Any] = {"gen": self.generation, "seq": self.sequence}
        if held:
            record = {"pid": os.getpid(), "host": _HOST, "since": self._since, **record}
        os.pwrite(self._sidecar_fd, orjson.dumps(record).ljust(_SIDECAR_BYTES) + b"\n", 0)


def _pulled(path: str, what: str) -> Pulled:
    return Pulled(CheckpointLost(path, what))


def lock_new_file(fd: int) -> None:
    """Lock a file the journal made (compaction) before it is renamed into place."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _open_locked(path: Path, *, create: bool) -> tuple[int, bool]:
    """Open and lock the file the path names now; retried if it was replaced meanwhile."""
    for _ in range(_ATTEMPTS):
        created = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            if not create:
                raise CheckpointMissing(str(path)) from None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # made by someone else just now: open theirs
            except OSError as exc:
                raise CheckpointWriteError(str(path), exc) from exc
            created = True
        except OSError as exc:
            raise CheckpointWriteError(str(path), exc) from exc
        try:
            info = os.fstat(fd)
            _refuse_kind(path, kind_of_mode(info.st_mode))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, host = _holder(path, info)
                raise CheckpointLocked(str(path), pid, host) from None
            except OSError as exc:  # ENOLCK: a file system without locks
                raise CheckpointWriteError(str(path), exc) from exc
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                return fd, created
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file that is no longer at the path: try what is there now
    raise CheckpointWriteError(
        str(path), OSError(0, "it kept being replaced while it was being opened")
    )


def _holder(path: Path, info: os.stat_result) -> tuple[int | None, str | None]:
    """Which process holds the file's lock: the kernel's table on this host, else the
    sidecar's word (a holder on another host of a network file system)."""
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with contextlib.suppress(OSError), open("/proc/locks", encoding="ascii") as locks:
        for line in locks:
            fields = line.split()
            if "FLOCK" in fields and device in fields:
                number = fields[fields.index(device) - 1]
                if number.isdigit() and int(number) > 0:
                    return int(number), None
    try:
        with open(sidecar_path(path), "rb") as sidecar:
            said = _parse_sidecar(sidecar.read(4096))
    except OSError:
        return None, None
    pid, host = said.get("pid"), said.get("host")
    return (
        pid if isinstance(pid, int) else None,
        host if isinstance(host, str) and host != _HOST else None,
    )


def _read_sidecar(fd: int) -> dict[str, Any]:
    try:
        return _parse_sidecar(os.pread(fd, 4096, 0))
    except OSError:
        return {}


def _parse_sidecar(data: bytes) -> dict[str, Any]:
    text = data.strip()
    if text.isdigit():  # the sidecar of earlier versions: a pid alone
        return {"pid": int(text)}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _remove_if_empty(path: Path, fd: int) -> None:
    """Undo the empty file an open made, when opening failed before anything was written."""
    with contextlib.suppress(OSError):
        mine, now = os.fstat(fd), os.stat(path)
        if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino) and mine.st_size == 0:
            path.unlink()
