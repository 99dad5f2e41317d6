"""The Repository facade: the one API that the CLI, the daemon and pipelines use.

It ties the store (blobs + refs), the LMDB index and the versioning model together: repos and
branches (refs ``repos/<name>`` and ``branches/<repo>/<branch>``), ref resolution, reading
trees and files, and committing change sets with compare-and-swap on the branch.
Diff, gc/fsck and file transfer live in their own modules and take a ``Repository``.
"""

from __future__ import annotations

import fcntl
import getpass
import heapq
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codec
from .changes import ChangeSet, apply_changes, split_path
from .chunking import Chunker, ChunkParams
from .display import plural, show_path
from .errors import (
    AlreadyExists,
    BranchMoved,
    InvalidInput,
    NotFound,
    ReadOnly,
)
from .home import (
    HomeConfig,
    default_home,
    open_read_cache,
    open_store,
    read_config,
    write_config,
)
from .ids import HEX_LEN, hash_bytes, is_hex, to_hex
from .index import Index
from .model import DIR, FILE, Commit, Entry, ManifestChunk, encode_tree
from .objects import ObjectReader, ObjectWriter
from .refs import Refs
from .refspec import MIN_PREFIX, RefSpec, check_name, parse_ref
from .store.base import ObjectStore
from .treediff import same_entry

if TYPE_CHECKING:
    from .store.cache import CachingStore

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "master"
EMPTY_TREE_ID = hash_bytes(encode_tree({}))
READ_AHEAD_CHUNKS = 8


def default_author() -> str:
    env = os.environ.get("PFSFS_AUTHOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Resolved:
    """A ref resolved to a commit (``commit`` is None on a branch with no commits yet)."""

    repo: str
    branch: str | None
    commit: bytes | None
    path: tuple[bytes, ...] = ()

    def describe(self) -> str:
        if self.branch:
            return f"{self.repo}@{self.branch}"
        return f"{self.repo}@{to_hex(self.commit)[:12]}" if self.commit else self.repo


@dataclass(frozen=True)
class RepoInfo:
    name: str
    description: str
    created_ns: int
    output_of: str | None
    branches: dict[str, bytes | None]


class Repository:
    """Open with ``Repository.open(home)``; close when done."""

    def __init__(
        self,
        home: Path,
        config: HomeConfig,
        store: ObjectStore,
        index: Index,
        *,
        cache: CachingStore | None = None,
    ) -> None:
        """``store`` is the store itself (what fsck, gc and copies read); ``cache`` the local
        read cache in front of it, if any (``home.open_read_cache``), which the object reader
        and writers are given explicitly."""
        self.home = home
        self.config = config
        self.store = store
        self.cache = cache
        self.index = index
        self.refs = Refs(store)
        self.reader = ObjectReader(store, index, cache=cache)
        #: Where write sessions put blobs: through the read cache, which keeps the metadata
        #: packs they write once flushed (the next commit reads those trees back).
        self._blobs: ObjectStore = cache if cache is not None else store
        self._params: ChunkParams | None = None

    @classmethod
    def on_store(cls, home: Path, config: HomeConfig, index: Index) -> Repository:
        """The repository of ``home`` with ``config``'s store and its read cache."""
        store = open_store(home, config)
        return cls(home, config, store, index, cache=open_read_cache(home, config, store))

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls, home: Path | str | None = None, *, create: bool = True) -> Repository:
        """Open the home (creating a local one on first use when ``create``)."""
        home_path = Path(home).expanduser() if home else default_home()
        config = read_config(home_path)
        if config is None:
            if not create:
                raise NotFound(f"no pfsfs home at {home_path}; run `pfsfs init`")
            return cls.init(home_path)
        return cls.on_store(home_path, config, Index(home_path / "index"))

    @classmethod
    def init(
        cls,
        home: Path,
        config: HomeConfig | None = None,
        params: ChunkParams | None = None,
    ) -> Repository:
        """Create a home (idempotent) and the store's shared settings if the store is new."""
        config = config or HomeConfig.local()
        existing = read_config(home)
        if existing is not None and existing != config:
            raise AlreadyExists(f"{home} is already initialised with store {existing.store}")
        store = open_store(home, config)
        refs = Refs(store)
        if refs.config_raw() is None:
            settings = {
                "format": codec.FORMAT_VERSION,
                "chunking": (params or ChunkParams()).to_dict(),
            }
            # False: another machine initialised the same store first; its settings hold
            refs.create_config(codec.pack_value(settings))
        write_config(home, config)
        cache = open_read_cache(home, config, store)
        return cls(home, config, store, Index(home / "index"), cache=cache)

    def close(self) -> None:
        self.index.close()
        self._blobs.close()  # the read cache closes the store behind it

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def chunk_params(self) -> ChunkParams:
        if self._params is None:
            settings = self.refs.config() or {}
            self._params = ChunkParams.from_dict(
                settings.get("chunking") or ChunkParams().to_dict()
            )
        return self._params

    def chunker(self) -> Chunker:
        return Chunker(self.chunk_params)

    # -- locking -----------------------------------------------------------------------------
    @contextmanager
    def _gc_lock(self, exclusive: bool) -> Iterator[None]:
        """Writers share this lock; gc takes it exclusively, so it never deletes objects a
        write session in this home is about to reference."""
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def writer(self) -> Iterator[ObjectWriter]:
        """A write session; objects become durable and indexed when the block exits cleanly."""
        with self._gc_lock(exclusive=False):
            w = ObjectWriter(self._blobs, self.index)
            try:
                yield w
            except BaseException:
                w.abandon()
                raise
            w.finish()

    def delete_blob(self, key: str) -> None:
        """Delete one blob from the store, and from the read cache (gc)."""
        self._blobs.delete(key)

    @contextmanager
    def gc_lock(self) -> Iterator[None]:
        with self._gc_lock(exclusive=True):
            yield

    # -- repos -------------------------------------------------------------------------------
    def create_repo(
        self, name: str, description: str = "", *, output_of: str | None = None
    ) -> None:
        check_name("repo", name)
        record = {"created_ns": time.time_ns(), "description": description, "output_of": output_of}
        if not self.refs.create_repo(name, record):
            raise AlreadyExists(f"repo {name!r} already exists")
        self.refs.create_branch(name, DEFAULT_BRANCH, None)

    def repo_record(self, name: str) -> dict[str, Any]:
        check_name("repo", name)
        record = self.refs.repo_record(name)
        if record is None:
            raise NotFound(f"repo {name!r} does not exist")
        return record

    def update_repo_record(self, name: str, **changes: Any) -> None:
        self.refs.update_repo(name, **changes)

    def list_repos(self) -> list[RepoInfo]:
        result = []
        for name, record in self.refs.repos():
            result.append(
                RepoInfo(
                    name,
                    record.get("description", ""),
                    record.get("created_ns", 0),
                    record.get("output_of"),
                    self.list_branches(name),
                )
            )
        return sorted(result, key=lambda r: r.name)

    def delete_repo(self, name: str) -> None:
        self.repo_record(name)
        for branch, head in self.list_branches(name).items():
            self.refs.delete_branch(name, branch, head)
        self.refs.delete_repo(name)
        self.index.drop_repo_commits(name)

    # -- write policy ------------------------------------------------------------------------
    def check_writable(self, repo: str, pipeline: str | None = None) -> None:
        """The one rule for who may change a repo's branches: a pipeline's output repo only by
        that pipeline (``pipeline``: the writer's pipeline capability), every other repo by
        anyone. Each branch-changing call below checks it; callers may check early too."""
        owner = self.repo_record(repo).get("output_of")
        if owner and pipeline != owner:
            raise ReadOnly(f"repo {repo} is the output of pipeline {owner}; it is read-only")

    # -- branches ----------------------------------------------------------------------------
    def list_branches(self, repo: str) -> dict[str, bytes | None]:
        return self.refs.branches(check_name("repo", repo))

    def branch_head(self, repo: str, branch: str) -> bytes | None:
        """The branch's head commit (None: no commits yet). Raises NotFound."""
        exists, head = self.refs.head(check_name("repo", repo), branch)
        if not exists:
            self.repo_record(repo)
            raise NotFound(f"branch {repo}@{branch} does not exist")
        return head

    def create_branch(
        self, repo: str, branch: str, head: bytes | None = None, *, pipeline: str | None = None
    ) -> None:
        self.check_writable(repo, pipeline)
        check_name("branch", branch)
        self.refs.create_branch(repo, branch, head)

    def start_branch(
        self, repo: str, branch: str, from_ref: str | None = None, *, pipeline: str | None = None
    ) -> str:
        """Create ``branch`` the way people expect (``git switch -c``): at ``from_ref`` (a
        branch, commit or ``~N`` of the same repo) or else at the default branch's head.
        Returns what it started from, for the user: "r@master (1a2b3c4d5e6f)"."""
        self.check_writable(repo, pipeline)
        check_name("branch", branch)
        source = from_ref or DEFAULT_BRANCH
        spec = parse_ref(source if "@" in source else f"{repo}@{source}", allow_path=False)
        if spec.repo != repo:
            raise InvalidInput(f"--from {from_ref}: a branch starts at a commit of {repo}")
        try:
            resolved = self.resolve(spec)
        except NotFound:
            if from_ref is not None:
                raise
            resolved = Resolved(repo, None, None)  # no default branch (deleted): start empty
        self.create_branch(repo, branch, resolved.commit, pipeline=pipeline)
        what = resolved.describe() if resolved.branch or resolved.commit else f"{repo} (empty)"
        if resolved.branch and resolved.commit:
            what += f" ({to_hex(resolved.commit)[:12]})"
        elif resolved.branch:
            what += " (no commits yet)"
        return what

    def delete_branch(self, repo: str, branch: str, *, pipeline: str | None = None) -> None:
        self.check_writable(repo, pipeline)
        self.refs.delete_branch(repo, branch, self.branch_head(repo, branch))

    def move_branch(
        self,
        repo: str,
        branch: str,
        expected: bytes | None,
        new: bytes | None,
        *,
        pipeline: str | None = None,
    ) -> None:
        """Compare-and-swap the branch head; ``BranchMoved`` if it is not at ``expected``."""
        self.check_writable(repo, pipeline)
        self.refs.move_branch(repo, branch, expected, new)

    # -- resolving ---------------------------------------------------------------------------
    def resolve(self, ref: RefSpec | str) -> Resolved:
        spec = parse_ref(ref) if isinstance(ref, str) else ref
        self.repo_record(spec.repo)
        name = spec.ref or DEFAULT_BRANCH
        branch: str | None = None
        exists, head = self.refs.head(spec.repo, name)
        if exists:
            branch, commit = name, head
        elif is_hex(name.lower()):
            commit = self._commit_by_prefix(spec.repo, name.lower())
        else:
            raise NotFound(f"branch {spec.repo}@{name} does not exist")
        for i in range(spec.back):
            if commit is None:
                break
            parents = self.read_commit(commit).parents
            if not parents:
                raise NotFound(
                    f"{spec.repo}@{name}~{spec.back}: history has only {plural(i + 1, 'commit')}"
                )
            commit = parents[0]
        if spec.back:
            branch = None  # an ancestor is not the branch head: mounts of it are read-only
        path = split_path(spec.path) if spec.path else ()
        return Resolved(spec.repo, branch, commit, path)

    def _commit_by_prefix(self, repo: str, prefix: str) -> bytes:
        if len(prefix) < MIN_PREFIX:
            raise InvalidInput(
                f"{prefix!r} is neither a branch of {repo} nor a commit id "
                f"(give at least {MIN_PREFIX} hex characters)"
            )
        if len(prefix) > HEX_LEN:
            raise InvalidInput(f"{prefix!r} is longer than a commit id")
        found = self.index.repo_commits_with_prefix(repo, prefix)
        if not found:
            self._index_repo_history(repo)
            found = self.index.repo_commits_with_prefix(repo, prefix)
        if not found:
            raise NotFound(f"no commit {prefix} in repo {repo}")
        if len(found) > 1:
            listed = ", ".join(sorted(to_hex(c)[:16] for c in found))
            raise InvalidInput(f"commit prefix {prefix} is ambiguous in {repo}: {listed}")
        return found[0]

    def _index_repo_history(self, repo: str) -> None:
        """Read every commit reachable from the repo's branches (fills the index cache)."""
        heads = [c for c in self.list_branches(repo).values() if c]
        for _ in self.log_many(heads):
            pass

    # -- reading -----------------------------------------------------------------------------
    def read_commit(self, commit_id: bytes) -> Commit:
        return self.reader.read_commit(commit_id)

    def root_of(self, commit_id: bytes | None) -> Entry:
        """The root directory entry of a commit (an empty directory for None)."""
        if commit_id is None:
            return Entry(DIR, 0o755, os.getuid(), os.getgid(), 0)
        return self.read_commit(commit_id).root

    def list_dir(self, entry: Entry) -> dict[bytes, Entry]:
        if not entry.is_dir:
            raise InvalidInput("not a directory")
        return self.reader.read_tree(entry.ref) if entry.ref else {}

    def lookup(self, root: Entry, path: tuple[bytes, ...], what: str = "") -> Entry:
        """The entry at ``path`` below ``root`` (``what`` names the ref in errors)."""
        entry = root
        for i, name in enumerate(path):
            if not entry.is_dir:
                shown = show_path(path[:i])
                raise InvalidInput(f"{what}{shown} is not a directory")
            child = self.list_dir(entry).get(name)
            if child is None:
                shown = show_path(path)
                raise NotFound(f"{what}{shown} does not exist")
            entry = child
        return entry

    def walk(self, entry: Entry, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
        """Every ``(path, entry)`` below a directory entry, depth first, sorted by name."""
        for name, child in sorted(self.list_dir(entry).items()):
            path = prefix + b"/" + name
            yield path, child
            if child.is_dir:
                yield from self.walk(child, path)

    def manifest(self, entry: Entry) -> list[ManifestChunk]:
        return self.reader.read_manifest(entry.ref) if entry.ref else []

    def iter_file(self, entry: Entry) -> Iterator[bytes]:
        """A file's content, chunk by chunk, every chunk verified."""
        if entry.type != FILE:
            raise InvalidInput("not a regular file")
        chunks = self.manifest(entry)
        for i, chunk in enumerate(chunks):
            if i % READ_AHEAD_CHUNKS == 0:  # keep the next chunks travelling (remote stores)
                self.reader.prefetch(c.loc for c in chunks[i + 1 : i + 1 + 2 * READ_AHEAD_CHUNKS])
            yield self.reader.read_raw(chunk.loc)

    # -- committing --------------------------------------------------------------------------
    def commit(
        self,
        repo: str,
        branch: str,
        changes: ChangeSet,
        message: str = "",
        *,
        parent: bytes | None | type[Ellipsis] = ...,
        author: str | None = None,
        provenance: dict[str, Any] | None = None,
        writer: ObjectWriter | None = None,
        rebase: bool = False,
        allow_empty: bool = False,
        pipeline: str | None = None,
    ) -> bytes | None:
        """Apply ``changes`` on top of the branch head (or ``parent``) and commit the result
        (``commit_root``).

        If the branch moved meanwhile, ``rebase=True`` re-applies the change set on the new
        head (path-level: later writes win); otherwise ``BranchMoved`` is raised and nothing is
        committed. Returns the new commit id, or None when nothing changed (see
        ``commit_root``).
        """
        if writer is None:
            with self.writer() as w:
                return self.commit(
                    repo,
                    branch,
                    changes,
                    message,
                    parent=parent,
                    author=author,
                    provenance=provenance,
                    writer=w,
                    rebase=rebase,
                    allow_empty=allow_empty,
                    pipeline=pipeline,
                )
        self.check_writable(repo, pipeline)  # before any work
        base = self.branch_head(repo, branch) if parent is ... else parent
        while True:
            root = apply_changes(changes, self.root_of(base) if base else None, self.reader, writer)
            try:
                return self.commit_root(
                    repo,
                    branch,
                    root,
                    message,
                    parents=(base,) if base else (),
                    expected=base,
                    author=author,
                    provenance=provenance,
                    allow_empty=allow_empty,
                    writer=writer,
                    pipeline=pipeline,
                )
            except BranchMoved:
                if not rebase:
                    raise
                base = self.branch_head(repo, branch)

    def commit_root(
        self,
        repo: str,
        branch: str,
        root: Entry,
        message: str,
        *,
        parents: tuple[bytes, ...],
        expected: bytes | None,
        author: str | None = None,
        provenance: dict[str, Any] | None = None,
        allow_empty: bool = False,
        writer: ObjectWriter | None = None,
        pipeline: str | None = None,
    ) -> bytes | None:
        """The one commit primitive (put, snapshot, rollback, merges and pipelines all end
        here): check the write policy, write the commit object, make it and everything it
        reaches durable (``writer.finish``: the flush barrier), move the branch from
        ``expected`` by compare-and-swap (``BranchMoved`` if another writer moved it: nothing
        is committed), then index the commit.

        Returns None, committing nothing, when the commit would only repeat ``expected``: one
        parent, that head, and the same root (unless ``allow_empty``: a pipeline's output
        commit records new provenance even so). ``writer``: the session that wrote the root's
        objects (else a new one)."""
        self.check_writable(repo, pipeline)
        single = parents == ((expected,) if expected else ())
        if not allow_empty and single and self.unchanged(expected, root):
            return None
        commit = Commit(
            repo,
            root,
            parents,
            message,
            time.time_ns(),
            author or default_author(),
            provenance or {},
        )
        encoded = commit.encode()
        if writer is None:
            with self.writer() as w:
                commit_id = w.put_commit(encoded)
        else:
            commit_id = writer.put_commit(encoded)
            writer.finish()  # durable before the branch can point at it
        self.refs.move_branch(repo, branch, expected, commit_id)
        self.index.add_commit(repo, commit_id, encoded)
        log.info("committed %s to %s@%s", to_hex(commit_id)[:12], repo, branch)
        return commit_id

    def unchanged(self, base: bytes | None, root: Entry) -> bool:
        """Whether a commit of ``root`` onto ``base`` would change nothing a user can see:
        the same content and metadata as the base's root (an empty branch: an empty root)."""
        if base is None:  # (root's tree may not be durable yet: compare ids, read nothing)
            return root.is_dir and root.content_id() in (None, EMPTY_TREE_ID)
        return same_entry(self.root_of(base), root)

    # -- history -----------------------------------------------------------------------------
    def log_many(self, heads: list[bytes]) -> Iterator[tuple[bytes, Commit]]:
        """Commits reachable from ``heads``, newest first, each once."""
        heap: list[tuple[int, bytes, Commit]] = []
        seen: set[bytes] = set()
        for head in heads:
            if head not in seen:
                seen.add(head)
                c = self.read_commit(head)
                heapq.heappush(heap, (-c.time_ns, head, c))
        while heap:
            _, cid, c = heapq.heappop(heap)
            yield cid, c
            for p in c.parents:
                if p not in seen:
                    seen.add(p)
                    pc = self.read_commit(p)
                    heapq.heappush(heap, (-pc.time_ns, p, pc))

    def log(self, commit_id: bytes | None) -> Iterator[tuple[bytes, Commit]]:
        return self.log_many([commit_id] if commit_id else [])

    def rollback(
        self, repo: str, branch: str, to: bytes, *, hard: bool = False, pipeline: str | None = None
    ) -> bytes | None:
        """Make a NEW commit whose tree is ``to``'s (history kept), or with ``hard`` move the
        branch pointer itself. Returns the branch's new head, or None when the branch already
        holds exactly ``to``'s content (no commit is made)."""
        head = self.branch_head(repo, branch)
        target = self.read_commit(to)
        if target.repo != repo:
            raise InvalidInput(
                f"commit {to_hex(to)[:12]} belongs to repo {target.repo}, not {repo}"
            )
        if hard:
            self.move_branch(repo, branch, head, to, pipeline=pipeline)
            return to
        return self.commit_root(
            repo,
            branch,
            target.root,
            f"rollback to {to_hex(to)[:12]}",
            parents=(head,) if head else (),
            expected=head,
            pipeline=pipeline,
        )
