"""Whole-store maintenance: reachability, garbage collection, fsck, and space accounting.

Roots are every branch head of every repo plus the extra roots recorded in the index's
``gc_roots`` database (the mount daemon's staged data and open mounts' base commits, pipeline
jobs in flight). gc runs under the home's exclusive gc lock, so no write session of this home
is between "wrote objects" and "moved the ref"; objects younger than ``grace`` seconds are
never deleted, which protects writers on *other* machines sharing the store. A pack is deleted
only when nothing reachable lives in it.

gc refuses to delete anything if any reachable object cannot be read: an unreadable tree
could hide references, and deleting on a guess loses data.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack

from . import codec
from .errors import Corruption, NotFound, PfsError
from .ids import hash_bytes, to_hex
from .index import Index, Salvaged, salvage
from .model import FILE, Entry, Locator
from .refs import BRANCHES, CONFIG, JOB_RECORDS, REPOS, decode_head, repo_ref, split_branch_ref

if TYPE_CHECKING:
    from .repository import Repository
    from .store.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Reachable:
    """What a walk reached. ``locators`` holds *every* locator met, not one per id: the same
    content can live in two packs (two machines stored it independently), and each copy that a
    tree points at keeps its pack alive."""

    commits: set[bytes] = field(default_factory=set)
    locators: set[Locator] = field(default_factory=set)
    walked: set[bytes] = field(default_factory=set)  # trees and manifests already expanded
    problems: list[str] = field(default_factory=list)

    def stored_bytes(self) -> int:
        distinct = {loc.id: loc.length for loc in self.locators}  # one copy per content
        return sum(distinct.values())


def branch_heads(repo: Repository) -> list[tuple[str, bytes]]:
    """Every branch head; a malformed ref is ``Corruption`` (gc must not guess past it)."""
    heads = []
    for name, value in repo.refs.all_branches():
        commit_id = decode_head(name, value)
        if commit_id is not None:
            heads.append((name, commit_id))
    return heads


def reachable(
    repo: Repository,
    heads: Iterable[bytes],
    extra: Iterable[Locator] = (),
    *,
    history: bool = True,
    strict: bool = True,
) -> Reachable:
    """Everything reachable from ``heads`` (and their ancestors when ``history``).

    ``strict`` raises on the first unreadable object; otherwise problems are collected.
    """
    r = Reachable()
    pending = list(heads)
    while pending:
        cid = pending.pop()
        if cid in r.commits:
            continue
        r.commits.add(cid)
        try:
            commit = repo.read_commit(cid)
        except PfsError as exc:
            if strict:
                raise
            r.problems.append(f"commit {to_hex(cid)}: {exc}")
            continue
        _walk_entry(repo, commit.root, r, strict, f"commit {to_hex(cid)[:12]}")
        if history:
            pending.extend(commit.parents)
    r.locators.update(extra)
    return r


def _walk_entry(repo: Repository, entry: Entry, r: Reachable, strict: bool, where: str) -> None:
    stack = [(entry, where)]
    while stack:
        e, path = stack.pop()
        if e.ref is None:
            continue
        r.locators.add(e.ref)
        # Same id, same bytes: an object's children are the same whichever copy we read.
        if e.ref.id in r.walked:
            continue
        r.walked.add(e.ref.id)
        try:
            if e.is_dir:
                for name, child in repo.reader.read_tree(e.ref).items():
                    stack.append((child, f"{path}/{name.decode(errors='replace')}"))
            elif e.type == FILE:
                r.locators.update(chunk.loc for chunk in repo.reader.read_manifest(e.ref))
        except PfsError as exc:
            if strict:
                raise
            r.problems.append(f"{path}: {exc}")


def all_roots(repo: Repository) -> tuple[list[bytes], list[Locator]]:
    """Branch heads, this home's gc roots (mounts, running jobs), and the objects datum
    records in the store name (Kubernetes pods wrote them from their own homes)."""
    from .k8s.protocol import record_roots

    commits = [cid for _, cid in branch_heads(repo)]
    extra_commits, extra_locators = repo.index.gc_roots()
    commits.extend(bytes.fromhex(c) for c in extra_commits)
    return commits, [*extra_locators, *record_roots(repo.refs)]


@dataclass
class GcReport:
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0
    dead_in_live_packs: int = 0  # bytes inside packs that still hold live objects
    dry_run: bool = False
    temp_files: int = 0  # what killed writers left (removed unless dry_run)
    temp_bytes: int = 0


#: ``progress(done, total)``, in bytes: called as a long check or deletion goes on
ProgressFn = Callable[[int, int], None]


def _no_progress(_done: int, _total: int) -> None:
    pass


def gc(
    repo: Repository,
    *,
    dry_run: bool = False,
    grace: float = 0.0,
    progress: ProgressFn = _no_progress,
) -> GcReport:
    """Delete blobs unreachable from every root (see the module docstring for the rules);
    ``progress`` follows the deletions."""
    report = GcReport(dry_run=dry_run)
    with repo.gc_lock():
        commits, extra = all_roots(repo)
        try:
            live = reachable(repo, commits, extra)
        except PfsError as exc:
            raise Corruption(f"gc stopped, nothing deleted: {exc}") from None
        live_packs: dict[bytes, int] = {}
        live_standalone: set[bytes] = set()
        for loc in live.locators:
            if loc.pack:
                live_packs[loc.pack] = live_packs.get(loc.pack, 0) + loc.length
            else:
                live_standalone.add(loc.id)
        cutoff = time.time() - grace
        doomed: list[tuple[str, int]] = []
        for info in repo.store.list():
            kind, _, name = info.key.partition("/")
            try:
                raw = bytes.fromhex(name)
            except ValueError:
                continue
            if kind == "chunk":
                dead = raw not in live_standalone
            elif kind == "commit":
                dead = raw not in live.commits
            elif kind == "pack":
                dead = raw not in live_packs
                if not dead:
                    report.dead_in_live_packs += max(0, info.size - live_packs[raw])
            else:
                continue
            if not dead:
                continue
            if info.mtime > cutoff:
                report.kept_young += 1
                continue
            doomed.append((info.key, info.size))
        report.deleted_blobs = len(doomed)
        report.deleted_bytes = sum(size for _, size in doomed)
        if not dry_run:
            _remove_temp(repo, cutoff, report)
        if dry_run or not doomed:
            return report
        gone = {key for key, _ in doomed}
        stale = [
            loc.id
            for loc in repo.index.iter_objects()
            if ((f"pack/{loc.pack.hex()}" if loc.pack else f"chunk/{loc.id.hex()}") in gone)
        ]
        # Forget first: a writer must never dedup against an object that is being deleted.
        repo.index.drop_objects(stale)
        done = 0
        for key, size in doomed:
            done += size
            progress(done, report.deleted_bytes)
            if repo.store.shared:
                # A writer elsewhere may have touched it since we listed: keep it then.
                now = repo.store.head(key)
                if now is None or now.mtime > cutoff:
                    continue
            if key.startswith("commit/"):
                cid = bytes.fromhex(key.split("/", 1)[1])
                data = repo.index.get_commit(cid)
                if data is not None:
                    from .model import Commit

                    repo.index.drop_commit(Commit.decode(data).repo, cid)
            repo.delete_blob(key)  # the read cache forgets it too
    log.info("gc deleted %d blobs (%d bytes)", report.deleted_blobs, report.deleted_bytes)
    return report


def _remove_temp(repo: Repository, cutoff: float, report: GcReport) -> None:
    """Temp files older than the grace period: what a writer killed mid-``put`` left. Under
    the gc lock no writer of this home is running; the store keeps those of live writers of
    other homes (see ``LocalObjectStore.remove_temp``)."""
    # S3 writes are atomic PUTs (none to remove); a killed multipart upload is expired by a
    # bucket lifecycle rule (AbortIncompleteMultipartUpload), not here.
    report.temp_files, report.temp_bytes = repo.store.remove_temp(cutoff)


def fsck(
    repo: Repository, *, deep: bool = False, progress: ProgressFn = _no_progress
) -> list[str]:
    """Problems found (empty when healthy), each one line.

    Always: every ref decodes and every branch names a readable commit of its repo; every
    object reachable from a branch (commits, trees, manifests, chunks, the packs holding them)
    exists in the store, whole; the index's cached commits re-hash to their ids. ``deep``
    also reads the store itself (below any read cache) and re-hashes every reachable object:
    each commit blob, each tree, manifest and chunk (one read per pack for all its objects),
    and checks that every index ``objects`` entry names bytes that hash to its id, since
    writers reuse those entries without reading them. ``progress`` follows the deep reads."""
    # The index first: reading a commit replaces a damaged cached copy (with a warning).
    problems = _check_index_commits(repo)
    heads = _check_refs(repo, problems)
    r = reachable(repo, heads, strict=False)
    problems.extend(r.problems)
    truth = repo.store  # the store itself, never the local read cache
    sizes = {info.key: info.size for info in truth.list()}
    for cid in sorted(r.commits):
        key = f"commit/{cid.hex()}"
        what = f"commit {to_hex(cid)[:12]}" + "".join(
            f" (the head of ref {name})" for name in heads.get(cid, ())
        )
        if key not in sizes:
            problems.append(f"{what} is missing from the store")
        elif deep:
            try:
                data = truth.get(key)
            except PfsError as exc:
                problems.append(f"{what} cannot be read: {exc}")
                continue
            if hash_bytes(data) != cid:
                problems.append(f"{what} is corrupt in {key} (hash mismatch)")
    bad = _check_objects(truth, r.locators, sizes, deep, progress)
    problems.extend(bad.values())
    if deep:
        problems.extend(_check_index_objects(repo, truth, r.locators, sizes))
    return problems


def _check_refs(repo: Repository, problems: list[str]) -> dict[bytes, list[str]]:
    """Check every ref (settings, repo records, branches); return the readable heads and the
    branch refs naming each."""
    repos: set[str] = set()
    heads: dict[bytes, list[str]] = {}
    try:
        refs = list(repo.refs.all_refs())
    except PfsError as exc:
        problems.append(f"refs: {exc}")
        return heads
    for name, value in refs:
        if name == CONFIG or name.startswith(REPOS):
            try:
                record = codec.unpack_value(value)
            except (ValueError, msgpack.UnpackException) as exc:
                record = exc
            if not isinstance(record, dict):
                problems.append(f"ref {name} does not decode: {record}")
            elif name.startswith(REPOS):
                repos.add(name[len(REPOS) :])
        elif name.startswith(JOB_RECORDS):
            try:
                record = codec.unpack_value(value)
            except (ValueError, msgpack.UnpackException) as exc:
                record = exc
            if not isinstance(record, dict):
                problems.append(f"ref {name} does not decode: {record}")
        elif not name.startswith(BRANCHES):
            problems.append(f"ref {name} is not a ref pfsfs writes")
    for name, value in refs:
        if not name.startswith(BRANCHES):
            continue
        repo_name, _ = split_branch_ref(name)
        if repo_name not in repos:
            problems.append(f"ref {name} belongs to no repo ({repo_ref(repo_name)} is missing)")
        try:
            cid = decode_head(name, value)
            if cid is None:
                continue
            commit = repo.read_commit(cid)
        except PfsError as exc:
            problems.append(f"ref {name}: {exc}")
            continue
        heads.setdefault(cid, []).append(name)
        if commit.repo != repo_name:
            problems.append(f"ref {name} points at a commit of repo {commit.repo}")
    return heads


def _check_index_commits(repo: Repository) -> list[str]:
    """The index's cached commits must re-hash to their ids. Readers never serve a bad copy,
    but one means the index file is being damaged: report it, and drop the copy (a cache
    entry; the store's copy is read and cached again when needed)."""
    bad = [cid for cid, data in repo.index.iter_commits() if hash_bytes(data) != cid]
    repo.index.forget_commits(bad)
    return [
        f"index: the cached copy of commit {to_hex(cid)[:12]} was damaged (dropped it; the "
        "store's copy is used)"
        for cid in bad
    ]


def _blob_key(loc: Locator) -> str:
    return f"pack/{loc.pack.hex()}" if loc.pack else f"chunk/{loc.id.hex()}"


def _check_objects(
    truth: ObjectStore,
    locators: Iterable[Locator],
    sizes: dict[str, int],
    deep: bool,
    progress: ProgressFn = _no_progress,
) -> dict[Locator, str]:
    """A problem line per locator whose object is missing, cut short or (``deep``) does not
    hash to its id. Each blob is read once for all the objects it holds."""
    bad: dict[Locator, str] = {}
    by_key: dict[str, list[Locator]] = {}
    for loc in locators:
        key = _blob_key(loc)
        size = sizes.get(key)
        if size is None:
            bad[loc] = f"object {loc.hex[:16]} is missing ({key})"
        elif (loc.offset + loc.length if loc.pack else loc.length) > size:
            bad[loc] = f"object {loc.hex[:16]} is truncated in {key}"
        elif deep:
            by_key.setdefault(key, []).append(loc)
    total = sum(sizes[key] for key in by_key)
    done = 0
    for key, locs in sorted(by_key.items()):
        done += sizes[key]
        progress(done, total)
        try:
            blob = truth.get(key)
        except PfsError as exc:
            for loc in locs:
                bad[loc] = f"object {loc.hex[:16]} in {key} cannot be read: {exc}"
            continue
        view = memoryview(blob)
        for loc in locs:
            part = view[loc.offset : loc.offset + loc.length] if loc.pack else view
            if len(part) != loc.length or hash_bytes(part) != loc.id:
                bad[loc] = f"object {loc.hex[:16]} in {key} is corrupt (hash mismatch)"
    return bad


def _check_index_objects(
    repo: Repository, truth: ObjectStore, reachable_locs: set[Locator], sizes: dict[str, int]
) -> list[str]:
    """Index ``objects`` entries not already checked as reachable must name their object: a
    writer deduplicating against a bad entry would commit a reference to wrong bytes. Bad
    entries are reported and dropped (the object is stored again when next written)."""
    entries = [loc for loc in repo.index.iter_objects() if loc not in reachable_locs]
    sizes = dict(sizes)
    for key in {_blob_key(loc) for loc in entries} - sizes.keys():
        # Not in the listing fsck began with: a writer (a mount's snapshot, a put) may have
        # stored and indexed it since. Only what is missing now is a problem.
        info = truth.head(key)
        if info is not None:
            sizes[key] = info.size
    if truth.shared:  # another machine's gc may have removed some: writers re-check those
        entries = [loc for loc in entries if _blob_key(loc) in sizes]
    bad = _check_objects(truth, entries, sizes, deep=True)
    repo.index.drop_objects([loc.id for loc in bad])
    return [f"index: the entry for {line} (dropped it)" for line in bad.values()]


def du(repo: Repository, commit_id: bytes | None) -> tuple[int, int]:
    """(logical bytes, stored bytes of the distinct objects) of one commit's tree."""
    if commit_id is None:
        return 0, 0
    r = reachable(repo, [commit_id], history=False)
    return repo.read_commit(commit_id).size, r.stored_bytes()


def stats(repo: Repository) -> dict[str, int]:
    """Logical bytes of every reachable commit (each version counted whole, as copies would
    be) vs bytes the store actually holds: their ratio is what dedup saves."""
    heads = {cid for _, cid in branch_heads(repo)}
    r = reachable(repo, heads)
    logical = sum(repo.read_commit(c).size for c in r.commits)
    stored = sum(info.size for info in repo.store.list())
    return {
        # Every branch, one with no commits yet too (branch_heads lists only commits).
        "branches": sum(1 for _ in repo.refs.all_branches()),
        "commits": len(r.commits),
        "logical_bytes": logical,
        "stored_bytes": stored,
    }


@dataclass
class RebuildReport:
    """What ``rebuild_index`` recovered, recomputed and could not."""

    salvaged: list[Salvaged]
    commits: int = 0
    objects: int = 0
    problems: list[str] = field(default_factory=list)  # store damage met while re-indexing
    kept: Path | None = None  # the old index file, kept for inspection

    @property
    def lost(self) -> list[Salvaged]:
        return [s for s in self.salvaged if not s.complete]


def rebuild_index(home: Path) -> RebuildReport:
    """Replace the home's index by one rebuilt from the store plus what is still readable of
    the old one (see ``pfsfs.index``: which databases are caches and which are this machine's
    own records). Callers make sure nothing else has the index open (no daemon, no scheduler).

    The new index is built next to the old one; its file then replaces the old file in one
    rename, so a crash leaves either index whole. The old file is kept as
    ``index.damaged-<time>.mdb`` in the home."""
    from .home import read_config
    from .repository import Repository

    config = read_config(home)
    if config is None:
        raise NotFound(f"no pfsfs home at {home}")
    current = home / "index"
    fresh = home / "index.rebuild"
    shutil.rmtree(fresh, ignore_errors=True)  # what a crashed rebuild left
    repo = Repository.on_store(home, config, Index(fresh))
    try:
        with repo.gc_lock():  # no write session of this home is running meanwhile
            old_data = current / "data.mdb"
            salvaged = salvage(current, fresh) if old_data.exists() else []
            report = RebuildReport(salvaged)
            _reindex(repo, report)
    finally:
        repo.close()
    if old_data.exists():
        report.kept = home / time.strftime("index.damaged-%Y%m%d-%H%M%S.mdb")
        os.link(old_data, report.kept)
    current.mkdir(exist_ok=True)
    os.replace(fresh / "data.mdb", old_data)
    _fsync_dir(current)
    shutil.rmtree(fresh, ignore_errors=True)
    return report


def _reindex(repo: Repository, report: RebuildReport) -> None:
    """Fill the caches of ``repo.index`` (empty but for salvaged records) from the store:
    every commit reachable from a branch or a salvaged gc root, and every object they reach
    that the store holds whole."""
    heads: list[bytes] = []
    for name, value in repo.refs.all_branches():
        try:
            commit_id = decode_head(name, value)
        except Corruption as exc:
            report.problems.append(str(exc))
            continue
        if commit_id is not None:
            heads.append(commit_id)
    extra_commits, extra_locators = repo.index.gc_roots()
    heads.extend(bytes.fromhex(c) for c in extra_commits)
    r = reachable(repo, heads, extra_locators, strict=False)  # commits are indexed as read
    report.problems.extend(r.problems)
    sizes = {info.key: info.size for info in repo.store.list()}
    present = [loc for loc in r.locators if _fits(loc, sizes)]
    repo.index.add_objects(present)
    report.objects = len(present)
    report.commits = sum(1 for _ in repo.index.iter_commits())


def _fits(loc: Locator, sizes: dict[str, int]) -> bool:
    size = sizes.get(_blob_key(loc))
    return size is not None and (loc.offset + loc.length if loc.pack else loc.length) <= size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
