"""The Repository API directly: change sets, O(changes) commits, CAS on branches, packing.

The core runs on the memory twin (``store_backends.memory_repository``: no store on disk);
packing and two processes committing at once run on the local store too, since those are
about what lands in a store on disk and about ref CAS across processes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsfs.changes import ChangeSet
from pfsfs.errors import BranchMoved, InvalidInput
from pfsfs.model import DIR, FILE, SYMLINK, Entry, ManifestChunk
from pfsfs.repository import Repository
from pfsfs.store.local import LocalObjectStore
from pfsfs.store.memory import MemoryObjectStore

from .store_backends import memory_repository


def file_entry(repo: Repository, data: bytes, mtime: int = 1) -> Entry:
    with repo.writer() as w:
        from pfsfs.model import ManifestChunk

        chunks = [ManifestChunk(w.put_chunk(c), len(c)) for c in repo.chunker().cut_buffer(data)]
        return Entry(FILE, 0o644, 0, 0, mtime, len(data), w.put_manifest(chunks), nfiles=1)


def read(repo: Repository, ref: str) -> bytes:
    r = repo.resolve(ref)
    return b"".join(repo.iter_file(repo.lookup(repo.root_of(r.commit), r.path)))


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    """A repository ``r`` on the memory twin."""
    with memory_repository(tmp_path) as r:
        assert isinstance(r.store, MemoryObjectStore)
        r.create_repo("r")
        yield r


@pytest.fixture(params=["memory", "local"])
def any_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """A repository ``r`` on the memory twin, then on a local store in a home on disk."""
    if request.param == "memory":
        opened = memory_repository(tmp_path)
    else:
        opened = Repository.open(tmp_path / "home")
        assert isinstance(opened.store, LocalObjectStore)
    with opened as r:
        r.create_repo("r")
        yield r


def test_changeset_order_semantics(repo: Repository) -> None:
    cs = ChangeSet()
    cs.put("/a/b", file_entry(repo, b"1"))
    cs.delete("/a")
    cs.put("/a/c", file_entry(repo, b"2"))
    repo.commit("r", "master", cs)
    root = repo.root_of(repo.branch_head("r", "master"))
    assert set(repo.list_dir(repo.lookup(root, (b"a",)))) == {b"c"}


def test_sizes_and_counts_roll_up(repo: Repository) -> None:
    cs = ChangeSet()
    cs.put("/x/y/one", file_entry(repo, b"a" * 10))
    cs.put("/x/two", file_entry(repo, b"b" * 5))
    cs.put("/x/link", Entry(SYMLINK, 0o777, 0, 0, 1, 3, target=b"two"))
    head = repo.commit("r", "master", cs)
    c = repo.read_commit(head)
    assert (c.size, c.nfiles) == (15, 2)
    cs = ChangeSet()
    cs.delete("/x/y")
    c = repo.read_commit(repo.commit("r", "master", cs))
    assert (c.size, c.nfiles) == (5, 1)


def test_put_under_a_file_is_refused(repo: Repository) -> None:
    cs = ChangeSet()
    cs.put("/f", file_entry(repo, b"x"))
    repo.commit("r", "master", cs)
    cs = ChangeSet()
    cs.put("/f/g", file_entry(repo, b"y"))
    with pytest.raises(InvalidInput, match="not a directory"):
        repo.commit("r", "master", cs)


def test_commit_touches_only_changed_directories(repo: Repository) -> None:
    cs = ChangeSet()
    for d in range(20):
        for f in range(20):
            cs.put(f"/d{d}/f{f}", file_entry(repo, f"{d}-{f}".encode()))
    repo.commit("r", "master", cs)
    reads: list[bytes] = []
    original = repo.reader.read_tree

    def counting(loc):  # type: ignore[no-untyped-def]
        reads.append(loc.id)
        return original(loc)

    repo.reader.read_tree = counting  # type: ignore[method-assign]
    cs = ChangeSet()
    cs.put("/d7/f3", file_entry(repo, b"new"))
    repo.commit("r", "master", cs)
    assert len(reads) <= 2  # the root and /d7, not the 19 untouched directories
    assert read(repo, "r@master:/d7/f3") == b"new"
    assert read(repo, "r@master:/d8/f3") == b"8-3"


def test_stale_parent_raises_branch_moved_and_commits_nothing(repo: Repository) -> None:
    cs = ChangeSet()
    cs.put("/f", file_entry(repo, b"1"))
    first = repo.commit("r", "master", cs)
    cs2 = ChangeSet()
    cs2.put("/g", file_entry(repo, b"2"))
    second = repo.commit("r", "master", cs2)
    cs3 = ChangeSet()
    cs3.put("/h", file_entry(repo, b"3"))
    with pytest.raises(BranchMoved, match="moved"):
        repo.commit("r", "master", cs3, parent=first)
    assert repo.branch_head("r", "master") == second
    # rebase=True re-applies on the new head instead.
    repo.commit("r", "master", cs3, parent=first, rebase=True)
    assert read(repo, "r@master:/g") == b"2" and read(repo, "r@master:/h") == b"3"


def _writer(home: str, who: str, n: int) -> None:
    with Repository.open(home) as repo:
        for i in range(n):
            cs = ChangeSet()
            cs.put(f"/{who}/{i}", Entry(FILE, 0o644, 0, 0, i, 0, nfiles=1))
            repo.commit("r", "master", cs, f"{who} {i}", rebase=True)


def test_concurrent_commits_from_two_processes_lose_none(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    with Repository.open(home) as repo:
        repo.create_repo("r")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(home, w, 40)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Repository.open(home) as repo:
        head = repo.branch_head("r", "master")
        assert sum(1 for _ in repo.log(head)) == 80
        root = repo.root_of(head)
        assert root.nfiles == 80


def test_small_files_are_packed(any_repo: Repository) -> None:
    repo = any_repo
    cs = ChangeSet()
    with repo.writer() as w:
        for i in range(500):
            data = os.urandom(100)
            chunks = [ManifestChunk(w.put_chunk(data), len(data))]
            cs.put(f"/s/{i}", Entry(FILE, 0o644, 0, 0, 1, 100, w.put_manifest(chunks), nfiles=1))
        repo.commit("r", "master", cs, writer=w)
    blobs = list(repo.store.list())
    assert len(blobs) < 520 // 10  # hundreds of tiny files, a handful of blobs


def test_empty_file_and_empty_dir(repo: Repository) -> None:
    cs = ChangeSet()
    cs.put("/empty", file_entry(repo, b""))
    cs.mkdir("/dir", Entry(DIR, 0o700, 0, 0, 5))
    repo.commit("r", "master", cs)
    assert read(repo, "r@master:/empty") == b""
    root = repo.root_of(repo.branch_head("r", "master"))
    d = repo.lookup(root, (b"dir",))
    assert d.is_dir and d.mode == 0o700 and repo.list_dir(d) == {}


def test_shared_store_revalidates_old_dedup_hits(
    any_repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared store another machine's gc may delete an object our index still lists; an
    old dedup hit is re-checked, and a vanished object is written again, never referenced."""
    import pfsfs.objects

    repo = any_repo
    data = os.urandom(600 * 1024)
    cs = ChangeSet()
    cs.put("/f", file_entry(repo, data))
    repo.commit("r", "master", cs)
    for blob in repo.store.list("chunk/"):
        repo.store.delete(blob.key)  # "another machine's gc"
    shared = dataclasses.replace(repo.store.properties, shared=True)
    monkeypatch.setattr(repo.store, "properties", shared)
    monkeypatch.setattr(pfsfs.objects, "REVALIDATE_AFTER", -1.0)
    cs = ChangeSet()
    cs.put("/g", file_entry(repo, data))
    repo.commit("r", "master", cs)
    assert read(repo, "r@master:/g") == data
