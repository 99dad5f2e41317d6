"""The pipeline scheduler: watch input branches, start jobs, chain pipelines into DAGs.

``run_scheduler(home)`` is a trio task: a host process runs it with
``await nursery.start(run_scheduler, home)`` (or, sharing the Repository it already opened,
``nursery.start(functools.partial(run_scheduler, home, repository=repo))``); ``python -m
pfsfs.pipeline.scheduler --home H`` runs it alone, SIGTERM/SIGINT stop it cleanly. Every
``poll_interval`` it reads the pipeline records and the heads of their input branches (cheap:
local refs); a running pipeline whose inputs, spec or reprocess epoch differ from its last
finished job gets a new job. One job per pipeline at a time: commits that land during a job are
coalesced into the next one. An output commit moves a branch that downstream pipelines read, so
DAGs chain by themselves. A stopped, updated or deleted pipeline's running job is killed.

Locks (``flock`` under ``<home>/pipelines/``): ``scheduler.lock`` (exclusive, holds the
scheduler's pid: at most one scheduler per home, and ``scheduler_pid`` tells the CLI whether
anything is processing) and ``locks/<pipeline>.lock`` (held while a job of that pipeline
runs, by the scheduler or by ``pfsfs pipeline run``). A job left ``running`` whose pipeline
lock is free belongs to a process that died: it is run again (``restarts`` + 1); datums that
finished before the crash are reused from the cache, and a job never makes a partial commit.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..errors import Conflict, InvalidInput, PfsError
from ..repository import Repository
from .engine import Engine, EngineOptions, input_heads
from .spec import PipelineSpec, parse_spec_dict
from .state import FAILURE, KILLED, RUNNING, SUCCESS, JobRecord, PipelineRecord, trigger_key

log = logging.getLogger(__name__)

DECIDED = frozenset({SUCCESS, FAILURE})
FULL_CHECK_INTERVAL = 5.0


def pipelines_dir(home: Path) -> Path:
    return home / "pipelines"


class FileLock:
    """A non-blocking exclusive ``flock`` on a file (released on close or process death)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self, note: str = "") -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if note:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str | None:
        """What the holder wrote in the file, if someone holds the lock; else None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            note = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            return note or "?"
        os.close(fd)
        return None


def scheduler_lock(home: Path) -> FileLock:
    return FileLock(pipelines_dir(home) / "scheduler.lock")


def pipeline_lock(home: Path, name: str) -> FileLock:
    return FileLock(pipelines_dir(home) / "locks" / f"{name}.lock")


def scheduler_pid(home: Path) -> str | None:
    """The pid of the process running the scheduler for ``home`` (None: nothing processes)."""
    return scheduler_lock(home).holder()


def topological(records: list[PipelineRecord]) -> list[PipelineRecord]:
    """Pipelines ordered so that each comes after the pipelines whose output it reads."""
    by_name = {r.name: r for r in records}
    reads = {r.name: parse_spec_dict(r.spec).input_repos() for r in records}
    out: list[PipelineRecord] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name in path:
            return
        for repo in reads[name]:
            if repo in by_name:
                visit(repo, (*path, name))
        seen.add(name)
        out.append(by_name[name])

    for name in sorted(by_name):
        visit(name, ())
    return out


def upstream_of(specs: dict[str, PipelineSpec]) -> dict[str, set[str]]:
    """Pipeline name → every pipeline upstream of it (transitively: whose output it reads,
    directly or through other pipelines)."""
    direct = {n: {r for r in s.input_repos() if r in specs} for n, s in specs.items()}
    out: dict[str, set[str]] = {}

    def visit(name: str, path: tuple[str, ...]) -> set[str]:
        if name in out:
            return out[name]
        found: set[str] = set()
        for up in direct.get(name, ()):
            if up not in path:
                found |= {up} | visit(up, (*path, name))
        out[name] = found
        return found

    for name in specs:
        visit(name, ())
    return out


@dataclass(frozen=True)
class Decided:
    """The last decided job of a pipeline, as far as readiness cares."""

    key: tuple[Any, ...] | None
    state: str
    job: str


def decided(engine: Engine, name: str) -> Decided | None:
    last = engine.state.last_job(name, DECIDED)
    return Decided(last.trigger_key(), last.state, last.id) if last is not None else None


def blocker(
    name: str,
    upstream: dict[str, set[str]],
    records: dict[str, PipelineRecord],
    heads: dict[str, list[dict[str, str]] | None],
    last: dict[str, Decided | None],
    busy: set[str],
) -> str | None:
    """Why pipeline ``name`` must not start a job yet, or None. A pipeline runs once its
    upstream has settled: every running pipeline above it has processed its current input
    (so all its inputs come from one consistent commit set; a burst of commits upstream is
    coalesced into one job here) and none failed on it (no output from half a DAG)."""
    for up in sorted(upstream.get(name, ())):
        rec = records.get(up)
        if rec is None or rec.state != RUNNING:
            continue
        if up in busy:
            return f"upstream pipeline {up} is running a job"
        inputs = heads.get(up)
        if inputs is None:
            continue
        done = last.get(up)
        if done is None or done.key != trigger_key(inputs, rec.hash, rec.epoch):
            return f"upstream pipeline {up} has input to process"
        if done.state == FAILURE:
            return f"upstream pipeline {up} failed on its current input (job {done.job})"
    return None


def claim_job(
    engine: Engine, rec: PipelineRecord, inputs: list[dict[str, str]] | None
) -> JobRecord | None:
    """The job to run now for ``rec`` (the caller holds its pipeline lock): an interrupted job
    (older interrupted ones are marked killed), else a new job if the inputs, spec or epoch
    changed since the last decided job, else None."""
    unfinished = [j for j in engine.state.jobs_of(rec.name) if not j.finished]
    for stale in unfinished[:-1]:
        engine.finish_job(stale, KILLED, "interrupted; superseded by a newer job")
    if unfinished:
        return unfinished[-1]
    if inputs is None:
        return None
    last = engine.state.last_job(rec.name, DECIDED)
    if last is not None and last.trigger_key() == trigger_key(inputs, rec.hash, rec.epoch):
        return None
    return engine.new_job(rec, inputs)


def _heads(
    engine: Engine, specs: dict[str, PipelineSpec]
) -> dict[str, list[dict[str, str]] | None]:
    return {name: input_heads(engine.repository, spec) for name, spec in specs.items()}


#: How often ``run_pending`` looks whether another process is done with a pipeline.
LOCK_POLL = 0.2


async def _acquire_waiting(
    home: Path, lock: FileLock, name: str, notify: Callable[[str], None]
) -> bool:
    """Take ``lock``; if another process (the daemon's scheduler) holds it, say so once and
    wait until it lets go. True if we had to wait."""
    note = f"pid {os.getpid()}"
    if lock.try_acquire(note):
        return False
    holder = scheduler_pid(home)
    by = f"the scheduler ({holder})" if holder else "another process"
    notify(f"pipeline {name} is being processed by {by}; waiting for it to finish")
    while not lock.try_acquire(note):
        await trio.sleep(LOCK_POLL)
    return True


async def run_pending(
    engine: Engine,
    names: list[str] | None = None,
    *,
    report: Callable[[JobRecord | PipelineRecord], None] = lambda _x: None,
    notify: Callable[[str], None] = lambda _m: None,
) -> list[JobRecord]:
    """Process the pending input of the named pipelines (all running ones by default, in DAG
    order) now, in this process; ``report`` gets each finished job, or the record of a
    pipeline that had nothing to do. Returns the jobs run.

    A pipeline another process is working on (the daemon's scheduler, another ``pipeline
    run``) is waited for rather than refused: ``notify`` says so, and when that process is
    done the job it finished is reported as if run here (it processed the same pending input),
    and whatever input arrived meanwhile is processed here."""
    home = engine.repository.home
    await engine.repo_call(engine.sweep_records)  # what a crash after a commit left behind
    if names:
        records = [engine.state.pipeline(n) for n in names]
        for rec in records:
            if rec.state != RUNNING:
                raise InvalidInput(
                    f"pipeline {rec.name} is stopped; `pfsfs pipeline start {rec.name}` first"
                )
    else:
        records = [r for r in engine.state.list_pipelines() if r.state == RUNNING]
    jobs = []
    every = {r.name: r for r in engine.state.list_pipelines()}
    upstream = upstream_of({n: parse_spec_dict(r.spec) for n, r in every.items()})
    for rec in topological(records) if not names else records:
        ups = upstream.get(rec.name, set())
        failed = [
            d for u in sorted(ups) if (d := decided(engine, u)) is not None and d.state == FAILURE
        ]
        if failed and every[rec.name].state == RUNNING:
            why = await engine.repo_call(_blocked_by_failure, engine, rec.name, every, upstream)
            if why:
                notify(f"pipeline {rec.name}: not run: {why}")
                continue
        lock = pipeline_lock(home, rec.name)
        before = engine.state.last_job(rec.name, DECIDED)
        before_id = before.id if before is not None else None
        waited = await _acquire_waiting(home, lock, rec.name, notify)
        try:
            rec = engine.state.pipeline(rec.name)  # as it is now that we hold its lock
            spec = parse_spec_dict(rec.spec)
            inputs = await engine.repo_call(input_heads, engine.repository, spec)
            job = claim_job(engine, rec, inputs)
            if job is None:
                done = engine.state.last_job(rec.name, DECIDED) if waited else None
                report(done if done is not None and done.id != before_id else rec)
                continue
            job = await engine.run_job(job, stop_reason=lambda: "interrupted")
            jobs.append(job)
            report(job)
        finally:
            lock.release()
    return jobs


def _blocked_by_failure(
    engine: Engine, name: str, every: dict[str, PipelineRecord], upstream: dict[str, set[str]]
) -> str | None:
    """The `blocker` of ``name`` if it is an upstream failure (``pipeline run`` runs the DAG in
    order, so only a failure can still be in the way)."""
    ups = upstream.get(name, set())
    specs = {u: parse_spec_dict(every[u].spec) for u in ups}
    heads = _heads(engine, specs)
    last = {u: decided(engine, u) for u in ups}
    why = blocker(name, upstream, every, heads, last, set())
    return why if why is not None and "failed" in why else None


@dataclass
class _Active:
    job: JobRecord
    lock: FileLock
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    reason: str = "the scheduler stopped"

    def cancel(self, reason: str) -> None:
        if not self.scope.cancel_called:
            log.info("killing job %s of %s: %s", self.job.id, self.job.pipeline, reason)
            self.reason = reason
            self.scope.cancel()


class Scheduler:
    """The polling loop; ``active`` maps pipeline names to their running job."""

    def __init__(self, engine: Engine, poll_interval: float) -> None:
        self.engine = engine
        self.home = engine.repository.home
        self.poll_interval = poll_interval
        self.active: dict[str, _Active] = {}
        self._specs: dict[str, PipelineSpec] = {}
        self._settled: dict[str, tuple[Any, ...]] = {}
        self._decided: dict[str, Decided | None] = {}
        self._next_full_check = 0.0

    def _spec(self, rec: PipelineRecord) -> PipelineSpec:
        spec = self._specs.get(rec.hash)
        if spec is None:
            spec = self._specs[rec.hash] = parse_spec_dict(rec.spec)
        return spec

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    await self.poll(nursery)
                except PfsError as exc:
                    log.warning("scheduler: %s", exc.message)
                except Exception:  # one bad record must not stop every pipeline
                    log.exception("scheduler: poll failed")
                await trio.sleep(self.poll_interval)

    async def poll(self, nursery: trio.Nursery) -> None:
        records = {r.name: r for r in self.engine.state.list_pipelines()}
        for name, active in list(self.active.items()):
            rec = records.get(name)
            if rec is None:
                active.cancel("the pipeline was deleted")
            elif rec.state != RUNNING:
                active.cancel("the pipeline was stopped")
            elif rec.hash != active.job.spec_hash or rec.epoch != active.job.epoch:
                active.cancel(f"the pipeline was updated to version {rec.version}")
        running = {n: self._spec(r) for n, r in records.items() if r.state == RUNNING}
        idle = {name: spec for name, spec in running.items() if name not in self.active}
        if not idle:
            return
        heads = await self.engine.repo_call(_heads, self.engine, running)
        full = time.monotonic() >= self._next_full_check
        if full:  # look for interrupted jobs (a `pipeline run` that died) now and then
            self._next_full_check = time.monotonic() + FULL_CHECK_INTERVAL
            self._decided.clear()
        upstream = upstream_of({n: self._spec(r) for n, r in records.items()})
        for name in running:
            if name not in self._decided:
                self._decided[name] = decided(self.engine, name)
        for name in idle:
            rec, inputs = records[name], heads[name]
            key = trigger_key(inputs, rec.hash, rec.epoch) if inputs else None
            if not full and name in self._settled and key == self._settled[name]:
                continue
            why = blocker(name, upstream, records, heads, self._decided, set(self.active))
            if why is not None:
                log.debug("pipeline %s waits: %s", name, why)
                continue
            lock = pipeline_lock(self.home, name)
            if not lock.try_acquire(f"scheduler pid {os.getpid()}"):
                continue  # `pfsfs pipeline run` is processing it
            try:
                job = claim_job(self.engine, rec, inputs)
            except BaseException:
                lock.release()
                raise
            if job is None:
                self._settled[name] = key
                lock.release()
                continue
            self._settled.pop(name, None)
            active = self.active[name] = _Active(job, lock)
            nursery.start_soon(self._run, active)

    async def _run(self, active: _Active) -> None:
        try:
            with active.scope:
                await self.engine.run_job(active.job, stop_reason=lambda: active.reason)
        except Exception:
            log.exception("job %s crashed", active.job.id)
        finally:
            self._decided.pop(active.job.pipeline, None)  # reread at the next poll
            active.lock.release()
            self.active.pop(active.job.pipeline, None)


async def run_scheduler(
    home: Path | str,
    *,
    poll_interval: float = 0.2,
    repository: Repository | None = None,
    options: EngineOptions | None = None,
    repo_limiter: trio.CapacityLimiter | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the scheduler until cancelled. Pass ``repository`` when the host process already has
    the home open (an LMDB environment must not be opened twice in one process), and
    ``repo_limiter`` if the host's own threads use that Repository too (jobs then take turns
    with them). ``task_status.started`` gets the ``Scheduler``."""
    home = Path(home).expanduser()
    lock = scheduler_lock(home)
    if not lock.try_acquire(f"pid {os.getpid()}"):
        raise Conflict(f"a pipeline scheduler is already running for {home} ({lock.holder()})")
    repo = repository
    try:
        if repo is None:
            repo = await trio.to_thread.run_sync(Repository.open, home)
        scheduler = Scheduler(Engine(repo, options, repo_limiter), poll_interval)
        await scheduler.engine.repo_call(scheduler.engine.sweep_records)
        log.info("pipeline scheduler started for %s (pid %d)", home, os.getpid())
        task_status.started(scheduler)
        await scheduler.run()
    finally:
        if repository is None and repo is not None:
            repo.close()
        lock.release()
        log.info("pipeline scheduler stopped")


async def _serve(home: Path, poll_interval: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_scheduler, home, poll_interval=poll_interval))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("scheduler: %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
    from ..home import default_home

    parser = argparse.ArgumentParser(
        prog="python -m pfsfs.pipeline.scheduler",
        description="Run the pfsfs pipeline scheduler in the foreground (SIGTERM stops it).",
    )
    parser.add_argument("--home", default=None, help="pfsfs home (default: $PFSFS_HOME)")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    home = Path(args.home).expanduser() if args.home else default_home()
    try:
        trio.run(_serve, home, args.poll_interval)
    except PfsError as exc:
        print(f"pfsfs scheduler: error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    # Run the imported module's main, so loggers and locks are named pfsfs.pipeline.scheduler.
    from pfsfs.pipeline.scheduler import main as _main

    _main()
