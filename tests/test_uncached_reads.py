"""Chunks read past the page cache (``directio.read_uncached``, ``ObjectReader.read_chunk``).

A cold read through a mount keeps the bytes in the mount's own page cache; the store's copy of
them is not cached a second time. What the page cache holds already is read from there. The
bytes are verified like every read: a damaged chunk is a corruption error, never wrong data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pfsfs.errors import Corruption, NotFound
from pfsfs.ids import hash_bytes
from pfsfs.model import Locator, blob_key
from pfsfs.objects import ObjectReader
from pfsfs.store.directio import read_uncached, reads_uncached
from pfsfs.store.local import LocalObjectStore

from .fusehelpers import Env, env, no_leftovers
from .pagecache import DIRECT_IO_FILESYSTEMS, filesystem_of, resident_bytes

__all__ = ["env", "no_leftovers"]

MiB = 1 << 20


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """A directory on a filesystem that takes O_DIRECT, on a kernel with ``cachestat``."""
    if not reads_uncached():
        pytest.skip("this kernel has no cachestat (Linux 6.5) or no O_DIRECT")
    kind = filesystem_of(tmp_path)
    if kind not in DIRECT_IO_FILESYSTEMS:
        pytest.skip(f"{tmp_path} is on {kind}, not a disk filesystem that takes O_DIRECT")
    return tmp_path


def evict(path: Path) -> None:
    """Write back ``path`` and drop it from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_cold_range_is_read_past_the_page_cache_and_a_warm_one_is_not(disk_dir: Path) -> None:
    path = disk_dir / "blob"
    data = os.urandom(3 * MiB + 123)
    path.write_bytes(data)
    evict(path)
    for offset, length in [(0, len(data)), (5, 1000), (4096 * 3 + 7, 2 * MiB), (MiB, 3)]:
        got = read_uncached(path, offset, length)
        assert got is not None and bytes(got) == data[offset : offset + length]
    assert resident_bytes(path) == 0
    tail = read_uncached(path, len(data) - 10, 100)  # past the end: what there is
    assert tail is not None and bytes(tail) == data[-10:]
    path.read_bytes()  # now the page cache holds it: read from there
    assert read_uncached(path, 0, len(data)) is None


def test_a_store_reads_verified_chunks_past_the_page_cache(disk_dir: Path) -> None:
    store = LocalObjectStore(disk_dir / "store", background_writes=False)
    reader = ObjectReader(store, index=None)  # type: ignore[arg-type]
    good, bad = os.urandom(MiB + 1), os.urandom(MiB + 2)
    locs = [Locator(hash_bytes(d), length=len(d)) for d in (good, bad)]
    for loc, d in zip(locs, (good, bad), strict=True):
        store.put(blob_key(loc), d)
    store.flush()
    paths = [store._path(blob_key(loc)) for loc in locs]
    with open(paths[1], "r+b") as f:  # one bit of the second one flips on the disk
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    for p in paths:
        evict(p)
    assert bytes(reader.read_chunk(locs[0])) == good
    assert resident_bytes(paths[0]) == 0
    with pytest.raises(Corruption):
        reader.read_chunk(locs[1])
    missing = Locator(b"\x01" * 32, length=10)
    with pytest.raises(Corruption):  # as read_raw says it: missing from the store
        reader.read_chunk(missing)
    with pytest.raises(NotFound):
        store.get_uncached(blob_key(missing), 0, 10)


def test_a_cold_read_through_a_mount_leaves_the_store_out_of_the_page_cache(
    env: Env, disk_dir: Path
) -> None:
    src = env.root / "src"
    src.mkdir()
    files = {f"f{i}": os.urandom(3 * MiB + i) for i in range(4)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    env.run("repo", "create", "data")
    env.run("put", "-r", "-f", f"{src}/", "data@master")
    chunks = [p for p in (env.home / "store" / "chunk").rglob("*") if p.is_file()]
    assert chunks
    for p in chunks:
        evict(p)
    with env.mounted("data@master", "mnt", "--read-only") as mp:
        for name, data in files.items():
            assert (mp / name).read_bytes() == data
    assert sum(resident_bytes(p) for p in chunks) == 0


def test_only_a_store_on_a_disk_filesystem_is_read_past_the_page_cache(disk_dir: Path) -> None:
    """tmpfs (its pages are the data), NFS, FUSE: the mount reads through the page cache."""
    import tempfile

    from pfsfsd.worker import reads_past_page_cache

    assert reads_past_page_cache(LocalObjectStore(disk_dir / "store"))
    if filesystem_of(Path("/dev/shm")) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs here")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        assert not reads_past_page_cache(LocalObjectStore(Path(d) / "store"))
