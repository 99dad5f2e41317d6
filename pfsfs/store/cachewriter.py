"""Writing local cache files in the background, best effort, within a memory bound.

A cold read from S3 moves data faster than this machine's disk takes it (ext4 here: 350–600 MB/s
for fresh files, S3 GETs on loopback up to ~800 MB/s), so writing each fetched block to the cache
before answering would make every cold read as slow as the disk. ``CacheWriter`` takes the
write off the read path: one thread writes queued files in order; nothing is waited for; when
the queue is full the file is simply not cached (a cache may forget; the data was verified and
returned anyway). Until a queued file is written, ``pending(path)`` returns its bytes, so a read
never misses what was just fetched. ``drain`` waits for the queue to empty (``close`` does), so a
finished ``pfsfs get`` leaves its cache complete and no half-written temp files behind.

Two ways in:

* ``submit(path, data)`` keeps a reference to ``data`` until it is written (whole blobs: a few,
  small or already held); at most ``max_bytes`` of them are queued.
* ``submit_copy(path, data)`` copies ``data`` into one of ``copy_slots`` reusable page-aligned
  buffers of ``slot_bytes`` and keeps no reference (the blocks of a big read: a block is a view
  of a 16 MiB download, and holding it would hold the download). The copy is written by
  ``write_copy`` — past the page cache, see ``directio``: a reused buffer is warm memory, a
  page-cache page may not be, and touching cold memory is what made cache writes slow down
  reads. When no slot is free (the disk is more than ``copy_slots`` blocks behind) the block
  is not cached. The slots are one anonymous mapping, touched only as far as they are used,
  most recently freed first; if it cannot be made, blocks are not cached (reads go on).

The thread runs at normal priority: for blocks it neither copies (the caller did) nor hashes
(blocks are stored bare), so it mostly waits for the disk. (It used to run at nice 19, when each
block cost it a hash and a page-cache copy; with those gone, nice 19 only made it fall behind
and cache less — 170–380 MiB of a cold GiB against 270–410 — at the same speed.) Blobs still
cost it a hash each, and where ``O_DIRECT`` is refused, a page-cache copy.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .directio import padded

log = logging.getLogger(__name__)

Data = bytes | memoryview


@dataclass
class _Copy:
    """``length`` bytes copied into ``slot`` (a page-aligned buffer of the writer's)."""

    slot: memoryview
    length: int

    def data(self) -> memoryview:
        return self.slot[: self.length]


class _Slots:
    """``count`` page-aligned buffers of ``size`` bytes in one mapping, made at the first use."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = padded(size)
        self._free: list[memoryview] | None = None

    def take(self) -> memoryview | None:
        if self._free is None:
            self._free = self._make() if self.count else []
        return self._free.pop() if self._free else None

    def _make(self) -> list[memoryview]:
        try:
            # Private: a shared anonymous mapping is shmem, which usually gets no huge pages.
            region = mmap.mmap(-1, self.count * self.size, flags=mmap.MAP_PRIVATE)
        except (OSError, ValueError, AttributeError) as exc:  # no memory; no MAP_PRIVATE
            log.warning("no memory for cache write buffers (%s): data blocks go uncached", exc)
            return []
        try:
            region.madvise(mmap.MADV_HUGEPAGE)  # fewer faults at first touch
        except (OSError, ValueError, AttributeError):
            pass  # a kernel without transparent huge pages: only more faults
        whole = memoryview(region)
        # Reversed: the first slots are taken first, and freed ones again before any untouched
        # one, so a writer that keeps up touches only a few.
        return [whole[i * self.size : (i + 1) * self.size] for i in reversed(range(self.count))]

    def give(self, slot: memoryview) -> None:
        assert self._free is not None
        self._free.append(slot)


class CacheWriter:
    """A bounded queue of files to write, written by one background thread."""

    def __init__(
        self,
        write: Callable[[Path, Data], None],
        max_bytes: int = 128 << 20,
        *,
        write_copy: Callable[[Path, memoryview, int], None] | None = None,
        copy_slots: int = 0,
        slot_bytes: int = 0,
    ) -> None:
        self._write = write
        self._write_copy = write_copy
        self._max_bytes = max_bytes
        self._slots = _Slots(copy_slots if write_copy is not None else 0, slot_bytes)
        self._queue: OrderedDict[Path, Data | _Copy] = OrderedDict()
        self._queued_bytes = 0  # of submitted (referenced) data only: copies live in slots
        self._busy: tuple[Path, Data | _Copy] | None = None  # the file being written now
        self._unwanted = False  # the file being written now was cancelled meanwhile
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, path: Path, data: Data) -> None:
        """Queue ``data`` for ``path``, unless the queue is full (then it is not cached)."""
        with self._cond:
            if not self._wanted(path):
                return
            if self._queue and self._queued_bytes + len(data) > self._max_bytes:
                log.debug("cache write queue full: not caching %s", path)
                return
            self._queue[path] = data
            self._queued_bytes += len(data)
            self._start()

    def submit_copy(self, path: Path, data: Data) -> None:
        """Queue a copy of ``data`` for ``path``, keeping no reference to ``data``; not cached
        if no slot is free or ``data`` does not fit one. Never raises (reads call it)."""
        with self._cond:
            if not self._wanted(path) or len(data) > self._slots.size:
                return
            slot = self._slots.take()
        if slot is None:
            log.debug("no free cache write slot: not caching %s", path)
            return
        try:
            slot[: len(data)] = data  # outside the lock: the slot is ours until queued
        except (TypeError, ValueError) as exc:  # not a flat run of bytes
            log.debug("cannot copy %s for the cache: %s", path, exc)
            with self._cond:
                self._slots.give(slot)
            return
        with self._cond:
            if not self._wanted(path):  # queued by another reader meanwhile
                self._slots.give(slot)
                return
            self._queue[path] = _Copy(slot, len(data))
            self._start()

    def _wanted(self, path: Path) -> bool:
        return not (
            self._closed
            or path in self._queue
            or (self._busy is not None and self._busy[0] == path)
        )

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pfsfs-cache-writer", daemon=True
            )
            self._thread.start()
        self._cond.notify_all()

    def pending(self, path: Path) -> Data | None:
        """The bytes queued (or being written) for ``path``, else None."""
        with self._cond:
            entry = self._queue.get(path)
            if entry is None and self._busy is not None and self._busy[0] == path:
                entry = None if self._unwanted else self._busy[1]
            if isinstance(entry, _Copy):
                return bytes(entry.data())  # the slot is reused once written
            return entry

    def cancel(self, path: Path) -> None:
        """Do not write ``path`` after all (its bytes were found bad): dropped from the queue,
        or removed once written if it is being written now."""
        with self._cond:
            entry = self._queue.pop(path, None)
            if entry is not None:
                self._release(entry)
            if self._busy is not None and self._busy[0] == path:
                self._unwanted = True

    def _release(self, entry: Data | _Copy) -> None:
        if isinstance(entry, _Copy):
            self._slots.give(entry.slot)
        else:
            self._queued_bytes -= len(entry)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                path, entry = self._queue.popitem(last=False)
                self._busy = (path, entry)
            try:
                if isinstance(entry, _Copy):
                    assert self._write_copy is not None
                    self._write_copy(path, entry.slot, entry.length)
                else:
                    self._write(path, entry)
            except Exception as exc:  # noqa: BLE001 - a cache write failing is not an error
                log.debug("cannot cache %s: %s", path, exc)
            finally:
                with self._cond:
                    if self._unwanted:
                        try:
                            path.unlink(missing_ok=True)
                        except OSError as exc:  # the thread must live on: others wait for it
                            log.debug("cannot drop cancelled cache file %s: %s", path, exc)
                    self._release(entry)
                    self._busy, self._unwanted = None, False
                    self._cond.notify_all()

    def drain(self) -> None:
        """Block until every queued file is written."""
        with self._cond:
            while self._queue or self._busy is not None:
                self._cond.wait()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
