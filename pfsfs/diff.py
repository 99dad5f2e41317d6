"""Comparing two commits (or two directories): added, removed, modified paths with sizes.

Subtrees whose tree ids are equal are skipped without reading them, so a diff costs in
proportion to what changed. ``modified`` means the content changed (or the type, or a device's
number); a change of mode, owner, mtime or xattrs alone is reported as ``metadata``.

Paths are bytes (names need not be UTF-8): ``DiffItem.shown`` is the escaped form people
read, ``to_dict`` the lossless JSON form (see ``pfsfs.display``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .display import json_name, show
from .model import Entry
from .treediff import same_content, same_meta

if TYPE_CHECKING:
    from .repository import Repository


@dataclass(frozen=True)
class DiffItem:
    path: bytes
    status: str  # added | removed | modified | metadata
    type: str
    old_size: int | None
    new_size: int | None

    @property
    def shown(self) -> str:
        return show(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            **json_name(self.path, "path"),
            "status": self.status,
            "type": self.type,
            "old_size": self.old_size,
            "new_size": self.new_size,
        }


def diff_entries(
    repo: Repository, old: Entry | None, new: Entry | None, path: bytes = b""
) -> Iterator[DiffItem]:
    """Differences between two directory entries (either may be None: empty)."""
    old_tree = repo.list_dir(old) if old is not None and old.is_dir else {}
    new_tree = repo.list_dir(new) if new is not None and new.is_dir else {}
    for name in sorted(old_tree.keys() | new_tree.keys()):
        a, b = old_tree.get(name), new_tree.get(name)
        child = path + b"/" + name
        if a is not None and b is not None and a.is_dir and b.is_dir:
            if a.ref is not None and b.ref is not None and a.ref.id == b.ref.id:
                if not same_meta(a, b):
                    yield DiffItem(child + b"/", "metadata", "d", a.size, b.size)
                continue
            yield from diff_entries(repo, a, b, child)
            continue
        if a is None:
            assert b is not None
            yield from _whole(repo, b, child, "added")
        elif b is None:
            yield from _whole(repo, a, child, "removed")
        elif not same_content(a, b):
            if a.is_dir or b.is_dir:
                yield from _whole(repo, a, child, "removed")
                yield from _whole(repo, b, child, "added")
            else:
                yield DiffItem(child, "modified", b.type, a.size, b.size)
        elif not same_meta(a, b):
            yield DiffItem(child, "metadata", b.type, a.size, b.size)


def _whole(repo: Repository, entry: Entry, path: bytes, status: str) -> Iterator[DiffItem]:
    """Every file of an added or removed subtree."""
    sizes = (None, entry.size) if status == "added" else (entry.size, None)
    if not entry.is_dir:
        yield DiffItem(path, status, entry.type, *sizes)
        return
    for sub, child in repo.walk(entry, path):
        if not child.is_dir:
            s = (None, child.size) if status == "added" else (child.size, None)
            yield DiffItem(sub, status, child.type, *s)
