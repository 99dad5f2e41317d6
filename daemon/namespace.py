"""Namespace mutations of the inode tree: create, link, unlink/rmdir, rename.

A mixin of ``inodes.Tree``: each method checks, binds the nodes it names in the journal, applies
the change, appends its journal record and marks what changed dirty. The same methods replay the
journal (``replaying`` skips journaling), so they depend only on their arguments.
"""

from __future__ import annotations

import errno
import logging
import stat
from typing import TYPE_CHECKING

from .nodes import PFS_NAME, ROOT, FsError, Node

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .inodes import Tree

    _Base = Tree
else:
    _Base = object


class NamespaceOps(_Base):
    def create(
        self,
        parent_ino: int,
        name: bytes,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        rdev: int,
        target: bytes,
        now: int,
        ino: int | None = None,
    ) -> Node:
        """A new file, directory, symlink or special file at ``parent/name``."""
        p = self._wdir(parent_ino)
        self._check_name(name)
        if name in self.children(p) or (name == PFS_NAME and self.is_vol_root(p)):
            raise FsError(errno.EEXIST)
        if p.mode & stat.S_ISGID:
            gid = p.gid
            if kind == "d":
                mode |= stat.S_ISGID
        self._bind(p)
        node = Node(ino if ino is not None else self._alloc(), kind, p.vol)
        node.mode, node.uid, node.gid, node.rdev = mode & 0o7777, uid, gid, rdev
        node.mtime_ns = node.ctime_ns = node.atime_ns = now
        node.parent, node.name = p.ino, name
        if kind == "d":
            node.children = {}
            node.nlink = 2
            p.nsubdirs += 1
        elif kind == "l":
            node.target = target
            node.size = len(target)
        elif kind == "f":
            node.staged = True
        self.nodes[node.ino] = node
        p.children[name] = node.ino  # type: ignore[index]
        p.mtime_ns = p.ctime_ns = now
        self.bound.add(node.ino)
        self._log(["N", node.ino, p.ino, name, kind, mode, uid, gid, rdev, target, now])
        self._dirty(node)
        self._dirty_up(p.ino)
        return node

    def link(self, ino: int, parent_ino: int, name: bytes, now: int) -> Node:
        node = self.node(ino)
        p = self._wdir(parent_ino)
        self._check_name(name)
        if node.kind == "d":
            raise FsError(errno.EPERM)
        if node.vol != p.vol:
            raise FsError(errno.EXDEV)
        if name in self.children(p) or (name == PFS_NAME and self.is_vol_root(p)):
            raise FsError(errno.EEXIST)
        if node.nlink == 0:
            raise FsError(errno.ENOENT)
        self._bind(node)
        self._bind(p)
        p.children[name] = node.ino  # type: ignore[index]
        self._add_loc(node, p.ino, name)
        node.nlink += 1
        node.ctime_ns = now
        p.mtime_ns = p.ctime_ns = now
        self._log(["L", ino, parent_ino, name, now])
        node.dirty = False  # re-mark so every name's directory is dirty
        self._dirty(node)
        return node

    def unlink(self, parent_ino: int, name: bytes, now: int, *, rmdir: bool) -> Node:
        p = self._wdir(parent_ino)
        if name == PFS_NAME and self.is_vol_root(p):
            raise FsError(errno.EROFS)
        ino = self.children(p).get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        node = self.nodes[ino]
        if rmdir:
            if node.kind != "d":
                raise FsError(errno.ENOTDIR)
            if self.children(node):
                raise FsError(errno.ENOTEMPTY)
        elif node.kind == "d":
            raise FsError(errno.EISDIR)
        self._bind(p)
        self._bind(node)
        self._detach(p, name, node, now)
        p.mtime_ns = p.ctime_ns = now
        self._log(["U", parent_ino, name, now, rmdir])
        self._dirty_up(p.ino)
        self.maybe_drop(node)
        return node

    def _detach(self, p: Node, name: bytes, node: Node, now: int) -> None:
        del p.children[name]  # type: ignore[arg-type]
        self._remove_loc(node, p.ino, name)
        node.ctime_ns = now
        if node.kind == "d":
            p.nsubdirs -= 1
            node.nlink = 0
            node.parent = 0
        else:
            node.nlink -= 1
            if node.nlink > 0:
                node.dirty = False
                self._dirty(node)  # the remaining names carry the new link count

    def _is_ancestor(self, a: Node, d: Node) -> bool:
        """Is directory ``a`` equal to or above ``d``?"""
        seen = 0
        while True:
            if d is a:
                return True
            if d.ino == ROOT or self.is_vol_root(d) or not d.parent or seen > 10_000:
                return False
            d = self.nodes[d.parent]
            seen += 1

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int, now: int) -> Node | None:
        """Returns the node that lost its name (overwritten), if any."""
        P1, P2 = self._wdir(p1), self._wdir(p2)
        self._check_name(n2)
        if P1.vol != P2.vol:
            raise FsError(errno.EXDEV)
        for p, n in ((P1, n1), (P2, n2)):
            if n == PFS_NAME and self.is_vol_root(p):
                raise FsError(errno.EROFS)
        src_ino = self.children(P1).get(n1)
        if src_ino is None:
            raise FsError(errno.ENOENT)
        src = self.nodes[src_ino]
        dst_ino = self.children(P2).get(n2)
        dst = self.nodes[dst_ino] if dst_ino is not None else None
        exchange = bool(flags & 2)  # RENAME_EXCHANGE
        if flags & ~3 or (flags & 3) == 3:
            raise FsError(errno.EINVAL)
        if exchange:
            if dst is None:
                raise FsError(errno.ENOENT)
            if (src.kind == "d" and self._is_ancestor(src, P2)) or (
                dst.kind == "d" and self._is_ancestor(dst, P1)
            ):
                raise FsError(errno.EINVAL)
        elif dst is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise FsError(errno.EEXIST)
            if dst is src:
                return None
            if src.kind == "d":
                if dst.kind != "d":
                    raise FsError(errno.ENOTDIR)
                if self.children(dst):
                    raise FsError(errno.ENOTEMPTY)
            elif dst.kind == "d":
                raise FsError(errno.EISDIR)
        if src.kind == "d" and not exchange and self._is_ancestor(src, P2):
            raise FsError(errno.EINVAL)
        for n in (P1, P2, src):
            self._bind(n)
        if dst is not None:
            self._bind(dst)
        if exchange:
            assert dst is not None
            P1.children[n1], P2.children[n2] = dst.ino, src.ino  # type: ignore[index]
            self._remove_loc(src, P1.ino, n1)
            self._remove_loc(dst, P2.ino, n2)
            self._add_loc(src, P2.ino, n2)
            self._add_loc(dst, P1.ino, n1)
            if src.kind == "d":
                P1.nsubdirs -= 1
                P2.nsubdirs += 1
            if dst.kind == "d":
                P2.nsubdirs -= 1
                P1.nsubdirs += 1
            dst.ctime_ns = now
            victim = None
        else:
            victim = dst
            if dst is not None:
                self._detach(P2, n2, dst, now)
            del P1.children[n1]  # type: ignore[arg-type]
            self._remove_loc(src, P1.ino, n1)
            P2.children[n2] = src.ino  # type: ignore[index]
            self._add_loc(src, P2.ino, n2)
            if src.kind == "d":
                P1.nsubdirs -= 1
                P2.nsubdirs += 1
        src.ctime_ns = now
        for p in (P1, P2):
            p.mtime_ns = p.ctime_ns = now
        self._log(["R", p1, n1, p2, n2, flags, now])
        if src.links or (dst is not None and dst.links):
            for n in (src, dst):
                if n is not None and n.nlink > 0:
                    n.dirty = False
                    self._dirty(n)
        self._dirty_up(P1.ino)
        self._dirty_up(P2.ino)
        if victim is not None:
            self.maybe_drop(victim)
        return victim
