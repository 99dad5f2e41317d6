"""Bounded background uploads with read-your-writes and a flush barrier that reports failures.

``UploadQueue`` hands ``upload(key, data)`` calls to a small thread pool so a writer can chunk
and hash the next piece of a file while earlier pieces travel to S3. Its rules:

* **Bounded.** At most ``max_pending_bytes`` (and at least one blob) are queued or in flight;
  ``submit`` blocks until there is room, so memory stays bounded whatever the file size.
* **Read-your-writes.** While a blob is queued or uploading, ``pending(key)`` returns its
  bytes, so ``get``/``exists`` of a key whose upload has not finished still work.
* **Failures surface at the barrier.** A failed upload keeps its bytes. ``flush`` waits for
  everything in flight, then retries the failed blobs and raises if one still fails, so a ref
  is never moved over a blob that did not land. Failed blobs are only dropped once stored, so
  a failure is never "reported to someone else" and forgotten: whoever flushes next retries it.
* **Fail fast.** After a failure, queued uploads are not attempted (they join the failed ones)
  until one retry works: a dead endpoint costs one retry cycle, not one per queued blob. The
  next ``submit`` retries one failed blob first and raises if the store still fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Upload = Callable[[str, bytes], None]


class UploadQueue:
    """Background uploads for one store; thread-safe."""

    def __init__(
        self,
        upload: Upload,
        *,
        workers: int = 8,
        max_pending_bytes: int = 128 << 20,
        name: str = "pfsfs-upload",
    ) -> None:
        self._upload = upload
        self._max_bytes = max_pending_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._cond = threading.Condition()
        self._inflight: dict[str, bytes] = {}
        self._failed: dict[str, tuple[bytes, BaseException]] = {}
        self._inflight_bytes = 0
        self._broken: BaseException | None = None  # the last failure, until an upload works
        self._closed = False

    # -- state ---------------------------------------------------------------------------------
    def pending(self, key: str) -> bytes | None:
        """The bytes of ``key`` while its upload is queued or running, else ``None``.

        A failed upload is not served: the store does not hold it, and reads should say so.
        """
        with self._cond:
            return self._inflight.get(key)

    def busy(self) -> bool:
        with self._cond:
            return bool(self._inflight or self._failed)

    # -- work ---------------------------------------------------------------------------------
    def submit(self, key: str, data: bytes) -> None:
        """Queue an upload; blocks while the queue is full. After a failure, first re-tries
        one failed upload synchronously (raising if the store still fails), so a broken
        store stops the writer at once instead of queueing more work for it."""
        if self._failed:
            self._recover()
        with self._cond:
            if self._closed:
                raise RuntimeError("upload queue is closed")
            if key in self._inflight:
                return  # same key, same bytes: already on its way
            while self._inflight and self._inflight_bytes + len(data) > self._max_bytes:
                self._cond.wait()
        self._enqueue(key, data)

    def _enqueue(self, key: str, data: bytes) -> None:
        with self._cond:
            self._inflight[key] = data
            self._inflight_bytes += len(data)
        self._pool.submit(self._run, key, data)

    def _run(self, key: str, data: bytes) -> None:
        error = self._broken
        if error is None:  # after a failure, queued uploads wait for the next flush
            try:
                self._upload(key, data)
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised by flush
                error = exc
                log.debug("background upload of %s failed: %s", key, exc)
        with self._cond:
            self._inflight.pop(key, None)
            self._inflight_bytes -= len(data)
            if error is not None:
                self._failed[key] = (data, error)
                self._broken = error
            self._cond.notify_all()

    def _recover(self) -> None:
        """Re-upload the first failed blob here (raises if the store still fails); if that
        works, queue the other failed ones again."""
        with self._cond:
            if not self._failed:
                return
            key, (data, _error) = next(iter(self._failed.items()))
        self._upload(key, data)
        with self._cond:
            self._failed.pop(key, None)
            self._broken = None
            again, self._failed = self._failed, {}
        log.debug("store works again; re-queueing %d failed uploads", len(again))
        for k, (d, _e) in again.items():
            self._enqueue(k, d)

    def drain(self) -> None:
        """Block until nothing is queued or running (failures are kept, not retried)."""
        with self._cond:
            while self._inflight:
                self._cond.wait()

    def wait(self, key: str) -> None:
        """Block until ``key``'s upload (if any) has finished, successfully or not."""
        with self._cond:
            while key in self._inflight:
                self._cond.wait()

    def discard(self, key: str) -> None:
        """Forget a failed upload of ``key`` (the blob is being deleted anyway)."""
        self.wait(key)
        with self._cond:
            self._failed.pop(key, None)

    def flush(self) -> None:
        """Wait for every queued upload; retry failed ones; raise if one still fails."""
        self.drain()
        if not self._failed:
            return
        self._recover()
        self.drain()
        with self._cond:
            first = next(iter(self._failed.values()), None)
        if first is not None:
            raise first[1]

    def close(self) -> None:
        """Stop: uploads not yet started are dropped, running ones finish (or fail)."""
        with self._cond:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            if self._failed:
                log.debug("%d failed uploads were never flushed", len(self._failed))
            self._inflight.clear()
            self._failed.clear()
            self._cond.notify_all()
