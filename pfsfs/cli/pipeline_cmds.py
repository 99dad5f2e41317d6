"""``pfsfs pipeline|job|datum ...``, ``logs``, and the lineage commands (``provenance``,
``subvenance``, ``wait``, ``lineage``, ``why``).

Pipeline definitions and job state live in the home's index (``pfsfs.pipeline.state``); jobs
run in the scheduler (the mount daemon, or ``python -m pfsfs.pipeline.scheduler``) or in the
foreground with ``pfsfs pipeline run``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import Conflict, InvalidInput, PfsError
from ..ids import to_hex
from ..refspec import parse_ref
from .common import SECONDS, UTF8_TEXT, AppContext, emit_json, human_time, json_option, pass_app
from .completion import complete_ref


def _state(app: AppContext) -> Any:
    from ..pipeline.state import PipelineState

    return PipelineState(app.repo.index)


def _load(app: AppContext, path: str) -> Any:
    """The spec at ``path`` (- = stdin), every field error at once, missing repos included."""
    from ..pipeline.spec import load_spec, parse_spec, read_spec_text

    repos = {r.name for r in app.repo.list_repos()}
    if path == "-":
        return parse_spec(read_spec_text(sys.stdin.buffer, "stdin"), repos=repos)
    return load_spec(path, repos=repos)


def _hint(app: AppContext, name: str) -> None:
    """Make sure something processes pipelines: the daemon hosts the scheduler, so start the
    daemon if neither it nor a scheduler runs (``PFSFS_NO_DAEMON=1``: only say so)."""
    from ..daemon_client import DaemonClient
    from ..pipeline.scheduler import scheduler_pid

    if scheduler_pid(app.home_path) is not None:
        return
    if os.environ.get("PFSFS_NO_DAEMON"):
        click.echo(
            f"note: nothing is processing pipelines for this home; run `pfsfs pipeline run "
            f"{name}` now, or start the daemon (`pfsfs daemon`), which runs them.",
            err=True,
        )
        return
    client = DaemonClient(app.home_path)
    if client.ping() is None:
        info = client.ensure_running()
        click.echo(
            f"started the pfsfs daemon (pid {info.get('pid', '?')}); it runs the pipelines",
            err=True,
        )


def _describe_input(spec_dict: dict[str, Any]) -> str:
    from ..pipeline.spec import iter_pfs, parse_spec_dict

    spec = parse_spec_dict(spec_dict)
    return " ".join(f"{p.repo}@{p.branch}:{p.glob}" for _, p in iter_pfs(spec.input))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "pipeline": job.pipeline,
        "state": job.state,
        "reason": job.reason,
        "version": job.version,
        "spec": job.spec_hash,
        "inputs": job.inputs,
        "counts": job.counts,
        "output": job.output,
        "created": human_time(job.created_ns) if job.created_ns else None,
        "started": human_time(job.started_ns) if job.started_ns else None,
        "finished": human_time(job.finished_ns) if job.finished_ns else None,
        "duration": job.duration(),
        "restarts": job.restarts,
        "commitset": job.commitset,
        "origins": job.origins,
        "warnings": job.warnings,
    }


def _counts(job: Any) -> str:
    c = job.counts or {}
    return (
        f"{c.get('processed', 0)} processed, {c.get('skipped', 0)} skipped, "
        f"{c.get('failed', 0)} failed of {c.get('total', 0)}"
    )


# -- pipeline -----------------------------------------------------------------------------------


@click.group()
def pipeline() -> None:
    """Create, update, inspect and run pipelines."""


@pipeline.command("create")
@click.option("-f", "--file", "path", required=True, help="Spec file (YAML or JSON; - = stdin).")
@pass_app
def pipeline_create(app: AppContext, path: str) -> None:
    """Create a pipeline and its output repo (named like the pipeline)."""
    from ..pipeline.state import create_pipeline

    spec = _load(app, path)
    create_pipeline(app.repo, spec)
    click.echo(f"created pipeline {spec.name} (output repo {spec.name}@{spec.output_branch})")
    _hint(app, spec.name)


@pipeline.command("update")
@click.option("-f", "--file", "path", required=True, help="Spec file (YAML or JSON; - = stdin).")
@click.option("--reprocess", is_flag=True, help="Run every datum again (ignore reusable output).")
@pass_app
def pipeline_update(app: AppContext, path: str, reprocess: bool) -> None:
    """Replace a pipeline's spec; datums whose transform changed run again."""
    from ..pipeline.state import update_pipeline

    spec = _load(app, path)
    rec, changed = update_pipeline(app.repo, spec, reprocess=reprocess)
    if not changed:
        click.echo(f"pipeline {spec.name} is unchanged (version {rec.version})")
        return
    extra = " (every datum will run again)" if reprocess else ""
    click.echo(f"updated pipeline {spec.name} to version {rec.version}{extra}")
    if rec.state == "running":
        _hint(app, spec.name)


@pipeline.command("list")
@json_option
@pass_app
def pipeline_list(app: AppContext, as_json: bool) -> None:
    """Pipelines with their state and last job."""
    state = _state(app)
    rows = []
    for rec in sorted(state.list_pipelines(), key=lambda r: r.name):
        last = state.last_job(rec.name)
        rows.append(
            {
                "name": rec.name,
                "state": rec.state,
                "version": rec.version,
                "input": _describe_input(rec.spec),
                "last_job": last.id if last else None,
                "last_job_state": last.state if last else None,
                "created": human_time(rec.created_ns),
            }
        )
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no pipelines (create one with `pfsfs pipeline create -f spec.yaml`)")
        return
    click.echo(f"{'NAME':<20} {'STATE':<8} {'VER':>3}  {'LAST JOB':<34} INPUT")
    for r in rows:
        last = f"{r['last_job']} {r['last_job_state']}" if r["last_job"] else "-"
        click.echo(f"{r['name']:<20} {r['state']:<8} {r['version']:>3}  {last:<34} {r['input']}")


@pipeline.command("inspect")
@click.argument("name", type=UTF8_TEXT)
@json_option
@pass_app
def pipeline_inspect(app: AppContext, name: str, as_json: bool) -> None:
    """A pipeline's spec, state and recent jobs."""
    state = _state(app)
    rec = state.pipeline(name)
    jobs = state.jobs_of(name)
    branch = rec.spec.get("output_branch", "master")
    head = app.repo.branch_head(name, branch) if name in _repo_names(app) else None
    d = {
        "name": rec.name,
        "state": rec.state,
        "version": rec.version,
        "spec_hash": rec.hash,
        "created": human_time(rec.created_ns),
        "updated": human_time(rec.updated_ns),
        "output": f"{name}@{branch}",
        "output_head": to_hex(head) if head else None,
        "jobs": len(jobs),
        "recent_jobs": [_job_dict(j) for j in jobs[-5:]][::-1],
        "spec": rec.spec,
    }
    if as_json:
        emit_json(d)
        return
    for key in ("name", "state", "version", "spec_hash", "created", "updated", "output"):
        click.echo(f"{key + ':':<13} {d[key]}")
    click.echo(f"{'output head:':<13} {d['output_head'] or '(no commits yet)'}")
    click.echo(f"{'jobs:':<13} {d['jobs']}")
    for j in d["recent_jobs"]:
        click.echo(f"  {j['id']}  {j['state']:<8} {j['started'] or '-'}  {j['reason']}")
    click.echo("spec:")
    click.echo("  " + json.dumps(rec.spec, indent=2, sort_keys=True).replace("\n", "\n  "))


def _repo_names(app: AppContext) -> set[str]:
    return {r.name for r in app.repo.list_repos()}


@pipeline.command("delete")
@click.argument("name", type=UTF8_TEXT)
@click.option("--force", is_flag=True, help="Do not ask.")
@click.option("--keep-repo", is_flag=True, help="Keep the output repo and its commits.")
@pass_app
def pipeline_delete(app: AppContext, name: str, force: bool, keep_repo: bool) -> None:
    """Delete a pipeline, its jobs and (unless --keep-repo) its output repo."""
    from ..ops.pipelines import check_delete, delete_pipeline

    check_delete(app.repo, name, keep_repo=keep_repo)
    what = "" if keep_repo else " and its output repo"
    if not force:
        click.confirm(f"delete pipeline {name}{what}?", abort=True, err=True)
    delete_pipeline(app.repo, name, keep_repo=keep_repo)
    click.echo(f"deleted pipeline {name}{what}")


def _set_state(app: AppContext, name: str, new: str) -> None:
    from ..ops.pipelines import set_pipeline_state

    if not set_pipeline_state(app.repo, name, new):
        click.echo(f"pipeline {name} is already {new}")
        return
    click.echo(f"pipeline {name} {'started' if new == 'running' else 'stopped'}")


@pipeline.command("stop")
@click.argument("name", type=UTF8_TEXT)
@pass_app
def pipeline_stop(app: AppContext, name: str) -> None:
    """Stop a pipeline: no new jobs; a running job is killed."""
    _set_state(app, name, "stopped")


@pipeline.command("start")
@click.argument("name", type=UTF8_TEXT)
@pass_app
def pipeline_start(app: AppContext, name: str) -> None:
    """Start a stopped pipeline: pending input gets processed."""
    _set_state(app, name, "running")
    _hint(app, name)


@pipeline.command("run")
@click.argument("names", nargs=-1, type=UTF8_TEXT)
@pass_app
def pipeline_run(app: AppContext, names: tuple[str, ...]) -> None:
    """Process pending input now, in the foreground (all running pipelines in DAG order, or
    the NAMES given). A pipeline the daemon is processing is waited for, and its job
    reported. Exits non-zero if a job fails."""
    import trio

    from ..pipeline.engine import Engine
    from ..pipeline.scheduler import run_pending

    engine = Engine(app.repo)
    failed: list[Any] = []

    def report(item: Any) -> None:
        if not hasattr(item, "counts"):
            click.echo(f"pipeline {item.name}: up to date")
            return
        if item.state == "success":
            click.echo(
                f"job {item.id} of {item.pipeline}: success ({_counts(item)}) in "
                f"{_duration(item.duration())}; output {item.pipeline}@{(item.output or '')[:12]}"
            )
        else:
            failed.append(item)
            click.echo(f"job {item.id} of {item.pipeline}: {item.state}: {item.reason}")

    def notify(message: str) -> None:
        click.echo(message, err=True)

    trio.run(lambda: run_pending(engine, list(names) or None, report=report, notify=notify))
    if failed:
        job = failed[0]
        raise PfsError(
            f"job {job.id} of pipeline {job.pipeline} {job.state}; see `pfsfs logs {job.id}`"
        )


# -- jobs, datums, logs -------------------------------------------------------------------------


@click.group()
def job() -> None:
    """List and inspect pipeline jobs."""


@job.command("list")
@click.option(
    "-p", "--pipeline", "name", type=UTF8_TEXT, default=None, help="Only this pipeline's jobs."
)
@json_option
@pass_app
def job_list(app: AppContext, name: str | None, as_json: bool) -> None:
    """Jobs, newest first."""
    state = _state(app)
    if name is not None:
        state.pipeline(name)
    jobs = state.jobs_of(name) if name else state.list_jobs()
    rows = [_job_dict(j) for j in reversed(jobs)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no jobs")
        return
    click.echo(
        f"{'ID':<24}  {'PIPELINE':<16} {'STATE':<9} {'DATUMS P/S/F/T':<15} {'DURATION':>8}  OUTPUT"
    )
    for r in rows:
        c = r["counts"] or {}
        datums = "/".join(str(c.get(k, 0)) for k in ("processed", "skipped", "failed", "total"))
        click.echo(
            f"{r['id']:<24}  {r['pipeline']:<16} {r['state']:<9} {datums:<15} "
            f"{_duration(r['duration']):>8}  {(r['output'] or '-')[:12]}"
        )


@job.command("inspect")
@click.argument("job_id", metavar="JOB")
@json_option
@pass_app
def job_inspect(app: AppContext, job_id: str, as_json: bool) -> None:
    """A job: state, reason, input commits, datum counts, output commit."""
    d = _job_dict(_state(app).find_job(job_id))
    runs = [r for r in _state(app).datums_of(d["id"]) if r.state in ("processed", "failed")]
    traced = sum(1 for r in runs if r.outside_trace == "ok")
    d["outside_traced"] = {"traced": traced, "run": len(runs)}
    if as_json:
        emit_json(d)
        return
    for key in ("id", "pipeline", "state", "reason", "version", "created", "started", "finished"):
        click.echo(f"{key + ':':<10} {d[key] if d[key] not in (None, '') else '-'}")
    click.echo(f"{'duration:':<10} {_duration(d['duration'])}")
    click.echo(f"{'datums:':<10} {_counts(_state(app).find_job(job_id))}")
    click.echo(f"{'output:':<10} {d['pipeline'] + '@' + d['output'] if d['output'] else '-'}")
    if d["restarts"]:
        click.echo(f"{'restarts:':<10} {d['restarts']}")
    click.echo(f"{'commitset:':<10} {d['commitset'] or '-'}")
    click.echo("inputs:")
    for i in d["inputs"]:
        click.echo(f"  {i['repo']}@{i['commit']} ({i['branch']})")
    if runs:
        line = f"opens outside /pfs traced in {traced} of {len(runs)} datums run"
        click.echo(f"{'outside:':<10} {line}")
    for w in d["warnings"]:
        click.echo(f"warning: {w}")


@click.group()
def datum() -> None:
    """The datums of a job."""


@datum.command("list")
@click.argument("job_id", metavar="JOB")
@json_option
@pass_app
def datum_list(app: AppContext, job_id: str, as_json: bool) -> None:
    """Each datum of a job: processed, skipped (output reused) or failed."""
    from dataclasses import asdict

    state = _state(app)
    job_rec = state.find_job(job_id)
    records = state.datums_of(job_rec.id)
    if as_json:
        emit_json([asdict(r) for r in records])
        return
    if not records:
        click.echo(f"job {job_rec.id} has no datum records")
        return
    click.echo(f"{'DATUM':<12}  {'STATE':<9} {'TRIES':>5} {'TIME':>7}  INPUT")
    for r in records:
        line = f"{r.id[:12]}  {r.state:<9} {r.attempts:>5} {_duration(r.duration):>7}  {r.desc}"
        if r.error:
            line += f"  [{r.error}]"
        click.echo(line)


@datum.command("inspect")
@click.argument("job_id", metavar="JOB")
@click.argument("datum_id", metavar="DATUM")
@json_option
@pass_app
def datum_inspect(app: AppContext, job_id: str, datum_id: str, as_json: bool) -> None:
    """One datum: its state, the input files offered, the ones the transform read (traced),
    and the files it wrote."""
    from dataclasses import asdict

    state = _state(app)
    job_rec = state.find_job(job_id)
    r = state.find_datum(job_rec.id, datum_id)
    d = asdict(r)
    d["offered"] = [f"/pfs/{n}{p}" for n, _repo, _c, p, _cid in r.inputs]
    d["wrote"] = [f"/pfs/out{o[0]}" for o in r.outputs]
    if as_json:
        emit_json(d)
        return
    click.echo(f"{'datum:':<9} {r.id}")
    click.echo(f"{'job:':<9} {job_rec.id} ({job_rec.pipeline})")
    reused = f", output reused from job {r.from_job}" if r.from_job else ""
    click.echo(f"{'state:':<9} {r.state}{reused}")
    if r.error:
        click.echo(f"{'error:':<9} {r.error}")
    click.echo(f"{'trace:':<9} {r.trace or 'off'}")
    read = set(r.read)
    click.echo("offered (* = read):")
    for path in d["offered"]:
        click.echo(f"  {'*' if path in read else ' '} {path}")
    _echo_outside(r.outside, r.outside_count, r.outside_trace)
    click.echo("wrote:")
    for path in d["wrote"]:
        click.echo(f"    {path}")


def _echo_outside(paths: list[str], count: int, status: str) -> None:
    """The paths outside /pfs a datum's transform opened (see `pipeline.trace`)."""
    if status.startswith("not traced"):
        click.echo(f"outside /pfs: {status}")
    elif status == "off":
        click.echo("outside /pfs: not traced for this datum (a job traces a sample, see README)")
    elif status != "ok":
        click.echo("outside /pfs: not traced (its runner does not trace opens)")
    elif not paths:
        click.echo("outside /pfs: none opened")
    else:
        click.echo("opened outside /pfs (not declared inputs):")
        for path in paths:
            click.echo(f"    {path}")
        if count > len(paths):
            click.echo(f"    ... and {count - len(paths)} more")


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--datum", "datum_id", default=None, help="Only this datum (id or prefix).")
@pass_app
def logs(app: AppContext, job_id: str, datum_id: str | None) -> None:
    """The stdout and stderr of a job's datums (every attempt)."""
    from ..pipeline.engine import jobs_dir

    state = _state(app)
    job_rec = state.find_job(job_id)
    records = state.datums_of(job_rec.id)
    if datum_id is not None:
        records = [state.find_datum(job_rec.id, datum_id)]
    base = jobs_dir(app.repo.home) / job_rec.id
    shown = 0
    for r in records:
        if not r.logs:
            continue
        log_dir = (base / r.logs).resolve()
        note = f", reused from job {r.from_job}" if r.from_job else ""
        tries = sorted(log_dir.glob("try-*"), key=lambda p: int(p.name.split("-")[1]))
        for attempt in tries:
            for stream in ("stdout", "stderr"):
                text = _read(attempt / f"{stream}.log")
                if not text:
                    continue
                shown += 1
                click.echo(f"--- datum {r.id[:12]} ({r.desc}{note}) {attempt.name} {stream} ---")
                click.echo(text, nl=not text.endswith("\n"))
    if not shown:
        click.echo(f"job {job_rec.id}: no log output", err=True)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


# -- lineage ------------------------------------------------------------------------------------


def _node(app: AppContext, ref: str) -> Any:
    from ..pipeline.lineage import Node

    resolved = app.repo.resolve(ref)
    if resolved.commit is None:
        raise InvalidInput(f"{resolved.describe()} has no commits yet")
    return Node(resolved.repo, to_hex(resolved.commit), resolved.branch)


def _edge_dict(e: Any) -> dict[str, Any]:
    return {
        "from": {"repo": e.src.repo, "commit": e.src.commit, "branch": e.src.branch},
        "to": {"repo": e.dst.repo, "commit": e.dst.commit, "branch": e.dst.branch},
        "pipeline": e.pipeline,
        "job": e.job,
    }


def _print_tree(start: Any, edges: list[Any], up: bool) -> None:
    children: dict[tuple[str, str], list[Any]] = {}
    for e in edges:
        parent, child = (e.dst, e.src) if up else (e.src, e.dst)
        children.setdefault((parent.repo, parent.commit), []).append((child, e))
    click.echo(start.full())
    seen: set[tuple[str, str]] = set()

    def walk(node: Any, depth: int) -> None:
        key = (node.repo, node.commit)
        if key in seen:
            return
        seen.add(key)
        for child, e in children.get(key, []):
            branch = f" ({child.branch})" if child.branch else ""
            how = f"input of {e.pipeline} job {e.job}" if up else f"by {e.pipeline} job {e.job}"
            click.echo(f"{'  ' * depth}{child.full()}{branch}  [{how}]")
            walk(child, depth + 1)

    walk(start, 1)


def _venance(app: AppContext, ref: str, as_json: bool, *, up: bool) -> None:
    """Print the commits upstream (provenance) or downstream (subvenance) of ``ref``."""
    from ..pipeline.lineage import downstream, upstream

    start = _node(app, ref)
    edges = (upstream if up else downstream)(app.repo, start)
    if as_json:
        emit_json({"commit": start.full(), "edges": [_edge_dict(e) for e in edges]})
        return
    if not edges:
        if up:
            click.echo(f"{start.full()} has no provenance (it was not made by a pipeline)")
        else:
            click.echo(f"nothing was made from {start.full()} (yet)")
        return
    _print_tree(start, edges, up=up)


@click.command()
@click.argument("ref", metavar="REPO@REF", shell_complete=complete_ref)
@json_option
@pass_app
def provenance(app: AppContext, ref: str, as_json: bool) -> None:
    """The commits a commit was made from, transitively."""
    _venance(app, ref, as_json, up=True)


@click.command()
@click.argument("ref", metavar="REPO@REF", shell_complete=complete_ref)
@json_option
@pass_app
def subvenance(app: AppContext, ref: str, as_json: bool) -> None:
    """The commits made from a commit, transitively."""
    _venance(app, ref, as_json, up=False)


def start_node(app: AppContext, ref: str) -> Any:
    """The commit ``REPO@REF``, or the origin commit of commit set ``ID`` (no '@')."""
    from ..pipeline.commitsets import find_commitset
    from ..pipeline.lineage import Node

    if "@" in ref:
        return _node(app, ref)
    repo, branch, commit = find_commitset(app.repo, ref)
    return Node(repo, commit, branch)


def _clear_line(shown: int) -> None:
    if shown:
        sys.stderr.write("\r" + " " * shown + "\r")
        sys.stderr.flush()


@click.command()
@click.argument("ref", metavar="REPO@COMMIT|ID", shell_complete=complete_ref)
@click.option("--timeout", type=SECONDS, default=None, help="Give up after S seconds.")
@json_option
@pass_app
def wait(app: AppContext, ref: str, timeout: float | None, as_json: bool) -> None:
    """Block until every downstream pipeline has processed a commit (or commit set ID) and
    print each output commit once (Pachyderm's flush)."""
    from ..pipeline.lineage import wait_status
    from ..pipeline.scheduler import scheduler_pid

    start = start_node(app, ref)
    state = _state(app)
    began = time.monotonic()
    deadline = None if timeout is None else began + timeout
    hinted = False
    shown = 0  # characters of the "waiting for" line on the terminal
    while True:
        status = wait_status(app.repo, state, start)
        if status.failures or status.stalled or status.done:
            _clear_line(shown)
        if status.failures:
            raise PfsError(status.failures[0])
        if status.stalled:
            raise Conflict(f"{status.stalled[0]}; nothing will process {start.short()}")
        if status.done:
            break
        if not hinted and scheduler_pid(app.home_path) is None:
            hinted = True
            click.echo(
                f"note: nothing is processing pipelines; waiting for {', '.join(status.waiting)}"
                " (run `pfsfs pipeline run` or a scheduler)",
                err=True,
            )
        if deadline is not None and time.monotonic() > deadline:
            _clear_line(shown)
            raise PfsError(
                f"timed out after {timeout:g}s waiting for {', '.join(status.waiting)} "
                f"to process {start.short()}"
            )
        if sys.stderr.isatty():  # a long wait says what it waits for, on a terminal only
            line = f"waiting for {', '.join(status.waiting)} ({int(time.monotonic() - began)} s)"
            sys.stderr.write("\r" + line + " " * max(0, shown - len(line)))
            sys.stderr.flush()
            shown = len(line)
        time.sleep(0.2)
    _clear_line(shown)
    if as_json:
        emit_json(
            [{"repo": n.repo, "commit": n.commit, "branch": n.branch} for n in status.outputs]
        )
        return
    for n in status.outputs:
        click.echo(n.full())


@click.command()
@click.argument("ref", metavar="REPO@REF", shell_complete=complete_ref)
@click.option("--dot", "fmt", flag_value="dot", help="Graphviz dot (the default).")
@click.option("--mermaid", "fmt", flag_value="mermaid", help="Mermaid flowchart.")
@pass_app
def lineage(app: AppContext, ref: str, fmt: str | None) -> None:
    """The graph of commits and jobs around a commit, as dot or Mermaid text."""
    from ..pipeline.lineage import lineage_edges, render_dot, render_mermaid

    start = _node(app, ref)
    edges = lineage_edges(app.repo, start)
    render = render_mermaid if fmt == "mermaid" else render_dot
    click.echo(render(start, edges), nl=False)


@click.command()
@click.argument("ref", metavar="REPO@REF:/PATH", shell_complete=complete_ref)
@json_option
@pass_app
def why(app: AppContext, ref: str, as_json: bool) -> None:
    """Which datum, and which input files, made an output file."""
    from ..pipeline.lineage import why as explain

    spec = parse_ref(ref)
    if spec.path is None:
        raise InvalidInput(f"{ref}: give the output path, e.g. {spec.repo}@master:/file")
    start = _node(app, ref)
    d = explain(app.repo, _state(app), start, spec.path)
    if as_json:
        emit_json(d)
        return
    click.echo(f"{start.full()}:{spec.path}")
    click.echo(f"  made by pipeline {d['pipeline']}, job {d['job']}")
    if "note" in d:
        click.echo(f"  {d['note']}:")
        for i in d["inputs"]:
            click.echo(f"    {i['repo']}@{i['commit']} ({i['branch']})")
        return
    for dd in d["datums"]:
        reused = f", output reused from job {dd['from_job']}" if dd["from_job"] != d["job"] else ""
        traced = dd.get("trace") == "ok"
        what = "read (traced)" if traced else "was offered (reads not traced)"
        click.echo(f"  datum {dd['id'][:12]} ({dd['state']}{reused}) {what}:")
        read = set(dd.get("read") or [])
        for i in dd["inputs"]:
            shown = f"/pfs/{i['name']}{i['path']}"
            if traced and shown not in read:
                continue
            click.echo(f"    {shown}  <-  {i['repo']}@{i['commit'][:12]}:{i['path']}")
        unread = [i for i in dd["inputs"] if traced and f"/pfs/{i['name']}{i['path']}" not in read]
        if unread:
            click.echo(f"  offered but not read: {len(unread)} file(s)")
    for line in _reproduce(d["datums"]):
        click.echo(line)


def _reproduce(datums: list[dict[str, Any]]) -> list[str]:
    """How to mount exactly the input commits the datums were given: every one of them (a
    traced datum may have read none of an input, but the transform was offered it). The
    `get` hint names a file the transform read when the reads were traced."""
    commits: dict[tuple[str, str], str] = {}  # (repo, commit) -> a path read (or offered) there
    read_there: set[tuple[str, str]] = set()
    for dd in datums:
        read = set(dd.get("read") or []) if dd.get("trace") == "ok" else set()
        for i in dd["inputs"]:
            key = (i["repo"], i["commit"])
            if f"/pfs/{i['name']}{i['path']}" in read and key not in read_there:
                read_there.add(key)
                commits[key] = i["path"]
            else:
                commits.setdefault(key, i["path"])
    if not commits:
        return []
    if len(commits) == 1:
        [((repo, commit), path)] = commits.items()
        return [
            f"  reproduce with that input: pfsfs mount {repo}@{commit} DIR "
            f"(or pfsfs get {repo}@{commit[:12]}:{path})"
        ]
    repos = [repo for repo, _ in commits]
    if len(set(repos)) == len(repos):
        refs = ",".join(f"{repo}@{commit}" for repo, commit in commits)
        return [f"  reproduce with those inputs: pfsfs mount --repos {refs} DIR (DIR/<repo> each)"]
    lines = ["  reproduce with those inputs (one mount each):"]
    for n, (repo, commit) in enumerate(commits, 1):
        lines.append(f"    pfsfs mount {repo}@{commit} DIR{n}")
    return lines


COMMANDS = [pipeline, job, datum, logs, provenance, subvenance, wait, lineage, why]
