"""Crash safety with real kills: nothing snapshotted, unmounted or fsync'd is lost."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

from .fusehelpers import Env, env, force_unmount, is_mounted, no_leftovers, write
from .mountmodel import Tree, got_tree, unmount_checked

__all__ = ["env", "no_leftovers"]


def _fsync_write(path: os.PathLike[str], data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _crash_and_restart(env: Env, mp: os.PathLike[str]) -> None:
    env.kill_daemon(signal.SIGKILL)
    try:
        os.listdir(mp)
        raise AssertionError("the mount survived the daemon's death")
    except OSError as exc:
        assert exc.errno == 107  # ENOTCONN: a stale mount
    env.start_daemon()  # recovery detaches the stale mount
    assert not is_mounted(mp)


def test_kill_after_fsync(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    big = os.urandom(3 << 20)
    try:
        _fsync_write(mp / "durable.bin", big)
        os.makedirs(mp / "dir")
        _fsync_write(mp / "dir" / "small", b"small")
        write(mp / "maybe", "not fsynced")
        view = Tree(mp)
        _crash_and_restart(env, mp)
    finally:
        force_unmount(mp)
    listed = env.out("recover", "--list")
    assert "data@master" in listed
    mounts = env.out("mounts")
    assert "DEAD" in mounts
    out = env.out("recover")
    assert "committed data@master" in out
    assert env.cat("data@master:/durable.bin") == big
    assert env.cat("data@master:/dir/small") == b"small"
    assert env.out("recover", "--list") == "nothing to recover"
    # what was fsync'd comes back as the mount showed it: content, mode, size, mtime in ns
    got = got_tree(env, "data@master")
    for path in (b"durable.bin", b"dir/small"):
        shown, back = view.items[path], got.items[path]
        assert back.key(mtime=True, xattrs=False) == shown.key(mtime=True, xattrs=False), path


def test_kill_after_snapshot(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    try:
        write(mp / "a", "snapshotted")
        commit = env.out("snapshot", str(mp), "-m", "before the crash")
        _crash_and_restart(env, mp)
    finally:
        force_unmount(mp)
    assert env.head("data@master") == commit[:12]
    assert env.cat("data@master:/a") == b"snapshotted"
    assert env.out("recover", "--list") == "nothing to recover"


def _wait_for_ack(path: os.PathLike[str], at_least: int, timeout: float = 60) -> int:
    """The writer's ack (a counter it rewrites and fsyncs) once it is at least ``at_least``:
    waiting for it rather than a fixed time keeps a loaded machine from crashing the daemon
    before anything was acknowledged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                seen = int(f.read() or 0)
        except (OSError, ValueError):
            seen = 0
        if seen >= at_least:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the writer acknowledged nothing up to {at_least} in {timeout} s")


def test_kill_during_writes(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    script = (
        "import os, sys\n"
        "i = 0\n"
        "while True:\n"
        "    p = os.path.join(sys.argv[1], f'f{i % 20}')\n"
        "    with open(p, 'ab') as f:\n"
        "        f.write(os.urandom(65536))\n"
        "    if i % 10 == 0:\n"
        "        fd = os.open(sys.argv[1] + '/ack', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
        "        os.write(fd, str(i).encode()); os.fsync(fd); os.close(fd)\n"
        "    i += 1\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(mp)], stderr=subprocess.DEVNULL)
    try:
        seen = _wait_for_ack(mp / "ack", at_least=20)
        _crash_and_restart(env, mp)
    finally:
        writer.kill()
        writer.wait()
        force_unmount(mp)
    env.out("recover")
    ack = int(env.cat("data@master:/ack"))
    # Before it wrote `seen`, the writer had fsynced the value before it: that one was
    # acknowledged, so it survives the crash.
    assert ack >= seen - 10
    files = env.out("ls", "data@master:/")
    assert "f0" in files


def test_kill_during_snapshot_and_remount(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    payload = os.urandom(20 << 20)
    try:
        _fsync_write(mp / "big", payload)
        snap = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pfsfs.cli.main",
                "--home",
                str(env.home),
                "snapshot",
                str(mp),
                "-m",
                "racing",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.15)
        _crash_and_restart(env, mp)
        snap.wait()
    finally:
        force_unmount(mp)
    # whether or not the snapshot finished, recovery brings the data back: remount it
    listed = env.out("recover", "--list")
    if "data@master" in listed:
        env.out("recover", "--remount")
        assert is_mounted(mp)
        try:
            digest = hashlib.sha256((mp / "big").read_bytes()).digest()
            assert digest == hashlib.sha256(payload).digest()
            write(mp / "after", "remounted")
            unmount_checked(env, mp, "data@master")
        finally:
            force_unmount(mp)
        assert env.cat("data@master:/after") == b"remounted"
    assert env.cat("data@master:/big") == payload


def test_sigterm_commits_and_exits_zero(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    try:
        write(mp / "unsaved", "saved by SIGTERM")
        assert env.proc is not None
        env.proc.send_signal(signal.SIGTERM)
        assert env.proc.wait(timeout=60) == 0
        assert not is_mounted(mp)
    finally:
        force_unmount(mp)
    env.start_daemon()
    assert env.cat("data@master:/unsaved") == b"saved by SIGTERM"
    assert env.out("recover", "--list") == "nothing to recover"


def test_full_staging_disk(tmp_path: os.PathLike[str], no_leftovers: None) -> None:
    """ENOSPC reaches the writer, nothing is corrupted, and the mount keeps working."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root to mount a small tmpfs")
    from pathlib import Path

    root = Path(tmp_path)
    small = root / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    e = Env(root)
    e.home = small / "home"
    try:
        e.run("init", "--store", str(root / "store"))
        e.start_daemon()
        mp = e.mount("data@master", "mnt", "--create")
        try:
            write(mp / "keep", "kept")
            blob = os.urandom(1 << 20)
            failed = None
            try:
                with open(mp / "huge", "wb") as f:
                    for _ in range(64):
                        f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                failed = exc.errno
            assert failed == 28  # ENOSPC
            os.unlink(mp / "huge")
            write(mp / "after", "still works")
            assert (mp / "keep").read_text() == "kept"
            commit = unmount_checked(e, mp, "data@master")
            assert len(commit) == 64
        finally:
            force_unmount(mp)
        assert e.cat("data@master:/after") == b"still works"
        assert "huge" not in e.out("ls", "data@master:/")
        e.fsck()
    finally:
        e.stop_daemon()
        force_unmount(root / "mnt")
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_kill_worker_only(env: Env) -> None:
    """A mount's own process dies: the daemon lives on, lists it as dead, recover saves it."""
    mp = env.mount("data@master", "mnt", "--create")
    try:
        _fsync_write(mp / "f", b"fsynced")
        import json

        pid = json.loads(env.out("mounts", "--json"))["mounts"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        mounts = env.out("mounts")
        assert "DEAD" in mounts
        assert not is_mounted(mp)  # listing dead mounts detached the stale one
        env.out("recover", "--remount")
        assert (mp / "f").read_bytes() == b"fsynced"
        unmount_checked(env, mp, "data@master")
    finally:
        force_unmount(mp)
    assert env.cat("data@master:/f") == b"fsynced"
