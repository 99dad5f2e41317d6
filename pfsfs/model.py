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
from dataclasses import dataclass, field, replace
from typing import Any

from . import codec
from .ids import to_hex

# Entry types.
FILE = "f"
DIR = "d"
SYMLINK = "l"
FIFO = "p"
ENTRY_TYPES = (FILE, DIR, SYMLINK, FIFO)

NAME_MAX = 255


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
    locates the manifest (files) or tree (directories). ``extra`` carries optional fields: ``link``
    (hard-link group id shared by names of one inode), ``xattr`` (dict of user xattrs), ``rdev``.
    """

    type: str
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
            self.type,
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
            w[1],
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
