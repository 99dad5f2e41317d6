"""``pfsfs.ops``: put, branch creation on first write, refresh and pipeline deletion as
library calls, on the memory twin (the CLI tests cover the same through processes)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pfsfs.errors import Conflict, InvalidInput, NotFound, ReadOnly
from pfsfs.ops.branches import ensure_branch, names_commit
from pfsfs.ops.pipelines import check_delete, delete_pipeline, set_pipeline_state
from pfsfs.ops.put import put, resolve_target
from pfsfs.ops.refresh import refresh
from pfsfs.pipeline.engine import jobs_dir
from pfsfs.pipeline.spec import parse_spec_dict
from pfsfs.pipeline.state import RUNNING, STOPPED, JobRecord, PipelineState, create_pipeline
from pfsfs.refspec import parse_ref
from pfsfs.repository import Repository

from .store_backends import memory_repository


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    with memory_repository(tmp_path) as r:
        r.create_repo("r")
        yield r


def read(repo: Repository, ref: str) -> bytes:
    r = repo.resolve(ref)
    return b"".join(repo.iter_file(repo.lookup(repo.root_of(r.commit), r.path)))


def test_put_a_tree_then_again_makes_one_commit(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(b"alpha")
    (src / "d" / "b").write_bytes(b"beta")
    target = resolve_target(repo, "r@master:/in/", str(src))
    assert (target.dest, target.shown, target.contents) == ((b"in", b"src"), "/in/src", False)
    seen: list[int] = []
    first = put(repo, target, recursive=True, progress=lambda total: _counting(total, seen))
    assert first.commit_id == repo.branch_head("r", "master") and first.count == 2
    assert sum(seen) == 9  # every byte read was reported
    assert read(repo, "r@master:/in/src/d/b") == b"beta"
    again = put(repo, target, recursive=True)
    assert again.commit_id is None  # nothing changed: no commit
    assert repo.read_commit(first.commit_id).message == "put /in/src"


def _counting(total: int, seen: list[int]) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def bar() -> Iterator[Any]:
        yield seen.append

    return bar()


def test_put_from_stdin_creates_the_branch_and_says_from_where(repo: Repository) -> None:
    target = resolve_target(repo, "r@new:/x", "-")
    created: list[str] = []
    result = put(
        repo,
        target,
        recursive=False,
        message="m",
        stdin=io.BytesIO(b"data"),
        on_branch_created=created.append,
    )
    assert created == ["r@master (no commits yet)"]
    assert result.count == 1 and read(repo, "r@new:/x") == b"data"


def test_put_targets_refused_before_reading(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    commit = put(repo, resolve_target(repo, "r@master:/f", str(tmp_path / "f")), recursive=False)
    assert commit.commit_id is not None
    prefix = commit.commit_id.hex()[:8]
    with pytest.raises(InvalidInput, match="not a commit"):
        resolve_target(repo, f"r@{prefix}:/g", str(tmp_path / "f"))
    with pytest.raises(InvalidInput, match="branch head"):
        resolve_target(repo, "r@master~1:/g", str(tmp_path / "f"))
    with pytest.raises(InvalidInput, match="root itself"):
        resolve_target(repo, "r@master:/.", str(tmp_path / "f"))
    with pytest.raises(NotFound):
        resolve_target(repo, "r@master:/g", str(tmp_path / "missing"))
    with pytest.raises(NotFound):
        resolve_target(repo, "nope@master:/g", str(tmp_path / "f"))


def test_an_output_repo_refuses_put_and_branch_creation(repo: Repository, tmp_path: Path) -> None:
    repo.create_repo("out", output_of="p")
    (tmp_path / "f").write_bytes(b"x")
    target = resolve_target(repo, "out@side:/f", str(tmp_path / "f"))
    with pytest.raises(ReadOnly):
        put(repo, target, recursive=False)
    with pytest.raises(ReadOnly):
        ensure_branch(repo, "out", "other")
    assert set(repo.list_branches("out")) == {"master"}
    assert ensure_branch(repo, "out", "other", pipeline="p") is not None  # the capability


def test_names_commit(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    cid = put(repo, resolve_target(repo, "r@master:/f", str(tmp_path / "f")), recursive=False)
    assert cid.commit_id is not None
    assert names_commit(repo, parse_ref(f"r@{cid.commit_id.hex()[:6]}"))
    assert not names_commit(repo, parse_ref("r@abcdef"))  # hex, but no such commit
    assert not names_commit(repo, parse_ref(f"r@{cid.commit_id.hex()[:5]}"))  # too short
    assert not names_commit(repo, parse_ref("r@master"))


def test_refresh_reports_heads_and_forgets_vanished_objects(
    repo: Repository, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"content of f")
    result = put(repo, resolve_target(repo, "r@master:/f", str(tmp_path / "f")), recursive=False)
    assert result.commit_id is not None
    report = refresh(repo)
    assert report.heads == {"r@master": result.commit_id.hex()}
    assert (report.commits, report.stale) == (1, 0)
    for info in list(repo.store.list("pack/")) + list(repo.store.list("chunk/")):
        repo.store.delete(info.key)  # as another machine's gc would
    assert refresh(repo, ["r"]).stale > 0
    assert refresh(repo, ["r"]).stale == 0
    with pytest.raises(NotFound):
        refresh(repo, ["nope"])


def _spec(name: str, repo: str) -> Any:
    return parse_spec_dict(
        {
            "pipeline": {"name": name},
            "input": {"pfs": {"repo": repo, "glob": "/"}},
            "transform": {"cmd": ["true"]},
            "runner": "local",
        }
    )


def test_delete_pipeline_with_and_without_its_repo(repo: Repository) -> None:
    create_pipeline(repo, _spec("p", "r"))
    create_pipeline(repo, _spec("q", "p"))
    with pytest.raises(Conflict, match="pipeline q reads repo p"):
        check_delete(repo, "p", keep_repo=False)
    check_delete(repo, "p", keep_repo=True)
    with pytest.raises(NotFound):
        check_delete(repo, "nope", keep_repo=True)
    state = PipelineState(repo.index)
    state.put_job(JobRecord("j1", "q", "h", 1, 0, []))
    job_dir = jobs_dir(repo.home) / "j1"
    (job_dir / "logs").mkdir(parents=True)
    delete_pipeline(repo, "q", keep_repo=False)
    assert state.get_pipeline("q") is None and state.get_job("j1") is None
    assert not job_dir.exists()
    assert "q" not in {r.name for r in repo.list_repos()}
    delete_pipeline(repo, "p", keep_repo=True)
    assert "p" in {r.name for r in repo.list_repos()}


def test_stop_and_start_a_pipeline(repo: Repository) -> None:
    create_pipeline(repo, _spec("p", "r"))
    assert set_pipeline_state(repo, "p", STOPPED)
    assert not set_pipeline_state(repo, "p", STOPPED)  # already
    assert PipelineState(repo.index).pipeline("p").state == STOPPED
    assert set_pipeline_state(repo, "p", RUNNING)
    with pytest.raises(NotFound):
        set_pipeline_state(repo, "nope", RUNNING)
