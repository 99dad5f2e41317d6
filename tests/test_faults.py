"""Fault injection through the real CLI and real mounts: a full store disk at every stage, a store
that fails (read-only after an I/O error, an object that cannot be read), kill -9 of the CLI, of
the daemon and of a mount worker at random points, and SIGINT/SIGTERM of long commands.

After each fault: the error is one line with its documented exit code and no traceback, the
branch points at the old commit or at a complete new one, ``fsck --deep`` is clean, and every
acknowledged byte (a ``put`` that exited 0, a snapshot that printed an id, an ``fsync`` that
returned) reads back. ``scripts/faults.py`` runs the long, randomised campaign of the same.

EIO from a block device (dm-error / dm-flakey) is not used: this kernel has no device-mapper.
The store going read-only is what ext4 does on an I/O error (``errors=remount-ro``), so that is
injected by remounting the store's tmpfs read-only.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .fusehelpers import PFSFS, Env, force_unmount, is_mounted, no_leftovers, running_env

__all__ = ["no_leftovers"]


# -- helpers ---------------------------------------------------------------------------------
def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The single error line of a command that had to fail with ``code``."""
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def deep_clean(env: Env) -> None:
    proc = env.run("fsck", "--deep", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its filesystem is full; the file."""
    filler = directory / "filler"
    block = bytes(64 << 10)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def fsync_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def home_with_store(tmp_path: Path, size: str | None) -> Iterator[tuple[Env, Path]]:
    """A home whose store is ``tmp_path/store`` (a tmpfs of ``size`` if given), its daemon."""
    store = tmp_path / "store"
    store.mkdir()
    if size:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(store)], check=True
        )
    try:
        subprocess.run(
            [PFSFS, "--home", str(tmp_path / "home"), "init", "--store", str(store)],
            check=True,
            capture_output=True,
        )
        with running_env(tmp_path) as env:
            yield env, store
    finally:
        if size:
            subprocess.run(["umount", "-l", str(store)], check=False)


@pytest.fixture
def small_store(tmp_path: Path, no_leftovers: None) -> Iterator[tuple[Env, Path]]:
    with home_with_store(tmp_path, "16m") as pair:
        yield pair


@pytest.fixture
def plain(tmp_path: Path, no_leftovers: None) -> Iterator[tuple[Env, Path]]:
    with home_with_store(tmp_path, None) as pair:
        yield pair


# -- the store disk full ---------------------------------------------------------------------
def test_put_on_a_full_store(small_store: tuple[Env, Path]) -> None:
    env, store = small_store
    env.run("repo", "create", "r")
    first = os.urandom(1 << 20)
    (env.root / "first").write_bytes(first)
    env.run("put", "r@master:/first", "-f", str(env.root / "first"), "-m", "first")
    head = env.head("r@master")
    big = os.urandom(6 << 20)
    (env.root / "big").write_bytes(big)
    filler = fill(store)
    proc = env.run("put", "r@master:/big", "-f", str(env.root / "big"), "-m", "big", check=False)
    assert "no space left on device" in one_line(proc, 7)
    assert env.head("r@master") == head
    deep_clean(env)
    filler.unlink()
    env.run("put", "r@master:/big", "-f", str(env.root / "big"), "-m", "big")
    assert env.cat("r@master:/big") == big and env.cat("r@master:/first") == first
    deep_clean(env)


def test_snapshot_and_unmount_on_a_full_store(small_store: tuple[Env, Path]) -> None:
    env, store = small_store
    mp = env.mount("data@master", "mnt", "--create")
    try:
        (mp / "small").write_bytes(b"small")
        first = env.out("snapshot", str(mp), "-m", "small")
        data = os.urandom(5 << 20)
        fsync_write(mp / "big", data)
        filler = fill(store)
        proc = env.run("snapshot", str(mp), "-m", "big", check=False)
        assert "no space left" in one_line(proc, 7)
        assert env.head("data@master") == first[:12]
        proc = env.run("unmount", str(mp), check=False)
        assert "no space left" in one_line(proc, 7)
        assert is_mounted(mp) and (mp / "big").read_bytes() == data  # nothing was dropped
        assert env.head("data@master") == first[:12]
        deep_clean(env)
        filler.unlink()
        env.run("snapshot", str(mp), "-m", "big")
        assert env.cat("data@master:/big") == data
        (mp / "later").write_bytes(b"later")
        fill(store)
        proc = env.run("unmount", str(mp), check=False)
        assert "no space left" in one_line(proc, 7)
        (store / "filler").unlink()
        env.unmount(mp)
        assert not is_mounted(mp)
    finally:
        force_unmount(mp)
    assert env.cat("data@master:/later") == b"later"
    deep_clean(env)


def test_gc_on_a_full_store_frees_it(small_store: tuple[Env, Path]) -> None:
    """gc only deletes (it writes nothing to the store): on a full disk it is the way out."""
    env, store = small_store
    env.run("repo", "create", "junk")
    (env.root / "junk").write_bytes(os.urandom(4 << 20))
    env.run("put", "junk@master:/junk", "-f", str(env.root / "junk"))
    env.run("repo", "create", "keep")
    keep = os.urandom(1 << 20)
    (env.root / "keep").write_bytes(keep)
    env.run("put", "keep@master:/keep", "-f", str(env.root / "keep"))
    env.run("repo", "delete", "junk", "--force")
    fill(store)
    report = env.out("gc")
    assert "deleted" in report and "0 objects" not in report
    (env.root / "more").write_bytes(os.urandom(1 << 20))
    env.run("put", "keep@master:/more", "-f", str(env.root / "more"))  # fits again
    assert env.cat("keep@master:/keep") == keep
    deep_clean(env)


# -- the store fails -------------------------------------------------------------------------
def test_store_gone_read_only_after_an_io_error(small_store: tuple[Env, Path]) -> None:
    """ext4 remounts itself read-only on an I/O error (errors=remount-ro): every new write
    fails. (A read-only bind mount over the store: a remount is refused while the daemon holds
    the ref table open for writing.)"""
    env, store = small_store
    env.run("repo", "create", "r")
    (env.root / "a").write_bytes(b"a")
    env.run("put", "r@master:/a", "-f", str(env.root / "a"))
    head = env.head("r@master")
    mp = env.mount("data@master", "mnt", "--create")
    try:
        data = os.urandom(1 << 20)
        fsync_write(mp / "f", data)
        subprocess.run(["mount", "--bind", str(store), str(store)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(store)], check=True)
            (env.root / "b").write_bytes(os.urandom(1 << 20))
            proc = env.run("put", "r@master:/b", "-f", str(env.root / "b"), check=False)
            assert "read-only" in one_line(proc, 7).lower()
            proc = env.run("snapshot", str(mp), "-m", "f", check=False)
            assert "read-only" in one_line(proc, 7).lower()
            # reads fail too (the ref table is opened for writing), in one line
            assert "read-only" in one_line(env.run("log", "r@master", check=False), 7).lower()
        finally:
            subprocess.run(["umount", str(store)], check=True)  # the bind mount
        assert env.head("r@master") == head and env.head("data@master") == ""
        deep_clean(env)
        env.run("snapshot", str(mp), "-m", "f")
        assert env.cat("data@master:/f") == data
        env.run("put", "r@master:/b", "-f", str(env.root / "b"))
    finally:
        force_unmount(mp)
    deep_clean(env)


def test_an_object_that_cannot_be_read(plain: tuple[Env, Path]) -> None:
    """A chunk file that became a directory (what a bad restore or a broken disk leaves): reads
    fail in one line, fsck --deep names it, and the rest of the store still serves."""
    env, store = plain
    env.run("repo", "create", "r")
    big = os.urandom(600 << 10)  # standalone chunks
    (env.root / "big").write_bytes(big)
    env.run("put", "r@master:/big", "-f", str(env.root / "big"))
    (env.root / "small").write_bytes(b"small")
    env.run("put", "r@master:/small", "-f", str(env.root / "small"))
    chunk = sorted(p for p in (store / "chunk").rglob("*") if p.is_file())[0]
    saved = chunk.with_name("saved")
    chunk.rename(saved)
    chunk.mkdir()
    try:
        # Which of big's chunks sorts first is down to its hash: the chunks before it may be
        # written out before the error, but never a byte that is not big's.
        raw = env.cat_raw("r@master:/big")
        assert big.startswith(raw.stdout) and len(raw.stdout) < len(big)
        failed = subprocess.CompletedProcess(raw.args, raw.returncode, "", raw.stderr.decode())
        assert raw.returncode in (6, 7) and chunk.name in one_line(failed, raw.returncode)
        assert env.cat("r@master:/small") == b"small"
        proc = env.run("fsck", "--deep", check=False)
        assert proc.returncode == 6 and chunk.name in proc.stdout, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        chunk.rmdir()
        saved.rename(chunk)
    assert env.cat("r@master:/big") == big
    deep_clean(env)


def test_a_store_directory_that_cannot_take_new_objects(plain: tuple[Env, Path]) -> None:
    """Every fan-out directory of chunks replaced by a file: a put fails in one line (exit 7),
    the branch stays, and once repaired the same put works."""
    env, store = plain
    env.run("repo", "create", "r")
    head_before = env.head("r@master")
    shutil.rmtree(store / "chunk", ignore_errors=True)
    (store / "chunk").write_bytes(b"not a directory")
    data = os.urandom(2 << 20)
    (env.root / "f").write_bytes(data)
    try:
        proc = env.run("put", "r@master:/f", "-f", str(env.root / "f"), check=False)
        one_line(proc, 7)
        assert env.head("r@master") == head_before
    finally:
        (store / "chunk").unlink()
        (store / "chunk").mkdir()
    env.run("put", "r@master:/f", "-f", str(env.root / "f"))
    assert env.cat("r@master:/f") == data
    deep_clean(env)


# -- kill -9 ---------------------------------------------------------------------------------
def big_file(path: Path, mib: int) -> bytes:
    data = os.urandom(mib << 20)
    path.write_bytes(data)
    return data


def pfsfs_popen(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PFSFS, "--home", str(env.home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env.environ,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_of_a_put(plain: tuple[Env, Path], seed: int) -> None:
    """The branch names the old commit or a complete new one; fsck --deep is clean."""
    env, _ = plain
    rng = random.Random(seed)
    env.run("repo", "create", "r")
    old = big_file(env.root / "old", 1)
    env.run("put", "r@master:/f", "-f", str(env.root / "old"))
    head = env.head("r@master")
    new = big_file(env.root / "new", 64)
    proc = pfsfs_popen(env, "put", "r@master:/f", "-f", str(env.root / "new"))
    time.sleep(rng.uniform(0.05, 1.5))
    proc.kill()
    _, err = proc.communicate()
    assert "Traceback" not in err
    now = env.head("r@master")
    assert env.cat("r@master:/f") == (old if now == head else new)
    deep_clean(env)
    env.run("put", "r@master:/f", "-f", str(env.root / "new"))  # and it works again
    assert env.cat("r@master:/f") == new


def daemon_children(env: Env) -> list[tuple[int, str]]:
    """(pid, command line) of the daemon's child processes (mount workers, the scheduler)."""
    assert env.proc is not None
    pid = env.proc.pid
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    found.append((int(child), c.read().replace(b"\0", b" ").decode()))
    return found


def write_acknowledged(mp: Path, rng: random.Random) -> dict[str, bytes]:
    """Files written and fsync'd in the mount: what is owed after any crash."""
    owed = {}
    for i in range(rng.randint(3, 8)):
        data = os.urandom(rng.choice([10, 4096, 200 << 10, 3 << 20]))
        fsync_write(mp / f"f{i}", data)
        owed[f"f{i}"] = data
    return owed


def crash_restart_recover(env: Env, mp: Path) -> None:
    env.kill_daemon(signal.SIGKILL)
    env.start_daemon()
    force_unmount(mp)
    proc = env.run("recover", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command,seed", [("snapshot", 1), ("snapshot", 2), ("unmount", 3)])
def test_kill_9_of_the_daemon_mid_command(plain: tuple[Env, Path], command: str, seed: int) -> None:
    env, _ = plain
    rng = random.Random(seed)
    mp = env.mount("data@master", "mnt", "--create")
    try:
        owed = write_acknowledged(mp, rng)
        proc = pfsfs_popen(env, command, str(mp), "-m", "killed")
        time.sleep(rng.uniform(0.0, 0.4))
        crash_restart_recover(env, mp)
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err
        assert proc.returncode in (0, 9), (proc.returncode, err)
        if proc.returncode == 0:  # it printed an id: that commit holds it all
            for name, data in owed.items():
                assert env.cat(f"data@{out.strip()}:/{name}") == data
    finally:
        force_unmount(mp)
    for name, data in owed.items():
        assert env.cat(f"data@master:/{name}") == data
    assert env.out("recover", "--list") == "nothing to recover"
    deep_clean(env)


def test_kill_9_of_a_mount_worker(plain: tuple[Env, Path]) -> None:
    env, _ = plain
    mp = env.mount("data@master", "mnt", "--create")
    try:
        owed = write_acknowledged(mp, random.Random(4))
        workers = [pid for pid, cmd in daemon_children(env) if "-m pfsfsd.worker " in cmd]
        assert len(workers) == 1, daemon_children(env)
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(OSError):
            os.listdir(mp)
        assert "DEAD" in env.out("mounts")
        force_unmount(mp)
        proc = env.run("recover", check=False)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    finally:
        force_unmount(mp)
    for name, data in owed.items():
        assert env.cat(f"data@master:/{name}") == data
    deep_clean(env)


# -- SIGINT / SIGTERM of long commands -------------------------------------------------------
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def wait_until_working(proc: subprocess.Popen[str], target: str, timeout: float = 60) -> None:
    """Until ``proc`` has ``target`` open (a path, or "socket:" for any socket)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
            except OSError:
                continue
            if link == target or (target == "socket:" and link.startswith("socket:")):
                return
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("command", ["put", "snapshot"])
def test_signal_of_a_long_command(
    plain: tuple[Env, Path], command: str, sig: signal.Signals
) -> None:
    """Interrupted: one line, 130 (SIGINT) or 143 (SIGTERM), the branch at the old commit or a
    complete new one."""
    env, _ = plain
    data = big_file(env.root / "new", 160)
    mp = env.mount("r@master", "mnt", "--create")
    try:
        if command == "put":
            args = ["put", "r@master:/f", "-f", str(env.root / "new")]
        else:
            shutil.copyfile(env.root / "new", mp / "f")
            args = ["snapshot", str(mp), "-m", "interrupted"]
        proc = pfsfs_popen(env, *args)
        # the command is under way once it reads the file (put) or talks to the daemon
        # (snapshot): a fixed sleep sent the signal during start-up on a loaded machine
        wait_until_working(proc, str(env.root / "new") if command == "put" else "socket:")
        assert proc.poll() is None, "the command ended before the signal"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err
        if env.head("r@master"):  # it finished after all: the commit is whole
            assert env.cat("r@master:/f") == data
        assert proc.returncode == INTERRUPTED[sig], (proc.returncode, err)
        assert len(err.strip().splitlines()) == 1, err
    finally:
        force_unmount(mp)
    deep_clean(env)


def test_snapshot_of_a_mount_whose_daemon_died_exits_9(plain: tuple[Env, Path]) -> None:
    env, _ = plain
    mp = env.mount("data@master", "mnt", "--create")
    try:
        fsync_write(mp / "f", b"owed")
        env.kill_daemon(signal.SIGKILL)
        for command in ("snapshot", "unmount"):
            proc = env.run(command, str(mp), "-m", "x", check=False)
            assert "dead mount" in one_line(proc, 9)
    finally:
        env.start_daemon()
        force_unmount(mp)
        env.run("recover")
    assert env.cat("data@master:/f") == b"owed"
