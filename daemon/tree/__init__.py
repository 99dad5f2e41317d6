"""The inode tree of one mount: committed entries loaded lazily, changes applied in memory.

Composed of parts with one job each, built and wired together by the ``Tree`` facade:

- ``nodes``: the types (``Node``, ``Volume``, ``FsError``) and byte-range helpers;
- ``table`` (``InodeTable``): nodes by inode number, lazy loading of committed directories,
  names and hard links, dirty marks, what a node commits as;
- ``journal`` (``Journal``, ``Replayer``): the one owner of the journal records' layout; binds
  the nodes records name, appends one record per mutation, replays them after a crash;
- ``namespace`` (``Namespace``): lookup, listdir, create, link, unlink/rmdir, rename, dropping
  unreachable nodes;
- ``content`` (``Content``): setattr (incl. truncate), xattrs, write, read, the staged data
  files and their state after a snapshot;
- ``facade`` (``Tree``): what the FUSE layer (``fs``) and the worker call.

Each part uses only those before it: ``Journal`` the table, ``Content`` the table and the
journal, ``Namespace`` those and ``Content``; the last two hand the virtual nodes of ``.pfs/`` to
``pfsdir``, which is built on the table alone. ``Replayer`` sits beside ``Journal`` (so that one
module both writes and reads the records) and drives ``Namespace`` and ``Content``. Everything
is synchronous, and errors are ``FsError(errno)``; the FUSE layer turns them into
``FUSEError`` in one place.
"""

from .facade import Tree
from .nodes import PFS_NAME, RO_VOL, ROOT, FsError, Node, Volume

__all__ = [
    "PFS_NAME",
    "RO_VOL",
    "ROOT",
    "FsError",
    "Node",
    "Tree",
    "Volume",
]
