"""Reading and writing located objects: chunks, manifests and trees, packed or standalone.

``ObjectWriter`` is one write session (a ``put``, a snapshot): small objects go into an
in-memory pack buffer that is written as one blob when it fills or the session ends; large
chunks are written as their own blob — except on stores where every request is expensive
(``store.pack_large_chunks``, S3), where they are packed too, so a 1 GiB file is ~64 PUTs of
16 MiB instead of ~900 of 1.1 MiB. Objects already known durable (index ``objects``) or
already written in this session are not written again. ``finish`` flushes the store (the
durability barrier) and only then records the new locators in the index, so the index never
names an object a crash could have lost.

``ObjectReader`` fetches and *verifies*: every chunk and object is re-hashed on read —
wrong bytes are never returned. It is given the store and, for a remote store, the local read
cache in front of it (``cache``, a ``store.cache.CachingStore``: the ``Repository`` decides,
the reader never probes). It reads through the cache; a mismatch there is first taken for the
cache's fault (the range is discarded from it and read from the store itself); a mismatch in
the store raises ``Corruption``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from . import model
from .errors import Corruption, NotFound, StoreError
from .ids import hash_bytes, to_hex
from .index import Index
from .model import Entry, Locator, ManifestChunk
from .store.base import ObjectStore

if TYPE_CHECKING:
    from .store.cache import CachingStore

log = logging.getLogger(__name__)

#: Objects smaller than this go into packs (one blob per ~16 MiB instead of one per object).
PACK_THRESHOLD = 128 << 10
PACK_TARGET = 16 << 20
#: On a shared store, dedup hits recorded longer ago than this are re-validated (touched).
#: Must stay well below the gc grace period of shared stores (one hour by default).
REVALIDATE_AFTER = 600.0
#: Dedup lookups done in one read transaction of the index before it is renewed.
LOOKUPS_PER_TXN = 4096


class _PackBuffer:
    """An open pack: objects appended in memory, written as one blob when sealed."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.name = b""
        self.data = bytearray()

    def append(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """Copy ``data`` in; return (BLAKE3 of the copy, its offset). Hashing the copy, not
        the caller's buffer, means what is stored is exactly what is named, even if the
        source (an mmap of a file someone is writing) changes meanwhile."""
        start = len(self.data)
        self.data += data
        view = memoryview(self.data)
        try:
            return hash_bytes(view[start:]), start
        finally:
            view.release()  # a bytearray with an exported view cannot grow

    def append_hashed(self, data: bytes | memoryview) -> int:
        """Copy in ``data`` the caller hashed (immutable ``bytes``); return its offset."""
        start = len(self.data)
        self.data += data
        return start

    def drop_from(self, start: int) -> None:
        """Take back the last ``append`` (its content was already stored)."""
        del self.data[start:]

    def locate(self, object_id: bytes, start: int) -> Locator:
        if not self.name:
            self.name = model.new_pack_name(self.tag)
        return Locator(object_id, self.name, start, len(self.data) - start)

    def seal(self, store: ObjectStore) -> None:
        if self.data:
            store.put_owned(model.pack_key(self.name), self.data)  # ours no more: reset below
        self.reset()

    def reset(self) -> None:
        self.name = b""
        self.data = bytearray()


class ObjectWriter:
    """One write session against a store; not thread-safe.

    Metadata (manifests, trees) and small file content go to separate packs, so reading every
    tree of a commit touches only the small metadata packs, never the file data.
    """

    def __init__(self, store: ObjectStore, index: Index) -> None:
        self.store = store
        self.index = index
        self._pending: dict[bytes, Locator] = {}
        self._new: list[Locator] = []
        self._touched: set[str] = set()
        self._packs = {
            model.DATA_PACK: _PackBuffer(model.DATA_PACK),
            model.META_PACK: _PackBuffer(model.META_PACK),
        }
        self.bytes_written = 0  # stored bytes this session added (after dedup)
        self._pack_large = store.pack_large_chunks
        self._txn: Any = None  # the read transaction of dedup lookups (``_lookup_txn``)
        self._lookups = 0
        self._txn_at = 0.0

    def _known(self, object_id: bytes, length: int) -> Locator | None:
        loc = self._pending.get(object_id)
        if loc is not None:
            return loc
        found = self.index.get_object(object_id, self._lookup_txn())
        if found is None:
            return None
        loc, verified_at = found
        if loc.length != length:
            # Same id, same bytes, same length: this entry is damaged (LMDB values carry no
            # checksum). Never reference it; store the object again instead.
            log.warning(
                "the index's entry for object %s is damaged (length %d, not %d); storing the "
                "object again (run `pfsfs fsck --deep`)",
                loc.hex[:16],
                loc.length,
                length,
            )
            self._end_lookups()
            self.index.drop_objects([object_id])
            return None
        if self.store.shared and time.time() - verified_at > REVALIDATE_AFTER:
            # Another machine's gc may have deleted it since (it may have been unreachable for
            # longer than the grace period); touching also restarts that grace period, so the
            # blob outlives the time until our ref move.
            key = model.blob_key(loc)
            if key not in self._touched:
                try:
                    self.store.touch(key)
                except NotFound:
                    self.index.drop_objects([object_id])
                    return None
                self._touched.add(key)
            self._new.append(loc)  # re-recorded with a fresh verified_at at finish
        self._pending[object_id] = loc
        return loc

    def _lookup_txn(self) -> Any:
        """One read transaction for many dedup lookups (a transaction per lookup is half the
        cost of storing a small file), renewed every ``LOOKUPS_PER_TXN`` so a long session
        does not pin old pages of the index (nor miss for long what others recorded)."""
        self._lookups += 1
        if self._txn is not None and (
            self._lookups > LOOKUPS_PER_TXN or time.monotonic() - self._txn_at > 1.0
        ):
            self._end_lookups()
        if self._txn is None:
            self._txn = self.index.begin_read()
            self._txn_at = time.monotonic()
            self._lookups = 1
        return self._txn

    def _end_lookups(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def _record(self, loc: Locator) -> Locator:
        self.bytes_written += loc.length
        self._pending[loc.id] = loc
        self._new.append(loc)
        return loc

    def _put(self, data: bytes | memoryview, tag: bytes) -> Locator:
        immutable = isinstance(data, bytes) or (
            isinstance(data, memoryview) and isinstance(data.obj, bytes)
        )
        if len(data) < PACK_THRESHOLD or (tag == model.DATA_PACK and self._pack_large):
            pack = self._packs[tag]
            if immutable:  # cannot change: hash it before copying it in, and only if new
                object_id = hash_bytes(data)
                known = self._known(object_id, len(data))
                if known is not None:
                    return known
                start = pack.append_hashed(data)
            else:
                object_id, start = pack.append(data)
                known = self._known(object_id, len(data))
                if known is not None:
                    pack.drop_from(start)
                    return known
            loc = self._record(pack.locate(object_id, start))
            if len(pack.data) >= PACK_TARGET:
                pack.seal(self.store)
            return loc
        if not immutable:
            # One private copy (the store needs one anyway), hashed as stored. A view of an
            # immutable ``bytes`` (``transfer.cut_fd``) is stored as it is: it cannot change.
            data = bytes(data)
        object_id = hash_bytes(data)
        known = self._known(object_id, len(data))
        if known is not None:
            return known
        self.store.put(model.chunk_key(object_id), data)
        return self._record(Locator(object_id, b"", 0, len(data)))

    def put_chunk(self, data: bytes | memoryview) -> Locator:
        """Store one chunk of file content (raw bytes, id = BLAKE3 of them)."""
        return self._put(data, model.DATA_PACK)

    def put_encoded(self, data: bytes) -> Locator:
        """Store an encoded object (manifest, tree)."""
        return self._put(data, model.META_PACK)

    def put_manifest(self, chunks: list[ManifestChunk]) -> Locator:
        return self.put_encoded(model.encode_manifest(chunks))

    def put_tree(self, entries: dict[bytes, Entry]) -> Locator:
        return self.put_encoded(model.encode_tree(entries))

    def put_commit(self, commit_bytes: bytes) -> bytes:
        """Write a commit as a standalone blob (refs point at commits by id alone)."""
        commit_id = hash_bytes(commit_bytes)
        self.store.put(model.commit_key(commit_id), commit_bytes)
        return commit_id

    def finish(self) -> None:
        """Write the open pack, make everything durable, then record it in the index."""
        self._end_lookups()
        for pack in self._packs.values():
            pack.seal(self.store)
        self.store.flush()
        if self._new:
            self.index.add_objects(self._new)
        self._new = []
        self._pending.clear()

    def abandon(self) -> None:
        """Drop the session: what was written stays unreferenced until gc removes it."""
        self._end_lookups()
        for pack in self._packs.values():
            pack.reset()
        self._new = []
        self._pending.clear()


class ObjectReader:
    """Verified reads with a small in-process cache of decoded trees and manifests.

    ``store`` is the store itself; ``cache``, if given, the local read cache in front of it:
    reads, read hints and views go to the cache, and what it returns wrong to the store."""

    def __init__(
        self,
        store: ObjectStore,
        index: Index,
        cache_entries: int = 4096,
        *,
        cache: CachingStore | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.read_cache = cache
        #: Where reads go first: the read cache if there is one, else the store.
        self._source: ObjectStore = cache if cache is not None else store
        self._cache: OrderedDict[bytes, object] = OrderedDict()
        self._cache_entries = cache_entries

    def read_raw(self, loc: Locator) -> bytes:
        """The located object's bytes, verified against its id. What the read cache returned
        wrong (or short) is discarded there and read from the store itself."""
        key = model.blob_key(loc)
        data = self._get_verified(self._source, key, loc, cached=self.read_cache is not None)
        if data is None:
            if self.read_cache is not None:
                self.read_cache.discard(key, loc.offset, loc.length)
                data = self._get_verified(self.store, key, loc)
                if data is not None:
                    log.warning(
                        "object %s in %s: the read cache's copy was bad or short (or a bad "
                        "response was cached); dropped it and read the store again",
                        loc.hex[:16],
                        key,
                    )
            if data is None:
                raise Corruption(
                    f"object {loc.hex[:16]} in {key} is corrupt (content does not match its "
                    "hash); run `pfsfs fsck`"
                )
        return data

    def read_chunk(self, loc: Locator) -> bytes | memoryview:
        """``read_raw`` for bulk reads of chunk data the caller keeps elsewhere (a mount's
        page cache): a chunk blob of its own from a local store past the page cache when that
        holds little of it (``get_uncached``; packed small objects are read the ordinary way,
        their neighbours cached with them), else — or if that fails or the bytes are not
        right — ``read_raw`` (whose errors are the ones raised)."""
        uncached = getattr(self.store, "get_uncached", None)
        if uncached is not None and self.read_cache is None and not loc.pack:
            try:
                data = uncached(model.blob_key(loc), loc.offset, loc.length)
            except (NotFound, StoreError):  # an I/O error the ordinary read may not have
                data = None
            if data is not None and hash_bytes(data) == loc.id:
                return data
        return self.read_raw(loc)

    @staticmethod
    def _get_verified(
        store: ObjectStore, key: str, loc: Locator, *, cached: bool = False
    ) -> bytes | None:
        """The object from ``store`` if it matches its id; None if it does not (or comes back
        short: a pack whose cached end was cut). ``cached``: ``store`` is a read cache, whose
        miss is no proof that the store lacks the object."""
        try:
            if loc.pack:
                data = store.get(key, loc.offset, loc.length)
            else:
                data = store.get(key)
        except NotFound:
            if cached:
                return None  # the cache may be short of it: the store may not
            raise Corruption(
                f"object {loc.hex[:16]} is missing from the store ({key}); run `pfsfs fsck`"
            ) from None
        return data if hash_bytes(data) == loc.id else None

    def joined_view(
        self, locs: Sequence[Locator], verified: Sequence[bytes | memoryview], lo: int, n: int
    ) -> memoryview | None:
        """``n`` bytes from ``lo`` into the run ``locs`` — consecutive objects stored back to
        back in one pack, already read and verified as ``verified`` — as one view, without
        joining copies; None if that cannot be had (the caller joins the parts then).

        The read cache hands out views of the buffer a ranged GET filled; when the verified
        parts are all views of one such buffer and the cache still holds the range in it
        (``cached_view``: memory only, no fetch), that view holds exactly the verified bytes
        (the buffer is immutable ``bytes``). Any other answer — no cache, nothing, another
        buffer (refetched meanwhile) — gives None."""
        if self.read_cache is None:
            return None
        owner = verified[0].obj if isinstance(verified[0], memoryview) else None
        if type(owner) is not bytes or not locs[0].pack:
            return None  # only immutable buffers: a reused one could change under the view
        for part in verified:
            if not isinstance(part, memoryview) or part.obj is not owner:
                return None
        for a, b in pairwise(locs):
            if b.pack != a.pack or b.offset != a.offset + a.length:
                return None
        view = self.read_cache.cached_view(model.blob_key(locs[0]), locs[0].offset + lo, n)
        if view is not None and view.obj is owner and len(view) == n:
            return view
        return None

    def prefetch(self, locs: Iterable[Locator]) -> None:
        """Hint the read cache that these objects will be read next, in this order (it starts
        fetching them); without one, nothing to do."""
        if self.read_cache is not None:
            self.read_cache.prefetch_ranges(
                (model.blob_key(loc), loc.offset, loc.length) for loc in locs
            )

    def _cached(self, object_id: bytes) -> object | None:
        value = self._cache.get(object_id)
        if value is not None:
            self._cache.move_to_end(object_id)
        return value

    def _remember(self, object_id: bytes, value: object) -> None:
        self._cache[object_id] = value
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    def read_tree(self, loc: Locator) -> dict[bytes, Entry]:
        tree = self._cached(loc.id)
        if tree is None:
            tree = model.decode_tree(self.read_raw(loc))
            self._remember(loc.id, tree)
        return dict(tree)  # type: ignore[call-overload]

    def read_manifest(self, loc: Locator) -> list[ManifestChunk]:
        manifest = self._cached(loc.id)
        if manifest is None:
            manifest = model.decode_manifest(self.read_raw(loc))
            self._remember(loc.id, manifest)
        return manifest  # type: ignore[return-value]

    def read_commit(self, commit_id: bytes) -> model.Commit:
        """A commit by id: from the index cache if its copy re-hashes to the id, else from the
        store (then cached). The index is a cache: a damaged copy there is never served (it is
        replaced by the store's, with a warning), so it cannot change what a command shows."""
        data = self.index.get_commit(commit_id)
        if data is not None:
            if hash_bytes(data) == commit_id:
                return model.Commit.decode(data)
            log.warning(
                "the index's copy of commit %s is damaged (it does not match its id); reading "
                "the store's (run `pfsfs fsck --deep`)",
                to_hex(commit_id)[:12],
            )
        return self._commit_from_store(commit_id)

    def _commit_from_store(self, commit_id: bytes) -> model.Commit:
        data = self.read_commit_blob(self._source, commit_id)
        commit = model.Commit.decode(data)
        self.index.add_commit(commit.repo, commit_id, data)
        return commit

    @staticmethod
    def read_commit_blob(store: ObjectStore, commit_id: bytes) -> bytes:
        """The encoded commit as ``store`` holds it, verified against its id."""
        try:
            data = store.get(model.commit_key(commit_id))
        except NotFound:
            raise NotFound(f"commit {to_hex(commit_id)} does not exist") from None
        if hash_bytes(data) != commit_id:
            raise Corruption(
                f"commit {to_hex(commit_id)} is corrupt in the store (content does not match "
                "its hash); run `pfsfs fsck --deep`"
            )
        return data
