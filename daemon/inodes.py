"""The inode tree of one mount: committed entries loaded lazily, changes applied in memory.

A mount shows one or more *volumes* (``repo@branch`` or a commit). Each volume's tree starts as
its base commit; directories are read from the store the first time they are looked into, and
every node gets an inode number for the life of the mount. Mutations (create, write, rename,
setattr, ...) change the nodes here, mark the changed nodes and the directories above them
*dirty* (so a snapshot rewrites only those), and append one record to the mount's journal.

The journal is replayed by running the very same mutation methods (``replaying=True`` skips the
file I/O and the journaling), which is how a crashed mount's state is rebuilt. Records name
nodes by inode number; a committed node that was never mentioned before is first *bound* with a
``B`` record (``ino`` is the node at ``parent/name`` right now), so replay can find it again.
Replay renumbers the nodes it loads to the inode numbers of the journal; a recovered mount keeps
using the same numbers and the same journal.

File content is either the committed manifest (``staged`` False), or a sparse data file in the
staging directory overlaid on the first ``base_len`` bytes of the committed content: byte ranges
listed in ``extents`` come from the data file, the rest from the manifest (zeros past
``base_len``). When ``base_len`` is 0 the data file alone is the content. Reads never pull a
whole file into memory.

Errors are ``FsError(errno)``; the FUSE layer turns them into ``FUSEError`` in one place.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING, Any

from pfsfs.ids import hash_bytes
from pfsfs.model import FIFO, NAME_MAX, SPECIAL_FTYPES, Entry, entry_extra
from pfsfs.repository import Repository

from .chunkcache import ChunkCache
from .content import ContentOps
from .namespace import NamespaceOps
from .nodes import (
    KIND_MODE,
    MODE_KIND,
    PFS_NAME,
    RO_VOL,
    ROOT,
    FsError,
    Node,
    Volume,
    add_extent,
    cut_extents,
)
from .staging import Staging

if TYPE_CHECKING:
    from .pfsdir import PfsArea
    from .precommit import Precomputed

log = logging.getLogger(__name__)

__all__ = [
    "KIND_MODE",
    "MODE_KIND",
    "PFS_NAME",
    "RO_VOL",
    "ROOT",
    "FsError",
    "Node",
    "Tree",
    "Volume",
    "add_extent",
    "cut_extents",
]


class Tree(NamespaceOps, ContentOps):
    """The inode table and every mutation a mount supports (synchronous, no awaits)."""

    def __init__(
        self,
        repo: Repository,
        volumes: list[tuple[str, str | None, bytes | None, bool]],
        staging: Staging | None,
        *,
        multi: bool,
        mount_id: str = "",
        cache: ChunkCache | None = None,
    ) -> None:
        self.repo = repo
        self.staging = staging
        self.multi = multi
        self.mount_id = mount_id
        self.cache = cache or ChunkCache(repo.reader)
        self.nodes: dict[int, Node] = {}
        self.replaying = False
        self.bound: set[int] = set()
        self.link_groups: dict[tuple[int, bytes], int] = {}
        # hard-linked committed files whose other names sit in directories not loaded yet
        self.partial_links: set[int] = set()
        self.volumes: list[Volume] = []
        self.changes = 0  # mutations since the mount started (autosnapshot watches it)
        # files whose last handle was closed (inode → size then), for background chunking,
        # and what that produced (see ``precommit``)
        self.closed_files: dict[int, int] = {}
        self.precomputed: dict[int, Precomputed] = {}
        self.next_ino = ROOT + 1
        if multi:
            top = Node(ROOT, "d", RO_VOL)
            top.mode, top.uid, top.gid = 0o555, os.getuid(), os.getgid()
            top.children, top.parent = {}, ROOT
            self.nodes[ROOT] = top
        for i, (name, branch, base, ro) in enumerate(volumes):
            ino = self._alloc() if multi else ROOT
            vol = Volume(i, name, branch, base, ro or branch is None, ino)
            self.volumes.append(vol)
            root = self._node_from_entry(repo.root_of(base), i, ROOT, name.encode(), ino=ino)
            root.parent = ROOT
            if multi:
                top.children[name.encode()] = ino  # type: ignore[index]
                top.nsubdirs += 1
                top.mtime_ns = max(top.mtime_ns, root.mtime_ns)
        self.bound = {ROOT, *(v.root for v in self.volumes)}
        from .pfsdir import PfsArea

        self.pfs: PfsArea = PfsArea(self)

    # -- helpers -----------------------------------------------------------------------------
    def _alloc(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def _node_from_entry(
        self, entry: Entry, vol: int, parent: int, name: bytes, ino: int | None = None
    ) -> Node:
        link = entry.link_id if vol != RO_VOL else None
        if link is not None and ino is None:
            existing = self.link_groups.get((vol, link))
            if existing is not None and existing in self.nodes:
                node = self.nodes[existing]
                self._add_loc(node, parent, name)
                if len(node.locations()) >= node.nlink:
                    self.partial_links.discard(node.ino)
                if node.dirty:  # a changed file found under one more name: rewrite it too
                    self._dirty_up(parent)
                return node
        kind = entry.kind
        node = Node(ino if ino is not None else self._alloc(), kind, vol)
        node.mode, node.uid, node.gid = entry.mode, entry.uid, entry.gid
        node.mtime_ns = node.ctime_ns = node.atime_ns = entry.mtime_ns
        node.rdev = entry.rdev
        node.base = entry
        node.parent, node.name = parent, name
        if kind == "d":
            node.nlink = 2
        else:
            node.size = entry.size if kind in ("f", "l") else 0
            node.target = entry.target
        if link is not None:
            node.link_id = link
            node.nlink = entry.nlink
            self.link_groups[(vol, link)] = node.ino
            if node.nlink > 1:
                self.partial_links.add(node.ino)
        node.xattrs = entry.xattrs or None
        node.extra = entry.other_extra()
        self.nodes[node.ino] = node
        return node

    def children(self, d: Node) -> dict[bytes, int]:
        if d.children is None:
            self._load(d)
        assert d.children is not None
        return d.children

    def _load(self, d: Node) -> None:
        if d.virt is not None:
            d.children = {}
            return
        entries = self.repo.list_dir(d.base) if d.base is not None and d.base.ref else {}
        children: dict[bytes, int] = {}
        nsub = 0
        is_root = d.vol >= 0 and d.ino == self.volumes[d.vol].root
        for name, e in entries.items():
            if is_root and name == PFS_NAME:
                continue  # the hidden .pfs/ shadows a stored name
            children[name] = self._node_from_entry(e, d.vol, d.ino, name).ino
            if e.is_dir:
                nsub += 1
        d.children = children
        d.nsubdirs = nsub

    def complete_links(self, vol: int) -> None:
        """Before committing a changed hard-linked file, load every directory of its volume so
        that all of its names are known (and rewritten together). Rare; O(files) once."""
        todo = [
            n
            for ino in self.partial_links
            if (n := self.nodes.get(ino)) is not None and n.dirty and n.vol == vol
        ]
        if not todo:
            return
        stack = [self.nodes[self.volumes[vol].root]]
        while stack:
            d = stack.pop()
            for child in self.children(d).values():
                c = self.nodes[child]
                if c.kind == "d":
                    stack.append(c)
        for n in todo:
            n.dirty = False
            self._dirty(n)
        self.partial_links.difference_update(n.ino for n in todo)

    def dir_nlink(self, d: Node) -> int:
        self.children(d)
        return 2 + d.nsubdirs

    def path_of(self, node: Node) -> str:
        """``repo:/a/b`` of a node's (first) name, for messages."""
        parts: list[bytes] = []
        n: Node | None = node
        while n is not None and not self.is_vol_root(n) and n.ino != ROOT and n.parent:
            parts.append(n.name)
            n = self.nodes.get(n.parent)
        path = "/" + "/".join(p.decode(errors="backslashreplace") for p in reversed(parts))
        vol = self.volumes[node.vol].repo if node.vol >= 0 else ""
        return f"{vol}:{path}" if self.multi else path

    def is_vol_root(self, node: Node) -> bool:
        return node.vol >= 0 and node.ino == self.volumes[node.vol].root

    def _wdir(self, ino: int) -> Node:
        """A directory that may be written to."""
        d = self.node(ino)
        if d.kind != "d":
            raise FsError(errno.ENOTDIR)
        self._writable(d)
        if d.nlink == 0:
            raise FsError(errno.ENOENT)  # removed while still open/cwd
        return d

    def _writable(self, node: Node) -> None:
        if node.vol < 0 or node.virt is not None or self.volumes[node.vol].read_only:
            raise FsError(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL)

    def _dirty(self, node: Node) -> None:
        """Mark a node changed, and every directory above each of its names."""
        self.changes += 1
        if node.dirty:
            return
        node.dirty = True
        for parent, _ in node.locations():
            self._dirty_up(parent)

    def _dirty_up(self, ino: int) -> None:
        self.changes += 1
        while ino:
            d = self.nodes.get(ino)
            if d is None or d.dirty or d.vol < 0:
                return
            d.dirty = True
            if self.is_vol_root(d):
                return
            ino = d.parent

    def _add_loc(self, node: Node, parent: int, name: bytes) -> None:
        """``links`` holds every name only while there are two or more."""
        if node.kind == "d" or (not node.parent and not node.links):
            node.parent, node.name = parent, name
            return
        if node.links is None:
            node.links = {(node.parent, node.name)}
        node.links.add((parent, name))
        if len(node.links) <= 1:
            node.links = None

    def _remove_loc(self, node: Node, parent: int, name: bytes) -> None:
        if node.links:
            node.links.discard((parent, name))
            if (node.parent, node.name) == (parent, name):
                node.parent, node.name = next(iter(node.links), (0, b""))
            if len(node.links) <= 1:
                node.links = None
        elif (node.parent, node.name) == (parent, name):
            node.parent, node.name = 0, b""

    def detached(self, node: Node) -> bool:
        """True when no name leads to the node any more (deleted, maybe still open)."""
        while True:
            if node.ino == ROOT or self.is_vol_root(node):
                return False
            if not node.parent:
                return True
            parent = self.nodes.get(node.parent)
            if parent is None:
                return True
            node = parent

    # -- journal -----------------------------------------------------------------------------
    def _bind(self, node: Node) -> bool:
        """Make ``node`` nameable in the journal; False if it is unreachable (deleted)."""
        if node.ino in self.bound or self.replaying or self.staging is None:
            return True
        if not node.parent or node.parent not in self.nodes:
            return False
        parent = self.nodes[node.parent]
        if parent is node or not self._bind(parent):
            return False
        self.staging.append(["B", node.ino, node.parent, node.name])
        self.bound.add(node.ino)
        return True

    def _log(self, record: list[Any]) -> None:
        if self.staging is not None and not self.replaying:
            self.staging.append(record)

    def header(self) -> list[Any]:
        return ["H", {"volumes": [v.to_wire() for v in self.volumes], "next_ino": self.next_ino}]

    def replay(self, records: list[list[Any]]) -> int:
        """Re-apply journal records (after the header); returns how many applied."""
        top = self.next_ino
        for r in records:
            if r[0] in ("B", "N"):
                top = max(top, r[1] + 1)
        self.next_ino = top + 1_000_000  # lazily loaded nodes never collide with journal inos
        self.replaying = True
        applied = 0
        try:
            for r in records:
                try:
                    self._apply(r)
                    applied += 1
                except FsError as exc:
                    log.warning("journal record %s could not be replayed: %s", r[0], exc)
        finally:
            self.replaying = False
        self.next_ino = max(self.nodes) + 1
        self.bound = set(self.nodes)
        return applied

    def _apply(self, r: list[Any]) -> None:
        op = r[0]
        if op == "B":
            _, ino, parent, name = r
            node = (
                self.nodes[self.children(self.node(parent))[name]] if parent in self.nodes else None
            )
            if node is None:
                raise FsError(errno.ENOENT)
            if node.ino != ino:
                self._renumber(node, ino)
        elif op == "N":
            _, ino, parent, name, kind, mode, uid, gid, rdev, target, now = r
            self.create(parent, name, kind, mode, uid, gid, rdev, target, now, ino=ino)
        elif op == "L":
            self.link(r[1], r[2], r[3], r[4])
        elif op == "U":
            self.unlink(r[1], r[2], r[3], rmdir=r[4])
        elif op == "R":
            self.rename(r[1], r[2], r[3], r[4], r[5], r[6])
        elif op == "A":
            self.setattr(r[1], r[3], r[2])
        elif op == "W":
            node = self.node(r[1])
            self._apply_write(node, r[2], r[3], r[4])
        elif op == "X":
            self.set_xattr(r[1], r[2], r[3], r[4])
        elif op == "F":
            self._write_failed(self.node(r[1]), r[2], r[3])
        elif op != "H":
            log.warning("unknown journal record %r", op)

    def _renumber(self, node: Node, ino: int) -> None:
        old = node.ino
        if ino in self.nodes:
            raise FsError(errno.EEXIST)
        del self.nodes[old]
        node.ino = ino
        self.nodes[ino] = node
        for parent, name in node.locations():
            p = self.nodes.get(parent)
            if p is not None and p.children is not None and p.children.get(name) == old:
                p.children[name] = ino
        if node.children:
            for child_ino in node.children.values():
                child = self.nodes[child_ino]
                if child.parent == old:
                    child.parent = ino
                if child.links:
                    child.links = {(ino if p == old else p, n) for p, n in child.links}
        if node.link_id is not None:
            self.link_groups[(node.vol, node.link_id)] = ino
        if old in self.partial_links:
            self.partial_links.discard(old)
            self.partial_links.add(ino)

    # -- lookups -----------------------------------------------------------------------------
    def lookup(self, parent_ino: int, name: bytes) -> Node:
        p = self.node(parent_ino)
        if p.kind != "d":
            raise FsError(errno.ENOTDIR)
        if name == b".":
            return p
        if name == b"..":
            return self.nodes.get(p.parent) or p
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if p.virt is not None:
            return self.pfs.lookup(p, name)
        if name == PFS_NAME and self.is_vol_root(p):
            return self.pfs.root(p.vol)
        ino = self.children(p).get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        return self.nodes[ino]

    def listdir(self, d: Node) -> list[tuple[bytes, int]]:
        if d.kind != "d":
            raise FsError(errno.ENOTDIR)
        if d.virt is not None:
            return self.pfs.listdir(d)
        return list(self.children(d).items())

    # -- namespace mutations -----------------------------------------------------------------
    def maybe_drop(self, node: Node) -> None:
        """Forget a node nobody can reach: no name left, no kernel reference, not open. The
        staged data of a file with no name and no open handle goes at once (frees the disk)."""
        if node.nlink > 0 or node.opens > 0:
            return
        if node.staged and node.kind == "f" and self.staging is not None and not self.replaying:
            self.staging.drop(node.ino)
            node.size = 0
            node.base_len = 0
            node.extents = []
        if node.lookups > 0:
            return
        if node.ino == ROOT or self.is_vol_root(node) or node.virt is not None:
            return
        self.nodes.pop(node.ino, None)
        if node.link_id is not None:
            key = (node.vol, node.link_id)
            if self.link_groups.get(key) == node.ino:
                del self.link_groups[key]
        if node.staged and self.staging is not None and not self.replaying:
            self.staging.drop(node.ino)

    def file_closed(self, node: Node) -> None:
        """The last handle of ``node`` was closed: queue changed content for background
        chunking (``precommit`` decides whether it qualifies)."""
        if node.opens == 0 and node.staged and node.kind == "f" and not self.replaying:
            self.closed_files.pop(node.ino, None)  # re-queued at the end
            self.closed_files[node.ino] = node.size

    def forget(self, ino: int, n: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            return
        node.lookups = max(0, node.lookups - n)
        self.maybe_drop(node)

    # -- attributes --------------------------------------------------------------------------
    def link_id_for(self, node: Node) -> bytes:
        """A stable hard-link group id (the same on replay, so re-commits are identical)."""
        if node.link_id is None:
            node.link_id = hash_bytes(f"{self.mount_id}:{node.ino}".encode())[:16]
            self.link_groups[(node.vol, node.link_id)] = node.ino
        return node.link_id

    def entry_meta(self, node: Node) -> tuple[str, dict[str, Any] | None]:
        """The entry type and ``extra`` a node commits with."""
        special = node.kind in SPECIAL_FTYPES
        extra = entry_extra(
            node.extra,
            ftype=node.kind if special else None,
            rdev=node.rdev,
            link=self.link_id_for(node) if node.kind != "d" and node.nlink > 1 else None,
            nlink=node.nlink,
            xattrs=node.xattrs,
        )
        return (FIFO if special else node.kind), extra
