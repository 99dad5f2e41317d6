"""The contract every ObjectStore implementation must honour.

Backends are listed in ``store_factories`` (a fixture in ``conftest.py`` / ``store_backends.py``);
each test runs once per backend, against a fresh, empty store.
"""

from __future__ import annotations

import threading

import pytest

from pfsfs.errors import NotFound, RefChanged
from pfsfs.store.base import ObjectStore


def test_put_get_roundtrip(store: ObjectStore) -> None:
    store.put("chunk/aabbccddeeff0011", b"hello world")
    assert store.get("chunk/aabbccddeeff0011") == b"hello world"
    assert store.exists("chunk/aabbccddeeff0011")


def test_get_range(store: ObjectStore) -> None:
    store.put("pack/0123456789abcdef", b"0123456789")
    assert store.get("pack/0123456789abcdef", 3, 4) == b"3456"
    assert store.get("pack/0123456789abcdef", 7) == b"789"


def test_get_missing_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get("chunk/ffffffffffffffff")
    assert not store.exists("chunk/ffffffffffffffff")


def test_put_is_idempotent(store: ObjectStore) -> None:
    store.put("chunk/1111111111111111", b"x" * 1000)
    store.put("chunk/1111111111111111", b"x" * 1000)
    assert store.get("chunk/1111111111111111") == b"x" * 1000


def test_empty_blob(store: ObjectStore) -> None:
    store.put("chunk/2222222222222222", b"")
    assert store.get("chunk/2222222222222222") == b""


def test_large_blob(store: ObjectStore) -> None:
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB
    store.put("chunk/3333333333333333", data)
    assert store.get("chunk/3333333333333333") == data
    assert store.get("chunk/3333333333333333", 1 << 20, 10) == data[1 << 20 : (1 << 20) + 10]


def test_list_by_prefix(store: ObjectStore) -> None:
    store.put("chunk/aaaaaaaaaaaaaaa1", b"1")
    store.put("chunk/bbbbbbbbbbbbbbb2", b"22")
    store.put("commit/ccccccccccccccc3", b"333")
    chunks = {info.key: info.size for info in store.list("chunk/")}
    assert chunks == {"chunk/aaaaaaaaaaaaaaa1": 1, "chunk/bbbbbbbbbbbbbbb2": 2}
    everything = {info.key for info in store.list()}
    assert "commit/ccccccccccccccc3" in everything
    assert all(info.mtime > 0 for info in store.list())


def test_delete(store: ObjectStore) -> None:
    store.put("chunk/4444444444444444", b"gone")
    store.delete("chunk/4444444444444444")
    assert not store.exists("chunk/4444444444444444")
    store.delete("chunk/4444444444444444")  # deleting twice is fine
    assert [i.key for i in store.list("chunk/")] == []


def test_flush_is_safe_to_call(store: ObjectStore) -> None:
    store.flush()
    store.put("chunk/5555555555555555", b"x")
    store.flush()
    assert store.get("chunk/5555555555555555") == b"x"


def test_invalid_keys_rejected(store: ObjectStore) -> None:
    for key in ("../escape", "chunk/../x", "/abs", "a//b", "", "chunk/a b"):
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_ref_create_read_update_delete(store: ObjectStore) -> None:
    assert store.get_ref("branches/r/master") is None
    store.set_ref("branches/r/master", None, b"c1")
    assert store.get_ref("branches/r/master") == b"c1"
    store.set_ref("branches/r/master", b"c1", b"c2")
    assert store.get_ref("branches/r/master") == b"c2"
    store.set_ref("branches/r/master", b"c2", None)
    assert store.get_ref("branches/r/master") is None


def test_ref_create_twice_fails(store: ObjectStore) -> None:
    store.set_ref("repos/r", None, b"v1")
    with pytest.raises(RefChanged):
        store.set_ref("repos/r", None, b"v2")
    assert store.get_ref("repos/r") == b"v1"


def test_ref_cas_with_stale_value_fails(store: ObjectStore) -> None:
    store.set_ref("branches/r/b", None, b"c1")
    store.set_ref("branches/r/b", b"c1", b"c2")
    with pytest.raises(RefChanged):
        store.set_ref("branches/r/b", b"c1", b"c3")
    assert store.get_ref("branches/r/b") == b"c2"


def test_ref_update_of_missing_ref_fails(store: ObjectStore) -> None:
    with pytest.raises(RefChanged):
        store.set_ref("branches/r/none", b"c1", b"c2")
    assert store.get_ref("branches/r/none") is None


def test_list_refs(store: ObjectStore) -> None:
    store.set_ref("branches/a/master", None, b"1")
    store.set_ref("branches/a/dev", None, b"2")
    store.set_ref("branches/b/master", None, b"3")
    assert dict(store.list_refs("branches/a/")) == {
        "branches/a/master": b"1",
        "branches/a/dev": b"2",
    }
    assert len(dict(store.list_refs())) == 3


def test_concurrent_cas_loses_no_update(store: ObjectStore) -> None:
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


def test_head_and_touch(store: ObjectStore) -> None:
    assert store.head("chunk/6666666666666666") is None
    with pytest.raises(NotFound):
        store.touch("chunk/6666666666666666")
    store.put("chunk/6666666666666666", b"abc")
    store.flush()
    info = store.head("chunk/6666666666666666")
    assert info is not None and info.size == 3 and info.mtime > 0
    store.touch("chunk/6666666666666666")  # refreshes (or just checks) without changing data
    assert store.get("chunk/6666666666666666") == b"abc"
    assert store.uncached().get("chunk/6666666666666666") == b"abc"
