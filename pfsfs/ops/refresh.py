"""``refresh``: bring this home's index in line with the store after other machines wrote to
it (new branch heads and commits) or collected it (objects gone)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ids import to_hex
from ..model import blob_key
from ..repository import Repository


@dataclass
class RefreshReport:
    """Each ``repo@branch``'s head (hex, None: no commits), the commits indexed, and how many
    index entries named objects the store no longer holds (dropped)."""

    heads: dict[str, str | None] = field(default_factory=dict)
    commits: int = 0
    stale: int = 0


def refresh(repository: Repository, repos: list[str] | None = None) -> RefreshReport:
    """Re-read the branch heads of ``repos`` (default: every repo; ``NotFound`` for an unknown
    one) from the store, index every commit they reach, and forget index entries of objects
    that are gone from the store (another machine's gc)."""
    names = repos or [info.name for info in repository.list_repos()]
    report = RefreshReport()
    for name in names:
        repository.repo_record(name)  # NotFound for an unknown repo
        branches = repository.list_branches(name)
        for branch, head in sorted(branches.items()):
            report.heads[f"{name}@{branch}"] = to_hex(head) if head else None
        report.commits += sum(1 for _ in repository.log_many([c for c in branches.values() if c]))
    present = {info.key for info in repository.store.list()}
    stale = [loc.id for loc in repository.index.iter_objects() if blob_key(loc) not in present]
    repository.index.drop_objects(stale)
    report.stale = len(stale)
    return report
