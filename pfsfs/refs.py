"""The refs protocol: the names and values of a store's mutable refs, and how they move.

A store holds immutable blobs and a few small mutable *refs*; this module is the only one that
builds their names or encodes their values, and every change goes through the store's
compare-and-swap (``set_ref(name, expected, new)``), so two writers never lose each other's
updates (dulwich's ``RefsContainer`` plays the same part).

============================  ==============================================================
ref                           value
============================  ==============================================================
``config``                    the store's shared settings (msgpack map: format, chunking)
``repos/<repo>``              the repo record (msgpack map: created_ns, description,
                              output_of)
``branches/<repo>/<branch>``  the head commit's id in hex ASCII; empty: no commits yet
``k8s/jobs/<job>/...``         a Kubernetes job's plan and datum records (owned, encoded and
                              read by ``pfsfs.k8s.protocol``; create-only; deleted once done
                              with, see ``pfsfs.k8s.retention``)
============================  ==============================================================

Policy (who may move which branch) is not here: ``Repository`` decides, then calls these.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import codec
from .errors import AlreadyExists, BranchMoved, Corruption, NotFound, RefChanged
from .ids import to_hex
from .store.base import ObjectStore

CONFIG = "config"
REPOS = "repos/"
BRANCHES = "branches/"
JOB_RECORDS = "k8s/jobs/"  # see pfsfs.k8s.protocol


def repo_ref(repo: str) -> str:
    return f"{REPOS}{repo}"


def branch_ref(repo: str, branch: str) -> str:
    return f"{BRANCHES}{repo}/{branch}"


def encode_head(commit_id: bytes | None) -> bytes:
    return to_hex(commit_id).encode() if commit_id else b""


def decode_head(name: str, value: bytes) -> bytes | None:
    """A branch ref's commit id (None: no commits yet); ``Corruption`` if it is malformed."""
    if not value:
        return None
    try:
        commit_id = bytes.fromhex(value.decode("ascii"))
    except ValueError:
        commit_id = b""
    if len(commit_id) != 32:
        raise Corruption(f"ref {name} is malformed (not a commit id): {value[:40]!r}")
    return commit_id


def split_branch_ref(name: str) -> tuple[str, str]:
    """``branches/<repo>/<branch>`` → (repo, branch)."""
    repo, _, branch = name[len(BRANCHES) :].partition("/")
    return repo, branch


class Refs:
    """The refs of one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- config ------------------------------------------------------------------------------
    def config_raw(self) -> bytes | None:
        return self.store.get_ref(CONFIG)

    def config(self) -> dict[str, Any] | None:
        value = self.config_raw()
        return codec.unpack_value(value) if value else None

    def create_config(self, raw: bytes) -> bool:
        """Set the settings of a new store; False if another writer set them first."""
        try:
            self.store.set_ref(CONFIG, None, raw)
        except RefChanged:
            return False
        return True

    # -- repos -------------------------------------------------------------------------------
    def repo_raw(self, repo: str) -> bytes | None:
        return self.store.get_ref(repo_ref(repo))

    def repo_record(self, repo: str) -> dict[str, Any] | None:
        value = self.repo_raw(repo)
        return codec.unpack_value(value) if value is not None else None

    def create_repo(self, repo: str, record: dict[str, Any] | bytes) -> bool:
        """A new repo record (``bytes``: an encoded one, copied from another store); False if
        the repo exists already."""
        raw = record if isinstance(record, bytes) else codec.pack_value(record)
        try:
            self.store.set_ref(repo_ref(repo), None, raw)
        except RefChanged:
            return False
        return True

    def update_repo(self, repo: str, **changes: Any) -> None:
        old = self.repo_raw(repo)
        if old is None:
            raise NotFound(f"repo {repo!r} does not exist")
        record = {**codec.unpack_value(old), **changes}
        self.store.set_ref(repo_ref(repo), old, codec.pack_value(record))

    def delete_repo(self, repo: str) -> None:
        old = self.repo_raw(repo)
        if old is not None:
            self.store.set_ref(repo_ref(repo), old, None)

    def repos(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, value in self.store.list_refs(REPOS):
            yield name[len(REPOS) :], codec.unpack_value(value)

    # -- branches ----------------------------------------------------------------------------
    def head(self, repo: str, branch: str) -> tuple[bool, bytes | None]:
        """(whether the branch exists, its head commit or None)."""
        name = branch_ref(repo, branch)
        value = self.store.get_ref(name)
        return (False, None) if value is None else (True, decode_head(name, value))

    def branches(self, repo: str) -> dict[str, bytes | None]:
        prefix = branch_ref(repo, "")
        return {
            name[len(prefix) :]: decode_head(name, value)
            for name, value in self.store.list_refs(prefix)
        }

    def all_branches(self) -> Iterator[tuple[str, bytes]]:
        """(ref name, raw value) of every branch of every repo, unparsed (fsck and gc decide
        what a malformed one means)."""
        yield from self.store.list_refs(BRANCHES)

    def job_records(self) -> Iterator[tuple[str, bytes]]:
        """(ref name, raw value) of every Kubernetes job plan and datum record."""
        yield from self.store.list_refs(JOB_RECORDS)

    def create_job_record(self, name: str, value: bytes) -> bool:
        """Create a job plan or datum record (``name`` under ``JOB_RECORDS``) once; False when
        it exists already (an earlier attempt wrote it: records are immutable)."""
        self._check_job_record(name)
        try:
            self.store.set_ref(name, None, value)
            return True
        except RefChanged:
            return False

    def delete_job_record(self, name: str, value: bytes) -> bool:
        """Delete a job record that still holds ``value``; False when it is gone already."""
        self._check_job_record(name)
        try:
            self.store.set_ref(name, value, None)
            return True
        except RefChanged:
            return False

    @staticmethod
    def _check_job_record(name: str) -> None:
        if not name.startswith(JOB_RECORDS):
            raise ValueError(f"not a job record name: {name!r}")

    def all_refs(self) -> Iterator[tuple[str, bytes]]:
        yield from self.store.list_refs("")

    def create_branch(self, repo: str, branch: str, head: bytes | None) -> None:
        try:
            self.store.set_ref(branch_ref(repo, branch), None, encode_head(head))
        except RefChanged:
            raise AlreadyExists(f"branch {repo}@{branch} already exists") from None

    def move_branch(
        self, repo: str, branch: str, expected: bytes | None, new: bytes | None
    ) -> None:
        """Compare-and-swap the head: ``BranchMoved`` if it is not at ``expected``,
        ``NotFound`` if the branch is gone."""
        name = branch_ref(repo, branch)
        try:
            self.store.set_ref(name, encode_head(expected), encode_head(new))
        except RefChanged:
            now = self.store.get_ref(name)
            if now is None:
                raise NotFound(f"branch {repo}@{branch} was deleted meanwhile") from None
            raise BranchMoved(
                f"branch {repo}@{branch} moved (now at {now.decode()[:12] or 'nothing'}, "
                f"expected {to_hex(expected)[:12] if expected else 'nothing'}); "
                "nothing was committed"
            ) from None

    def set_branch(
        self, repo: str, branch: str, exists: bool, expected: bytes | None, new: bytes | None
    ) -> None:
        """Create (``exists`` False) or move a branch to ``new``; ``RefChanged`` when it is not
        as expected (a copy from another store: the caller says what that means)."""
        self.store.set_ref(
            branch_ref(repo, branch), encode_head(expected) if exists else None, encode_head(new)
        )

    def delete_branch(self, repo: str, branch: str, expected: bytes | None) -> None:
        try:
            self.store.set_ref(branch_ref(repo, branch), encode_head(expected), None)
        except RefChanged:
            raise BranchMoved(
                f"branch {repo}@{branch} moved while deleting it; try again"
            ) from None
