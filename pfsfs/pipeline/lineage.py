"""Lineage: where a commit came from, what was made from it, and waiting for it to flow through.

* ``upstream`` (``pfsfs provenance``): the input commits named in an output commit's
  provenance, transitively. Read from the commits themselves, so it works on any machine.
* ``downstream`` (``pfsfs subvenance``): the output commits whose provenance names a commit,
  transitively (every branch of every pipeline output repo is scanned once per call).
* ``wait_status`` (``pfsfs wait``, Pachyderm's flush): has every pipeline downstream of a
  commit processed it (or a later commit of the same branch, since commits arriving during a job
  are coalesced)? Uses this machine's job records, which also know about failures.
* ``render_dot`` / ``render_mermaid``: the lineage graph as text a person can render.
* ``why`` (``pfsfs why``): which datum, with which input files, wrote an output path.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput, NotFound
from ..ids import to_hex
from ..repository import Repository
from .commitsets import commit_origins, origin_key
from .engine import input_heads, on_branch
from .spec import PipelineSpec, parse_spec_dict
from .state import (
    FAILURE,
    RUNNING,
    SUCCESS,
    JobRecord,
    PipelineRecord,
    PipelineState,
    trigger_key,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    """A commit of a repo (``branch`` when known)."""

    repo: str
    commit: str
    branch: str | None = None

    def short(self) -> str:
        return f"{self.repo}@{self.commit[:12]}"

    def full(self) -> str:
        return f"{self.repo}@{self.commit}"


@dataclass(frozen=True)
class Edge:
    """``src`` was an input of the job of ``pipeline`` that made ``dst``."""

    src: Node
    dst: Node
    pipeline: str
    job: str


def _key(node: Node) -> tuple[str, str]:
    return node.repo, node.commit


def upstream(repository: Repository, start: Node) -> list[Edge]:
    """Edges from every commit ``start`` was made from, transitively (breadth first)."""
    edges: list[Edge] = []
    seen = {_key(start)}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        prov = repository.read_commit(bytes.fromhex(node.commit)).provenance
        for i in prov.get("inputs") or []:
            src = Node(i["repo"], i["commit"], i.get("branch"))
            edges.append(Edge(src, node, prov.get("pipeline", "?"), prov.get("job", "?")))
            if _key(src) not in seen:
                seen.add(_key(src))
                queue.append(src)
    return edges


def _made_from(repository: Repository) -> dict[tuple[str, str], list[Edge]]:
    """(input repo, input commit) → edges to the output commits made from it."""
    index: dict[tuple[str, str], list[Edge]] = {}
    for info in repository.list_repos():
        if not info.output_of:
            continue
        heads = [c for c in info.branches.values() if c]
        branch_of = {c: b for b, c in info.branches.items() if c}
        for cid, commit in repository.log_many(heads):
            prov = commit.provenance
            dst = Node(info.name, to_hex(cid), branch_of.get(cid))
            for i in prov.get("inputs") or []:
                src = Node(i["repo"], i["commit"], i.get("branch"))
                edge = Edge(src, dst, prov.get("pipeline", info.output_of), prov.get("job", "?"))
                index.setdefault(_key(src), []).append(edge)
    return index


def downstream(repository: Repository, start: Node) -> list[Edge]:
    """Edges to every commit made from ``start``, transitively (breadth first)."""
    index = _made_from(repository)
    edges: list[Edge] = []
    seen = {_key(start)}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for edge in sorted(index.get(_key(node), []), key=lambda e: (e.dst.repo, e.dst.commit)):
            edges.append(edge)
            if _key(edge.dst) not in seen:
                seen.add(_key(edge.dst))
                queue.append(edge.dst)
    return edges


# -- wait -----------------------------------------------------------------------------------------


class Ancestry:
    """``is_ancestor`` with a cache (commit histories are immutable)."""

    def __init__(self, repository: Repository, limit: int = 100_000) -> None:
        self.repository = repository
        self.limit = limit
        self._cache: dict[tuple[str, str], bool] = {}

    def is_ancestor(self, old: str, new: str) -> bool:
        """True if commit ``old`` is ``new`` or one of its ancestors."""
        if old == new:
            return True
        key = (old, new)
        if key not in self._cache:
            old_time = self.repository.read_commit(bytes.fromhex(old)).time_ns
            found = False
            for n, (cid, commit) in enumerate(self.repository.log(bytes.fromhex(new))):
                if to_hex(cid) == old:
                    found = True
                    break
                if commit.time_ns < old_time or n > self.limit:
                    break
            self._cache[key] = found
        return self._cache[key]


@dataclass
class WaitStatus:
    """Where a commit stands in the DAG below it (its commit set)."""

    outputs: list[Node] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    """The job of each downstream pipeline that processed the commit, in DAG order."""
    unchanged: list[str] = field(default_factory=list)
    """Downstream pipelines the commit does not concern (only undeclared code changed)."""

    @property
    def done(self) -> bool:
        return not self.waiting and not self.stalled


def branches_holding(repository: Repository, node: Node) -> list[str]:
    """The branches of ``node.repo`` whose history holds ``node.commit``."""
    if node.branch is not None:
        return [node.branch]
    try:
        branches = repository.list_branches(node.repo)
    except NotFound:
        return []
    return [b for b in sorted(branches) if on_branch(repository, node.repo, b, node.commit)]


def targets_of(repository: Repository, node: Node) -> dict[str, str]:
    """The origins a downstream job must have processed to have processed ``node``: the commit
    itself if no pipeline made it, else the origins recorded in its provenance."""
    prov = repository.read_commit(bytes.fromhex(node.commit)).provenance
    if prov.get("job"):
        branch = node.branch or prov.get("branch") or "master"
        return commit_origins(repository, node.repo, branch, node.commit).origins
    return {origin_key(node.repo, b): node.commit for b in branches_holding(repository, node)}


def _covers(job: JobRecord, targets: dict[str, str], ancestry: Ancestry) -> bool:
    for key, commit in targets.items():
        repo, _, branch = key.partition("@")
        got = job.origins.get(key) or job.input_commit(repo, branch)
        if got is None or not ancestry.is_ancestor(commit, got):
            return False
    return True


def wait_status(repository: Repository, state: PipelineState, start: Node) -> WaitStatus:
    """Which pipelines downstream of ``start`` processed it (their job and output commit),
    failed on it, are yet to process it, are stopped, or are not concerned by it (a
    ``transform.code`` input whose declared files it did not change). Pipelines are visited in
    DAG order; a pipeline is concerned if it reads ``start``'s branch or the output of a
    concerned pipeline that made a commit for it."""
    from .scheduler import topological, upstream_of

    status = WaitStatus()
    ancestry = Ancestry(repository)
    records = state.list_pipelines()
    specs = {r.name: parse_spec_dict(r.spec) for r in records}
    upstream = upstream_of(specs)
    targets = targets_of(repository, start)
    start_branches = set(branches_holding(repository, start))
    changed: set[str] = set()
    settled: set[str] = set()
    seen_outputs: set[tuple[str, str]] = set()
    for rec in topological(records):
        spec = specs[rec.name]
        direct = any(r == start.repo and b in start_branches for r, b in spec.input_branches())
        via = {u for u in upstream[rec.name] if u in changed and u in spec.input_repos()}
        if not direct and not via:
            continue
        covering = [
            j
            for j in state.jobs_of(rec.name)
            if j.state in (SUCCESS, FAILURE) and _covers(j, targets, ancestry)
        ]
        done = next((j for j in covering if j.state == SUCCESS and j.output), None)
        if done is not None:
            assert done.output is not None
            status.jobs.append(done)
            changed.add(rec.name)
            settled.add(rec.name)
            out = Node(rec.name, done.output, spec.output_branch)
            if _key(out) not in seen_outputs:
                seen_outputs.add(_key(out))
                status.outputs.append(out)
            continue
        failed = [j for j in covering if j.state == FAILURE]
        if rec.state != RUNNING:
            status.stalled.append(f"pipeline {rec.name} is stopped")
        elif failed and _settled_failure(repository, state, rec, spec, failed):
            last = failed[-1]
            status.jobs.append(last)
            settled.add(rec.name)
            status.failures.append(f"job {last.id} of pipeline {rec.name} failed: {last.reason}")
        elif _unconcerned(repository, state, rec, spec, upstream[rec.name], settled, changed):
            settled.add(rec.name)
            status.unchanged.append(rec.name)
        else:
            status.waiting.append(rec.name)
    return status


def _unconcerned(
    repository: Repository,
    state: PipelineState,
    rec: PipelineRecord,
    spec: PipelineSpec,
    upstream: set[str],
    settled: set[str],
    changed: set[str],
) -> bool:
    """No job covers the commit, yet none will come: everything concerned above is done and
    the pipeline's current input triggers nothing (its last job's trigger is current)."""
    if any(u in changed and u not in settled for u in upstream):
        return False
    heads = input_heads(repository, spec)
    last = state.last_job(rec.name, frozenset({SUCCESS, FAILURE}))
    if heads is None or last is None:
        return False
    return last.trigger_key() == trigger_key(heads, rec.hash, rec.epoch)


def _settled_failure(
    repository: Repository,
    state: PipelineState,
    rec: PipelineRecord,
    spec: PipelineSpec,
    covering: list[JobRecord],
) -> bool:
    """True if the pipeline's newest job failed on the commit and nothing changed since (no
    new input, spec or epoch), so no job will process it."""
    if not covering or covering[-1].state != FAILURE:
        return False
    last = state.last_job(rec.name)
    if last is None or last.id != covering[-1].id:
        return False
    heads = input_heads(repository, spec)
    return heads is not None and last.trigger_key() == trigger_key(heads, rec.hash, rec.epoch)


# -- graphs ---------------------------------------------------------------------------------------


def lineage_edges(repository: Repository, start: Node) -> list[Edge]:
    return upstream(repository, start) + downstream(repository, start)


def _job_id(edge: Edge) -> str:
    return f"job_{edge.pipeline}_{edge.job}"


def render_dot(start: Node, edges: list[Edge]) -> str:
    """A Graphviz digraph: commits as boxes, jobs as ellipses, ``start`` highlighted."""
    lines = ["digraph lineage {", "  rankdir=LR;", "  node [fontname=monospace];"]
    commits = {_key(start): start}
    jobs: dict[str, Edge] = {}
    for e in edges:
        commits.setdefault(_key(e.src), e.src)
        commits.setdefault(_key(e.dst), e.dst)
        jobs.setdefault(_job_id(e), e)
    for key, node in sorted(commits.items()):
        branch = f" ({node.branch})" if node.branch else ""
        style = ", style=bold, color=blue" if key == _key(start) else ""
        label = f"{node.repo}{branch}\\n{node.commit[:12]}"
        lines.append(f'  "{node.short()}" [shape=box, label="{label}"{style}];')
    for jid, e in sorted(jobs.items()):
        lines.append(f'  "{jid}" [shape=ellipse, label="{e.pipeline}\\njob {e.job[:12]}"];')
    pairs = set()
    for e in edges:
        pairs.add((e.src.short(), _job_id(e)))
        pairs.add((_job_id(e), e.dst.short()))
    for a, b in sorted(pairs):
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_mermaid(start: Node, edges: list[Edge]) -> str:
    """A Mermaid flowchart: commits as boxes, jobs as stadiums, ``start`` highlighted."""
    ids: dict[str, str] = {}

    def ident(key: str) -> str:
        return ids.setdefault(key, f"n{len(ids)}")

    lines = ["flowchart LR"]
    commits = {_key(start): start}
    jobs: dict[str, Edge] = {}
    for e in edges:
        commits.setdefault(_key(e.src), e.src)
        commits.setdefault(_key(e.dst), e.dst)
        jobs.setdefault(_job_id(e), e)
    for _, node in sorted(commits.items()):
        branch = f" ({node.branch})" if node.branch else ""
        lines.append(f'  {ident(node.short())}["{node.repo}{branch}<br/>{node.commit[:12]}"]')
    for jid, e in sorted(jobs.items()):
        lines.append(f'  {ident(jid)}(["{e.pipeline}<br/>job {e.job[:12]}"])')
    pairs = set()
    for e in edges:
        pairs.add((ident(e.src.short()), ident(_job_id(e))))
        pairs.add((ident(_job_id(e)), ident(e.dst.short())))
    for a, b in sorted(pairs):
        lines.append(f"  {a} --> {b}")
    lines.append(f"  style {ident(start.short())} stroke-width:3px")
    return "\n".join(lines) + "\n"


# -- why --------------------------------------------------------------------------------------


def why(repository: Repository, state: PipelineState, node: Node, path: str) -> dict[str, Any]:
    """Which datum(s) of the job that made ``node`` wrote ``path`` (a file, or a directory:
    every datum that wrote below it), with their input files."""
    commit = repository.read_commit(bytes.fromhex(node.commit))
    prov = commit.provenance
    if not prov.get("job"):
        raise InvalidInput(f"{node.short()} was not made by a pipeline (no provenance)")
    root = repository.root_of(bytes.fromhex(node.commit))
    parts = tuple(os.fsencode(p) for p in path.split("/") if p)
    repository.lookup(root, parts, f"{node.short()}:")  # NotFound if the path is not there
    job_id = prov["job"]
    job = state.get_job(job_id)
    result: dict[str, Any] = {
        "ref": f"{node.full()}:{path}",
        "pipeline": prov.get("pipeline"),
        "job": job_id,
        "inputs": prov.get("inputs") or [],
        "datums": [],
    }
    if job is None:
        result["note"] = f"job {job_id} is not known on this machine; only its inputs are"
        return result
    wanted = "/" + "/".join(p.decode(errors="surrogateescape") for p in parts)
    below = wanted.rstrip("/") + "/"
    for d in state.datums_of(job_id):
        hits = [o for o in d.outputs if o[0] == wanted or wanted == "/" or o[0].startswith(below)]
        if not hits:
            continue
        result["datums"].append(
            {
                "id": d.id,
                "state": d.state,
                "from_job": d.from_job or job_id,
                "desc": d.desc,
                "outputs": [o[0] for o in hits],
                "read": list(d.read),
                "trace": d.trace,
                "inputs": [
                    {"name": n, "repo": r, "commit": c, "path": p, "content_id": cid}
                    for n, r, c, p, cid in d.inputs
                ],
            }
        )
    if not result["datums"]:
        raise NotFound(f"no datum of job {job_id} wrote {wanted}")
    return result
