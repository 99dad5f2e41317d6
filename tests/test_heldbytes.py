"""Memory bounds of caches that keep views: each buffer counted once, for as long as it is held.

A 4 KiB view of a 32 MiB span keeps the whole span alive; the read caches (the S3 store's
block cache and the mount's chunk cache) must count what they keep alive, not view lengths.
"""

from __future__ import annotations

import os

from pfsfsd.chunkcache import ChunkCache

from pfsfs.heldbytes import HeldBytes, owner_of
from pfsfs.ids import hash_bytes
from pfsfs.model import Locator, ManifestChunk


def test_views_of_one_buffer_count_it_once_until_the_last_goes() -> None:
    span = os.urandom(1 << 20)
    a, b = memoryview(span)[:10], memoryview(span)[100:200]
    held = HeldBytes()
    held.add(owner_of(a))
    held.add(owner_of(b))
    assert held.total == len(span)
    held.remove(owner_of(a))
    assert held.total == len(span)  # b still keeps the span alive
    held.remove(owner_of(b))
    assert held.total == 0
    blob = os.urandom(500)
    held.add(owner_of(blob))
    assert held.total == 500


class ViewReader:
    """Chunks of 4 KiB, each a view into a 1 MiB buffer of its own (as if each had come in a
    different ranged GET)."""

    def __init__(self, n: int) -> None:
        self.buffers = [os.urandom(1 << 20) for _ in range(n)]
        self.chunks = {}
        for buf in self.buffers:
            view = memoryview(buf)[:4096]
            self.chunks[hash_bytes(view)] = view
        self.manifest = [ManifestChunk(Locator(cid, length=4096), 4096) for cid in self.chunks]

    def read_manifest(self, loc: Locator) -> list[ManifestChunk]:
        return self.manifest

    def read_raw(self, loc: Locator) -> memoryview:
        return self.chunks[loc.id]

    def read_chunk(self, loc: Locator) -> memoryview:
        return self.chunks[loc.id]

    def joined_view(self, *args: object) -> None:
        return None

    def prefetch(self, locs: object) -> None:
        pass


def test_the_chunk_cache_bounds_the_buffers_its_views_keep_alive() -> None:
    reader = ViewReader(64)
    cache = ChunkCache(reader, max_bytes=8 << 20, read_ahead=0)  # type: ignore[arg-type]
    manifest = Locator(b"m" * 32)
    try:
        for off in range(0, 64 * 4096, 4096):
            cache.read(manifest, off, off + 4096)
        # 64 chunks of 4 KiB are 256 KiB of views but pin 64 MiB of buffers: the cache keeps
        # only as many as fit in its 8 MiB.
        assert len(cache._chunks) == 8
        assert cache._held.total <= 8 << 20
    finally:
        cache.close()
