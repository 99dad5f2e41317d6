"""A local read cache in front of a remote object store (S3): immutable blobs on disk, refs never.

``CachingStore(inner, cache_dir, max_bytes)`` is an ``ObjectStore`` decorator. Blobs are
immutable, so whatever it caches stays valid forever; refs are mutable and always go to
``inner``, as do ``exists`` and ``list`` (another machine's gc may have deleted a blob this
machine still caches, and a push must not skip it on the cache's word).

Nobody finds it by probing a store: the ``Repository`` builds it around a remote store
(``home.open_read_cache``), keeps the store itself as ``Repository.store`` (what fsck, gc and
copies read: ``inner``), and hands the cache explicitly to its ``ObjectReader`` (reads, read
hints, views, ``discard`` of a range found bad) and ``ObjectWriter`` (writes, so written
metadata packs are cached once flushed). Its properties are ``inner``'s: what it returns may
be short or wrong (a torn cache file, a bad response kept) and a miss is not proof of absence,
so its reader checks every object and on a mismatch ``discard``s it here and reads ``inner``.

What a read fetches:

* **Metadata packs** (trees and manifests, ``model.is_meta_pack_key``): the whole pack, on the
  first range read. The trees of one commit live in a few such packs, so reading every tree of
  a 100,000-file commit costs a handful of requests.
* **Data packs** (file content; on S3 big files' chunks too): aligned ``block_size`` blocks
  around the range asked for, cached per block — a range read never pulls a whole 16 MiB pack,
  yet reading many small files of one pack costs a few requests, not one per file. Adjacent
  missing blocks are fetched in one ranged GET (up to ``span_bytes``).
* **Everything else** (standalone chunks, commits): the whole blob, cached whole.

Writes go to ``inner``; metadata packs a writer puts are also cached, once ``flush`` has
confirmed they are stored (a failed upload never leaves a cached blob the store lacks).

On disk (``cache_dir``): ``blobs/<kind>/<2-hex fan-out>/<name>`` and
``data-blocks/<pack name>/<block number>``, each written to a temp name and renamed. A blob file
starts with the 32-byte BLAKE3 digest of the rest, so a torn or corrupted file is detected,
dropped and fetched again (never returned, never a persistent error). A data block is stored
bare: every chunk read from it is verified against its own id anyway (``ObjectReader``), which
on a mismatch ``discard``s the cached range and reads the store itself — so the block costs no
second hash on its way to disk nor on its way back (a cold 1 GiB read writes ~1000 of them).
Files are not fsynced: the cache is not a source of truth. They are written off the read path
by a ``CacheWriter`` thread (a cold read is not slowed to the disk's speed) and ``close`` waits
for what is queued. Data blocks are copied into ``write_slots`` reusable buffers and written
with ``O_DIRECT`` (``directio``: filling the page cache with a cold read's blocks halved the read
on the VMs measured; the price: reading them again soon comes from the disk, not memory); when
the disk is more than ``write_slots`` blocks behind, blocks go uncached. Blobs are queued as
they are, up to ``write_queue_bytes``. Eviction is LRU-ish by
size: a hit bumps the file's mtime; when the total passes ``max_bytes`` the oldest files go
until it is under 90%. Several processes may share
one cache directory. A small in-memory cache (``memory_bytes``) keeps recently read blobs
decoded, so the many range reads of one metadata pack do not re-read and re-hash the file:
whole blobs by LRU; data-pack blocks first in, first out, as views of the span they were
fetched in, so that prefetched blocks stay until a sequential reader gets to them and a range
within one span is returned as a slice of it, without a copy.

``keep_file_data = False`` (``get`` and ``cat`` set it) leaves the data-pack blocks it fetches
out of ``data-blocks/``: their bytes go to a file or a pipe of the caller's anyway.

``prefetch(keys)`` fills the cache for whole blobs in the background (bounded thread pool), and
``prefetch_ranges`` for the blocks of data-pack ranges (``span_bytes`` per request: a sequential
reader of a big file keeps several multi-MiB GETs in flight); a ``get`` of a key or block being
fetched waits for that fetch instead of issuing a second request.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import NotFound, StoreError
from ..heldbytes import HeldBytes, owner_of
from ..ids import hash_bytes
from ..model import is_meta_pack_key
from .base import BlobInfo, ObjectStore, StoreProperties, check_blob_key, check_key
from .cachewriter import CacheWriter
from .directio import DirectFileWriter

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 << 30
DIGEST = 32
_EVICT_TO = 0.9
_BUMP_AFTER = 60.0  # seconds: do not touch a file's mtime more often than this
_tmp_counter = itertools.count()


class _Block:
    """One block of a data pack: ``span[start:end]`` of the ranged GET that fetched it (or of
    the cache file it was read from). Blocks of one span are adjacent in it, so a range over
    several of them is one slice of the span: no copy."""

    __slots__ = ("span", "start", "end")

    def __init__(self, span: memoryview, start: int = 0, end: int | None = None) -> None:
        self.span = span
        self.start = start
        self.end = len(span) if end is None else end

    def __len__(self) -> int:
        return self.end - self.start

    def view(self) -> memoryview:
        return self.span[self.start : self.end]


def _one_span(blocks: list[Any], start: int, length: int) -> memoryview | None:
    """``length`` bytes from ``start`` into consecutive ``blocks`` as one slice of their span,
    if they all are blocks of one span (fewer bytes where the span ends); else None."""
    head = blocks[0]
    if not isinstance(head, _Block):
        return None
    for block in blocks:
        if not isinstance(block, _Block) or block.span is not head.span:
            return None
    begin = head.start + start
    return head.span[begin : min(begin + length, blocks[-1].end)]


def _owner(data: Cached) -> Any:
    """What an in-memory entry keeps alive: a block its whole span, a blob itself."""
    return owner_of(data.span) if isinstance(data, _Block) else data


Cached = bytes | _Block  # in memory: whole blobs, and data-pack blocks


class _Ready:
    """A block already in memory, looking like a finished ``Future`` to its reader (a real
    one costs a lock and a condition, per block, on every read of a cached range)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self._value


class CachingStore(ObjectStore):
    """Caches immutable blobs of ``inner`` under ``cache_dir``; refs pass straight through."""

    def __init__(
        self,
        inner: ObjectStore,
        cache_dir: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        memory_bytes: int = 128 << 20,
        block_size: int = 1 << 20,
        span_bytes: int = 32 << 20,
        prefetch_workers: int = 8,
        write_queue_bytes: int = 128 << 20,
        write_slots: int = 32,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.root = Path(cache_dir)
        self._data_blocks = self.root / "data-blocks"  # bare files, no digest (see above)
        # Blocks with a digest, as releases before data-blocks/ wrote them: never read now.
        shutil.rmtree(self.root / "blocks", ignore_errors=True)
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.span_bytes = span_bytes
        self._memory_bytes = memory_bytes
        self._memory: OrderedDict[str, Cached] = OrderedDict()
        self._memory_used = HeldBytes()  # spans counted whole, however few blocks remain
        self._lock = threading.Lock()
        self._loading: dict[str, Future[Any]] = {}  # whole blobs (bytes) and _Blocks
        self._disk_used: int | None = None  # unknown until the first scan
        self._staged: dict[str, bytes] = {}  # metadata packs written, cached at flush
        self._requested: set[str] = set()  # keys prefetch was already asked for
        self._staged_bytes = 0
        self._prefetch_workers = prefetch_workers
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._direct = DirectFileWriter()
        self._writer = CacheWriter(
            self._write_now,
            max_bytes=write_queue_bytes,
            write_copy=self._write_block_now,
            copy_slots=write_slots,
            slot_bytes=block_size,
        )
        #: False: data-pack blocks fetched from the store are not written to ``cache_dir``
        #: (blocks already there are still read). For a process that writes the file content
        #: it reads somewhere else (``get``, ``cat``): caching it too wrote every byte twice
        #: to this disk (a cold 1 GiB get from S3 1.96 -> 1.70 s without) and pushed out of
        #: the cache what the mounts of this home read again.
        self.keep_file_data = True
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachingStore({self.inner!r}, cache={str(self.root)!r})"

    @property
    def properties(self) -> StoreProperties:  # type: ignore[override]
        """The inner store's: a cache in front of a store changes none of its facts."""
        return self.inner.properties

    def check(self) -> None:
        """The inner store's early validation (bucket, endpoint, credentials)."""
        self.inner.check()

    # -- blobs: writes and metadata go to the inner store -----------------------------------
    def put(self, key: str, data: bytes | memoryview) -> None:
        self.inner.put(key, data)
        self._stage(key, data)

    def put_owned(self, key: str, data: bytearray) -> None:
        self._stage(key, data)  # copies what it keeps, before the inner store owns ``data``
        self.inner.put_owned(key, data)

    def _stage(self, key: str, data: bytes | memoryview | bytearray) -> None:
        if is_meta_pack_key(key) and self._staged_bytes + len(data) <= self._memory_bytes:
            # The writer will likely read these trees back (the next commit's base): cache
            # them, but only once ``flush`` says they are stored.
            with self._lock:
                self._staged[key] = bytes(data)
                self._staged_bytes += len(data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def head(self, key: str) -> BlobInfo | None:
        return self.inner.head(key)

    def touch(self, key: str) -> None:
        self.inner.touch(key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self._forget(key)

    def flush(self) -> None:
        with self._lock:
            staged, self._staged, self._staged_bytes = self._staged, {}, 0
        self.inner.flush()  # raises if an upload failed: nothing staged gets cached then
        for key, data in staged.items():
            self._writer.submit(self._blob_path(key), data)
            self._remember(key, data)

    # -- blobs: cached reads -------------------------------------------------------------------
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """As ``ObjectStore.get``; a range of a data pack may come back as a read-only
        ``memoryview`` into the fetched span (no copy). A data-pack range read from disk is
        *not* checked here (its blocks carry no digest): the caller verifies the chunks in it
        against their ids and ``discard``s the range on a mismatch (``ObjectReader`` does),
        or reads ``inner``."""
        check_blob_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if key.startswith("pack/") and not is_meta_pack_key(key):
            if length is None:
                return self.inner.get(key, offset, length)  # whole data packs: rare, uncached
            return self._get_blocks(key, offset, length)
        data = self._whole(key)
        end = len(data) if length is None else offset + length
        if end > len(data):
            raise NotFound(f"object {key} in {self.location} is shorter than expected")
        if offset == 0 and end == len(data):
            return data
        return data[offset:end]

    def prefetch(self, keys: Iterable[str]) -> None:
        """Start fetching whole blobs (chunks, commits, metadata packs) into the cache."""
        for key in keys:
            check_key(key)
            if key.startswith("pack/") and not is_meta_pack_key(key):
                continue
            with self._lock:
                if key in self._memory or key in self._loading or not self._first_ask(key):
                    continue
            if self._blob_path(key).exists():
                continue
            pool = self._prefetch_pool()
            if pool is None:
                return
            try:
                pool.submit(self._quietly, self._whole, key)
            except RuntimeError:  # shut down meanwhile: a hint may be dropped
                return

    def prefetch_ranges(self, ranges: Iterable[tuple[str, int, int]]) -> None:
        """Start fetching these ranges: whole blobs for everything but data packs; for data
        packs the aligned ``span_bytes`` spans they touch, one request per span.

        Whole aligned spans, so a sliding window that grows by one chunk per read still moves
        ``span_bytes`` (on S3: the rest of a pack) per request, not a chunk; and each span is
        asked for once, so the mount's call on every sequential read costs a set lookup per
        range, not one per block."""
        size = self.block_size
        group = max(1, self.span_bytes // size)
        spans: list[tuple[str, int]] = []
        for key, offset, length in ranges:
            if not key.startswith("pack/") or is_meta_pack_key(key):
                self.prefetch([key])
                continue
            check_key(key)
            if length <= 0:
                continue
            with self._lock:
                for g in range(offset // size // group, (offset + length - 1) // size // group + 1):
                    if self._first_ask(f"{key}#span{g}"):
                        spans.append((key, g))
        for key, g in spans:
            # Claimed here, not in the pool thread: a read of these blocks arriving before the
            # fetch starts waits for it instead of fetching them in smaller pieces.
            futures, owned = self._claim(key, range(g * group, (g + 1) * group), count=False)
            if not owned:
                continue
            pool = self._prefetch_pool()
            if pool is not None:
                try:
                    pool.submit(self._load_quietly, key, owned, futures)
                    continue
                except RuntimeError:  # shut down meanwhile
                    pass
            # Closed: nobody will load these blocks, so their readers must not wait for them.
            self._fail_owned(key, owned, futures, self._closed_error())

    def _first_ask(self, name: str) -> bool:
        """Whether prefetch is asked for ``name`` the first time (call with the lock held)."""
        if name in self._requested:
            return False
        if len(self._requested) > 65536:
            self._requested.clear()
        self._requested.add(name)
        return True

    def _prefetch_pool(self) -> ThreadPoolExecutor | None:
        """The prefetch threads; None once the store is closed (a late hint does nothing)."""
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._prefetch_workers, thread_name_prefix="pfsfs-prefetch"
                )
            return self._pool

    def _closed_error(self) -> StoreError:
        return StoreError(f"the read cache of {self.location} was closed")

    def _load_quietly(
        self, key: str, owned: list[int], futures: dict[int, Future[_Block]]
    ) -> None:
        try:
            self._load(key, owned, futures)
        except Exception as exc:  # noqa: BLE001 - a prefetch failing is not an error: the
            # waiting reads get the exception from their futures, a later read fetches again
            log.debug("prefetch of %s blocks %s.. failed: %s", key, owned[0], exc)

    @staticmethod
    def _quietly(fn: Callable[[str], bytes], key: str) -> None:
        try:
            fn(key)
        except Exception as exc:  # noqa: BLE001 - a prefetch failing is not an error; get says
            log.debug("prefetch of %s failed: %s", key, exc)

    def _whole(self, key: str) -> bytes:
        return self._cached(key, self._blob_path(key), lambda: self.inner.get(key))

    def _get_blocks(self, key: str, offset: int, length: int) -> bytes | memoryview:
        if length == 0:
            return self.inner.get(key, offset, 0)
        size = self.block_size
        first, last = offset // size, (offset + length - 1) // size
        parts = self._blocks(key, range(first, last + 1))
        start = offset - first * size
        result: bytes | memoryview | None = _one_span(parts, start, length)
        if result is None:  # one copy: slices of the first and last block, whole ones between
            views = [p.view() for p in parts]
            views[0] = views[0][start:]
            views[-1] = views[-1][: start + length - (len(parts) - 1) * size]
            result = b"".join(views)
        if len(result) != length:
            raise NotFound(f"object {key} in {self.location} is shorter than expected")
        return result

    def cached_view(self, key: str, offset: int, length: int) -> memoryview | None:
        """The range as a slice of the one span holding all its blocks in memory, else None
        (no claim, no fetch: what is not in memory is simply not offered)."""
        if length <= 0 or not key.startswith("pack/") or is_meta_pack_key(key):
            return None
        size = self.block_size
        first, last = offset // size, (offset + length - 1) // size
        with self._lock:
            blocks = [self._memory.get(f"{key}#{n}") for n in range(first, last + 1)]
        view = _one_span(blocks, offset - first * size, length)
        return view if view is not None and len(view) == length else None

    def _blocks(self, key: str, numbers: range) -> list[_Block]:
        """Blocks ``numbers`` of a data pack, up to the pack's (short or empty) last block.

        Each block comes from memory, from a fetch already running (waited for), from disk, or
        from the store — the blocks missing everywhere in one ranged GET per run of adjacent
        blocks (at most ``span_bytes``), so a 1.1 MiB chunk straddling two blocks, or a
        prefetch of the next 8 MiB, costs one request."""
        futures, owned = self._claim(key, numbers)
        if owned:
            self._load(key, owned, futures)
        parts = []
        for n in numbers:
            block = futures[n].result()
            parts.append(block)
            if len(block) < self.block_size:
                break  # the pack ends in this block
        return parts

    def _claim(
        self, key: str, numbers: range, *, count: bool = True
    ) -> tuple[dict[int, Future[_Block]], list[int]]:
        """A future per block; the blocks nobody is loading yet become ours to load.
        (``count``: memory hits count as cache hits — not for prefetches.)"""
        futures: dict[int, Future[_Block]] = {}
        owned: list[int] = []
        with self._lock:
            for n in numbers:
                mem_key = f"{key}#{n}"
                data = self._memory.get(mem_key)
                if data is not None:
                    # No LRU bump: blocks leave memory in the order they came (FIFO). A
                    # sequential reader consumes prefetched blocks in that order, so bumping
                    # the ones just read would evict the prefetched ones not read yet (they
                    # were then read back from disk, or fetched again).
                    self.hits += count
                    futures[n] = _Ready(data)  # type: ignore[assignment]
                elif mem_key in self._loading:
                    futures[n] = self._loading[mem_key]
                else:
                    futures[n] = self._loading[mem_key] = Future()
                    owned.append(n)
        return futures, owned

    def _load(self, key: str, owned: list[int], futures: dict[int, Future[_Block]]) -> None:
        """Settle the futures of ``owned`` blocks: from disk, else fetched in spans."""
        size = self.block_size
        try:
            missing = []
            for n in owned:
                data = self._read_file(self._block_path(key, n), digest=False)
                if data is None:
                    missing.append(n)
                else:
                    self.hits += 1
                    self._settle(key, n, futures[n], _Block(memoryview(data)), write=False)
            for first, count in _runs(missing, max(1, self.span_bytes // size)):
                self.misses += count
                # Blocks are views of the span (no copy); they leave memory in the order they
                # came (FIFO), so a span is freed about when its last block is.
                span = memoryview(self._fetch_span(key, first * size, count * size))
                for i in range(count):
                    block = _Block(span, min(i * size, len(span)), min((i + 1) * size, len(span)))
                    keep = bool(block) and self.keep_file_data
                    self._settle(key, first + i, futures[first + i], block, write=keep)
        except BaseException as exc:
            self._fail_owned(key, owned, futures, exc)
            raise

    def _fail_owned(
        self, key: str, owned: list[int], futures: dict[int, Future[_Block]], exc: BaseException
    ) -> None:
        """Settle the claimed blocks nobody will load with ``exc`` (their readers get it)."""
        with self._lock:
            for n in owned:
                future = futures[n]
                if not future.done():
                    future.set_exception(exc)
                self._loading.pop(f"{key}#{n}", None)

    def _settle(
        self, key: str, n: int, future: Future[_Block], data: _Block, *, write: bool
    ) -> None:
        if write:
            # Copied out: the block is a view of a whole fetched span, which must not stay in
            # memory for its sake; written past the page cache (see the module doc).
            self._writer.submit_copy(self._block_path(key, n), data.view())
        mem_key = f"{key}#{n}"
        if data:
            self._remember(mem_key, data)
        future.set_result(data)
        with self._lock:
            self._loading.pop(mem_key, None)

    def _fetch_span(self, key: str, start: int, nbytes: int) -> bytes:
        """Up to ``nbytes`` of ``key`` from ``start`` in one request (fewer at the pack's end,
        none past it); ``NotFound`` if the pack is missing."""
        data = self.inner.get_upto(key, start, nbytes)
        if not data and not self.inner.exists(key):
            raise NotFound(f"object {key} is missing from {self.location}")
        return data

    def _block_path(self, key: str, n: int) -> Path:
        return self._data_blocks / key.split("/", 1)[1] / str(n)

    def _cached(self, mem_key: str, path: Path, fetch: Callable[[], bytes]) -> bytes:
        """Memory, then disk, then ``fetch`` (one fetch per key at a time across threads)."""
        with self._lock:
            data = self._memory.get(mem_key)
            if data is not None:
                self._memory.move_to_end(mem_key)
                self.hits += 1
                return data
            future = self._loading.get(mem_key)
            owner = future is None
            if owner:
                future = self._loading[mem_key] = Future()
        assert future is not None
        if not owner:
            return future.result()
        try:
            data = self._read_file(path, digest=True)
            if data is None:
                self.misses += 1
                data = fetch()
                self._writer.submit(path, data)
            else:
                self.hits += 1
            self._remember(mem_key, data)
            future.set_result(data)
            return data
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._loading.pop(mem_key, None)

    def _remember(self, mem_key: str, data: Cached) -> None:
        if len(data) > self._memory_bytes // 2:
            return
        with self._lock:
            if mem_key in self._memory:
                return
            self._memory[mem_key] = data
            self._memory_used.add(_owner(data))
            while self._memory_used.total > self._memory_bytes and self._memory:
                _, old = self._memory.popitem(last=False)
                self._memory_used.remove(_owner(old))

    def discard(self, key: str, offset: int, length: int) -> None:
        """Drop what the cache holds of this range of ``key`` (a reader found it corrupt):
        the blocks of a data pack, else the whole blob. The next read fetches it again."""
        check_key(key)
        if not key.startswith("pack/") or is_meta_pack_key(key):
            self._forget(key)
            return
        size = self.block_size
        numbers = range(offset // size, (offset + max(length, 1) - 1) // size + 1)
        with self._lock:
            for n in numbers:
                old = self._memory.pop(f"{key}#{n}", None)
                if old is not None:
                    self._memory_used.remove(_owner(old))
        for n in numbers:
            path = self._block_path(key, n)
            self._writer.cancel(path)  # a bad span just fetched is still queued for disk
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.debug("cannot drop cached block %s#%d: %s", key, n, exc)

    def _forget(self, key: str) -> None:
        with self._lock:
            for mem_key in [k for k in self._memory if k == key or k.startswith(key + "#")]:
                self._memory_used.remove(_owner(self._memory.pop(mem_key)))
        try:
            self._blob_path(key).unlink(missing_ok=True)
            if key.startswith("pack/"):
                shutil.rmtree(self._block_path(key, 0).parent, ignore_errors=True)
        except OSError as exc:
            log.debug("cannot drop cached %s: %s", key, exc)

    # -- disk ------------------------------------------------------------------------------------
    def _blob_path(self, key: str) -> Path:
        head, _, name = key.rpartition("/")
        fan = name[:2] if len(name) > 8 else "_"
        return self.root / "blobs" / head / fan / name

    def _read_file(self, path: Path, *, digest: bool) -> bytes | None:
        """A cache file's bytes: a blob's after its ``digest`` (checked), a data block's bare;
        None if it is missing, unreadable or (a blob's) corrupt."""
        queued = self._writer.pending(path)
        if queued is not None:
            return bytes(queued)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            return None
        if digest:
            data = raw[DIGEST:]
            if len(raw) < DIGEST or hash_bytes(data) != raw[:DIGEST]:
                log.warning("dropping a corrupt cache file %s", path)
                path.unlink(missing_ok=True)
                return None
        else:
            data = raw
        try:
            if time.time() - os.stat(path).st_mtime > _BUMP_AFTER:
                os.utime(path)  # LRU: recently used files are evicted last
        except OSError:
            pass
        return data

    def drain_cache_writes(self) -> None:
        """Wait until every file queued for the disk cache is written."""
        self._writer.drain()

    def _write_now(self, path: Path, data: bytes) -> None:
        """Write a blob file: its digest, then its bytes (see the module doc)."""
        header = hash_bytes(data)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(header)
                f.write(data)

        self._write_new(path, write, len(header) + len(data))

    def _write_block_now(self, path: Path, buffer: memoryview, length: int) -> None:
        """Write a bare data block from a page-aligned ``buffer`` (``O_DIRECT`` if allowed)."""
        self._write_new(path, lambda tmp: self._direct.write(tmp, buffer, length), length)

    def _write_new(self, path: Path, write: Callable[[Path], None], size: int) -> None:
        """``write`` a temp file, then rename it to ``path`` (readers never see a part)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
        try:
            try:
                write(tmp)
            except FileNotFoundError:  # the first file of its directory (asked only then)
                path.parent.mkdir(parents=True, exist_ok=True)
                write(tmp)
            os.replace(tmp, path)
        except OSError as exc:  # best effort: a full disk must not fail reads
            log.debug("cannot cache %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
            return
        self._account(size)

    def _account(self, added: int) -> None:
        with self._lock:
            if self._disk_used is None:
                self._disk_used = sum(size for _, size, _ in self._scan())
            else:
                self._disk_used += added
            over = self._disk_used > self.max_bytes
        if over:
            self.evict()

    def _scan(self) -> list[tuple[float, int, str]]:
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                found.append((st.st_mtime, st.st_size, full))
        return found

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used files until the cache holds at most ``target`` bytes
        (default 90% of ``max_bytes``); returns the bytes now used."""
        limit = int(self.max_bytes * _EVICT_TO) if target is None else target
        files = sorted(self._scan())
        used = sum(size for _, size, _ in files)
        for _mtime, size, full in files:
            if used <= limit:
                break
            try:
                os.unlink(full)
                used -= size
            except OSError:
                continue
        with self._lock:
            self._disk_used = used
        log.debug("cache %s evicted down to %d bytes", self.root, used)
        return used

    def disk_usage(self) -> int:
        self._writer.drain()
        return sum(size for _, size, _ in self._scan())

    # -- refs: never cached ------------------------------------------------------------------
    def get_ref(self, name: str) -> bytes | None:
        return self.inner.get_ref(name)

    def set_ref(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        self.inner.set_ref(name, expected, new)

    def list_refs(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        return self.inner.list_refs(prefix)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        # Blocks claimed by prefetches that the shutdown cancelled would never be settled: a
        # read waiting for one (another thread, mid-read) must fail, not hang.
        with self._lock:
            loading, self._loading = self._loading, {}
        closed = self._closed_error()
        for future in loading.values():
            if not future.done():
                future.set_exception(closed)
        self._writer.close()  # what is queued is written: no half-made cache files left
        self.inner.close()


def _runs(numbers: list[int], longest: int) -> Iterator[tuple[int, int]]:
    """``(first, count)`` for each run of consecutive ``numbers`` (sorted), split so that no
    run is longer than ``longest``."""
    i = 0
    while i < len(numbers):
        first = numbers[i]
        count = 1
        while i + count < len(numbers) and numbers[i + count] == first + count and count < longest:
            count += 1
        yield first, count
        i += count
