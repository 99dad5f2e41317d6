"""The contract every ObjectStore implementation must honour, run over every backend.

``StoreContract`` holds the tests; each ``Test...`` class at the end binds its ``store``
fixture to one backend — the memory twin, the local store, S3 (moto over HTTP, a fresh random
prefix per test) and the read cache in front of S3 — so every backend gets every test once,
each against a fresh, empty store. A new backend is one more class.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsfs.errors import NotFound, RefChanged
from pfsfs.store.base import ObjectStore, StoreProperties
from pfsfs.store.cache import CachingStore

from .s3server import MotoServer
from .store_backends import (
    make_cached_s3_store,
    make_local_store,
    make_memory_store,
    make_s3_store,
)

#: What the store interface used to carry for a read cache; only ``CachingStore`` has them.
CACHE_HOOKS = ("prefetch", "prefetch_ranges", "cached_view", "discard", "uncached")


class StoreContract:
    """The tests; a subclass provides the ``store`` fixture (pytest collects only ``Test*``)."""

    def test_put_get_roundtrip(self, store: ObjectStore) -> None:
        store.put("chunk/aabbccddeeff0011", b"hello world")
        assert store.get("chunk/aabbccddeeff0011") == b"hello world"
        assert store.exists("chunk/aabbccddeeff0011")

    def test_get_range(self, store: ObjectStore) -> None:
        store.put("pack/0123456789abcdef", b"0123456789")
        assert store.get("pack/0123456789abcdef", 3, 4) == b"3456"
        assert store.get("pack/0123456789abcdef", 7) == b"789"

    def test_get_missing_raises_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound):
            store.get("chunk/ffffffffffffffff")
        assert not store.exists("chunk/ffffffffffffffff")

    def test_put_is_idempotent(self, store: ObjectStore) -> None:
        store.put("chunk/1111111111111111", b"x" * 1000)
        store.put("chunk/1111111111111111", b"x" * 1000)
        assert store.get("chunk/1111111111111111") == b"x" * 1000

    def test_empty_blob(self, store: ObjectStore) -> None:
        store.put("chunk/2222222222222222", b"")
        assert store.get("chunk/2222222222222222") == b""

    def test_large_blob(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * (5 * 4096)  # 5 MiB
        store.put("chunk/3333333333333333", data)
        assert store.get("chunk/3333333333333333") == data
        assert store.get("chunk/3333333333333333", 1 << 20, 10) == data[1 << 20 : (1 << 20) + 10]

    def test_list_by_prefix(self, store: ObjectStore) -> None:
        store.put("chunk/aaaaaaaaaaaaaaa1", b"1")
        store.put("chunk/bbbbbbbbbbbbbbb2", b"22")
        store.put("commit/ccccccccccccccc3", b"333")
        chunks = {info.key: info.size for info in store.list("chunk/")}
        assert chunks == {"chunk/aaaaaaaaaaaaaaa1": 1, "chunk/bbbbbbbbbbbbbbb2": 2}
        everything = {info.key for info in store.list()}
        assert "commit/ccccccccccccccc3" in everything
        assert all(info.mtime > 0 for info in store.list())

    def test_delete(self, store: ObjectStore) -> None:
        store.put("chunk/4444444444444444", b"gone")
        store.delete("chunk/4444444444444444")
        assert not store.exists("chunk/4444444444444444")
        store.delete("chunk/4444444444444444")  # deleting twice is fine
        assert [i.key for i in store.list("chunk/")] == []

    def test_flush_is_safe_to_call(self, store: ObjectStore) -> None:
        store.flush()
        store.put("chunk/5555555555555555", b"x")
        store.flush()
        assert store.get("chunk/5555555555555555") == b"x"

    def test_invalid_keys_rejected(self, store: ObjectStore) -> None:
        for key in ("../escape", "chunk/../x", "/abs", "a//b", "", "chunk/a b"):
            with pytest.raises(ValueError):
                store.put(key, b"x")

    def test_ref_create_read_update_delete(self, store: ObjectStore) -> None:
        assert store.get_ref("branches/r/master") is None
        store.set_ref("branches/r/master", None, b"c1")
        assert store.get_ref("branches/r/master") == b"c1"
        store.set_ref("branches/r/master", b"c1", b"c2")
        assert store.get_ref("branches/r/master") == b"c2"
        store.set_ref("branches/r/master", b"c2", None)
        assert store.get_ref("branches/r/master") is None

    def test_ref_create_twice_fails(self, store: ObjectStore) -> None:
        store.set_ref("repos/r", None, b"v1")
        with pytest.raises(RefChanged):
            store.set_ref("repos/r", None, b"v2")
        assert store.get_ref("repos/r") == b"v1"

    def test_ref_cas_with_stale_value_fails(self, store: ObjectStore) -> None:
        store.set_ref("branches/r/b", None, b"c1")
        store.set_ref("branches/r/b", b"c1", b"c2")
        with pytest.raises(RefChanged):
            store.set_ref("branches/r/b", b"c1", b"c3")
        assert store.get_ref("branches/r/b") == b"c2"

    def test_ref_update_of_missing_ref_fails(self, store: ObjectStore) -> None:
        with pytest.raises(RefChanged):
            store.set_ref("branches/r/none", b"c1", b"c2")
        assert store.get_ref("branches/r/none") is None

    def test_list_refs(self, store: ObjectStore) -> None:
        store.set_ref("branches/a/master", None, b"1")
        store.set_ref("branches/a/dev", None, b"2")
        store.set_ref("branches/b/master", None, b"3")
        assert dict(store.list_refs("branches/a/")) == {
            "branches/a/master": b"1",
            "branches/a/dev": b"2",
        }
        assert len(dict(store.list_refs())) == 3

    def test_concurrent_cas_loses_no_update(self, store: ObjectStore) -> None:
        """Threads incrementing one ref by CAS: every increment lands exactly once."""
        store.set_ref("counter", None, b"0")
        per_thread, threads = 25, 4

        def bump() -> None:
            for _ in range(per_thread):
                while True:
                    current = store.get_ref("counter")
                    assert current is not None
                    try:
                        store.set_ref("counter", current, str(int(current) + 1).encode())
                        break
                    except RefChanged:
                        continue

        workers = [threading.Thread(target=bump) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert store.get_ref("counter") == str(per_thread * threads).encode()

    def test_head_and_touch(self, store: ObjectStore) -> None:
        assert store.head("chunk/6666666666666666") is None
        with pytest.raises(NotFound):
            store.touch("chunk/6666666666666666")
        store.put("chunk/6666666666666666", b"abc")
        store.flush()
        info = store.head("chunk/6666666666666666")
        assert info is not None and info.size == 3 and info.mtime > 0
        store.touch("chunk/6666666666666666")  # refreshes (or just checks) without changing data
        assert store.get("chunk/6666666666666666") == b"abc"

    def test_reads_at_and_past_the_end(self, store: ObjectStore) -> None:
        store.put("chunk/7777777777777777", b"0123456789")
        assert store.get("chunk/7777777777777777", 10) == b""
        assert store.get("chunk/7777777777777777", 4, 0) == b""
        with pytest.raises(NotFound):
            store.get("chunk/7777777777777777", 8, 5)  # exact reads never come back short
        with pytest.raises(ValueError):
            store.get("chunk/7777777777777777", -1, 2)

    def test_get_upto_reads_what_there_is(self, store: ObjectStore) -> None:
        store.put("pack/7777777777777778", b"0123456789")
        assert store.get_upto("pack/7777777777777778", 2, 3) == b"234"
        assert store.get_upto("pack/7777777777777778", 8, 5) == b"89"
        assert store.get_upto("pack/7777777777777778", 10, 5) == b""
        assert store.get_upto("pack/7777777777777778", 0, 1 << 20) == b"0123456789"
        with pytest.raises(NotFound):
            store.get_upto("pack/ffffffffffffff78", 0, 5)

    def test_ref_keys_are_not_blob_keys(self, store: ObjectStore) -> None:
        """``refs/...`` is reserved: a blob there could shadow or corrupt the ref table."""
        for key in ("refs", "refs/branches/r/master"):
            with pytest.raises(ValueError):
                store.put(key, b"x")
        with pytest.raises(ValueError):
            store.set_ref("../escape", None, b"x")

    def test_put_copies_a_buffer_the_caller_reuses(self, store: ObjectStore) -> None:
        """``put`` may return before the blob is stored (background uploads): the bytes stored
        are those passed, whatever the caller does with its buffer afterwards."""
        small, big = bytearray(b"a" * 1000), bytearray(b"b" * (1 << 20))
        store.put("chunk/8888888888888881", memoryview(small))
        store.put("chunk/8888888888888882", memoryview(big))
        small[:] = b"z" * len(small)
        big[:] = b"z" * len(big)
        store.flush()
        assert store.get("chunk/8888888888888881") == b"a" * 1000
        assert store.get("chunk/8888888888888882") == b"b" * (1 << 20)

    def test_put_owned_stores_the_buffer(self, store: ObjectStore) -> None:
        store.put_owned("pack/8888888888888883", bytearray(b"owned" * 1000))
        store.flush()
        assert store.get("pack/8888888888888883", 5, 5) == b"owned"

    def test_a_put_that_returned_is_seen_before_flush(self, store: ObjectStore) -> None:
        """Every view of the store sees a ``put`` as soon as it returns, also while the blob
        is still being written in the background: get, exists, head and list."""
        data = bytes(range(256)) * 8192  # 2 MiB: written in the background where that exists
        for i in range(4):
            store.put(f"chunk/99999999999999{i:02d}", data)
        for i in range(4):
            key = f"chunk/99999999999999{i:02d}"
            assert store.exists(key)
            info = store.head(key)
            assert info is not None and info.size == len(data)
        listed = {b.key: b.size for b in store.list("chunk/99")}
        assert listed == {f"chunk/99999999999999{i:02d}": len(data) for i in range(4)}
        assert store.get("chunk/9999999999999903", 1000, 10) == data[1000:1010]
        store.flush()

    def test_listing_while_others_write(self, store: ObjectStore) -> None:
        """A listing runs while other threads put and delete: it fails for none of them and
        shows every blob that was there before it started and stayed."""
        for i in range(10):
            store.put(f"chunk/bbbbbbbbbbbbbb{i:02d}", b"kept")
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn() -> None:
            n = 0
            try:
                while not stop.is_set():
                    key = f"chunk/cccccccccccccc{n % 20:02d}"
                    store.put(key, b"churn")
                    store.delete(key)
                    n += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        worker = threading.Thread(target=churn)
        worker.start()
        try:
            for _ in range(5):
                listed = {b.key for b in store.list("chunk/")}
                assert {f"chunk/bbbbbbbbbbbbbb{i:02d}" for i in range(10)} <= listed
        finally:
            stop.set()
            worker.join()
        assert errors == []

    def test_deleted_refs_are_not_listed(self, store: ObjectStore) -> None:
        store.set_ref("branches/c/master", None, b"1")
        store.set_ref("branches/c/dev", None, b"2")
        store.set_ref("branches/c/dev", b"2", None)
        assert dict(store.list_refs("branches/c/")) == {"branches/c/master": b"1"}

    def test_properties_are_facts_not_probes(self, store: ObjectStore) -> None:
        props = store.properties
        assert isinstance(props, StoreProperties)
        with pytest.raises(dataclasses.FrozenInstanceError):
            props.remote = not props.remote  # type: ignore[misc]
        assert (store.shared, store.pack_large_chunks) == (props.shared, props.pack_large_chunks)
        store.check()  # a healthy store passes its own early check

    def test_clean_writes_leave_no_temp_files(self, store: ObjectStore) -> None:
        store.put("chunk/aaaaaaaaaaaaaa04", b"x" * 1000)
        store.flush()
        assert store.remove_temp(0.0) == (0, 0)

    def test_the_interface_is_cache_free(self, store: ObjectStore) -> None:
        """No store answers "am I a cache?" nor offers a way below itself: the repository
        holds the read cache and gives it to its reader (``ObjectReader(cache=...)``)."""
        for hook in CACHE_HOOKS:
            assert not hasattr(ObjectStore, hook)
        assert {f.name for f in dataclasses.fields(StoreProperties)} == {
            "remote",
            "shared",
            "pack_large_chunks",
        }

# -- the backends ------------------------------------------------------------------------------
def _closing(store: ObjectStore) -> Iterator[ObjectStore]:
    try:
        yield store
    finally:
        store.close()


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ObjectStore]:
        yield from _closing(make_memory_store(tmp_path))


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ObjectStore]:
        yield from _closing(make_local_store(tmp_path))


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path, s3_server: MotoServer) -> Iterator[ObjectStore]:
        yield from _closing(make_s3_store(tmp_path, s3_server))


class TestCachedS3Store(StoreContract):
    """The read cache must keep the contract of the store it fronts."""

    @pytest.fixture
    def store(self, tmp_path: Path, s3_server: MotoServer) -> Iterator[ObjectStore]:
        yield from _closing(make_cached_s3_store(tmp_path, s3_server))

    def test_read_hints_never_change_what_is_read(self, store: CachingStore) -> None:
        """The cache's own ``prefetch``, ``prefetch_ranges``, ``cached_view`` and ``discard``:
        whatever they do, reads return the blob."""
        data = bytes(range(256)) * 1024
        store.put("pack/aaaaaaaaaaaaaa01", data)
        store.put("chunk/aaaaaaaaaaaaaa02", b"chunk")
        store.put("pack/4daaaaaaaaaaaa03", data)  # a metadata pack: cached whole
        store.flush()
        store.prefetch_ranges([("pack/4daaaaaaaaaaaa03", 7, 70)])
        assert store.get("pack/4daaaaaaaaaaaa03", 7, 70) == data[7:77]
        store.prefetch(["chunk/aaaaaaaaaaaaaa02", "chunk/ffffffffffffff02"])
        store.prefetch_ranges(
            [("pack/aaaaaaaaaaaaaa01", 100, 5000), ("pack/ffffffffffffff01", 0, 9)]
        )
        assert store.get("pack/aaaaaaaaaaaaaa01", 100, 5000) == data[100:5100]
        view = store.cached_view("pack/aaaaaaaaaaaaaa01", 200, 300)
        assert view is None or bytes(view) == data[200:500]
        store.discard("pack/aaaaaaaaaaaaaa01", 100, 5000)
        store.discard("chunk/aaaaaaaaaaaaaa02", 0, 5)
        assert store.get("pack/aaaaaaaaaaaaaa01", 100, 5000) == data[100:5100]
        assert store.get("chunk/aaaaaaaaaaaaaa02") == b"chunk"
        assert store.remove_temp(0.0) == (0, 0)  # nothing was left half-written
