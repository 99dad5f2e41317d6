"""The versioning model: immutable objects and how they encode.

chunk → file manifest (chunk locators + sizes) → tree (one per directory: name → entry)
→ commit (root entry, parents, message, time, author, provenance) → refs.

Objects point at each other with a ``Locator``: the object's id plus where it is stored. Small
objects (tiny files' chunks, manifests, trees) live inside *pack* blobs, so a 100,000-file commit
writes a handful of blobs instead of 100,000; a locator into a pack carries the pack name,
offset and length so a reader needs no separate index. Large chunks and commits are standalone
blobs named by their id. Names inside trees are bytes: any POSIX name but NUL and ``/``
round-trips.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from . import codec
from .errors import Corruption
from .ids import to_hex


class Kind(StrEnum):
    """What a name is. An entry's ``type`` is one of the four stored kinds (FILE, DIR, SYMLINK,
    FIFO); devices and sockets are stored as FIFO entries whose ``X_FTYPE`` says CHAR, BLOCK or
    SOCKET, and ``Entry.kind`` gives that real kind. The values are the one-letter codes on the
    wire, so a ``Kind`` encodes and compares as its letter."""

    FILE = "f"
    DIR = "d"
    SYMLINK = "l"
    FIFO = "p"
    CHAR = "c"
    BLOCK = "b"
    SOCKET = "s"

    @property
    def mode_bits(self) -> int:
        """The ``S_IFMT`` bits of this kind (``stat.S_IFREG`` for FILE, ...)."""
        return _MODE_BITS[self]

    @staticmethod
    def of_mode(mode: int) -> Kind:
        """The kind of an ``st_mode``; ValueError for a file type POSIX does not define."""
        try:
            return _KIND_OF_BITS[stat.S_IFMT(mode)]
        except KeyError:
            raise ValueError(f"unknown file type in mode {mode:o}") from None


_MODE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.SOCKET: stat.S_IFSOCK,
}
_KIND_OF_BITS = {bits: kind for kind, bits in _MODE_BITS.items()}
_KIND_OF_CODE = {kind.value: kind for kind in Kind}

# The stored entry types, by their usual names.
FILE = Kind.FILE
DIR = Kind.DIR
SYMLINK = Kind.SYMLINK
FIFO = Kind.FIFO
ENTRY_TYPES = (FILE, DIR, SYMLINK, FIFO)

NAME_MAX = 255

# The optional fields of an entry, kept in ``Entry.extra`` (absent = the default). This module
# is their one owner: mounts, put/get and diff read them through ``Entry``'s properties and
# write them with ``entry_extra``.
X_LINK = "link"  # bytes: hard-link group id shared by the names of one inode
X_NLINK = "nlink"  # int: how many names the group has
X_XATTR = "xattr"  # {bytes name: bytes value}: extended attributes
X_RDEV = "rdev"  # int: device number of a character/block device
X_FTYPE = "ftype"  # "c" | "b" | "s": a FIFO entry that is really a device or a socket
X_ALLOC = "alloc"  # int: bytes a sparse file really holds, set only when less than its size
EXTRA_FIELDS = (X_LINK, X_NLINK, X_XATTR, X_RDEV, X_FTYPE, X_ALLOC)
SPECIAL_FTYPES = (Kind.CHAR, Kind.BLOCK, Kind.SOCKET)  # stored as FIFO entries with X_FTYPE


def entry_extra(
    other: dict[str, Any] | None = None,
    *,
    link: bytes | None = None,
    nlink: int = 1,
    xattrs: dict[bytes, bytes] | None = None,
    rdev: int = 0,
    ftype: Kind | None = None,
    alloc: int | None = None,
) -> dict[str, Any] | None:
    """``Entry.extra`` for these fields (defaults omitted; None when all are defaults).
    ``other``: keys this version does not know, carried over unchanged."""
    extra = {k: v for k, v in (other or {}).items() if k not in EXTRA_FIELDS}
    if ftype is not None:
        if ftype not in SPECIAL_FTYPES:
            raise ValueError(f"not a special file type: {ftype!r}")
        extra[X_FTYPE] = str(ftype)
    if rdev:
        extra[X_RDEV] = rdev
    if link is not None:
        extra[X_LINK] = link
        extra[X_NLINK] = nlink
    if xattrs:
        extra[X_XATTR] = dict(xattrs)
    if alloc is not None:
        extra[X_ALLOC] = alloc
    return extra or None


@dataclass(frozen=True, slots=True)
class Locator:
    """Where an object is: standalone (``pack == b""``) or a byte range of a pack blob."""

    id: bytes
    pack: bytes = b""
    offset: int = 0
    length: int = 0

    def to_wire(self) -> list[Any]:
        if not self.pack:
            return [self.id, self.length]
        return [self.id, self.length, self.pack, self.offset]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Locator:
        if len(w) == 2:
            return cls(w[0], b"", 0, w[1])
        return cls(w[0], w[2], w[3], w[1])

    @property
    def hex(self) -> str:
        return to_hex(self.id)


def chunk_key(object_id: bytes) -> str:
    return f"chunk/{to_hex(object_id)}"


#: First byte of a pack's name: what kind of objects it holds. Readers may fetch a whole
#: metadata pack at once (trees of one commit live together) but only ranges of data packs.
DATA_PACK = b"D"
META_PACK = b"M"


def new_pack_name(tag: bytes) -> bytes:
    return tag + os.urandom(15)


def is_meta_pack_key(key: str) -> bool:
    return key.startswith("pack/" + META_PACK.hex())


def pack_key(pack: bytes) -> str:
    return f"pack/{pack.hex()}"


def commit_key(commit_id: bytes) -> str:
    return f"commit/{to_hex(commit_id)}"


def blob_key(loc: Locator) -> str:
    """The store key holding a located object (a pack, or the standalone blob)."""
    return pack_key(loc.pack) if loc.pack else chunk_key(loc.id)


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory, with the POSIX metadata a mount must round-trip.

    ``size`` is the file's length, a symlink's target length, or for a directory the logical
    bytes below it; ``nfiles`` counts regular files below a directory (1 for a file). ``ref``
    locates the manifest (files) or tree (directories). ``extra`` carries the optional fields
    listed at ``EXTRA_FIELDS``, read through the properties below and written by
    ``entry_extra``.
    """

    type: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    ref: Locator | None = None
    target: bytes = b""
    nfiles: int = 0
    extra: dict[str, Any] | None = None

    def to_wire(self, name: bytes) -> list[Any]:
        return [
            name,
            str(self.type),
            self.mode,
            self.uid,
            self.gid,
            self.mtime_ns,
            self.size,
            self.ref.to_wire() if self.ref else None,
            self.target,
            self.nfiles,
            self.extra,
        ]

    @classmethod
    def from_wire(cls, w: list[Any]) -> tuple[bytes, Entry]:
        return w[0], cls(
            entry_type(w[1]),
            w[2],
            w[3],
            w[4],
            w[5],
            w[6],
            Locator.from_wire(w[7]) if w[7] is not None else None,
            w[8],
            w[9],
            w[10],
        )

    def with_(self, **changes: Any) -> Entry:
        return replace(self, **changes)

    @property
    def is_dir(self) -> bool:
        return self.type == DIR

    def content_id(self) -> bytes | None:
        """Identity of the content: the manifest/tree id (None for symlinks and FIFOs)."""
        return self.ref.id if self.ref else None

    # -- the optional fields (see ``EXTRA_FIELDS``) ------------------------------------------------
    def _x(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default) if self.extra else default

    @property
    def link_id(self) -> bytes | None:
        return self._x(X_LINK)

    @property
    def nlink(self) -> int:
        return max(1, int(self._x(X_NLINK, 1)))

    @property
    def xattrs(self) -> dict[bytes, bytes]:
        """Names as bytes (older entries may hold str names)."""
        raw = self._x(X_XATTR) or {}
        return {os.fsencode(k) if isinstance(k, str) else k: v for k, v in raw.items()}

    @property
    def rdev(self) -> int:
        return int(self._x(X_RDEV, 0))

    @property
    def kind(self) -> Kind:
        """The POSIX file type: ``type``, or for a special file stored as a FIFO entry its
        CHAR/BLOCK/SOCKET."""
        if self.type == FIFO:
            ftype = self._x(X_FTYPE)
            if ftype in SPECIAL_FTYPES:
                return _KIND_OF_CODE[ftype]
        return self.type

    @property
    def alloc(self) -> int | None:
        return self._x(X_ALLOC)

    def with_fields(self, **fields: Any) -> Entry:
        """A copy with some optional fields changed (``entry_extra``'s keywords), the others
        kept."""
        current: dict[str, Any] = {
            "link": self.link_id,
            "nlink": self.nlink,
            "xattrs": self.xattrs,
            "rdev": self.rdev,
            "ftype": self.kind if self.kind in SPECIAL_FTYPES else None,
            "alloc": self.alloc,
        }
        current.update(fields)
        return replace(self, extra=entry_extra(self.other_extra(), **current))

    def other_extra(self) -> dict[str, Any] | None:
        """``extra`` keys this version does not know (kept as they are when rewritten)."""
        if not self.extra:
            return None
        other = {k: v for k, v in self.extra.items() if k not in EXTRA_FIELDS}
        return other or None


def entry_type(code: str) -> Kind:
    """The stored type of an entry from its wire letter; a letter this version does not know
    (a newer format) is an error, never guessed."""
    kind = _KIND_OF_CODE.get(code)
    if kind not in ENTRY_TYPES:
        raise Corruption(f"unknown entry type {code!r} in a tree (written by a newer pfsfs?)")
    return kind  # type: ignore[return-value]


def encode_tree(entries: dict[bytes, Entry]) -> bytes:
    return codec.encode(codec.KIND_TREE, [entries[n].to_wire(n) for n in sorted(entries)])


def decode_tree(data: bytes | memoryview) -> dict[bytes, Entry]:
    return dict(Entry.from_wire(w) for w in codec.decode(data, codec.KIND_TREE))


@dataclass(frozen=True, slots=True)
class ManifestChunk:
    loc: Locator
    size: int


def encode_manifest(chunks: list[ManifestChunk]) -> bytes:
    return codec.encode(codec.KIND_MANIFEST, [[c.loc.to_wire(), c.size] for c in chunks])


def decode_manifest(data: bytes | memoryview) -> list[ManifestChunk]:
    return [
        ManifestChunk(Locator.from_wire(w), size)
        for w, size in codec.decode(data, codec.KIND_MANIFEST)
    ]


@dataclass(frozen=True)
class Commit:
    """A snapshot of one repo: its root directory entry plus history and provenance.

    ``provenance`` is filled by pipelines: ``{"pipeline": name, "spec": hash, "inputs":
    [{"repo", "branch", "commit"}...]}``; empty for commits people make.
    """

    repo: str
    root: Entry
    parents: tuple[bytes, ...]
    message: str
    time_ns: int
    author: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return codec.encode(
            codec.KIND_COMMIT,
            {
                "repo": self.repo,
                "root": self.root.to_wire(b""),
                "parents": list(self.parents),
                "message": self.message,
                "time_ns": self.time_ns,
                "author": self.author,
                "provenance": self.provenance,
            },
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Commit:
        d = codec.decode(data, codec.KIND_COMMIT)
        return cls(
            repo=d["repo"],
            root=Entry.from_wire(d["root"])[1],
            parents=tuple(d["parents"]),
            message=d["message"],
            time_ns=d["time_ns"],
            author=d["author"],
            provenance=d.get("provenance") or {},
        )

    @property
    def size(self) -> int:
        return self.root.size

    @property
    def nfiles(self) -> int:
        return self.root.nfiles
