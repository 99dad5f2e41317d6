"""Writing new files, and reading data not cached already, past the page cache (``O_DIRECT``),
where the filesystem allows it.

Why the read cache writes this way: a page the kernel has not touched lately is costly to
touch for the first time. In the VMs this was measured in (firecracker, free page reporting) a
first touch runs at ~1 GB/s where a copy between warm pages runs at ~12 GB/s (``mmap`` a GiB and
touch each page, against copying between two warm 256 MiB buffers). Writing a cold 1 GiB read
into cache files through the page cache touches a fresh GiB of page cache, and that halved the
read itself (cold 1 GiB reads through an S3 mount, interleaved runs of one build: 230-400 MB/s
with page-cache writes, 480-710 with cache writes switched off). With ``O_DIRECT`` the disk takes
the bytes straight from the writer's buffer, which stays warm because it is reused: 480-590 MB/s
while caching 30-60% of the read (the rest dropped as the disk fell behind).

What it costs: the files are not in the page cache afterwards, so reading them again soon comes
from the disk rather than memory; and each write waits for the disk, so on a slow disk the
writer keeps up with less of a cold read (blocks it cannot take are not cached).

Reading (``read_uncached``): a mount's cold read reads each chunk once and the kernel keeps
the bytes elsewhere (the mount's own page cache), so a copy in the page cache of the store's
file only costs: the kernel filling fresh pages and copying them out. Read with
``O_DIRECT`` into a buffer from the (warm, reused) heap instead, the worker's system time for a
cold 1 GiB fell from ~0.24 s to ~0.06 s (four threads reading the store's chunk files). Data the
page cache holds already (just written by a put, read lately) is better read from there: the
``cachestat`` system call (Linux 6.5) tells, and without it nothing is read this way.

``O_DIRECT`` needs the buffer's address and the length written to be multiples of the device's
block size; ``PAGE`` (4 KiB) is a multiple of every usual one. A file whose length is not is
written padded to ``PAGE`` and truncated back. A filesystem that refuses ``O_DIRECT`` at open
(``EINVAL``: some FUSE and network filesystems, or no ``O_DIRECT`` on this OS) gets ordinary
writes from then on; one that refuses a write gets an ordinary write for that file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os

from pfsfs.buffers import uninitialized

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux (and a few others) only


def padded(length: int) -> int:
    """``length`` rounded up to a whole number of pages."""
    return -(-length // PAGE) * PAGE


class DirectFileWriter:
    """Writes new files from page-aligned buffers with ``O_DIRECT``; ordinary writes, for good,
    once the filesystem refuses it."""

    def __init__(self) -> None:
        self.direct = bool(_O_DIRECT)

    def write(self, path: str | os.PathLike[str], buffer: memoryview, length: int) -> None:
        """Create (or truncate) ``path`` holding ``buffer[:length]``. ``buffer`` starts on a page
        and holds at least ``padded(length)`` bytes (what lies past ``length`` is not kept)."""
        if len(buffer) < padded(length):
            raise ValueError("the buffer must hold the length rounded up to a page")
        if self.direct and self._write_direct(path, buffer, length):
            return
        with open(path, "wb") as f:
            f.write(buffer[:length])

    def _write_direct(self, path: str | os.PathLike[str], buffer: memoryview, length: int) -> bool:
        """True if written; False if the filesystem refused (then write it the ordinary way)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | _O_DIRECT
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.debug("no O_DIRECT for %s (%s): writing through the page cache", path, exc)
            self.direct = False
            return False
        try:
            view = buffer[: padded(length)]
            while view:
                view = view[os.write(fd, view) :]
            if padded(length) != length:
                os.ftruncate(fd, length)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a full disk, say: not cached
                raise
            log.debug("O_DIRECT write refused for %s (%s): writing it the ordinary way", path, exc)
            return False
        finally:
            os.close(fd)
        return True


# -- reading ---------------------------------------------------------------------------------

_SYS_CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(os.uname().machine)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


class _Uncached:
    """What this process has learnt: whether ``cachestat`` and ``O_DIRECT`` reads work."""

    def __init__(self) -> None:
        self.usable = bool(_O_DIRECT) and _SYS_CACHESTAT is not None
        self.syscall = None
        if self.usable:
            try:
                self.syscall = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                self.usable = False

    def cached_pages(self, fd: int, offset: int, length: int) -> int | None:
        """Pages of the range the page cache holds; None if the kernel cannot tell."""
        rng, st = _Range(offset, length), _CacheStat()
        if self.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
            log.debug("no cachestat (%s): reading through the page cache", ctypes.get_errno())
            self.usable = False
            return None
        return int(st.cache)


_uncached = _Uncached()


def reads_uncached() -> bool:
    """Whether ``read_uncached`` may read past the page cache on this system (so far)."""
    return _uncached.usable


#: Filesystems whose ``O_DIRECT`` reads go straight to a local disk: the ones a caller should
#: read past the page cache from. Elsewhere (NFS, FUSE, CIFS: the client's own read-ahead would
#: be lost; tmpfs: its pages are the data) reads stay cached.
DIRECT_READ_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs", "f2fs"})


def read_uncached(path: str | os.PathLike[str], offset: int, length: int) -> memoryview | None:
    """``length`` bytes of ``path`` from ``offset`` read with ``O_DIRECT`` when the page cache
    holds less than half of them; None when it holds more, or this cannot be done here (the
    caller reads the ordinary way). The view may be shorter at the end of the file. Raises
    what opening or reading raises (``FileNotFoundError``...)."""
    if not _uncached.usable or length <= 0:
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        cached = _uncached.cached_pages(fd, offset, length)
        if cached is None or cached * PAGE * 2 > length:
            return None
        start = offset - offset % PAGE  # O_DIRECT reads whole pages into a page-aligned buffer
        span = padded(offset + length - start)
        buffer = uninitialized(span + PAGE)  # preadv fills it: no zeroing under the GIL
        address = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
        skip = -address % PAGE
        view = memoryview(buffer)[skip : skip + span]
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | _O_DIRECT)
            got = os.preadv(fd, [view], start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.debug("no O_DIRECT reads from %s (%s): reading through the page cache", path, exc)
            _uncached.usable = False
            return None
        lo = offset - start
        return view[lo : max(lo, min(got, lo + length))]
    finally:
        os.close(fd)
