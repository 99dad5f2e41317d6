"""Datum records of Kubernetes jobs are part of the store: fsck accepts them, gc keeps the
objects they name (a pod's sidecar stored those from its own home; until the scheduler commits
them, the record is the only thing that holds them), and they leave the bucket once they are
done with (``pfsfs.k8s.retention``): after the job's commit, when a later job supersedes a
failed one or a failed one's retention ends, with ``pfsfs pipeline delete``, and at the next
scheduler start after a crash between commit and cleanup."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pfsfs.changes import ChangeSet
from pfsfs.errors import PfsError
from pfsfs.k8s import protocol, retention
from pfsfs.maintenance import fsck, gc
from pfsfs.model import Locator
from pfsfs.pipeline.state import FAILURE, KILLED, RUNNING, SUCCESS, JobRecord, PipelineState
from pfsfs.refs import JOB_RECORDS
from pfsfs.repository import Repository

from .fusehelpers import PFSFS
from .store_backends import memory_repository

DAY_NS = 86400 * 10**9


def test_gc_keeps_what_datum_records_name_and_fsck_accepts_them(tmp_path: Path) -> None:
    repo = memory_repository(tmp_path)
    try:
        with repo.writer() as w:  # two sessions: two packs (or blobs), one each
            kept = w.put_chunk(b"output of a datum " * 1000)
        with repo.writer() as w:
            gone = w.put_chunk(b"unreferenced " * 1000)
        record = protocol.Record("job1", "d1", "h", outputs=[], locs=[kept.to_wire()])
        protocol.put_record(repo.store, record)
        gc(repo, grace=0)
        assert repo.reader.read_raw(kept) == b"output of a datum " * 1000
        with pytest.raises(PfsError):  # gc did run: what nothing names is gone
            repo.reader.read_raw(gone)
        assert fsck(repo) == []
    finally:
        repo.close()


def _plan(job_id: str) -> protocol.Plan:
    return protocol.Plan(job_id, "p", protocol.FUSE, 1, (protocol.PlanDatum("d1", "h", "/", ()),))


def _records(repo: Repository, job_id: str, text: bytes) -> Locator:
    """A plan and one datum record naming a blob of its own; the blob."""
    with repo.writer() as w:
        loc = w.put_chunk(text * 1000)
    protocol.put_plan(repo.store, _plan(job_id))
    protocol.put_record(repo.store, protocol.Record(job_id, "d1", "h", [], [loc.to_wire()]))
    return loc


def _job(
    state: PipelineState, job_id: str, st: str, age_days: float, pipeline: str, **kw: object
) -> None:
    now = time.time_ns()
    job = JobRecord(job_id, pipeline, "spec", 1, 0, [], state=st, **kw)  # type: ignore[arg-type]
    job.created_ns = now - int(age_days * DAY_NS) - 1000
    job.finished_ns = now - int(age_days * DAY_NS) if st != RUNNING else 0
    state.put_job(job)


def test_sweep_deletes_only_the_records_of_jobs_done_with(tmp_path: Path) -> None:
    repo = memory_repository(tmp_path)
    try:
        state = PipelineState(repo.index)
        blobs: dict[str, Locator] = {}
        cases = {  # pipeline p: killed, then committed, then failed, then running
            "killed-superseded": (KILLED, 3.0, "p", {}),
            "committed": (SUCCESS, 2.0, "p", {"output": "ab" * 32}),
            "failed-recent": (FAILURE, 1.0, "p", {}),
            "running": (RUNNING, 0.0, "p", {}),
            "failed-old": (FAILURE, 8.0, "q", {}),  # no later commit, past the retention
        }
        for job_id, (st, age, pipeline, extra) in cases.items():
            _job(state, job_id, st, age, pipeline, **extra)
            blobs[job_id] = _records(repo, job_id, job_id.encode())
        blobs["unknown"] = _records(repo, "unknown", b"unknown")  # another scheduler's job
        assert retention.jobs_with_records(repo.store) == set(blobs)
        done = retention.sweep(repo.store, state)
        assert sorted(done) == ["committed", "failed-old", "killed-superseded"]
        left = {name.split("/")[2] for name, _ in repo.store.list_refs(JOB_RECORDS)}
        assert left == {"failed-recent", "running", "unknown"}
        assert not any(True for _ in repo.store.list_refs(f"{JOB_RECORDS}committed/"))

        gc(repo, grace=0)
        for job_id, loc in blobs.items():
            if job_id in done:
                with pytest.raises(PfsError):  # nothing names it any more: collected
                    repo.reader.read_raw(loc)
            else:
                assert repo.reader.read_raw(loc) == job_id.encode() * 1000
        assert fsck(repo, deep=True) == []
        assert retention.sweep(repo.store, state) == []  # nothing more to do
    finally:
        repo.close()


# -- through the CLI: a crash between commit and cleanup, pipeline delete ----------------------


def _cli(home: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [PFSFS, "--home", str(home), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _k8s_pipeline(tmp_path: Path, home: Path) -> None:
    (tmp_path / "in.txt").write_text("apple 3\n")
    _cli(home, "repo", "create", "data")
    _cli(home, "put", "data@master:/in.txt", "-f", str(tmp_path / "in.txt"))
    spec = {
        "pipeline": {"name": "sum"},
        "input": {"pfs": {"repo": "data", "glob": "/"}},
        "transform": {"image": "pfsfs/busybox", "cmd": ["true"]},
        "runner": "kubernetes",
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    _cli(home, "pipeline", "create", "-f", str(tmp_path / "spec.yaml"))


def _record_keys(repo: Repository) -> set[str]:
    return {name for name, _ in repo.store.list_refs(JOB_RECORDS)}


def test_a_crash_between_commit_and_cleanup_is_swept_at_the_next_start(tmp_path: Path) -> None:
    """The scheduler died after its output commit landed and before it recorded the job's
    success and deleted the records: the next `pfsfs pipeline run` finds the commit, calls the
    job a success and deletes its records; a job that has not committed keeps its own."""
    home = tmp_path / "home"
    _k8s_pipeline(tmp_path, home)
    repo = Repository.open(home)
    try:
        state = PipelineState(repo.index)
        rec = state.pipeline("sum")
        head = repo.branch_head("data", "master")
        assert head is not None
        inputs = [{"repo": "data", "branch": "master", "commit": head.hex()}]
        job = JobRecord("0" * 14 + "a" * 10, "sum", rec.hash, rec.version, rec.epoch, inputs)
        job.state, job.created_ns, job.started_ns = RUNNING, time.time_ns(), time.time_ns()
        state.put_job(job)
        # what the scheduler had done before it died: plan, record, then the commit
        with repo.writer() as w:
            loc = w.put_chunk(b"3\n" * 1000)
        protocol.put_plan(repo.store, _plan(job.id))
        protocol.put_record(repo.store, protocol.Record(job.id, "d1", "h", [], [loc.to_wire()]))
        changes = ChangeSet()
        repo.commit(
            "sum",
            "master",
            changes,
            "job output",
            provenance={"pipeline": "sum", "job": job.id},
            allow_empty=True,
            pipeline="sum",
        )
        other = _records(repo, "f" * 24, b"a job of another scheduler")  # not ours: kept
        assert len(_record_keys(repo)) == 4
    finally:
        repo.close()

    out = _cli(home, "pipeline", "run").stdout
    assert f"job {job.id} of sum: success" in out
    repo = Repository.open(home)
    try:
        assert _record_keys(repo) == {
            protocol.plan_key("f" * 24),
            protocol.record_key("f" * 24, "d1"),
        }
        gc(repo, grace=0)
        assert repo.reader.read_raw(other) == b"a job of another scheduler" * 1000
        assert fsck(repo, deep=True) == []
    finally:
        repo.close()

    # pipeline delete removes the records of its jobs (a failed one keeps them until then)
    repo = Repository.open(home)
    try:
        state = PipelineState(repo.index)
        rec = state.pipeline("sum")  # the same trigger as the job before: nothing new to run
        failed = JobRecord("1" * 24, "sum", rec.hash, rec.version, rec.epoch, inputs)
        failed.state = FAILURE
        failed.created_ns = failed.finished_ns = time.time_ns()
        state.put_job(failed)
        _records(repo, failed.id, b"a failed job's datum")
    finally:
        repo.close()
    _cli(home, "pipeline", "run")  # the failed job is recent and not superseded: kept
    repo = Repository.open(home)
    try:
        assert protocol.plan_key(failed.id) in _record_keys(repo)
    finally:
        repo.close()
    _cli(home, "pipeline", "delete", "sum", "--force")
    repo = Repository.open(home)
    try:
        assert {k.split("/")[2] for k in _record_keys(repo)} == {"f" * 24}
    finally:
        repo.close()


def test_job_records_are_create_once_and_only_under_their_namespace() -> None:
    from pfsfs.refs import Refs
    from pfsfs.store.memory import MemoryObjectStore

    refs = Refs(MemoryObjectStore())
    name = f"{JOB_RECORDS}j1/datums/d1"
    assert refs.create_job_record(name, b"first")
    assert not refs.create_job_record(name, b"second")  # an earlier attempt's record stays
    assert dict(refs.job_records()) == {name: b"first"}
    assert not refs.delete_job_record(name, b"second")  # not the value it holds
    assert refs.delete_job_record(name, b"first")
    assert not refs.delete_job_record(name, b"first")  # gone already
    with pytest.raises(ValueError, match="not a job record"):
        refs.create_job_record("branches/r/master", b"")


def _dirs_of(repo: Repository, commit: bytes) -> dict[bytes, int]:
    return {p: e.mode for p, e in repo.walk(repo.root_of(commit)) if e.is_dir}


def test_datum_records_carry_directories_and_old_records_still_read(tmp_path: Path) -> None:
    """A sidecar's record holds the directories of ``/pfs/out`` (empty ones, modes) as it holds
    its files; a record written before that (files only) still reads, its directories implied
    by the paths, as they were."""
    from pfsfs.pipeline.engine import merge_outputs, output_changes
    from pfsfs.pipeline.state import DatumRecord

    out = tmp_path / "out"
    (out / "keep" / "empty").mkdir(parents=True)
    (out / "keep" / "f").write_bytes(b"x")
    (out / "keep").chmod(0o700)
    repo = memory_repository(tmp_path)
    try:
        repo.create_repo("new")
        repo.create_repo("old")
        datum = protocol.PlanDatum("d1", "h", "/", ())
        protocol.store_datum(repo, "job1", datum, out)
        record = protocol.get_record(repo.store, "job1", "d1")
        assert record is not None
        kinds = {p: e.type for p, e, _ in record.entries()}
        assert kinds == {b"/keep": "d", b"/keep/empty": "d", b"/keep/f": "f"}
        old = protocol.Record.from_wire(
            {**record.to_wire(), "outputs": [w for w in record.outputs if w[1] != "d"]}
        )
        records = {"d1": DatumRecord(id="d1", state="processed", hash="h", desc="data:/")}
        for name, rec in (("new", record), ("old", old)):
            desired = merge_outputs({"d1": rec.entries()}, records)
            commit = repo.commit(name, "master", output_changes(repo, None, desired), "m")
            assert commit is not None
            modes = _dirs_of(repo, commit)
            if name == "new":
                empty = (out / "keep" / "empty").stat().st_mode & 0o7777  # as the umask made it
                assert modes == {b"/keep": 0o700, b"/keep/empty": empty}
            else:
                assert modes == {b"/keep": 0o755}  # implied: the default
    finally:
        repo.close()
