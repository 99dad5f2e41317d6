"""The inode types of a mount: ``Node`` (one inode), ``Volume`` (one repo shown), ``FsError``.

A node shows a committed entry (``base``) or new state; directories list ``name → inode``;
file content is the committed manifest or a staged data file overlaid on its first
``base_len`` bytes (``extents`` say which byte ranges the data file holds). The types the
``tree`` package is made of (``table`` holds them; see the package's docstring).
"""

from __future__ import annotations

import bisect
import logging
import os
from typing import Any

from pfsfs.changes import RESERVED_ROOT_NAME
from pfsfs.model import Entry, Kind

log = logging.getLogger(__name__)

ROOT = 1
RO_VOL = -1  # nodes of .pfs/ and of the synthetic multi-repo root: never writable
PFS_NAME = RESERVED_ROOT_NAME  # the hidden time-travel directory at a volume root



class FsError(Exception):
    """A filesystem operation failed with ``errno``."""

    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


def extent_end(e: tuple[int, int]) -> int:
    """The end of a ``(start, end)`` byte range (the sort key of extent lists)."""
    return e[1]


def add_extent(ext: list[tuple[int, int]], a: int, b: int) -> None:
    """Merge ``[a, b)`` into a sorted list of disjoint ranges."""
    if a >= b:
        return
    i = bisect.bisect_left(ext, a, key=extent_end)
    j = i
    while j < len(ext) and ext[j][0] <= b:
        a = min(a, ext[j][0])
        b = max(b, ext[j][1])
        j += 1
    ext[i:j] = [(a, b)]


def remove_range(ext: list[tuple[int, int]], a: int, b: int) -> None:
    """Take ``[a, b)`` out of a sorted list of disjoint ranges."""
    if a >= b or not ext:
        return
    out: list[tuple[int, int]] = []
    for s, e in ext:
        if e <= a or s >= b:
            out.append((s, e))
            continue
        if s < a:
            out.append((s, a))
        if e > b:
            out.append((b, e))
    ext[:] = out


def cut_extents(ext: list[tuple[int, int]], size: int) -> None:
    while ext and ext[-1][0] >= size:
        ext.pop()
    if ext and ext[-1][1] > size:
        ext[-1] = (ext[-1][0], size)


class Node:
    """One inode. ``base`` is the committed entry it shows (None for new nodes)."""

    __slots__ = (
        "ino",
        "kind",
        "mode",
        "uid",
        "gid",
        "rdev",
        "mtime_ns",
        "ctime_ns",
        "atime_ns",
        "size",
        "target",
        "nlink",
        "xattrs",
        "base",
        "children",
        "nsubdirs",
        "parent",
        "name",
        "links",
        "link_id",
        "lookups",
        "opens",
        "staged",
        "base_len",
        "extents",
        "failed",
        "gen",
        "dirty",
        "vol",
        "virt",
        "extra",
    )

    def __init__(self, ino: int, kind: Kind | str, vol: int) -> None:
        self.ino = ino
        # a Kind even when replay hands the journal's letter
        self.kind = Kind(kind)
        self.vol = vol
        self.mode = 0o644
        self.uid = self.gid = self.rdev = 0
        self.mtime_ns = self.ctime_ns = self.atime_ns = 0
        self.size = 0
        self.target = b""
        self.nlink = 1
        self.xattrs: dict[bytes, bytes] | None = None
        self.base: Entry | None = None
        self.children: dict[bytes, int] | None = None
        self.nsubdirs = 0
        self.parent = 0
        self.name = b""
        self.links: set[tuple[int, bytes]] | None = None
        self.link_id: bytes | None = None
        self.lookups = 0
        self.opens = 0
        self.staged = False
        self.base_len = 0
        self.extents: list[tuple[int, int]] = []
        # byte ranges the kernel wrote that could not be staged (disk full, I/O error): a
        # snapshot refuses to commit the file until they are written again, truncated away,
        # or the file is deleted
        self.failed: list[tuple[int, int]] | None = None
        # bumped by every change of the content (write, truncate, failed write): background
        # work made from one generation is used only while the node still has it
        self.gen = 0
        self.dirty = False
        self.virt: tuple[str, int] | None = None
        self.extra: dict[str, Any] | None = None

    @property
    def st_mode(self) -> int:
        return self.kind.mode_bits | self.mode

    def locations(self) -> list[tuple[int, bytes]]:
        if self.links:
            return list(self.links)
        return [(self.parent, self.name)] if self.parent else []


class Volume:
    """One repo shown by a mount (at the root, or at ``/<repo>`` with ``--repos``)."""

    def __init__(
        self,
        index: int,
        repo: str,
        branch: str | None,
        base: bytes | None,
        read_only: bool,
        root: int,
    ) -> None:
        self.index = index
        self.repo = repo
        self.branch = branch
        self.base = base
        self.read_only = read_only
        self.root = root

    def to_wire(self) -> list[Any]:
        return [self.repo, self.branch, self.base, self.read_only]

    def describe(self) -> str:
        if self.branch:
            return f"{self.repo}@{self.branch}"
        return f"{self.repo}@{self.base.hex()[:12] if self.base else '-'}"
