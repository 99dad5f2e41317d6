"""The put stat cache never gives a stale commit; the new read path chunks as before.

A re-put of an unchanged tree skips reading the files whose (size, mtime ns, ctime ns, inode,
device) match what a put of them recorded, as long as the branch head still holds that
content. These tests check what a user gets back (``get`` reads the bytes of the commit) after
each kind of change a stat cache could miss: an edit that keeps size and mtime (``touch -d``
back to the old time: only ctime moves), edits in the same second as the put that recorded
them (the racy-git rule), a branch that no longer holds the content, gc in between, a branch
that never held it, and ``--no-cache`` against a cache record that lies. Library-level tests
check which files were read (``PutPlan`` items the cache answered) and the chunk boundaries of
``transfer.cut_fd`` against ``Chunker.cut_file``.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from pfsfs import transfer
from pfsfs.chunking import Chunker, ChunkParams
from pfsfs.index import Index
from pfsfs.repository import Repository
from pfsfs.transfer import PutCache, cut_fd, head_lookup, plan_put

from .cli import run

MiB = 1 << 20
#: Long enough that files written before it are out of the racy window of a put after it.
SETTLE = transfer.RACY_NS / 1e9 + 0.2


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _put(home: Path, src: Path, *extra: str, branch: str = "master") -> None:
    run(home, "put", f"data@{branch}:/t", "-r", "-f", str(src), *extra)


def _got(home: Path, tmp: Path, ref: str = "data@master:/t") -> dict[str, bytes]:
    out = tmp / f"got-{time.monotonic_ns()}"
    run(home, "get", ref, "-o", str(out))
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _same_size_edit(path: Path) -> None:
    """New content, same size, and mtime set back to what it was (only ctime changes)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    return home


def _reused(home: Path, src: Path, branch: str = "master") -> set[str]:
    """Names under ``src`` a put to ``branch`` would take from the stat cache, unread."""
    with Repository.open(home) as repository:
        head = head_lookup(repository, "data", branch)
        cache = PutCache(repository.index, "data", branch, head)
        plan = plan_put(src, (b"t",), recursive=True, cache=cache)
    return {
        os.fsdecode(os.path.relpath(i.path, os.fsencode(src)))
        for i in plan.items
        if i.reuse is not None
    }


def test_reput_reads_only_what_changed(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {f"d{i % 3}/f{i}": os.urandom(1000 + i * 7919) for i in range(12)}
    _tree(src, files)
    time.sleep(SETTLE)
    _put(home, src)
    assert _reused(home, src) == set(files)
    (src / "d1/f4").write_bytes(b"changed")
    files["d1/f4"] = b"changed"
    assert _reused(home, src) == set(files) - {"d1/f4"}
    _put(home, src)
    assert _got(home, tmp_path) == files


def test_edit_keeping_size_and_mtime_is_read(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, {"a": os.urandom(5000), "b": os.urandom(3 * MiB)})
    time.sleep(SETTLE)
    _put(home, src)
    _same_size_edit(src / "a")
    _same_size_edit(src / "b")
    assert _reused(home, src) == set()
    _put(home, src)
    assert _got(home, tmp_path) == {"a": (src / "a").read_bytes(), "b": (src / "b").read_bytes()}


def test_same_second_edits_are_read(home: Path, tmp_path: Path) -> None:
    """Files written just before a put are not cached (their stat could repeat after an edit
    in the same tick), so a same-size edit with the same mtime right after is still seen."""
    src = tmp_path / "src"
    _tree(src, {"a": b"x" * 4096})
    _put(home, src)
    for round_ in range(3):
        _same_size_edit(src / "a")
        assert _reused(home, src) == set()
        _put(home, src)
        assert _got(home, tmp_path) == {"a": (src / "a").read_bytes()}, round_


def test_stat_cache_needs_the_content_in_the_head(home: Path, tmp_path: Path) -> None:
    """A record is only used while the branch head holds its content: after the file left
    the branch and gc ran, or on a branch that never had it, the file is read again."""
    src = tmp_path / "src"
    files = {"a": os.urandom(2 * MiB), "b": os.urandom(100)}
    _tree(src, files)
    time.sleep(SETTLE)
    _put(home, src)
    (tmp_path / "empty").mkdir()
    run(home, "put", "data@master:/t", "-r", "-f", str(tmp_path / "empty"))
    assert _reused(home, src) == set()  # the head holds other content at /t
    run(home, "branch", "delete", "data@master")
    run(home, "gc", "--grace", "0")  # the content is gone from the store now
    assert _reused(home, src) == set()
    _put(home, src)
    assert _got(home, tmp_path) == files
    assert _reused(home, src, branch="dev") == set()
    _put(home, src, branch="dev")
    assert _got(home, tmp_path, "data@dev:/t") == files
    run(home, "fsck")


def test_no_cache_reads_every_file(home: Path, tmp_path: Path) -> None:
    """A record that lies (a filesystem whose stat did not change on an edit, forged here)
    is believed without --no-cache and ignored with it."""
    src = tmp_path / "src"
    _tree(src, {"a": b"old content"})
    time.sleep(SETTLE)
    _put(home, src)
    (src / "a").write_bytes(b"new content")
    st = (src / "a").stat()
    index = Index(home / "index")
    try:
        scope = b"data\0master\0"
        path = os.path.abspath(os.fsencode(src / "a"))
        (record,) = index.put_cache_load(scope, path).values()
        forged = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, record[5]]
        index.put_cache_store(scope, path, {path: forged})
    finally:
        index.close()
    _put(home, src)
    assert _got(home, tmp_path) == {"a": b"old content"}  # what the forged record said
    _put(home, src, "--no-cache")
    assert _got(home, tmp_path) == {"a": b"new content"}


def test_records_of_removed_files_are_dropped(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, {"keep": b"k" * 100, "gone": b"g" * 100, "sub/x": b"x"})
    time.sleep(SETTLE)
    _put(home, src)
    (src / "gone").unlink()
    _put(home, src)
    index = Index(home / "index")
    try:
        names = index.put_cache_load(b"data\0master\0", os.path.abspath(os.fsencode(src)))
    finally:
        index.close()
    base = os.path.abspath(os.fsencode(src))
    assert sorted(names) == [base + b"/keep", base + b"/sub/x"]


def test_hard_links_survive_a_cached_reput(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, {"a": os.urandom(300_000)})
    os.link(src / "a", src / "b")
    time.sleep(SETTLE)
    _put(home, src)
    _put(home, src)
    out = tmp_path / "out"
    run(home, "get", "data@master:/t", "-o", str(out))
    assert (out / "a").stat().st_ino == (out / "b").stat().st_ino
    assert (out / "a").read_bytes() == (src / "a").read_bytes()


@pytest.mark.parametrize("window", [1 << 20, 5 * MiB + 12345, 16 * MiB, 64 * MiB])
def test_cut_fd_cuts_like_cut_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """The windowed reader gives the chunk boundaries of the mmap chunker (dedup with older
    commits and with what mounts store depends on it), also across window ends."""
    monkeypatch.setattr(transfer, "READ_WINDOW", window)
    chunker = Chunker(ChunkParams())
    rng = random.Random(window)
    sizes = [0, 1, chunker.params.min_size, chunker.params.min_size + 1, 9 * MiB + 77]
    sizes += [rng.randrange(1, 12 * MiB) for _ in range(4)]
    for size in sizes:
        path = tmp_path / f"f{size}"
        data = rng.randbytes(size // 2) + bytes(size - size // 2)  # random, then zeros
        path.write_bytes(data)
        want = [bytes(c) for c in chunker.cut_file(path)]
        fd = os.open(path, os.O_RDONLY)
        try:
            got = [bytes(c) for c in cut_fd(fd, chunker, size)]
        finally:
            os.close(fd)
        assert [len(c) for c in got] == [len(c) for c in want], size
        assert b"".join(got) == data


def _records(home: Path, src: Path) -> set[bytes]:
    index = Index(home / "index")
    try:
        base = os.path.abspath(os.fsencode(src))
        return {p[len(base) + 1 :] for p in index.put_cache_load(b"data\0master\0", base)}
    finally:
        index.close()


def test_racy_files_are_not_recorded(home: Path, tmp_path: Path) -> None:
    """The racy-git rule: a file changed within the timestamp granularity of the scan start
    gets no record (a same-tick edit would leave its stat as recorded); once settled, it does."""
    src = tmp_path / "src"
    _tree(src, {"old": b"o" * 10})
    time.sleep(SETTLE)
    (src / "fresh").write_bytes(b"f" * 10)
    _put(home, src)
    assert _records(home, src) == {b"old"}
    time.sleep(SETTLE)
    _put(home, src)
    assert _records(home, src) == {b"old", b"fresh"}


def test_get_of_a_tree_with_a_corrupt_chunk_writes_no_wrong_bytes(
    home: Path, tmp_path: Path
) -> None:
    """``get`` reads chunks ahead in threads and verifies them as it writes: a corrupt chunk
    stops it with the one corruption error, the file it belongs to never appears, and the
    files written before it are whole (files after it may be written meanwhile by another
    stream: whole too, and no temp file is left)."""
    src = tmp_path / "src"
    files = {"a": os.urandom(2 * MiB), "b": os.urandom(3 * MiB), "c": os.urandom(10)}
    _tree(src, files)
    _put(home, src)
    with Repository.open(home) as repository:
        root = repository.root_of(repository.branch_head("data", "master"))
        entry = repository.lookup(root, (b"t", b"b"))
        loc = repository.manifest(entry)[1].loc
    assert not loc.pack  # a chunk blob of its own
    blob = next((home / "store").rglob(loc.hex))
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = run(home, "get", "data@master:/t", "-o", str(out), check=False)
    assert proc.returncode == 6
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0], err
    assert (out / "a").read_bytes() == files["a"]
    assert not (out / "b").exists()
    names = sorted(p.name for p in out.iterdir())
    assert names in (["a"], ["a", "c"]), names
    if "c" in names:
        assert (out / "c").read_bytes() == files["c"]


def test_small_file_read_cuts_like_cut_file(tmp_path: Path) -> None:
    """The small-file path (one read of the size ``lstat`` gave) also chunks a file that grew
    since, as ``Chunker.cut_file`` does."""
    chunker = Chunker(ChunkParams())
    for size, grown in [(0, 0), (10, 0), (10, 5), (1000, 3 * MiB), (100, 200_000)]:
        path = tmp_path / f"s{size}-{grown}"
        data = os.urandom(size + grown)
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = [bytes(c) for c in transfer._small_file(fd, size, chunker)]
        finally:
            os.close(fd)
        assert [len(c) for c in got] == [len(bytes(c)) for c in chunker.cut_file(path)]
        assert b"".join(got) == data


def test_records_of_a_sibling_with_the_same_prefix_stay(home: Path, tmp_path: Path) -> None:
    """Records are replaced under the source path only: ``src2`` is not under ``src``."""
    src, src2 = tmp_path / "src", tmp_path / "src2"
    _tree(src, {"a": b"a" * 10})
    _tree(src2, {"b": b"b" * 10})
    time.sleep(SETTLE)
    run(home, "put", "data@master:/two", "-r", "-f", str(src2))
    _put(home, src)
    (src / "a").unlink()
    _put(home, src)
    assert _records(home, src2) == {b"b"}
    assert _records(home, src) == set()


@pytest.mark.parametrize("count", [3, 40])  # fsync each / one syncfs for many
def test_local_store_names_blobs_only_at_the_barrier(tmp_path: Path, count: int) -> None:
    """Staged blobs are read back by the writing store, invisible to another one (another
    process) until ``flush``, then there under their names; a store closed without a flush
    leaves nothing behind (the session never referenced them)."""
    from pfsfs.store.local import LocalObjectStore

    writer, other = LocalObjectStore(tmp_path / "s"), LocalObjectStore(tmp_path / "s")
    blobs = {f"chunk/{i:064x}": os.urandom(300_000 if i % 2 else 100) for i in range(count)}
    try:
        for key, data in blobs.items():
            writer.put(key, data)
        for key, data in blobs.items():
            assert writer.get(key) == data and writer.exists(key)
            assert not other.exists(key)
        assert {i.key for i in writer.list("chunk/")} == set(blobs)
        writer.flush()
        for key, data in blobs.items():
            assert other.get(key) == data
        assert not list((tmp_path / "s").rglob(".*.tmp"))
        writer.put("chunk/" + "f" * 64, b"never flushed")
    finally:
        writer.close()
        other.close()
    assert not list((tmp_path / "s").rglob(".*.tmp"))
    assert not LocalObjectStore(tmp_path / "s").exists("chunk/" + "f" * 64)
