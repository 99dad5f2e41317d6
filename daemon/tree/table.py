"""The inode table of one mount: nodes by inode number, lazy loading, names, dirty marks.

A mount shows one or more *volumes* (``repo@branch`` or a commit). Each volume's tree starts as
its base commit; a directory is read from the store the first time it is looked into, and every
node gets an inode number for the life of the mount. A node has one name (``parent``/``name``)
or, while it is hard-linked, the set ``links`` of all of them; committed hard links are grouped
by their link id (``link_groups``), and a linked file whose other names sit in directories not
loaded yet is remembered in ``partial_links``.

A change marks the node and every directory above each of its names *dirty* (so a snapshot
rewrites only those); ``changes`` counts them (autosnapshot and background chunking watch it).
The table knows nothing of the journal or of staged data: ``namespace``, ``content`` and
``journal`` build on it.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pfsfs.ids import hash_bytes
from pfsfs.model import DIR, FIFO, FILE, NAME_MAX, SPECIAL_FTYPES, SYMLINK, Entry, entry_extra
from pfsfs.repository import Repository

from .nodes import PFS_NAME, RO_VOL, ROOT, FsError, Node, Volume

VolumeSpec = tuple[str, str | None, bytes | None, bool]  # repo, branch, base commit, read-only


class InodeTable:
    """Nodes by inode number and the volumes they belong to (synchronous, no awaits)."""

    def __init__(
        self, repo: Repository, volumes: list[VolumeSpec], *, multi: bool, mount_id: str = ""
    ) -> None:
        self.repo = repo
        self.multi = multi
        self.mount_id = mount_id
        self.nodes: dict[int, Node] = {}
        self.link_groups: dict[tuple[int, bytes], int] = {}
        # hard-linked committed files whose other names sit in directories not loaded yet
        self.partial_links: set[int] = set()
        self.volumes: list[Volume] = []
        self.changes = 0  # mutations since the mount started (autosnapshot watches it)
        self.next_ino = ROOT + 1
        top: Node | None = None
        if multi:
            top = Node(ROOT, DIR, RO_VOL)
            top.mode, top.uid, top.gid = 0o555, os.getuid(), os.getgid()
            top.children, top.parent = {}, ROOT
            self.nodes[ROOT] = top
        for i, (name, branch, base, ro) in enumerate(volumes):
            ino = self.alloc() if multi else ROOT
            vol = Volume(i, name, branch, base, ro or branch is None, ino)
            self.volumes.append(vol)
            root = self.node_from_entry(repo.root_of(base), i, ROOT, name.encode(), ino=ino)
            root.parent = ROOT
            if top is not None:
                top.children[name.encode()] = ino  # type: ignore[index]
                top.nsubdirs += 1
                top.mtime_ns = max(top.mtime_ns, root.mtime_ns)

    # -- inode numbers -----------------------------------------------------------------------
    def alloc(self) -> int:
        """A fresh inode number."""
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def add(self, node: Node) -> None:
        """Enter a node made elsewhere (new files, ``.pfs`` entries) under its number."""
        self.nodes[node.ino] = node

    def volume_roots(self) -> set[int]:
        """The inodes every journal can name without binding them: the top and volume roots."""
        return {ROOT, *(v.root for v in self.volumes)}

    def renumber(self, node: Node, ino: int) -> None:
        """Give a loaded node the inode number a journal knows it by (replay)."""
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

    def forget_node(self, node: Node) -> None:
        """Take a node nobody can reach out of the table (and out of its link group)."""
        self.nodes.pop(node.ino, None)
        self.leave_link_group(node)

    def leave_link_group(self, node: Node) -> None:
        if node.link_id is not None:
            key = (node.vol, node.link_id)
            if self.link_groups.get(key) == node.ino:
                del self.link_groups[key]

    # -- committed entries -------------------------------------------------------------------
    def node_from_entry(
        self, entry: Entry, vol: int, parent: int, name: bytes, ino: int | None = None
    ) -> Node:
        """The node showing a committed entry at ``parent/name``: a new one, or the node of a
        hard link group already loaded under another name."""
        link = entry.link_id if vol != RO_VOL else None
        if link is not None and ino is None:
            existing = self.link_groups.get((vol, link))
            if existing is not None and existing in self.nodes:
                node = self.nodes[existing]
                self.add_location(node, parent, name)
                if len(node.locations()) >= node.nlink:
                    self.partial_links.discard(node.ino)
                if node.dirty:  # a changed file found under one more name: rewrite it too
                    self.mark_dirty_up(parent)
                return node
        kind = entry.kind
        node = Node(ino if ino is not None else self.alloc(), kind, vol)
        node.mode, node.uid, node.gid = entry.mode, entry.uid, entry.gid
        node.mtime_ns = node.ctime_ns = node.atime_ns = entry.mtime_ns
        node.rdev = entry.rdev
        node.base = entry
        node.parent, node.name = parent, name
        if kind == DIR:
            node.nlink = 2
        else:
            node.size = entry.size if kind in (FILE, SYMLINK) else 0
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
        """``name → inode`` of a directory, read from the store the first time."""
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
        is_root = self.is_vol_root(d)
        for name, e in entries.items():
            if is_root and name == PFS_NAME:
                continue  # the hidden .pfs/ shadows a stored name
            children[name] = self.node_from_entry(e, d.vol, d.ino, name).ino
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
                if c.kind == DIR:
                    stack.append(c)
        for n in todo:
            self.remark_dirty(n)
        self.partial_links.difference_update(n.ino for n in todo)

    def show_entry(self, node: Node, entry: Entry) -> bool:
        """Make a loaded node that stays (a directory, symlink or special file) show another
        committed entry; True when its mode, owner or mtime changed."""
        node.base = entry
        changed = False
        if (node.mode, node.uid, node.gid, node.mtime_ns) != (
            entry.mode,
            entry.uid,
            entry.gid,
            entry.mtime_ns,
        ):
            node.mode, node.uid, node.gid = entry.mode, entry.uid, entry.gid
            node.mtime_ns = entry.mtime_ns
            changed = True
        if node.kind != DIR:
            node.target, node.size = entry.target, entry.size
        return changed

    def drop_child(self, d: Node, name: bytes) -> Node | None:
        """Take ``name`` out of a loaded directory without journaling it (the committed tree
        no longer has it); returns the node that lost the name."""
        assert d.children is not None
        ino = d.children.get(name)
        child = self.nodes.get(ino) if ino is not None else None
        if child is None:
            return None
        del d.children[name]
        if child.kind == DIR:
            d.nsubdirs -= 1
            child.nlink = 0
        else:
            child.nlink -= 1
        self.remove_location(child, d.ino, name)
        self.leave_link_group(child)
        return child

    def add_child(self, d: Node, name: bytes, entry: Entry) -> Node:
        """Show a committed entry as ``name`` in a loaded directory (not journaled)."""
        assert d.children is not None
        node = self.node_from_entry(entry, d.vol, d.ino, name)
        d.children[name] = node.ino
        if entry.is_dir:
            d.nsubdirs += 1
        return node

    # -- names -------------------------------------------------------------------------------
    def add_location(self, node: Node, parent: int, name: bytes) -> None:
        """``links`` holds every name only while there are two or more."""
        if node.kind == DIR or (not node.parent and not node.links):
            node.parent, node.name = parent, name
            return
        if node.links is None:
            node.links = {(node.parent, node.name)}
        node.links.add((parent, name))
        if len(node.links) <= 1:
            node.links = None

    def remove_location(self, node: Node, parent: int, name: bytes) -> None:
        if node.links:
            node.links.discard((parent, name))
            if (node.parent, node.name) == (parent, name):
                node.parent, node.name = next(iter(node.links), (0, b""))
            if len(node.links) <= 1:
                node.links = None
        elif (node.parent, node.name) == (parent, name):
            node.parent, node.name = 0, b""

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

    def is_reserved(self, d: Node, name: bytes) -> bool:
        """``name`` is the hidden ``.pfs`` of a volume root: never created, removed or renamed."""
        return name == PFS_NAME and self.is_vol_root(d)

    def is_ancestor(self, a: Node, d: Node) -> bool:
        """Is directory ``a`` equal to or above ``d``?"""
        seen = 0
        while True:
            if d is a:
                return True
            if d.ino == ROOT or self.is_vol_root(d) or not d.parent or seen > 10_000:
                return False
            d = self.nodes[d.parent]
            seen += 1

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

    # -- checks ------------------------------------------------------------------------------
    def check_writable(self, node: Node) -> None:
        """EROFS unless the node belongs to a read-write volume."""
        if node.vol < 0 or node.virt is not None or self.volumes[node.vol].read_only:
            raise FsError(errno.EROFS)

    def writable_dir(self, ino: int) -> Node:
        """A directory that may be written to."""
        d = self.node(ino)
        if d.kind != DIR:
            raise FsError(errno.ENOTDIR)
        self.check_writable(d)
        if d.nlink == 0:
            raise FsError(errno.ENOENT)  # removed while still open/cwd
        return d

    @staticmethod
    def check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL)

    # -- dirty marks -------------------------------------------------------------------------
    def mark_dirty(self, node: Node) -> None:
        """Mark a node changed, and every directory above each of its names."""
        self.changes += 1
        if node.dirty:
            return
        node.dirty = True
        for parent, _ in node.locations():
            self.mark_dirty_up(parent)

    def remark_dirty(self, node: Node) -> None:
        """Mark a node changed again, so that the directories of all its names (some of them
        new) are dirty too."""
        node.dirty = False
        self.mark_dirty(node)

    def mark_dirty_up(self, ino: int) -> None:
        """Mark directory ``ino`` and those above it changed (up to the volume root)."""
        self.changes += 1
        while ino:
            d = self.nodes.get(ino)
            if d is None or d.dirty or d.vol < 0:
                return
            d.dirty = True
            if self.is_vol_root(d):
                return
            ino = d.parent

    # -- what a node commits as ----------------------------------------------------------------
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
            link=self.link_id_for(node) if node.kind != DIR and node.nlink > 1 else None,
            nlink=node.nlink,
            xattrs=node.xattrs,
        )
        return (FIFO if special else node.kind), extra
