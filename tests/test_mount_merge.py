"""The branch moved while mounted: path-level merge, conflicts, --ours/--theirs/--onto-branch."""

from __future__ import annotations

import os

from .fusehelpers import Env, env, force_unmount, no_leftovers, write
from .mountmodel import Tree, check_commit, unmount_checked

__all__ = ["env", "no_leftovers"]


def _put(env: Env, path: str, data: str) -> None:
    src = env.root / "putsrc"
    write(src, data)
    env.run("put", f"data@master:{path}", "-f", str(src), "-m", f"put {path}")


def _seed(env: Env) -> None:
    env.run("repo", "create", "data")
    _put(env, "/shared.txt", "base\n")
    _put(env, "/dir/keep.txt", "keep\n")


def test_disjoint_changes_merge(env: Env) -> None:
    _seed(env)
    with env.mounted("data@master") as mp:
        write(mp / "mine.txt", "mine\n")
        write(mp / "dir" / "mine2.txt", "mine2\n")
        _put(env, "/theirs.txt", "theirs\n")
        _put(env, "/dir/theirs2.txt", "theirs2\n")
        commit = env.out("snapshot", str(mp), "-m", "merge me")
        assert len(commit.split()[0]) == 64
        # the mount now shows the other side's files too
        assert (mp / "theirs.txt").read_text() == "theirs\n"
        assert (mp / "dir" / "theirs2.txt").read_text() == "theirs2\n"
        assert (mp / "mine.txt").read_text() == "mine\n"
        merged = commit.split()[0]
        check_commit(env, Tree(mp), f"data@{merged}", "the merge commit against the mount")
        unmount_checked(env, mp, "data@master")  # nothing new: the merge commit again
    ls = env.out("ls", "data@master:/")
    for name in ("mine.txt", "theirs.txt", "shared.txt"):
        assert name in ls
    assert env.cat("data@master:/dir/theirs2.txt") == b"theirs2\n"
    assert env.cat("data@master:/dir/mine2.txt") == b"mine2\n"


def test_conflict_keeps_changes_then_theirs(env: Env) -> None:
    _seed(env)
    with env.mounted("data@master") as mp:
        write(mp / "shared.txt", "ours\n")
        write(mp / "other.txt", "ours only\n")
        _put(env, "/shared.txt", "theirs\n")
        head = env.head("data@master")
        err = env.fails("snapshot", str(mp), "-m", "x", code=5)
        assert "/shared.txt" in err and "other.txt" not in err
        assert env.head("data@master") == head  # nothing committed
        assert (mp / "shared.txt").read_text() == "ours\n"  # nothing lost
        err = env.fails("unmount", str(mp), code=5)  # unmount refuses too, mount stays
        assert (mp / "other.txt").read_text() == "ours only\n"
        taken = env.out("snapshot", str(mp), "-m", "take theirs", "--theirs").split()[0]
        assert (mp / "shared.txt").read_text() == "theirs\n"
        assert (mp / "other.txt").read_text() == "ours only\n"
        check_commit(env, Tree(mp), f"data@{taken}", "the --theirs commit against the mount")
    assert env.cat("data@master:/shared.txt") == b"theirs\n"
    assert env.cat("data@master:/other.txt") == b"ours only\n"


def test_conflict_ours(env: Env) -> None:
    _seed(env)
    mp = env.mount("data@master")
    try:
        os.unlink(mp / "dir" / "keep.txt")
        _put(env, "/dir/keep.txt", "changed on the branch\n")
        env.fails("unmount", str(mp), code=5)
        view = Tree(mp)
        ours = env.out("unmount", str(mp), "--ours")
    finally:
        force_unmount(mp)
    assert "keep.txt" not in env.out("ls", "data@master:/dir/")
    check_commit(env, view, f"data@{ours.split()[0]}")


def test_onto_new_branch(env: Env) -> None:
    _seed(env)
    with env.mounted("data@master") as mp:
        write(mp / "shared.txt", "experiment\n")
        _put(env, "/shared.txt", "mainline\n")
        env.out("snapshot", str(mp), "-m", "side", "--onto-branch", "experiment")
        assert "data@experiment" in env.out("mounts")
        write(mp / "more.txt", "more\n")
        unmount_checked(env, mp, "data@experiment")
    assert env.cat("data@master:/shared.txt") == b"mainline\n"
    assert env.cat("data@experiment:/shared.txt") == b"experiment\n"
    assert env.cat("data@experiment:/more.txt") == b"more\n"


def test_two_mounts_same_branch(env: Env) -> None:
    _seed(env)
    a = env.mount("data@master", "a")
    b = env.mount("data@master", "b")
    try:
        write(a / "from_a", "A")
        write(b / "from_b", "B")
        env.unmount(a)
        env.unmount(b)  # merges with a's commit
    finally:
        force_unmount(a)
        force_unmount(b)
    ls = env.out("ls", "data@master:/")
    assert "from_a" in ls and "from_b" in ls
    assert env.cat("data@master:/from_a") == b"A" and env.cat("data@master:/from_b") == b"B"


def test_conflict_at_fusermount_is_recoverable(env: Env) -> None:
    _seed(env)
    mp = env.mount("data@master")
    try:
        write(mp / "shared.txt", "ours\n")
        _put(env, "/shared.txt", "theirs\n")
        os.system(f"fusermount3 -u {mp}")
    finally:
        force_unmount(mp)
    listed = env.out("recover", "--list")
    assert "conflict" in listed
    env.fails("recover", code=5)
    env.out("recover", "--onto-branch", "rescued")
    assert env.cat("data@rescued:/shared.txt") == b"ours\n"
    assert env.cat("data@master:/shared.txt") == b"theirs\n"
