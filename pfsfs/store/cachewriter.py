"""Writing local cache files in the background, best effort, within a memory bound.

A cold read from S3 moves data faster than this machine's disk takes it (ext4 here: 350–600 MB/s
for fresh files, S3 GETs on loopback up to ~800 MB/s), so writing each fetched block to the cache
before answering would make every cold read as slow as the disk. ``CacheWriter`` takes the
write off the read path: one thread writes queued files in order; ``submit`` never blocks; when
more than ``max_bytes`` are queued the file is simply not cached (a cache may forget; the data
was verified and returned anyway). Until a queued file is written,
``pending(path)`` returns its bytes, so a read never misses what was just fetched. ``drain``
waits for the queue to empty (``close`` does), so a finished ``pfsfs get`` leaves its cache
complete and no half-written temp files behind.

The thread runs at the lowest CPU priority (nice 19; Linux gives each thread its own). Writing a
file costs CPU (hashing it, copying it into the page cache, the kernel's writeback), and on a
small machine that CPU is taken from the reader and the S3 server it reads from: measured on
2 cores (moto on the same machine), three back-to-back cold 1 GiB reads through an S3 mount
went from 322–477 to 407–541 MB/s. On a busy machine the writer then falls behind and drops
files instead of slowing reads (a cold read may leave part of a big file uncached).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

Data = bytes | memoryview


class CacheWriter:
    """A bounded queue of ``(path, data)`` written by one background thread."""

    def __init__(self, write: Callable[[Path, Data], None], max_bytes: int = 128 << 20) -> None:
        self._write = write
        self._max_bytes = max_bytes
        self._queue: OrderedDict[Path, Data] = OrderedDict()
        self._queued_bytes = 0
        self._busy: tuple[Path, Data] | None = None  # the file being written now
        self._unwanted = False  # the file being written now was cancelled meanwhile
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, path: Path, data: Data) -> None:
        """Queue ``data`` for ``path``, unless the queue is full (then it is not cached)."""
        with self._cond:
            if self._closed:
                return
            if path in self._queue or (self._busy is not None and self._busy[0] == path):
                return
            if self._queue and self._queued_bytes + len(data) > self._max_bytes:
                log.debug("cache write queue full: not caching %s", path)
                return
            self._queue[path] = data
            self._queued_bytes += len(data)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pfsfs-cache-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def pending(self, path: Path) -> Data | None:
        """The bytes queued (or being written) for ``path``, else None."""
        with self._cond:
            data = self._queue.get(path)
            if data is None and self._busy is not None and self._busy[0] == path:
                data = self._busy[1]
            return data

    def cancel(self, path: Path) -> None:
        """Do not write ``path`` after all (its bytes were found bad): dropped from the queue,
        or removed once written if it is being written now."""
        with self._cond:
            data = self._queue.pop(path, None)
            if data is not None:
                self._queued_bytes -= len(data)
            if self._busy is not None and self._busy[0] == path:
                self._unwanted = True

    def _run(self) -> None:
        _lowest_priority()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                path, data = self._queue.popitem(last=False)
                self._queued_bytes -= len(data)
                self._busy = (path, data)
            try:
                self._write(path, data)
            except Exception as exc:  # noqa: BLE001 - a cache write failing is not an error
                log.debug("cannot cache %s: %s", path, exc)
            finally:
                with self._cond:
                    if self._unwanted:
                        path.unlink(missing_ok=True)
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


def _lowest_priority() -> None:
    """Make the calling thread yield the CPU to everything else (best effort)."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere a thread id is no pid: setpriority would renice something else
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as exc:  # not allowed (a sandbox): only slower reads
        log.debug("cannot lower the cache writer's priority: %s", exc)
