"""The journal rebuilds exactly the tree it was written from (no FUSE: the inode layer only).

Random sequences of mutations run against a ``Tree``, with snapshots in between; at the end the
journal is replayed into a fresh tree and both must build the very same root entry. This is what
crash recovery relies on.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
from pfsfsd.snapshot import Builder, snapshot
from pfsfsd.staging import Staging, encode_record
from pfsfsd.tree import FsError, Tree
from pfsfsd.tree.journal import header_volumes

from pfsfs.repository import Repository


def _root_entry(tree: Tree, repo: Repository) -> object:
    tree.complete_links(0)  # what a snapshot does first
    with repo.writer() as w:
        root = tree.nodes[tree.volumes[0].root]
        return Builder(tree, w).entry(root).content_id()


def _paths(tree: Tree) -> tuple[list[int], list[int]]:
    dirs, files = [], []
    stack = [tree.volumes[0].root]
    while stack:
        d = tree.nodes[stack.pop()]
        dirs.append(d.ino)
        for ino in tree.children(d).values():
            n = tree.nodes[ino]
            (stack if n.kind == "d" else files).append(ino)
    return dirs, files


def _random_op(tree: Tree, rnd: random.Random, now: int) -> None:
    dirs, files = _paths(tree)
    d = tree.nodes[rnd.choice(dirs)]
    name = f"n{rnd.randrange(12)}".encode()
    op = rnd.randrange(11)
    if op == 0:
        tree.create(d.ino, name, "d", 0o755, 0, 0, 0, b"", now)
    elif op in (1, 2):
        n = tree.create(d.ino, name, "f", 0o644, 0, 0, 0, b"", now)
        tree.write(n.ino, rnd.randrange(5000), rnd.randbytes(rnd.randrange(1, 3000)), now)
    elif op == 3 and files:
        f = rnd.choice(files)
        tree.write(f, rnd.randrange(400_000), rnd.randbytes(rnd.randrange(1, 70_000)), now)
    elif op == 4 and files:
        tree.setattr(rnd.choice(files), now, {"size": rnd.randrange(300_000)})
    elif op == 5 and files:
        tree.setattr(rnd.choice(files), now, {"mode": 0o600, "mtime": now - 5})
    elif op == 6:
        other = tree.nodes[rnd.choice(dirs)]
        src = list(tree.children(d))
        if src:
            tree.rename(d.ino, rnd.choice(src), other.ino, name, rnd.choice((0, 0, 1, 2)), now)
    elif op == 7 and files:
        tree.link(rnd.choice(files), d.ino, name, now)
    elif op == 8:
        names = list(tree.children(d))
        if names:
            victim = rnd.choice(names)
            kind = tree.nodes[tree.children(d)[victim]].kind
            tree.unlink(d.ino, victim, now, rmdir=kind == "d")
    elif op == 9:
        tree.create(d.ino, name, "l", 0o777, 0, 0, 0, b"target/" + name, now)
    elif op == 10 and files:
        tree.set_xattr(rnd.choice(files), b"user.k", rnd.randbytes(4), now)


@pytest.mark.parametrize("seed", range(40))
def test_replay_rebuilds_the_same_tree(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    repo = Repository.open(tmp_path / "home")
    repo.create_repo("r")
    if seed % 2:  # start from a non-empty commit, so committed content is rewritten too
        base = Tree(repo, [("r", "master", None, False)], None, multi=False)
        st0 = Staging.create(tmp_path / "home", "seed", {})
        base.staging = st0
        for i in range(6):
            n = base.create(1, f"c{i}".encode(), "f", 0o644, 0, 0, 0, b"", 1)
            base.write(n.ino, 0, rnd.randbytes(200_000 + i), 1)
        snapshot(base, "seed")
    staging = Staging.create(tmp_path / "home", "m1", {})
    tree = Tree(
        repo,
        [("r", "master", repo.branch_head("r", "master"), False)],
        staging,
        multi=False,
        mount_id="m1",
    )
    staging.rewrite_journal([tree.header()])
    now = 1_000
    for step in range(500):
        now += 1
        try:
            _random_op(tree, rnd, now)
        except FsError as exc:
            assert exc.errno in (
                errno.EEXIST,
                errno.ENOTEMPTY,
                errno.EINVAL,
                errno.EISDIR,
                errno.ENOTDIR,
                errno.EPERM,
                errno.ENOENT,
                errno.ENODATA,
            ), exc
        if step in (100, 200, 300, 400) and rnd.random() < 0.7:
            snapshot(tree, f"step {step}")
    expected = _root_entry(tree, repo)
    records = list(Staging.open(tmp_path / "home", "m1").records())
    assert records[0][0] == "H"
    again = Tree(
        repo,
        [tuple(v) for v in records[0][1]["volumes"]],  # type: ignore[misc]
        Staging.open(tmp_path / "home", "m1"),
        multi=False,
        mount_id="m1",
    )
    again.replay(records[1:])
    assert _root_entry(again, repo) == expected
    # and the replayed tree commits to the same content
    results = snapshot(again, "recovered")
    head = repo.branch_head("r", "master")
    assert results[0].commit is None or results[0].commit == head
    assert repo.read_commit(head).root.content_id() == expected if results[0].commit else True
    repo.close()


def test_journal_records_keep_their_layout(tmp_path: Path) -> None:
    """Journals of live and orphaned mounts are on disk: the records a mutation writes must keep
    the layout earlier versions wrote (and replayed), field for field, bytes included."""
    home = tmp_path / "home"
    repo = Repository.open(home)
    repo.create_repo("r")
    seed = Tree(repo, [("r", "master", None, False)], None, multi=False)
    seed.staging = Staging.create(home, "seed", {})
    d0 = seed.create(1, b"d", "d", 0o755, 0, 0, 0, b"", 5)
    f0 = seed.create(d0.ino, b"f", "f", 0o644, 0, 0, 0, b"", 5)
    seed.write(f0.ino, 0, b"committed", 5)
    snapshot(seed, "seed")
    staging = Staging.create(home, "m1", {})
    head = repo.branch_head("r", "master")
    tree = Tree(repo, [("r", "master", head, False)], staging, multi=False, mount_id="m1")
    staging.rewrite_journal([tree.header()])
    d = tree.lookup(1, b"d")
    f = tree.lookup(d.ino, b"f")
    tree.write(f.ino, 0, b"C", 10)  # binds the committed nodes it names first
    n = tree.create(d.ino, b"n", "f", 0o644, 7, 8, 0, b"", 11)
    tree.write(n.ino, 2, b"xy", None)
    tree.setattr(n.ino, 12, {"mode": 0o600, "size": 3})
    tree.set_xattr(n.ino, b"user.k", b"v", 13)
    tree.set_xattr(n.ino, b"user.k", None, 14)
    tree.link(n.ino, 1, b"hard", 15)
    tree.rename(1, b"hard", d.ino, b"moved", 0, 16)
    tree.unlink(d.ino, b"moved", 17, rmdir=False)
    tree.create(1, b"s", "l", 0o777, 0, 0, 0, b"target", 18)
    tree.content.write_failed(n, 4, 9)
    records = list(Staging.open(home, "m1").records())
    expected = [
        ["H", {"volumes": [["r", "master", head, False]], "next_ino": 2}],
        ["B", d.ino, 1, b"d"],
        ["B", f.ino, d.ino, b"f"],
        ["W", f.ino, 0, 1, 10],
        ["N", n.ino, d.ino, b"n", "f", 0o644, 7, 8, 0, b"", 11],
        ["W", n.ino, 2, 2, None],
        ["A", n.ino, {"mode": 0o600, "size": 3}, 12],
        ["X", n.ino, b"user.k", b"v", 13],
        ["X", n.ino, b"user.k", None, 14],
        ["L", n.ino, 1, b"hard", 15],
        ["R", 1, b"hard", d.ino, b"moved", 0, 16],
        ["U", d.ino, b"moved", 17, False],
        ["N", n.ino + 1, 1, b"s", "l", 0o777, 0, 0, 0, b"target", 18],
        ["F", n.ino, 4, 9],
    ]
    assert records == expected
    raw = (home / "staging" / "m1" / "journal").read_bytes()
    assert raw == b"".join(encode_record(r) for r in expected)
    again = Tree(repo, header_volumes(records) or [], Staging.open(home, "m1"), multi=False)
    assert again.replay(records[1:]) == len(expected) - 1
    g = again.lookup(again.lookup(1, b"d").ino, b"f")
    assert bytes(again.read(g, 0, 100)) == b"Committed"
    assert again.lookup(1, b"s").target == b"target"
    assert again.unstaged_paths() == ["/d/n"]
    repo.close()
