"""Buffers made without work under the GIL (``pfsfs.buffers``), and the reads built from them.

``concat`` joins a mount's reads that straddle chunks, from chunks read into ``bytearray``s (a
local store's uncached reads) or ``bytes`` (cached ones). Every test checks the bytes against
the same operation done the plain way (``b"".join``, slicing the file).
"""

from __future__ import annotations

import os
import random

import pytest

from pfsfs.buffers import CONCAT_MIN, concat, uninitialized

from .test_chunkcache import MemoryReader


def test_uninitialized_buffers_have_the_size_asked_for_and_can_be_written() -> None:
    for size in (0, 1, 4095, 1 << 20):
        buf = uninitialized(size)
        assert type(buf) is bytearray and len(buf) == size
        buf[:] = b"x" * size
        assert buf == b"x" * size
    assert uninitialized(-1) == bytearray()


@pytest.mark.parametrize("seed", range(20))
def test_concat_equals_join_for_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    data = os.urandom(rng.randrange(1, 3 << 20))
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 6)))
    bounds = [0, *cuts, len(data)]
    writable = memoryview(bytearray(data))
    readonly = memoryview(data)
    mixed = rng.random() < 0.5
    parts = [
        (readonly if mixed and k % 2 else writable)[a:b]
        for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
    got = concat(parts)
    assert got == data
    # from CONCAT_MIN bytes on: copied outside the GIL into a new buffer, read-only parts or not
    assert type(got) is (bytearray if len(data) >= CONCAT_MIN else bytes)


def test_concat_of_nothing_is_empty_and_any_buffer_is_a_part() -> None:
    assert concat([]) == b""
    assert concat([memoryview(bytearray(5))[2:2]]) == b""
    assert concat([b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3]]) == b"abcdef"
    wide = memoryview(bytearray(range(8))).cast("I")  # items of 4 bytes: all 8 bytes count
    assert concat([wide, b"!"]) == bytes(range(8)) + b"!"
    big = os.urandom(CONCAT_MIN)
    got = concat([memoryview(bytearray(big)).cast("I"), b"!"])
    assert type(got) is bytearray and got == big + b"!"


class BytearrayReader(MemoryReader):
    """Chunks handed out as views of ``bytearray``s, as ``read_uncached`` hands them."""

    def read_chunk(self, loc):  # type: ignore[no-untyped-def,override]
        return memoryview(bytearray(self.blobs[loc.id]))

    read_raw = read_chunk

    def joined_view(self, *args):  # type: ignore[no-untyped-def]
        return None  # a local store has no read cache to hand out views of


@pytest.mark.parametrize("reader_class", [BytearrayReader, MemoryReader])
@pytest.mark.parametrize("seed", range(5))
def test_reads_straddling_chunks_return_the_files_bytes(seed: int, reader_class: type) -> None:
    from pfsfsd.chunkcache import ChunkCache

    rng = random.Random(seed)
    chunks = [os.urandom(rng.randrange(1, 70_000)) for _ in range(40)]
    reader = reader_class(chunks)
    cache = ChunkCache(reader, read_ahead=4, read_ahead_workers=2)  # type: ignore[arg-type]
    data = b"".join(chunks)
    loc = reader.manifest[0].loc  # any locator: the manifest is the reader's one list
    try:
        for _ in range(200):
            offset = rng.randrange(len(data))
            end = min(len(data), offset + rng.choice((1, 4096, 131072, 1 << 20)))
            assert bytes(cache.read(loc, offset, end)) == data[offset:end]
        pos = 0
        while pos < len(data):  # and a sequential read, which reads ahead
            assert bytes(cache.read(loc, pos, pos + 131072)) == data[pos : pos + 131072]
            pos += 131072
    finally:
        cache.close()
