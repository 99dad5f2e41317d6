"""Namespace operations of the inode tree: lookup, listdir, create, link, unlink/rmdir, rename.

Each mutation checks its arguments, binds the nodes it names in the journal, applies the change
to the inode table, appends its journal record and marks what changed dirty. Replay runs the
same methods (the journal is then in replay mode: nothing is recorded, no file is touched), so
they depend only on their arguments. Nodes nobody can reach any more (no name, no kernel
reference, not open) are dropped here.
"""

from __future__ import annotations

import errno
import logging
import stat
from typing import TYPE_CHECKING

from pfsfs.model import DIR, FILE, NAME_MAX, SYMLINK, Kind

from .content import Content
from .journal import Journal
from .nodes import ROOT, FsError, Node
from .table import InodeTable

if TYPE_CHECKING:
    from ..pfsdir import PfsArea

log = logging.getLogger(__name__)


class Namespace:
    """Names of the table's nodes and every change of them (synchronous, no awaits)."""

    def __init__(self, table: InodeTable, journal: Journal, content: Content, pfs: PfsArea) -> None:
        self.table = table
        self.journal = journal
        self.content = content
        self.pfs = pfs

    # -- lookups -----------------------------------------------------------------------------
    def lookup(self, parent_ino: int, name: bytes) -> Node:
        t = self.table
        p = t.node(parent_ino)
        if p.kind != DIR:
            raise FsError(errno.ENOTDIR)
        if name == b".":
            return p
        if name == b"..":
            return t.nodes.get(p.parent) or p
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if p.virt is not None:
            return self.pfs.lookup(p, name)
        if t.is_reserved(p, name):
            return self.pfs.root(p.vol)
        ino = t.children(p).get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        return t.nodes[ino]

    def listdir(self, d: Node) -> list[tuple[bytes, int]]:
        if d.kind != DIR:
            raise FsError(errno.ENOTDIR)
        if d.virt is not None:
            return self.pfs.listdir(d)
        return list(self.table.children(d).items())

    # -- dropping nodes ----------------------------------------------------------------------
    def maybe_drop(self, node: Node) -> None:
        """Forget a node nobody can reach: no name left, no kernel reference, not open. The
        staged data of a file with no name and no open handle goes at once (frees the disk)."""
        if node.nlink > 0 or node.opens > 0:
            return
        self.content.release_data(node)
        if node.lookups > 0:
            return
        if node.ino == ROOT or self.table.is_vol_root(node) or node.virt is not None:
            return
        self.table.forget_node(node)
        self.content.drop_data(node)

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references to ``ino``."""
        node = self.table.nodes.get(ino)
        if node is None:
            return
        node.lookups = max(0, node.lookups - n)
        self.maybe_drop(node)

    # -- mutations ---------------------------------------------------------------------------
    def create(
        self,
        parent_ino: int,
        name: bytes,
        kind: Kind,
        mode: int,
        uid: int,
        gid: int,
        rdev: int,
        target: bytes,
        now: int,
        ino: int | None = None,
    ) -> Node:
        """A new file, directory, symlink or special file at ``parent/name``."""
        p = self.table.writable_dir(parent_ino)
        self.table.check_name(name)
        if name in self.table.children(p) or self.table.is_reserved(p, name):
            raise FsError(errno.EEXIST)
        if p.mode & stat.S_ISGID:
            gid = p.gid
            if kind == DIR:
                mode |= stat.S_ISGID
        self.journal.bind(p)
        node = Node(ino if ino is not None else self.table.alloc(), kind, p.vol)
        node.mode, node.uid, node.gid, node.rdev = mode & 0o7777, uid, gid, rdev
        node.mtime_ns = node.ctime_ns = node.atime_ns = now
        node.parent, node.name = p.ino, name
        if kind == DIR:
            node.children = {}
            node.nlink = 2
            p.nsubdirs += 1
        elif kind == SYMLINK:
            node.target = target
            node.size = len(target)
        elif kind == FILE:
            node.staged = True
        self.table.add(node)
        p.children[name] = node.ino  # type: ignore[index]
        p.mtime_ns = p.ctime_ns = now
        self.journal.named(node.ino)
        self.journal.created(node.ino, p.ino, name, kind, mode, uid, gid, rdev, target, now)
        self.table.mark_dirty(node)
        self.table.mark_dirty_up(p.ino)
        return node

    def link(self, ino: int, parent_ino: int, name: bytes, now: int) -> Node:
        node = self.table.node(ino)
        p = self.table.writable_dir(parent_ino)
        self.table.check_name(name)
        if node.kind == DIR:
            raise FsError(errno.EPERM)
        if node.vol != p.vol:
            raise FsError(errno.EXDEV)
        if name in self.table.children(p) or self.table.is_reserved(p, name):
            raise FsError(errno.EEXIST)
        if node.nlink == 0:
            raise FsError(errno.ENOENT)
        self.journal.bind(node)
        self.journal.bind(p)
        p.children[name] = node.ino  # type: ignore[index]
        self.table.add_location(node, p.ino, name)
        node.nlink += 1
        node.ctime_ns = now
        p.mtime_ns = p.ctime_ns = now
        self.journal.linked(ino, parent_ino, name, now)
        self.table.remark_dirty(node)  # so that every name's directory is dirty
        return node

    def unlink(self, parent_ino: int, name: bytes, now: int, *, rmdir: bool) -> Node:
        p = self.table.writable_dir(parent_ino)
        if self.table.is_reserved(p, name):
            raise FsError(errno.EROFS)
        ino = self.table.children(p).get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        node = self.table.nodes[ino]
        if rmdir:
            if node.kind != DIR:
                raise FsError(errno.ENOTDIR)
            if self.table.children(node):
                raise FsError(errno.ENOTEMPTY)
        elif node.kind == DIR:
            raise FsError(errno.EISDIR)
        self.journal.bind(p)
        self.journal.bind(node)
        self._detach(p, name, node, now)
        p.mtime_ns = p.ctime_ns = now
        self.journal.unlinked(parent_ino, name, now, rmdir)
        self.table.mark_dirty_up(p.ino)
        self.maybe_drop(node)
        return node

    def _detach(self, p: Node, name: bytes, node: Node, now: int) -> None:
        del p.children[name]  # type: ignore[arg-type]
        self.table.remove_location(node, p.ino, name)
        node.ctime_ns = now
        if node.kind == DIR:
            p.nsubdirs -= 1
            node.nlink = 0
            node.parent = 0
        else:
            node.nlink -= 1
            if node.nlink > 0:
                self.table.remark_dirty(node)  # the remaining names carry the new link count

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int, now: int) -> Node | None:
        """Returns the node that lost its name (overwritten), if any."""
        P1, P2 = self.table.writable_dir(p1), self.table.writable_dir(p2)
        self.table.check_name(n2)
        if P1.vol != P2.vol:
            raise FsError(errno.EXDEV)
        for p, n in ((P1, n1), (P2, n2)):
            if self.table.is_reserved(p, n):
                raise FsError(errno.EROFS)
        src_ino = self.table.children(P1).get(n1)
        if src_ino is None:
            raise FsError(errno.ENOENT)
        src = self.table.nodes[src_ino]
        dst_ino = self.table.children(P2).get(n2)
        dst = self.table.nodes[dst_ino] if dst_ino is not None else None
        exchange = bool(flags & 2)  # RENAME_EXCHANGE
        if flags & ~3 or (flags & 3) == 3:
            raise FsError(errno.EINVAL)
        if exchange:
            if dst is None:
                raise FsError(errno.ENOENT)
            if (src.kind == DIR and self.table.is_ancestor(src, P2)) or (
                dst.kind == DIR and self.table.is_ancestor(dst, P1)
            ):
                raise FsError(errno.EINVAL)
        elif dst is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise FsError(errno.EEXIST)
            if dst is src:
                return None
            if src.kind == DIR:
                if dst.kind != DIR:
                    raise FsError(errno.ENOTDIR)
                if self.table.children(dst):
                    raise FsError(errno.ENOTEMPTY)
            elif dst.kind == DIR:
                raise FsError(errno.EISDIR)
        if src.kind == DIR and not exchange and self.table.is_ancestor(src, P2):
            raise FsError(errno.EINVAL)
        for n in (P1, P2, src):
            self.journal.bind(n)
        if dst is not None:
            self.journal.bind(dst)
        if exchange:
            assert dst is not None
            P1.children[n1], P2.children[n2] = dst.ino, src.ino  # type: ignore[index]
            self.table.remove_location(src, P1.ino, n1)
            self.table.remove_location(dst, P2.ino, n2)
            self.table.add_location(src, P2.ino, n2)
            self.table.add_location(dst, P1.ino, n1)
            if src.kind == DIR:
                P1.nsubdirs -= 1
                P2.nsubdirs += 1
            if dst.kind == DIR:
                P2.nsubdirs -= 1
                P1.nsubdirs += 1
            dst.ctime_ns = now
            victim = None
        else:
            victim = dst
            if dst is not None:
                self._detach(P2, n2, dst, now)
            del P1.children[n1]  # type: ignore[arg-type]
            self.table.remove_location(src, P1.ino, n1)
            P2.children[n2] = src.ino  # type: ignore[index]
            self.table.add_location(src, P2.ino, n2)
            if src.kind == DIR:
                P1.nsubdirs -= 1
                P2.nsubdirs += 1
        src.ctime_ns = now
        for p in (P1, P2):
            p.mtime_ns = p.ctime_ns = now
        self.journal.renamed(p1, n1, p2, n2, flags, now)
        if src.links or (dst is not None and dst.links):
            for n in (src, dst):
                if n is not None and n.nlink > 0:
                    self.table.remark_dirty(n)
        self.table.mark_dirty_up(P1.ino)
        self.table.mark_dirty_up(P2.ino)
        if victim is not None:
            self.maybe_drop(victim)
        return victim
