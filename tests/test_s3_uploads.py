"""``UploadQueue`` (the S3 store's background uploads) with a fake upload function: no server.

What it promises: bounded memory, read-your-writes while queued, every failure reported at the
next ``flush`` (never swallowed, never silently handed to someone else), one retry cycle, not
one per queued blob, against a dead store, and recovery once the store works again.
"""

from __future__ import annotations

import threading
import time

import pytest

from pfsfs.store.uploads import UploadQueue


class FakeStore:
    """Records uploads; ``down`` makes them fail; ``gate`` holds them until set."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.attempts = 0
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0

    def upload(self, key: str, data: bytes) -> None:
        with self.lock:
            self.attempts += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.gate.wait(10)
            if self.down:
                raise OSError(f"store down while writing {key}")
            with self.lock:
                self.stored[key] = data
        finally:
            with self.lock:
                self.running -= 1


def test_uploads_run_in_parallel_and_flush_waits_for_all() -> None:
    fake = FakeStore()
    q = UploadQueue(fake.upload, workers=4)
    fake.gate.clear()
    for i in range(8):
        q.submit(f"k{i}", b"x" * 10)
    assert q.pending("k3") == b"x" * 10  # read-your-writes while queued
    done = threading.Event()
    threading.Thread(target=lambda: (q.flush(), done.set())).start()
    time.sleep(0.1)
    assert not done.is_set()  # the barrier waits
    fake.gate.set()
    assert done.wait(5)
    assert len(fake.stored) == 8 and fake.max_running == 4
    assert q.pending("k3") is None
    q.close()


def test_memory_is_bounded() -> None:
    fake = FakeStore()
    q = UploadQueue(fake.upload, workers=2, max_pending_bytes=100)
    fake.gate.clear()
    q.submit("a", b"x" * 60)
    blocked = threading.Event()

    def second() -> None:
        q.submit("b", b"y" * 60)  # 120 > 100: waits for "a"
        blocked.set()

    threading.Thread(target=second).start()
    time.sleep(0.1)
    assert not blocked.is_set()
    fake.gate.set()
    assert blocked.wait(5)
    q.flush()
    q.close()


def test_a_failure_surfaces_at_every_flush_until_the_store_works() -> None:
    fake = FakeStore()
    q = UploadQueue(fake.upload, workers=2)
    fake.down = True
    fake.gate.clear()
    for i in range(20):
        q.submit(f"k{i}", b"data")
    fake.gate.set()
    with pytest.raises(OSError, match="store down"):
        q.flush()
    assert fake.attempts <= 2 + 1  # the first failures, then one retry at the barrier
    assert q.pending("k5") is None  # a failed blob is not served as if stored
    with pytest.raises(OSError):  # reported again, not forgotten
        q.flush()
    with pytest.raises(OSError):  # and a new write stops at once while the store is down
        q.submit("new", b"x")
    fake.down = False
    q.submit("new", b"x")  # retries one failed blob first: it works now
    q.flush()
    assert set(fake.stored) == {f"k{i}" for i in range(20)} | {"new"}
    q.close()


def test_close_drops_queued_work_and_waits_for_running() -> None:
    fake = FakeStore()
    q = UploadQueue(fake.upload, workers=1)
    fake.gate.clear()
    for i in range(5):
        q.submit(f"k{i}", b"x")
    threading.Timer(0.1, fake.gate.set).start()
    q.close()
    assert fake.attempts == 1  # the running one finished; the queued ones were dropped
