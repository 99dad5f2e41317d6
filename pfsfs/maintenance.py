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
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import Corruption, NotFound, PfsError
from .ids import hash_bytes, to_hex
from .model import FILE, Entry, Locator

if TYPE_CHECKING:
    from .repository import Repository

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
    heads = []
    for name, value in repo.store.list_refs("branches/"):
        if value:
            heads.append((name, bytes.fromhex(value.decode())))
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
    commits = [cid for _, cid in branch_heads(repo)]
    extra_commits, extra_locators = repo.index.gc_roots()
    commits.extend(bytes.fromhex(c) for c in extra_commits)
    return commits, extra_locators


@dataclass
class GcReport:
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0
    dead_in_live_packs: int = 0  # bytes inside packs that still hold live objects
    dry_run: bool = False


def gc(repo: Repository, *, dry_run: bool = False, grace: float = 0.0) -> GcReport:
    """Delete blobs unreachable from every root (see the module docstring for the rules)."""
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
        for key, _ in doomed:
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
            repo.store.delete(key)
    log.info("gc deleted %d blobs (%d bytes)", report.deleted_blobs, report.deleted_bytes)
    return report


def fsck(repo: Repository, *, deep: bool = False) -> list[str]:
    """Problems found (empty when healthy): dangling refs, missing or corrupt objects."""
    problems: list[str] = []
    heads = []
    for name, cid in branch_heads(repo):
        try:
            commit = repo.read_commit(cid)
        except PfsError as exc:
            problems.append(f"ref {name} -> {to_hex(cid)[:12]}: {exc}")
            continue
        heads.append(cid)
        repo_name = name.split("/")[1]
        if commit.repo != repo_name:
            problems.append(f"ref {name} points at a commit of repo {commit.repo}")
    r = reachable(repo, heads, strict=False)
    problems.extend(r.problems)
    truth = repo.store.uncached()  # --deep must read the store itself, not a local cache
    sizes = {info.key: info.size for info in truth.list()}
    for loc in r.locators:
        key = f"pack/{loc.pack.hex()}" if loc.pack else f"chunk/{loc.id.hex()}"
        size = sizes.get(key)
        if size is None:
            problems.append(f"object {loc.hex[:16]} is missing ({key})")
            continue
        if (loc.offset + loc.length if loc.pack else loc.length) > size:
            problems.append(f"object {loc.hex[:16]} is truncated in {key}")
            continue
        if deep:
            try:
                data = truth.get(key, loc.offset, loc.length) if loc.pack else truth.get(key)
            except NotFound:
                problems.append(f"object {loc.hex[:16]} is missing ({key})")
                continue
            except PfsError as exc:
                problems.append(f"object {loc.hex[:16]}: {exc}")
                continue
            if hash_bytes(data) != loc.id:
                problems.append(f"object {loc.hex[:16]} in {key} is corrupt (hash mismatch)")
    for cid in r.commits:
        if f"commit/{cid.hex()}" not in sizes:
            problems.append(f"commit {to_hex(cid)[:12]} is missing from the store")
    return problems


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
        "branches": len(branch_heads(repo)),
        "commits": len(r.commits),
        "logical_bytes": logical,
        "stored_bytes": stored,
    }
