"""The LMDB metadata index: the one place its schema is written down.

One LMDB environment per home (``<home>/index``). It is a local cache and the machine's own
state; the object store stays the source of truth for anything shared between machines, so the
index can be deleted and rebuilt (``objects`` and ``commits`` refill as objects are read).

Named databases (keys are bytes; "id" means a 32-byte BLAKE3 digest):

``objects``   id → msgpack ``[pack: bytes, offset: int, length: int, verified_at: float]``
              Objects known to be durable in the store, and where. Written only after the
              store's ``flush`` returned, so a crash never leaves an entry for a missing object.
              Writers consult it to skip re-uploading content (dedup). gc deletes entries of
              objects it removes. Invariant: entry present ⇒ blob present (modulo gc).
              ``verified_at`` (epoch seconds) is when the blob was last written or touched; on a
              shared store an older entry is re-validated before a writer relies on it.
``commits``   id → the commit's encoded bytes (exactly what ``commit/<hex>`` holds in the store).
              A cache that also lets ids be resolved from a hex prefix.
``repo_commits`` repo-name + b"\\0" + id → b"". Which commits belong to which repo (prefix lookup).
``meta``      utf-8 key → msgpack value. Home-level settings (``format``).
``gc_roots``  utf-8 owner → msgpack ``{"commits": [hex…], "locators": [wire…]}``. Extra gc roots
              held by the mount daemon (staged data, base commits of open mounts) and by
              pipelines (jobs in flight). gc treats everything listed as reachable.

The daemon and pipelines add their own databases (``mounts``, ``inodes``, ``staging``,
``pipelines``, ``jobs``); each is opened through ``Index.db(name)`` and documented in the module
that owns it, with a line added to ``OTHER_DATABASES`` below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from . import codec
from .errors import StoreError, StoreFull
from .model import Locator

MAP_SIZE = 1 << 38  # 256 GiB of address space; the file grows only as used

CORE_DATABASES = ("objects", "commits", "repo_commits", "meta", "gc_roots")
#: Databases owned by other modules (documented there): name → owning module.
OTHER_DATABASES: dict[str, str] = {
    "pipelines": "pfsfs.pipeline.state",
    "jobs": "pfsfs.pipeline.state",
    "pipeline_jobs": "pfsfs.pipeline.state",
    "datums": "pfsfs.pipeline.state",
    "datum_cache": "pfsfs.pipeline.state",
}


class Index:
    """Thin typed access to the home's LMDB environment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=32, max_readers=256)
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open the index at {path}: {exc}") from None
        self._dbs: dict[str, Any] = {}
        for name in CORE_DATABASES:
            self.db(name)

    def db(self, name: str) -> Any:
        if name not in self._dbs:
            self._dbs[name] = self.env.open_db(name.encode())
        return self._dbs[name]

    def close(self) -> None:
        self.env.close()

    def write(self) -> lmdb.Transaction:
        return self.env.begin(write=True)

    def read(self) -> lmdb.Transaction:
        return self.env.begin()

    # -- objects -----------------------------------------------------------------------------
    def get_object(self, object_id: bytes) -> tuple[Locator, float] | None:
        """Where a durable object is, and when it was last verified to be there."""
        with self.read() as txn:
            value = txn.get(object_id, db=self.db("objects"))
        if value is None:
            return None
        pack, offset, length, *rest = codec.unpack_value(value)
        return Locator(object_id, pack, offset, length), (rest[0] if rest else 0.0)

    def add_objects(self, locators: list[Locator]) -> None:
        db = self.db("objects")
        now = time.time()
        try:
            with self.write() as txn:
                for loc in locators:
                    value = codec.pack_value([loc.pack, loc.offset, loc.length, now])
                    txn.put(loc.id, value, db=db)
        except lmdb.MapFullError:
            raise StoreFull(f"the index at {self.path} is full") from None

    def drop_objects(self, ids: list[bytes]) -> None:
        db = self.db("objects")
        with self.write() as txn:
            for object_id in ids:
                txn.delete(object_id, db=db)

    def iter_objects(self) -> Iterator[Locator]:
        with self.read() as txn:
            for key, value in txn.cursor(db=self.db("objects")):
                pack, offset, length, *_ = codec.unpack_value(value)
                yield Locator(bytes(key), pack, offset, length)

    # -- commits -----------------------------------------------------------------------------
    def get_commit(self, commit_id: bytes) -> bytes | None:
        with self.read() as txn:
            value = txn.get(commit_id, db=self.db("commits"))
        return bytes(value) if value is not None else None

    def add_commit(self, repo: str, commit_id: bytes, encoded: bytes) -> None:
        with self.write() as txn:
            txn.put(commit_id, encoded, db=self.db("commits"))
            txn.put(repo.encode() + b"\0" + commit_id, b"", db=self.db("repo_commits"))

    def drop_commit(self, repo: str, commit_id: bytes) -> None:
        with self.write() as txn:
            txn.delete(commit_id, db=self.db("commits"))
            txn.delete(repo.encode() + b"\0" + commit_id, db=self.db("repo_commits"))

    def repo_commits_with_prefix(self, repo: str, hex_prefix: str) -> list[bytes]:
        """Ids of ``repo``'s known commits whose hex starts with ``hex_prefix``."""
        even = hex_prefix[: len(hex_prefix) // 2 * 2]
        start = repo.encode() + b"\0" + bytes.fromhex(even)
        found = []
        with self.read() as txn:
            cursor = txn.cursor(db=self.db("repo_commits"))
            if cursor.set_range(start):
                for key in cursor.iternext(values=False):
                    if not key.startswith(start):
                        break
                    commit_id = bytes(key[len(repo) + 1 :])
                    if commit_id.hex().startswith(hex_prefix):
                        found.append(commit_id)
        return found

    def drop_repo_commits(self, repo: str) -> list[bytes]:
        prefix = repo.encode() + b"\0"
        ids = []
        with self.write() as txn:
            cursor = txn.cursor(db=self.db("repo_commits"))
            if cursor.set_range(prefix):
                while cursor.key().startswith(prefix):
                    ids.append(bytes(cursor.key()[len(prefix) :]))
                    if not cursor.delete():
                        break
        return ids

    # -- meta and gc roots ---------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self.read() as txn:
            value = txn.get(key.encode(), db=self.db("meta"))
        return codec.unpack_value(value) if value is not None else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.write() as txn:
            txn.put(key.encode(), codec.pack_value(value), db=self.db("meta"))

    def set_gc_roots(
        self, owner: str, commits: list[str], locators: list[Locator] | None = None
    ) -> None:
        """Declare (replace) the extra gc roots held by ``owner``; empty lists clear them."""
        with self.write() as txn:
            if not commits and not locators:
                txn.delete(owner.encode(), db=self.db("gc_roots"))
            else:
                value = {"commits": commits, "locators": [x.to_wire() for x in locators or []]}
                txn.put(owner.encode(), codec.pack_value(value), db=self.db("gc_roots"))

    def gc_roots(self) -> tuple[list[str], list[Locator]]:
        commits: list[str] = []
        locators: list[Locator] = []
        with self.read() as txn:
            for _key, value in txn.cursor(db=self.db("gc_roots")):
                d = codec.unpack_value(value)
                commits.extend(d.get("commits", []))
                locators.extend(Locator.from_wire(w) for w in d.get("locators", []))
        return commits, locators
