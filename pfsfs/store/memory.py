"""An object store in this process's memory: the twin of the local and S3 stores, for tests.

Same contract, same errors (``tests/test_store_contract.py`` runs on it like on the others):
blobs are immutable bytes under checked keys, a short or missing read is ``NotFound``, refs
move only by compare-and-swap and a lost race is ``RefChanged``. Nothing survives the process,
so ``flush`` has nothing to make durable; every call is atomic under one lock, which makes the
store safe to share between threads (the mount's and the writers' alike).

``Repository(home, config, MemoryObjectStore(), Index(...))`` is a whole repository without a
store on disk (``tests/store_backends.memory_repository``). A home's ``config.json`` cannot
name it: the next process would find an empty store, and every commit of the last one gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from ..errors import NotFound, RefChanged
from .base import BlobInfo, ObjectStore, StoreProperties, check_blob_key, check_key


class MemoryObjectStore(ObjectStore):
    """Blobs and refs in two dicts under one lock."""

    properties = StoreProperties()

    def __init__(self, location: str = "memory") -> None:
        self.location = location
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[bytes, float]] = {}  # key -> (bytes, mtime)
        self._refs: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"MemoryObjectStore({self.location!r}, {len(self._blobs)} blobs)"

    def _missing(self, key: str) -> NotFound:
        return NotFound(f"object {key} is missing from the store at {self.location}")

    # -- blobs -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | memoryview) -> None:
        check_blob_key(key)
        blob = bytes(data)  # a private copy: the caller's buffer may change after we return
        with self._lock:
            if key not in self._blobs:  # content-addressed: same key, same bytes
                self._blobs[key] = (blob, time.time())

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_blob_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        with self._lock:
            found = self._blobs.get(key)
        if found is None:
            raise self._missing(key)
        blob = found[0]
        if offset == 0 and length is None:
            return blob
        data = blob[offset:] if length is None else blob[offset : offset + length]
        if length is not None and len(data) != length:
            raise NotFound(f"object {key} in {self.location} is shorter than expected")
        return data

    def exists(self, key: str) -> bool:
        check_blob_key(key)
        with self._lock:
            return key in self._blobs

    def head(self, key: str) -> BlobInfo | None:
        check_blob_key(key)
        with self._lock:
            found = self._blobs.get(key)
        return None if found is None else BlobInfo(key, len(found[0]), found[1])

    def touch(self, key: str) -> None:
        check_blob_key(key)
        with self._lock:
            found = self._blobs.get(key)
            if found is None:
                raise self._missing(key)
            self._blobs[key] = (found[0], time.time())

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._lock:  # a snapshot: callers may put and delete while iterating
            found = [(k, len(b), t) for k, (b, t) in self._blobs.items() if k.startswith(prefix)]
        for key, size, mtime in found:
            yield BlobInfo(key, size, mtime)

    def delete(self, key: str) -> None:
        check_blob_key(key)
        with self._lock:
            self._blobs.pop(key, None)

    # -- refs --------------------------------------------------------------------------------
    def get_ref(self, name: str) -> bytes | None:
        check_key(name)
        with self._lock:
            return self._refs.get(name)

    def set_ref(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        check_key(name)
        with self._lock:
            if self._refs.get(name) != expected:
                raise RefChanged(f"ref {name} changed concurrently")
            if new is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = bytes(new)

    def list_refs(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        with self._lock:
            found = sorted((n, v) for n, v in self._refs.items() if n.startswith(prefix))
        yield from found
