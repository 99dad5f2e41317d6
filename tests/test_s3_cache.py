"""``CachingStore`` over S3 (moto over HTTP): what the cache promises beyond the store contract.

(The contract itself runs on the caching store in ``test_store_contract.py``,
``TestCachedS3Store``.) A metadata pack is fetched once, whole; a data pack only in blocks;
refs are never cached; a corrupted cache file is dropped and fetched again; eviction keeps
the cache under its size; background uploads are read back before they land and a failed one
surfaces at ``flush``.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsfs.errors import Corruption, NotFound, StoreError
from pfsfs.ids import hash_bytes
from pfsfs.model import DATA_PACK, META_PACK, Locator, new_pack_name, pack_key
from pfsfs.objects import ObjectReader
from pfsfs.store import cachewriter
from pfsfs.store.cache import DIGEST, CachingStore
from pfsfs.store.retry import RetryPolicy
from pfsfs.store.s3 import S3ObjectStore

from .pagecache import DIRECT_IO_FILESYSTEMS, filesystem_of, resident_bytes
from .s3server import MotoServer, free_port


def s3_store(server: MotoServer, **kwargs: object) -> S3ObjectStore:
    return S3ObjectStore(
        server.bucket,
        prefix=f"cache-{uuid.uuid4().hex[:12]}",
        endpoint_url=server.endpoint,
        **server.credentials,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def cached(s3_server: MotoServer, tmp_path: Path) -> Iterator[CachingStore]:
    store = CachingStore(s3_store(s3_server), tmp_path / "cache", 1 << 30, block_size=64 << 10)
    try:
        yield store
    finally:
        store.close()


def requests(store: CachingStore) -> int:
    inner = store.inner
    assert isinstance(inner, S3ObjectStore)
    return inner.requests.total


def meta_key() -> str:
    return pack_key(META_PACK + os.urandom(15))


def data_key() -> str:
    return pack_key(DATA_PACK + os.urandom(15))


def test_a_meta_pack_is_fetched_once_whole(cached: CachingStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    key = meta_key()
    cached.inner.put(key, data)  # written by another machine
    cached.inner.flush()
    before = requests(cached)
    for offset in range(0, len(data) - 1000, 997):
        assert cached.get(key, offset, 1000) == data[offset : offset + 1000]
    assert requests(cached) - before == 1
    # A second store on the same cache directory reads it from disk (once the background
    # write is done): no request at all.
    cached.drain_cache_writes()
    other = CachingStore(cached.inner, tmp_path / "cache")
    assert other.get(key, 5, 10) == data[5:15]
    assert requests(cached) - before == 1


def test_a_data_pack_is_fetched_in_blocks(cached: CachingStore) -> None:
    data = os.urandom(10 * cached.block_size + 123)
    key = data_key()
    cached.put(key, data)
    cached.flush()
    before = requests(cached)
    assert cached.get(key, 5, 10) == data[5:15]
    assert requests(cached) - before == 1
    assert cached.get(key, 100, 1000) == data[100:1100]  # same block: cached
    assert requests(cached) - before == 1
    straddle = 3 * cached.block_size - 50
    both = cached.get(key, straddle, 100)
    assert both == data[straddle : straddle + 100]  # two blocks...
    assert requests(cached) - before == 2  # ...in one ranged GET...
    assert isinstance(both, memoryview)  # ...and returned as a view of it, not a copy
    tail = len(data) - 100
    assert cached.get(key, tail, 100) == data[tail:]  # the short last block
    with pytest.raises(NotFound):
        cached.get(key, tail, 200)
    assert cached.disk_usage() < 6 * (cached.block_size + DIGEST)
    # Blocks already cached are not fetched again when a wider range covers them: blocks
    # 1..4 with 2 and 3 cached by the straddle cost one GET for 1 and one for 4.
    before = requests(cached)
    size = cached.block_size
    assert cached.get(key, size, 4 * size) == data[size : 5 * size]
    assert requests(cached) - before == 2


def test_prefetched_ranges_travel_in_few_requests(s3_server: MotoServer, tmp_path: Path) -> None:
    """A sequential reader hints the next chunks of a data pack: they arrive in spans of
    ``span_bytes`` (one GET each), and the reads that follow cost no request at all."""
    store = CachingStore(
        s3_store(s3_server), tmp_path / "c", block_size=64 << 10, span_bytes=256 << 10
    )
    try:
        data = os.urandom(20 * store.block_size + 999)
        key = data_key()
        store.inner.put(key, data)
        store.inner.flush()
        before = requests(store)
        ranges = [(key, off, 100_000) for off in range(0, len(data) - 100_000, 100_000)]
        store.prefetch_ranges(ranges)
        store.prefetch_ranges(ranges)  # asked twice: fetched once
        for _, off, length in ranges:
            assert store.get(key, off, length) == data[off : off + length]
        # 21 blocks in spans of 4: 6 GETs (the last ranges' blocks may be asked for while
        # the span before them is in flight: at most one more), not 21.
        assert requests(store) - before <= 7
    finally:
        store.close()


def test_a_sequential_reader_gets_each_prefetched_block_once(
    s3_server: MotoServer, tmp_path: Path
) -> None:
    """Blocks fetched ahead stay in memory until the reader gets to them, even with no disk
    cache to fall back on (here: unwritable) and a memory budget well under the file: reading
    a block must not push out the prefetched blocks not read yet, which would then be fetched
    again, one request each."""
    (tmp_path / "not-a-dir").write_bytes(b"")
    block = 64 << 10
    store = CachingStore(
        s3_store(s3_server),
        tmp_path / "not-a-dir" / "cache",
        block_size=block,
        span_bytes=4 * block,
        memory_bytes=16 * block,
    )
    try:
        data = os.urandom(64 * block)
        key = data_key()
        store.inner.put(key, data)
        store.inner.flush()
        before = requests(store)
        for off in range(0, len(data), block):
            store.prefetch_ranges([(key, off, 8 * block)])  # the next 8 blocks
            time.sleep(0.02)  # a reader slower than the network: the spans land first
            assert store.get(key, off, block) == data[off : off + block]
        # 64 blocks in spans of 4: 16 GETs, and a few more where a read overtakes a span
        # still in flight; never one per block.
        assert requests(store) - before <= 20
    finally:
        store.close()


def test_adjacent_chunks_read_as_one_view_of_the_buffer_they_came_in(
    cached: CachingStore,
) -> None:
    """A read straddling two chunks of one pack costs no joining copy when the cache holds
    both in one fetched buffer, and gets exactly the verified bytes; parts that are not views
    of one buffer are refused (the caller copies them)."""
    a, b = os.urandom(150_000), os.urandom(90_000)
    pack = new_pack_name(DATA_PACK)
    cached.inner.put(pack_key(pack), a + b)
    cached.inner.flush()
    locs = [Locator(hash_bytes(a), pack, 0, len(a)), Locator(hash_bytes(b), pack, len(a), len(b))]
    reader = ObjectReader(cached.inner, None, cache=cached)  # type: ignore[arg-type]  # no index needed to read
    reader.prefetch(locs)  # as a sequential reader does: both arrive in one ranged GET
    parts = [reader.read_raw(loc) for loc in locs]  # verified
    joined = reader.joined_view(locs, parts, 1000, len(a))
    assert isinstance(joined, memoryview)
    assert joined == (a + b)[1000 : 1000 + len(a)]
    copies = [bytes(p) for p in parts]
    assert reader.joined_view(locs, copies, 1000, len(a)) is None
    elsewhere = [memoryview(bytes(a)), parts[1]]
    assert reader.joined_view(locs, elsewhere, 1000, len(a)) is None  # not one buffer
    apart = [locs[0], Locator(locs[1].id, pack, len(a) + 1, len(b))]
    assert reader.joined_view(apart, parts, 1000, len(a)) is None  # not back to back


def test_a_joined_view_is_never_fetched(s3_server: MotoServer, tmp_path: Path) -> None:
    """Once the store's memory has let the span go, the chunks (still held by the reader) are
    joined by copying: no request, no error, even with the server gone."""
    block = 64 << 10
    store = CachingStore(
        s3_store(s3_server, max_attempts=1, retry_policy=RetryPolicy(1, 0, 0)),
        tmp_path / "c",
        block_size=block,
        span_bytes=4 * block,
        memory_bytes=4 * block,
    )
    try:
        a, b = os.urandom(100_000), os.urandom(50_000)
        pack = new_pack_name(DATA_PACK)
        store.inner.put(pack_key(pack), a + b)
        other = data_key()
        store.inner.put(other, os.urandom(4 * block))
        store.inner.flush()
        locs = [
            Locator(hash_bytes(a), pack, 0, len(a)),
            Locator(hash_bytes(b), pack, len(a), len(b)),
        ]
        reader = ObjectReader(store.inner, None, cache=store)  # type: ignore[arg-type]
        reader.prefetch(locs)
        parts = [reader.read_raw(loc) for loc in locs]
        assert reader.joined_view(locs, parts, 10, 1000) is not None
        store.get(other, 0, 4 * block)  # another span: the first one leaves memory
        before = requests(store)
        assert reader.joined_view(locs, parts, 10, 1000) is None
        assert requests(store) == before
    finally:
        store.close()


def test_a_hint_after_close_does_nothing(s3_server: MotoServer, tmp_path: Path) -> None:
    """A mount's last read-ahead hint may arrive while the store closes: it is dropped (no
    request, no thread started again, no block left claimed for a reader to wait on)."""
    store = CachingStore(s3_store(s3_server), tmp_path / "c", block_size=64 << 10)
    key = data_key()
    store.inner.put(key, os.urandom(300_000))
    store.inner.flush()
    before = requests(store)
    store.close()
    store.prefetch_ranges([(key, 0, 300_000)])
    store.prefetch([meta_key()])
    assert requests(store) == before
    assert store._pool is None and not store._loading


def test_written_meta_packs_are_cached_after_flush(cached: CachingStore) -> None:
    key = meta_key()
    cached.put(key, b"trees" * 100)
    assert not cached._blob_path(key).exists()  # not before the upload is confirmed
    cached.flush()
    before = requests(cached)
    assert cached.get(key, 5, 5) == b"trees"
    assert requests(cached) == before


def test_refs_are_never_cached(cached: CachingStore) -> None:
    cached.set_ref("branches/r/master", None, b"1")
    assert cached.get_ref("branches/r/master") == b"1"
    cached.inner.set_ref("branches/r/master", b"1", b"2")  # another machine moves it
    assert cached.get_ref("branches/r/master") == b"2"
    assert not [p for p in cached.root.rglob("*") if p.is_file()]  # nothing cached on disk


def test_a_corrupt_cache_file_is_dropped_and_refetched(cached: CachingStore) -> None:
    key = "chunk/" + "ab" * 32
    cached.put(key, b"hello" * 1000)
    cached.get(key)
    cached.drain_cache_writes()
    path = cached._blob_path(key)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    fresh = CachingStore(cached.inner, cached.root)  # no memory cache
    assert fresh.get(key) == b"hello" * 1000
    fresh.drain_cache_writes()
    assert path.read_bytes()[DIGEST:] == b"hello" * 1000  # rewritten whole


def _cached_data_pack(cached: CachingStore, chunks: list[bytes]) -> tuple[str, list[Locator]]:
    """A data pack of ``chunks`` written by another machine, read once through ``cached`` (so
    its blocks are on this machine's disk); its chunks' locators."""
    pack = new_pack_name(DATA_PACK)
    cached.inner.put(pack_key(pack), b"".join(chunks))
    cached.inner.flush()
    locs, offset = [], 0
    for c in chunks:
        locs.append(Locator(hash_bytes(c), pack, offset, len(c)))
        offset += len(c)
    reader = ObjectReader(cached.inner, None, cache=cached)  # type: ignore[arg-type]  # no index needed to read
    assert [reader.read_raw(loc) for loc in locs] == chunks
    cached.drain_cache_writes()
    return pack_key(pack), locs


def test_data_blocks_are_cached_bare_and_past_the_page_cache(cached: CachingStore) -> None:
    """A data pack's blocks go to disk as they are, no digest in front: their chunks are
    verified on every read anyway, so a block costs no second hash on either way. They are
    written with O_DIRECT: a cold read does not fill the page cache a second time."""
    chunks = [os.urandom(100_000), os.urandom(60_000)]
    key, _ = _cached_data_pack(cached, chunks)
    data = b"".join(chunks)
    size = cached.block_size
    files = sorted(cached._data_blocks.rglob("*"), key=lambda p: p.name)
    blocks = [p for p in files if p.is_file()]
    assert [p.name for p in blocks] == ["0", "1", "2"]
    if filesystem_of(cached.root) in DIRECT_IO_FILESYSTEMS:  # (a tmpfs file is its page cache)
        assert [resident_bytes(p) for p in blocks] == [0, 0, 0]
    for p in blocks:
        n = int(p.name)
        assert p.read_bytes() == data[n * size : (n + 1) * size]
    assert cached.disk_usage() == len(data)


def test_without_keep_file_data_fetched_blocks_stay_off_disk_and_cached_ones_serve(
    cached: CachingStore, tmp_path: Path
) -> None:
    """``keep_file_data = False`` (a ``get``): data-pack blocks fetched from the store are not
    written to the cache; blocks already on disk are still read from it, and metadata packs
    are cached as ever."""
    kept = [os.urandom(100_000), os.urandom(60_000)]
    _key, kept_locs = _cached_data_pack(cached, kept)
    before = sorted(p for p in cached._data_blocks.rglob("*") if p.is_file())
    assert before  # what a mount's read left there
    cached.keep_file_data = False
    pack = new_pack_name(DATA_PACK)
    chunks = [os.urandom(70_000), os.urandom(90_000)]
    cached.inner.put(pack_key(pack), b"".join(chunks))
    meta = meta_key()
    cached.inner.put(meta, b"trees" * 1000)
    cached.inner.flush()
    reader = ObjectReader(cached.inner, None, cache=cached)  # type: ignore[arg-type]
    locs, offset = [], 0
    for c in chunks:
        locs.append(Locator(hash_bytes(c), pack, offset, len(c)))
        offset += len(c)
    assert [reader.read_raw(loc) for loc in locs] == chunks
    assert cached.get(meta, 5, 10) == (b"trees" * 1000)[5:15]
    cached.drain_cache_writes()
    assert sorted(p for p in cached._data_blocks.rglob("*") if p.is_file()) == before
    assert cached._blob_path(meta).is_file()
    # A fresh process on the same cache directory reads the cached pack from disk alone.
    other = CachingStore(cached.inner, tmp_path / "cache", block_size=cached.block_size)
    other.keep_file_data = False
    try:
        sent = requests(cached)
        other_reader = ObjectReader(cached.inner, None, cache=other)  # type: ignore[arg-type]
        assert [other_reader.read_raw(loc) for loc in kept_locs] == kept
        assert requests(cached) == sent
    finally:
        other.close()


def test_reads_go_on_without_memory_for_cache_write_buffers(
    cached: CachingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data blocks then go uncached; the read itself neither fails nor slows to an error."""

    def no_memory(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(cachewriter.mmap, "mmap", no_memory)
    chunks = [os.urandom(100_000), os.urandom(60_000)]
    key, locs = _cached_data_pack(cached, chunks)  # reads them, and checks what it read
    assert not [p for p in cached._data_blocks.rglob("*") if p.is_file()]
    reader = ObjectReader(cached.inner, None, cache=cached)  # type: ignore[arg-type]
    assert [reader.read_raw(loc) for loc in locs] == chunks


@pytest.mark.parametrize("damage", ["flipped", "cut short", "emptied"])
@pytest.mark.parametrize("which", [0, 1])  # the first and the last block of the chunk's range
def test_a_damaged_cached_data_block_is_read_from_the_store(
    cached: CachingStore, damage: str, which: int
) -> None:
    """A data block damaged on disk (bit rot, a file cut by a crash) is caught by the chunk's
    own hash: the reader gets the right bytes from the store, the bad block is dropped and
    cached again, and nothing fails."""
    chunks = [os.urandom(100_000), os.urandom(60_000)]  # blocks of 64 KiB: 0-1, then 1-2
    key, locs = _cached_data_pack(cached, chunks)
    data = b"".join(chunks)
    size = cached.block_size
    block = cached._block_path(key, which)
    raw = bytearray(block.read_bytes())
    if damage == "flipped":
        raw[500] ^= 0xFF
    elif damage == "cut short":
        del raw[1000:]
    else:
        raw.clear()
    block.write_bytes(bytes(raw))
    fresh = CachingStore(cached.inner, cached.root, block_size=size)  # empty memory cache
    try:
        reader = ObjectReader(fresh.inner, None, cache=fresh)  # type: ignore[arg-type]
        before = requests(cached)
        assert reader.read_raw(locs[0]) == chunks[0]
        assert requests(cached) > before  # from the store, not from the damaged file
        assert reader.read_raw(locs[1]) == chunks[1]
        # Read again, the dropped blocks (the chunk's whole range: which one was bad is not
        # known) are fetched and cached right; the others were kept.
        assert [reader.read_raw(loc) for loc in locs] == chunks
        fresh.drain_cache_writes()
        for n in range(3):
            assert fresh._block_path(key, n).read_bytes() == data[n * size : (n + 1) * size]
    finally:
        fresh.close()


def test_a_chunk_corrupt_in_the_store_itself_is_an_error(cached: CachingStore) -> None:
    """The second try at the store does not hide real corruption: it is reported."""
    good = os.urandom(100_000)
    _, locs = _cached_data_pack(cached, [good])
    bad = Locator(hash_bytes(good[::-1]), locs[0].pack, 0, len(good))  # the store holds good
    reader = ObjectReader(cached.inner, None, cache=cached)  # type: ignore[arg-type]
    with pytest.raises(Corruption, match="does not match its hash"):
        reader.read_raw(bad)


class _OneBadResponse:
    """An S3 store whose first ranged read returns one byte wrong (a bad response)."""

    def __init__(self, inner: S3ObjectStore) -> None:
        self.inner = inner
        self.spoiled = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def get_upto(self, key: str, start: int, nbytes: int) -> bytes:
        data = self.inner.get_upto(key, start, nbytes)
        if self.spoiled:
            return data
        self.spoiled = True
        return bytes([data[0] ^ 0xFF]) + data[1:]


def test_a_bad_response_never_lands_in_the_disk_cache(
    s3_server: MotoServer, tmp_path: Path
) -> None:
    """A span that came back wrong is cached (in memory, and queued for disk) before anyone
    knows; once a reader finds it bad, it leaves memory and its disk writes are cancelled —
    the one being written is removed after it, the queued one never written."""
    inner = s3_store(s3_server)
    chunk = os.urandom(100_000)
    pack = new_pack_name(DATA_PACK)
    inner.put(pack_key(pack), chunk)
    inner.flush()
    loc = Locator(hash_bytes(chunk), pack, 0, len(chunk))
    flaky = _OneBadResponse(inner)
    store = CachingStore(flaky, tmp_path / "cache", block_size=64 << 10)  # type: ignore[arg-type]
    gate = threading.Event()
    write = store._writer._write_copy
    assert write is not None

    def slow_disk(path: Path, slot: memoryview, length: int) -> None:
        gate.wait(10)
        write(path, slot, length)

    store._writer._write_copy = slow_disk  # block 0 is being written, block 1 queued
    try:
        reader = ObjectReader(store.inner, None, cache=store)  # type: ignore[arg-type]
        assert reader.read_raw(loc) == chunk  # the bad response, then the store again
        assert flaky.spoiled
        gate.set()
        store.drain_cache_writes()
        on_disk = [p for p in store._data_blocks.rglob("*") if p.is_file()]
        assert all(p.read_bytes() == chunk[int(p.name) << 16 :][: 64 << 10] for p in on_disk)
        assert reader.read_raw(loc) == chunk
    finally:
        store.close()


def test_a_chunk_missing_from_the_store_is_still_an_error(cached: CachingStore) -> None:
    """The second try at the store itself does not hide a real loss."""
    reader = ObjectReader(cached.inner, None, cache=cached)  # type: ignore[arg-type]
    gone = Locator(hash_bytes(b"x"), new_pack_name(DATA_PACK), 0, 1)
    with pytest.raises(Corruption, match="missing from the store"):
        reader.read_raw(gone)


def test_deleted_blobs_leave_the_cache(cached: CachingStore) -> None:
    key = meta_key()
    cached.put(key, b"x" * 100)
    assert cached.get(key, 0, 10) == b"x" * 10
    cached.delete(key)
    with pytest.raises(NotFound):
        cached.get(key, 0, 10)


def test_eviction_keeps_the_cache_under_its_size(s3_server: MotoServer, tmp_path: Path) -> None:
    inner = s3_store(s3_server)
    store = CachingStore(inner, tmp_path / "small", max_bytes=1 << 20, memory_bytes=0)
    try:
        keys = [f"chunk/{i:064x}" for i in range(12)]
        for key in keys:
            store.put(key, os.urandom(200_000))
        store.flush()
        for key in keys:
            store.get(key)
            store.drain_cache_writes()  # in order: LRU by write time
        assert store.disk_usage() <= 1 << 20
        assert store._blob_path(keys[-1]).exists()  # the newest stays
        assert not store._blob_path(keys[0]).exists()  # the oldest went
    finally:
        store.close()


def test_prefetch_fills_the_cache(cached: CachingStore) -> None:
    keys = [f"chunk/{i:064x}" for i in range(6)]
    blobs = {k: os.urandom(50_000) for k in keys}
    for k, v in blobs.items():
        cached.put(k, v)
    cached.flush()
    before = requests(cached)
    cached.prefetch(keys)
    for k in keys:
        assert cached.get(k) == blobs[k]
    assert requests(cached) - before == len(keys)  # each fetched once, by prefetch or get


def test_pending_uploads_are_readable_and_failures_surface_at_flush(tmp_path: Path) -> None:
    """A put returns before its upload; a dead endpoint fails at flush, not silently."""
    dead = S3ObjectStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="AKIAPFSFSTESTKEY0001",
        aws_secret_access_key="pfsfs-test-secret-never-print-me",
        max_attempts=1,
        retry_policy=RetryPolicy(attempts=1),
        connect_timeout=1,
    )
    try:
        dead.put("chunk/" + "cd" * 32, b"data")  # queued: returns at once
        with pytest.raises(StoreError) as info:
            dead.flush()
        assert "cannot reach S3 endpoint" in str(info.value)
        with pytest.raises(StoreError):  # still failing: still reported, never forgotten
            dead.flush()
    finally:
        dead.close()


def test_read_your_writes_before_the_upload_lands(s3_server: MotoServer) -> None:
    store = s3_store(s3_server)
    try:
        blobs = {f"chunk/{i:064x}": os.urandom(300_000) for i in range(20)}
        for k, v in blobs.items():
            store.put(k, v)
            assert store.get(k, 7, 9) == v[7:16]
            assert store.exists(k)
        store.flush()
        assert {i.key for i in store.list("chunk/")} == set(blobs)
        for k, v in blobs.items():
            assert store.get(k) == v
    finally:
        store.close()


def test_closing_fails_reads_that_wait_for_cancelled_prefetches(
    s3_server: MotoServer, tmp_path: Path
) -> None:
    """A read waiting for blocks a prefetch had claimed gets an error when the cache closes
    and cancels that prefetch; it never hangs."""
    gate = threading.Event()

    class SlowS3(S3ObjectStore):
        def get_upto(self, key: str, offset: int, length: int) -> bytes:
            gate.wait(10)
            return super().get_upto(key, offset, length)

    inner = SlowS3(
        s3_server.bucket,
        prefix=f"cache-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_server.endpoint,
        **s3_server.credentials,  # type: ignore[arg-type]
    )
    size = 64 << 10
    store = CachingStore(
        inner, tmp_path / "c", block_size=size, span_bytes=size, prefetch_workers=1
    )
    data = os.urandom(4 * size)
    key = data_key()
    inner.put(key, data)
    inner.flush()
    store.prefetch_ranges([(key, 0, len(data))])  # 4 spans: one fetching (held), 3 queued
    outcome: dict[str, object] = {}

    def read() -> None:
        try:
            outcome["data"] = store.get(key, 3 * size, 10)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    closer = threading.Thread(target=store.close, daemon=True)
    time.sleep(0.2)  # the reader now waits for the queued span's blocks
    closer.start()
    time.sleep(0.2)  # close has cancelled the queued spans and waits for the running one
    gate.set()
    closer.join(10)
    reader.join(10)
    assert not reader.is_alive(), "a read hung on a prefetch that close cancelled"
    assert isinstance(outcome.get("error"), StoreError), outcome
