"""Commit sets: one id shared by the commit that starts a run and everything derived from it.

An *origin* is a commit not made by a pipeline (a `put`, a mount's commit). Every output
commit records in its provenance the origins it descends from (``origins``: ``"repo@branch"``
→ commit id), the repos upstream of it (``upstream``) and its ``commitset``: the origin that
triggered the job, which the job record carries too. So ``pfsfs inspect commitset ID`` and
``pfsfs wait ID`` need nothing but the commit id a user just made.

A job's origins are merged from its input commits' origins; when two inputs name different
commits of one origin branch the newer one wins (the scheduler only starts a job once every
pipeline upstream has processed its input, so in a settled DAG they agree). An input commit
that descends from the pipeline's own output is a cycle through commit sets: the job fails
with one line naming it, before any datum runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InvalidInput, NotFound, PfsError
from ..ids import to_hex
from ..repository import Repository

#: Provenance walks of output commits made before commit sets existed stop this deep.
MAX_DEPTH = 256


@dataclass(frozen=True)
class Origins:
    """What a set of input commits descends from."""

    origins: dict[str, str]
    """``"repo@branch"`` → origin commit id (hex)."""
    upstream: frozenset[str]
    """Every repo on the way (input repos and theirs, transitively)."""


def origin_key(repo: str, branch: str) -> str:
    return f"{repo}@{branch}"


def commit_origins(repository: Repository, repo: str, branch: str, commit: str) -> Origins:
    """The origins of one commit (itself, if no pipeline made it)."""
    return _origins(repository, repo, branch, commit, (), 0)


def _origins(
    repository: Repository,
    repo: str,
    branch: str,
    commit: str,
    path: tuple[tuple[str, str], ...],
    depth: int,
) -> Origins:
    if (repo, commit) in path:
        chain = " -> ".join(f"{r}@{c[:12]}" for r, c in (*path, (repo, commit)))
        raise InvalidInput(f"commit set cycle: {chain}")
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{repo}@{commit[:12]}: provenance deeper than {MAX_DEPTH} commits")
    prov = repository.read_commit(bytes.fromhex(commit)).provenance
    if isinstance(prov.get("origins"), dict):
        upstream = frozenset(prov.get("upstream") or ()) | {repo}
        return Origins(dict(prov["origins"]), upstream)
    inputs = prov.get("inputs") or []
    if not inputs:
        return Origins({origin_key(repo, branch): commit}, frozenset({repo}))
    below = (*path, (repo, commit))
    parts = [
        _origins(repository, i["repo"], i["branch"], i["commit"], below, depth + 1) for i in inputs
    ]
    merged = merge(repository, parts)
    return Origins(merged.origins, merged.upstream | {repo})


def merge(repository: Repository, parts: Iterable[Origins]) -> Origins:
    """Origins of several commits together; of two commits of one branch, the newer."""
    origins: dict[str, str] = {}
    upstream: set[str] = set()
    for part in parts:
        upstream |= part.upstream
        for key, commit in part.origins.items():
            old = origins.get(key)
            if old is None or (old != commit and _newer(repository, commit, old)):
                origins[key] = commit
    return Origins(origins, frozenset(upstream))


def _newer(repository: Repository, a: str, b: str) -> bool:
    return _time(repository, a) > _time(repository, b)


def _time(repository: Repository, commit: str) -> int:
    try:
        return repository.read_commit(bytes.fromhex(commit)).time_ns
    except PfsError:
        return 0


def job_origins(
    repository: Repository,
    pipeline: str,
    inputs: Iterable[Mapping[str, str]],
    previous: Mapping[str, str] | None = None,
) -> tuple[Origins, str]:
    """The origins of a job's input commits and its commit set id: the newest origin that is
    new since ``previous`` (the last job's origins), else the newest origin. Raises
    ``InvalidInput`` (one line) on a cycle: an input made from ``pipeline``'s own output."""
    parts = []
    for i in inputs:
        try:
            got = commit_origins(repository, i["repo"], i["branch"], i["commit"])
        except NotFound:
            raise InvalidInput(
                f"input commit {i['repo']}@{i['commit'][:12]} ({i['branch']}) no longer exists"
            ) from None
        if pipeline in got.upstream:
            raise InvalidInput(
                f"commit set cycle: input {i['repo']}@{i['commit'][:12]} of pipeline {pipeline} "
                f"was made from {pipeline}'s own output; the job was not run"
            )
        parts.append(got)
    merged = merge(repository, parts)
    previous = previous or {}
    fresh = [c for k, c in merged.origins.items() if previous.get(k) != c]
    candidates = fresh or list(merged.origins.values())
    commitset = max(candidates, key=lambda c: (_time(repository, c), c)) if candidates else ""
    return merged, commitset


def find_commitset(repository: Repository, ident: str) -> tuple[str, str, str]:
    """``(repo, branch, commit)`` of the origin commit named by a commit set id (a commit id or
    a unique prefix of at least 4 hex digits). Raises NotFound / InvalidInput."""
    text = ident.strip().lower()
    if len(text) < 4 or any(ch not in "0123456789abcdef" for ch in text):
        raise InvalidInput(f"commit set {ident!r}: give a commit id (at least 4 hex digits)")
    found: dict[str, tuple[str, str, str]] = {}
    for info in repository.list_repos():
        for branch, head in sorted(info.branches.items()):
            if head is None:
                continue
            for cid, _commit in repository.log(head):
                hexid = to_hex(cid)
                if hexid.startswith(text):
                    found.setdefault(hexid, (info.name, branch, hexid))
    if not found:
        raise NotFound(f"no commit set {ident} (no commit on any branch has that id)")
    if len(found) > 1:
        listed = ", ".join(sorted(found)[:3])
        raise InvalidInput(f"commit set id {ident} is ambiguous: {listed}")
    return next(iter(found.values()))
