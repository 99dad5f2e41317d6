"""``pfsfs log``, ``inspect commit``, ``diff`` and ``rollback``."""

from __future__ import annotations

import itertools
from typing import Any

import click

from ..diff import diff_entries
from ..errors import InvalidInput, NotFound
from ..ids import to_hex
from ..model import Commit
from ..refspec import parse_branch
from .common import (
    COUNT,
    NO_CHANGES,
    AppContext,
    emit_json,
    human_bytes,
    human_time,
    json_option,
    pass_app,
)
from .completion import complete_ref


def commit_dict(app: AppContext, commit_id: bytes, c: Commit) -> dict[str, Any]:
    parent_size = app.repo.read_commit(c.parents[0]).size if c.parents else 0
    return {
        "id": to_hex(commit_id),
        "repo": c.repo,
        "parents": [to_hex(p) for p in c.parents],
        "time": human_time(c.time_ns),
        "time_ns": c.time_ns,
        "author": c.author,
        "message": c.message,
        "size": c.size,
        "files": c.nfiles,
        "size_change": c.size - parent_size,
        "provenance": c.provenance,
    }


@click.command()
@click.argument("ref", metavar="REPO@REF", shell_complete=complete_ref)
@click.option("-n", "--limit", type=COUNT, default=None, help="Show at most N commits.")
@json_option
@pass_app
def log(app: AppContext, ref: str, limit: int | None, as_json: bool) -> None:
    """History of a branch or commit, newest first."""
    resolved = app.repo.resolve(ref)
    rows = [
        commit_dict(app, cid, c)
        for cid, c in itertools.islice(app.repo.log(resolved.commit), limit)
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"{resolved.describe()} has no commits yet")
    for r in rows:
        change = r["size_change"]
        sign = "+" if change >= 0 else "-"
        parents = " ".join(p[:12] for p in r["parents"]) or "-"
        click.echo(
            f"{r['id'][:12]}  {r['time']}  {sign}{human_bytes(abs(change)):>10}  "
            f"parents: {parents}  {r['message']}"
        )


@click.group()
def inspect() -> None:
    """Details of an object."""


@inspect.command("commit")
@click.argument("ref", metavar="REPO@REF", shell_complete=complete_ref)
@json_option
@pass_app
def inspect_commit(app: AppContext, ref: str, as_json: bool) -> None:
    """A commit: id, parents, time, author, message, size, provenance."""
    resolved = app.repo.resolve(ref)
    if resolved.commit is None:
        raise InvalidInput(f"{resolved.describe()} has no commits yet")
    d = commit_dict(app, resolved.commit, app.repo.read_commit(resolved.commit))
    if as_json:
        emit_json(d)
        return
    for key in (
        "id",
        "repo",
        "parents",
        "time",
        "author",
        "message",
        "size",
        "files",
        "provenance",
    ):
        value = d[key]
        if key == "size":
            value = f"{human_bytes(value)} ({value} bytes)"
        elif key == "parents":
            value = ", ".join(value) or "-"
        elif key == "provenance":
            value = value or "-"
        click.echo(f"{key + ':':<12}{value}")


@inspect.command("commitset")
@click.argument("ident", metavar="ID")
@json_option
@pass_app
def inspect_commitset(app: AppContext, ident: str, as_json: bool) -> None:
    """A commit set: the commit that started it, and every job and output commit of the
    pipelines downstream (ID: a commit id or a unique prefix)."""
    from ..pipeline.commitsets import find_commitset
    from ..pipeline.lineage import Node, wait_status
    from ..pipeline.state import PipelineState

    repo, branch, commit = find_commitset(app.repo, ident)
    status = wait_status(app.repo, PipelineState(app.repo.index), Node(repo, commit, branch))
    d = {
        "id": commit,
        "origin": {"repo": repo, "branch": branch, "commit": commit},
        "commits": [{"repo": repo, "branch": branch, "commit": commit, "job": None}]
        + [
            {"repo": j.pipeline, "branch": None, "commit": j.output, "job": j.id}
            for j in status.jobs
            if j.output
        ],
        "jobs": [
            {
                "id": j.id,
                "pipeline": j.pipeline,
                "state": j.state,
                "commitset": j.commitset,
                "counts": j.counts,
                "output": j.output,
            }
            for j in status.jobs
        ],
        "waiting": status.waiting,
        "unchanged": status.unchanged,
        "stalled": status.stalled,
        "done": status.done,
    }
    if as_json:
        emit_json(d)
        return
    click.echo(f"commit set {commit}")
    click.echo(f"  origin  {repo}@{commit} ({branch})")
    for j in status.jobs:
        c = j.counts or {}
        datums = f"{c.get('processed', 0)} processed, {c.get('skipped', 0)} skipped"
        output = f"{j.pipeline}@{j.output}" if j.output else "no output"
        click.echo(f"  job {j.id}  {j.pipeline:<16} {j.state:<8} {datums:<24} {output}")
    for name in status.waiting:
        click.echo(f"  waiting {name}")
    for name in status.unchanged:
        click.echo(f"  unchanged {name} (its declared code and inputs did not change)")
    for note in status.stalled:
        click.echo(f"  stalled {note}")


@click.command()
@click.argument("old", metavar="REPO@A", shell_complete=complete_ref)
@click.argument("new", metavar="REPO@B", shell_complete=complete_ref)
@click.argument("path", required=False)
@json_option
@pass_app
def diff(app: AppContext, old: str, new: str, path: str | None, as_json: bool) -> None:
    """What changed from A to B: added, removed, modified (with sizes)."""
    a, b = app.repo.resolve(old), app.repo.resolve(new)
    if path:
        from ..changes import split_path

        parts = split_path(path)
    else:
        parts = a.path or b.path
    entries = []
    for r in (a, b):
        root = app.repo.root_of(r.commit)
        try:
            entries.append(app.repo.lookup(root, parts, f"{r.describe()}:"))
        except NotFound:  # a path missing on one side diffs against nothing
            entries.append(None)
    if entries == [None, None]:
        app.repo.lookup(app.repo.root_of(b.commit), parts, f"{b.describe()}:")
    prefix = b"/" + b"/".join(parts) if parts else b""
    items = list(diff_entries(app.repo, entries[0], entries[1], prefix))
    if as_json:
        emit_json([i.to_dict() for i in items])
        return
    marks = {"added": "+", "removed": "-", "modified": "M", "metadata": "m"}
    for i in items:
        sizes = f"{human_bytes(i.old_size)} -> {human_bytes(i.new_size)}"
        click.echo(f"{marks[i.status]} {i.shown}  ({i.status}, {sizes})")
    if not items:
        click.echo("no differences", err=True)


@click.command()
@click.argument("target", metavar="REPO@BRANCH", shell_complete=complete_ref)
@click.option(
    "--to",
    "to_ref",
    required=True,
    metavar="REF",
    help="Commit to go back to.",
    shell_complete=complete_ref,
)
@click.option("--hard", is_flag=True, help="Move the branch pointer instead (drops history).")
@pass_app
def rollback(app: AppContext, target: str, to_ref: str, hard: bool) -> None:
    """Make a new commit whose content is REF's (history kept), or --hard move the branch."""
    repo, branch = parse_branch(target)
    app.repo.check_writable(repo)  # before resolving REF: the refusal is what matters
    to = app.repo.resolve(to_ref if "@" in to_ref else f"{repo}@{to_ref}")
    if to.commit is None:
        raise InvalidInput(f"{to_ref} has no commits")
    if hard:
        click.echo(
            f"warning: moving {repo}@{branch} to {to_hex(to.commit)[:12]}; later commits are "
            "no longer on this branch and go at the next gc unless another branch holds them",
            err=True,
        )
    head = app.repo.rollback(repo, branch, to.commit, hard=hard)
    if head is None:
        held = f"{repo}@{branch} already holds what {to_hex(to.commit)[:12]} holds"
        click.echo(f"{NO_CHANGES} ({held})", err=True)
        return
    click.echo(to_hex(head))


COMMANDS = [log, inspect, diff, rollback]
