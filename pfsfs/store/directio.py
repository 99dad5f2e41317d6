"""Writing and reading files past the page cache (``O_DIRECT``), where the filesystem allows it.

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

Reads of such files (``DirectFileReader``) go past the page cache too, for the same reason: the
disk puts the bytes straight into a buffer from the heap, which malloc reuses (warm), where a
buffered read would fill fresh page-cache pages and then copy them once more.

``O_DIRECT`` needs the buffer's address and the length written to be multiples of the device's
block size; ``PAGE`` (4 KiB) is a multiple of every usual one. A file whose length is not is
written padded to ``PAGE`` and truncated back. A filesystem that refuses ``O_DIRECT`` at open
(``EINVAL``: some FUSE and network filesystems, or no ``O_DIRECT`` on this OS) gets ordinary
writes from then on; one that refuses a write gets an ordinary write for that file.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux (and a few others) only


def padded(length: int) -> int:
    """``length`` rounded up to a whole number of pages."""
    return -(-length // PAGE) * PAGE


class _Direct:
    """``O_DIRECT`` until the filesystem refuses it at open (``EINVAL``), then never again."""

    def __init__(self) -> None:
        self.direct = bool(_O_DIRECT)

    def _open(self, path: str | os.PathLike[str], flags: int) -> int | None:
        """``path`` opened with ``O_DIRECT``, or None if refused (do it the ordinary way)."""
        try:
            return os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | _O_DIRECT, 0o644)
        except OSError as exc:
            _unless_refused(exc)
            log.debug("no O_DIRECT for %s (%s): using the page cache from now on", path, exc)
            self.direct = False
            return None


def _unless_refused(exc: OSError) -> None:
    """Re-raise ``exc`` unless it is the filesystem refusing ``O_DIRECT``."""
    if exc.errno != errno.EINVAL:
        raise exc


class DirectFileWriter(_Direct):
    """Writes new files from page-aligned buffers with ``O_DIRECT``; ordinary writes, for good,
    once the filesystem refuses it."""

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
        fd = self._open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        if fd is None:
            return False
        try:
            view = buffer[: padded(length)]
            while view:
                view = view[os.write(fd, view) :]
            if padded(length) != length:
                os.ftruncate(fd, length)
        except OSError as exc:  # a full disk, say, is not cached; a refusal is written anew
            _unless_refused(exc)
            log.debug("O_DIRECT write refused for %s (%s): writing it the ordinary way", path, exc)
            return False
        finally:
            os.close(fd)
        return True


class DirectFileReader(_Direct):
    """Reads whole files with ``O_DIRECT``; ordinary reads, for good, once the filesystem refuses
    it at open (and for one file whose read it refuses)."""

    def read(self, path: str | os.PathLike[str]) -> memoryview | bytes:
        """The whole of ``path`` (``OSError`` if it cannot be read)."""
        if self.direct:
            data = self._read_direct(path)
            if data is not None:
                return data
        with open(path, "rb") as f:
            return f.read()

    def _read_direct(self, path: str | os.PathLike[str]) -> memoryview | None:
        fd = self._open(path, os.O_RDONLY)
        if fd is None:
            return None
        try:
            length = padded(os.fstat(fd).st_size)
            buffer = bytearray(length + PAGE)  # from the heap (see above); aligned below
            start = -_address(buffer) % PAGE
            view = memoryview(buffer)[start : start + length]
            got = 0
            while got < length:
                n = os.preadv(fd, [view[got:]], got)
                got += n
                if n == 0 or got % PAGE:  # the end of the file (it may have shrunk meanwhile)
                    break
            return view[:got]
        except OSError as exc:
            _unless_refused(exc)
            log.debug("O_DIRECT read refused for %s (%s): reading it the ordinary way", path, exc)
            return None
        finally:
            os.close(fd)


def _address(buffer: bytearray) -> int:
    """Where ``buffer``'s bytes start in memory."""
    holder = ctypes.c_char.from_buffer(buffer)  # exports the buffer while it lives
    try:
        return ctypes.addressof(holder)
    finally:
        del holder
