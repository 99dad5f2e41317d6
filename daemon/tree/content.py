"""Attributes and content of the inode tree: setattr (incl. truncate), xattrs, write, read.

File content is either the committed manifest (``staged`` False), or a sparse data file in the
staging directory overlaid on the first ``base_len`` bytes of the committed content: byte ranges
listed in ``extents`` come from the data file, the rest from the manifest (zeros past
``base_len``). When ``base_len`` is 0 the data file alone is the content. Writes go to the data
file and are journaled as ranges; reads merge the data file's ranges with the committed content.
Nothing is read whole into memory.

``Content`` also keeps what background chunking works from (``closed_files``) and produced
(``precomputed``, see ``precommit``), and the snapshot's side of staged data: filling in the
committed bytes of a region before it is re-chunked, and the nodes' state once committed.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
from typing import TYPE_CHECKING

from pfsfs.errors import StoreFull
from pfsfs.model import DIR, FILE, Entry

from ..chunkcache import ChunkCache
from .journal import Journal
from .nodes import FsError, Node, add_extent, cut_extents, extent_end, remove_range
from .table import InodeTable

if TYPE_CHECKING:
    from ..pfsdir import PfsArea
    from ..precommit import Precomputed
    from ..staging import Staging

log = logging.getLogger(__name__)

_COPY = 4 << 20  # bytes copied at a time when filling in committed bytes of a rewritten file
# A read of a committed file this close to its end starts fetching the file after it in its
# directory; only for files at least this big (small ones: see ``_start_next``).
NEXT_FILE_AHEAD = 4 << 20
NEXT_FILE_MIN = 1 << 20
NEXT_FILE_SCAN = 16  # entries looked at past the file for the next committed file


class Content:
    """Attributes, xattrs and file content of the table's nodes (synchronous, no awaits)."""

    def __init__(
        self,
        table: InodeTable,
        journal: Journal,
        staging: Staging | None,
        cache: ChunkCache,
        pfs: PfsArea,
    ) -> None:
        self.table = table
        self.journal = journal
        self.staging = staging
        self.cache = cache
        self.pfs = pfs
        # files whose last handle was closed (inode → size then), for background chunking,
        # and what that produced (see ``precommit``)
        self.closed_files: dict[int, int] = {}
        self.precomputed: dict[int, Precomputed] = {}
        self._next_started = 0  # the inode whose next file was started last
        # (directory inode, entry count, names, name → position) of the directory looked in
        # last (one directory's names: built once while its files are read one after another)
        self._order: tuple[int, int, list[bytes], dict[bytes, int]] | None = None

    @property
    def _io(self) -> bool:
        """True when data files are touched (a staged mount that is not replaying)."""
        return self.staging is not None and not self.journal.replaying

    # -- attributes --------------------------------------------------------------------------
    def setattr(self, ino: int, now: int, changes: dict[str, int]) -> Node:
        """``changes`` keys: mode uid gid size atime mtime ctime (values already final; atime
        and ctime are not committed)."""
        node = self.table.node(ino)
        self.table.check_writable(node)
        if "size" in changes:
            if node.kind == DIR:
                raise FsError(errno.EISDIR)
            if node.kind != FILE:
                raise FsError(errno.EINVAL)
        # a deleted-but-open file cannot be bound: nothing to journal or commit
        if self.journal.bind(node) and changes:
            self.journal.attrs_set(ino, changes, now)
        if "size" in changes:
            # No mtime stamp of our own: with the writeback cache the kernel keeps a regular
            # file's mtime and sends it (in this request or a later one) when it changes it.
            self._truncate(node, changes["size"])
        if "mode" in changes:
            node.mode = changes["mode"] & 0o7777
        if "uid" in changes:
            node.uid = changes["uid"]
        if "gid" in changes:
            node.gid = changes["gid"]
        if "mtime" in changes:
            node.mtime_ns = changes["mtime"]
        if "atime" in changes:
            node.atime_ns = changes["atime"]
        node.ctime_ns = changes.get("ctime", now)
        if changes.keys() - {"atime", "ctime"}:
            self.table.mark_dirty(node)
        return node

    def _stage(self, node: Node) -> None:
        """Turn committed content into staged content (nothing is copied yet)."""
        if node.staged:
            return
        node.staged = True
        node.base_len = node.base.size if node.base is not None else 0
        node.extents = []

    def _truncate(self, node: Node, size: int) -> None:
        self._stage(node)
        node.gen += 1
        if self._io:
            assert self.staging is not None
            os.ftruncate(self.staging.fd(node.ino), size)
        if size < node.size:
            node.base_len = min(node.base_len, size)
            cut_extents(node.extents, size)
        if node.failed:
            cut_extents(node.failed, size)
        if node.base_len == 0:
            node.extents = []
        node.size = size

    def set_xattr(self, ino: int, name: bytes, value: bytes | None, now: int) -> None:
        node = self.table.node(ino)
        self.table.check_writable(node)
        xattrs = dict(node.xattrs or {})
        if value is None:
            if name not in xattrs:
                raise FsError(errno.ENODATA)
            del xattrs[name]
        else:
            xattrs[name] = value
        if self.journal.bind(node):
            self.journal.xattr_set(ino, name, value, now)
        node.xattrs = xattrs or None
        node.ctime_ns = now
        self.table.mark_dirty(node)

    # -- writing -----------------------------------------------------------------------------
    def write(self, ino: int, offset: int, data: bytes, now: int | None) -> int:
        """Write through to the staged data file. ``now`` is the new mtime, or None when the
        kernel keeps mtime itself (writeback cache) and will set it with ``setattr``."""
        node = self.table.node(ino)
        if node.kind != FILE:
            raise FsError(errno.EISDIR if node.kind == DIR else errno.EINVAL)
        self.table.check_writable(node)
        assert self.staging is not None
        self._stage(node)
        try:
            written = os.pwrite(self.staging.fd(node.ino), data, offset)
            if self.journal.bind(node):
                self.journal.wrote(ino, offset, written, now)
        except (OSError, StoreFull):
            self.write_failed(node, offset, offset + len(data))
            raise
        self.apply_write(node, offset, written, now)
        if written < len(data):  # a short write (disk full mid-way): the rest is not staged
            self.write_failed(node, offset + written, offset + len(data))
        return written

    def write_failed(self, node: Node, a: int, b: int) -> None:
        """Remember bytes the kernel handed us that are not staged. The kernel already told
        the writer its data is cached, and reports the error only at close or fsync: without
        this a snapshot committed the file without those bytes (and exited 0)."""
        node.gen += 1
        if node.failed is None:
            node.failed = []
        add_extent(node.failed, a, b)
        self.table.mark_dirty(node)
        log.warning("%d bytes written to inode %d could not be staged", b - a, node.ino)
        try:
            if self.journal.bind(node):
                self.journal.write_failed(node.ino, a, b)
        except (OSError, StoreFull):
            pass  # the journal's disk is full too; the error still reached the writer

    def apply_write(self, node: Node, offset: int, length: int, now: int | None) -> None:
        """What a write of ``length`` bytes at ``offset`` changes in memory (also replay's)."""
        self._stage(node)
        node.gen += 1
        if node.base_len:
            add_extent(node.extents, offset, offset + length)
        if offset + length > node.size:
            node.size = offset + length
        if now is not None:
            node.mtime_ns = node.ctime_ns = now
        if node.failed:
            remove_range(node.failed, offset, offset + length)
        self.table.mark_dirty(node)

    def unstaged_paths(self) -> list[str]:
        """Paths of files that still miss bytes the kernel wrote (see ``write_failed``)."""
        t = self.table
        out = []
        for node in t.nodes.values():
            if node.failed and node.nlink > 0 and not t.detached(node):
                out.append(t.path_of(node))
        return sorted(out)

    # -- reading -----------------------------------------------------------------------------
    def read(self, node: Node, offset: int, size: int) -> bytes | bytearray | memoryview:
        if node.virt is not None:
            return self.pfs.read(node, offset, size)
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        if not node.staged:
            data = self.cache.read(node.base.ref if node.base else None, offset, end)
            if end + NEXT_FILE_AHEAD >= node.size and node.ino != self._next_started:
                self._start_next(node)
            return data
        if not node.base_len:
            return self._read_data(node, offset, end)
        parts: list[bytes] = []
        ext = node.extents
        j = bisect.bisect_right(ext, offset, key=extent_end)
        pos = offset
        base_ref = node.base.ref if node.base is not None else None
        while pos < end:
            if j < len(ext) and ext[j][0] <= pos:
                seg = min(end, ext[j][1])
                parts.append(self._read_data(node, pos, seg))
                j += 1
            else:
                seg = min(end, ext[j][0]) if j < len(ext) else end
                b_end = min(seg, node.base_len)
                if pos < b_end:
                    parts.append(self.cache.read(base_ref, pos, b_end))
                    pos = b_end
                if pos < seg:
                    parts.append(bytes(seg - pos))
            pos = seg
        return b"".join(parts)

    def start_reading(self, node: Node) -> None:
        """A committed file was opened for reading: the cache starts fetching its first
        chunks (for a local store; a hint, a failure is the first read's to report)."""
        if node.kind != FILE or node.staged or node.virt is not None or not node.size:
            return
        if node.base is None:
            return
        try:
            self.cache.start(node.base.ref)
        except Exception as exc:  # noqa: BLE001 - the read reports it
            log.debug("read-ahead of %s failed: %s", node.name, exc)

    def _start_next(self, node: Node) -> None:
        """A committed file is read near its end: start the file after it in its directory
        (readdir's order, the stored one: sorted names, which ``cat dir/*``, ``cp -r`` and
        ``tar`` follow), so a reader going from file to file finds the next one's first chunks
        fetched instead of waiting for them at its first read (a cold 1 MiB chunk costs ~2 ms:
        13% of a cold ``cat`` of 16 MiB files). Only after big files: after small ones a
        wrong guess (``make`` opening files in its own order) would cost more than the wait
        saved. Nothing is loaded for it: a directory not listed yet is not looked in."""
        self._next_started = node.ino
        if node.size < NEXT_FILE_MIN or node.nlink != 1:
            return
        parent = self.table.nodes.get(node.parent)
        children = parent.children if parent is not None else None
        if not children:
            return
        order = self._order
        if order is None or order[0] != parent.ino or order[1] != len(children):
            names = list(children)
            order = (parent.ino, len(names), names, {n: i for i, n in enumerate(names)})
            self._order = order
        names, pos = order[2], order[3].get(node.name)
        if pos is None:
            return
        for name in names[pos + 1 : pos + 1 + NEXT_FILE_SCAN]:
            ino = children.get(name)
            nxt = self.table.nodes.get(ino) if ino is not None else None
            if nxt is not None and nxt.kind == FILE:
                if not nxt.opens:
                    self.start_reading(nxt)
                return

    def _read_data(self, node: Node, offset: int, end: int) -> bytes:
        assert self.staging is not None
        data = os.pread(self.staging.fd(node.ino), end - offset, offset)
        if len(data) < end - offset:
            data += bytes(end - offset - len(data))
        return data

    # -- staged data files -------------------------------------------------------------------
    def file_closed(self, node: Node) -> None:
        """The last handle of ``node`` was closed: queue changed content for background
        chunking (``precommit`` decides whether it qualifies)."""
        if node.opens == 0 and node.staged and node.kind == FILE and not self.journal.replaying:
            self.closed_files.pop(node.ino, None)  # re-queued at the end
            self.closed_files[node.ino] = node.size

    def release_data(self, node: Node) -> None:
        """A file with no name and no open handle: its staged data goes at once (frees the
        disk)."""
        if node.staged and node.kind == FILE and self._io:
            assert self.staging is not None
            self.staging.drop(node.ino)
            node.size = 0
            node.base_len = 0
            node.extents = []

    def drop_data(self, node: Node) -> None:
        """The node leaves the table: its data file goes too."""
        if node.staged and self._io:
            assert self.staging is not None
            self.staging.drop(node.ino)

    def fill_in(self, node: Node, a: int, b: int) -> None:
        """Make ``[a, b)`` of a rewritten file whole in its data file: copy the committed bytes
        not written over in (so that the region can be chunked from the data file alone)."""
        staging = self.staging
        assert staging is not None and node.base is not None
        fd = staging.fd(node.ino)
        pos = a
        ext = node.extents
        gaps: list[tuple[int, int]] = []
        for s, e in ext:
            if e <= pos:
                continue
            if s >= b:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, e)
        if pos < b:
            gaps.append((pos, b))
        for s, e in gaps:
            e2 = min(e, node.base_len)
            while s < e2:
                n = min(_COPY, e2 - s)
                data = self.cache.read(node.base.ref, s, s + n)
                os.pwrite(fd, data, s)
                s += n
        add_extent(ext, a, b)

    def committed(self, node: Node, entry: Entry) -> None:
        """A snapshot committed the node as ``entry``: that is its content and metadata now.
        Its data file stays until ``drop_unstaged_data`` (after the new journal is durable)."""
        node.base = entry
        node.dirty = False
        if node.staged:
            node.staged = False
            node.extents = []
            node.base_len = 0

    def drop_unstaged_data(self) -> None:
        """Remove the data files of nodes whose content is no longer staged (many at once go
        to the trash in the background: ``Staging.keep_only``)."""
        if self.staging is None:
            return
        self.staging.keep_only({n.ino for n in self.table.nodes.values() if n.staged})
