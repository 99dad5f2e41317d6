"""Three-way merge of trees at path level: what a snapshot does when its branch moved.

Given the common base, ours and theirs, an entry changed on one side only takes that side; a
directory changed on both sides is merged child by child (equal subtrees are skipped unread);
anything else changed on both sides, differently, is a *conflict*: its path is recorded and
``strategy`` ("ours"/"theirs", or None = ours, with the conflict reported) decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .display import show
from .treediff import directory_entry, same_entry

if TYPE_CHECKING:
    from .model import Entry
    from .objects import ObjectWriter
    from .repository import Repository


class Merger:
    def __init__(self, repo: Repository, writer: ObjectWriter, strategy: str | None) -> None:
        self.repo = repo
        self.w = writer
        self.strategy = strategy
        self.conflicts: list[str] = []

    def merge(
        self, base: Entry | None, ours: Entry | None, theirs: Entry | None, path: bytes = b""
    ) -> Entry | None:
        if same_entry(ours, theirs) or same_entry(base, theirs):
            return ours
        if same_entry(base, ours):
            return theirs
        if ours is not None and theirs is not None and ours.is_dir and theirs.is_dir:
            b = self.repo.list_dir(base) if base is not None and base.is_dir else {}
            o, t = self.repo.list_dir(ours), self.repo.list_dir(theirs)
            entries: dict[bytes, Entry] = {}
            for name in sorted(o.keys() | t.keys() | b.keys()):
                e = self.merge(b.get(name), o.get(name), t.get(name), path + b"/" + name)
                if e is not None:
                    entries[name] = e
            meta_changed = base is None or not base.is_dir or _meta(ours) != _meta(base)
            return directory_entry(ours if meta_changed else theirs, entries, self.w)
        self.conflicts.append(show(path or b"/"))
        return theirs if self.strategy == "theirs" else ours


def _meta(e: Entry) -> tuple[Any, ...]:
    return (e.mode, e.uid, e.gid, e.mtime_ns, e.extra or None)
