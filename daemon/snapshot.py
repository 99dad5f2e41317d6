"""Turning a mount's staged state into commits: build, commit with CAS, merge, settle.

A snapshot runs synchronously on the mount's trio thread, so every FUSE request is wholly before
or wholly after it. Per read-write volume:

1. **Build** the new root entry from the inode tree, visiting only dirty nodes (a rename of a
   big directory, or one changed file in 100,000, costs a handful of tree writes). Staged files
   are chunked from their data files; for a file rewritten in place only the committed chunks
   that overlap written ranges are re-read, re-chunked and stored, the others are reused as is.
2. **Commit** with compare-and-swap on the branch, parent = the mount's base commit.
3. If the branch moved meanwhile, **merge** at path level: a three-way merge of base, ours
   (the built tree) and theirs (the branch head). Disjoint changes merge; a path changed on
   both sides (differently) is a conflict: nothing is committed and ``Conflict`` lists the
   paths, with the staged state left intact. ``strategy`` "ours"/"theirs" resolves conflicts
   one way; ``onto_branch`` commits onto a new branch made at the base instead.
4. **Settle**: the committed entries become the nodes' base, staged data files are dropped,
   the journal is replaced by a fresh header naming the new bases, and after a merge the tree
   is reconciled with what the other side changed (kernel caches are invalidated for those).

A multi-repo mount commits all volumes or none, unless a branch moves again between the
conflict check and the commit; then the committed volumes converge on the next snapshot (the
same changes merge with themselves as no-ops).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pfsfs.diff import diff_entries
from pfsfs.display import plural
from pfsfs.errors import AlreadyExists, BranchMoved, Conflict, InvalidInput, StoreFull
from pfsfs.ids import to_hex
from pfsfs.merge import Merger
from pfsfs.model import DIR, FILE, SYMLINK, X_ALLOC, Entry, ManifestChunk
from pfsfs.objects import ObjectWriter
from pfsfs.repository import default_author
from pfsfs.treediff import directory_entry, same_entry

from .inodes import Node, Tree, add_extent
from .precommit import usable

log = logging.getLogger(__name__)

_COPY = 4 << 20  # bytes copied at a time when materialising a region of a rewritten file


@dataclass
class VolumeResult:
    repo: str
    branch: str | None
    commit: bytes | None = None  # the new commit, None when nothing changed
    parent: bytes | None = None
    merged: bool = False
    invalidate: list[tuple[str, int, bytes]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "branch": self.branch,
            "commit": to_hex(self.commit) if self.commit else None,
            "parent": to_hex(self.parent) if self.parent else None,
            "merged": self.merged,
        }


# -- building ----------------------------------------------------------------------------------
class Builder:
    """Builds entries for dirty nodes; ``memo`` maps inode → the entry it commits as."""

    def __init__(self, tree: Tree, w: ObjectWriter) -> None:
        self.tree = tree
        self.w = w
        self.memo: dict[int, Entry] = {}
        self.chunker = tree.repo.chunker()
        self._zero_chunks: dict[int, ManifestChunk] = {}
        self._holes = 0  # hole bytes of the file being built

    def entry(self, node: Node) -> Entry:
        if not node.dirty and node.base is not None:
            return node.base
        done = self.memo.get(node.ino)
        if done is not None:
            return done
        kind, extra = self.tree.entry_meta(node)
        if node.kind == "d":
            meta = Entry(DIR, node.mode, node.uid, node.gid, node.mtime_ns, extra=extra)
            if node.children is None:
                base = node.base
                assert base is not None
                e = meta.with_(ref=base.ref, size=base.size, nfiles=base.nfiles)
            else:
                nodes = self.tree.nodes
                entries = {name: self.entry(nodes[c]) for name, c in node.children.items()}
                e = directory_entry(meta, entries, self.w)
        elif node.kind == "f":
            self._holes = 0
            ref, size = self._content(node)
            alloc = self._allocated(node, ref, size)
            if alloc is not None:
                extra = {**(extra or {}), X_ALLOC: alloc}
            e = Entry(FILE, node.mode, node.uid, node.gid, node.mtime_ns, size, ref, b"", 1, extra)
        elif node.kind == "l":
            e = Entry(
                SYMLINK,
                node.mode,
                node.uid,
                node.gid,
                node.mtime_ns,
                len(node.target),
                target=node.target,
                extra=extra,
            )
        else:
            e = Entry(kind, node.mode, node.uid, node.gid, node.mtime_ns, extra=extra)
        self.memo[node.ino] = e
        return e

    # -- file content --------------------------------------------------------------------------
    def _allocated(self, node: Node, ref: Any, size: int) -> int | None:
        """Bytes of the file that are not holes (st_blocks after remount), or None when that is
        all of it. Holes are the zero chunks the builder made for them, plus those kept from
        the committed content."""
        base = node.base
        if base is not None and ref == base.ref and not self._holes:
            return base.alloc
        holes = self._holes
        if node.staged and node.base_len and base is not None and base.ref is not None:
            base_alloc = base.alloc
            if base_alloc is not None:  # the kept part of a sparse file: scale its holes
                kept = min(node.base_len, size)
                holes += (base.size - base_alloc) * kept // max(1, base.size)
        alloc = max(0, size - holes)
        return alloc if alloc < size else None

    def _content(self, node: Node) -> tuple[Any, int]:
        base = node.base
        if not node.staged:
            assert base is not None
            return base.ref, base.size
        staging = self.tree.staging
        assert staging is not None
        if not node.base_len:
            done = usable(self.tree, node)  # chunked in the background since it was closed
            if done is not None:
                return done, node.size
            chunks = self._chunk_region(node, 0, node.size)
            return self.w.put_manifest(chunks), node.size
        assert base is not None and base.ref is not None
        m = self.tree.cache.manifest(base.ref)
        limit = min(node.base_len, node.size)
        out: list[ManifestChunk] = []
        span: int | None = None  # start of the current region to re-chunk
        reused_end = 0
        changed = False
        ext = node.extents
        j = 0
        for i, c in enumerate(m.chunks):
            start = m.starts[i]
            end = start + c.size
            if start >= limit:
                break
            while j < len(ext) and ext[j][1] <= start:
                j += 1
            if end <= limit and (j >= len(ext) or ext[j][0] >= end):
                if span is not None:
                    out.extend(self._dirty_region(node, span, start))
                    span, changed = None, True
                out.append(c)
                reused_end = end
            elif span is None:
                span = start
        tail = span if span is not None else reused_end
        if tail < node.size:
            out.extend(self._dirty_region(node, tail, node.size))
            changed = True
        if not changed and node.size == base.size:
            return base.ref, base.size
        return self.w.put_manifest(out), node.size

    def _dirty_region(self, node: Node, a: int, b: int) -> list[ManifestChunk]:
        """Make ``[a, b)`` whole in the data file (copying unwritten committed bytes in), then
        chunk it."""
        tree = self.tree
        staging = tree.staging
        assert staging is not None and node.base is not None
        fd = staging.fd(node.ino)
        pos = a
        ext = node.extents
        gaps: list[tuple[int, int]] = []
        for s, e in ext:
            if e <= pos:
                continue
            if s >= b:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, e)
        if pos < b:
            gaps.append((pos, b))
        for s, e in gaps:
            e2 = min(e, node.base_len)
            while s < e2:
                n = min(_COPY, e2 - s)
                data = tree.cache.read(node.base.ref, s, s + n)
                os.pwrite(fd, data, s)
                s += n
        add_extent(ext, a, b)
        return self._chunk_region(node, a, b)

    def _chunk_region(self, node: Node, a: int, b: int) -> list[ManifestChunk]:
        """Chunks of ``[a, b)`` of the data file. Big holes of a sparse file are not read: they
        become maximal zero chunks (what content-defined chunking makes of long zero runs)."""
        if b <= a:
            return []
        staging = self.tree.staging
        assert staging is not None
        fd = staging.fd(node.ino)
        if os.fstat(fd).st_size < b:
            os.ftruncate(fd, b)
        out: list[ManifestChunk] = []
        for kind, s, e in _segments(fd, a, b, 2 * self.chunker.params.max_size):
            if kind == "hole":
                out.extend(self._zeros(e - s))
                self._holes += e - s
            else:
                out.extend(self._chunk_data(fd, s, e))
        return out

    def _zeros(self, n: int) -> list[ManifestChunk]:
        size = self.chunker.params.max_size
        out = []
        while n > 0:
            k = min(size, n)
            c = self._zero_chunks.get(k)
            if c is None:
                c = self._zero_chunks[k] = ManifestChunk(self.w.put_chunk(bytes(k)), k)
            out.append(c)
            n -= k
        return out

    def _chunk_data(self, fd: int, a: int, b: int) -> list[ManifestChunk]:
        page = mmap.ALLOCATIONGRANULARITY
        start = a - a % page
        mm = mmap.mmap(fd, b - start, prot=mmap.PROT_READ, offset=start)
        out: list[ManifestChunk] = []
        region = memoryview(mm)[a - start :]
        chunk: memoryview | None = None
        for chunk in self.chunker.cut_buffer(region):
            out.append(ManifestChunk(self.w.put_chunk(chunk), len(chunk)))
        del chunk, region
        try:
            mm.close()
        except BufferError:  # a view is still referenced somewhere; the GC unmaps it
            pass
        return out


def _segments(fd: int, a: int, b: int, min_hole: int) -> list[tuple[str, int, int]]:
    """``[a, b)`` split into ("data"|"hole", start, end); holes shorter than ``min_hole`` stay
    inside data segments."""
    out: list[tuple[str, int, int]] = []
    pos = a
    while pos < b:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), b)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # SEEK_DATA unsupported: all data
                return [("data", a, b)]
            data = b
        if data - pos >= min_hole:
            out.append(("hole", pos, data))
        elif data > pos:
            _add_data(out, pos, data)
        if data >= b:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), b)
        _add_data(out, data, hole)
        pos = hole
    return out


def _add_data(out: list[tuple[str, int, int]], s: int, e: int) -> None:
    if out and out[-1][0] == "data" and out[-1][2] == s:
        out[-1] = ("data", out[-1][1], e)
    else:
        out.append(("data", s, e))


# -- the snapshot itself ------------------------------------------------------------------------
def snapshot(
    tree: Tree,
    message: str | None,
    *,
    strategy: str | None = None,
    onto_branch: str | None = None,
    author: str | None = None,
    kind: str = "snapshot",
) -> list[VolumeResult]:
    """Commit every dirty read-write volume; raises ``Conflict`` (nothing committed) when a
    path changed on both sides and no strategy was given. Without a ``message`` each commit
    says what made it and what changed: "unmount: 2 files changed (a.txt, b/c.txt)"."""
    if strategy not in (None, "ours", "theirs"):
        raise InvalidInput(f"unknown merge strategy {strategy!r}")
    check_fully_staged(tree)
    repo = tree.repo
    author = author or default_author()
    results: list[VolumeResult] = []
    plans: list[_Plan] = []
    with repo.writer() as w:
        for vol in tree.volumes:
            res = VolumeResult(vol.repo, vol.branch, parent=vol.base)
            results.append(res)
            root = tree.nodes[vol.root]
            if vol.read_only or not root.dirty:
                continue
            if onto_branch and onto_branch in repo.list_branches(vol.repo):
                raise AlreadyExists(f"branch {vol.repo}@{onto_branch} already exists")
            tree.complete_links(vol.index)
            builder = Builder(tree, w)
            ours = builder.entry(root)
            head = vol.base if onto_branch else repo.branch_head(vol.repo, vol.branch or "")
            final, merged = ours, False
            if head != vol.base:
                w.finish()  # the merge reads back the trees just built
                merger = Merger(tree.repo, w, strategy)
                result = merger.merge(repo.root_of(vol.base), ours, repo.root_of(head), b"")
                if merger.conflicts and strategy is None:
                    raise _conflict(tree, vol.describe(), merger.conflicts)
                assert result is not None
                final, merged = result, True
            plans.append(_Plan(vol, res, builder, ours, final, head, merged))
        w.finish()
        for p in plans:
            vol, res = p.vol, p.res
            res.parent, res.merged = p.head, p.merged
            if not onto_branch and same_entry(p.final, repo.root_of(p.head)):
                vol.base = p.head  # nothing new (or exactly what the branch already has)
                continue
            branch = vol.branch
            if onto_branch:
                repo.create_branch(vol.repo, onto_branch, vol.base)
                branch = onto_branch
            text = message or f"{kind}: {describe_changes(repo, repo.root_of(p.head), p.final)}"
            res.commit = _commit_retrying(tree, p, branch, text, author, w, strategy)
            res.branch = branch
            vol.base, vol.branch = res.commit, branch
    for p in plans:
        settle(tree, p.builder.memo)
        if p.merged and not same_entry(p.ours, p.final):
            p.res.invalidate = reconcile(tree, tree.nodes[p.vol.root], p.ours, p.final)
    rotate(tree)
    return results


def describe_changes(repo: Any, old: Entry, new: Entry, shown: int = 3) -> str:
    """What a commit changes, for its default message: "3 files changed (a.txt, b/c, …)"."""
    items = list(diff_entries(repo, old, new))
    if not items:
        return "directories changed"
    noun = "file" if all(not i.path.endswith(b"/") for i in items) else "path"
    names = [i.shown.lstrip("/") for i in items[:shown]]
    more = ", …" if len(items) > shown else ""
    return f"{plural(len(items), noun)} changed ({', '.join(names)}{more})"


def check_fully_staged(tree: Tree) -> None:
    """Refuse to commit while bytes the kernel wrote are missing from staging (a full disk):
    the commit would hold a shorter or zero-filled file than the one the writer was shown."""
    paths = tree.unstaged_paths()
    if paths:
        shown = ", ".join(paths[:10]) + (f" (+{len(paths) - 10} more)" if len(paths) > 10 else "")
        raise StoreFull(
            f"data written to {shown} could not be staged (disk full or I/O error); nothing "
            "was committed: free space, then write the file(s) again or delete them"
        )


MOVE_RETRIES = 8  # tries after the first when the branch moves between merge and commit


def _commit_retrying(
    tree: Tree,
    p: _Plan,
    branch: str | None,
    message: str,
    author: str,
    w: ObjectWriter,
    strategy: str | None,
) -> bytes:
    """Commit ``p.final`` onto ``p.head``; when another writer moved the branch in between,
    merge with its new head again and retry, with a bounded, jittered backoff (two busy
    writers on one branch otherwise failed about half of their snapshots)."""
    repo = tree.repo
    for attempt in range(MOVE_RETRIES + 1):
        try:
            return _commit(tree, p.vol.repo, branch, p.final, p.head, message, author, w)
        except BranchMoved:
            if attempt == MOVE_RETRIES:
                raise Conflict(
                    f"{p.vol.describe()} kept moving during the snapshot ({attempt + 1} tries); "
                    "nothing is lost, run it again"
                ) from None
        time.sleep(random.uniform(0.5, 1.5) * min(0.4, 0.01 * 2**attempt))
        head = repo.branch_head(p.vol.repo, branch or "")
        merger = Merger(tree.repo, w, strategy)
        result = merger.merge(repo.root_of(p.vol.base), p.ours, repo.root_of(head), b"")
        if merger.conflicts and strategy is None:
            raise _conflict(tree, p.vol.describe(), merger.conflicts)
        assert result is not None
        w.finish()
        p.final, p.head, p.merged = result, head, True
        p.res.parent, p.res.merged = head, True
    raise AssertionError("unreachable")


@dataclass
class _Plan:
    vol: Any
    res: VolumeResult
    builder: Builder
    ours: Entry
    final: Entry
    head: bytes | None
    merged: bool


def _conflict(tree: Tree, what: str, paths: list[str]) -> Conflict:
    shown = ", ".join(paths[:20])
    more = len(paths) - 20
    return Conflict(
        f"{what} moved since the mount's base and these paths changed on both sides: "
        f"{shown}{f' (+{more} more)' if more > 0 else ''}; nothing was committed and the "
        "changes are kept. Choose with --ours, --theirs or --onto-branch NEW",
        paths,
    )


def _commit(
    tree: Tree,
    repo_name: str,
    branch: str | None,
    root: Entry,
    parent: bytes | None,
    message: str,
    author: str,
    w: ObjectWriter,
) -> bytes:
    """One volume's commit through the repository's one commit primitive (the snapshot has
    already decided that something changed)."""
    assert branch is not None
    commit_id = tree.repo.commit_root(
        repo_name,
        branch,
        root,
        message,
        parents=(parent,) if parent else (),
        expected=parent,
        author=author,
        allow_empty=True,
        writer=w,
    )
    assert commit_id is not None
    return commit_id


def settle(tree: Tree, memo: dict[int, Entry]) -> None:
    """The built entries are committed: they become the nodes' base. Their staged data files
    are *not* dropped here but by ``rotate``, once the new journal is durable: until then the
    old journal is what a crash replays, and it still points into those files (dropping them
    first made a kill -9 in between replay fsync'd data as zeros)."""
    for ino, entry in memo.items():
        node = tree.nodes.get(ino)
        if node is None:
            continue
        node.base = entry
        node.dirty = False
        if node.staged:
            node.staged = False
            node.extents = []
            node.base_len = 0


def rotate(tree: Tree) -> None:
    """Start a fresh journal holding only the header, then drop the data files of nodes no
    longer staged (in this order: see ``settle``)."""
    if tree.staging is None:
        return
    tree.staging.rewrite_journal([tree.header()])
    tree.bound = {1, *(v.root for v in tree.volumes)}
    tree.staging.keep_only({n.ino for n in tree.nodes.values() if n.staged})


def reconcile(tree: Tree, node: Node, ours: Entry, new: Entry) -> list[tuple[str, int, bytes]]:
    """Make the loaded nodes show ``new`` where it differs from ``ours`` (what the tree held).
    Returns kernel invalidations to send: ("entry", parent, name) / ("inode", ino, b"")."""
    inval: list[tuple[str, int, bytes]] = []
    _reconcile(tree, node, ours, new, inval)
    return inval


def _reconcile(
    tree: Tree, node: Node, ours: Entry, new: Entry, inval: list[tuple[str, int, bytes]]
) -> None:
    """``node`` is a directory (or a symlink/FIFO) that stays; regular files whose content or
    metadata changed get a new node (with writeback caching the kernel trusts its own size and
    mtime of a cached inode, so a fresh inode number is the only way to show new ones)."""
    node.base = new
    if (node.mode, node.uid, node.gid, node.mtime_ns) != (new.mode, new.uid, new.gid, new.mtime_ns):
        node.mode, node.uid, node.gid, node.mtime_ns = new.mode, new.uid, new.gid, new.mtime_ns
        inval.append(("inode", node.ino, b""))
    if node.kind != "d":
        node.target, node.size = new.target, new.size
        inval.append(("inode", node.ino, b""))
        return
    if node.children is None or ours.content_id() == new.content_id():
        return
    old_entries = tree.repo.list_dir(ours)
    new_entries = tree.repo.list_dir(new)
    for name in sorted(old_entries.keys() | new_entries.keys()):
        o, n = old_entries.get(name), new_entries.get(name)
        ino = node.children.get(name)
        child = tree.nodes.get(ino) if ino is not None else None
        if child is not None and o is not None and n is not None:
            if same_entry(o, n):
                continue
            if o.type == n.type and n.type != FILE:
                _reconcile(tree, child, o, n, inval)
                continue
        if child is not None:
            del node.children[name]
            if child.kind == "d":
                node.nsubdirs -= 1
                child.nlink = 0
            else:
                child.nlink -= 1
            tree._remove_loc(child, node.ino, name)
            if child.link_id is not None:
                key = (child.vol, child.link_id)
                if tree.link_groups.get(key) == child.ino:
                    del tree.link_groups[key]
            tree.maybe_drop(child)
        if n is not None:
            fresh = tree._node_from_entry(n, node.vol, node.ino, name)
            node.children[name] = fresh.ino
            if n.is_dir:
                node.nsubdirs += 1
        inval.append(("entry", node.ino, name))
