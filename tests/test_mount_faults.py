"""Faults under a mount: a full staging disk never gives a commit other than what was written.

The home (index + staging) sits on a small tmpfs of its own, the store on the ordinary disk, so
the staging disk fills while the store does not: the case of a laptop whose home is nearly full.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fusehelpers import PFSFS, Env, env, force_unmount, no_leftovers, running_env

__all__ = ["env", "no_leftovers"]


@pytest.fixture
def small_home(tmp_path: Path, no_leftovers: None) -> Iterator[Env]:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(home)], check=True)
    try:
        subprocess.run(
            [PFSFS, "--home", str(home), "init", "--store", str(tmp_path / "store")],
            check=True,
            capture_output=True,
        )
        with running_env(tmp_path) as env:
            yield env
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def _copy(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cp", str(src), str(dst)], capture_output=True, text=True)


def test_full_staging_disk_fails_the_snapshot_naming_the_file(small_home: Env) -> None:
    env = small_home
    big = env.root / "big.bin"
    big.write_bytes(os.urandom(20 << 20))  # more than the staging disk holds
    mp = env.mount("data@master", "mnt", "--create")
    try:
        (mp / "small").write_bytes(b"fits")
        first = env.out("snapshot", str(mp), "-m", "small")
        filler = env.home / "filler"  # something else fills the disk...
        filler.write_bytes(bytes(6 << 20))
        cp = _copy(big, mp / "big.bin")
        assert cp.returncode != 0 and "No space left" in cp.stderr, cp
        filler.unlink()  # ...and is gone again before the snapshot
        proc = env.run("snapshot", str(mp), "-m", "after the full disk", check=False)
        assert proc.returncode == 7, (proc.returncode, proc.stderr)
        assert "/big.bin" in proc.stderr and "Traceback" not in proc.stderr
        assert env.head("data@master") == first[:12]  # nothing was committed
        # unmount refuses too, and the mount stays
        proc = env.run("unmount", str(mp), check=False)
        assert proc.returncode == 7 and "/big.bin" in proc.stderr, proc.stderr
        # the way out the message names: delete it (or write it again once there is space)
        os.unlink(mp / "big.bin")
        (mp / "after").write_bytes(b"later")
        env.run("snapshot", str(mp), "-m", "recovered")
        assert env.cat("data@master:/after") == b"later"
        assert env.cat("data@master:/small") == b"fits"
        assert "big.bin" not in env.out("ls", "data@master")
    finally:
        force_unmount(mp)


def test_rewriting_after_a_full_disk_commits_the_new_bytes(small_home: Env) -> None:
    env = small_home
    big = env.root / "big.bin"
    big.write_bytes(os.urandom(20 << 20))
    mp = env.mount("data@master", "mnt", "--create")
    try:
        assert _copy(big, mp / "f").returncode != 0
        # shorter content written over it (O_TRUNC) once it fits: the file is whole again
        data = os.urandom(3 << 20)
        (mp / "f").write_bytes(data)
        env.run("snapshot", str(mp), "-m", "rewritten")
        assert env.cat("data@master:/f") == data
    finally:
        force_unmount(mp)


def test_concurrent_snapshots_of_one_branch_all_land(env: Env) -> None:
    """Two mounts of one branch snapshot at the same time, over and over: each snapshot merges
    with whatever the other committed meanwhile and lands (bounded retries), none is refused."""
    import threading

    a = env.mount("data@master", "a", "--create")
    b = env.mount("data@master", "b")
    failures: list[str] = []

    def writer(mp: Path, tag: str) -> None:
        for i in range(12):
            (mp / f"{tag}{i}").write_bytes(f"{tag} {i}".encode())
            proc = env.run("snapshot", str(mp), "-m", f"{tag} {i}", check=False)
            if proc.returncode != 0:
                failures.append(proc.stderr.strip())

    try:
        threads = [threading.Thread(target=writer, args=(mp, t)) for mp, t in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        names = set(env.out("ls", "data@master").split())
        assert names == {f"{t}{i}" for t in "ab" for i in range(12)}, names
        assert env.cat("data@master:/b11") == b"b 11"
    finally:
        force_unmount(a)
        force_unmount(b)


def test_busy_unmount_names_the_holder(env: Env) -> None:
    with env.mounted("data@master", "mnt", "--create") as mp:
        (mp / "f").write_bytes(b"kept")
        holder = subprocess.Popen(["sleep", "30"], cwd=mp)
        try:
            proc = env.run("unmount", str(mp), check=False)
            assert proc.returncode == 10, (proc.returncode, proc.stderr)
            assert "busy" in proc.stderr and f"sleep (pid {holder.pid})" in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
        finally:
            holder.kill()
            holder.wait()
        assert env.cat("data@master:/f") == b"kept"  # the unmount committed before trying
        env.unmount(mp)
