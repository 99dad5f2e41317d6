"""The hidden, read-only ``.pfs/`` directory of every volume: time travel by path.

``.pfs`` is not listed in the volume root but can be entered: ``.pfs/commits/<id>/...`` shows
any commit of the repo (a full id or a unique prefix of 6+ hex characters),
``.pfs/branches/<name>/...`` the current head of a branch, and ``.pfs/log`` is the history of
the mounted branch as text. Commit trees are immutable, so their nodes are shared between
``commits/`` and ``branches/`` and cached by the kernel; ``branches/<name>`` is looked up again
after a short entry timeout, so it follows the branch as it moves.
"""

from __future__ import annotations

import errno
import itertools
import logging
import time
from typing import TYPE_CHECKING

from pfsfs.errors import PfsError
from pfsfs.ids import to_hex
from pfsfs.model import DIR, FILE, Kind
from pfsfs.refspec import RefSpec

from .tree.nodes import RO_VOL, FsError, Node

if TYPE_CHECKING:
    from .tree.table import InodeTable

log = logging.getLogger(__name__)

LIST_LIMIT = 1000


class PfsArea:
    """Virtual nodes of ``.pfs`` (``virt`` = (tag, volume)) and the commit trees below, kept in
    the mount's inode table (through its public methods only)."""

    def __init__(self, table: InodeTable) -> None:
        self.table = table
        self._roots: dict[int, int] = {}
        self._commit_roots: dict[bytes | None, int] = {}
        self._log_text: dict[int, tuple[bytes | None, bytes]] = {}

    def _virtual(self, tag: str, vol: int, kind: Kind, parent: int, name: bytes) -> Node:
        t = self.table
        node = Node(t.alloc(), kind, RO_VOL)
        node.virt = (tag, vol)
        node.mode = 0o555 if kind == DIR else 0o444
        node.uid, node.gid = t.nodes[t.volumes[vol].root].uid, t.nodes[t.volumes[vol].root].gid
        node.mtime_ns = node.ctime_ns = node.atime_ns = time.time_ns()
        node.parent, node.name = parent, name
        node.nlink = 2 if kind == DIR else 1
        if kind == DIR:
            node.children = {}
        t.add(node)
        return node

    def root(self, vol: int) -> Node:
        ino = self._roots.get(vol)
        if ino is None:
            t = self.table
            pfs = self._virtual("pfs", vol, DIR, t.volumes[vol].root, b".pfs")
            for name, tag, kind in (
                (b"commits", "commits", DIR),
                (b"branches", "branches", DIR),
                (b"log", "log", FILE),
            ):
                child = self._virtual(tag, vol, kind, pfs.ino, name)
                pfs.children[name] = child.ino  # type: ignore[index]
            pfs.nsubdirs = 2
            ino = self._roots[vol] = pfs.ino
        return self.table.nodes[ino]

    def _commit_root(self, commit: bytes | None, parent: int, name: bytes) -> Node:
        ino = self._commit_roots.get(commit)
        if ino is None or ino not in self.table.nodes:
            entry = self.table.repo.root_of(commit)
            node = self.table.node_from_entry(entry, RO_VOL, parent, name)
            ino = self._commit_roots[commit] = node.ino
        return self.table.nodes[ino]

    def lookup(self, p: Node, name: bytes) -> Node:
        assert p.virt is not None
        tag, vol = p.virt
        repo_name = self.table.volumes[vol].repo
        if tag == "pfs":
            ino = (p.children or {}).get(name)
            if ino is None:
                raise FsError(errno.ENOENT)
            return self.table.nodes[ino]
        try:
            text = name.decode()
            if tag == "commits":
                resolved = self.table.repo.resolve(RefSpec(repo_name, text))
                if resolved.branch is not None or resolved.commit is None:
                    raise FsError(errno.ENOENT)  # a branch name is not a commit id
                return self._commit_root(resolved.commit, p.ino, name)
            if tag == "branches":
                head = self.table.repo.branch_head(repo_name, text)
                return self._commit_root(head, p.ino, name)
        except (PfsError, UnicodeDecodeError, ValueError):
            raise FsError(errno.ENOENT) from None
        raise FsError(errno.ENOENT)

    def listdir(self, d: Node) -> list[tuple[bytes, int]]:
        assert d.virt is not None
        tag, vol = d.virt
        v = self.table.volumes[vol]
        repo = self.table.repo
        if tag == "pfs":
            return list((d.children or {}).items())
        if tag == "branches":
            return [
                (name.encode(), self._commit_root(head, d.ino, name.encode()).ino)
                for name, head in sorted(repo.list_branches(v.repo).items())
            ]
        if tag == "commits":
            head = self._head(vol)
            return [
                (to_hex(cid).encode(), self._commit_root(cid, d.ino, to_hex(cid).encode()).ino)
                for cid, _ in itertools.islice(repo.log(head), LIST_LIMIT)
            ]
        return []

    def _head(self, vol: int) -> bytes | None:
        v = self.table.volumes[vol]
        if v.branch:
            try:
                return self.table.repo.branch_head(v.repo, v.branch)
            except PfsError:
                return v.base
        return v.base

    def log_text(self, vol: int) -> bytes:
        head = self._head(vol)
        cached = self._log_text.get(vol)
        if cached is not None and cached[0] == head:
            return cached[1]
        lines = []
        for cid, c in self.table.repo.log(head):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.time_ns / 1e9))
            message = c.message.replace("\n", " ")
            lines.append(f"{to_hex(cid)}  {when}  {c.author}  {message}\n")
        text = "".join(lines).encode()
        self._log_text[vol] = (head, text)
        return text

    def refresh(self, node: Node) -> None:
        """Bring a virtual file's size up to date (before getattr/open)."""
        if node.virt is not None and node.virt[0] == "log":
            node.size = len(self.log_text(node.virt[1]))

    def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.virt is None or node.virt[0] != "log":
            raise FsError(errno.EISDIR)
        return self.log_text(node.virt[1])[offset : offset + size]
