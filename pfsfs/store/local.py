"""The embedded default object store: blobs as files in a local directory, refs in LMDB.

Blobs live under ``<root>/<key dirname>/<2 hex fan-out>/<name>`` so no directory grows past a
few thousand entries. A blob is either absent or whole under its name: ``put`` writes it under a
temp name (``.<name>.<pid>.<thread>.tmp``) and *stages* it; ``flush`` is the one durability
barrier of a write session (``ObjectStore.flush``): it makes the staged data durable, renames
every staged blob into place and makes the renames durable. Nothing is renamed before its data
is on stable storage, so after a crash a name never holds short or empty content (a later
``put`` of the same key trusts an existing name: content-addressed). Until ``flush`` this
process reads staged blobs from their temp files; other processes do not see them (nothing
refers to them before the flush anyway: the index and refs are written after it).

How the barrier is paid: a session that staged few blobs (a snapshot, a small put) fsyncs each
of them; one that staged many (a put of a tree: one blob per ~1 MiB chunk) asks for writeback
of each blob as soon as it is written (``sync_file_range``, asynchronous) and pays one
``syncfs`` of the store's filesystem at the end, then one more after the renames — two journal
commits instead of one per blob, which is what makes ingest keep up with ``cp -a`` + ``sync``.
``syncfs`` also writes back other processes' dirty data on that filesystem, as ``sync`` does.

Large blobs (whole chunks) are written by a background thread (``UploadQueue``): while one chunk
goes to the page cache the caller chunks and hashes the next. ``get``/``exists`` see queued
blobs, and ``flush`` waits for them (and raises the first failure, e.g. disk full) first.
Temp files a killed writer left are removed by ``remove_temp`` (gc).

Refs live in a small LMDB environment (``<root>/refs``): a write transaction serialises
compare-and-swap across every process on the machine, and LMDB commits are durable.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import lmdb

from ..errors import Corruption, NotFound, RefChanged, StoreError, StoreFull
from .base import BlobInfo, ObjectStore, StoreProperties, check_blob_key, check_key
from .directio import read_uncached
from .uploads import UploadQueue

log = logging.getLogger(__name__)
T = TypeVar("T")

_REFS_MAP_SIZE = 1 << 30
#: Blobs at least this large are written in the background (chunks; packs are written inline).
BACKGROUND_MIN = 256 << 10
#: A flush with at most this many staged blobs fsyncs each; with more, one ``syncfs``.
FSYNC_EACH_MAX = 16
_SYNC_FILE_RANGE_WRITE = 2


def _libc_call(name: str) -> object | None:
    """A libc function by name (released GIL while it runs), or None where there is none."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_call("syncfs")
_SYNC_FILE_RANGE = _libc_call("sync_file_range")
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now (does not wait for them)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]


def syncfs(path: Path) -> bool:
    """``syncfs`` of the filesystem holding ``path``; False where libc has no ``syncfs``."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
    return True


def io_error(exc: OSError, what: str) -> StoreError:
    """Turn an OSError into the store error a user should see."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left on device while {what}")
    return StoreError(f"{what}: {exc.strerror or exc}")


def _temp_writer(name: str) -> int | None:
    """The pid in a temp file name of ``_write`` (``.<blob>.<pid>.<thread>.tmp``), else None."""
    parts = name.split(".")
    if len(parts) != 5 or parts[0] or parts[4] != "tmp" or not parts[2].isdigit():
        return None
    return int(parts[2])


def _fsync_path(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return  # a directory gc removed meanwhile
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class LocalObjectStore(ObjectStore):
    """Files on a local filesystem; refs in LMDB."""

    #: Not remote, not a read cache, and (as ever for local stores, group-shared ones too) not
    #: ``shared``: writers skip the dedup re-validation that S3 stores get.
    properties = StoreProperties()

    def __init__(self, root: str | os.PathLike[str], *, background_writes: bool = True) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._staged: dict[str, Path] = {}  # key → its temp file, until ``flush`` renames it
        self._dirty_lock = threading.Lock()
        self._refs_env: lmdb.Environment | None = None
        self._background = background_writes
        self._uploads: UploadQueue | None = None

    def _queue(self) -> UploadQueue:
        if self._uploads is None:
            self._uploads = UploadQueue(
                self._write, workers=1, max_pending_bytes=32 << 20, name="pfsfs-local-write"
            )
        return self._uploads

    # -- paths -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        check_blob_key(key)
        head, _, name = key.rpartition("/")
        fan = name[:2] if len(name) > 8 else "_"
        return self.root / head / fan / name if head else self.root / fan / name

    # -- blobs -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Stage ``data`` under ``key`` (durable and visible to others after ``flush``).

        ``data`` may be a view of an immutable buffer (``bytes``): it is then written from
        that buffer without a copy. A view of a mutable one is copied first."""
        path = self._path(key)
        if key in self._staged or path.exists():
            return  # content-addressed: same key, same bytes
        if self._background and len(data) >= BACKGROUND_MIN:
            if not (isinstance(data, memoryview) and isinstance(data.obj, bytes)):
                data = bytes(data)
            self._queue().submit(key, data)  # type: ignore[arg-type]
            return
        self._write(key, data)

    def _write(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                start_writeback(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise io_error(exc, f"writing {key} to {self.location}") from None
        with self._dirty_lock:
            self._staged[key] = tmp

    def _staged_path(self, key: str) -> Path | None:
        with self._dirty_lock:
            return self._staged.get(key)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        queued = self._uploads.pending(key) if self._uploads is not None else None
        if queued is not None:
            part = queued[offset:] if length is None else queued[offset : offset + length]
            return bytes(part)
        path = self._staged_path(key) or path

        def read() -> bytes:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)

        return self._checked(key, length, read)

    def _checked(self, key: str, length: int | None, read: Callable[[], T]) -> T:
        """What ``read`` read of ``key``, its errors as the store's (a missing or short blob:
        NotFound)."""
        try:
            data = read()
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the store at {self.location}") from None
        except OSError as exc:
            raise io_error(exc, f"reading {key} from {self.location}") from None
        if data is not None and length is not None and len(data) != length:
            raise NotFound(f"object {key} in {self.location} is shorter than expected")
        return data

    def get_uncached(self, key: str, offset: int, length: int) -> memoryview | None:
        """Like ``get`` of ``length`` bytes, read past the page cache when it holds little of
        them (``directio.read_uncached``: for bulk reads that keep the bytes elsewhere; whether
        this store's filesystem suits is the caller's to know); None: use ``get`` (a blob not
        written out yet, data mostly in the page cache, or no way to do it here)."""
        if self._uploads is not None and self._uploads.pending(key) is not None:
            return None
        if self._staged_path(key) is not None:
            return None
        path = self._path(key)
        return self._checked(key, length, lambda: read_uncached(path, offset, length))

    def read_ahead_ranges(self, ranges: Iterable[tuple[str, int, int]]) -> None:
        """Have the kernel read these byte ranges ahead (``POSIX_FADV_WILLNEED`` starts the
        I/O and returns): a reader going through many chunk files on a cold disk then waits
        for one read at a time no more. Missing blobs are skipped (the read reports them).
        Called from a reader thread of its own (``get``); ``prefetch_ranges`` stays a no-op
        here, as the mount calls it on its event loop, where a blocking ``fadvise`` must not
        run."""
        for key, offset, length in ranges:
            try:
                fd = os.open(self._staged_path(key) or self._path(key), os.O_RDONLY)
            except (OSError, ValueError):
                continue
            try:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def exists(self, key: str) -> bool:
        if self._uploads is not None and self._uploads.pending(key) is not None:
            return True
        return self._staged_path(key) is not None or self._path(key).exists()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Blobs under their names, then the ones this process staged (not yet flushed; the
        ones still queued for writing are waited for first)."""
        if self._uploads is not None:
            self._uploads.drain()
        with self._dirty_lock:
            staged = [(k, p) for k, p in self._staged.items() if k.startswith(prefix)]
        yield from self._list_named(prefix)
        for key, tmp in staged:
            try:
                st = tmp.stat()
            except FileNotFoundError:
                continue  # flushed (and listed above) or deleted meanwhile
            yield BlobInfo(key, st.st_size, st.st_mtime)

    def _list_named(self, prefix: str) -> Iterator[BlobInfo]:
        # Walk from the deepest directory the prefix names, then filter by key.
        if not self.root.exists():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            if rel == "refs" or rel.startswith("refs" + os.sep):
                dirnames[:] = []
                continue
            parts = [] if rel == "." else rel.split(os.sep)
            if not parts:
                continue
            head = "/".join(parts[:-1])  # drop the fan-out component
            for name in filenames:
                if name.startswith("."):
                    continue
                key = f"{head}/{name}" if head else name
                if key.startswith(prefix):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    yield BlobInfo(key, st.st_size, st.st_mtime)

    def remove_temp(self, older_than: float) -> tuple[int, int]:
        """Delete temp files a killed writer left (``.<name>.<pid>.<tid>.tmp``, see ``_write``)
        last modified before ``older_than`` (epoch seconds); return (files, bytes). A temp file
        whose writer still runs on this machine is kept (another home may share this store
        and be writing it now) unless it is a day older than that."""
        removed = freed = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            if os.path.relpath(dirpath, self.root).split(os.sep)[0] == "refs":
                dirnames[:] = []
                continue
            for name in filenames:
                pid = _temp_writer(name)
                if pid is None:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                    if st.st_mtime >= older_than:
                        continue
                    if _alive(pid) and st.st_mtime >= older_than - 86400:
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise io_error(exc, f"removing {path}") from None
                removed += 1
                freed += st.st_size
        return removed, freed

    def head(self, key: str) -> BlobInfo | None:
        queued = self._uploads.pending(key) if self._uploads is not None else None
        if queued is not None:
            return BlobInfo(key, len(queued), time.time())
        try:
            st = (self._staged_path(key) or self._path(key)).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        if self._uploads is not None:
            self._uploads.discard(key)
        with self._dirty_lock:
            tmp = self._staged.pop(key, None)
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise io_error(exc, f"deleting {key} from {self.location}") from None

    def flush(self) -> None:
        """The barrier: staged data durable, then renamed into place, then the renames."""
        if self._uploads is not None:
            self._uploads.flush()
        with self._dirty_lock:
            staged = dict(self._staged)
        if not staged:
            return
        try:
            many = len(staged) > FSYNC_EACH_MAX and syncfs(self.root)
            if not many:
                for tmp in staged.values():
                    _fsync_path(tmp, os.O_RDONLY)
            for key, tmp in staged.items():
                os.rename(tmp, self._path(key))
                with self._dirty_lock:
                    self._staged.pop(key, None)
            if not (many and syncfs(self.root)):
                dirs = {self._path(key).parent for key in staged}
                for directory in dirs | {d.parent for d in dirs}:
                    _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise io_error(exc, f"syncing new blobs in {self.location}") from None

    # -- refs --------------------------------------------------------------------------------
    def _refs(self) -> lmdb.Environment:
        if self._refs_env is None:
            path = self.root / "refs"
            try:
                path.mkdir(parents=True, exist_ok=True)
                self._refs_env = lmdb.open(str(path), map_size=_REFS_MAP_SIZE, max_dbs=1)
            except (OSError, lmdb.Error) as exc:
                raise StoreError(f"cannot open the ref table in {path}: {exc}") from None
        return self._refs_env

    def _refs_failed(self, exc: lmdb.Error) -> StoreError | Corruption:
        """A ref-table failure as one error naming it. Unlike the home's index this table is
        the truth (branch heads, repo records) and cannot be rebuilt from the blobs."""
        where = self.root / "refs"
        if isinstance(exc, lmdb.MapFullError):
            return StoreFull(f"the ref table in {where} is full")
        if isinstance(exc, lmdb.ReadersFullError | lmdb.LockError | lmdb.DiskError):
            return StoreError(f"the ref table in {where} failed: {exc}")
        return Corruption(
            f"the ref table in {where} is damaged ({exc}); it holds the branch heads, which "
            "exist nowhere else: restore it from a backup, or `pfsfs pull` from a remote"
        )

    def get_ref(self, name: str) -> bytes | None:
        check_key(name)
        try:
            with self._refs().begin() as txn:
                value = txn.get(name.encode())
                return bytes(value) if value is not None else None
        except lmdb.Error as exc:
            raise self._refs_failed(exc) from None

    def set_ref(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        check_key(name)
        try:
            with self._refs().begin(write=True) as txn:
                current = txn.get(name.encode())
                current = bytes(current) if current is not None else None
                if current != expected:
                    raise RefChanged(f"ref {name} changed concurrently")
                if new is None:
                    txn.delete(name.encode())
                else:
                    txn.put(name.encode(), new)
        except lmdb.Error as exc:
            raise self._refs_failed(exc) from None

    def list_refs(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        try:
            with self._refs().begin() as txn:
                cursor = txn.cursor()
                if not cursor.set_range(prefix.encode()):
                    return
                for key, value in cursor:
                    name = bytes(key).decode(errors="replace")
                    if not name.startswith(prefix):
                        break
                    yield name, bytes(value)
        except lmdb.Error as exc:
            raise self._refs_failed(exc) from None

    def close(self) -> None:
        if self._uploads is not None:
            self._uploads.close()
            self._uploads = None
        with self._dirty_lock:
            unflushed, self._staged = self._staged, {}
        for tmp in unflushed.values():  # never referenced: a session that did not finish
            try:
                tmp.unlink()
            except OSError:
                pass
        if self._refs_env is not None:
            self._refs_env.close()
            self._refs_env = None
