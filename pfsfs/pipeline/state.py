"""Pipeline, job and datum state, kept in the home's LMDB index.

This is the machine's own record of what the pipelines did; the commits (with their
provenance) in the object store stay the source of truth for the data itself.

Named databases (opened through ``Index.db``; values are msgpack via ``codec.pack_value``):

``pipelines``      utf-8 pipeline name → ``PipelineRecord`` as a map: ``spec`` (the normalised
                   spec dict, ``spec_to_dict``), ``hash`` (``spec_hash``), ``version`` (1, 2, …
                   bumped by every update), ``state`` (``running``/``stopped``), ``epoch``
                   (bumped by ``update --reprocess``: part of what triggers a job), times.
``jobs``           ascii job id → ``JobRecord`` map: pipeline, spec hash, version, epoch,
                   ``inputs`` (``[{repo, branch, commit}]`` sorted), ``state``
                   (``created``/``running``/``success``/``failure``/``killed``/``cancelled``),
                   ``reason``, ``counts`` (``total``/``processed``/``skipped``/``failed``),
                   ``output`` (commit hex or None), times, ``restarts``, ``pid`` of the
                   process running it, ``commitset`` and ``origins`` (see ``commitsets``),
                   ``warnings`` (from traced reads).
                   Job ids start with the creation time in hex, so they sort by age.
``pipeline_jobs``  pipeline + NUL + job id → b"". The jobs of one pipeline, oldest first.
``datums``         job id + NUL + datum id → ``DatumRecord`` map: ``state``
                   (``processed``/``skipped``/``failed``), ``hash``, ``attempts``, ``duration``,
                   ``error``, ``desc``, ``inputs`` (``[[name, repo, commit, path, content id]]``),
                   ``outputs`` (``[[path, content id, size]]`` of the files, symlinks and
                   empty directories written), ``logs`` (dir relative to the job dir),
                   ``from_job`` (the job that ran it, for a reused datum),
                   ``read`` (input files the transform opened) and ``trace`` (its status),
                   ``outside``/``outside_count``/``outside_trace`` (opens outside ``/pfs``).
``datum_cache``    pipeline + NUL + datum hash → ``{job, datum, outputs, locs}``: the output of a
                   datum that succeeded (``outputs``: entry wires named by their full path,
                   directories included; older entries hold files and symlinks only, their
                   directories implied by the paths; ``locs``: the chunk locators under
                   them, for gc roots). Written only after
                   the objects are durable. A hit is reused only if every locator is still in
                   the ``objects`` database (gc drops entries of what it deletes).

Invariants: every job id in ``pipeline_jobs`` and ``datums`` has a ``jobs`` record; deleting a
pipeline deletes its jobs, datums and cache entries.

``create_pipeline`` and ``update_pipeline`` are the one place pipelines get defined (checks
against the DAG and the repos, the read-only output repo), for the CLI and the daemon alike.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .. import codec
from ..errors import AlreadyExists, InvalidInput, NotFound
from ..index import Index
from .spec import (
    PipelineSpec,
    check_dag,
    code_paths,
    iter_pfs,
    parse_spec_dict,
    spec_hash,
    spec_to_dict,
)

if TYPE_CHECKING:
    from ..repository import Repository

log = logging.getLogger(__name__)

DATABASES = ("pipelines", "jobs", "pipeline_jobs", "datums", "datum_cache")

RUNNING, STOPPED = "running", "stopped"
CREATED, SUCCESS, FAILURE, KILLED = "created", "success", "failure", "killed"
#: A job whose process was interrupted (Ctrl-C, SIGTERM of ``pfsfs pipeline run``): nothing of
#: it was committed, and the next run processes its inputs again, as after ``killed``.
CANCELLED = "cancelled"
FINISHED = frozenset({SUCCESS, FAILURE, KILLED, CANCELLED})
PROCESSED, SKIPPED, FAILED = "processed", "skipped", "failed"
MIN_PREFIX = 4


def _from_map(cls: type, value: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in value.items() if k in names})


@dataclass
class PipelineRecord:
    name: str
    spec: dict[str, Any]
    hash: str
    version: int = 1
    state: str = RUNNING
    epoch: int = 0
    created_ns: int = 0
    updated_ns: int = 0


@dataclass
class JobRecord:
    id: str
    pipeline: str
    spec_hash: str
    version: int
    epoch: int
    inputs: list[dict[str, str]]
    state: str = CREATED
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    output: str | None = None
    created_ns: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    restarts: int = 0
    pid: int = 0
    commitset: str = ""
    """The commit set: the origin commit this job's run started from (see ``commitsets``)."""
    origins: dict[str, str] = field(default_factory=dict)
    """``"repo@branch"`` → the origin commits its inputs descend from."""
    warnings: list[str] = field(default_factory=list)
    """What the traced reads say about the transform (an input it never read...)."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def trigger_key(self) -> tuple[Any, ...]:
        """What the job was started for: equal keys, nothing new to process."""
        return trigger_key(self.inputs, self.spec_hash, self.epoch)

    def input_commit(self, repo: str, branch: str) -> str | None:
        for i in self.inputs:
            if i["repo"] == repo and i["branch"] == branch:
                return i["commit"]
        return None

    def duration(self) -> float | None:
        if not self.started_ns:
            return None
        end = self.finished_ns or time.time_ns()
        return (end - self.started_ns) / 1e9


def trigger_key(inputs: list[dict[str, str]], spec_hash: str, epoch: int) -> tuple[Any, ...]:
    """A code input (``transform.code``) counts by the digest of its declared files, not its
    commit: a commit that changes only other files of the code repo triggers nothing."""
    return (
        tuple(sorted((i["repo"], i["branch"], i.get("code") or i["commit"]) for i in inputs)),
        spec_hash,
        epoch,
    )


@dataclass
class DatumRecord:
    id: str
    state: str
    hash: str
    desc: str = ""
    attempts: int = 0
    duration: float = 0.0
    error: str = ""
    inputs: list[list[str]] = field(default_factory=list)
    outputs: list[list[Any]] = field(default_factory=list)
    logs: str = ""
    from_job: str = ""
    read: list[str] = field(default_factory=list)
    """The input files the transform opened (``/pfs/<name>/<path>``), from the trace."""
    trace: str = ""
    """``ok``, ``off`` (not traced) or why the trace is incomplete."""
    outside: list[str] = field(default_factory=list)
    """Paths outside ``/pfs`` the transform opened (see ``trace``; the first ``MAX_OUTSIDE``)."""
    outside_count: int = 0
    """How many distinct paths outside ``/pfs`` it opened."""
    outside_trace: str = ""
    """``ok``, ``off`` (not asked), ``not traced: why``, or "" (the runner cannot trace)."""


@dataclass
class CacheEntry:
    job: str
    datum: str
    outputs: list[list[Any]]
    locs: list[list[Any]]
    read: list[str] = field(default_factory=list)
    trace: str = ""
    outside: list[str] = field(default_factory=list)
    outside_count: int = 0
    outside_trace: str = ""


def new_job_id() -> str:
    """24 hex characters: creation time in µs (sorts by age), then randomness."""
    return f"{time.time_ns() // 1000:014x}{os.urandom(5).hex()}"


class PipelineState:
    """Typed access to the pipeline databases of one ``Index`` (safe from several threads:
    every method is one LMDB transaction)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._dbs = {name: index.db(name) for name in DATABASES}

    def _db(self, name: str) -> Any:
        return self._dbs[name]

    # -- pipelines ---------------------------------------------------------------------------
    def get_pipeline(self, name: str) -> PipelineRecord | None:
        with self.index.read() as txn:
            value = txn.get(name.encode(), db=self._db("pipelines"))
        return _from_map(PipelineRecord, codec.unpack_value(value)) if value else None

    def pipeline(self, name: str) -> PipelineRecord:
        rec = self.get_pipeline(name)
        if rec is None:
            raise NotFound(f"pipeline {name!r} does not exist")
        return rec

    def put_pipeline(self, rec: PipelineRecord) -> None:
        rec.updated_ns = time.time_ns()
        with self.index.write() as txn:
            txn.put(rec.name.encode(), codec.pack_value(asdict(rec)), db=self._db("pipelines"))

    def list_pipelines(self) -> list[PipelineRecord]:
        with self.index.read() as txn:
            return [
                _from_map(PipelineRecord, codec.unpack_value(v))
                for _k, v in self.index.scan(txn, "pipelines")
            ]

    def delete_pipeline(self, name: str) -> list[str]:
        """Delete the pipeline and its jobs, datum records and cache; returns the job ids."""
        jobs = self.job_ids(name)
        prefix = name.encode() + b"\0"
        with self.index.write() as txn:
            txn.delete(name.encode(), db=self._db("pipelines"))
            for job_id in jobs:
                txn.delete(job_id.encode(), db=self._db("jobs"))
                _delete_prefix(txn, self._db("datums"), job_id.encode() + b"\0")
            _delete_prefix(txn, self._db("pipeline_jobs"), prefix)
            _delete_prefix(txn, self._db("datum_cache"), prefix)
        return jobs

    # -- jobs --------------------------------------------------------------------------------
    def put_job(self, job: JobRecord) -> None:
        with self.index.write() as txn:
            txn.put(job.id.encode(), codec.pack_value(asdict(job)), db=self._db("jobs"))
            txn.put(
                job.pipeline.encode() + b"\0" + job.id.encode(), b"", db=self._db("pipeline_jobs")
            )

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.index.read() as txn:
            value = txn.get(job_id.encode(), db=self._db("jobs"))
        return _from_map(JobRecord, codec.unpack_value(value)) if value else None

    def find_job(self, prefix: str) -> JobRecord:
        """A job by id or unique id prefix (at least 4 characters)."""
        prefix = prefix.strip().lower()
        if len(prefix) < MIN_PREFIX:
            raise InvalidInput(f"job id {prefix!r} is too short (give at least {MIN_PREFIX})")
        found: list[str] = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self._db("jobs"))
            if cursor.set_range(prefix.encode()):
                for key in cursor.iternext(values=False):
                    if not bytes(key).startswith(prefix.encode()):
                        break
                    found.append(bytes(key).decode())
                    if len(found) > 5:
                        break
        if not found:
            raise NotFound(f"no job {prefix}")
        if len(found) > 1:
            raise InvalidInput(f"job id {prefix} is ambiguous: {', '.join(found[:5])}")
        job = self.get_job(found[0])
        assert job is not None
        return job

    def job_ids(self, pipeline: str) -> list[str]:
        """Job ids of a pipeline, oldest first."""
        prefix = pipeline.encode() + b"\0"
        out = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self._db("pipeline_jobs"))
            if cursor.set_range(prefix):
                for key in cursor.iternext(values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    out.append(bytes(key)[len(prefix) :].decode())
        return out

    def jobs_of(self, pipeline: str) -> list[JobRecord]:
        """Jobs of a pipeline, oldest first."""
        with self.index.read() as txn:
            out = []
            for job_id in self.job_ids(pipeline):
                value = txn.get(job_id.encode(), db=self._db("jobs"))
                if value:
                    out.append(_from_map(JobRecord, codec.unpack_value(value)))
        return out

    def list_jobs(self) -> list[JobRecord]:
        """All jobs, oldest first."""
        with self.index.read() as txn:
            return [
                _from_map(JobRecord, codec.unpack_value(v))
                for _k, v in self.index.scan(txn, "jobs")
            ]

    def unfinished_jobs(self) -> list[JobRecord]:
        return [j for j in self.list_jobs() if not j.finished]

    def last_job(self, pipeline: str, states: frozenset[str] | None = None) -> JobRecord | None:
        """The newest job of a pipeline (in one of ``states`` when given)."""
        for job in reversed(self.jobs_of(pipeline)):
            if states is None or job.state in states:
                return job
        return None

    # -- datums ------------------------------------------------------------------------------
    def put_datums(self, job_id: str, records: list[DatumRecord]) -> None:
        db = self._db("datums")
        with self.index.write() as txn:
            for rec in records:
                key = job_id.encode() + b"\0" + rec.id.encode()
                txn.put(key, codec.pack_value(asdict(rec)), db=db)

    def datums_of(self, job_id: str) -> list[DatumRecord]:
        prefix = job_id.encode() + b"\0"
        out = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self._db("datums"))
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not bytes(key).startswith(prefix):
                        break
                    out.append(_from_map(DatumRecord, codec.unpack_value(value)))
        return out

    def find_datum(self, job_id: str, prefix: str) -> DatumRecord:
        prefix = prefix.strip().lower()
        found = [d for d in self.datums_of(job_id) if d.id.startswith(prefix)]
        if not found or not prefix:
            raise NotFound(f"no datum {prefix} in job {job_id}")
        if len(found) > 1:
            listed = ", ".join(d.id[:12] for d in found[:5])
            raise InvalidInput(f"datum id {prefix} is ambiguous in job {job_id}: {listed}")
        return found[0]

    def clear_datums(self, job_id: str) -> None:
        with self.index.write() as txn:
            _delete_prefix(txn, self._db("datums"), job_id.encode() + b"\0")

    # -- the datum cache -------------------------------------------------------------------
    def cache_get(self, pipeline: str, datum_hash: str) -> CacheEntry | None:
        key = pipeline.encode() + b"\0" + datum_hash.encode()
        with self.index.read() as txn:
            value = txn.get(key, db=self._db("datum_cache"))
        return _from_map(CacheEntry, codec.unpack_value(value)) if value else None

    def cache_put_many(self, pipeline: str, entries: dict[str, CacheEntry]) -> None:
        db = self._db("datum_cache")
        with self.index.write() as txn:
            for datum_hash, entry in entries.items():
                key = pipeline.encode() + b"\0" + datum_hash.encode()
                txn.put(key, codec.pack_value(asdict(entry)), db=db)

    def cache_clear(self, pipeline: str) -> None:
        with self.index.write() as txn:
            _delete_prefix(txn, self._db("datum_cache"), pipeline.encode() + b"\0")

    def save_batch(
        self, job_id: str, pipeline: str, datums: list[DatumRecord], cache: dict[str, CacheEntry]
    ) -> None:
        """Datum records and cache entries in one transaction (the engine's periodic flush)."""
        with self.index.write() as txn:
            for rec in datums:
                key = job_id.encode() + b"\0" + rec.id.encode()
                txn.put(key, codec.pack_value(asdict(rec)), db=self._db("datums"))
            for datum_hash, entry in cache.items():
                key = pipeline.encode() + b"\0" + datum_hash.encode()
                txn.put(key, codec.pack_value(asdict(entry)), db=self._db("datum_cache"))


def _delete_prefix(txn: Any, db: Any, prefix: bytes) -> None:
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    while bytes(cursor.key()).startswith(prefix):
        if not cursor.delete():
            break


# -- defining pipelines (shared by the CLI and the daemon) ---------------------------------------


def _check_inputs(repository: Repository, spec: PipelineSpec) -> None:
    known = {r.name for r in repository.list_repos()}
    for path, pfs in iter_pfs(spec.input):
        if pfs.repo not in known:
            raise InvalidInput(f"{path}.repo: repo {pfs.repo!r} does not exist")
    _check_code_exists(repository, spec)


def _check_code_exists(repository: Repository, spec: PipelineSpec) -> None:
    """Every ``transform.code`` path exists in its input branch's head (when it has one; a
    later commit that drops it fails the job, naming the field)."""
    from .datums import missing_code
    from .engine import load_input_commit

    names = {name for name, _ in code_paths(spec.transform).items()}
    pfs_inputs = [p for p in spec.pfs_inputs() if p.name in names]
    commits = {}
    for pfs in pfs_inputs:
        try:
            head = repository.branch_head(pfs.repo, pfs.branch)
        except NotFound:
            continue
        if head is not None:
            commits[(pfs.repo, pfs.branch)] = load_input_commit(
                repository, pfs.repo, pfs.branch, head
            )[0]
    error = missing_code(spec.transform, pfs_inputs, commits)
    if error:
        raise InvalidInput(error)


def create_pipeline(repository: Repository, spec: PipelineSpec) -> PipelineRecord:
    """Validate ``spec`` against the existing pipelines and repos, create its output repo
    (read-only to people; an output repo kept from a deleted pipeline of the same name is
    adopted) and record the pipeline as running."""
    state = PipelineState(repository.index)
    if state.get_pipeline(spec.name) is not None:
        raise AlreadyExists(
            f"pipeline {spec.name} already exists (change it with `pfsfs pipeline update`)"
        )
    existing = [parse_spec_dict(r.spec) for r in state.list_pipelines()]
    repos = {r.name: r for r in repository.list_repos()}
    adopt = spec.name in repos and repos[spec.name].output_of == spec.name
    check_dag(spec, existing, [n for n in repos if not (adopt and n == spec.name)])
    _check_inputs(repository, spec)
    if not adopt:
        description = spec.description or f"output of pipeline {spec.name}"
        repository.create_repo(spec.name, description, output_of=spec.name)
    if spec.output_branch not in repository.list_branches(spec.name):
        repository.create_branch(spec.name, spec.output_branch, pipeline=spec.name)
    rec = PipelineRecord(spec.name, spec_to_dict(spec), spec_hash(spec), created_ns=time.time_ns())
    state.put_pipeline(rec)
    return rec


def update_pipeline(
    repository: Repository, spec: PipelineSpec, *, reprocess: bool = False
) -> tuple[PipelineRecord, bool]:
    """Replace a pipeline's spec (a new version if it changed); ``reprocess`` forgets every
    reusable datum output and forces a new job. Returns the record and whether it changed."""
    state = PipelineState(repository.index)
    rec = state.pipeline(spec.name)
    check_dag(spec, [parse_spec_dict(r.spec) for r in state.list_pipelines()], [])
    _check_inputs(repository, spec)
    new_hash = spec_hash(spec)
    if new_hash == rec.hash and not reprocess:
        return rec, False
    if reprocess:
        state.cache_clear(spec.name)
        rec.epoch += 1
    if new_hash != rec.hash:
        rec.version += 1
        rec.spec, rec.hash = spec_to_dict(spec), new_hash
    if spec.output_branch not in repository.list_branches(spec.name):
        repository.create_branch(spec.name, spec.output_branch, pipeline=spec.name)
    state.put_pipeline(rec)
    return rec, True
