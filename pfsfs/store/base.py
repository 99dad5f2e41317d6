"""The narrow object-store interface every backend implements.

Two kinds of state:

* **Blobs** — immutable bytes under a string key (``chunk/<hex>``, ``commit/<hex>``,
  ``pack/<hex>``). ``put`` of an existing key with the same bytes is a no-op in effect;
  content-addressed writes are idempotent. ``get`` may read a byte range (packs are read that
  way). After ``put`` returns *and* ``flush`` has returned, the blob survives a crash.
* **Refs** — small mutable values (branch heads, repo records) that move only by
  compare-and-swap, so two writers can never lose each other's updates.

Keys are ``/``-separated, made of ``[A-Za-z0-9._-]`` components; backends may map them to
fan-out directories or prefixes as they see fit. Ref names follow the same rule.

What differs between stores is stated as facts, not discovered by probing: every store has a
``properties`` value (``StoreProperties``) that callers branch on — whether requests are
remote, whether other machines share the store, whether writers should pack large chunks.

The interface is cache-free: blobs by key, byte ranges (``get``, ``get_upto``), refs with
compare-and-swap, listing, ``properties``, and the write and durability calls (``put``,
``put_owned``, ``flush``). The read cache of a remote store (``cache.CachingStore``) is a
decorator that the ``Repository`` builds around its store and hands to the object reader
(``ObjectReader(store, index, cache=...)``) explicitly: read hints (``prefetch_ranges``),
views of fetched buffers (``cached_view``) and dropping a bad range (``discard``) are the
cache's own methods, and the repository's ``store`` is always the store itself (what fsck,
gc and copies read).

Every implementation passes the one contract suite, ``tests/test_store_contract.py``
(memory, local, S3 over HTTP, and the read cache in front of S3).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import NotFound

#: Chunks (~64 MiB) one sequential reader (a mount's file, a ``get`` of one file) has a remote
#: store's read cache fetch ahead of it: several spans in flight, and half of the memory that
#: holds fetched blocks until they are read (``CachingStore``'s ``memory_bytes``, 128 MiB): a
#: reader further ahead, or several readers this far ahead, would have their blocks dropped
#: before they got to them.
SEQUENTIAL_AHEAD_CHUNKS = 56

_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def check_key(key: str) -> str:
    """Reject keys that could escape a directory or prefix; return the key unchanged."""
    if not _KEY_RE.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid store key {key!r}")
    return key


def check_blob_key(key: str) -> str:
    """``check_key``, and keys under ``refs/`` are reserved for refs (S3 keeps refs there, the
    local store its ref table): no blob may shadow them."""
    check_key(key)
    if key == "refs" or key.startswith("refs/"):
        raise ValueError(f"store key {key!r} is reserved for refs")
    return key


@dataclass(frozen=True)
class StoreProperties:
    """Facts about a store that its callers act on (instead of testing its type or identity).

    * ``remote`` — every request is a network round trip (S3): readers prefetch ahead, a mount
      keeps a local cache of verified chunks, ``pfsfs init`` and ``sync`` validate the store
      early with ``check``.
    * ``shared`` — other machines may write to (and gc) this store at the same time. Writers
      then re-validate old dedup hits with ``touch`` and gc re-checks each blob before
      deleting it.
    * ``pack_large_chunks`` — every request has a high fixed cost (S3): writers then pack
      *all* file chunks, large ones too, into data packs of ~16 MiB, so a big file moves in a
      few large requests instead of one per ~1 MiB chunk; readers fetch ranges of those packs.
    """

    remote: bool = False
    shared: bool = False
    pack_large_chunks: bool = False


@dataclass(frozen=True)
class BlobInfo:
    """What ``list`` reports of one blob."""

    key: str
    size: int
    mtime: float  # seconds since the epoch; gc's grace period is measured against it


class ObjectStore(abc.ABC):
    """Blob + ref storage. Implementations must pass ``tests/test_store_contract.py``."""

    #: A short human description, e.g. ``/home/x/.local/share/pfsfs/store`` or ``s3://b/p``.
    location: str = ""
    #: What callers may rely on (see ``StoreProperties``); a class sets its own.
    properties: StoreProperties = StoreProperties()

    @property
    def shared(self) -> bool:
        """``properties.shared``: other machines write to and collect this store too."""
        return self.properties.shared

    @property
    def pack_large_chunks(self) -> bool:
        """``properties.pack_large_chunks``: writers pack big files' chunks too."""
        return self.properties.pack_large_chunks

    def check(self) -> None:  # noqa: B027 - optional hook: nothing to validate by default
        """Validate early that the store is reachable and usable (a remote store: bucket,
        endpoint, credentials), raising one ``StoreError`` naming the problem. Stores with
        nothing to check (local, memory) do nothing."""

    # -- blobs -------------------------------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key`` atomically: readers see all of it or nothing."""

    def put_owned(self, key: str, data: bytearray) -> None:
        """``put``, handing ``data`` over: the caller never reads or changes it again, so a
        store that uploads in the background may keep it instead of copying it (a 16 MiB pack
        copy per put is a tenth of the CPU of an S3 ingest here). A write primitive, not a
        cache hook: what is stored is exactly ``put``'s."""
        self.put(key, data)

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the blob (or ``length`` bytes from ``offset``). Raises ``NotFound``."""

    def get_upto(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``: fewer at the end of the blob, none past it.
        Raises ``NotFound`` only if the blob is missing. (A read cache fetches spans of packs
        this way; a remote store does it in one request, so it overrides this.)"""
        try:
            return bytes(self.get(key, offset, length))
        except NotFound:
            return bytes(self.get(key, offset))[:length]  # short: the rest, or NotFound

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix``, in no particular order."""

    def head(self, key: str) -> BlobInfo | None:
        """Size and modification time of one blob, or None if it is missing."""
        for info in self.list(key):
            if info.key == key:
                return info
        return None

    def touch(self, key: str) -> None:
        """Refresh a blob's modification time, so that a gc running elsewhere treats it as young
        (within its grace period) and keeps it. Raises ``NotFound`` if the blob is gone. The
        default only checks existence: enough for stores no other machine collects."""
        if not self.exists(key):
            raise NotFound(f"object {key} is missing from the store at {self.location}")

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; deleting a missing key is not an error."""

    def flush(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Durability barrier: every ``put`` that returned before this call is on stable storage
        when it returns. Callers flush before moving a ref to point at new objects."""

    # -- refs --------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_ref(self, name: str) -> bytes | None:
        """The ref's current value, or ``None`` if it does not exist."""

    @abc.abstractmethod
    def set_ref(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        """Compare-and-swap: set ``name`` to ``new`` only if its value is ``expected``.

        ``expected=None`` means "must not exist" (create); ``new=None`` deletes the ref.
        Raises ``RefChanged`` if the current value differs — nothing is written then.
        """

    @abc.abstractmethod
    def list_refs(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """Every ``(name, value)`` whose name starts with ``prefix``."""

    def remove_temp(self, older_than: float) -> tuple[int, int]:
        """Delete the temp files writers killed mid-``put`` left, last modified before
        ``older_than`` (epoch seconds); return (files, bytes). Only a store whose ``put`` is a
        temp file and a rename has any (local); others' writes are atomic: (0, 0)."""
        return 0, 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, environments)."""
