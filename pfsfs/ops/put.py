"""The steps of ``pfsfs put``: resolve the target, check the write policy (creating the
branch on first write), consult the stat cache, transfer, commit, save the stat cache.

``resolve_target`` does every check that needs no data, so a bad target fails before any file
is read; ``put`` then moves the bytes and makes at most one commit. Neither prints: what to
say is returned (``PutResult``) or passed to the caller's callbacks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..changes import ChangeSet, split_path
from ..display import show_local, show_path
from ..errors import InvalidInput, NotFound
from ..refspec import RefSpec, parse_ref
from ..repository import DEFAULT_BRANCH, Repository
from ..transfer import PutCache, head_lookup, ingest_plan, ingest_stream, plan_put
from .branches import ensure_branch, names_commit

#: A put to a remote store that wrote at least this much data waits for it before the
#: commit's round trips (see ``put``): two data packs, so several uploads may be in flight.
EARLY_BARRIER_BYTES = 32 << 20

STDIN = "-"

#: ``progress(total_bytes)`` gives a context whose value is called with each byte count read.
ProgressFactory = Callable[[int], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(_total: int) -> Iterator[Callable[[int], None]]:
    """The default ``ProgressFactory``: report nothing."""
    yield lambda _n: None


@dataclass(frozen=True)
class PutTarget:
    """Where a put goes: ``repo@branch``, the path ``dest`` in it, and whether the source is
    a directory whose contents (``DIR/``) go there rather than the directory itself."""

    repo: str
    branch: str
    source: str
    dest: tuple[bytes, ...]
    contents: bool

    @property
    def shown(self) -> str:
        """The destination as users see it ("/a/b", "/a/" for contents of a directory)."""
        return show_path(self.dest) + ("/" if self.contents and self.dest else "")


@dataclass(frozen=True)
class PutResult:
    """What a put did: the new commit (None: nothing changed) and how many files it read."""

    commit_id: bytes | None
    count: int


def is_contents(source: str) -> bool:
    """rsync's convention: ``dir/`` means the directory's contents, ``dir`` the directory."""
    return source.endswith("/") and source.rstrip("/") != ""


def parse_target(target: str) -> RefSpec:
    """``target`` (``REPO@BRANCH[:/PATH]``) parsed, refused unless it names a branch head (no
    ``~N``). Needs no repository: the CLI calls it before opening the home, so a malformed
    target creates none."""
    spec = parse_ref(target)
    if spec.back:
        raise InvalidInput(f"{target}: can only put to a branch head")
    return spec


def resolve_target(repository: Repository, target: str, source: str) -> PutTarget:
    """Parse and check ``target`` (``parse_target``) for ``source`` (a path, or ``-`` for
    stdin): a branch head, not a commit; an existing source; a path other than the root
    unless a directory's contents go there. Raises ``InvalidInput`` or ``NotFound``."""
    spec = parse_target(target)
    repo, branch = spec.repo, spec.ref or DEFAULT_BRANCH
    if branch not in repository.list_branches(repo):
        repository.repo_record(repo)
        if names_commit(repository, spec):
            raise InvalidInput(f"{target}: can only put to a branch, not a commit")
    contents = False
    if source == STDIN:
        if spec.path is None or spec.path.endswith("/"):
            raise InvalidInput("with -f -, give the destination path: repo@branch:/path/to/file")
        dest = split_path(spec.path)
    else:
        src = Path(source)
        if not src.exists() and not src.is_symlink():
            raise NotFound(f"{show_local(source)} does not exist")
        contents = is_contents(source) and src.is_dir()
        base = os.fsencode(src.resolve().name if source in (".", "./") else src.name)
        if contents:
            dest = split_path(spec.path or "/")
        elif spec.path is None:
            dest = (base,)
        elif spec.path.endswith("/"):
            dest = split_path(spec.path) + (base,)
        else:
            dest = split_path(spec.path)
    if not dest and not contents:
        raise InvalidInput(
            "cannot put onto the root itself; name a path inside the repo "
            "(or put a directory's contents there: -f DIR/ -r)"
        )
    return PutTarget(repo, branch, source, dest, contents)


def put(
    repository: Repository,
    target: PutTarget,
    *,
    recursive: bool,
    message: str | None = None,
    use_cache: bool = True,
    stdin: BinaryIO | None = None,
    progress: ProgressFactory = no_progress,
    on_branch_created: Callable[[str], None] = lambda _start: None,
) -> PutResult:
    """Put ``target.source`` at ``target`` (for ``-``: ``stdin``, by default this process's):
    one commit, or none when the branch already holds exactly this. Refuses a pipeline's
    output repo (``ReadOnly``) before reading anything, and creates a missing branch
    (``on_branch_created(start)``). With ``use_cache``, files unchanged since a put of them to
    this branch are not read again; the stat cache is saved only once the commit holding
    their content is made."""
    start = ensure_branch(repository, target.repo, target.branch)
    if start is not None:
        on_branch_created(start)
    changes = ChangeSet()
    cache = None
    with repository.writer() as writer:
        chunker = repository.chunker()
        if target.source == STDIN:
            stream = stdin if stdin is not None else sys.stdin.buffer
            changes.put(target.dest, ingest_stream(stream, writer, chunker))
            count = 1
        else:
            head = head_lookup(repository, target.repo, target.branch)
            cache = PutCache(repository.index, target.repo, target.branch, head, read=use_cache)
            plan = plan_put(
                Path(target.source),
                target.dest,
                recursive=recursive,
                cache=cache,
                contents=target.contents,
            )
            with progress(plan.read_bytes) as update:
                count = ingest_plan(plan, changes, writer, chunker, update)
        if repository.store.properties.remote and writer.bytes_written >= EARLY_BARRIER_BYTES:
            # The content's barrier first: seal the last (partly filled) data pack and wait
            # for every upload now, not after the commit's ref reads. Those reads, queued on
            # the server behind our bulk uploads, took a tenth of a second or more per GiB
            # before the last pack could even start; on a server no longer busy with our data
            # they take milliseconds. (It costs one more, small, metadata pack, so small puts
            # skip it.) Durability is unchanged: the commit's own barrier (``commit_root``:
            # trees, commit) still comes before the branch moves.
            writer.finish()
        commit_id = repository.commit(
            target.repo,
            target.branch,
            changes,
            message or f"put {target.shown}",
            writer=writer,
            rebase=True,
        )
    if cache is not None:
        cache.save()  # only now: the content it names is in the branch
    return PutResult(commit_id, count)
