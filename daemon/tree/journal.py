"""The mount's journal: what each mutation records, and replaying the records.

Every mutation of the tree appends one record as soon as it succeeded (``staging.Staging``
frames them: length-prefixed msgpack). This module is the one owner of the records' layout:
``Journal`` writes them, ``Replayer`` reads them back, and the two sit side by side so that
the formats cannot drift apart. The layout is on disk in every live and orphaned mount; it must
stay as it is (a recovered mount replays journals written by earlier versions):

- ``["H", {"volumes": [[repo, branch, base, read_only], ...], "next_ino": n}]`` header, first
- ``["B", ino, parent, name]`` bind: ``ino`` is the node at ``parent/name`` right now
- ``["N", ino, parent, name, kind, mode, uid, gid, rdev, target, now]`` create
- ``["L", ino, parent, name, now]`` hard link; ``["U", parent, name, now, rmdir]`` unlink/rmdir
- ``["R", parent1, name1, parent2, name2, flags, now]`` rename
- ``["A", ino, changes, now]`` setattr; ``["X", ino, name, value_or_None, now]`` xattr
- ``["W", ino, offset, length, mtime_or_None]`` write (the bytes are in the data file)
- ``["F", ino, start, end]`` bytes the kernel wrote that could not be staged

Records name nodes by inode number. A committed node that was never mentioned before is first
*bound* (``B``) so that replay can find it again; replay renumbers the nodes it loads to the
journal's inode numbers, so a recovered mount keeps using the same numbers and the same journal.
Replay runs the very same mutation methods as the live mount, with ``replaying`` set: they then
skip the file I/O and the journaling.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .nodes import FsError, Node
from .table import InodeTable, VolumeSpec

if TYPE_CHECKING:
    from pfsfs.model import Kind

    from ..staging import Staging
    from .content import Content
    from .namespace import Namespace

log = logging.getLogger(__name__)


def header_volumes(records: list[list[Any]]) -> list[VolumeSpec] | None:
    """The volumes a journal's header names (what to rebuild the tree from before replaying
    the records after it), or None when the journal does not start with a header."""
    if not records or records[0][0] != "H":
        return None
    return [tuple(v) for v in records[0][1]["volumes"]]  # type: ignore[misc]


class Journal:
    """Appends the records of mutations, binding the committed nodes they name first."""

    def __init__(self, table: InodeTable, staging: Staging | None) -> None:
        self.table = table
        self.staging = staging
        self.replaying = False
        self.bound: set[int] = table.volume_roots()  # inodes the journal can already name

    @contextmanager
    def replay_mode(self) -> Iterator[None]:
        """Mutations run inside only change memory: no records, no file I/O."""
        self.replaying = True
        try:
            yield
        finally:
            self.replaying = False

    @property
    def live(self) -> bool:
        """True when mutations are recorded (a staged mount that is not replaying)."""
        return self.staging is not None and not self.replaying

    def bind(self, node: Node) -> bool:
        """Make ``node`` nameable in the journal; False if it is unreachable (deleted)."""
        if node.ino in self.bound or not self.live:
            return True
        nodes = self.table.nodes
        if not node.parent or node.parent not in nodes:
            return False
        parent = nodes[node.parent]
        if parent is node or not self.bind(parent):
            return False
        self._append(["B", node.ino, node.parent, node.name])
        self.bound.add(node.ino)
        return True

    def named(self, ino: int) -> None:
        """A node the journal itself just introduced (``N``): nameable from now on."""
        self.bound.add(ino)

    def bind_all(self) -> None:
        """After a replay: every node the tree holds is named by the journal (or is loaded
        from the base commit, where the same path finds it again)."""
        self.bound = set(self.table.nodes)

    def _append(self, record: list[Any]) -> None:
        if self.live:
            assert self.staging is not None
            self.staging.append(record)

    # -- the records -------------------------------------------------------------------------
    def header(self) -> list[Any]:
        t = self.table
        return ["H", {"volumes": [v.to_wire() for v in t.volumes], "next_ino": t.next_ino}]

    def created(
        self,
        ino: int,
        parent: int,
        name: bytes,
        kind: Kind,
        mode: int,
        uid: int,
        gid: int,
        rdev: int,
        target: bytes,
        now: int,
    ) -> None:
        self._append(["N", ino, parent, name, kind, mode, uid, gid, rdev, target, now])

    def linked(self, ino: int, parent: int, name: bytes, now: int) -> None:
        self._append(["L", ino, parent, name, now])

    def unlinked(self, parent: int, name: bytes, now: int, rmdir: bool) -> None:
        self._append(["U", parent, name, now, rmdir])

    def renamed(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int, now: int) -> None:
        self._append(["R", p1, n1, p2, n2, flags, now])

    def attrs_set(self, ino: int, changes: dict[str, int], now: int) -> None:
        self._append(["A", ino, changes, now])

    def xattr_set(self, ino: int, name: bytes, value: bytes | None, now: int) -> None:
        self._append(["X", ino, name, value, now])

    def wrote(self, ino: int, offset: int, length: int, now: int | None) -> None:
        self._append(["W", ino, offset, length, now])

    def write_failed(self, ino: int, start: int, end: int) -> None:
        self._append(["F", ino, start, end])

    def restart(self) -> None:
        """Replace the journal by one holding only the header (after a snapshot committed
        everything it recorded); committed nodes must be bound again from then on."""
        if self.staging is None:
            return
        self.staging.rewrite_journal([self.header()])
        self.bound = self.table.volume_roots()


class Replayer:
    """Re-applies journal records through the mutation methods the live mount ran."""

    def __init__(
        self, table: InodeTable, journal: Journal, namespace: Namespace, content: Content
    ) -> None:
        self.table = table
        self.journal = journal
        self.namespace = namespace
        self.content = content

    def replay(self, records: list[list[Any]]) -> int:
        """Re-apply journal records (after the header); returns how many applied."""
        table = self.table
        top = table.next_ino
        for r in records:
            if r[0] in ("B", "N"):
                top = max(top, r[1] + 1)
        table.next_ino = top + 1_000_000  # lazily loaded nodes never collide with journal inos
        applied = 0
        with self.journal.replay_mode():
            for r in records:
                try:
                    self.apply(r)
                    applied += 1
                except FsError as exc:
                    log.warning("journal record %s could not be replayed: %s", r[0], exc)
        table.next_ino = max(table.nodes) + 1
        self.journal.bind_all()
        return applied

    def apply(self, r: list[Any]) -> None:
        op = r[0]
        ns, content, table = self.namespace, self.content, self.table
        if op == "B":
            _, ino, parent, name = r
            node = (
                table.nodes[table.children(table.node(parent))[name]]
                if parent in table.nodes
                else None
            )
            if node is None:
                raise FsError(errno.ENOENT)
            if node.ino != ino:
                table.renumber(node, ino)
        elif op == "N":
            _, ino, parent, name, kind, mode, uid, gid, rdev, target, now = r
            ns.create(parent, name, kind, mode, uid, gid, rdev, target, now, ino=ino)
        elif op == "L":
            ns.link(r[1], r[2], r[3], r[4])
        elif op == "U":
            ns.unlink(r[1], r[2], r[3], rmdir=r[4])
        elif op == "R":
            ns.rename(r[1], r[2], r[3], r[4], r[5], r[6])
        elif op == "A":
            content.setattr(r[1], r[3], r[2])
        elif op == "W":
            content.apply_write(table.node(r[1]), r[2], r[3], r[4])
        elif op == "X":
            content.set_xattr(r[1], r[2], r[3], r[4])
        elif op == "F":
            content.write_failed(table.node(r[1]), r[2], r[3])
        elif op != "H":
            log.warning("unknown journal record %r", op)
