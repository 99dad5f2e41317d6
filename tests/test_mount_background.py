"""Background chunking of closed files (pfsfsd.precommit): the work of a commit is done while
the mount is idle, before the unmount; a file changed afterwards is committed as it is then,
never as it was when the background work read it; gc never deletes what the background stored
for a file not committed yet; a kill -9 after background chunking loses nothing fsync'd."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pfsfs.ids import hash_bytes, to_hex

from .fusehelpers import Env, env, force_unmount, no_leftovers

__all__ = ["env", "no_leftovers"]

# One content-defined chunk (at most the minimum chunk size, 256 KiB: 300 KiB could be cut in
# two, by chance, and then no blob held the whole content), above the 128 KiB packing threshold,
# so it is stored as a blob of its own.
SIZE = 200 << 10


def _stored(env: Env, data: bytes) -> bool:
    """Whether the one chunk of ``data`` is in the local store (as its own blob)."""
    name = to_hex(hash_bytes(data))
    return any((env.home / "store" / "chunk").rglob(name))


def _wait_stored(env: Env, data: bytes, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not _stored(env, data):
        assert time.monotonic() < deadline, "the closed file was not chunked in the background"
        time.sleep(0.1)


def test_closed_file_is_stored_before_any_commit(env: Env) -> None:
    data = os.urandom(SIZE)
    with env.mounted("data@master", "mnt", "--create") as mp:
        (mp / "a.bin").write_bytes(data)
        _wait_stored(env, data)  # while the mount is idle, without a snapshot or unmount
        assert env.head("data@master") == "", "nothing was committed yet"
        env.unmount(mp)
    assert env.cat("data@master:/a.bin") == data
    env.fsck()


def test_file_changed_after_background_chunking_commits_its_new_content(env: Env) -> None:
    old = {name: os.urandom(SIZE) for name in ("same-size", "truncated", "appended", "renamed")}
    new_same = os.urandom(SIZE)
    new_trunc = os.urandom(1000)
    with env.mounted("data@master", "mnt", "--create") as mp:
        for name, data in old.items():
            (mp / name).write_bytes(data)
        for data in old.values():
            _wait_stored(env, data)
        with open(mp / "same-size", "r+b") as f:  # same size, no truncation: only the writes
            f.write(new_same)
        (mp / "truncated").write_bytes(new_trunc)
        with open(mp / "appended", "ab") as f:
            f.write(b"tail")
        (mp / "renamed").rename(mp / "moved")  # the content is unchanged: reused as is
        env.unmount(mp)
    assert env.cat("data@master:/same-size") == new_same
    assert env.cat("data@master:/truncated") == new_trunc
    assert env.cat("data@master:/appended") == old["appended"] + b"tail"
    assert env.cat("data@master:/moved") == old["renamed"]
    env.fsck()


def test_gc_keeps_what_background_chunking_stored_for_uncommitted_files(env: Env) -> None:
    data = os.urandom(SIZE)
    with env.mounted("data@master", "mnt", "--create") as mp:
        (mp / "a.bin").write_bytes(data)
        _wait_stored(env, data)
        env.run("gc")
        assert _stored(env, data), "gc deleted a chunk the mount is about to commit"
        env.unmount(mp)
    assert env.cat("data@master:/a.bin") == data
    proc = env.run("fsck", "--deep", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kill_after_background_chunking_recovers_the_files(env: Env) -> None:
    data = os.urandom(SIZE)
    later = os.urandom(SIZE)
    mp: Path = env.mount("data@master", "mnt", "--create")
    try:
        (mp / "a.bin").write_bytes(data)
        _wait_stored(env, data)
        with open(mp / "a.bin", "r+b") as f:
            f.write(later)
            f.flush()
            os.fsync(f.fileno())
    finally:
        env.kill_daemon(signal.SIGKILL)
        force_unmount(mp)
    env.start_daemon()
    env.run("recover")
    assert env.cat("data@master:/a.bin") == later
    env.fsck()
