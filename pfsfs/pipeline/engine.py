"""Run one job of a pipeline: datums in, one output commit out (or none at all).

A job has fixed input commits. The engine lists their files, splits them into datums, and for
each datum computes its hash (input content ids + transform + image id). A datum whose hash is
in the pipeline's datum cache (and whose objects still exist) reuses the recorded output
without running; the others are materialised from the repository into
``<home>/pipelines/jobs/<job>/datums/<datum>/in/<name>``, run by the spec's runner
(``parallelism`` at once, ``datum_tries`` attempts, ``datum_timeout``, a watchdog for a full
disk or an oversized output) and their ``/pfs/out`` ingested. Logs stay in
``<job>/logs/<datum>/try-N/``; datum directories are removed.

On success the merged outputs become ONE commit on the output branch (only the paths that
changed are rewritten), with ``provenance = {pipeline, spec, job, inputs}``. Any failed datum
or two datums writing one path fail the job: no commit, the branch is untouched.

An output is what the transform left in ``/pfs/out``: files and symlinks with their content,
mode and mtime, and directories as written (empty ones too, with their mode and mtime; the
root of ``/pfs/out`` itself is not an output; a directory's mtime moves whenever an entry is
added to it, so it is reproducible only when the transform sets it last, as with ``touch``).
Hard links are stored as copies. Several datums may create one directory: its mode and owner
must agree (else the job fails naming both datums, like two datums writing one file) and its
mtime is the latest of theirs, so the result does not depend on the order datums ran in. The
commit holds exactly the merged outputs of every datum of the job (run or reused), so a datum
re-run after its input changed replaces its outputs: a file or directory only it made, that it
no longer makes, is deleted. A directory only implied by a path (datum cache entries and
Kubernetes records written before directories were recorded) keeps its metadata from the
previous commit, or gets the default one when new.

Objects a running job wrote or reuses are declared as gc roots (``gc_roots`` owner
``pipeline-job/<id>``) until the job ends; they are made durable and recorded in the cache
every ``flush_interval`` seconds, so a restarted job reuses what finished before the crash.
Repository work runs in threads under one ``CapacityLimiter`` (the Repository is shared).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3
import trio

from ..changes import ChangeSet, check_name, split_path
from ..chunking import Chunker
from ..display import plural
from ..errors import BranchMoved, PfsError
from ..ids import to_hex
from ..model import DIR, FILE, SYMLINK, Entry, Locator
from ..objects import ObjectWriter
from ..repository import Repository
from ..transfer import export_committed_file, file_entry, store_chunks
from ..treediff import same_entry, same_meta
from .commitsets import job_origins
from .datums import Datum, compute_datums, datum_hash, missing_code, select_code
from .inputs import InputCommit, InputFile
from .runners import DatumContext, DatumResult, PodmanRunner, Runner, make_runner, run_datum_async
from .spec import PipelineSpec, canonical_json, code_paths, parse_spec_dict
from .state import (
    CANCELLED,
    FAILED,
    FAILURE,
    KILLED,
    PROCESSED,
    RUNNING,
    SKIPPED,
    SUCCESS,
    CacheEntry,
    DatumRecord,
    JobRecord,
    PipelineRecord,
    PipelineState,
    new_job_id,
)
from .trace import (
    OFF,
    OUTSIDE_EVERY,
    OUTSIDE_FIRST,
    Tracer,
    outside_warnings,
    unread_inputs,
)

log = logging.getLogger(__name__)

Output = tuple[bytes, Entry, list[Locator]]
"""One output of a datum: path below /pfs/out (b"/a/b"), its entry (a file, symlink or
directory; a directory's entry has no tree: ``ref`` None), every locator under it."""


@dataclass(frozen=True)
class EngineOptions:
    """How jobs run on this machine (not part of a spec)."""

    min_free_bytes: int = 256 << 20
    """A datum is stopped when the disk holding the job directories has less free space."""
    max_datum_output: int | None = None
    """A datum is stopped when its /pfs/out grows beyond this many bytes."""
    flush_interval: float = 2.0
    watch_interval: float = 0.5
    keep_datum_dirs: bool = False
    trace_reads: bool = True
    """Record which input files each datum's transform opened (``trace``: inotify) and which
    paths outside ``/pfs`` (strace, by the runner; see ``outside_every``)."""
    outside_first: int = OUTSIDE_FIRST
    outside_every: int = OUTSIDE_EVERY
    """Opens outside ``/pfs`` are traced on the first ``outside_first`` datums a job runs,
    then on one in ``outside_every``, and on every datum once one of them opened a path
    outside ``/pfs`` (``outside_every`` 1: every datum; 0 with ``outside_first`` 0: none)."""
    runner_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def jobs_dir(home: Path) -> Path:
    return home / "pipelines" / "jobs"


def gc_owner(job_id: str) -> str:
    return f"pipeline-job/{job_id}"


def input_heads(repository: Repository, spec: PipelineSpec) -> list[dict[str, str]] | None:
    """The current head of every input branch, or None if one has no commit (or is gone). A
    branch read only as code (``transform.code``) also gets ``code``: the digest of the
    declared files, which is what triggers a job (see ``state.trigger_key``)."""
    out = []
    code = code_branches(spec)
    for repo, branch in spec.input_branches():
        try:
            head = repository.branch_head(repo, branch)
        except PfsError as exc:
            log.debug("pipeline %s: input %s@%s: %s", spec.name, repo, branch, exc)
            return None
        if head is None:
            return None
        item = {"repo": repo, "branch": branch, "commit": to_hex(head)}
        if (repo, branch) in code:
            item["code"] = code_digest(repository, repo, branch, head, code[(repo, branch)])
        out.append(item)
    return out


def code_branches(spec: PipelineSpec) -> dict[tuple[str, str], tuple[str, ...]]:
    """``(repo, branch)`` → declared code paths, for branches that every pfs input reading
    them reads as code (a branch also read as data triggers on any commit)."""
    declared = code_paths(spec.transform)
    by_branch: dict[tuple[str, str], list[str]] = {}
    data: set[tuple[str, str]] = set()
    for pfs in spec.pfs_inputs():
        key = (pfs.repo, pfs.branch)
        if pfs.name in declared:
            by_branch.setdefault(key, []).extend(p for _, p in declared[pfs.name])
        else:
            data.add(key)
    return {k: tuple(sorted(set(v))) for k, v in by_branch.items() if k not in data}


_CODE_DIGESTS: dict[tuple[bytes, tuple[str, ...]], str] = {}


def code_digest(
    repository: Repository, repo: str, branch: str, head: bytes, paths: tuple[str, ...]
) -> str:
    """BLAKE3 of the (path, content id) of the declared files at ``head`` (cached: commits
    never change). A declared path with no file counts too, so adding it triggers a job."""
    key = (head, paths)
    if key not in _CODE_DIGESTS:
        commit, _ = load_input_commit(repository, repo, branch, head)
        rows = [[f.path, f.content_id] for f in select_code(commit.files, paths)]
        rows += [["missing", p] for p in paths if not select_code(commit.files, [p])]
        if len(_CODE_DIGESTS) > 4096:
            _CODE_DIGESTS.clear()
        _CODE_DIGESTS[key] = blake3.blake3(b"pfsfs-code-v1\0" + canonical_json(rows)).hexdigest()
    return _CODE_DIGESTS[key]


def load_input_commit(
    repository: Repository, repo: str, branch: str, commit_id: bytes
) -> tuple[InputCommit, dict[str, Entry]]:
    """The files of one input commit, and their entries by path."""
    files, entries = [], {}
    for path, entry in repository.walk(repository.root_of(commit_id)):
        if entry.type != FILE:
            continue
        name = os.fsdecode(path)
        content = entry.content_id()
        files.append(InputFile(name, to_hex(content) if content else "", entry.size))
        entries[name] = entry
    return InputCommit.of(repo, branch, to_hex(commit_id), files), entries


def on_branch(repository: Repository, repo: str, branch: str, commit: str) -> bool:
    """True if ``commit`` is still in the history of ``repo@branch`` (not deleted with the
    repo or branch, not dropped by a hard rollback)."""
    try:
        head = repository.branch_head(repo, branch)
    except PfsError:
        return False
    if head is None:
        return False
    try:
        created = repository.read_commit(bytes.fromhex(commit)).time_ns
    except PfsError:
        return False
    for cid, c in repository.log(head):
        if to_hex(cid) == commit:
            return True
        if c.time_ns < created:
            return False
    return False


class Engine:
    """Runs jobs. One per process: it shares the open Repository and serialises access to it."""

    def __init__(
        self,
        repository: Repository,
        options: EngineOptions | None = None,
        repo_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.repository = repository
        self.state = PipelineState(repository.index)
        self.options = options or EngineOptions()
        self.repo_limiter = repo_limiter or trio.CapacityLimiter(1)
        self.jobs_dir = jobs_dir(repository.home)

    async def repo_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking repository work in a thread, one at a time."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.repo_limiter)

    def make_runner(self, kind: str) -> Runner:
        return make_runner(kind, **dict(self.options.runner_options.get(kind, {})))

    def new_job(self, rec: PipelineRecord, inputs: list[dict[str, str]]) -> JobRecord:
        job = JobRecord(
            id=new_job_id(),
            pipeline=rec.name,
            spec_hash=rec.hash,
            version=rec.version,
            epoch=rec.epoch,
            inputs=sorted(inputs, key=lambda i: (i["repo"], i["branch"])),
            created_ns=time.time_ns(),
        )
        self.state.put_job(job)
        log.info("pipeline %s: job %s created", rec.name, job.id)
        return job

    async def run_job(
        self, job: JobRecord, *, stop_reason: Callable[[], str] = lambda: "stopped"
    ) -> JobRecord:
        """Run (or rerun) ``job`` to the end; returns its final record. Cancelling the caller
        kills the running datums and marks the job killed with ``stop_reason()``."""
        job = await self._run_job(job, stop_reason)
        rec = self.state.get_pipeline(job.pipeline)
        if job.state == SUCCESS and rec is not None and rec.spec.get("runner") == "kubernetes":
            await self.repo_call(self.sweep_records)  # its commit is on the branch
        return job

    async def _run_job(self, job: JobRecord, stop_reason: Callable[[], str]) -> JobRecord:
        rec = self.state.get_pipeline(job.pipeline)
        if rec is None:
            return self.finish_job(job, KILLED, "the pipeline was deleted")
        if rec.hash != job.spec_hash:
            return self.finish_job(job, KILLED, f"superseded by pipeline version {rec.version}")
        done = await self.repo_call(self._find_output, job, rec)
        if done is not None:
            job.output = done
            return self.finish_job(job, SUCCESS, "its output commit was made before a restart")
        if job.state == RUNNING:
            job.restarts += 1
            log.warning("job %s was interrupted; running it again", job.id)
        job.state, job.reason, job.pid = RUNNING, "", os.getpid()
        job.started_ns, job.finished_ns = time.time_ns(), 0
        try:
            await self.repo_call(self._set_origins, job)
        except PfsError as exc:
            return self.finish_job(job, FAILURE, exc.message)
        self.state.put_job(job)
        self.state.clear_datums(job.id)
        run = _JobRun(self, job, parse_spec_dict(rec.spec))
        try:
            await run.execute()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await run.abort()
                if job.finished:
                    pass  # decided (e.g. success) just before the interrupt landed
                elif is_stop(exc):
                    await self._settle_stopped(job, rec, stop_reason(), is_interrupt(exc))
                else:
                    log.exception("job %s: internal error", job.id)
                    self.finish_job(job, FAILURE, f"internal error: {exc!r}")
            if isinstance(exc, Exception):
                return job
            raise
        finally:
            self.repository.index.set_gc_roots(gc_owner(job.id), [])
        return job

    async def _settle_stopped(
        self, job: JobRecord, rec: PipelineRecord, reason: str, interrupt: bool
    ) -> None:
        """A job stopped mid-run: a success if its output commit landed before the stop (the
        commit is atomic; the record after it may not be), else cancelled (Ctrl-C or SIGTERM
        of the process running it) or killed (its scheduler stopped it)."""
        made = await self.repo_call(self._find_output, job, rec)
        if made is not None:
            job.output = made
            self.finish_job(job, SUCCESS, "its output commit was made before it was stopped")
        elif interrupt:
            self.finish_job(job, CANCELLED, f"{reason}; its output was not committed")
        else:
            self.finish_job(job, KILLED, reason)

    def _set_origins(self, job: JobRecord) -> None:
        """The job's commit set and origins (see ``commitsets``); raises on a cycle or an
        input commit that no longer exists."""
        if job.commitset:
            return
        last = self.state.last_job(job.pipeline, frozenset({SUCCESS, FAILURE}))
        previous = last.origins if last is not None else None
        origins, job.commitset = job_origins(self.repository, job.pipeline, job.inputs, previous)
        job.origins = origins.origins

    def finish_job(self, job: JobRecord, state: str, reason: str) -> JobRecord:
        job.state, job.reason, job.finished_ns = state, reason, time.time_ns()
        if self.state.get_pipeline(job.pipeline) is not None:
            self.state.put_job(job)
        log.info("job %s of %s: %s %s", job.id, job.pipeline, state, reason)
        return job

    def sweep_records(self) -> None:
        """Delete the Kubernetes job records that are done with (``pfsfs.k8s.retention``):
        after a commit, and at every scheduler start (a crash between the two leaves some).
        A failure only delays it to the next sweep."""
        from ..k8s import retention

        try:
            retention.sweep(self.repository.store, self.state)
        except (PfsError, OSError) as exc:
            log.warning("cannot delete finished Kubernetes job records yet: %s", exc)

    def _find_output(self, job: JobRecord, rec: PipelineRecord) -> str | None:
        """The output commit of ``job`` if it was made before the process stopped."""
        if job.state != RUNNING:
            return None
        branch = rec.spec.get("output_branch", "master")
        try:
            head = self.repository.branch_head(rec.name, branch)
        except PfsError:
            return None
        for i, (cid, commit) in enumerate(self.repository.log(head)):
            if commit.provenance.get("job") == job.id:
                return to_hex(cid)
            if i >= 3:
                break
        return None


class _JobRun:
    """The work of one job run (not reusable)."""

    def __init__(self, engine: Engine, job: JobRecord, spec: PipelineSpec) -> None:
        self.engine = engine
        self.repository = engine.repository
        self.state = engine.state
        self.options = engine.options
        self.job = job
        self.spec = spec
        self.dir = engine.jobs_dir / job.id
        self.entries: dict[tuple[str, str], dict[str, Entry]] = {}
        self.records: dict[str, DatumRecord] = {}
        self.outputs: dict[str, list[Output]] = {}
        self.pending_records: list[DatumRecord] = []
        self.pending_cache: dict[str, CacheEntry] = {}
        self.roots: list[Locator] = []
        self.runner: Runner = engine.make_runner(spec.runner)
        self.tracer: Tracer | None = None
        self._started = 0
        """Datums started by this run (for the sample traced outside /pfs)."""
        self._outside_seen = False
        """A datum of this run opened a path outside /pfs: trace every further one."""
        self._writer_cm: Any = None
        self._writer: Any = None
        self._chunker: Any = None

    # -- the whole job -------------------------------------------------------------------------
    async def execute(self) -> None:
        try:
            await self._execute()
        finally:
            self._cleanup()

    async def _execute(self) -> None:
        job = self.job
        self.repository.index.set_gc_roots(gc_owner(job.id), [i["commit"] for i in job.inputs])
        await trio.to_thread.run_sync(self._prepare_dirs)
        try:
            datums = await self.engine.repo_call(self._load_datums)
            image_id = await self._image_id()
        except PfsError as exc:
            self.engine.finish_job(job, FAILURE, exc.message)
            return
        todo = await self.engine.repo_call(self._reuse, datums, image_id)
        self._update_counts(len(datums))
        self.state.put_job(job)
        log.info(
            "job %s: %d datums, %d reused, %d to run",
            job.id,
            len(datums),
            len(datums) - len(todo),
            len(todo),
        )
        batch = getattr(self.runner, "run_batch", None)
        if batch is not None:  # the runner runs the whole job elsewhere (kubernetes)
            await batch(self, todo)
            todo = []
        slots = trio.Semaphore(self.spec.parallelism)
        self.tracer = self._open_tracer() if todo else None
        async with trio.open_nursery() as nursery:
            flusher = trio.CancelScope()
            nursery.start_soon(self._flusher, flusher)
            drainer = trio.CancelScope()
            if self.tracer is not None:  # read events as they come: the queue is bounded
                nursery.start_soon(_drain_events, self.tracer, drainer)
            async with trio.open_nursery() as datum_nursery:
                for datum, dhash in todo:
                    datum_nursery.start_soon(self._process, datum, dhash, slots)
            flusher.cancel()
            drainer.cancel()
        await self._flush()
        self._trace_warnings()
        failed = [r for r in self.records.values() if r.state == FAILED]
        if failed:
            first = failed[0]
            reason = f"{len(failed)} of {len(datums)} datums failed; datum {first.id[:12]} "
            reason += f"({first.desc}): {first.error}"
            self.engine.finish_job(job, FAILURE, reason)
            return
        try:
            desired = merge_outputs(self.outputs, self.records)
        except PfsError as exc:
            self.engine.finish_job(job, FAILURE, exc.message)
            return
        try:
            commit_id = await self.engine.repo_call(self._commit, desired)
        except PfsError as exc:
            self.engine.finish_job(job, FAILURE, f"cannot commit the output: {exc.message}")
            return
        job.output = to_hex(commit_id)
        self.engine.finish_job(job, SUCCESS, "")

    async def abort(self) -> None:
        """After a cancel or an error: drop the open write session, remove datum dirs."""
        if self._writer_cm is not None:
            await self.engine.repo_call(self._close_writer, False)
        if self.state.get_pipeline(self.job.pipeline) is not None:
            self.state.save_batch(self.job.id, self.job.pipeline, self.pending_records, {})
        self.pending_records = []
        self._update_counts(self.job.counts.get("total", len(self.records)))

    def _trace_warnings(self) -> None:
        """Warn about each input that no datum run by this job opened a file of."""
        ran = [r for r in self.records.values() if r.state == PROCESSED and r.trace]
        offered: dict[str, int] = {}
        for r in ran:
            for name, *_rest in r.inputs:
                offered[name] = offered.get(name, 0) + 1
        names = sorted({p.name for p in self.spec.pfs_inputs()})
        self.job.warnings = unread_inputs(names, [(r.read, r.trace) for r in ran], offered)
        if self.options.trace_reads:  # the datums run, failed ones too: a missing path may be why
            runs = [r for r in self.records.values() if r.state in (PROCESSED, FAILED)]
            outside = [
                (r.id, r.desc, r.outside, r.outside_trace, r.outside_count)
                for r in runs
                if r.outside_trace != OFF
            ]
            self.job.warnings += outside_warnings(self.spec.runner, outside)
        for w in self.job.warnings:
            log.warning("job %s of %s: %s", self.job.id, self.job.pipeline, w)

    def _update_counts(self, total: int) -> None:
        counts = {"total": total, PROCESSED: 0, SKIPPED: 0, FAILED: 0}
        for r in self.records.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        self.job.counts = counts

    def _prepare_dirs(self) -> None:
        shutil.rmtree(self.dir / "datums", ignore_errors=True)
        (self.dir / "datums").mkdir(parents=True, exist_ok=True)
        if isinstance(self.runner, PodmanRunner) and self.job.restarts:
            remove_job_containers(self.runner, self.job.id)

    def _cleanup(self) -> None:
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
        if not self.options.keep_datum_dirs:
            shutil.rmtree(self.dir / "datums", ignore_errors=True)

    async def _image_id(self) -> str | None:
        self.runner.check()
        image = self.spec.transform.image
        if not isinstance(self.runner, PodmanRunner) or image is None:
            return None
        image_id = await trio.to_thread.run_sync(self.runner.image_id, image)
        if image_id is None:
            raise PfsError(
                f"image {image} does not exist here (build it: scripts/build-images.sh, "
                "or podman pull/import it)"
            )
        return image_id

    # -- inputs ------------------------------------------------------------------------------
    def _load_datums(self) -> list[Datum]:
        commits = {}
        for i in self.job.inputs:
            if not on_branch(self.repository, i["repo"], i["branch"], i["commit"]):
                raise PfsError(_gone(i))
            commit, entries = load_input_commit(
                self.repository, i["repo"], i["branch"], bytes.fromhex(i["commit"])
            )
            self.entries[(i["repo"], i["commit"])] = entries
            commits[(i["repo"], i["branch"])] = commit
        error = missing_code(self.spec.transform, self.spec.pfs_inputs(), commits)
        if error:
            raise PfsError(error)
        code = {n: [p for _, p in v] for n, v in code_paths(self.spec.transform).items()}
        return compute_datums(self.spec.input, commits, code)

    def _reuse(self, datums: list[Datum], image_id: str | None) -> list[tuple[Datum, str]]:
        """Record the datums whose output can be reused; return the others with their hash.
        Runs under the shared gc lock (a write session), so gc cannot delete what a cache hit
        names between checking it and declaring it a root of this job."""
        with self.repository.writer():
            todo = self._reuse_locked(datums, image_id)
            self._declare_roots()
        return todo

    def _reuse_locked(self, datums: list[Datum], image_id: str | None) -> list[tuple[Datum, str]]:
        todo = []
        index = self.repository.index
        for datum in datums:
            dhash = datum_hash(datum, self.spec.transform, image_id)
            hit = self.state.cache_get(self.job.pipeline, dhash)
            if hit is not None and all(index.get_object(Locator.from_wire(w).id) for w in hit.locs):
                outputs = [(*Entry.from_wire(w), []) for w in hit.outputs]
                self.outputs[datum.id] = outputs  # type: ignore[assignment]
                self.roots.extend(Locator.from_wire(w) for w in hit.locs)
                if hit.job == self.job.id:  # done before this job was interrupted
                    rec = self._record(datum, dhash, PROCESSED, outputs)  # type: ignore[arg-type]
                    _traces_from(rec, hit)
                    continue
                rec = self._record(datum, dhash, SKIPPED, outputs)  # type: ignore[arg-type]
                _traces_from(rec, hit)
                rec.from_job = hit.job
                rec.logs = f"../{hit.job}/logs/{hit.datum[:16]}"
            else:
                todo.append((datum, dhash))
        return todo

    def _record(
        self, datum: Datum, dhash: str, state: str, outputs: list[Output] | None = None
    ) -> DatumRecord:
        rec = DatumRecord(
            id=datum.id,
            state=state,
            hash=dhash,
            desc=datum.describe(),
            inputs=[
                [di.name, di.repo, di.commit_id, f.path, f.content_id]
                for di in datum.inputs
                for f in di.files
            ],
            outputs=shown_outputs(outputs or []),
            logs=f"logs/{datum.id[:16]}",
        )
        self.records[datum.id] = rec
        self.pending_records.append(rec)
        return rec

    # -- one datum ---------------------------------------------------------------------------
    async def _process(self, datum: Datum, dhash: str, slots: trio.Semaphore) -> None:
        async with slots:
            workdir = self.dir / "datums" / datum.id[:16]
            try:
                traced = self._trace_outside()
                ctx = await self.engine.repo_call(self._materialise, datum, workdir, traced)
            except (PfsError, OSError) as exc:
                rec = self._record(datum, dhash, FAILED)
                rec.error = f"cannot materialise the inputs: {exc}"
                rec.outside_trace = OFF  # it never ran
                return
            tracer = self.tracer
            if tracer is not None:
                tracer.watch(datum.id, ctx.inputs)
            try:
                result, stopped = await self._run_watched(ctx)
            finally:
                read, trace = tracer.finish(datum.id) if tracer is not None else ([], OFF)
            rec_error = ""
            outputs: list[Output] = []
            if stopped:
                rec_error = stopped
            elif not result.ok:
                rec_error = result.summary()
            else:
                try:
                    outputs = await self.engine.repo_call(self._ingest, ctx.output_dir)
                except (PfsError, OSError) as exc:
                    rec_error = f"cannot store /pfs/out: {exc}"
            rec = self._record(datum, dhash, FAILED if rec_error else PROCESSED, outputs)
            rec.error, rec.attempts, rec.duration = rec_error, result.attempts, result.duration
            rec.read, rec.trace = read, trace
            rec.outside, rec.outside_count = list(result.outside), result.outside_count
            rec.outside_trace = result.outside_trace
            self._outside_seen |= bool(result.outside)
            if not rec_error:
                self.outputs[datum.id] = outputs
                self.pending_cache[dhash] = CacheEntry(
                    self.job.id,
                    datum.id,
                    [e.to_wire(p) for p, e, _ in outputs],
                    [loc.to_wire() for _, _, locs in outputs for loc in locs],
                    read,
                    trace,
                    rec.outside,
                    rec.outside_count,
                    rec.outside_trace,
                )
            else:
                log.info("job %s: datum %s failed: %s", self.job.id, datum.id[:12], rec_error)
            if not self.options.keep_datum_dirs:
                await trio.to_thread.run_sync(shutil.rmtree, workdir, True)

    def _trace_outside(self) -> bool:
        """Whether the next datum's opens outside /pfs are traced (see ``outside_every``)."""
        n, self._started = self._started, self._started + 1
        if not self.options.trace_reads:
            return False
        if n < self.options.outside_first or self._outside_seen:
            return True
        every = self.options.outside_every
        return every > 0 and n % every == 0

    def _materialise(self, datum: Datum, workdir: Path, trace_outside: bool) -> DatumContext:
        if workdir.exists():
            shutil.rmtree(workdir)
        ctx = DatumContext.for_datum(self.spec, datum, workdir, job_id=self.job.id)
        logs = self.dir / "logs" / datum.id[:16]
        shutil.rmtree(logs, ignore_errors=True)
        ctx = replace(ctx, log_dir=logs, trace_outside=trace_outside)
        made: set[bytes] = set()
        for di in datum.inputs:
            entries = self.entries[(di.repo, di.commit_id)]
            base = os.fsencode(ctx.inputs[di.name])
            for f in di.files:
                entry = entries[f.path]
                target = base + os.fsencode(f.path)
                parent = os.path.dirname(target)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                export_committed_file(self.repository, entry, target)
        return ctx

    def _open_tracer(self) -> Tracer | None:
        """The job's tracer of reads (None: not traced, or inotify is unavailable)."""
        if not self.options.trace_reads:
            return None
        try:
            return Tracer()
        except OSError as exc:
            log.warning("job %s: reads are not traced: %s", self.job.id, exc)
            return None

    async def _run_watched(self, ctx: DatumContext) -> tuple[DatumResult, str]:
        """Run with retries; a watchdog stops the datum if the disk fills or the output grows
        past ``max_datum_output``. Returns the result and why it was stopped ("" if not)."""
        stopped: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog, ctx, stopped)
            result = await run_datum_async(self.runner, ctx, self.spec.datum_tries)
            nursery.cancel_scope.cancel()
        return result, stopped[0] if stopped else ""

    async def _watchdog(self, ctx: DatumContext, stopped: list[str]) -> None:
        limit = self.options.max_datum_output
        while True:
            await trio.sleep(self.options.watch_interval)
            written = await trio.to_thread.run_sync(tree_size, ctx.output_dir)
            free = shutil.disk_usage(self.dir).free
            why = ""
            if limit is not None and written > limit:
                why = f"stopped: wrote {written} bytes to /pfs/out, over the limit of {limit}"
            elif free < self.options.min_free_bytes:
                why = (
                    f"stopped: the disk is nearly full ({free} bytes free) after the datum "
                    f"wrote {written} bytes to /pfs/out"
                )
            if why:
                log.warning("job %s: datum %s %s", self.job.id, ctx.datum_id[:12], why)
                stopped.append(why)
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.runner.kill, ctx)
                return

    # -- outputs -----------------------------------------------------------------------------
    def _open_writer(self) -> Any:
        if self._writer is None:
            self._writer_cm = self.repository.writer()
            self._writer = self._writer_cm.__enter__()
            self._chunker = self._chunker or self.repository.chunker()
        return self._writer

    def _close_writer(self, ok: bool) -> None:
        cm, self._writer_cm, self._writer = self._writer_cm, None, None
        if cm is None:
            return
        if ok:
            cm.__exit__(None, None, None)
        else:
            err = PfsError("job stopped")
            cm.__exit__(PfsError, err, None)

    def _ingest(self, out_dir: Path) -> list[Output]:
        writer = self._open_writer()
        job = self.job.id
        outputs = ingest_output(
            out_dir,
            self._chunker,
            writer,
            lambda what: log.warning("job %s: skipping %s (not a file)", job, what),
        )
        for _, _, locs in outputs:
            self.roots.extend(locs)
        return outputs

    async def _flush(self) -> None:
        """Make new outputs durable, declare them gc roots, then record datums and cache (the
        lists are taken here, on the trio thread; the thread only sees its own copies)."""
        records, cache = self.pending_records, self.pending_cache
        self.pending_records, self.pending_cache = [], {}
        await self.engine.repo_call(self._flush_sync, records, cache)
        self._update_counts(self.job.counts.get("total", 0))
        self.state.put_job(self.job)

    def _flush_sync(self, records: list[DatumRecord], cache: dict[str, CacheEntry]) -> None:
        if self._writer is not None:
            self._writer.finish()
            self._declare_roots()
            self._close_writer(True)
        self.state.save_batch(self.job.id, self.job.pipeline, records, cache)

    def _declare_roots(self) -> None:
        self.repository.index.set_gc_roots(
            gc_owner(self.job.id), [i["commit"] for i in self.job.inputs], self.roots
        )

    async def _flusher(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(self.options.flush_interval)
                if self.pending_records or self.pending_cache:
                    await self._flush()

    def _commit(self, desired: dict[bytes, Entry]) -> bytes:
        """One commit on the output branch holding exactly ``desired`` (CAS; retried if the
        branch moved meanwhile)."""
        repo, branch = self.spec.name, self.spec.output_branch
        self._declare_roots()
        counts = self.job.counts
        message = (
            f"job {self.job.id}: {plural(counts.get(PROCESSED, 0), 'datum')} processed, "
            f"{counts.get(SKIPPED, 0)} reused"
        )
        provenance = {
            "pipeline": self.spec.name,
            "spec": self.job.spec_hash,
            "version": self.job.version,
            "job": self.job.id,
            "inputs": [{k: i[k] for k in ("repo", "branch", "commit")} for i in self.job.inputs],
            "commitset": self.job.commitset,
            "origins": dict(self.job.origins),
            "upstream": sorted(self._upstream()),
        }
        for i in self.job.inputs:  # deleted (repo, branch, hard rollback) while we ran?
            if not on_branch(self.repository, i["repo"], i["branch"], i["commit"]):
                raise PfsError(_gone(i))
        if branch not in self.repository.list_branches(repo):
            self.repository.create_branch(repo, branch, pipeline=self.spec.name)
        for _ in range(5):
            base = self.repository.branch_head(repo, branch)
            changes = output_changes(self.repository, base, desired)
            try:
                # Committed even when the output is unchanged: the commit records which input
                # commits were processed (provenance; what `pfsfs wait` looks for).
                commit_id = self.repository.commit(
                    repo,
                    branch,
                    changes,
                    message,
                    parent=base,
                    author=f"pipeline:{self.spec.name}",
                    provenance=provenance,
                    allow_empty=True,
                    pipeline=self.spec.name,
                )
                assert commit_id is not None
                return commit_id
            except BranchMoved:
                log.info("job %s: %s@%s moved; committing again", self.job.id, repo, branch)
        raise BranchMoved(f"{repo}@{branch} keeps moving; the job's output was not committed")

    def _upstream(self) -> set[str]:
        """Every repo the output descends from (for cycle checks through commit sets)."""
        repos: set[str] = set()
        for i in self.job.inputs:
            repos.add(i["repo"])
            prov = self.repository.read_commit(bytes.fromhex(i["commit"])).provenance
            repos.update(prov.get("upstream") or ())
        return repos


# -- helpers ----------------------------------------------------------------------------------


def _gone(i: Mapping[str, str]) -> str:
    return (
        f"input commit {i['repo']}@{i['commit'][:12]} ({i['branch']}) was deleted while the job ran"
    )


def _traces_from(rec: DatumRecord, hit: CacheEntry) -> None:
    """A reused datum keeps the traces of the run that made its output."""
    rec.read, rec.trace = list(hit.read), hit.trace
    rec.outside, rec.outside_count = list(hit.outside), hit.outside_count
    rec.outside_trace = hit.outside_trace


async def _drain_events(tracer: Tracer, scope: trio.CancelScope) -> None:
    with scope:
        while True:
            await trio.lowlevel.wait_readable(tracer.fd)
            tracer.drain()


def is_stop(exc: BaseException) -> bool:
    """A cancellation or Ctrl-C (possibly grouped by nurseries), as opposed to a failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_stop(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt)


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM of this process (a KeyboardInterrupt, possibly grouped)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[0] is not None
    return isinstance(exc, KeyboardInterrupt)


def _ignore(_n: int) -> None:
    pass


def ingest_output(
    out_dir: Path, chunker: Chunker, writer: ObjectWriter, skipped: Callable[[str], None]
) -> list[Output]:
    """Store every file, symlink and directory below a transform's ``/pfs/out`` through
    ``writer``: ``(path, entry, locators it needs)`` each, a directory before what it holds
    (``skipped`` hears about anything else). The one ingest of outputs, for local, podman and
    Kubernetes runs alike."""
    outputs: list[Output] = []
    for rel, path, st in walk_output(os.fsencode(out_dir)):
        if stat.S_ISDIR(st.st_mode):
            outputs.append((rel, dir_entry(st), []))
        elif stat.S_ISREG(st.st_mode):
            manifest, size = store_chunks(chunker.cut_file(path), writer, _ignore)
            loc = writer.put_manifest(manifest)
            outputs.append((rel, file_entry(st, loc, size), [loc, *(c.loc for c in manifest)]))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            entry = Entry(
                SYMLINK,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
                len(target),
                target=target,
            )
            outputs.append((rel, entry, []))
        else:
            skipped(os.fsdecode(rel))
    return outputs


def dir_entry(st: os.stat_result) -> Entry:
    """A directory's metadata as the transform left it (its tree is made at commit time)."""
    return Entry(DIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)


def walk_output(root: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """``(path below root as b"/a/b", host path, lstat)`` of everything below ``root``, each
    directory's entries in name order and a directory before its contents (listing a
    directory does not change its mtime)."""
    stack = [(root, b"")]
    while stack:
        host, rel = stack.pop()
        with os.scandir(host) as it:
            names = sorted(e.name for e in it)
        subdirs = []
        for name in names:
            check_name(name)
            full, sub = os.path.join(host, name), rel + b"/" + name
            st = os.lstat(full)
            yield sub, full, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((full, sub))
        stack.extend(reversed(subdirs))


def tree_size(root: Path) -> int:
    """Bytes of the files below ``root`` (0 if it vanished)."""
    total = 0
    stack = [os.fspath(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _parents(path: bytes) -> Iterator[bytes]:
    cut = path.rfind(b"/")
    while cut > 0:
        path = path[:cut]
        yield path
        cut = path.rfind(b"/")


def shown_outputs(outputs: list[Output]) -> list[list[Any]]:
    """A datum record's ``[[path, content id, size]]``: its files and symlinks, and the
    directories with nothing written below them (the others show through the paths below:
    ``why`` and ``datum inspect`` find each output either way)."""
    parents = {q for path, _, _ in outputs for q in _parents(path)}
    return [
        [os.fsdecode(p), to_hex(e.content_id() or b""), e.size]
        for p, e, _ in outputs
        if not (e.is_dir and p in parents)
    ]


def merge_outputs(
    outputs: Mapping[str, list[Output]], records: Mapping[str, DatumRecord]
) -> dict[bytes, Entry]:
    """All datums' outputs as one ``path → entry`` map (the directories they wrote included).
    Two datums writing one file or symlink path, or one writing a file where another has a
    directory, is an error naming both. A directory several datums wrote is one entry: their
    mode and owner must agree (else an error naming both and what differs) and its mtime is
    the latest of theirs, whatever order the datums ran in."""
    owner: dict[bytes, str] = {}
    """Who wrote each file or symlink."""
    dirs: dict[bytes, str] = {}
    """The first datum (by id) with each directory, written or implied by a path below it."""
    made: dict[bytes, str] = {}
    """The first datum (by id) that wrote each directory itself."""
    merged: dict[bytes, Entry] = {}

    def clash(a: str, b: str, path: bytes) -> PfsError:
        first, second = sorted((a, b))
        return PfsError(
            f"datums {first[:12]} ({records[first].desc}) and {second[:12]} "
            f"({records[second].desc}) both write {os.fsdecode(path)}"
        )

    for datum_id in sorted(outputs):
        for path, entry, _ in outputs[datum_id]:
            if path in owner:
                raise clash(owner[path], datum_id, path)
            for parent in _parents(path):
                if parent in owner:
                    raise clash(owner[parent], datum_id, parent)
                dirs.setdefault(parent, datum_id)
            if not entry.is_dir:
                if path in dirs and dirs[path] != datum_id:
                    raise clash(dirs[path], datum_id, path)
                owner[path] = datum_id
                merged[path] = entry
                continue
            dirs.setdefault(path, datum_id)
            have = merged.get(path)
            if have is None:
                made[path], merged[path] = datum_id, entry
                continue
            if (have.mode, have.uid, have.gid) != (entry.mode, entry.uid, entry.gid):
                (a, ea), (b, eb) = sorted([(made[path], have), (datum_id, entry)])
                raise PfsError(
                    f"datums {a[:12]} ({records[a].desc}) and {b[:12]} ({records[b].desc}) "
                    f"create directory {os.fsdecode(path)} with different metadata: "
                    f"{_dir_meta(ea)} and {_dir_meta(eb)} (a directory several datums write "
                    "must have one mode and owner)"
                )
            if entry.mtime_ns > have.mtime_ns:
                merged[path] = entry
    return merged


def _dir_meta(entry: Entry) -> str:
    return f"mode {entry.mode:04o} owner {entry.uid}:{entry.gid}"


def output_changes(
    repository: Repository, base: bytes | None, desired: Mapping[bytes, Entry]
) -> ChangeSet:
    """The change set that turns commit ``base`` into exactly ``desired``: deletes of what
    vanished (files and directories no longer written nor implied by a path), the directories
    whose metadata is new or changed (their contents kept), puts of the files and symlinks
    that are new or changed. A directory only implied by a path keeps what it had."""
    old: dict[bytes, Entry] = {}
    if base is not None:
        old = dict(repository.walk(repository.root_of(base)))
    new_dirs = {p for path in desired for p in _parents(path)}
    new_dirs |= {path for path, entry in desired.items() if entry.is_dir}
    gone = {path for path, entry in old.items() if not _stays(path, entry, desired, new_dirs)}
    changes = ChangeSet()
    for path in sorted(gone):
        if not any(parent in gone for parent in _parents(path)):
            changes.delete(split_path(path))
    for path in sorted(desired):
        entry, was = desired[path], old.get(path)
        if entry.is_dir:
            if was is None or not was.is_dir or not same_meta(was, entry):
                changes.mkdir(split_path(path), entry)
        elif not same_entry(was, entry):
            changes.put(split_path(path), entry)
    return changes


def _stays(
    path: bytes, old: Entry, desired: Mapping[bytes, Entry], new_dirs: set[bytes]
) -> bool:
    """Whether ``path`` of the base commit (``old``) is still there as the same kind: a
    directory still written or implied by a path, or a non-directory that a desired one
    replaces in place (a put) rather than after a delete."""
    if old.is_dir:
        return path in new_dirs
    new = desired.get(path)
    return new is not None and not new.is_dir


def remove_job_containers(runner: PodmanRunner, job_id: str) -> None:
    """Remove containers a previous run of ``job_id`` left behind (best effort)."""
    try:
        found = subprocess.run(
            [runner.podman, "ps", "-aq", "--filter", f"label=io.pfsfs.job={job_id}"],
            env=runner.client_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.split()
        if found:
            subprocess.run(
                [runner.podman, "rm", "-f", "-t", "0", *found],
                env=runner.client_env(),
                capture_output=True,
                timeout=120,
                check=False,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot remove old containers of job %s: %s", job_id, exc)
