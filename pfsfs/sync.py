"""Copying repos between two stores (``pfsfs push``/``pull``), moving only what is missing.

``sync(src, dst, repos)`` makes every branch of the given repos on ``dst`` point where it points
on ``src``. In order, so that a crash at any point leaves ``dst`` consistent:

1. **Plan.** For each branch: the source head, the destination head, and the source history.
   If the destination head is not an ancestor of the source head the branch has *diverged*
   (the destination holds commits the source lacks) and the whole sync is refused before
   anything is written, unless ``force``.
2. **Find what to send.** Commits of the source history that are not ancestors of a
   destination head. For each, the objects that differ from its first parent (a walk that
   skips unchanged subtrees by id, so an incremental push is O(changes)); the blobs holding
   them (whole packs, standalone chunks) are checked on the destination with ``exists``.
   Nothing is trusted from a cache: another machine's gc may have deleted a blob.
3. **Copy** the missing blobs (verified against the ids they hold), then ``flush``; then the
   missing commit blobs, then ``flush``. Everything a ref will point at is now durable.
4. **Move refs** by compare-and-swap from the heads seen in step 1: a destination branch that
   moved meanwhile makes the sync fail for that branch (run it again), never lose a commit.

The destination's index learns the copied objects and commits, as if it had written them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import codec
from .errors import Conflict, Corruption, InvalidInput, NotFound, RefChanged
from .ids import hash_bytes, to_hex
from .model import FILE, Entry, Locator, blob_key, commit_key
from .repository import Repository
from .store.base import ObjectStore

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
WORKERS = 8


@dataclass
class BranchPlan:
    repo: str
    branch: str
    src_head: bytes | None
    dst_head: bytes | None
    dst_exists: bool
    history: list[bytes] = field(default_factory=list)  # src ancestors, newest first

    @property
    def name(self) -> str:
        return f"{self.repo}@{self.branch}"

    @property
    def up_to_date(self) -> bool:
        return self.dst_exists and self.dst_head == self.src_head


@dataclass
class SyncReport:
    branches: dict[str, str] = field(default_factory=dict)  # repo@branch -> what happened
    commits_copied: int = 0
    blobs_copied: int = 0  # object blobs (packs, chunks); commit blobs are counted apart
    bytes_copied: int = 0  # commits included
    blobs_present: int = 0  # needed by new commits, already on the destination
    dry_run: bool = False


# -- planning -------------------------------------------------------------------------------
def plan(src: Repository, dst: Repository, repos: Iterable[str] | None) -> list[BranchPlan]:
    names = list(repos) if repos else [info.name for info in src.list_repos()]
    plans = []
    for repo in names:
        src.repo_record(repo)  # NotFound for a repo the source lacks
        dst_branches: dict[str, bytes | None] = {}
        if dst.refs.repo_raw(repo) is not None:
            dst_branches = dst.list_branches(repo)
        for branch, head in sorted(src.list_branches(repo).items()):
            p = BranchPlan(repo, branch, head, dst_branches.get(branch), branch in dst_branches)
            p.history = [cid for cid, _ in src.log(head)]
            plans.append(p)
    return plans


def diverged(plans: list[BranchPlan]) -> list[BranchPlan]:
    return [p for p in plans if p.dst_head is not None and p.dst_head not in set(p.history)]


def _have(src: Repository, dst: Repository, plans: list[BranchPlan]) -> set[bytes]:
    """Source commits the destination already holds complete: ancestors of its heads."""
    heads: set[bytes] = set()
    for repo in {p.repo for p in plans}:
        if dst.refs.repo_raw(repo) is not None:
            heads.update(c for c in dst.list_branches(repo).values() if c)
    known = {cid for p in plans for cid in p.history}
    return {cid for cid, _ in src.log_many([h for h in heads if h in known])}


def _changed(src: Repository, entry: Entry, base: Entry | None, out: dict[Locator, None]) -> None:
    """Objects under ``entry`` that are not the same object at the same path in ``base``.

    Keyed by locator, not id: one object can be stored twice (two machines wrote the same
    content into their own packs), and every copy a tree points at must reach the destination.
    """
    stack: list[tuple[Entry, Entry | None]] = [(entry, base)]
    while stack:
        e, b = stack.pop()
        if e.ref is None or e.ref in out:
            continue
        if b is not None and b.ref == e.ref and b.type == e.type:
            continue
        out[e.ref] = None
        if e.is_dir:
            before = src.list_dir(b) if b is not None and b.is_dir and b.ref else {}
            for name, child in src.list_dir(e).items():
                stack.append((child, before.get(name)))
        elif e.type == FILE:
            old = {c.loc for c in src.manifest(b)} if b is not None and b.type == FILE else set()
            for chunk in src.manifest(e):
                if chunk.loc not in old:
                    out[chunk.loc] = None


# -- copying --------------------------------------------------------------------------------
def _verify(key: str, data: bytes, locs: list[Locator]) -> None:
    """Copies are verified like reads: every object we know in the blob, or a commit's id."""
    if not locs:  # a commit blob, named by its id
        if to_hex(hash_bytes(data)) != key.split("/", 1)[1]:
            raise Corruption(f"{key} is corrupt in the source store")
    for loc in locs:
        piece = data[loc.offset : loc.offset + loc.length] if loc.pack else data
        if len(piece) != loc.length or hash_bytes(piece) != loc.id:
            raise Corruption(f"object {loc.hex[:16]} in {key} is corrupt in the source store")


def _copy_blobs(
    src: ObjectStore,
    dst: ObjectStore,
    keys: dict[str, list[Locator]],
    progress: Progress,
) -> int:
    """Copy blobs in parallel (get, verify, put), then ``flush``; returns bytes copied."""

    lock = threading.Lock()  # progress bars are not thread-safe

    def one(key: str) -> int:
        data = src.get(key)
        _verify(key, data, keys[key])
        dst.put(key, data)
        with lock:
            progress(len(data))
        return len(data)

    if not keys:
        return 0

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="pfsfs-sync") as pool:
        copied = sum(pool.map(one, keys))
    dst.flush()
    return copied


def _missing(dst: ObjectStore, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="pfsfs-sync") as pool:
        present = list(pool.map(dst.exists, keys))
    return [k for k, here in zip(keys, present, strict=True) if not here]


def sync(
    src: Repository,
    dst: Repository,
    repos: Iterable[str] | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], Progress] | None = None,
) -> SyncReport:
    """Make ``dst``'s branches of ``repos`` (default: all of ``src``'s) match ``src``'s.

    ``progress(total_bytes)`` is called once the bytes to copy are known and returns the
    per-blob callback. Raises ``Conflict`` (nothing written) if a branch diverged and not
    ``force``; ``Conflict`` too if a destination branch moves during the sync.
    """
    report = SyncReport(dry_run=dry_run)
    _check_formats(src, dst, init=not dry_run)
    plans = plan(src, dst, repos)
    bad = diverged(plans)
    if bad and not force:
        names = ", ".join(p.name for p in bad)
        raise Conflict(
            f"{names} diverged: the destination has commits the source lacks "
            "(bring them over first, or use --force to overwrite)",
            [p.name for p in bad],
        )
    todo = [p for p in plans if not p.up_to_date]
    have = _have(src, dst, todo)
    send: dict[bytes, None] = {}  # ordered: oldest first, so parents land before children
    for p in todo:
        for cid in reversed(p.history):
            if cid not in have:
                send[cid] = None
    objects: dict[Locator, None] = {}
    for cid in send:
        commit = src.read_commit(cid)
        base = src.read_commit(commit.parents[0]).root if commit.parents else None
        _changed(src, commit.root, base, objects)
    by_key: dict[str, list[Locator]] = {}
    for loc in objects:
        by_key.setdefault(blob_key(loc), []).append(loc)
    # The stores themselves: copies neither fill nor trust a read cache.
    src_raw, dst_raw = src.store, dst.store
    missing = {k: by_key[k] for k in _missing(dst_raw, by_key)}
    missing_commits = _missing(dst_raw, (commit_key(c) for c in send))
    report.blobs_present = len(by_key) - len(missing)
    report.blobs_copied = len(missing)
    report.commits_copied = len(missing_commits)
    total = sum(max(loc.offset + loc.length for loc in locs) for locs in missing.values())
    if dry_run:
        report.branches = {p.name: _describe(p, force) for p in plans}
        report.bytes_copied = total  # at least: packs may hold more than we know of
        return report
    update = progress(total) if progress else (lambda _n: None)
    # Objects are durable before a commit names them, commits before a ref does.
    report.bytes_copied = _copy_blobs(src_raw, dst_raw, missing, update)
    report.bytes_copied += _copy_blobs(src_raw, dst_raw, dict.fromkeys(missing_commits, []), update)
    dst.index.add_objects(list(objects))
    for cid in send:
        commit = src.read_commit(cid)
        dst.index.add_commit(commit.repo, cid, commit.encode())
    for p in plans:
        report.branches[p.name] = _describe(p, force)
        if not p.up_to_date:
            _move(src, dst, p)
    log.info("sync: %s", report)
    return report


def _describe(p: BranchPlan, force: bool) -> str:
    if p.up_to_date:
        return "up to date"
    if not p.dst_exists:
        return "created"
    if p.dst_head is not None and p.dst_head not in set(p.history):
        return "forced" if force else "diverged"
    return "updated"


def _check_formats(src: Repository, dst: Repository, *, init: bool) -> None:
    """Initialise an empty destination store with the source's settings; refuse a mismatch."""
    src_cfg = src.refs.config_raw()
    dst_cfg = dst.refs.config_raw()
    if dst_cfg is None and src_cfg is not None and init:
        if not dst.refs.create_config(src_cfg):
            dst_cfg = dst.refs.config_raw()
    if src_cfg is None or dst_cfg is None:
        return
    a, b = codec.unpack_value(src_cfg), codec.unpack_value(dst_cfg)
    if a.get("format") != b.get("format"):
        raise InvalidInput(
            f"the stores have different formats ({a.get('format')} vs {b.get('format')})"
        )


def _move(src: Repository, dst: Repository, p: BranchPlan) -> None:
    record = src.refs.repo_raw(p.repo)
    if record is None:
        raise NotFound(f"repo {p.repo} was deleted from the source during the sync")
    dst.refs.create_repo(p.repo, record)  # False: it exists, keep the destination's record
    try:
        dst.refs.set_branch(p.repo, p.branch, p.dst_exists, p.dst_head, p.src_head)
    except RefChanged:
        raise Conflict(
            f"{p.name} moved on the destination during the sync; run it again", [p.name]
        ) from None
