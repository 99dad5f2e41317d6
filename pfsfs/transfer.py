"""Moving files between the local filesystem and commits: ``put`` (ingest) and ``get`` (export).

What round-trips, both ways, in the encoding mounts use (``InodeTable.entry_meta`` in
``daemon/tree/table.py``):

- regular files (content, mode incl. setuid/setgid/sticky, mtime in ns), directories,
  symlinks (also dangling), FIFOs;
- hard links: names of one inode inside a put become one *link group* (``extra["link"]``, a
  random 16-byte group id unique in the repo, and ``extra["nlink"]``, the number of names
  stored); ``get`` links the later names of a group to the first one it wrote;
- character/block devices and sockets: FIFO entries with ``extra["ftype"]`` ``c``/``b``/``s``
  and ``extra["rdev"]``. ``get`` recreates devices with ``mknod`` where the caller may (root
  with CAP_MKNOD); otherwise it writes everything else and prints one warning line per device
  it could not create. A socket comes back as a socket node nobody listens on (``mknod``
  S_IFSOCK, which anyone may do), the way ``rsync -a`` restores one;
- xattrs (``extra["xattr"]``, bytes name → bytes value, as mounts store them): ``user.*``
  always; as root also ``trusted.*`` and ``security.*`` (file capabilities), as ``rsync -X``
  does. ``system.*`` (ACLs) is not kept.
  ``get`` sets every stored xattr and prints one warning line per file where some could not
  be set (another user's ``trusted.*``, a filesystem without xattrs).

Not kept: owner and group on ``get`` (files belong to the caller), atime, ctime.

Export re-checks every name it writes (a damaged or hostile tree cannot escape the output
directory) and never writes through a symlink. Each name is written under a temp name in its
directory and renamed into place, so a failed read (a corrupt chunk) leaves no wrong bytes
under the real name, and an existing name is replaced the way ``tar x`` replaces it. The one
exception is the explicit target of a single-file ``get -o PATH``: when PATH exists and is a
device, FIFO or socket (or a symlink to one, like ``/dev/stdout``), the content is written
into it as ``cp`` does, and the node is never replaced.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .changes import ChangeSet, check_name
from .chunking import Chunker
from .display import show, show_local
from .errors import AlreadyExists, InvalidInput, NotFound, PfsError, StoreError, StoreFull
from .model import (
    DIR,
    FIFO,
    FILE,
    SYMLINK,
    X_XATTR,
    Entry,
    Kind,
    Locator,
    ManifestChunk,
    blob_key,
    decode_manifest,
    entry_extra,
)
from .objects import ObjectReader, ObjectWriter
from .store.base import SEQUENTIAL_AHEAD_CHUNKS
from .store.local import start_writeback

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


def store_chunks(
    chunks: Iterator[bytes | memoryview], writer: ObjectWriter, progress: Progress
) -> tuple[list[ManifestChunk], int]:
    manifest, size = [], 0
    for data in chunks:
        manifest.append(ManifestChunk(writer.put_chunk(data), len(data)))
        size += len(data)
        progress(len(data))
    return manifest, size


#: A file is read in pieces of at most this many bytes (a smaller file in one ``read``).
#: Below glibc's largest mmap threshold (32 MiB), so the buffers come from the heap and are
#: reused (``tune_malloc``) instead of being faulted in and zeroed page by page each time.
READ_WINDOW = 16 << 20


def tune_malloc() -> None:
    """Have glibc keep and reuse freed buffers up to 32 MiB instead of unmapping them: a put
    or get of 1 GiB otherwise faults in and zeroes every page of every read buffer (267k
    faults, a fifth of the CPU of a put here). Freed memory up to 256 MiB stays with the
    process (a CLI command that ends soon). Does nothing without glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def read_pieces(fd: int, size_hint: int = 0) -> Iterator[bytes]:
    """An open file's content as ``bytes`` of at most ``READ_WINDOW``, read until EOF."""
    left = size_hint
    while True:
        data = os.read(fd, min(READ_WINDOW, max(left, 0) + (64 << 10)))
        if not data:
            return
        left -= len(data)
        yield data


def cut_pieces(pieces: Iterable[bytes], chunker: Chunker) -> Iterator[memoryview]:
    """The content-defined chunks of a file given as consecutive pieces.

    Every chunk is a view of an immutable ``bytes`` read from the file (never of its pages),
    so what is hashed and stored cannot change under the writer, and stores can keep the
    view instead of copying it. The boundaries are those of ``Chunker.cut_file`` on the same
    bytes: a piece's last chunk may be cut short by the piece's end, so it is carried into
    the next piece and cut again together with the next piece's first ``max_size`` bytes
    (every cut depends only on the bytes from its chunk's start, at most ``max_size``); the
    rest of that piece is cut where it lies, without a copy."""
    min_size, max_size = chunker.params.min_size, chunker.params.max_size
    pending: memoryview | None = None  # the last chunk of the previous piece, not yet final
    for data in pieces:
        view = memoryview(data)
        if pending is not None:
            if len(data) <= max_size:  # a short piece: cut it all together with the carry
                view = memoryview(b"".join((pending, data)))
            else:
                head = b"".join((pending, view[:max_size]))
                first = next(iter(chunker.cut_buffer(head)))
                skip = len(first) - len(pending)  # where the next chunk starts in ``data``
                if skip > 0 and len(first) < len(head):
                    yield first
                    view = view[skip:]
                else:  # not what FastCDC does, but never cut differently: join it all
                    view = memoryview(b"".join((pending, data)))
        if len(view) <= min_size:  # one chunk whatever comes (FastCDC's rule): no scan
            pending = view
            continue
        chunks = list(chunker.cut_buffer(view))
        yield from chunks[:-1]
        pending = chunks[-1]
    if pending is not None and len(pending):
        yield pending


def cut_fd(fd: int, chunker: Chunker, size_hint: int = 0) -> Iterator[memoryview]:
    """The chunks of an open file (``read_pieces`` + ``cut_pieces``)."""
    return cut_pieces(read_pieces(fd, size_hint), chunker)


def _small_file(fd: int, size: int, chunker: Chunker) -> Iterator[memoryview] | list[bytes]:
    """The chunks of a file ``lstat`` said is ``size`` bytes, below the minimum chunk size:
    read to EOF in one go; one chunk (FastCDC's rule) unless it grew past that meanwhile.
    Most files of a source tree take this path, so it skips the generators of ``cut_fd``,
    and asks for no more than the file holds (a larger request allocates and zeroes memory
    with an ``mmap`` per file)."""
    data = os.read(fd, size + 1)
    more = os.read(fd, 64 << 10) if data else b""
    if not more:
        return [data] if data else []
    return cut_pieces(itertools.chain((data, more), read_pieces(fd)), chunker)  # it grew


def _read_error(path: bytes, exc: OSError) -> InvalidInput:
    return InvalidInput(f"cannot read {show_local(path)}: {exc.strerror}")


def file_entry(
    st: os.stat_result, manifest_loc: object, size: int, extra: dict[str, Any] | None = None
) -> Entry:
    return Entry(
        FILE,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        size,
        manifest_loc,  # type: ignore[arg-type]
        nfiles=1,
        extra=extra,
    )


def ingest_file(
    path: bytes,
    st: os.stat_result,
    writer: ObjectWriter,
    chunker: Chunker,
    progress: Progress,
    extra: dict[str, Any] | None = None,
    fd: int = -1,
    chunks: Iterator[memoryview] | None = None,
) -> Entry:
    """Read, chunk and store one regular file: its ``chunks`` (cut by someone else), or read
    from ``fd`` (already open on it; closed here), or opened here."""
    try:
        if chunks is None:
            if fd < 0:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            if st.st_size < chunker.params.min_size:
                chunks = _small_file(fd, st.st_size, chunker)
            else:
                chunks = cut_fd(fd, chunker, st.st_size)
        manifest, size = store_chunks(chunks, writer, progress)
    except OSError as exc:
        raise _read_error(path, exc) from None
    finally:
        if fd >= 0:
            os.close(fd)
    return file_entry(st, writer.put_manifest(manifest), size, extra)


def ingest_stream(
    stream: BinaryIO, writer: ObjectWriter, chunker: Chunker, progress: Progress = _no_progress
) -> Entry:
    """An entry for content read from a stream (stdin): mode 0644, owned by us, mtime now."""
    import time

    manifest, size = store_chunks(chunker.cut_stream(stream), writer, progress)
    return Entry(
        FILE,
        0o644,
        os.getuid(),
        os.getgid(),
        time.time_ns(),
        size,
        writer.put_manifest(manifest),
        nfiles=1,
    )


def read_xattrs(path: bytes) -> dict[bytes, bytes] | None:
    """The xattrs a put stores: ``user.*``, and as root every namespace but ``system.*``."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # ENOTSUP: a filesystem without xattrs; nothing to keep
        return None
    if not names:
        return None
    as_root = os.geteuid() == 0
    found: dict[bytes, bytes] = {}
    for name in names:
        if not (name.startswith("user.") or (as_root and not name.startswith("system."))):
            continue
        try:
            found[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EPERM, errno.EACCES, errno.ENOTSUP):
                raise InvalidInput(
                    f"cannot read xattr {name} of {show_local(path)}: {exc.strerror}"
                ) from None
    return found or None


def _meta_extra(path: bytes) -> dict[str, Any]:
    return entry_extra(xattrs=read_xattrs(path)) or {}


def special_entry(path: bytes, st: os.stat_result, extra: dict[str, Any]) -> Entry:
    """A symlink, FIFO, device or socket as an entry (devices/sockets: the mount's encoding)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return Entry(
            SYMLINK,
            mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            len(target),
            target=target,
            extra=extra or None,
        )
    if stat.S_ISFIFO(st.st_mode):
        return Entry(FIFO, mode, st.st_uid, st.st_gid, st.st_mtime_ns, extra=extra or None)
    ftype = Kind.of_mode(st.st_mode)  # a device or a socket: the FIFO entry's X_FTYPE
    full = entry_extra(extra, xattrs=extra.get(X_XATTR), ftype=ftype, rdev=st.st_rdev)
    return Entry(FIFO, mode, st.st_uid, st.st_gid, st.st_mtime_ns, extra=full)


def dir_entry(st: os.stat_result, extra: dict[str, Any] | None = None) -> Entry:
    return Entry(
        DIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, extra=extra or None
    )


# -- the stat cache ------------------------------------------------------------------------------

#: A file whose mtime or ctime lies within this of a put's scan start is never cached: an edit
#: in the same timestamp tick would leave its stat unchanged (git's "racily clean" entries).
#: Two seconds cover filesystems with ns times on a coarse kernel clock, 1 s times (ext3, NFSv2,
#: HFS+) and FAT's 2 s, and a clock that lags the kernel's by a tick.
RACY_NS = 2_000_000_000

HeadLookup = Callable[[tuple[bytes, ...]], "Entry | None"]


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class PutCache:
    """The stat cache of one put (the ``put_cache`` database, documented in ``pfsfs.index``).

    ``reuse`` answers "is this file's content known?": only when its (size, mtime ns, ctime
    ns, inode, device) equal those recorded when a put last read it *and* the branch head's
    entry at the destination holds the manifest recorded then (so the content is reachable
    and gc keeps it). ``note`` records what this put learned; ``save`` writes it once the
    commit landed. With ``read=False`` (``--no-cache``) nothing is reused, all is recorded."""

    def __init__(
        self, index: Index, repo: str, branch: str, head: HeadLookup, *, read: bool = True
    ) -> None:
        self.index, self.head, self.read = index, head, read
        self.scope = repo.encode() + b"\0" + branch.encode() + b"\0"
        self.scan_start = time.time_ns()
        self.prefix = b""
        self.known: dict[bytes, list[Any]] = {}
        self.learned: dict[bytes, list[Any]] = {}
        self.hits = 0

    def begin(self, src_abs: bytes) -> None:
        """Start a scan of ``src_abs`` (taken before its first ``lstat``)."""
        self.scan_start = time.time_ns()
        self.prefix = src_abs
        if self.read:
            self.known = self.index.put_cache_load(self.scope, src_abs)

    def reuse(self, src_abs: bytes, st: os.stat_result, dest: tuple[bytes, ...]) -> Entry | None:
        """The head's entry at ``dest`` if it holds this unchanged file's content, else None."""
        record = self.known.get(src_abs)
        if record is None or len(record) != 6 or record[:5] != _stat_key(st):
            return None
        entry = self.head(dest)
        if entry is None or entry.type != FILE or entry.ref is None:
            return None
        if entry.ref.id != record[5] or entry.size != st.st_size:
            return None
        self.hits += 1
        return entry

    def note(self, src_abs: bytes, st: os.stat_result, entry: Entry) -> None:
        """Record the content a file got, unless its stat could still change unseen."""
        fence = self.scan_start - RACY_NS
        if entry.ref is None or st.st_mtime_ns >= fence or st.st_ctime_ns >= fence:
            return
        self.learned[src_abs] = [*_stat_key(st), entry.ref.id]

    def save(self) -> None:
        """Replace the records under the scanned source path by what this put learned."""
        if self.prefix:
            self.index.put_cache_store(self.scope, self.prefix, self.learned)


def head_lookup(repository: Repository, repo: str, branch: str) -> HeadLookup:
    """Entries of the branch head by path, each directory's tree read once (none when the
    branch does not exist yet)."""
    try:
        head = repository.branch_head(repo, branch)
    except NotFound:
        head = None
    root = repository.root_of(head) if head is not None else None
    listings: dict[tuple[bytes, ...], dict[bytes, Entry] | None] = {}

    def listing(parts: tuple[bytes, ...]) -> dict[bytes, Entry] | None:
        if parts not in listings:
            if not parts:
                entry = root
            else:
                parent = listing(parts[:-1])
                entry = parent.get(parts[-1]) if parent is not None else None
            listings[parts] = (
                repository.list_dir(entry) if entry is not None and entry.is_dir else None
            )
        return listings[parts]

    def lookup(dest: tuple[bytes, ...]) -> Entry | None:
        if not dest:
            return None
        found = listing(dest[:-1])
        return found.get(dest[-1]) if found is not None else None

    return lookup


# -- a put: scan, then ingest --------------------------------------------------------------------


@dataclass
class _Item:
    """One name a put stages: where it is, where it goes, its ``lstat``."""

    path: bytes
    dest: tuple[bytes, ...]
    st: os.stat_result
    reuse: Entry | None = None  # the stat cache's answer: content already in the head
    fd: int = -1  # opened ahead (``_Readahead``)


@dataclass
class PutPlan:
    """What a put will stage, scanned before anything is read (for the progress bar too)."""

    src: bytes
    items: list[_Item]
    is_dir: bool
    cache: PutCache | None = None
    contents: bool = False  # the directory's entries into dest, keeping what is there

    @property
    def read_bytes(self) -> int:
        """Bytes the put will read: each inode not answered by the stat cache, once."""
        seen = {
            (i.st.st_dev, i.st.st_ino): i.st.st_size
            for i in self.items
            if stat.S_ISREG(i.st.st_mode) and i.reuse is None
        }
        return sum(seen.values())


def _lstat(path: bytes) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise _read_error(path, exc) from None


def _walk_error(exc: OSError) -> None:
    raise InvalidInput(f"cannot read {show_local(exc.filename)}: {exc.strerror}")


def plan_put(
    src: Path,
    dest: tuple[bytes, ...],
    *,
    recursive: bool,
    cache: PutCache | None = None,
    contents: bool = False,
) -> PutPlan:
    """``lstat`` every name below ``src`` (any file type or, with ``recursive``, a directory)
    and ask the stat cache about each regular file. Non-UTF-8 names are kept byte for byte.
    ``contents``: a directory's entries go into ``dest`` (see ``ingest_tree``)."""
    raw = os.fsencode(src)
    if cache is not None:
        cache.begin(os.path.abspath(raw))
    try:
        st = os.lstat(raw)
    except FileNotFoundError:
        raise NotFound(f"{show_local(raw)} does not exist") from None
    except OSError as exc:
        raise _read_error(raw, exc) from None
    items = [_Item(raw, dest, st)]
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir:
        if not recursive:
            raise InvalidInput(f"{show_local(raw)} is a directory (use -r to put it recursively)")
        for dirpath, dirnames, filenames in os.walk(raw, onerror=_walk_error):
            rel = os.path.relpath(dirpath, raw)
            base = dest + (tuple(rel.split(b"/")) if rel != b"." else ())
            for name in dirnames + filenames:
                check_name(name)
                path = os.path.join(dirpath, name)
                items.append(_Item(path, base + (name,), _lstat(path)))
    if cache is not None and cache.read:
        prefix = os.path.abspath(raw)
        for item in items:
            if stat.S_ISREG(item.st.st_mode):
                item.reuse = cache.reuse(_abs(prefix, raw, item.path), item.st, item.dest)
    return PutPlan(raw, items, is_dir, cache, contents and is_dir)


def _abs(prefix: bytes, raw: bytes, path: bytes) -> bytes:
    """The absolute form of ``path`` (``raw`` or below it), from ``raw``'s absolute form."""
    return prefix if path == raw else prefix + path[len(raw) :]


@dataclass
class _LinkGroup:
    """Names of one local inode met during a put, and the entry they share."""

    entry: Entry
    dests: list[tuple[bytes, ...]] = field(default_factory=list)


class _Reader:
    """Reads *and chunks* the large files of a put, in order, in a thread of its own, at most
    ``AHEAD_BYTES`` ahead of the main thread, which hashes and stores the chunks. Reading
    (a copy in the kernel), cutting and hashing each take a similar share of the CPU, and
    ``read``, the chunker and BLAKE3 all release the GIL, so the work spreads over two cores
    (and on a cold disk the reads stream meanwhile). Pieces of a file are handed over as the
    chunks cut from them, so few hand-offs (one per ``READ_WINDOW``) cross the threads."""

    AHEAD_BYTES = 64 << 20

    def __init__(self, items: list[_Item], chunker: Chunker) -> None:
        self.items = items
        self.chunker = Chunker(chunker.params)  # its own: never used by two threads at once
        self.cond = threading.Condition()
        self.queue: deque[tuple[_Item, list[memoryview] | OSError | None]] = deque()
        self.buffered = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="pfsfs-put-read", daemon=True)
        if items:
            self.thread.start()

    def _run(self) -> None:
        for item in self.items:
            try:
                fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    batch: list[memoryview] = []
                    for chunk in cut_fd(fd, self.chunker, item.st.st_size):
                        batch.append(chunk)
                        if len(batch) >= 16 and not self._push(item, batch):
                            return
                        if len(batch) >= 16:
                            batch = []
                    if batch and not self._push(item, batch):
                        return
                finally:
                    os.close(fd)
                end: OSError | None = None
            except OSError as exc:
                end = exc
            if not self._push(item, end):
                return

    def _push(self, item: _Item, what: list[memoryview] | OSError | None) -> bool:
        size = sum(len(c) for c in what) if isinstance(what, list) else 0
        with self.cond:
            while self.buffered > self.AHEAD_BYTES and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return False
            self.queue.append((item, what))
            self.buffered += size
            self.cond.notify_all()
            return True

    def chunks(self, item: _Item) -> Iterator[memoryview]:
        """``item``'s chunks (the next file in the reader's order)."""
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                got, what = self.queue.popleft()
                if isinstance(what, list):
                    self.buffered -= sum(len(c) for c in what)
                self.cond.notify_all()
            assert got is item, "files taken out of the reader's order"
            if what is None:
                return
            if isinstance(what, OSError):
                raise what
            yield from what

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.queue.clear()
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join()


class _Readahead:
    """Reading ahead of the chunker. Files of ``BIG`` bytes or more are read and chunked by
    ``READERS`` ``_Reader`` threads; smaller ones are opened ahead here with
    ``POSIX_FADV_WILLNEED`` (the kernel starts the I/O and returns), so a cold disk serves
    many small reads at once instead of one after another — a thread per small file would
    cost more in hand-offs than the read itself. At most ``AHEAD_FILES`` small files are open
    at a time."""

    BIG = 1 << 20
    AHEAD_FILES = 64
    READERS = max(1, min(2, os.cpu_count() or 1))

    def __init__(self, items: list[_Item], chunker: Chunker) -> None:
        seen: set[tuple[int, int]] = set()
        todo = []
        for i in items:  # each inode once: later names of a hard-linked file are not read
            if stat.S_ISREG(i.st.st_mode) and i.reuse is None:
                if i.st.st_nlink > 1:
                    if (i.st.st_dev, i.st.st_ino) in seen:
                        continue
                    seen.add((i.st.st_dev, i.st.st_ino))
                todo.append(i)
        self.small = [i for i in todo if i.st.st_size < self.BIG]
        big = [i for i in todo if i.st.st_size >= self.BIG]
        # Files are independent: READERS threads take every READERS-th one, each in order, so
        # the chunking (the largest share of the CPU) runs on every core.
        self.readers = [_Reader(big[k :: self.READERS], chunker) for k in range(self.READERS)]
        self.big = {id(item): n % self.READERS for n, item in enumerate(big)}
        self.next = 0  # first item of ``small`` not opened yet
        self.done = 0  # items of ``small`` handed out

    def take(self, item: _Item) -> Iterator[memoryview] | None:
        """``item`` is about to be read: its chunks if the reader thread reads it, else None
        (it is read from ``item.fd`` when open here, or opened by the caller)."""
        reader = self.big.pop(id(item), None)
        if reader is not None:
            return self.readers[reader].chunks(item)
        if self.done < len(self.small) and self.small[self.done] is item:
            self.done += 1
        self.next = max(self.next, self.done)
        while self.next < len(self.small) and self.next - self.done < self.AHEAD_FILES:
            ahead = self.small[self.next]
            self.next += 1
            try:
                ahead.fd = os.open(ahead.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                if ahead.st.st_size > 0:
                    os.posix_fadvise(ahead.fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                if ahead.fd >= 0:
                    os.close(ahead.fd)
                ahead.fd = -1  # ingest_file opens it again and reports the error
        return None

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        for item in self.small:
            if item.fd >= 0:
                os.close(item.fd)
                item.fd = -1


class _Ingest:
    """One put: stages names into ``changes``; names of one inode become a link group."""

    def __init__(
        self, changes: ChangeSet, writer: ObjectWriter, chunker: Chunker, progress: Progress
    ) -> None:
        self.changes, self.writer, self.chunker, self.progress = changes, writer, chunker, progress
        self.groups: dict[tuple[int, int], _LinkGroup] = {}
        self.count = 0

    def stage(self, item: _Item, readahead: _Readahead) -> Entry | None:
        """Stage one scanned name; returns a regular file's entry (for the stat cache)."""
        st, path, dest = item.st, item.path, item.dest
        if stat.S_ISDIR(st.st_mode):
            self.changes.mkdir(dest, dir_entry(st, _meta_extra(path)))
            return None
        if stat.S_ISREG(st.st_mode):
            self.count += 1
        if st.st_nlink > 1:
            group = self.groups.get((st.st_dev, st.st_ino))
            if group is None:
                entry = self._entry(item, readahead)
                group = self.groups[(st.st_dev, st.st_ino)] = _LinkGroup(entry)
            group.dests.append(dest)
            return group.entry if stat.S_ISREG(st.st_mode) else None
        entry = self._entry(item, readahead)
        self.changes.put(dest, entry)
        return entry if stat.S_ISREG(st.st_mode) else None

    def _entry(self, item: _Item, readahead: _Readahead) -> Entry:
        extra = _meta_extra(item.path)
        if not stat.S_ISREG(item.st.st_mode):
            return special_entry(item.path, item.st, extra)
        if item.reuse is not None:
            return file_entry(item.st, item.reuse.ref, item.reuse.size, extra or None)
        chunks = readahead.take(item)
        fd, item.fd = item.fd, -1
        return ingest_file(
            item.path, item.st, self.writer, self.chunker, self.progress, extra or None, fd, chunks
        )

    def finish(self) -> None:
        """Stage the link groups: two or more names share a fresh group id; a name whose
        other links lie outside the put is an ordinary entry."""
        for group in self.groups.values():
            entry = group.entry
            if len(group.dests) > 1:
                entry = entry.with_fields(link=os.urandom(16), nlink=len(group.dests))
            for dest in group.dests:
                self.changes.put(dest, entry)


def ingest_plan(
    plan: PutPlan,
    changes: ChangeSet,
    writer: ObjectWriter,
    chunker: Chunker,
    progress: Progress = _no_progress,
) -> int:
    """Stage what ``plan`` scanned; returns the number of regular files staged. The stat
    cache (if any) learns every file read or reused; ``plan.cache.save()`` after the commit."""
    tune_malloc()
    ingest = _Ingest(changes, writer, chunker, progress)
    readahead = _Readahead(plan.items, chunker)
    cache = plan.cache
    prefix = os.path.abspath(plan.src) if cache is not None else b""
    try:
        first, *rest = plan.items
        if plan.is_dir:
            stage_dir = changes.mkdir if plan.contents else changes.put
            stage_dir(first.dest, dir_entry(first.st, _meta_extra(first.path)))
        else:
            rest = plan.items
        for item in rest:
            entry = ingest.stage(item, readahead)
            if cache is not None and entry is not None:
                cache.note(_abs(prefix, plan.src, item.path), item.st, entry)
    finally:
        readahead.close()
    ingest.finish()
    return ingest.count


def ingest_tree(
    src: Path,
    dest: tuple[bytes, ...],
    changes: ChangeSet,
    writer: ObjectWriter,
    chunker: Chunker,
    *,
    recursive: bool,
    progress: Progress = _no_progress,
    contents: bool = False,
) -> int:
    """Stage ``src`` (any file type or, with ``recursive``, a directory) at ``dest``, reading
    every file. A directory replaces what ``dest`` held; with ``contents`` (rsync's ``dir/``)
    its entries are put into the directory ``dest`` instead, next to what is already there.
    Returns the number of regular files staged."""
    plan = plan_put(src, dest, recursive=recursive, contents=contents)
    return ingest_plan(plan, changes, writer, chunker, progress)


# -- export --------------------------------------------------------------------------------------


def _write_error(exc: OSError, path: bytes) -> PfsError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left on device writing {show_local(path)}")
    return StoreError(f"cannot write {show_local(path)}: {exc.strerror}")


def _temp_name(out: bytes) -> bytes:
    """A fresh name next to ``out`` (short, so a 255-byte name still has a temp name)."""
    return os.path.join(os.path.dirname(out), b".pfsfs-" + os.urandom(6).hex().encode())


#: Granularity of holes in exported files: an all-zero block of this size is not written.
HOLE_BLOCK = 64 << 10


def _write_view(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _zero_block(data: bytes | bytearray | memoryview, i: int, end: int) -> bool:
    """Whether ``data[i:end]`` is all zero bytes (its first and last byte first: cheap, and
    for most data blocks the answer). A view's block is copied to be counted, only then."""
    if data[i] or data[end - 1]:
        return False
    if isinstance(data, memoryview):
        return bytes(data[i:end]).count(0) == end - i
    return data.count(0, i, end) == end - i


def _write_sparse(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write ``data`` at the file offset, leaving all-zero blocks as holes (lseek over them);
    returns its size in bytes. A view (a chunk in the read cache's buffer) is written from
    where it is, not copied."""
    view = memoryview(data).cast("B")  # bytes, whatever the view's item size and shape
    if isinstance(data, memoryview):
        data = view
    n, i = len(view), 0
    while i < n:
        j = i
        while j < n and not _zero_block(data, j, min(j + HOLE_BLOCK, n)):
            j = min(j + HOLE_BLOCK, n)  # the run of blocks that hold data
        _write_view(fd, view[i:j])
        i = j
        while i < n and _zero_block(data, i, min(i + HOLE_BLOCK, n)):
            i = min(i + HOLE_BLOCK, n)  # the run of zero blocks after it
        if i > j:
            os.lseek(fd, i - j, os.SEEK_CUR)
    return n


def _write_all(fd: int, chunks: Iterator[bytes], *, holes: bool) -> None:
    """Write every chunk; with ``holes`` (a fresh file), zero blocks become holes."""
    size = 0
    for data in chunks:
        if holes:
            size += _write_sparse(fd, data)
        else:
            _write_view(fd, memoryview(data).cast("B"))
    if holes:
        os.ftruncate(fd, size)  # a trailing hole


def restore_xattrs(entry: Entry, path: bytes, shown: str) -> bool:
    """Set the entry's xattrs on ``path``; one warning line when some cannot be set."""
    xattrs = entry.xattrs
    if not xattrs:
        return True
    failed: list[str] = []
    reason = ""
    for name, value in xattrs.items():
        raw = name if isinstance(name, bytes) else os.fsencode(str(name))
        try:
            if not isinstance(value, bytes):
                raise ValueError("not bytes")
            os.setxattr(path, raw, value, follow_symlinks=False)
        except (OSError, ValueError) as exc:
            failed.append(show(raw))
            reason = exc.strerror if isinstance(exc, OSError) else "damaged entry"
    if failed:
        log.warning("%s: xattrs not restored (%s): %s", shown, reason, ", ".join(failed))
    return not failed


def _finish_meta(entry: Entry, path: bytes, shown: str) -> None:
    """xattrs first (they need write permission), then mode, then mtime."""
    restore_xattrs(entry, path, shown)
    if entry.type != SYMLINK:
        os.chmod(path, entry.mode)
    os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def _into_existing(out: bytes) -> bool:
    """Whether ``out`` is an existing device, FIFO or socket (also through a symlink)."""
    try:
        st = os.stat(out)
    except OSError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


def export_file(
    chunks: Iterator[bytes], entry: Entry, out: bytes, *, into_special: bool = False
) -> None:
    """Write a file atomically (temp + rename), restoring xattrs, mode and mtime.

    With ``into_special`` (the explicit target of ``get -o``) an existing device, FIFO or
    socket at ``out`` is written into instead, as ``cp`` does, and keeps its own metadata.
    """
    if into_special and _into_existing(out):
        _write_into(chunks, out)
        return
    if os.path.islink(out):
        raise InvalidInput(f"refusing to write through the symlink {show_local(out)}")
    tmp = _temp_name(out)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            _write_all(fd, chunks, holes=True)
            start_writeback(fd)  # a `sync` after the get then has little left to wait for
        finally:
            os.close(fd)
        _finish_meta(entry, tmp, show_local(out))
        os.rename(tmp, out)
    except BaseException as exc:
        _discard(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, out) from None
        raise


def _write_into(chunks: Iterator[bytes], out: bytes) -> None:
    try:
        fd = os.open(out, os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        raise _write_error(exc, out) from None
    try:
        _write_all(fd, chunks, holes=False)
    except BrokenPipeError as exc:  # `get -o /dev/stdout | head`: the CLI decides (exit 0)
        raise BrokenPipeError(exc.errno, exc.strerror, show_local(out)) from None
    except OSError as exc:
        raise _write_error(exc, out) from None
    finally:
        os.close(fd)


def _discard(tmp: bytes) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


class DeviceNotCreated(StoreError):
    """``mknod`` of a device was refused (not root): the caller decides to warn or fail."""


def _make_node(entry: Entry, tmp: bytes, out: bytes) -> None:
    kind = entry.kind
    if kind == SYMLINK:
        os.symlink(entry.target, tmp)
    elif kind == FIFO:
        os.mkfifo(tmp, 0o600)
    elif kind == Kind.SOCKET:
        os.mknod(tmp, kind.mode_bits | 0o600)
    elif kind in (Kind.CHAR, Kind.BLOCK):
        rdev = entry.rdev if entry.rdev >= 0 else 0
        try:
            os.mknod(tmp, kind.mode_bits | 0o600, rdev)
        except PermissionError:
            what = "character" if kind == Kind.CHAR else "block"
            raise DeviceNotCreated(
                f"{show_local(out)}: {what} device {os.major(rdev)},{os.minor(rdev)} not "
                "created (creating device files needs root with CAP_MKNOD)"
            ) from None
    else:
        raise InvalidInput(f"{show_local(out)}: unknown entry type {entry.type!r}")


def export_special(entry: Entry, out: bytes, *, replace_any: bool = True) -> None:
    """Create a symlink, FIFO, device or socket at ``out`` (temp name + rename).

    An existing non-directory at ``out`` is replaced; with ``replace_any`` False (the explicit
    target of ``get -o``) only a regular file or a symlink is, never a device or FIFO.
    """
    if not replace_any and _lexists_special(out):
        raise AlreadyExists(f"{show_local(out)} exists and is not a regular file; not replaced")
    tmp = _temp_name(out)
    try:
        _make_node(entry, tmp, out)
        _finish_meta(entry, tmp, show_local(out))
        os.rename(tmp, out)
    except BaseException as exc:
        _discard(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, out) from None
        raise


def _lexists_special(out: bytes) -> bool:
    try:
        st = os.lstat(out)
    except OSError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))


def _identity(entry: Entry) -> tuple[Any, ...]:
    return (entry.kind, entry.content_id(), entry.target, entry.rdev)


@dataclass
class ExportStats:
    files: int = 0  # regular files written (each name of a link group counts)
    skipped: int = 0  # device files the caller may not create


class _Stopped(Exception):
    """The get ended while a writer thread still wanted chunks: its file is abandoned."""


class _FetchWorker:
    """One thread of a ``_Fetcher``: reads and verifies the chunks of its files (numbered in
    the ``get``'s order), in order, at most ``ahead_bytes`` ahead of the writing thread."""

    PREFETCH = 16

    def __init__(
        self,
        reader: ObjectReader,
        files: list[tuple[int, Entry]],
        ahead_bytes: int,
        *,
        remote_prefetch: int = PREFETCH,
    ) -> None:
        """``remote_prefetch``: how many chunks a remote store is asked for ahead (a lone
        reader may go as far as a mount's, ``SEQUENTIAL_AHEAD_CHUNKS``; the four streams of a
        directory ``get`` together no further: the read cache drops blocks fetched that far
        ahead before they are read, and a ``get`` keeps none on disk to read them back)."""
        self.reader = reader
        self.files = files
        self.ahead_bytes = ahead_bytes
        self.remote_prefetch = remote_prefetch
        self.cond = threading.Condition()
        # (file number, a verified chunk or the file's end: None or the error reading it)
        self.queue: deque[tuple[int, bytes | BaseException | None]] = deque()
        self.buffered = 0
        self.stopped = False
        self.died: BaseException | None = None  # what ended the thread unexpectedly (a bug)
        self.thread = threading.Thread(target=self._run, name="pfsfs-get-read", daemon=True)
        if files:
            self.thread.start()

    def _stream(self) -> Iterator[tuple[int, Locator | BaseException | None]]:
        """(file number, each chunk's locator, then None or the error reading its manifest)."""
        for no, entry in self.files:
            try:
                locs = [c.loc for c in self._manifest(entry)]
            except Exception as exc:  # noqa: BLE001 - raised in the writing thread
                yield no, exc
                continue
            for loc in locs:
                yield no, loc
            yield no, None

    def _run(self) -> None:
        """``_read``; whatever else ends it (a bug, no memory) is raised to the writing thread
        instead of leaving it waiting for chunks that never come."""
        try:
            self._read()
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            with self.cond:
                self.died = exc
                self.cond.notify_all()

    def _hint(self, local: Callable[..., None] | None, loc: Locator) -> None:
        """Ask the store to start reading ``loc``; a hint that fails is only a lost hint (the
        read itself reports what is wrong)."""
        try:
            if local is not None:
                local([(blob_key(loc), loc.offset, loc.length)])
            else:
                self.reader.prefetch([loc])
        except Exception as exc:  # noqa: BLE001
            log.debug("read-ahead hint for %s failed: %s", loc.hex[:16], exc)

    def _read(self) -> None:
        """Read chunk after chunk, asking the store for the next ``PREFETCH`` (across file
        boundaries; ``remote_prefetch`` for a remote store) ahead: a local store has the
        kernel read them ahead, a remote one starts fetching them. ``read_raw`` verifies each
        (and has the cache-or-store fallbacks)."""
        stream = self._stream()
        ahead: deque[tuple[int, Locator | BaseException | None]] = deque()
        failed = -1  # the file whose read failed: the rest of its chunks are skipped
        local = getattr(self.reader.store, "read_ahead_ranges", None)  # a local store's
        depth = self.PREFETCH if local is not None else self.remote_prefetch

        def fill() -> None:
            while len(ahead) < depth:
                step = next(stream, None)
                if step is None:
                    return
                ahead.append(step)
                if isinstance(step[1], Locator):
                    self._hint(local, step[1])

        fill()
        while ahead:
            no, what = ahead.popleft()
            fill()
            if no == failed:
                continue
            got: bytes | BaseException | None = None
            if isinstance(what, Locator):
                try:
                    got = self.reader.read_raw(what)
                except Exception as exc:  # noqa: BLE001 - raised in the writing thread
                    got, failed = exc, no
            elif isinstance(what, BaseException):
                got, failed = what, no
            if not self._push(no, got):
                return

    def _manifest(self, entry: Entry) -> list[ManifestChunk]:
        if entry.ref is None:
            return []
        return decode_manifest(self.reader.read_raw(entry.ref))

    def _push(self, no: int, what: bytes | BaseException | None) -> bool:
        with self.cond:
            while self.buffered > self.ahead_bytes and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return False
            self.queue.append((no, what))
            if isinstance(what, bytes):
                self.buffered += len(what)
            self.cond.notify_all()
            return True

    def chunks(self, no: int) -> Iterator[bytes]:
        """File ``no``'s chunks; what is left of its earlier files (not read to the end) is
        dropped on the way."""
        while True:
            with self.cond:
                while not self.queue:
                    if self.stopped:  # the get is ending (an error elsewhere, ^C)
                        raise _Stopped
                    if self.died is not None:
                        raise self.died
                    self.cond.wait()
                got, what = self.queue.popleft()
                if isinstance(what, bytes):
                    self.buffered -= len(what)
                self.cond.notify_all()
            if got < no:
                continue
            if what is None:
                return
            if isinstance(what, BaseException):
                raise what
            yield what

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.queue.clear()
            self.cond.notify_all()

    def close(self) -> None:
        self.stop()
        if self.thread.is_alive():
            self.thread.join()


class _Fetcher:
    """Reads, verifies and writes the files a ``get`` writes, in ``WORKERS`` streams that take
    alternate files (files are independent): in each, one thread reads and verifies chunks
    (at most ``AHEAD_BYTES`` ahead over all streams) and one writes them out, so reading,
    re-hashing and writing spread over the cores (``read``, ``write`` and BLAKE3 release the
    GIL) and on a cold disk the reads stream meanwhile. Manifests are decoded without the
    reader's cache (which is not shared between threads).

    Why writer threads: copying into the page cache bounded the one writing thread there was
    (a ``dd`` from memory runs at ~1.4 GB/s here), and a cold store's chunk files are waited
    for one at a time per stream (each open reads directory and inode blocks): with four
    streams, each writing its own files, a cold 1 GiB get went 1,100 -> 1,015 ms (medians of
    5 interleaved runs; the disk reading and writing at once bounds it at ~830 ms). Files
    are handed over in the walk's order (``submit``), each to its stream's writer, which
    writes them in that order. An error writing a file is its future's."""

    AHEAD_BYTES = 64 << 20
    WORKERS = 4

    def __init__(self, repository: Repository, files: list[tuple[bytes, Entry]]) -> None:
        self.outs = [out for out, _entry in files]
        self.next = 0  # the number of the next file to be taken
        numbered = [(no, entry) for no, (_out, entry) in enumerate(files)]
        share = self.AHEAD_BYTES // self.WORKERS
        self.workers = [
            _FetchWorker(repository.reader, numbered[k :: self.WORKERS], share)
            for k in range(self.WORKERS)
        ]
        self.writers = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pfsfs-get-write")
            for _ in range(self.WORKERS if files else 0)
        ]

    def submit(self, out: bytes, write: Callable[[Iterator[bytes]], None]) -> Future[None] | None:
        """Have ``write`` called with the chunks of the file to be written at ``out``, in its
        stream's writer thread, if it is the next file fetched (else None: the caller reads
        the file itself)."""
        if self.next >= len(self.outs) or self.outs[self.next] != out:
            return None
        no, self.next = self.next, self.next + 1
        k = no % self.WORKERS
        return self.writers[k].submit(write, self.workers[k].chunks(no))

    def close(self) -> None:
        """Stop reading; wait for the writers (a file they were writing is discarded). Every
        stream is told to stop before any is waited for (a second ^C during a wait must not
        leave the others writing)."""
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.close()
        for writer in self.writers:
            writer.shutdown(wait=True, cancel_futures=True)


class _Export:
    """One ``get`` of a directory: the walk, in the main thread, creates directories, links
    and special files and hands each regular file to the fetcher's writers; a directory's
    metadata is restored once everything under it is written (``_finish_dirs``)."""

    #: Directories whose files are still being written, at most, before the walk waits.
    DIRS_PENDING = 1024
    #: Files handed to the writers and not written yet, at most, before the walk waits (what
    #: the walk holds per file is small, but a tree may have millions).
    FILES_PENDING = 4096

    def __init__(self, repository: Repository, progress: Progress) -> None:
        self.repository = repository
        lock = threading.Lock()

        def locked(n: int) -> None:  # writer threads report progress too
            with lock:
                progress(n)

        self.progress = locked
        # link group -> its first name, that file's identity, and its write (None: written)
        self.links: dict[bytes, tuple[bytes, tuple[Any, ...], Future[None] | None]] = {}
        self.stats = ExportStats()
        self.fetcher: _Fetcher | None = None
        # Post-order: a directory comes after everything below it. Each: the entry, where it
        # goes, and how many files directly in it are being written (a one-item list, which
        # the writer threads count down under ``self.lock``).
        self.dirs: deque[tuple[Entry, bytes, list[int]]] = deque()
        self.lock = threading.Lock()
        self.inflight: deque[Future[None]] = deque()  # the writes not waited for, in order

    def files(self, entry: Entry, out: bytes) -> list[tuple[bytes, Entry]]:
        """The regular files ``tree`` will write content for, in its order: every name but
        the later names of a link group (those are linked to the first)."""
        found: list[tuple[bytes, Entry]] = []
        seen: set[bytes] = set()

        def walk(entry: Entry, out: bytes) -> None:
            for name, child in sorted(self.repository.list_dir(entry).items()):
                check_name(name)
                target = os.path.join(out, name)
                if child.is_dir:
                    walk(child, target)
                elif child.type == FILE:
                    link = child.link_id
                    if isinstance(link, bytes):
                        if link in seen:
                            continue
                        seen.add(link)
                    found.append((target, child))

        walk(entry, out)
        return found

    def run(self, entry: Entry, out: bytes) -> None:
        self.tree(entry, out)
        self._finish_dirs(wait=True)

    def tree(self, entry: Entry, out: bytes) -> None:
        if not os.path.isdir(out):
            try:
                os.makedirs(out, exist_ok=True)
            except OSError as exc:
                raise _write_error(exc, out) from None
        writing = [0]
        for name, child in sorted(self.repository.list_dir(entry).items()):
            check_name(name)  # a damaged tree must not escape `out`
            target = os.path.join(out, name)
            if child.is_dir:
                if os.path.islink(target):
                    raise InvalidInput(
                        f"refusing to write through the symlink {show_local(target)}"
                    )
                self.tree(child, target)
            else:
                self.leaf(child, target, writing)
        self.dirs.append((entry, out, writing))
        self._finish_dirs(wait=len(self.dirs) > self.DIRS_PENDING)

    def _wait_writes(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are in flight (the oldest first, and those done
        already); the first failed write is raised."""
        while self.inflight and (len(self.inflight) > keep or self.inflight[0].done()):
            self.inflight.popleft().result()  # raises what writing the file raised

    def _finish_dirs(self, *, wait: bool) -> None:
        """Restore the metadata of the directories whose files are all written (in post-order:
        a directory's after its subdirectories'); with ``wait``, of all of them."""
        self._wait_writes(0 if wait else self.FILES_PENDING)
        while self.dirs:
            entry, out, writing = self.dirs[0]
            with self.lock:
                if writing[0]:
                    return  # (never with ``wait``: every write has ended)
            self.dirs.popleft()
            try:
                _finish_meta(entry, out, show_local(out))
            except OSError as exc:
                raise _write_error(exc, out) from None

    def leaf(self, entry: Entry, out: bytes, writing: list[int]) -> None:
        """Write one non-directory; a regular file in a writer thread when the fetcher has it
        (counted in ``writing``, its directory's count, until it is written)."""
        link = entry.link_id
        if isinstance(link, bytes) and self._link(link, entry, out):
            if entry.type == FILE:
                self.stats.files += 1
                self.progress(entry.size)  # the bar counts every name's bytes
            return
        write: Future[None] | None = None
        if entry.type == FILE:

            def write_file(chunks: Iterator[bytes]) -> None:
                try:
                    export_file(_counting(chunks, self.progress), entry, out)
                finally:  # before the future ends: who waited for it sees the count down
                    with self.lock:
                        writing[0] -= 1

            with self.lock:
                writing[0] += 1
            write = self.fetcher.submit(out, write_file) if self.fetcher is not None else None
            if write is None:
                with file_chunks(self.repository, entry) as chunks:
                    write_file(chunks)
            else:
                self.inflight.append(write)
                self._wait_writes(self.FILES_PENDING)
            self.stats.files += 1
        else:
            try:
                export_special(entry, out)
            except DeviceNotCreated as exc:
                log.warning("%s", exc.message)
                self.stats.skipped += 1
                return
        if isinstance(link, bytes):
            self.links[link] = (out, _identity(entry), write)

    def _link(self, link: bytes, entry: Entry, out: bytes) -> bool:
        """Hard-link ``out`` to the group's first name; False when there is none yet (or a
        damaged tree gave the group two different contents: then each name gets its own)."""
        first = self.links.get(link)
        if first is None or first[1] != _identity(entry):
            return False
        if first[2] is not None:
            first[2].result()  # the first name is written (or its error raised)
        tmp = _temp_name(out)
        try:
            os.link(first[0], tmp, follow_symlinks=False)
            os.rename(tmp, out)
            _discard(tmp)  # rename is a no-op when `out` already is this inode
        except BaseException as exc:  # ^C too: no temp name is left behind
            _discard(tmp)
            if isinstance(exc, OSError):
                raise _write_error(exc, out) from None
            raise
        return True


def export_tree(
    repository: Repository, entry: Entry, out: bytes, progress: Progress = _no_progress
) -> ExportStats:
    """Write a directory entry's whole subtree under ``out``.

    Directory metadata is restored after their contents are written (writing changes them).
    """
    if os.path.islink(out):  # the caller's own -o naming a symlink to a directory
        out = os.path.realpath(out)
    tune_malloc()
    export = _Export(repository, progress)
    export.fetcher = _Fetcher(repository, export.files(entry, out))
    try:
        export.run(entry, out)
    finally:
        export.fetcher.close()
    return export.stats


def _counting(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for data in chunks:
        progress(len(data))
        yield data


#: A file at least this big is read ahead in a thread of its own (``file_chunks``); a smaller
#: one (a few chunks at most) in the caller's thread, where a thread would cost more than the
#: little it overlaps.
READ_AHEAD_MIN_BYTES = 4 << 20


@contextmanager
def file_chunks(repository: Repository, entry: Entry) -> Iterator[Iterator[bytes]]:
    """A regular file's content, chunk by chunk, every chunk verified: read and verified in a
    thread of their own (at most ``_Fetcher.AHEAD_BYTES`` ahead) while the caller writes them
    out, as ``get`` of a directory does. Reading, hashing and writing one after another in
    one thread took 1.82 s for a cold 1 GiB file here, against 1.0 s for the same file in a
    directory ``get``. Leaving the block (the end, an error, ^C) stops the reading thread."""
    if entry.type != FILE:
        raise InvalidInput("not a regular file")
    if entry.size < READ_AHEAD_MIN_BYTES:
        yield repository.iter_file(entry)
        return
    worker = _FetchWorker(
        repository.reader,
        [(0, entry)],
        _Fetcher.AHEAD_BYTES,
        remote_prefetch=SEQUENTIAL_AHEAD_CHUNKS,
    )
    try:
        yield worker.chunks(0)
    except Exception:
        worker.close()
        raise
    except BaseException:
        # ^C or SIGTERM: no wait for a read in flight (on S3, up to a minute per attempt).
        # The thread only reads; told to stop, it ends when that read does.
        worker.stop()
        raise
    else:
        worker.close()


def export_committed_file(
    repository: Repository,
    entry: Entry,
    out: bytes,
    progress: Progress = _no_progress,
    *,
    into_special: bool = False,
) -> None:
    """``export_file`` of a committed file, its chunks read ahead (``file_chunks``)."""
    with file_chunks(repository, entry) as chunks:
        export_file(_counting(chunks, progress), entry, out, into_special=into_special)


if TYPE_CHECKING:
    from .index import Index
    from .repository import Repository
