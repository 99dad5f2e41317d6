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
``put_cache`` the stat cache of ``pfsfs put`` (``transfer.PutCache``), as git's index and
              restic's parent snapshot keep one: repo utf-8 + b"\0" + branch utf-8 + b"\0" +
              the absolute source path (bytes, as the put was given it, symlinks in it not
              resolved) → msgpack ``[size, mtime_ns, ctime_ns, ino, dev, manifest id]``: the
              file's ``lstat`` when a put last read it, and the id of the manifest its content
              got. A put that finds the same five stat fields reuses the content *only if* the
              branch head's entry at the destination has that very manifest (so the content is
              reachable and gc has kept it); otherwise, or with ``--no-cache``, it reads the
              file. Entries whose mtime or ctime lay within ``RACY_NS`` of the scan start are
              never written (the racy-git rule: a same-tick edit would keep the stat). A put
              of a directory replaces every entry under its source path (files gone from it
              are forgotten). Only written after the commit landed. A cache: a rebuild drops
              it (the next put reads every file once).

Pipelines add their own databases (``pipelines``, ``jobs``, ...; the daemon keeps its state in
plain files under ``staging/``); each is opened through ``Index.db(name)`` and documented in the
module that owns it, with a line added to ``OTHER_DATABASES`` below.

What is the source of truth here, and what a rebuild does (``pfsfs fsck --rebuild-index``):
``objects``, ``commits`` and ``repo_commits`` are caches of the store, rebuilt by walking every
branch (refs are *not* in this environment: a local store keeps them in its own ``refs`` LMDB
next to the blobs, S3 in the bucket). ``meta``, ``gc_roots`` and the pipeline databases are this
machine's own records and exist nowhere else: a rebuild copies every record of them it can still
read (``salvage``: leaf page by leaf page, so only the records on damaged pages are lost) and
reports what it could not.

Every LMDB failure surfaces as one ``PfsError`` naming the index: damage (a bad page, a file that
is not LMDB) as ``IndexDamaged`` with the fix, a full map as ``StoreFull``. A value that does not
decode is damage too. ``commits`` values are verified against their key when read (see
``ObjectReader.read_commit``), so a flipped byte there never changes what a command shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from . import codec
from .errors import IndexDamaged, StoreError, StoreFull
from .launch import CHILD_CWD, python_module_argv
from .model import Locator

MAP_SIZE = 1 << 38  # 256 GiB of address space; the file grows only as used

CORE_DATABASES = ("objects", "commits", "repo_commits", "meta", "gc_roots", "put_cache")
#: Databases owned by other modules (documented there): name → owning module.
OTHER_DATABASES: dict[str, str] = {
    "pipelines": "pfsfs.pipeline.state",
    "jobs": "pfsfs.pipeline.state",
    "pipeline_jobs": "pfsfs.pipeline.state",
    "datums": "pfsfs.pipeline.state",
    "datum_cache": "pfsfs.pipeline.state",
}
#: Databases that only cache the store: a rebuild recomputes them instead of copying them
#: (``put_cache`` it drops: it refills as puts read files).
CACHE_DATABASES = ("objects", "commits", "repo_commits", "put_cache")

#: LMDB errors that mean the file is damaged (not a transient or resource failure). A failed
#: lookup on a bad page also leaves the transaction unusable, hence BadTxnError.
_DAMAGE = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.BadTxnError,
    lmdb.BadValsizeError,
    lmdb.BadDbiError,
    lmdb.VersionMismatchError,
    lmdb.IncompatibleError,
    lmdb.PanicError,
)
REBUILD_HINT = "run `pfsfs fsck --rebuild-index` to rebuild it from the store"


def damaged(path: Path, detail: object) -> IndexDamaged:
    return IndexDamaged(f"the index at {path} is damaged ({detail}); {REBUILD_HINT}")


def translate(path: Path, exc: lmdb.Error) -> StoreError | IndexDamaged:
    """The one ``PfsError`` for an LMDB failure of the index at ``path``."""
    if isinstance(exc, lmdb.MapFullError):
        return StoreFull(f"the index at {path} is full")
    if isinstance(exc, _DAMAGE):
        return damaged(path, exc)
    return StoreError(f"the index at {path} failed: {exc}")


# -- the page walk: what makes a scan of a damaged file an error instead of a crash ----------
#
# LMDB trusts its file. A lookup that meets a damaged page fails (MDB_CORRUPTED,
# MDB_PAGE_NOTFOUND), but a cursor stepping from one leaf to the next *asserts* the next page is
# a leaf and aborts the process when it is not (a zeroed page: a lost write). So before a scan,
# ``leaves`` walks the database's tree in the file itself (only page headers and branch pages,
# as the scanning transaction sees them) and every damaged page becomes an error first.
_P_BRANCH, _P_LEAF = 0x01, 0x02
_P_INVALID = (1 << 64) - 1
_HEADER = 16  # pgno (8), pad (2), flags (2), lower (2), upper (2)


@dataclass(frozen=True)
class Leaf:
    """One leaf page of a database, in key order; ``bad`` says what is wrong with it (or
    with the branch above it: then ``first`` is unknown and the whole subtree is lost)."""

    pgno: int
    keys: int = 0
    first: bytes = b""
    bad: str = ""


def leaves(
    env: lmdb.Environment, txn: lmdb.Transaction, data_file: Path, name: bytes
) -> Iterator[Leaf]:
    """The leaf pages of the named database ``name`` as ``txn`` sees it, in key order."""
    record = txn.get(name)  # the main database's record of it: an MDB_db
    if record is None or len(record) != 48:
        return
    depth = int.from_bytes(record[6:8], "little")
    root = int.from_bytes(record[40:48], "little")
    if root == _P_INVALID:
        return  # empty
    psize = env.stat()["psize"]
    with open(data_file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        yield from _walk(f.fileno(), psize, size, root, depth, 1)


def _walk(fd: int, psize: int, size: int, pgno: int, depth: int, level: int) -> Iterator[Leaf]:
    if (pgno + 1) * psize > size:
        yield Leaf(pgno, bad=f"page {pgno} is past the end of the file")
        return
    page = os.pread(fd, psize, pgno * psize)
    own = int.from_bytes(page[0:8], "little")
    flags = int.from_bytes(page[10:12], "little")
    lower = int.from_bytes(page[12:14], "little")
    upper = int.from_bytes(page[14:16], "little")
    want = _P_BRANCH if level < depth else _P_LEAF
    if own != pgno or not flags & want or not _HEADER <= lower <= upper <= psize:
        yield Leaf(pgno, bad=f"page {pgno} is damaged (flags {flags:#x}, number {own})")
        return
    count = (lower - _HEADER) // 2
    if level == depth:
        yield Leaf(pgno, count, _first_key(page, psize, count))
        return
    for i in range(count):
        at = int.from_bytes(page[_HEADER + 2 * i : _HEADER + 2 * i + 2], "little")
        if not upper <= at <= psize - 8:
            yield Leaf(pgno, bad=f"branch page {pgno} is damaged (a node is out of the page)")
            return
        lo, hi, fl = (int.from_bytes(page[at + j : at + j + 2], "little") for j in (0, 2, 4))
        yield from _walk(fd, psize, size, lo | hi << 16 | fl << 32, depth, level + 1)


def _first_key(page: bytes, psize: int, count: int) -> bytes:
    """The first key of a leaf page (b"" if its first node is out of the page)."""
    if count == 0:
        return b""
    at = int.from_bytes(page[_HEADER : _HEADER + 2], "little")
    if at + 8 > psize:
        return b""
    ksize = int.from_bytes(page[at + 6 : at + 8], "little")
    return page[at + 8 : at + 8 + ksize] if at + 8 + ksize <= psize else b""


class Index:
    """Thin typed access to the home's LMDB environment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=32, max_readers=256)
        except OSError as exc:
            raise StoreError(f"cannot open the index at {path}: {exc}") from None
        except lmdb.Error as exc:
            raise translate(path, exc) from None
        self._dbs: dict[str, Any] = {}
        try:
            for name in CORE_DATABASES:
                self.db(name)
        except BaseException:
            self.env.close()
            raise

    def db(self, name: str) -> Any:
        if name not in self._dbs:
            with self.guard():
                self._dbs[name] = self.env.open_db(name.encode())
        return self._dbs[name]

    def close(self) -> None:
        self.env.close()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn LMDB failures inside the block into the one error naming this index."""
        try:
            yield
        except lmdb.Error as exc:
            raise translate(self.path, exc) from None

    def _unpack(self, db: str, value: bytes | memoryview) -> Any:
        """A record of one of our databases, decoded; a record that does not decode is damage
        (LMDB has no checksums: a flipped byte in a value is only seen here)."""
        try:
            return codec.unpack_value(value)
        except (ValueError, msgpack.UnpackException) as exc:
            raise damaged(self.path, f"a record of {db!r} does not decode: {exc}") from None

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction, committed when the block exits cleanly (aborted otherwise)."""
        with self.guard(), self.env.begin(write=True) as txn:
            yield txn

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.guard(), self.env.begin() as txn:
            yield txn

    def scan(self, txn: lmdb.Transaction, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every record of database ``name``, in key order; ``IndexDamaged`` instead of a
        crash when a page of it is damaged (see ``leaves``). Use it for every full scan."""
        for leaf in leaves(self.env, txn, self.path / "data.mdb", name.encode()):
            if leaf.bad:
                raise damaged(self.path, f"database {name!r}: {leaf.bad}")
        for key, value in txn.cursor(db=self.db(name)):
            yield bytes(key), bytes(value)

    # -- objects -----------------------------------------------------------------------------
    def get_object(
        self, object_id: bytes, txn: lmdb.Transaction | None = None
    ) -> tuple[Locator, float] | None:
        """Where a durable object is, and when it was last verified to be there (``txn``: a
        read transaction of the caller's, for many lookups in a row)."""
        if txn is not None:
            try:  # no context manager: this runs once per stored object
                value = txn.get(object_id, db=self._dbs["objects"])
            except lmdb.Error as exc:
                raise translate(self.path, exc) from None
            return None if value is None else self._object(object_id, value)
        with self.read() as txn:
            value = txn.get(object_id, db=self.db("objects"))
            return None if value is None else self._object(object_id, value)

    def begin_read(self) -> lmdb.Transaction:
        """A read transaction the caller ends (``abort``): for lookups in a tight loop."""
        with self.guard():
            return self.env.begin()

    def _object(self, object_id: bytes, value: bytes | memoryview) -> tuple[Locator, float]:
        record = self._unpack("objects", value)
        if not (isinstance(record, list) and 3 <= len(record) <= 4):
            raise damaged(self.path, f"an 'objects' record is not a locator: {record!r:.60}")
        pack, offset, length, *rest = record
        verified_at = rest[0] if rest else 0.0
        if not (
            isinstance(pack, bytes)
            and isinstance(offset, int)
            and isinstance(length, int)
            and offset >= 0
            and length >= 0
            and isinstance(verified_at, int | float)
        ):
            raise damaged(self.path, f"an 'objects' record is not a locator: {record!r:.60}")
        return Locator(bytes(object_id), pack, offset, length), float(verified_at)

    def add_objects(self, locators: list[Locator]) -> None:
        db = self.db("objects")
        now = time.time()
        with self.write() as txn:  # a full map: StoreFull (see ``translate``)
            for loc in locators:
                value = codec.pack_value([loc.pack, loc.offset, loc.length, now])
                txn.put(loc.id, value, db=db)

    def drop_objects(self, ids: list[bytes]) -> None:
        db = self.db("objects")
        with self.write() as txn:
            for object_id in ids:
                txn.delete(object_id, db=db)

    def iter_objects(self) -> Iterator[Locator]:
        with self.read() as txn:
            for key, value in self.scan(txn, "objects"):
                yield self._object(key, value)[0]

    # -- commits -----------------------------------------------------------------------------
    def get_commit(self, commit_id: bytes) -> bytes | None:
        """The cached encoded commit, unverified: callers check it re-hashes to the id."""
        with self.read() as txn:
            value = txn.get(commit_id, db=self.db("commits"))
        return bytes(value) if value is not None else None

    def iter_commits(self) -> Iterator[tuple[bytes, bytes]]:
        """Every cached ``(commit id, encoded commit)``, unverified."""
        with self.read() as txn:
            yield from self.scan(txn, "commits")

    def add_commit(self, repo: str, commit_id: bytes, encoded: bytes) -> None:
        with self.write() as txn:
            txn.put(commit_id, encoded, db=self.db("commits"))
            txn.put(repo.encode() + b"\0" + commit_id, b"", db=self.db("repo_commits"))

    def forget_commits(self, ids: list[bytes]) -> None:
        """Drop cached copies (damaged ones): readers fetch the store's again."""
        with self.write() as txn:
            for commit_id in ids:
                txn.delete(commit_id, db=self.db("commits"))

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

    # -- the put stat cache ------------------------------------------------------------------
    def put_cache_load(self, scope: bytes, prefix: bytes) -> dict[bytes, list[Any]]:
        """The stat-cache records of ``scope`` (repo + \0 + branch + \0) whose source path
        is ``prefix`` or lies under it: source path → record (see ``put_cache`` above)."""
        found: dict[bytes, list[Any]] = {}
        with self.read() as txn:
            cursor = txn.cursor(db=self.db("put_cache"))
            start = scope + prefix
            if not cursor.set_range(start):
                return found
            for key, value in cursor:
                if not key.startswith(start):
                    break
                path = bytes(key[len(scope) :])
                if path == prefix or path.startswith(prefix.rstrip(b"/") + b"/"):
                    record = self._unpack("put_cache", value)
                    if not isinstance(record, list):
                        raise damaged(self.path, f"a 'put_cache' record is {record!r:.60}")
                    found[path] = record
        return found

    def put_cache_store(self, scope: bytes, prefix: bytes, records: dict[bytes, list[Any]]) -> None:
        """Replace the records of ``scope`` at and under ``prefix`` by ``records``."""
        db = self.db("put_cache")
        start = scope + prefix
        under = scope + prefix.rstrip(b"/") + b"/"
        with self.write() as txn:
            cursor = txn.cursor(db=db)
            if cursor.set_range(start):
                while cursor.key().startswith(start):
                    key = cursor.key()
                    if key == start or key.startswith(under):
                        if not cursor.delete():
                            break
                    elif not cursor.next():
                        break
            for path, record in records.items():
                txn.put(scope + path, codec.pack_value(record), db=db)

    # -- meta and gc roots ---------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self.read() as txn:
            value = txn.get(key.encode(), db=self.db("meta"))
            return self._unpack("meta", value) if value is not None else None

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
            for key, value in self.scan(txn, "gc_roots"):
                d = self._unpack("gc_roots", value)
                try:
                    owned = [str(c) for c in d.get("commits", [])]
                    for c in owned:
                        bytes.fromhex(c)
                    locs = [Locator.from_wire(w) for w in d.get("locators", [])]
                except (AttributeError, TypeError, ValueError, IndexError) as exc:
                    owner = bytes(key).decode(errors="replace")
                    detail = f"the gc roots of {owner} do not decode: {exc}"
                    raise damaged(self.path, detail) from None
                commits.extend(owned)
                locators.extend(locs)
        return commits, locators


# -- salvage: the low-level copy a rebuild starts from ---------------------------------------


@dataclass
class Salvaged:
    """What ``salvage`` could copy of one database of a (possibly damaged) index."""

    name: str
    copied: int = 0
    expected: int | None = None  # entries the damaged file claims to hold, if readable
    error: str = ""  # why some or all of its records could not be read

    @property
    def complete(self) -> bool:
        return not self.error and (self.expected is None or self.copied >= self.expected)

    def describe(self) -> str:
        if self.complete:
            return f"{self.name}: {self.copied} records copied"
        if self.expected is None:  # how many it held is unreadable too
            return f"{self.name}: {self.copied} records copied, any others lost ({self.error})"
        lost = self.expected - self.copied
        return f"{self.name}: {self.copied} records copied, {lost} lost ({self.error})"


def salvage(src: Path, dst: Path, skip: Collection[str] = CACHE_DATABASES) -> list[Salvaged]:
    """Copy every record still readable from the index at ``src`` into the index at ``dst``,
    except the databases in ``skip`` (the caches, which a rebuild recomputes from the store).

    Records are read leaf page by leaf page (see ``leaves``), so only those on damaged pages
    (or under a damaged branch page) are lost. The reading runs in a child process: LMDB
    trusts its file, and damage inside a page can still make it crash rather than fail. The
    child reports each database as it is done, so what it copied before a crash is still
    reported; a database it was reading when it died is reported lost."""
    cmd = python_module_argv("pfsfs.index", str(src.absolute()), str(dst.absolute()), *skip)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=CHILD_CWD)
    done: list[Salvaged] = []
    current = ""
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if "reading" in msg:
            current = msg["reading"]
        else:
            done.append(Salvaged(**msg))
            current = ""
    if proc.returncode != 0:
        why = f"the copy crashed (exit {proc.returncode}): {proc.stderr.strip()[-200:]}"
        done.append(Salvaged(current or "(the list of databases)", error=why))
    return done


def _copy_readable(src: Path, dst: Path, skip: Collection[str]) -> None:
    """The child's side of ``salvage``: one JSON line per database on stdout."""
    known = [*CORE_DATABASES, *OTHER_DATABASES]
    try:
        old = lmdb.open(str(src), readonly=True, lock=False, max_dbs=64)
    except lmdb.Error as exc:
        for label in known:
            if label not in skip:
                lost = Salvaged(label, error=f"the old file cannot be opened: {exc}")
                print(json.dumps(lost.__dict__), flush=True)
        return
    new = lmdb.open(str(dst), map_size=MAP_SIZE, max_dbs=64)
    names, listing_error = _database_names(old)
    for name in dict.fromkeys([*names, *(n.encode() for n in known)]):
        label = name.decode(errors="replace")
        if label in skip:
            continue
        print(json.dumps({"reading": label}), flush=True)
        report = _copy_database(old, src, new, name)
        if report is None:  # no such database in the old file
            if listing_error and label in known:
                report = Salvaged(label, error=f"the list of databases is damaged: {listing_error}")
            else:
                continue
        print(json.dumps(report.__dict__), flush=True)
    new.close()
    old.close()


def _database_names(env: lmdb.Environment) -> tuple[list[bytes], str]:
    """The named databases the main database lists (as far as it can be read)."""
    names: list[bytes] = []
    try:
        with env.begin() as txn:
            for key in txn.cursor().iternext(values=False):
                names.append(bytes(key))
    except lmdb.Error as exc:
        return names, str(exc)
    return names, ""


def _copy_database(
    old: lmdb.Environment, src: Path, new: lmdb.Environment, name: bytes
) -> Salvaged | None:
    label = name.decode(errors="replace")
    try:
        db = old.open_db(name, create=False)  # its own transaction: the handle outlives it
    except lmdb.NotFoundError:
        return None
    except lmdb.Error as exc:
        return Salvaged(label, error=f"cannot be opened: {exc}")
    report = Salvaged(label)
    records: dict[bytes, bytes] = {}
    errors: list[str] = []
    with old.begin() as txn:
        report.expected = txn.stat(db)["entries"]
        for leaf in leaves(old, txn, src / "data.mdb", name):
            if leaf.bad or not leaf.first:
                errors.append(leaf.bad or f"page {leaf.pgno} is damaged")
                continue
            try:
                _copy_leaf(txn.cursor(db=db), leaf, records)
            except lmdb.Error as exc:
                errors.append(f"page {leaf.pgno}: {exc}")
                break  # the transaction is unusable after a failed read
    report.error = "; ".join(errors[:3])
    target = new.open_db(name)
    with new.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value, db=target)
    report.copied = len(records)
    return report


def _copy_leaf(cursor: lmdb.Cursor, leaf: Leaf, records: dict[bytes, bytes]) -> None:
    """The records of one sound leaf page. The cursor is placed by an exact lookup of its first
    key and never stepped past its last: stepping onto a damaged next page would abort."""
    if not cursor.set_key(leaf.first):
        raise lmdb.CorruptedError(f"the first key of page {leaf.pgno} is not found")
    for n in range(leaf.keys):
        if n and not cursor.next():
            break
        records[bytes(cursor.key())] = bytes(cursor.value())


if __name__ == "__main__":  # the child process of ``salvage``
    _copy_readable(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
