"""``pfsfs repo ...`` and ``pfsfs branch ...``."""

from __future__ import annotations

import click

from .. import maintenance
from ..ids import to_hex
from ..refspec import check_name, parse_branch
from .common import (
    UTF8_TEXT,
    AppContext,
    emit_json,
    human_bytes,
    human_time,
    json_option,
    pass_app,
)
from .completion import complete_ref, complete_repo


@click.group()
def repo() -> None:
    """Create, list and delete repos."""


@repo.command("create")
@click.argument("name")
@click.option("-d", "--description", type=UTF8_TEXT, default="", help="What the repo holds.")
@pass_app
def repo_create(app: AppContext, name: str, description: str) -> None:
    """Create repo NAME with an empty master branch."""
    app.repo.create_repo(check_name("repo", name), description)
    click.echo(f"created repo {name}")


@repo.command("list")
@json_option
@pass_app
def repo_list(app: AppContext, as_json: bool) -> None:
    """Repos with their size, branches and last commit."""
    rows = []
    for info in app.repo.list_repos():
        heads = [c for c in info.branches.values() if c]
        last = max((app.repo.read_commit(c) for c in heads), key=lambda c: c.time_ns, default=None)
        master = info.branches.get("master")
        size = app.repo.read_commit(master).size if master else 0
        rows.append(
            {
                "name": info.name,
                "description": info.description,
                "branches": {b: to_hex(c) if c else None for b, c in sorted(info.branches.items())},
                "size": size,
                "last_commit_time": human_time(last.time_ns) if last else None,
                "output_of": info.output_of,
            }
        )
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no repos (create one with `pfsfs repo create NAME`)")
        return
    click.echo(f"{'NAME':<20} {'SIZE':>10}  {'LAST COMMIT':<19}  BRANCHES")
    for r in rows:
        click.echo(
            f"{r['name']:<20} {human_bytes(r['size']):>10}  {r['last_commit_time'] or '-':<19}  "
            + ", ".join(r["branches"])
        )


@repo.command("delete")
@click.argument("name", shell_complete=complete_repo)
@click.option("--force", is_flag=True, help="Do not ask.")
@pass_app
def repo_delete(app: AppContext, name: str, force: bool) -> None:
    """Delete repo NAME and its branches (its data goes at the next `pfsfs gc`)."""
    app.repo.repo_record(name)
    if not force:
        click.confirm(f"delete repo {name} and all its branches?", abort=True, err=True)
    app.repo.delete_repo(name)
    click.echo(f"deleted repo {name}")


@click.group()
def branch() -> None:
    """Create, list and delete branches."""


@branch.command("create")
@click.argument("target", metavar="REPO@BRANCH", shell_complete=complete_ref)
@click.option(
    "--from", "from_ref", metavar="REF", help="Start at this commit or branch (default: master)."
)
@pass_app
def branch_create(app: AppContext, target: str, from_ref: str | None) -> None:
    """Create a branch at the head of master, or at --from REF (like `git switch -c`)."""
    name, new = parse_branch(target)
    start = app.repo.start_branch(name, new, from_ref)
    click.echo(f"created branch {name}@{new} from {start}")


@branch.command("list")
@click.argument("name", metavar="REPO", shell_complete=complete_repo)
@json_option
@pass_app
def branch_list(app: AppContext, name: str, as_json: bool) -> None:
    """Branches of REPO with their heads."""
    app.repo.repo_record(name)
    branches = app.repo.list_branches(name)
    if as_json:
        emit_json({b: to_hex(c) if c else None for b, c in sorted(branches.items())})
        return
    for b, c in sorted(branches.items()):
        click.echo(f"{b:<24} {to_hex(c) if c else '(no commits)'}")


@branch.command("delete")
@click.argument("target", metavar="REPO@BRANCH", shell_complete=complete_ref)
@pass_app
def branch_delete(app: AppContext, target: str) -> None:
    """Delete a branch (its commits stay reachable from other branches, or go at gc)."""
    name, b = parse_branch(target)
    app.repo.delete_branch(name, b)
    click.echo(f"deleted branch {name}@{b}")


@click.command()
@click.argument("ref", metavar="REF", shell_complete=complete_ref)
@json_option
@pass_app
def du(app: AppContext, ref: str, as_json: bool) -> None:
    """Logical vs stored bytes of one commit."""
    resolved = app.repo.resolve(ref)
    logical, stored = maintenance.du(app.repo, resolved.commit)
    if as_json:
        emit_json({"ref": ref, "logical_bytes": logical, "stored_bytes": stored})
        return
    click.echo(f"{ref}: {human_bytes(logical)} logical, {human_bytes(stored)} stored")


COMMANDS = [repo, branch, du]
