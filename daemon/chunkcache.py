"""Reading committed file content: manifests with their offsets, and a bounded cache of chunks.

A FUSE read asks for 128 KiB–1 MiB at a time while chunks average 1 MiB, so a sequential read
touches each chunk several times; chunks are fetched (and verified against their hash) once and
kept in a small in-memory LRU. Sequential reads trigger read-ahead: background threads
(``read_ahead_workers``) fetch and verify the next ``read_ahead`` chunks (file reads and BLAKE3
release the GIL) while the mount thread answers the kernel. A local store's chunks are read
past the page cache where it can (``ObjectReader.read_chunk``: the kernel keeps the bytes in
the mount's own page cache, a second cached copy of the chunk file only cost): cold 1 GiB reads
~1,220 -> ~1,360 MB/s, and with ``OPEN_AHEAD_UNCACHED`` chunks fetched at open ~1,560 (A/B,
interleaved, 3-4 runs each); with its buffers left unzeroed and reads that straddle two chunks
joined outside the GIL (``pfsfs.buffers``: the read-ahead threads need it meanwhile) ~1,730
(``bench_mount.py --only physical``, against the disk's ~1,880). Where it cannot (a store
off a disk filesystem, no ``cachestat``, no ``O_DIRECT``: ``uncached_reads``,
``directio.reads_uncached``) the kernel is asked instead (``read_ahead_ranges``:
``POSIX_FADV_WILLNEED``, from a worker thread) to read the chunk files of the next
``STORE_READ_AHEAD`` chunks, so a cold disk serves many reads at once instead of the few the
fetching threads wait for. For a remote store without a read cache of its own, a disk cache
under ``<home>/cache/chunks`` keeps verified chunks across mounts (S3 has one:
``CachingStore``), so re-reading committed data does not hit the network.
Memory use is bounded (``max_bytes``, ``MAX_ENTRIES``) whatever the file sizes, plus the
read-aheads not consumed yet (at most ``4 * read_ahead`` chunks). (Mapping store files instead
of reading them was measured slower on tmpfs: page-table setup costs more than the copy.)
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pfsfs.buffers import concat
from pfsfs.heldbytes import HeldBytes, owner_of
from pfsfs.ids import hash_bytes
from pfsfs.model import Locator, ManifestChunk, blob_key
from pfsfs.objects import ObjectReader
from pfsfs.store.base import SEQUENTIAL_AHEAD_CHUNKS
from pfsfs.store.directio import reads_uncached

log = logging.getLogger(__name__)

SEQUENTIAL_SLACK = 4 << 20  # bytes a read may start before or after the last one's end
STORE_READ_AHEAD = SEQUENTIAL_AHEAD_CHUNKS  # a remote store fetches ahead of a sequential reader

Chunk = bytes | memoryview
MAX_ENTRIES = 4096  # chunks held at most
OPEN_AHEAD = 2  # chunks fetched ahead when a file is opened for reading
OPEN_AHEAD_UNCACHED = 8  # the same when chunks are read past the page cache (no kernel hints)


class Manifest:
    """A file's chunk list with cumulative start offsets (for bisecting a read offset)."""

    __slots__ = ("chunks", "starts", "size")

    def __init__(self, chunks: list[ManifestChunk]) -> None:
        self.chunks = chunks
        self.starts: list[int] = []
        pos = 0
        for c in chunks:
            self.starts.append(pos)
            pos += c.size
        self.size = pos

    def index_at(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1


class ChunkCache:
    """Verified chunk bytes by id (LRU, bounded in bytes), plus decoded manifests."""

    def __init__(
        self,
        reader: ObjectReader,
        max_bytes: int = 64 << 20,
        disk_dir: Path | None = None,
        read_ahead: int = 2,
        read_ahead_workers: int = 1,
        uncached_reads: bool = False,
    ) -> None:
        self.reader = reader
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[bytes, Chunk] = OrderedDict()
        # A chunk may be a view of the span a remote store fetched it in: what counts against
        # ``max_bytes`` is every distinct buffer kept alive, not the chunks' lengths.
        self._held = HeldBytes()
        self._manifests: OrderedDict[bytes, Manifest] = OrderedDict()
        self.disk_dir = disk_dir
        self.hits = 0
        self.misses = 0
        self.read_ahead = read_ahead
        self.read_ahead_workers = read_ahead_workers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[bytes, Future[Chunk]] = {}
        self._next_offset: dict[bytes, int] = {}  # manifest id → where a sequential read goes on
        self._hinted: dict[bytes, int] = {}  # manifest id → chunk the store was told about upto
        # a local store's kernel read-ahead of blob ranges (None: a store without one)
        self._disk_ahead = getattr(getattr(reader, "store", None), "read_ahead_ranges", None)
        # Chunks read past the page cache (``ObjectReader.read_chunk``; ``uncached_reads``: a
        # local store on a disk filesystem): the kernel's read-ahead would only fill the page
        # cache they skip; fetching more chunks at open stands in for it.
        self._uncached_reads = uncached_reads

    @property
    def _uncached(self) -> bool:
        """Whether chunks are read past the page cache (asked each time: the first read that
        finds it cannot be done here turns it off, and the kernel hints are back)."""
        return self._uncached_reads and reads_uncached()

    def manifest(self, loc: Locator) -> Manifest:
        m = self._manifests.get(loc.id)
        if m is None:
            m = Manifest(self.reader.read_manifest(loc))
            self._manifests[loc.id] = m
            if len(self._manifests) > 1024:
                self._manifests.popitem(last=False)
        else:
            self._manifests.move_to_end(loc.id)
        return m

    def chunk(self, loc: Locator) -> Chunk:
        data = self._chunks.get(loc.id)
        if data is not None:
            self._chunks.move_to_end(loc.id)
            self.hits += 1
            return data
        pending = self._pending.pop(loc.id, None)
        if pending is not None:
            data = pending.result()  # raises what the fetch raised (Corruption...)
        else:
            self.misses += 1
            data = self._fetch(loc)
        self._remember(loc.id, data)
        return data

    def _fetch(self, loc: Locator) -> Chunk:
        """Read and verify one chunk (thread-safe: no LMDB, no shared state)."""
        data = self._from_disk(loc)
        if data is None:
            # verifies; Corruption if missing or wrong
            data = self.reader.read_chunk(loc) if self._uncached else self.reader.read_raw(loc)
            self._to_disk(loc, data)
        return data

    def _remember(self, chunk_id: bytes, data: Chunk) -> None:
        replaced = self._chunks.pop(chunk_id, None)
        if replaced is not None:
            self._held.remove(owner_of(replaced))
        self._chunks[chunk_id] = data
        self._held.add(owner_of(data))
        while (self._held.total > self.max_bytes or len(self._chunks) > MAX_ENTRIES) and len(
            self._chunks
        ) > 1:
            _, old = self._chunks.popitem(last=False)
            self._held.remove(owner_of(old))

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.read_ahead_workers, thread_name_prefix="readahead"
            )
        return self._pool

    def _prefetch(self, m: Manifest, first: int) -> None:
        for i in range(first, min(first + self.read_ahead, len(m.chunks))):
            loc = m.chunks[i].loc
            if loc.id in self._chunks or loc.id in self._pending:
                continue
            self._pending[loc.id] = self._workers().submit(self._fetch, loc)
        self._forget_abandoned()

    def _forget_abandoned(self) -> None:
        if len(self._pending) > 4 * self.read_ahead:  # abandoned read-aheads: forget them
            for chunk_id in list(self._pending)[: len(self._pending) - 2 * self.read_ahead]:
                self._pending.pop(chunk_id).cancel()

    def _hint_store(self, mid: bytes, m: Manifest, i: int) -> None:
        """Tell a remote store's cache which chunks a sequential reader at chunk ``i`` reads
        next (it fetches them ahead, in parallel, in a few large requests; a local store
        ignores it). Once per half window, not per read: each hint walks its chunks."""
        end = self._hinted.get(mid, -1)
        sliding = end - STORE_READ_AHEAD <= i < end  # inside the window hinted last
        if sliding and (i < end - STORE_READ_AHEAD // 2 or end >= len(m.chunks)):
            return  # it still reaches half a window ahead, or to the end of the file
        self._hinted[mid] = i + STORE_READ_AHEAD
        locs = [c.loc for c in m.chunks[i : i + STORE_READ_AHEAD]]
        if self._disk_ahead is not None:  # blocking calls: never on the mount's thread
            if self._uncached:
                return
            ranges = [(blob_key(loc), loc.offset, loc.length) for loc in locs]
            self._workers().submit(self._disk_ahead, ranges)
            return
        if sliding:  # half a window ahead of the reader: a worker thread can spare the mount's
            self._workers().submit(self.reader.prefetch, locs)
        else:
            # The first hint of a read (or after a seek), before the chunk read-aheads are
            # queued: they must find their blocks claimed by it, or each would fetch its own
            # blocks in a small GET.
            self.reader.prefetch(locs)

    def start(self, manifest_loc: Locator | None) -> None:
        """A committed file of a local store was opened for reading: have the kernel read its
        first ``read_ahead`` chunk files, fetch the first ``OPEN_AHEAD`` chunks, and count a
        read from its start as sequential. (``cat`` of many files otherwise waited for the
        first chunk of every file, read on the mount's thread.) Nothing for a remote store:
        there a fetch costs a request, and a file opened is not always read."""
        if manifest_loc is None or not self.read_ahead or self._disk_ahead is None:
            return
        mid = manifest_loc.id
        m = self.manifest(manifest_loc)
        if 0 < self._next_offset.get(mid, 0) < m.size:  # being read already, by another open
            return
        # Not read yet, or read to its end before (read again, its pages evicted: an epoch
        # over a dataset larger than memory): a read from the start again.
        self._next_offset[mid] = 0
        if not self._uncached:
            locs = [c.loc for c in m.chunks[: self.read_ahead]]
            self._workers().submit(
                self._disk_ahead, [(blob_key(loc), loc.offset, loc.length) for loc in locs]
            )
        ahead = OPEN_AHEAD_UNCACHED if self._uncached else OPEN_AHEAD
        for i in range(min(ahead, len(m.chunks))):
            loc = m.chunks[i].loc
            if loc.id not in self._chunks and loc.id not in self._pending:
                self._pending[loc.id] = self._workers().submit(self._fetch, loc)
        self._forget_abandoned()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _disk_path(self, loc: Locator) -> Path | None:
        if self.disk_dir is None:
            return None
        h = loc.hex
        return self.disk_dir / h[:2] / h

    def _from_disk(self, loc: Locator) -> bytes | None:
        path = self._disk_path(loc)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hash_bytes(data) != loc.id:
            log.warning("dropping corrupt cached chunk %s", path)
            path.unlink(missing_ok=True)
            return None
        return data

    def _to_disk(self, loc: Locator, data: bytes) -> None:
        path = self._disk_path(loc)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:  # the cache is best effort (a full disk must not fail reads)
            log.debug("cannot cache chunk %s: %s", loc.hex[:12], exc)

    def read(
        self, manifest_loc: Locator | None, offset: int, end: int
    ) -> bytes | bytearray | memoryview:
        """Bytes ``[offset, end)`` of a committed file (``end`` within its size); a memoryview
        into a cached chunk when the range lies in one chunk (no copy)."""
        if manifest_loc is None or end <= offset:
            return b""
        m = self.manifest(manifest_loc)
        end = min(end, m.size)
        if end <= offset:
            return b""
        i = m.index_at(offset)
        mid = manifest_loc.id
        # Sequential: near where the last read of this file ended. The kernel's read-ahead
        # sends several requests at once, so they may arrive slightly out of order.
        last_end = self._next_offset.get(mid)
        sequential = (
            bool(self.read_ahead)
            and last_end is not None
            and (last_end - SEQUENTIAL_SLACK <= offset <= last_end + SEQUENTIAL_SLACK)
        )
        if sequential:
            self._hint_store(mid, m, i)
        first = i
        parts: list[memoryview] = []
        chunks: list[Chunk] = []
        pos = offset
        while pos < end:
            c = m.chunks[i]
            start = m.starts[i]
            data = self.chunk(c.loc)
            chunks.append(data)
            lo, hi = pos - start, min(end - start, c.size)
            parts.append(memoryview(data)[lo:hi])
            pos = start + hi
            i += 1
        if sequential:
            self._prefetch(m, i)
        self._next_offset[mid] = max(end, last_end or 0) if sequential else end
        for per_file in (self._next_offset, self._hinted):
            if len(per_file) > 1024:
                per_file.pop(next(iter(per_file)))
        if len(parts) == 1:
            return parts[0]
        # A read straddling chunks (most 1 MiB reads do: chunks average ~1.1 MiB): one view of
        # the buffer a remote store fetched them in, if it holds them all; else one copy (made
        # outside the GIL when it can: the read-ahead threads need it meanwhile).
        if isinstance(chunks[0], memoryview):  # a remote store's spans (or uncached reads)
            locs = [c.loc for c in m.chunks[first:i]]
            lo, n = offset - m.starts[first], end - offset
            joined = self.reader.joined_view(locs, chunks, lo, n)
            if joined is not None:
                return joined
        return concat(parts)
