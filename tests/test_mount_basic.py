"""Mounting for real: read-only commits, read-write branches, commits on every unmount path."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

from .fusehelpers import Env, env, force_unmount, is_mounted, no_leftovers, sh, write
from .mountmodel import Tree, check_commit, check_remount

__all__ = ["env", "no_leftovers"]


def _seed(env: Env) -> str:
    src = env.mkdir("src")
    write(src / "a.txt", "hello\n")
    (src / "sub").mkdir()
    write(src / "sub" / "b.bin", os.urandom(300_000))
    env.run("repo", "create", "data")
    env.run("put", "data@master:/a.txt", "-f", str(src / "a.txt"), "-m", "seed")
    env.run("put", "data@master:/sub/b.bin", "-f", str(src / "sub" / "b.bin"), "-m", "seed 2")
    return env.head("data@master")


def test_read_only_commit_mount(env: Env) -> None:
    commit = _seed(env)
    with env.mounted(f"data@{commit[:12]}") as mp:
        assert (mp / "a.txt").read_text() == "hello\n"
        assert (mp / "sub" / "b.bin").read_bytes() == env.cat("data@master:/sub/b.bin")
        assert sorted(os.listdir(mp)) == ["a.txt", "sub"]
        for attempt in (lambda: write(mp / "new", "x"), lambda: os.mkdir(mp / "d")):
            try:
                attempt()
                raise AssertionError("write to a read-only mount succeeded")
            except OSError as exc:
                assert exc.errno == 30  # EROFS
        out = sh(f"ls -la {mp}")
        assert "a.txt" in out
    assert env.commits("data@master") == 2


def test_read_only_flag_on_branch(env: Env) -> None:
    _seed(env)
    with env.mounted("data@master", "mnt", "--read-only") as mp:
        assert (mp / "a.txt").read_text() == "hello\n"
        proc = subprocess.run(["sh", "-c", f"echo x >> {mp}/a.txt"], capture_output=True)
        assert proc.returncode != 0 and b"Read-only" in proc.stderr
        err = env.fails("snapshot", str(mp), "-m", "x")
        assert "read-only" in err


def test_shell_tools_and_commit_on_pfsfs_unmount(env: Env) -> None:
    _seed(env)
    before = env.head("data@master")
    mp = env.mount("data@master")
    try:
        sh(f"cp /etc/services {mp}/services")
        sh(f"echo appended >> {mp}/a.txt")
        sh(f"mkdir -p {mp}/x/y/z && echo deep > {mp}/x/y/z/f")
        sh(f"mv {mp}/sub {mp}/moved")
        sh(f"rm -r {mp}/x/y")
        sh(f"ln -s a.txt {mp}/link && ln {mp}/a.txt {mp}/hard && mkfifo {mp}/fifo")
        sh(f"chmod 600 {mp}/services && touch -d '2001-02-03 04:05:06' {mp}/services")
        sh(f"truncate -s 5 {mp}/hard")
        sh(f"dd if=/dev/zero of={mp}/sparse bs=1 count=1 seek=10M status=none")
        assert (mp / "a.txt").read_text() == "hello"
        assert sh(f"cat {mp}/link") == "hello"
        assert os.stat(mp / "sparse").st_size == 10 * 2**20 + 1
        view = Tree(mp)
        commit = env.unmount(mp)
    finally:
        force_unmount(mp)
    assert not is_mounted(mp)
    assert len(commit) == 64 and commit != before
    assert env.head("data@master") == commit[:12]
    assert env.cat("data@master:/services") == Path("/etc/services").read_bytes()
    assert env.cat("data@master:/a.txt") == b"hello"
    assert env.cat("data@master:/moved/b.bin") == env.cat(f"data@{before}:/sub/b.bin")
    ls = env.out("ls", "data@master:/")
    assert "sub/" not in ls and "x/" in ls and "link -> a.txt" in ls
    sparse = env.cat("data@master:/sparse")
    assert len(sparse) == 10 * 2**20 + 1 and sparse.count(0) == len(sparse)
    # the whole commit is what the mount showed: modes (600), the touch -d mtime, the fifo,
    # the symlink, the hard link (a remount), directory mtimes
    check_commit(env, view, f"data@{commit}")
    check_remount(env, view, "data@master")


def _commit_via(env: Env, how: list[str]) -> None:
    _seed(env)
    before = env.commits("data@master")
    mp = env.mount("data@master")
    try:
        write(mp / "new.txt", "via " + how[0])
        view = Tree(mp)
        subprocess.run([*how, str(mp)], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while env.commits("data@master") == before and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        force_unmount(mp)
    assert env.commits("data@master") == before + 1
    assert env.cat("data@master:/new.txt") == ("via " + how[0]).encode()
    check_commit(env, view, "data@master")


def test_fusermount_unmount_commits(env: Env) -> None:
    _commit_via(env, ["fusermount3", "-u"])


def test_umount_commits(env: Env) -> None:
    _commit_via(env, ["umount"])


def test_no_change_unmount_makes_no_commit(env: Env) -> None:
    _seed(env)
    mp = env.mount("data@master")
    try:
        sh(f"ls -laR {mp} > /dev/null && cat {mp}/a.txt {mp}/sub/b.bin > /dev/null")
        proc = env.run("unmount", str(mp))
        assert proc.stdout.strip() == ""
        assert "no changes" in proc.stderr
    finally:
        force_unmount(mp)
    assert env.commits("data@master") == 2


def test_snapshot_while_mounted(env: Env) -> None:
    _seed(env)
    with env.mounted("data@master") as mp:
        write(mp / "one", "1")
        view = Tree(mp)
        first = env.out("snapshot", str(mp), "-m", "first snap")
        assert len(first) == 64
        assert env.cat("data@master:/one") == b"1"
        check_commit(env, view, f"data@{first}")
        write(mp / "one", "11", "ab")
        write(mp / "two", "2")
        view = Tree(mp)
        second = env.out("snapshot", str(mp), "-m", "second snap")
        assert second != first
        assert env.cat("data@master:/one") == b"111"
        check_commit(env, view, f"data@{second}")
        assert "second snap" in env.out("log", "data@master", "-n", "1")
        # nothing changed since: no commit
        proc = env.run("snapshot", str(mp), "-m", "third")
        assert proc.stdout.strip() == "" and "no changes" in proc.stderr
        assert (mp / "one").read_text() == "111"
        mounts = env.out("mounts")
        assert str(mp) in mounts and "data@master" in mounts
    assert env.commits("data@master") == 4


def test_discard(env: Env) -> None:
    _seed(env)
    mp = env.mount("data@master")
    try:
        write(mp / "junk", "x")
        out = env.run("unmount", str(mp), "--discard", "--yes")
        assert out.returncode == 0
    finally:
        force_unmount(mp)
    assert env.commits("data@master") == 2
    assert "junk" not in env.out("ls", "data@master:/")


def test_create_and_empty_repo(env: Env) -> None:
    with env.mounted("fresh@dev", "mnt", "--create") as mp:
        assert os.listdir(mp) == []
        write(mp / "f", "data")
        view = Tree(mp)
        commit = env.out("snapshot", str(mp), "-m", "first")
        assert len(commit) == 64
    assert env.cat("fresh@dev:/f") == b"data"
    check_commit(env, view, f"fresh@{commit}")


def test_the_mount_worker_runs_with_the_malloc_tuning(env: Env) -> None:
    """Each mount's process starts with glibc malloc tuned for streaming big buffers
    (``pfsfsd.malloc``), settings glibc accepts."""
    import json

    from pfsfsd.malloc import WORKER_MALLOC_SETTINGS

    env.environ.pop("GLIBC_TUNABLES", None)  # a developer's own would be merged in
    mp = env.mount("data@master", "mnt", "--create")
    try:
        pid = json.loads(env.out("mounts", "--json"))["mounts"][0]["pid"]
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
        env.unmount(mp)
    finally:
        force_unmount(mp)
    # glibc 2.36 splits the variable in place as it parses it (":" becomes NUL): rejoin.
    _, found, tail = raw.partition(b"\0GLIBC_TUNABLES=")
    assert found, "the worker has no GLIBC_TUNABLES"
    parts = list(itertools.takewhile(lambda p: p.startswith(b"glibc."), tail.split(b"\0")))
    value = ":".join(p.decode() for p in parts)
    settings = dict(kv.partition("=")[::2] for kv in value.split(":"))
    assert settings == dict(WORKER_MALLOC_SETTINGS)
    # ...and glibc knows every one of them (it ignores a name it does not know).
    listed = subprocess.run(
        ["/lib64/ld-linux-x86-64.so.2", "--list-tunables"],
        env={"GLIBC_TUNABLES": value},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name, number in WORKER_MALLOC_SETTINGS:
        assert f"{name}: {int(number):#x} " in listed
