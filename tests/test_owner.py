"""The checkpoint's owner: a lock on the file by any path, the watch, and older copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest

from backfill.errors import (
    CheckpointLocked,
    CheckpointLost,
    CheckpointMissing,
    CheckpointStale,
    ConfigError,
    ExitCode,
)
from backfill.journal import Journal, holder

from .test_journal import S, _long_file, make_plan, window


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ck.jsonl"


async def _history(path: Path, records: int = 5) -> None:
    journal = Journal.open(path, make_plan())
    for i in range(records):
        await journal.record(window(i), S.SUBMITTING, attempt=1)
    await journal.close()


@pytest.mark.parametrize("how", ["symlink", "hard link", "relative path", "sidecar deleted"])
async def test_a_second_open_by_any_path_is_refused(path: Path, how: str) -> None:
    await _history(path)
    first = Journal.open(path, make_plan())
    try:
        other = path
        if how == "symlink":
            other = path.parent / "link.jsonl"
            other.symlink_to(path)
        elif how == "hard link":
            other = path.parent / "hard.jsonl"
            os.link(path, other)
        elif how == "relative path":
            other = Path(os.path.relpath(path))
        else:
            path.with_name(path.name + ".lock").unlink()
        with pytest.raises(CheckpointLocked) as info:
            Journal.open(other, make_plan())
        assert info.value.pid == os.getpid()  # from the kernel's lock table
        assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
    finally:
        await first.close()


async def test_the_sidecar_names_the_holder_while_held_and_keeps_how_far_it_got(
    path: Path,
) -> None:
    await _history(path, records=7)
    journal = Journal.open(path, make_plan())
    held = orjson.loads(path.with_name("ck.jsonl.lock").read_bytes())
    found = holder(path)
    await journal.close()
    after = orjson.loads(path.with_name("ck.jsonl.lock").read_bytes())

    header = orjson.loads(path.read_bytes().splitlines()[0])
    assert held["pid"] == os.getpid()
    assert found is not None
    assert found.pid == os.getpid()
    assert (held["gen"], held["seq"]) == (header["gen"], 7)
    assert after == {"gen": header["gen"], "seq": 7}  # no holder once released
    assert holder(path) is None


async def test_a_removed_checkpoint_stops_the_next_record_and_nothing_is_written(
    path: Path,
) -> None:
    journal = Journal.open(path, make_plan())
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    shutil.rmtree(path.parent)
    with pytest.raises(CheckpointLost, match="was removed") as info:
        await journal.record(window(1), S.SUBMITTING, attempt=1)
    assert info.value.exit_code == ExitCode.CHECKPOINT_UNWRITABLE
    with pytest.raises(CheckpointLost):
        await journal.record(window(2), S.SUBMITTING, attempt=1)
    await journal.close()
    assert not path.parent.exists()


async def test_a_replaced_checkpoint_is_noticed_and_the_new_file_is_not_written(
    path: Path,
) -> None:
    journal = Journal.open(path, make_plan())
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    copy = path.with_name("copy")
    shutil.copyfile(path, copy)
    os.replace(copy, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointLost, match="was replaced by another file"):
        await journal.record(window(1), S.SUBMITTING, attempt=1)
    await journal.close()
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("change", "said"),
    [("truncate", "was truncated from"), ("append", "was written by someone else")],
)
async def test_a_checkpoint_changed_by_someone_else_is_noticed(
    path: Path, change: str, said: str
) -> None:
    journal = Journal.open(path, make_plan())
    await journal.record(window(0), S.SUBMITTING, attempt=1)
    if change == "truncate":
        os.truncate(path, 10)
    else:
        with open(path, "ab") as handle:
            handle.write(b"{}\n")
    before = path.read_bytes()
    with pytest.raises(CheckpointLost, match=said):
        await journal.record(window(1), S.SUBMITTING, attempt=1)
    await journal.close()
    assert path.read_bytes() == before


async def test_an_older_copy_is_refused_and_left_as_it_is(path: Path) -> None:
    await _history(path, records=3)
    old = path.read_bytes()
    await _history(path, records=0)  # a reopen adds nothing: the same copy is fine
    journal = Journal.open(path, make_plan())
    for i in range(3, 6):
        await journal.record(window(i), S.SUBMITTING, attempt=1)
    await journal.close()
    path.write_bytes(old)

    with pytest.raises(CheckpointStale, match="older copy: it holds 3 records, but 6") as info:
        Journal.open(path, make_plan())
    assert info.value.exit_code == ExitCode.CHECKPOINT_REFUSED
    assert str(path.with_name("ck.jsonl.lock")) in str(info.value)
    assert path.read_bytes() == old
    readonly = Journal.open(path, None, readonly=True)  # status still shows it
    assert readonly.state(window(4)) is S.PENDING

    path.with_name("ck.jsonl.lock").unlink()  # the person's decision: continue from this copy
    accepted = Journal.open(path, make_plan())
    await accepted.close()


async def test_compaction_keeps_the_sequence_and_a_symlink_to_the_file(tmp_path: Path) -> None:
    real = tmp_path / "volume" / "ck.jsonl"
    plan, _ = await _long_file(real)
    link = tmp_path / "ck.jsonl"
    link.symlink_to(real)
    sequence = orjson.loads(real.with_name("ck.jsonl.lock").read_bytes())["seq"]

    journal = Journal.open(link, plan)
    await journal.record(window(5), S.SUBMITTING, attempt=1)
    await journal.close()

    assert journal.replay.compacted
    assert link.is_symlink(), "compaction replaced the file, not the link"
    header = orjson.loads(real.read_bytes().splitlines()[0])
    assert header["seq"] == sequence
    assert orjson.loads(real.with_name("ck.jsonl.lock").read_bytes())["seq"] == sequence + 1
    reopened = Journal.open(link, plan)  # not mistaken for an older copy
    await reopened.close()


async def test_a_hard_linked_checkpoint_is_not_compacted(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    plan, _ = await _long_file(path)
    os.link(path, tmp_path / "hard.jsonl")
    journal = Journal.open(path, plan)
    await journal.close()
    assert not journal.replay.compacted
    assert os.stat(path).st_ino == os.stat(tmp_path / "hard.jsonl").st_ino


async def test_retry_of_a_missing_checkpoint_creates_nothing(path: Path) -> None:
    with pytest.raises(CheckpointMissing):
        Journal.open(path, None)
    assert not path.parent.exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling", "loop", "device"])
def test_a_path_that_is_not_a_file_is_refused_by_the_journal_too(tmp_path: Path, kind: str) -> None:
    target = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    elif kind == "dangling":
        target.symlink_to(tmp_path / "nowhere" / "ck.jsonl")
    elif kind == "loop":
        target.symlink_to(target)
    else:
        target = Path("/dev/null")
    for readonly in (False, True):
        with pytest.raises(ConfigError, match="give the path of a regular file"):
            Journal.open(target, make_plan(), readonly=readonly)
    assert not (tmp_path / "nowhere").exists()
