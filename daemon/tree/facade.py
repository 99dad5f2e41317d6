"""``Tree``: the inode tree of one mount, as the FUSE layer and the worker see it.

A thin facade over the composed parts (``table``, ``journal``, ``content``, ``namespace``,
``replayer`` and ``pfs``, the hidden ``.pfs/``): it builds them, wires them to one another and
forwards each call to the part that owns it. It holds nothing but its parts; code that needs a
part's finer methods (the snapshot) uses the part, through the attribute of that name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pfsfs.model import Kind
from pfsfs.repository import Repository

from ..chunkcache import ChunkCache
from .content import Content
from .journal import Journal, Replayer
from .namespace import Namespace
from .nodes import Node, Volume
from .table import InodeTable, VolumeSpec

if TYPE_CHECKING:
    from ..pfsdir import PfsArea
    from ..precommit import Precomputed
    from ..staging import Staging


class Tree:
    """The inode table and every operation a mount supports (synchronous, no awaits)."""

    def __init__(
        self,
        repo: Repository,
        volumes: list[VolumeSpec],
        staging: Staging | None,
        *,
        multi: bool,
        mount_id: str = "",
        cache: ChunkCache | None = None,
    ) -> None:
        from ..pfsdir import PfsArea  # .pfs/ is built on the table; it imports this package

        self.table = InodeTable(repo, volumes, multi=multi, mount_id=mount_id)
        self.pfs: PfsArea = PfsArea(self.table)
        self.journal = Journal(self.table, staging)
        self.content = Content(
            self.table, self.journal, staging, cache or ChunkCache(repo.reader), self.pfs
        )
        self.namespace = Namespace(self.table, self.journal, self.content, self.pfs)
        self.replayer = Replayer(self.table, self.journal, self.namespace, self.content)

    # -- shared state ------------------------------------------------------------------------
    @property
    def staging(self) -> Staging | None:
        return self.journal.staging

    @staging.setter
    def staging(self, staging: Staging | None) -> None:
        """The journal and the data files live in one staging directory."""
        self.journal.staging = staging
        self.content.staging = staging

    @property
    def repo(self) -> Repository:
        return self.table.repo

    @property
    def multi(self) -> bool:
        return self.table.multi

    @property
    def nodes(self) -> dict[int, Node]:
        return self.table.nodes

    @property
    def volumes(self) -> list[Volume]:
        return self.table.volumes

    @property
    def changes(self) -> int:
        """Mutations since the mount started (autosnapshot and background chunking watch it)."""
        return self.table.changes

    @property
    def cache(self) -> ChunkCache:
        return self.content.cache

    @property
    def closed_files(self) -> dict[int, int]:
        return self.content.closed_files

    @property
    def precomputed(self) -> dict[int, Precomputed]:
        return self.content.precomputed

    # -- the table ---------------------------------------------------------------------------
    def node(self, ino: int) -> Node:
        return self.table.node(ino)

    def children(self, d: Node) -> dict[bytes, int]:
        return self.table.children(d)

    def dir_nlink(self, d: Node) -> int:
        return self.table.dir_nlink(d)

    def complete_links(self, vol: int) -> None:
        self.table.complete_links(vol)

    def check_writable(self, node: Node) -> None:
        self.table.check_writable(node)

    def entry_meta(self, node: Node) -> tuple[str, dict[str, Any] | None]:
        return self.table.entry_meta(node)

    # -- the namespace -----------------------------------------------------------------------
    def lookup(self, parent_ino: int, name: bytes) -> Node:
        return self.namespace.lookup(parent_ino, name)

    def listdir(self, d: Node) -> list[tuple[bytes, int]]:
        return self.namespace.listdir(d)

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
    ) -> Node:
        return self.namespace.create(parent_ino, name, kind, mode, uid, gid, rdev, target, now)

    def link(self, ino: int, parent_ino: int, name: bytes, now: int) -> Node:
        return self.namespace.link(ino, parent_ino, name, now)

    def unlink(self, parent_ino: int, name: bytes, now: int, *, rmdir: bool) -> Node:
        return self.namespace.unlink(parent_ino, name, now, rmdir=rmdir)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int, now: int) -> Node | None:
        return self.namespace.rename(p1, n1, p2, n2, flags, now)

    def maybe_drop(self, node: Node) -> None:
        self.namespace.maybe_drop(node)

    def forget(self, ino: int, n: int) -> None:
        self.namespace.forget(ino, n)

    # -- content -----------------------------------------------------------------------------
    def setattr(self, ino: int, now: int, changes: dict[str, int]) -> Node:
        return self.content.setattr(ino, now, changes)

    def set_xattr(self, ino: int, name: bytes, value: bytes | None, now: int) -> None:
        self.content.set_xattr(ino, name, value, now)

    def write(self, ino: int, offset: int, data: bytes, now: int | None) -> int:
        return self.content.write(ino, offset, data, now)

    def read(self, node: Node, offset: int, size: int) -> bytes | bytearray | memoryview:
        return self.content.read(node, offset, size)

    def file_closed(self, node: Node) -> None:
        self.content.file_closed(node)

    def unstaged_paths(self) -> list[str]:
        return self.content.unstaged_paths()

    # -- the journal -------------------------------------------------------------------------
    def header(self) -> list[Any]:
        return self.journal.header()

    def replay(self, records: list[list[Any]]) -> int:
        return self.replayer.replay(records)
