"""When a Kubernetes job's plan and datum records leave the bucket.

A datum record is what keeps a pod's output objects alive (a gc root, see
``protocol.record_roots``) until the scheduler's output commit references them. After that
commit it is dead weight: a gc root forever (a deleted output repo, branch or rolled-back
commit would never free what it names; a failed job's outputs no commit took would stay), and
one more key in every listing. So:

- **A job that committed** (state ``success``: its output commit is on the branch) loses its
  plan and records right after the commit (``Engine.run_job``); from then on the commit is
  what keeps its outputs.
- **A job that failed** (or was killed or cancelled) keeps them: its recorded datums are in the
  datum cache, and the next job of its pipeline reuses them instead of running them again
  (nothing a sidecar acknowledged is lost). They go once a later job of the same pipeline
  commits (that commit references whatever it reused), or ``FAILED_RETENTION`` after the job
  ended, whichever comes first. gc then reclaims the outputs no commit took; their datum-cache
  entries are not reused any more (a hit needs every object in the index, and gc forgets what
  it deletes).
- ``pfsfs pipeline delete`` deletes those of every job of the pipeline (``forget_jobs``).
- **A crash between commit and cleanup** leaves them behind; the next start of a scheduler
  (the daemon's, or ``pfsfs pipeline run``) sweeps them (``sweep``) by the same rules. A job
  that crashed after its commit but before its state said so is still ``running``: its next
  run finds its commit, becomes ``success`` and is cleaned then.

Records of a job that has not committed (running, or failed within the retention) are never
deleted, nor are those of a job this home does not know (another scheduler sharing the
bucket owns them; fsck accepts them, gc keeps what they name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ..pipeline.state import SUCCESS, PipelineState
from ..refs import JOB_RECORDS, Refs
from ..store.base import ObjectStore

log = logging.getLogger(__name__)

FAILED_RETENTION = 7 * 86400.0
"""Seconds a failed job's records stay for a later job to reuse (see the module docstring)."""


def jobs_with_records(store: ObjectStore) -> set[str]:
    """The ids of every job with a plan or a datum record in the store."""
    return {
        name[len(JOB_RECORDS) :].split("/", 1)[0] for name, _ in store.list_refs(JOB_RECORDS)
    }


def delete_job_records(store: ObjectStore, job_id: str) -> int:
    """Delete the job's datum records, then its plan (a plan without records is still a job
    to sweep, records without a plan are not); the number of refs deleted."""
    refs = sorted(store.list_refs(f"{JOB_RECORDS}{job_id}/"), key=lambda r: r[0].endswith("/plan"))
    refs_owner = Refs(store)
    deleted = 0
    for name, value in refs:
        # False: deleted meanwhile by another sweep, which is fine
        deleted += refs_owner.delete_job_record(name, value)
    if deleted:
        log.info("job %s: deleted its plan and %d datum record(s)", job_id, deleted - 1)
    return deleted


def forget_jobs(store: ObjectStore, job_ids: Iterable[str]) -> int:
    """Delete the records of these jobs (their pipeline is being deleted)."""
    return sum(delete_job_records(store, job_id) for job_id in job_ids)


def releasable(
    state: PipelineState, job_ids: Iterable[str], now_ns: int | None = None
) -> list[str]:
    """Which of ``job_ids`` (jobs with records) may lose them now: see the module docstring."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    out = []
    successes: dict[str, list[int]] = {}
    for job_id in sorted(job_ids):
        job = state.get_job(job_id)
        if job is None or not job.finished:
            continue  # not ours, or not decided yet
        if job.state == SUCCESS and job.output:
            out.append(job_id)
            continue
        if job.state == SUCCESS:
            continue
        if job.pipeline not in successes:
            successes[job.pipeline] = [
                j.created_ns
                for j in state.jobs_of(job.pipeline)
                if j.state == SUCCESS and j.output
            ]
        superseded = any(created > job.created_ns for created in successes[job.pipeline])
        expired = job.finished_ns and now_ns - job.finished_ns > FAILED_RETENTION * 1e9
        if superseded or expired:
            out.append(job_id)
    return out


def sweep(store: ObjectStore, state: PipelineState, now_ns: int | None = None) -> list[str]:
    """Delete the records of every job that may lose them (``releasable``); their ids."""
    done = releasable(state, jobs_with_records(store), now_ns)
    for job_id in done:
        delete_job_records(store, job_id)
    return done
