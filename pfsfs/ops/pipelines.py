"""Pipeline administration: stopping and starting a pipeline, the checks before a delete, and
the delete itself (its jobs' records and directories, and unless kept its output repo)."""

from __future__ import annotations

import shutil

from ..errors import Conflict
from ..k8s.retention import forget_jobs
from ..pipeline.engine import jobs_dir
from ..pipeline.spec import parse_spec_dict
from ..pipeline.state import PipelineState
from ..repository import Repository


def readers_of(state: PipelineState, name: str) -> list[str]:
    """The other pipelines that read repo ``name``, sorted."""
    return sorted(
        r.name
        for r in state.list_pipelines()
        if r.name != name and name in parse_spec_dict(r.spec).input_repos()
    )


def check_delete(repository: Repository, name: str, *, keep_repo: bool) -> None:
    """Raise unless pipeline ``name`` may be deleted now: ``NotFound`` if there is none,
    ``Conflict`` if its output repo is to go while another pipeline reads it."""
    state = PipelineState(repository.index)
    state.pipeline(name)
    readers = readers_of(state, name)
    if readers and not keep_repo:
        raise Conflict(
            f"pipeline {readers[0]} reads repo {name}; delete it first "
            "(or keep the repo with --keep-repo)"
        )


def delete_pipeline(repository: Repository, name: str, *, keep_repo: bool) -> None:
    """Delete pipeline ``name``, its jobs, datum records and cache, its jobs' directories, and
    (unless ``keep_repo``) its output repo. Call ``check_delete`` first."""
    job_ids = PipelineState(repository.index).delete_pipeline(name)
    forget_jobs(repository.store, job_ids)  # Kubernetes job records in the store
    if not keep_repo and name in {r.name for r in repository.list_repos()}:
        repository.delete_repo(name)
    for job_id in job_ids:
        shutil.rmtree(jobs_dir(repository.home) / job_id, ignore_errors=True)


def set_pipeline_state(repository: Repository, name: str, new: str) -> bool:
    """Put pipeline ``name`` in state ``new`` (``RUNNING`` or ``STOPPED``); False if it was
    in that state already. ``NotFound`` if there is no such pipeline."""
    state = PipelineState(repository.index)
    rec = state.pipeline(name)
    if rec.state == new:
        return False
    rec.state = new
    state.put_pipeline(rec)
    return True
