"""Time travel through the hidden .pfs/ directory, multi-repo mounts, autosnapshot."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from .fusehelpers import Env, env, force_unmount, no_leftovers, write
from .mountmodel import Tree, check_commit, snapshot_checked

__all__ = ["env", "no_leftovers"]


def test_pfs_time_travel(env: Env) -> None:
    with env.mounted("data@master", "mnt", "--create") as mp:
        write(mp / "f", "v1")
        c1 = snapshot_checked(env, mp, "data@master", "one")
        write(mp / "f", "v2")
        os.mkdir(mp / "d")
        c2 = snapshot_checked(env, mp, "data@master", "two")
        assert ".pfs" not in os.listdir(mp)
        assert sorted(os.listdir(mp / ".pfs")) == ["branches", "commits", "log"]
        assert (mp / ".pfs" / "commits" / c1 / "f").read_text() == "v1"
        assert (mp / ".pfs" / "commits" / c1[:8] / "f").read_text() == "v1"
        assert (mp / ".pfs" / "commits" / c2 / "f").read_text() == "v2"
        assert not (mp / ".pfs" / "commits" / c1 / "d").exists()
        assert (mp / ".pfs" / "branches" / "master" / "f").read_text() == "v2"
        assert "master" in os.listdir(mp / ".pfs" / "branches")
        log = (mp / ".pfs" / "log").read_text()
        assert log.index(c2) < log.index(c1) and "one" in log and "two" in log
        with pytest.raises(OSError) as exc:
            write(mp / ".pfs" / "commits" / c1 / "f", "nope")
        assert exc.value.errno == errno.EROFS
        with pytest.raises(OSError) as exc:
            os.mkdir(mp / ".pfs")
        assert exc.value.errno == errno.EEXIST
        assert not (mp / ".pfs" / "commits" / "ffffffffffff").exists()
        # the branch view follows new commits
        write(mp / "f", "v3")
        snapshot_checked(env, mp, "data@master", "three")
        view = mp / ".pfs" / "branches" / "master" / "f"
        deadline = time.monotonic() + 30  # it refreshes about once a second
        while view.read_text() != "v3" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert view.read_text() == "v3"


def test_multi_repo_mount(env: Env) -> None:
    with env.mounted(None, "mnt", "--repos", "a@master,b@dev", "--create") as mp:
        assert sorted(os.listdir(mp)) == ["a", "b"]
        write(mp / "a" / "x", "in a")
        write(mp / "b" / "y", "in b")
        with pytest.raises(OSError) as exc:
            os.rename(mp / "a" / "x", mp / "b" / "x")
        assert exc.value.errno == errno.EXDEV
        with pytest.raises(OSError):
            write(mp / "top-level", "no")
        assert (mp / "a" / ".pfs" / "log").exists()
        out = env.out("snapshot", str(mp), "-m", "both")
        assert "a:" in out and "b:" in out
        write(mp / "b" / "y", "changed b only")
        views = {"a@master": Tree(mp / "a"), "b@dev": Tree(mp / "b")}
        env.unmount(mp)
    for ref, view in views.items():
        check_commit(env, view, ref)
    assert env.cat("a@master:/x") == b"in a"
    assert env.cat("b@dev:/y") == b"changed b only"
    assert env.commits("a@master") == 1 and env.commits("b@dev") == 2


def test_autosnapshot(env: Env) -> None:
    with env.mounted("data@master", "mnt", "--create", "--autosnapshot", "0.5") as mp:
        write(mp / "f", "auto")
        deadline = time.monotonic() + 15
        while env.commits("data@master") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert env.cat("data@master:/f") == b"auto"
        assert "autosnapshot" in env.out("log", "data@master")


def test_snapshot_racing_writes_is_atomic(env: Env) -> None:
    """A writer appends 4 KiB records while snapshots run: every commit holds whole records."""
    record = 4096
    stop = threading.Event()
    with env.mounted("data@master", "mnt", "--create") as mp:
        path = mp / "records"

        def writer() -> None:
            i = 0
            with open(path, "ab", buffering=0) as f:
                while not stop.is_set():
                    f.write(bytes([i % 251]) * record)
                    i += 1
                    if i % 16 == 0:
                        time.sleep(0.002)

        t = threading.Thread(target=writer)
        t.start()
        commits = []
        try:
            for n in range(4):
                time.sleep(0.2)
                commits.append(env.out("snapshot", str(mp), "-m", f"race {n}"))
        finally:
            stop.set()
            t.join()
    for c in commits:
        if not c:
            continue
        data = env.cat(f"data@{c}:/records")
        assert len(data) % record == 0
        for k in range(0, len(data), record):
            chunk = data[k : k + record]
            assert chunk == chunk[:1] * record
    force_unmount(mp)
