"""Attributes and content of the inode tree: setattr (incl. truncate), xattrs, write, read.

A mixin of ``inodes.Tree``. Writes go to the node's sparse data file in the staging directory
and are journaled as ranges; reads merge the data file's ranges with the committed content.
Nothing is read whole into memory.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
from typing import TYPE_CHECKING

from pfsfs.errors import StoreFull

from .nodes import FsError, Node, _end, add_extent, cut_extents, remove_range

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .inodes import Tree

    _Base = Tree
else:
    _Base = object


class ContentOps(_Base):
    def setattr(self, ino: int, now: int, changes: dict[str, int]) -> Node:
        """``changes`` keys: mode uid gid size atime mtime ctime (values already final; atime
        and ctime are not committed)."""
        node = self.node(ino)
        self._writable(node)
        if "size" in changes:
            if node.kind == "d":
                raise FsError(errno.EISDIR)
            if node.kind != "f":
                raise FsError(errno.EINVAL)
        if not self._bind(node) and not self.replaying:
            pass  # a deleted-but-open file: nothing to journal or commit
        elif changes:
            self._log(["A", ino, changes, now])
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
            self._dirty(node)
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
        if not self.replaying and self.staging is not None:
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
        node = self.node(ino)
        self._writable(node)
        xattrs = dict(node.xattrs or {})
        if value is None:
            if name not in xattrs:
                raise FsError(errno.ENODATA)
            del xattrs[name]
        else:
            xattrs[name] = value
        if self._bind(node):
            self._log(["X", ino, name, value, now])
        node.xattrs = xattrs or None
        node.ctime_ns = now
        self._dirty(node)

    # -- content -----------------------------------------------------------------------------
    def write(self, ino: int, offset: int, data: bytes, now: int | None) -> int:
        """Write through to the staged data file. ``now`` is the new mtime, or None when the
        kernel keeps mtime itself (writeback cache) and will set it with ``setattr``."""
        node = self.node(ino)
        if node.kind != "f":
            raise FsError(errno.EISDIR if node.kind == "d" else errno.EINVAL)
        self._writable(node)
        assert self.staging is not None
        self._stage(node)
        try:
            written = os.pwrite(self.staging.fd(node.ino), data, offset)
            if self._bind(node):
                self._log(["W", ino, offset, written, now])
        except (OSError, StoreFull):
            self._write_failed(node, offset, offset + len(data))
            raise
        self._apply_write(node, offset, written, now)
        if written < len(data):  # a short write (disk full mid-way): the rest is not staged
            self._write_failed(node, offset + written, offset + len(data))
        return written

    def _write_failed(self, node: Node, a: int, b: int) -> None:
        """Remember bytes the kernel handed us that are not staged. The kernel already told
        the writer its data is cached, and reports the error only at close or fsync: without
        this a snapshot committed the file without those bytes (and exited 0)."""
        node.gen += 1
        if node.failed is None:
            node.failed = []
        add_extent(node.failed, a, b)
        self._dirty(node)
        log.warning("%d bytes written to inode %d could not be staged", b - a, node.ino)
        try:
            if self._bind(node):
                self._log(["F", node.ino, a, b])
        except (OSError, StoreFull):
            pass  # the journal's disk is full too; the error still reached the writer

    def _apply_write(self, node: Node, offset: int, length: int, now: int | None) -> None:
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
        self._dirty(node)

    def unstaged_paths(self) -> list[str]:
        """Paths of files that still miss bytes the kernel wrote (see ``_write_failed``)."""
        out = []
        for node in self.nodes.values():
            if node.failed and node.nlink > 0 and not self.detached(node):
                out.append(self.path_of(node))
        return sorted(out)

    def read(self, node: Node, offset: int, size: int) -> bytes | memoryview:
        if node.virt is not None:
            return self.pfs.read(node, offset, size)
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        if not node.staged:
            return self.cache.read(node.base.ref if node.base else None, offset, end)
        if not node.base_len:
            return self._read_data(node, offset, end)
        parts: list[bytes] = []
        ext = node.extents
        j = bisect.bisect_right(ext, offset, key=_end)
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

    def _read_data(self, node: Node, offset: int, end: int) -> bytes:
        assert self.staging is not None
        data = os.pread(self.staging.fd(node.ino), end - offset, offset)
        if len(data) < end - offset:
            data += bytes(end - offset - len(data))
        return data
