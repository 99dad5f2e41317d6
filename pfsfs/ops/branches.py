"""Branch operations shared by ``put`` and ``mount --create``: telling a commit id from a
branch name, and creating a branch on first write."""

from __future__ import annotations

from ..errors import NotFound
from ..refspec import RefSpec
from ..repository import Repository

#: A ref of at least this many hex digits may be a commit id prefix.
MIN_COMMIT_PREFIX = 6


def names_commit(repository: Repository, spec: RefSpec) -> bool:
    """Whether ``spec``'s ref, not a branch of its repo, is (a prefix of) one of its commits:
    a put or a ``mount --create`` must not create a branch named like a commit."""
    name = spec.ref or ""
    if len(name) < MIN_COMMIT_PREFIX or any(c not in "0123456789abcdef" for c in name):
        return False
    try:
        repository.resolve(spec)
    except NotFound:
        return False
    return True


def ensure_branch(
    repository: Repository,
    repo: str,
    branch: str,
    from_ref: str | None = None,
    *,
    pipeline: str | None = None,
) -> str | None:
    """Create ``repo@branch`` if it does not exist (at ``from_ref``, or the default branch's
    head, like ``branch create``); return what it started from ("r@master (1a2b…)"), or None
    when the branch was there. The write policy is checked first either way, so a refused
    write fails before any data is read."""
    repository.check_writable(repo, pipeline)
    if branch in repository.list_branches(repo):
        return None
    return repository.start_branch(repo, branch, from_ref, pipeline=pipeline)
