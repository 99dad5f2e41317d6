"""``pfsfs gc``, ``fsck`` and ``stats``."""

from __future__ import annotations

import functools

import click

from .. import maintenance
from ..errors import Conflict, Corruption
from ..home import is_shared
from .common import (
    SECONDS,
    AppContext,
    emit_json,
    human_bytes,
    json_option,
    pass_app,
    plural,
    progress_to,
)

SHARED_GRACE = 3600.0


@click.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option(
    "--grace",
    type=SECONDS,
    default=None,
    help="Keep unreachable objects younger than this many seconds "
    f"[default: 0 for a local store, {SHARED_GRACE:g} for a shared (S3) store].",
)
@json_option
@pass_app
def gc(app: AppContext, dry_run: bool, grace: float | None, as_json: bool) -> None:
    """Delete objects no branch (or open mount, or running job) can reach."""
    if grace is None:  # other machines (or users: shared_group) may be writing to it right now
        config = app.repo.config
        private = config.store.get("type") == "local" and not is_shared(config)
        grace = 0.0 if private else SHARED_GRACE
    with progress_to("gc") as progress:
        report = maintenance.gc(app.repo, dry_run=dry_run, grace=grace, progress=progress)
    if as_json:
        emit_json(vars(report))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {plural(report.deleted_blobs, 'object')}, {human_bytes(report.deleted_bytes)} "
        f"{'reclaimable' if dry_run else 'reclaimed'}"
    )
    if report.temp_files:
        click.echo(
            f"removed {plural(report.temp_files, 'temp file')} of interrupted writes "
            f"({human_bytes(report.temp_bytes)})"
        )
    if report.kept_young:
        kept = plural(report.kept_young, "unreachable object")
        click.echo(f"kept {kept} younger than {grace:g}s")


@click.command()
@click.option("--deep", is_flag=True, help="Re-read and re-hash every object in the store.")
@click.option(
    "--rebuild-index",
    is_flag=True,
    help="First rebuild the home's index from the store, keeping every record of this "
    "machine's own (pipelines, jobs, gc roots) still readable; then check.",
)
@json_option
@pass_app
def fsck(app: AppContext, deep: bool, rebuild_index: bool, as_json: bool) -> None:
    """Check that every ref and every reachable object is sound (with --deep: re-hashed from
    the store), and that the index serves nothing the store does not hold."""
    if rebuild_index:
        _rebuild_index(app, err=as_json)  # with --json, stdout holds only the JSON
    with progress_to("fsck") as progress:
        problems = maintenance.fsck(app.repo, deep=deep, progress=progress)
    if as_json:  # exit 6 all the same when there are problems (with one line on stderr)
        emit_json({"ok": not problems, "deep": deep, "problems": problems})
    else:
        for p in problems:
            click.echo(p)
    if problems:
        raise Corruption(f"fsck found {plural(len(problems), 'problem')}")
    if not as_json:
        click.echo("ok: no problems found")


def _rebuild_index(app: AppContext, *, err: bool = False) -> None:
    """``fsck --rebuild-index``: refuse while another process serves this home, rebuild, say
    what could not be recovered (on stderr when ``err``)."""
    echo = functools.partial(click.echo, err=err)
    from ..daemon_client import DaemonClient
    from ..pipeline.scheduler import scheduler_pid

    home = app.home_path
    app.close()  # this process must not hold the old index either
    if DaemonClient(home).ping() is not None:
        raise Conflict("the daemon of this home is running: stop it first (`pfsfs daemon stop`)")
    pid = scheduler_pid(home)
    if pid is not None:
        raise Conflict(f"a pipeline scheduler (pid {pid}) uses this index: stop it first")
    report = maintenance.rebuild_index(home)
    echo(
        f"rebuilt the index at {home / 'index'}: {plural(report.commits, 'commit')} and "
        f"{plural(report.objects, 'object')} indexed from the store"
    )
    for s in report.salvaged:
        echo(f"  kept {s.describe()}" if s.complete else f"  LOST {s.describe()}")
    if report.lost:
        echo(
            "  lost records are this machine's own and exist nowhere else: re-create lost "
            "pipelines (`pipeline create`); a lost gc root of a running job or open mount "
            "comes back when it restarts (run no gc meanwhile)"
        )
    for problem in report.problems:
        echo(f"  not indexed: {problem}")
    if report.kept is not None:
        echo(f"  the old index file is kept as {report.kept} (delete it when done)")


@click.command()
@json_option
@pass_app
def stats(app: AppContext, as_json: bool) -> None:
    """Logical bytes of every version vs bytes stored (the dedup ratio)."""
    s = maintenance.stats(app.repo)
    ratio = s["logical_bytes"] / s["stored_bytes"] if s["stored_bytes"] else 0.0
    if as_json:
        emit_json({**s, "dedup_ratio": round(ratio, 3)})
        return
    click.echo(f"branches: {s['branches']}  commits: {s['commits']}")
    click.echo(
        f"logical: {human_bytes(s['logical_bytes'])}  stored: {human_bytes(s['stored_bytes'])}"
        f"  ratio: {ratio:.2f}x"
    )


COMMANDS = [gc, fsck, stats]
