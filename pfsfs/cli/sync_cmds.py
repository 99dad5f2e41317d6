"""``pfsfs push``, ``pull``, ``remote`` and ``refresh``: several stores and several machines.

``push REMOTE [REPO...]`` copies this home's branches to REMOTE; ``pull REMOTE [REPO...]``
copies REMOTE's branches here. REMOTE is a name from ``pfsfs remote add``, an
``s3://bucket/prefix`` URL (``--endpoint-url`` for non-AWS servers), or another home's path;
it may be left out when exactly one remote is configured. Only missing objects move; a branch
that diverged is refused unless ``--force``. See :mod:`pfsfs.sync` for the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import click

from .. import remotes, sync
from ..errors import InvalidInput
from ..repository import Repository
from .common import AppContext, emit_json, human_bytes, json_option, pass_app, plural, progress_bar

endpoint_option = click.option("--endpoint-url", help="S3 endpoint of an s3:// remote.")
region_option = click.option("--region", help="S3 region of an s3:// remote.")


@click.group()
def remote() -> None:
    """Named remotes for push and pull (kept in <home>/remotes.json, never credentials)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@endpoint_option
@region_option
@pass_app
def remote_add(
    app: AppContext, name: str, url: str, endpoint_url: str | None, region: str | None
) -> None:
    """Save URL (s3://bucket/prefix or a pfsfs home path) as remote NAME."""
    r = remotes.add_remote(app.home_path, name, remotes.normalise(url, endpoint_url, region))
    click.echo(f"added remote {r.describe()}")


@remote.command("list")
@json_option
@pass_app
def remote_list(app: AppContext, as_json: bool) -> None:
    """Configured remotes."""
    found = remotes.load_remotes(app.home_path)
    if as_json:
        emit_json({name: r.to_json() for name, r in sorted(found.items())})
        return
    if not found:
        click.echo("no remotes (add one with `pfsfs remote add NAME s3://bucket/prefix`)")
    for name, r in sorted(found.items()):
        click.echo(f"{name}\t{r.url}" + (f"\t{r.endpoint_url}" if r.endpoint_url else ""))


@remote.command("remove")
@click.argument("name")
@pass_app
def remote_remove(app: AppContext, name: str) -> None:
    """Forget remote NAME (nothing is deleted from it)."""
    remotes.remove_remote(app.home_path, name)
    click.echo(f"removed remote {name}")


@contextmanager
def _bar(label: str) -> Iterator[Callable[[int], Callable[[int], None]]]:
    with ExitStack() as stack:

        def start(total: int) -> Callable[[int], None]:
            return stack.enter_context(progress_bar(total, label))

        yield start


def _run(
    app: AppContext,
    direction: str,
    args: tuple[str, ...],
    endpoint_url: str | None,
    region: str | None,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    spec, repos = (args[0], list(args[1:])) if args else (None, [])
    target = remotes.resolve(app.home_path, spec, endpoint_url, region)
    here = app.repo
    with remotes.open_remote(app.home_path, target) as there:
        there.store.check()  # a wrong bucket or endpoint fails here, in one line
        src, dst = (here, there) if direction == "push" else (there, here)
        _same_store(src, dst)
        with _bar(direction) as start:
            report = sync.sync(src, dst, repos, force=force, dry_run=dry_run, progress=start)
    if as_json:
        emit_json({"remote": target.to_json(), **vars(report)})
        return
    verb = {"push": "pushed to", "pull": "pulled from"}[direction]
    if dry_run:
        verb = f"would have {verb}"
    click.echo(
        f"{verb} {target.describe()}: {_n(report.commits_copied, 'commit')} and "
        f"{_n(report.blobs_copied, 'object blob')} ({human_bytes(report.bytes_copied)}) "
        f"copied, {_n(report.blobs_present, 'blob')} already there"
    )
    for name, what in sorted(report.branches.items()):
        click.echo(f"  {name:<30} {what}")


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def _same_store(a: Repository, b: Repository) -> None:
    if a.store.location == b.store.location and a.config == b.config:
        raise InvalidInput(f"the remote is this home's own store ({a.store.location})")


def _sync_command(direction: str, doc: str) -> click.Command:
    @click.command(direction, help=doc)
    @click.argument("args", nargs=-1, metavar="[REMOTE] [REPO]...")
    @endpoint_option
    @region_option
    @click.option("--force", is_flag=True, help="Overwrite branches that diverged.")
    @click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
    @json_option
    @pass_app
    def command(
        app: AppContext,
        args: tuple[str, ...],
        endpoint_url: str | None,
        region: str | None,
        force: bool,
        dry_run: bool,
        as_json: bool,
    ) -> None:
        _run(app, direction, args, endpoint_url, region, force, dry_run, as_json)

    return command


push = _sync_command(
    "push",
    "Copy this home's branches of REPOs (default: all) to REMOTE, moving only missing objects."
    " REMOTE: a name from `pfsfs remote add`, s3://bucket/prefix, or a pfsfs home path.",
)
pull = _sync_command(
    "pull",
    "Copy REMOTE's branches of REPOs (default: all) into this home, moving only missing"
    " objects. REMOTE: a name from `pfsfs remote add`, s3://bucket/prefix, or a home path.",
)


@click.command()
@click.argument("repos", nargs=-1, metavar="[REPO]...")
@json_option
@pass_app
def refresh(app: AppContext, repos: tuple[str, ...], as_json: bool) -> None:
    """Re-read branch heads from the store, index every commit they reach, and forget index
    entries of objects that are gone from the store (another machine's gc)."""
    from ..ops.refresh import refresh as ops_refresh

    report = ops_refresh(app.repo, list(repos))
    heads, commits = report.heads, report.commits
    if as_json:
        emit_json({"branches": heads, "commits": commits, "stale_index_entries": report.stale})
        return
    for name, head in heads.items():
        click.echo(f"{name:<30} {head[:12] if head else '-'}")
    dropped = plural(report.stale, "stale index entry", "stale index entries")
    click.echo(f"{plural(commits, 'commit')} indexed; {dropped} dropped")


COMMANDS = [push, pull, remote, refresh]
