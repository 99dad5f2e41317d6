"""Staged change sets and how they turn into new trees.

A ``ChangeSet`` is a trie of path components (bytes). Each node says what happens at that path:
``KEEP`` (only descend), ``DELETE``, ``SET`` (this exact entry; for a directory entry, children
apply on top of its tree) or ``MKDIR`` (a directory with this metadata, keeping the contents it
had). Later operations override earlier ones the way a shell would: deleting ``/a`` then writing
``/a/b`` leaves a fresh ``/a`` holding only ``b``.

``apply_changes`` rewrites only the directories on changed paths — O(changes), not O(files) —
and recomputes each rewritten directory's recursive size and file count from its entries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .display import show_path
from .errors import InvalidInput
from .model import DIR, NAME_MAX, Entry
from .objects import ObjectReader, ObjectWriter
from .treediff import directory_entry

KEEP, DELETE, SET, MKDIR = "keep", "delete", "set", "mkdir"


def default_dir_entry(now_ns: int | None = None) -> Entry:
    """Metadata for a directory created implicitly (``put`` into a new path)."""
    return Entry(
        DIR,
        0o755,
        os.getuid(),
        os.getgid(),
        now_ns if now_ns is not None else time.time_ns(),
    )


def check_name(name: bytes) -> bytes:
    if not name or name in (b".", b".."):
        raise InvalidInput(f"invalid name {name!r}")
    if b"\0" in name or b"/" in name:
        raise InvalidInput(f"name {name!r} contains NUL or '/'")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"name is {len(name)} bytes long; the limit is {NAME_MAX}")
    return name


RESERVED_ROOT_NAME = b".pfs"  # mounts show their time-travel directory there


def _check_not_reserved(parts: tuple[bytes, ...]) -> None:
    if parts and parts[0] == RESERVED_ROOT_NAME:
        raise InvalidInput(
            "'.pfs' at the root of a repo is reserved (mounts show their time-travel "
            "directory there); store it under another name"
        )


def split_path(path: str | bytes) -> tuple[bytes, ...]:
    """``/a/b/c`` → ``(b"a", b"b", b"c")``; rejects ``..`` and bad names (no traversal)."""
    raw = os.fsencode(path)
    parts = tuple(p for p in raw.split(b"/") if p and p != b".")
    for p in parts:
        if p == b"..":
            raise InvalidInput(f"path {os.fsdecode(raw)!r} contains '..'")
        check_name(p)
    return parts


@dataclass
class _Node:
    action: str = KEEP
    entry: Entry | None = None
    children: dict[bytes, _Node] = field(default_factory=dict)


class ChangeSet:
    """Adds, updates and deletes by path, with metadata."""

    def __init__(self) -> None:
        self.root = _Node()
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def _node(self, parts: tuple[bytes, ...]) -> _Node:
        node = self.root
        for name in parts:
            # A path that is deleted or replaced by a non-directory becomes a fresh directory
            # when something is written beneath it.
            if node.action == DELETE or (
                node.action == SET and node.entry is not None and not node.entry.is_dir
            ):
                node.action, node.entry = SET, default_dir_entry()
                node.children = {}
            node = node.children.setdefault(name, _Node())
        return node

    def put(self, path: str | bytes | tuple[bytes, ...], entry: Entry) -> None:
        """Set ``path`` to ``entry`` (a file, symlink, FIFO, or a whole directory subtree)."""
        parts = path if isinstance(path, tuple) else split_path(path)
        _check_not_reserved(parts)
        if not parts:
            if not entry.is_dir:
                raise InvalidInput("the root of a repo must be a directory")
        node = self._node(parts)
        node.action, node.entry, node.children = SET, entry, {}
        self.count += 1

    def mkdir(self, path: str | bytes | tuple[bytes, ...], entry: Entry) -> None:
        """Ensure a directory with ``entry``'s metadata; its existing contents stay."""
        parts = path if isinstance(path, tuple) else split_path(path)
        _check_not_reserved(parts)
        node = self._node(parts)
        if node.action == DELETE:
            node.action, node.entry = SET, entry.with_(ref=None)
        elif node.action == SET and node.entry is not None and node.entry.is_dir:
            node.entry = entry.with_(ref=node.entry.ref)
        else:
            node.action, node.entry = MKDIR, entry
        self.count += 1

    def delete(self, path: str | bytes | tuple[bytes, ...]) -> None:
        parts = path if isinstance(path, tuple) else split_path(path)
        if not parts:
            raise InvalidInput("cannot delete the root of a repo")
        node = self._node(parts)
        node.action, node.entry, node.children = DELETE, None, {}
        self.count += 1

    def paths(self) -> Iterator[tuple[tuple[bytes, ...], str]]:
        """Every changed path with its action (for conflict detection and display)."""

        def walk(node: _Node, prefix: tuple[bytes, ...]) -> Iterator[tuple[tuple[bytes, ...], str]]:
            if node.action != KEEP:
                yield prefix, node.action
            for name, child in node.children.items():
                yield from walk(child, prefix + (name,))

        yield from walk(self.root, ())


def apply_changes(
    changes: ChangeSet,
    base_root: Entry | None,
    reader: ObjectReader,
    writer: ObjectWriter,
) -> Entry:
    """The new root entry after applying ``changes`` on top of ``base_root``."""
    new_root = _apply(changes.root, base_root, reader, writer, ())
    if new_root is None:
        raise InvalidInput("cannot delete the root of a repo")
    return new_root


def _apply(
    node: _Node,
    base: Entry | None,
    reader: ObjectReader,
    writer: ObjectWriter,
    path: tuple[bytes, ...],
) -> Entry | None:
    if node.action == DELETE:
        return None
    if node.action == SET:
        assert node.entry is not None
        if not node.entry.is_dir or (not node.children and node.entry.ref is not None):
            return node.entry
        meta, tree_loc = node.entry, node.entry.ref
    elif node.action == MKDIR:
        assert node.entry is not None
        meta = node.entry
        tree_loc = base.ref if base is not None and base.is_dir else None
    else:  # KEEP
        if base is None:
            meta, tree_loc = default_dir_entry(), None
        elif not base.is_dir:
            shown = show_path(path)
            raise InvalidInput(f"{shown} is not a directory")
        else:
            meta, tree_loc = base, base.ref
        if not node.children and base is not None:
            return base
    entries = reader.read_tree(tree_loc) if tree_loc is not None else {}
    for name, child in node.children.items():
        new = _apply(child, entries.get(name), reader, writer, path + (name,))
        if new is None:
            entries.pop(name, None)
        else:
            entries[name] = new
    return directory_entry(meta, entries, writer)
