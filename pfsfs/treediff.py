"""What "the same" means for entries, and how a directory entry is rolled up from its children.

One notion each, used by diff, merges, snapshots, the no-empty-commit rule and sync:

- ``same_content``: the same type, content, target and device number (what ``diff`` calls
  *modified* when it differs);
- ``same_meta``: the same mode, owner, mtime and xattrs (``diff``'s *metadata*);
- ``same_entry``: equal in everything stored (content, metadata, sizes and the optional fields,
  hard-link groups included), so that a commit of it would change nothing. Locators are not
  compared: one tree can be stored twice (in two packs) under the same id.

``directory_entry`` writes a directory's tree and gives its entry, with the sizes and file
counts rolled up from the children.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import DIR, FILE, Entry

if TYPE_CHECKING:
    from .objects import ObjectWriter


def same_content(a: Entry, b: Entry) -> bool:
    return (
        a.type == b.type
        and a.content_id() == b.content_id()
        and a.target == b.target
        and (a.kind, a.rdev) == (b.kind, b.rdev)
    )


def same_meta(a: Entry, b: Entry) -> bool:
    """Mode, owner, mtime and xattrs (a hard-link group's id is not metadata a user sees)."""
    return (a.mode, a.uid, a.gid, a.mtime_ns) == (b.mode, b.uid, b.gid, b.mtime_ns) and (
        a.xattrs == b.xattrs
    )


def same_entry(a: Entry | None, b: Entry | None) -> bool:
    """Equal in everything stored (None: no entry; equal only to None)."""
    if a is None or b is None:
        return a is b
    return (
        same_content(a, b)
        and same_meta(a, b)
        and (a.size, a.nfiles) == (b.size, b.nfiles)
        and (a.extra or None) == (b.extra or None)
    )


def directory_entry(meta: Entry, entries: dict[bytes, Entry], writer: ObjectWriter) -> Entry:
    """``meta``'s directory holding ``entries``: the tree written, sizes and counts rolled up
    (size: the logical bytes of files below; nfiles: the regular files below)."""
    size = sum(e.size for e in entries.values() if e.type in (FILE, DIR))
    nfiles = sum(e.nfiles if e.is_dir else (1 if e.type == FILE else 0) for e in entries.values())
    return meta.with_(ref=writer.put_tree(entries), size=size, nfiles=nfiles, target=b"")
