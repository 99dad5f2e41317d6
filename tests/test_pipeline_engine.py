"""The pipeline engine through its Python API, with real runs (local runner in bubblewrap,
podman for a failure case): incremental datums, reprocessing, deleted datums, collisions,
retries, timeouts, a full disk, interrupted jobs, gc, chained pipelines and lineage."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pfsfs import maintenance
from pfsfs.changes import ChangeSet
from pfsfs.errors import NotFound
from pfsfs.ids import to_hex
from pfsfs.pipeline.engine import Engine, EngineOptions, jobs_dir
from pfsfs.pipeline.lineage import Node, downstream, upstream, wait_status, why
from pfsfs.pipeline.scheduler import run_pending
from pfsfs.pipeline.spec import parse_spec_dict
from pfsfs.pipeline.state import (
    JobRecord,
    PipelineState,
    create_pipeline,
    new_job_id,
    update_pipeline,
)
from pfsfs.repository import Repository
from pfsfs.transfer import ingest_stream

from .pipeline_fixtures import build_images, ensure_bwrap, require_root


@pytest.fixture(scope="module")
def bwrap() -> str:
    require_root()
    return ensure_bwrap()


@pytest.fixture
def repo(tmp_path: Path, bwrap: str) -> Iterator[Repository]:
    r = Repository.open(tmp_path / "home")
    r.create_repo("data")
    try:
        yield r
    finally:
        r.close()


def put(repo: Repository, files: dict[str, bytes | None], name: str = "data") -> str:
    """One commit: write (bytes) or delete (None) each path."""
    changes = ChangeSet()
    with repo.writer() as w:
        for path, content in files.items():
            if content is None:
                changes.delete(path)
            else:
                changes.put(path, ingest_stream(io.BytesIO(content), w, repo.chunker()))
        return to_hex(repo.commit(name, "master", changes, "test", writer=w))


def spec(name: str = "copy", cmd: str = "cp -r /pfs/data/. /pfs/out/", **extra: Any) -> Any:
    d: dict[str, Any] = {
        "pipeline": {"name": name},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", cmd]},
        "runner": "local",
    }
    d.update(extra)
    return parse_spec_dict(d)


def run(repo: Repository, *names: str, **options: Any) -> list[JobRecord]:
    engine = Engine(repo, EngineOptions(**options))
    return trio.run(lambda: run_pending(engine, list(names) or None))


def only_job(repo: Repository, *names: str, **options: Any) -> JobRecord:
    jobs = run(repo, *names, **options)
    assert len(jobs) == 1, jobs
    return jobs[0]


def files(repo: Repository, name: str, ref: str = "master") -> dict[str, bytes]:
    head = repo.resolve(f"{name}@{ref}").commit
    return {
        p.decode(): b"".join(repo.iter_file(e))
        for p, e in repo.walk(repo.root_of(head))
        if e.type == "f"
    }


def head(repo: Repository, name: str) -> bytes | None:
    return repo.branch_head(name, "master")


def test_incremental_datums_and_provenance(repo: Repository) -> None:
    first = put(repo, {f"/f{i}.txt": f"file {i}\n".encode() for i in range(6)})
    create_pipeline(
        repo, spec(cmd="for f in /pfs/data/*; do tr a-z A-Z < $f > /pfs/out/${f##*/}; done")
    )
    job = only_job(repo)
    assert job.state == "success", job.reason
    assert job.counts == {"total": 6, "processed": 6, "skipped": 0, "failed": 0}
    assert files(repo, "copy")["/f3.txt"] == b"FILE 3\n"
    c1 = repo.read_commit(bytes.fromhex(job.output or ""))
    assert c1.provenance["pipeline"] == "copy" and c1.provenance["job"] == job.id
    assert c1.provenance["inputs"] == [{"repo": "data", "branch": "master", "commit": first}]

    second = put(repo, {"/f2.txt": b"changed\n"})
    job2 = only_job(repo)
    assert job2.counts == {"total": 6, "processed": 1, "skipped": 5, "failed": 0}
    out = files(repo, "copy")
    assert out["/f2.txt"] == b"CHANGED\n" and out["/f5.txt"] == b"FILE 5\n"
    c2 = repo.read_commit(head(repo, "copy") or b"")
    assert c2.parents == (bytes.fromhex(job.output or ""),)
    assert c2.provenance["inputs"][0]["commit"] == second
    states = {d.desc: d.state for d in PipelineState(repo.index).datums_of(job2.id)}
    assert states["data:/f2.txt"] == "processed" and states["data:/f1.txt"] == "skipped"
    # Nothing new: no job; the datum directories are gone, the logs stay.
    assert run(repo) == []
    assert not (jobs_dir(repo.home) / job2.id / "datums").exists()
    assert (jobs_dir(repo.home) / job2.id / "logs").is_dir()


def test_changed_transform_or_reprocess_runs_everything(repo: Repository) -> None:
    put(repo, {f"/f{i}": b"x" for i in range(4)})
    create_pipeline(repo, spec())
    assert only_job(repo).counts["processed"] == 4
    rec, changed = update_pipeline(repo, spec(parallelism=2))  # not part of the datum hash
    assert changed and rec.version == 2
    job = only_job(repo)
    assert job.counts["skipped"] == 4 and job.version == 2
    update_pipeline(
        repo, spec(cmd="cp -r /pfs/data/. /pfs/out/ && echo v2 > /pfs/out/$(ls /pfs/data)")
    )
    job = only_job(repo)
    assert job.counts["processed"] == 4
    assert files(repo, "copy")["/f1"] == b"v2\n"
    _, changed = update_pipeline(
        repo, spec(cmd="cp -r /pfs/data/. /pfs/out/ && echo v2 > /pfs/out/$(ls /pfs/data)")
    )
    assert not changed
    rec, changed = update_pipeline(
        repo,
        spec(cmd="cp -r /pfs/data/. /pfs/out/ && echo v2 > /pfs/out/$(ls /pfs/data)"),
        reprocess=True,
    )
    assert changed and rec.epoch == 1
    assert only_job(repo).counts["processed"] == 4


def test_deleted_datum_drops_its_output(repo: Repository) -> None:
    put(repo, {"/a/x": b"1", "/b/y": b"2", "/c": b"3"})
    create_pipeline(repo, spec())  # glob /*: datums /a, /b, /c; outputs keep the layout
    only_job(repo)
    assert set(files(repo, "copy")) == {"/a/x", "/b/y", "/c"}
    put(repo, {"/a": None})
    job = only_job(repo)
    assert job.state == "success" and job.counts["skipped"] == 2
    assert set(files(repo, "copy")) == {"/b/y", "/c"}
    root = repo.root_of(head(repo, "copy"))
    assert b"a" not in repo.list_dir(root)  # the emptied directory went too


def test_output_collision_fails_naming_both_datums(repo: Repository) -> None:
    put(repo, {"/one": b"1", "/two": b"2"})
    create_pipeline(repo, spec(cmd="cat /pfs/data/* > /pfs/out/same"))
    job = only_job(repo)
    assert job.state == "failure"
    assert "both write /same" in job.reason
    assert "data:/one" in job.reason and "data:/two" in job.reason
    assert head(repo, "copy") is None


def dirs(repo: Repository, name: str) -> dict[str, tuple[int, int]]:
    """Every directory of ``name@master``: ``(mode, mtime_ns)``."""
    root = repo.root_of(head(repo, name))
    return {p.decode(): (e.mode, e.mtime_ns) for p, e in repo.walk(root) if e.is_dir}


# Each datum (/one holds "1", /two "2") makes /shared/$n and /shared/empty-$n, sets the mode of
# /shared (MODE_ONE for datum 1, 0755 for datum 2) and its mtime to $n000000000 s.
SHARED = (
    "n=$(cat /pfs/data/*); mkdir -p /pfs/out/shared/empty-$n; echo $n > /pfs/out/shared/$n; "
    'if [ "$n" = 1 ]; then chmod MODE_ONE /pfs/out/shared; else chmod 755 /pfs/out/shared; fi; '
    "touch -d @${n}000000000 /pfs/out/shared"
)


def test_a_directory_several_datums_write_has_their_mode_and_the_latest_mtime(
    repo: Repository,
) -> None:
    put(repo, {"/one": b"1", "/two": b"2"})
    create_pipeline(repo, spec(cmd=SHARED.replace("MODE_ONE", "755")))
    job = only_job(repo)
    assert job.state == "success", job.reason
    got = dirs(repo, "copy")
    assert got["/shared"] == (0o755, 2_000_000_000 * 10**9)  # the latest of the two
    assert set(got) == {"/shared", "/shared/empty-1", "/shared/empty-2"}
    assert set(files(repo, "copy")) == {"/shared/1", "/shared/2"}

    before = head(repo, "copy")
    update_pipeline(repo, spec(cmd=SHARED.replace("MODE_ONE", "700")))
    job = only_job(repo)
    assert job.state == "failure"
    assert "create directory /shared with different metadata" in job.reason, job.reason
    assert "mode 0700" in job.reason and "mode 0755" in job.reason
    assert "data:/one" in job.reason and "data:/two" in job.reason
    assert head(repo, "copy") == before


def test_a_rerun_datum_replaces_its_directories(repo: Repository) -> None:
    # Each datum makes /$n/empty, /common/$n-dir (empty) and /common/$n-file ($n: its content).
    cmd = (
        "n=$(cat /pfs/data/*); mkdir -p /pfs/out/$n/empty /pfs/out/common/$n-dir; "
        "echo > /pfs/out/common/$n-file; chmod 700 /pfs/out/$n"
    )
    put(repo, {"/a": b"x", "/b": b"y"})
    create_pipeline(repo, spec(cmd=cmd))
    assert only_job(repo).state == "success"
    both = {"/common", "/common/x-dir", "/common/y-dir", "/x", "/x/empty", "/y", "/y/empty"}
    assert set(dirs(repo, "copy")) == both
    assert dirs(repo, "copy")["/x"][0] == 0o700

    put(repo, {"/a": b"z"})  # datum /a runs again; /b is reused from the cache, its dirs too
    job = only_job(repo)
    assert job.state == "success" and job.counts["skipped"] == 1, job.counts
    after = {"/common", "/common/y-dir", "/common/z-dir", "/y", "/y/empty", "/z", "/z/empty"}
    assert set(dirs(repo, "copy")) == after
    assert dirs(repo, "copy")["/z"][0] == 0o700
    assert set(files(repo, "copy")) == {"/common/y-file", "/common/z-file"}

    put(repo, {"/b": None})  # only /a is left: what only /b made goes, /common stays
    assert only_job(repo).state == "success"
    assert set(dirs(repo, "copy")) == {"/common", "/common/z-dir", "/z", "/z/empty"}

    put(repo, {"/a": None})  # nothing left: an empty output commit
    assert only_job(repo).state == "success"
    assert dirs(repo, "copy") == {} and files(repo, "copy") == {}


def test_failing_datum_is_retried_then_fails_the_job(repo: Repository) -> None:
    put(repo, {"/good": b"ok", "/bad": b"boom"})
    create_pipeline(
        repo,
        spec(
            cmd="echo reading $(ls /pfs/data); echo oops >&2; grep -q boom /pfs/data/* && exit 1; "
            "cp /pfs/data/* /pfs/out/",
            datum_tries=2,
        ),
    )
    job = only_job(repo)
    assert job.state == "failure" and job.counts["failed"] == 1
    assert "data:/bad" in job.reason and "exit code 1" in job.reason
    assert head(repo, "copy") is None  # no commit at all
    state = PipelineState(repo.index)
    bad = next(d for d in state.datums_of(job.id) if d.desc == "data:/bad")
    assert bad.state == "failed" and bad.attempts == 2
    logs = jobs_dir(repo.home) / job.id / bad.logs
    assert (logs / "try-1" / "stdout.log").read_text() == "reading bad\n"
    assert (logs / "try-2" / "stderr.log").read_text() == "oops\n"
    # The next input commit starts a fresh job; the good datum's output is reused.
    put(repo, {"/bad": b"fixed"})
    job2 = only_job(repo)
    assert job2.state == "success" and job2.counts["skipped"] == 1
    assert files(repo, "copy") == {"/good": b"ok", "/bad": b"fixed"}


def test_timeout_kills_the_datum(repo: Repository) -> None:
    put(repo, {"/slow": b"z"})
    create_pipeline(repo, spec(cmd="sleep 60", datum_timeout="1s", datum_tries=1))
    start = time.monotonic()
    job = only_job(repo)
    assert time.monotonic() - start < 20
    assert job.state == "failure" and "timed out" in job.reason
    assert head(repo, "copy") is None


def test_a_transform_filling_the_disk_is_stopped(repo: Repository) -> None:
    put(repo, {"/x": b"z"})
    create_pipeline(repo, spec(cmd="yes pfsfs > /pfs/out/big", datum_tries=3))
    free = shutil.disk_usage(repo.home).free
    job = only_job(repo, min_free_bytes=free - (64 << 20), watch_interval=0.1)
    assert job.state == "failure" and "disk is nearly full" in job.reason, job.reason
    rec = PipelineState(repo.index).datums_of(job.id)[0]
    assert rec.attempts == 1  # stopped, not retried
    assert not (jobs_dir(repo.home) / job.id / "datums" / rec.id[:16]).exists()
    # The same with a per-datum output limit.
    update_pipeline(repo, spec(cmd="yes limit > /pfs/out/big", datum_tries=3))
    job = only_job(repo, max_datum_output=1 << 20, watch_interval=0.1)
    assert job.state == "failure" and "over the limit" in job.reason


def test_interrupted_job_runs_again_without_partial_commits(repo: Repository) -> None:
    commit = put(repo, {"/a": b"1", "/b": b"2"})
    rec = create_pipeline(repo, spec())
    state = PipelineState(repo.index)
    # A job some process started and never finished (it died): "running", lock free.
    job = JobRecord(
        new_job_id(),
        "copy",
        rec.hash,
        rec.version,
        rec.epoch,
        [{"repo": "data", "branch": "master", "commit": commit}],
        state="running",
    )
    state.put_job(job)
    again = only_job(repo)
    assert again.id == job.id and again.restarts == 1 and again.state == "success"
    assert len(list(repo.log(head(repo, "copy")))) == 1
    assert run(repo) == []


def test_gc_between_jobs_keeps_reusable_outputs(repo: Repository) -> None:
    put(repo, {f"/f{i}": f"{i}".encode() * 1000 for i in range(3)})
    create_pipeline(repo, spec())
    only_job(repo)
    maintenance.gc(repo)
    put(repo, {"/f0": b"new"})
    job = only_job(repo)
    assert job.counts["skipped"] == 2
    assert files(repo, "copy")["/f1"] == b"1" * 1000
    assert maintenance.fsck(repo, deep=True) == []
    assert repo.index.gc_roots() == ([], [])  # the job released its roots


def test_chained_pipelines_and_lineage(repo: Repository) -> None:
    c = put(repo, {"/a.txt": b"hello\n", "/b.txt": b"bye\n"})
    create_pipeline(
        repo, spec("upper", "for f in /pfs/data/*; do tr a-z A-Z < $f > /pfs/out/${f##*/}; done")
    )
    count = {
        "pipeline": {"name": "count"},
        "input": {
            "cross": [
                {"pfs": {"repo": "upper", "glob": "/"}},
                {"pfs": {"repo": "data", "glob": "/", "name": "orig"}},
            ]
        },
        "transform": {"cmd": ["sh", "-c", "cat /pfs/upper/* /pfs/orig/* | wc -l > /pfs/out/lines"]},
        "runner": "local",
    }
    create_pipeline(repo, parse_spec_dict(count))
    start = Node("data", c, "master")
    state = PipelineState(repo.index)
    assert set(wait_status(repo, state, start).waiting) == {"upper", "count"}
    jobs = run(repo)  # DAG order: upper, then count
    assert [j.pipeline for j in jobs] == ["upper", "count"]
    assert files(repo, "count") == {"/lines": b"4\n"}
    status = wait_status(repo, state, start)
    assert status.done and {n.repo for n in status.outputs} == {"upper", "count"}
    out = Node("count", to_hex(head(repo, "count") or b""))
    ups = upstream(repo, out)
    assert {(e.src.repo, e.src.commit) for e in ups} >= {("data", c)}
    assert {e.pipeline for e in ups} == {"upper", "count"}
    downs = downstream(repo, start)
    assert {e.dst.repo for e in downs} == {"upper", "count"}
    w = why(repo, state, Node("upper", to_hex(head(repo, "upper") or b"")), "/b.txt")
    assert [d["desc"] for d in w["datums"]] == ["data:/b.txt"]
    assert w["datums"][0]["inputs"][0]["commit"] == c
    with pytest.raises(NotFound):
        why(repo, state, Node("upper", to_hex(head(repo, "upper") or b"")), "/nope")


def test_podman_failure_keeps_logs_and_branch(repo: Repository) -> None:
    build_images("busybox")
    put(repo, {"/x": b"1"})
    d = {
        "pipeline": {"name": "pod"},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"image": "pfsfs/busybox", "cmd": ["sh", "-c", "echo in-container; exit 3"]},
        "datum_tries": 1,
    }
    create_pipeline(repo, parse_spec_dict(d))
    job = only_job(repo)
    assert job.state == "failure" and "exit code 3" in job.reason
    assert head(repo, "pod") is None
    rec = PipelineState(repo.index).datums_of(job.id)[0]
    assert (jobs_dir(repo.home) / job.id / rec.logs / "try-1" / "stdout.log").read_text() == (
        "in-container\n"
    )


def test_scheduler_hosted_in_a_trio_program(repo: Repository) -> None:
    """How the mount daemon hosts it: nursery.start, sharing the open Repository."""
    import functools

    from pfsfs.pipeline.scheduler import Scheduler, run_scheduler, scheduler_pid

    put(repo, {"/a": b"1"})
    create_pipeline(repo, spec())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            sched = await nursery.start(
                functools.partial(run_scheduler, repo.home, poll_interval=0.05, repository=repo)
            )
            assert isinstance(sched, Scheduler) and scheduler_pid(repo.home) is not None
            with trio.fail_after(30):
                while head(repo, "copy") is None:
                    await trio.sleep(0.05)
                put(repo, {"/b": b"2"})  # a new commit: the next job, by itself
                while set(files(repo, "copy")) != {"/a", "/b"}:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert scheduler_pid(repo.home) is None
    jobs = PipelineState(repo.index).jobs_of("copy")
    assert [j.state for j in jobs] == ["success", "success"]
