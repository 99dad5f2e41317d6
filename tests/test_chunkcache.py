"""The mount's chunk cache: what a sequential reader makes a remote store fetch ahead.

``MemoryReader`` stands in for ``ObjectReader``: it serves chunks from memory and records the
store hints (``prefetch``) the cache gives. The S3 end of the same path is tested for real in
``test_s3_cache.py`` and ``test_mount_s3.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import pytest
from pfsfsd.chunkcache import OPEN_AHEAD_UNCACHED, STORE_READ_AHEAD, ChunkCache
from pfsfsd.tree.content import Content
from pfsfsd.tree.nodes import Node

from pfsfs.ids import hash_bytes
from pfsfs.model import DIR, FILE, Entry, Locator, ManifestChunk
from pfsfs.store import directio

CHUNK = 4096
NCHUNKS = 300


class MemoryReader:
    def __init__(self, chunks: list[bytes]) -> None:
        self.blobs = {hash_bytes(c): c for c in chunks}
        self.manifest = [
            ManifestChunk(Locator(hash_bytes(c), length=len(c)), len(c)) for c in chunks
        ]
        self.hinted: list[list[bytes]] = []  # chunk ids, one list per prefetch call

    def read_manifest(self, loc: Locator) -> list[ManifestChunk]:
        return self.manifest

    def read_raw(self, loc: Locator) -> bytes:
        return self.blobs[loc.id]

    def read_chunk(self, loc: Locator) -> bytes:
        return self.blobs[loc.id]

    def prefetch(self, locs: Iterable[Locator]) -> None:
        self.hinted.append([loc.id for loc in locs])


class LocalStoreHints:
    """A local store's kernel read-ahead hook (``read_ahead_ranges``), recorded."""

    def __init__(self) -> None:
        self.ranges: list[list[tuple[str, int, int]]] = []

    def read_ahead_ranges(self, ranges: Iterable[tuple[str, int, int]]) -> None:
        self.ranges.append(list(ranges))


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Hints past the first go through the cache's worker threads: wait for them."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def make() -> tuple[ChunkCache, MemoryReader, bytes]:
    chunks = [os.urandom(CHUNK) for _ in range(NCHUNKS)]
    reader = MemoryReader(chunks)
    cache = ChunkCache(reader)  # type: ignore[arg-type]
    return cache, reader, b"".join(chunks)


def test_a_sequential_reader_keeps_the_store_hinted_ahead_in_few_calls() -> None:
    cache, reader, data = make()
    manifest = Locator(b"m" * 32)
    ids = [c.loc.id for c in reader.manifest]
    try:
        for off in range(0, len(data), CHUNK):
            assert bytes(cache.read(manifest, off, off + CHUNK)) == data[off : off + CHUNK]
            i = off // CHUNK
            if i == 0:
                continue  # the first read is not known to be sequential yet
            # At every read, at least half a window ahead (or up to the end) is hinted...
            ahead = set(ids[i : min(i + STORE_READ_AHEAD // 2, NCHUNKS)])
            told = eventually(lambda a=ahead: a <= {h for call in reader.hinted for h in call})
            assert told, f"read of chunk {i}: the store was not told ahead"
        # ...by one call per half window, not one per read.
        assert len(reader.hinted) <= NCHUNKS // (STORE_READ_AHEAD // 2) + 2
    finally:
        cache.close()


def test_a_seek_backwards_hints_from_the_new_place() -> None:
    cache, reader, data = make()
    manifest = Locator(b"m" * 32)
    ids = [c.loc.id for c in reader.manifest]
    try:
        for off in range(100 * CHUNK, 110 * CHUNK, CHUNK):
            cache.read(manifest, off, off + CHUNK)
        calls = len(reader.hinted)
        # Back within the sequential slack (a re-read of a few MiB earlier): hinted again
        # from there, since the window last hinted starts after it.
        assert bytes(cache.read(manifest, 50 * CHUNK, 51 * CHUNK)) == data[50 * CHUNK : 51 * CHUNK]
        assert eventually(lambda: len(reader.hinted) == calls + 1)
        assert reader.hinted[-1][:STORE_READ_AHEAD] == ids[50 : 50 + STORE_READ_AHEAD]
    finally:
        cache.close()


def local() -> tuple[ChunkCache, MemoryReader, bytes]:
    """``make`` with a local store's read-ahead hook."""
    chunks = [os.urandom(CHUNK) for _ in range(NCHUNKS)]
    reader = MemoryReader(chunks)
    reader.store = LocalStoreHints()  # type: ignore[attr-defined]
    return ChunkCache(reader), reader, b"".join(chunks)  # type: ignore[arg-type]


def test_opening_a_file_fetches_its_first_chunks_ahead() -> None:
    cache, reader, data = local()
    manifest = Locator(b"m" * 32)
    cache.start(manifest)
    first = reader.manifest[0].loc.id
    assert eventually(lambda: cache._pending[first].done())
    # the first read finds its chunk fetched (no miss on the mount's thread) and counts as
    # sequential: the chunks after it are fetched ahead at once
    hints = reader.store.ranges  # type: ignore[attr-defined]
    assert eventually(lambda: len(hints) == 1)  # the first chunk files
    assert len(hints[0]) == cache.read_ahead
    assert bytes(cache.read(manifest, 0, CHUNK)) == data[:CHUNK]
    assert cache.misses == 0
    assert reader.manifest[2].loc.id in cache._pending or reader.manifest[2].loc.id in (
        cache._chunks
    )
    cache.close()


def test_opening_many_files_keeps_the_read_aheads_bounded() -> None:
    chunks = [os.urandom(CHUNK) for _ in range(NCHUNKS)]
    reader = MemoryReader(chunks)
    reader.store = LocalStoreHints()  # type: ignore[attr-defined]
    cache = ChunkCache(reader, read_ahead=2)  # type: ignore[arg-type]
    for i in range(NCHUNKS):  # one file per chunk, opened and never read
        one = reader.manifest[i : i + 1]
        reader.read_manifest = lambda loc, one=one: one  # type: ignore[method-assign]
        cache.start(Locator(bytes([i % 256]) * 31 + bytes([i // 256])))
    assert len(cache._pending) <= 4 * cache.read_ahead
    cache.close()


class FilesReader(MemoryReader):
    """``MemoryReader`` with one manifest per file (by the manifest locator's id)."""

    def __init__(self, files: dict[bytes, list[bytes]]) -> None:
        super().__init__([c for chunks in files.values() for c in chunks])
        self.manifests = {
            mid: [ManifestChunk(Locator(hash_bytes(c), length=len(c)), len(c)) for c in chunks]
            for mid, chunks in files.items()
        }
        self.store = LocalStoreHints()

    def read_manifest(self, loc: Locator) -> list[ManifestChunk]:
        return self.manifests[loc.id]


class Nodes:
    """The inode table's part ``Content`` reads committed files through."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}


def test_reading_a_file_to_its_end_fetches_the_next_file_in_its_directory() -> None:
    big = 2 << 20  # a file of 2 MiB: 512 chunks of 4 KiB
    files = {bytes([n]) * 32: [os.urandom(CHUNK) for _ in range(big // CHUNK)] for n in (1, 2)}
    reader = FilesReader(files)
    cache = ChunkCache(reader, read_ahead=4)  # type: ignore[arg-type]
    table = Nodes()
    root = Node(1, DIR, 0)
    root.children = {}
    table.nodes[1] = root
    for ino, (name, mid) in enumerate(zip((b"a", b"b"), files, strict=True), start=2):
        node = Node(ino, FILE, 0)
        node.size, node.parent, node.name = big, 1, name
        node.base = Entry(FILE, 0o644, 0, 0, 0, big, Locator(mid))
        table.nodes[ino] = node
        root.children[name] = ino
    content = Content(table, None, None, cache, None)  # type: ignore[arg-type]
    a, b = table.nodes[2], table.nodes[3]
    content.start_reading(a)
    got = b"".join(bytes(content.read(a, off, 1 << 20)) for off in range(0, big, 1 << 20))
    assert got == b"".join(files[bytes([1]) * 32])
    # the next file's first chunk is being fetched before anything opened it ...
    first_b = reader.manifests[bytes([2]) * 32][0].loc.id
    assert first_b in cache._pending or first_b in cache._chunks
    # ... and its first read finds it there: no fetch on the mount's thread
    misses = cache.misses
    content.start_reading(b)
    assert bytes(content.read(b, 0, CHUNK)) == files[bytes([2]) * 32][0]
    assert cache.misses == misses
    cache.close()


def test_chunks_read_past_the_page_cache_are_fetched_ahead_instead_of_hinted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kernel read-ahead hints would only fill the page cache those reads skip: none are
    given; opening a file fetches more of its chunks instead, and a sequential reader still
    finds them fetched ahead. Once the store finds it cannot read so, the hints are back."""
    chunks = [os.urandom(CHUNK) for _ in range(NCHUNKS)]
    reader = MemoryReader(chunks)
    store = LocalStoreHints()
    reader.store = store  # type: ignore[attr-defined]
    monkeypatch.setattr(directio._uncached, "usable", True)  # as where cachestat works
    cache = ChunkCache(reader, read_ahead=16, uncached_reads=True)  # type: ignore[arg-type]
    data = b"".join(chunks)
    manifest = Locator(b"m" * 32)
    cache.start(manifest)
    ids = [c.loc.id for c in reader.manifest]
    assert eventually(lambda: all(cache._pending[i].done() for i in ids[:OPEN_AHEAD_UNCACHED]))
    assert ids[OPEN_AHEAD_UNCACHED] not in cache._pending
    for off in range(0, 40 * CHUNK, CHUNK):
        assert bytes(cache.read(manifest, off, off + CHUNK)) == data[off : off + CHUNK]
    assert cache.misses == 0
    assert store.ranges == []
    monkeypatch.setattr(directio._uncached, "usable", False)  # an O_DIRECT read was refused
    other = Locator(b"n" * 32)
    cache.start(other)
    assert eventually(lambda: len(store.ranges) == 1)
    cache.close()


def test_a_file_read_to_its_end_and_opened_again_is_fetched_ahead_again() -> None:
    """An epoch over data larger than memory: the kernel evicted the file's pages, so the
    next pass reads it through the cache again, and must find its first chunks fetched at open
    as the first pass did (it waited for each one on the mount's thread). A file opened a
    second time while it is being read is not restarted."""
    chunks = [os.urandom(CHUNK) for _ in range(64)]
    reader = MemoryReader(chunks)
    reader.store = LocalStoreHints()  # type: ignore[attr-defined]
    cache = ChunkCache(reader, max_bytes=8 * CHUNK, read_ahead=4)  # type: ignore[arg-type]
    data, manifest = b"".join(chunks), Locator(b"m" * 32)
    first = reader.manifest[0].loc.id
    for _ in range(2):  # two passes; the cache holds too little to keep the first chunk
        cache.start(manifest)
        assert eventually(lambda: first in cache._pending and cache._pending[first].done())
        for off in range(0, len(data), CHUNK):
            assert bytes(cache.read(manifest, off, off + CHUNK)) == data[off : off + CHUNK]
            if off == 8 * CHUNK:
                cache.start(manifest)  # another open meanwhile: not a new pass
                assert first not in cache._pending
    assert cache.misses == 0
    cache.close()
