"""``pfsfs daemon``, ``mount``, ``unmount``, ``mounts``, ``snapshot`` and ``recover``.

These talk to the mount daemon through ``pfsfs.daemon_client`` (starting one in the background
when none runs); nothing here imports pyfuse3 or the daemon package, except ``pfsfs daemon``
which replaces this process with ``pfsfsd``.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..daemon_client import DaemonClient, mount_path
from ..errors import Conflict, DaemonError, InvalidInput, NotFound, PfsError
from ..repository import default_author
from .common import NO_CHANGES, UTF8_TEXT, AppContext, emit_json, json_option, pass_app
from .completion import complete_ref_or_dir


def _client(app: AppContext, *, start: bool = True) -> DaemonClient:
    client = DaemonClient(app.home_path.absolute())
    if start:
        client.ensure_running()
    return client


def _mount_client(app: AppContext, directory: str) -> DaemonClient:
    """For commands about an existing mount: a live mount implies a running daemon, so none is
    started; the error says what DIR is instead."""
    client = DaemonClient(app.home_path.absolute())
    if client.ping() is None:
        mp = mount_path(directory)
        try:
            os.statvfs(mp)
            dead = False
        except OSError as exc:
            dead = exc.errno == errno.ENOTCONN
        if dead:
            raise DaemonError(
                f"{directory} is a dead mount (no daemon is running); `pfsfs recover` saves "
                "its changes"
            )
        raise InvalidInput(f"{directory} is not a pfsfs mount (no daemon is running)")
    return client


def _merge_options(ours: bool, theirs: bool, onto_branch: str | None) -> dict[str, Any]:
    if sum((ours, theirs, onto_branch is not None)) > 1:
        raise InvalidInput("choose one of --ours, --theirs and --onto-branch")
    return {
        "strategy": "ours" if ours else "theirs" if theirs else None,
        "onto_branch": onto_branch,
    }


def merge_options(fn: Any) -> Any:
    fn = click.option(
        "--onto-branch", metavar="NEW", help="Commit onto a new branch made at the mount's base."
    )(fn)
    fn = click.option("--theirs", is_flag=True, help="On conflicts keep the branch's version.")(fn)
    fn = click.option("--ours", is_flag=True, help="On conflicts keep this mount's version.")(fn)
    return fn


def _print_results(results: list[dict[str, Any]], after: str = "") -> None:
    made = [r for r in results if r.get("commit")]
    for r in made:
        merged = " (merged)" if r.get("merged") else ""
        click.echo(f"{r['commit']}{merged}" if len(results) == 1 else f"{r['repo']}: {r['commit']}")
    if not made:
        click.echo(NO_CHANGES + after, err=True)


# -- daemon ------------------------------------------------------------------------------------
@click.group(invoke_without_command=True)
@click.pass_context
def daemon(ctx: click.Context) -> None:
    """The mount daemon: `pfsfs daemon` runs it in the foreground; run, status, stop."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(daemon_run)


@daemon.command("run")
@click.pass_obj
def daemon_run(app: AppContext) -> None:
    """Run the daemon in the foreground (for systemd and Kubernetes sidecars)."""
    from ..launch import CHILD_CWD, python_module_argv

    home = str(app.home_path.absolute())
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(CHILD_CWD)  # see pfsfs.launch: never import from, nor keep busy, the cwd
    os.execv(sys.executable, python_module_argv("pfsfsd", "--home", home, "run"))


@daemon.command("status")
@json_option
@pass_app
def daemon_status(app: AppContext, as_json: bool) -> None:
    """Whether a daemon runs for this home, and what it serves."""
    client = _client(app, start=False)
    if client.ping() is None:
        if as_json:
            emit_json({"running": False})
        else:
            click.echo(f"no daemon running for {app.home_path}")
        sys.exit(1)
    status = client.request("status", timeout=10)
    status.pop("ok", None)
    if as_json:
        emit_json({"running": True, **status})
        return
    click.echo(
        f"daemon pid {status['pid']} for {status['home']}: {status['mounts']} mount(s), "
        f"{status['orphans']} dead mount(s) with staged changes, up {status['uptime']}s"
    )


@daemon.command("stop")
@pass_app
def daemon_stop(app: AppContext) -> None:
    """Snapshot and unmount everything, then stop the daemon."""
    import time

    client = _client(app, start=False)
    if client.ping() is None:
        click.echo(f"no daemon running for {app.home_path}")
        return
    info = client.request("stop", timeout=10)
    # Stopped means gone: wait until the process released its lock (it exits after the mounts
    # are saved and the pipeline scheduler has stopped).
    deadline = time.monotonic() + 120
    while not _daemon_lock_free(app.home_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    click.echo(f"stopped daemon pid {info['pid']}")


def _daemon_lock_free(home: Path) -> bool:
    import fcntl

    from ..daemon_client import LOCK_NAME

    try:
        fd = os.open(home / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# -- mounts ------------------------------------------------------------------------------------
@click.command()
@click.argument(
    "args", nargs=-1, required=True, metavar="[REF] DIR", shell_complete=complete_ref_or_dir
)
@click.option("--read-only", is_flag=True, help="Mount read-only (commits always are).")
@click.option(
    "--create",
    is_flag=True,
    help="Create the repo or branch if missing (a new branch starts at master's head).",
)
@click.option(
    "--from", "from_ref", metavar="REF", help="With --create: start a new branch at REF."
)
@click.option("--mkdir", is_flag=True, help="Create DIR (and its parents) if it does not exist.")
@click.option(
    "--autosnapshot",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Commit after this many quiet seconds.",
)
@click.option("--repos", metavar="A@BR,B@BR", help="Mount several repos, each at DIR/<repo>.")
@click.option("--xattrs", is_flag=True, help="Store user.* extended attributes.")
@pass_app
def mount(
    app: AppContext,
    args: tuple[str, ...],
    read_only: bool,
    create: bool,
    from_ref: str | None,
    mkdir: bool,
    autosnapshot: float | None,
    repos: str | None,
    xattrs: bool,
) -> None:
    """Mount REF (repo@branch read-write; repo@COMMIT read-only) at DIR."""
    if repos:
        if len(args) != 1:
            raise InvalidInput("with --repos give only the directory: pfsfs mount --repos a,b DIR")
        refs = [r.strip() for r in repos.split(",") if r.strip()]
        if not refs:
            raise InvalidInput("--repos needs at least one repo@branch")
        multi = True
    else:
        if len(args) != 2:
            raise InvalidInput("usage: pfsfs mount REPO@REF DIR (or --repos a@b,c@d DIR)")
        refs, multi = [args[0]], False
    if from_ref is not None and not create:
        raise InvalidInput("--from goes with --create (it says where a new branch starts)")
    directory = args[-1]
    mp = _mount_point_dir(directory, mkdir)
    info = _client(app).request(
        "mount",
        refs=refs,
        mountpoint=mp,
        multi=multi,
        read_only=read_only,
        create=create,
        autosnapshot=autosnapshot,
        **({"from": from_ref} if from_ref else {}),
        xattrs=xattrs,
        author=default_author(),
    )
    for line in info.get("created", []):
        click.echo(line)
    for v in info.get("volumes", []):
        where = os.path.join(directory, v["repo"]) if multi else directory
        what = (
            f"{v['repo']}@{v['branch']}" if v["branch"] else f"{v['repo']}@{(v['base'] or '')[:12]}"
        )
        mode = "read-only" if v["read_only"] else "read-write"
        base = (v["base"] or "empty")[:12]
        click.echo(f"mounted {what} at {where} ({mode}, base {base})")


def _mount_point_dir(directory: str, mkdir: bool) -> str:
    """The absolute mount point; a missing one is made with ``--mkdir``, else named as missing."""
    mp = mount_path(directory)
    try:
        os.lstat(mp)
        missing = False
    except FileNotFoundError:
        missing = True
    except OSError:
        missing = False  # a dead mount (ENOTCONN) exists; the daemon names what it is
    if missing:
        if not mkdir:
            raise NotFound(f"{directory} does not exist (create it, or add --mkdir)")
        try:
            os.makedirs(mp, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot create {directory}: {exc.strerror}") from None
    if not missing and os.path.exists(mp) and not os.path.isdir(mp):
        raise InvalidInput(f"{directory} is not a directory")
    return mp


@click.command()
@click.argument("directory", metavar="DIR")
@click.option("--discard", is_flag=True, help="Throw the uncommitted changes away.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before discarding.")
@click.option(
    "-m", "--message", type=UTF8_TEXT, default=None, help="Commit message (default: what changed)."
)
@merge_options
@pass_app
def unmount(
    app: AppContext,
    directory: str,
    discard: bool,
    yes: bool,
    message: str | None,
    ours: bool,
    theirs: bool,
    onto_branch: str | None,
) -> None:
    """Commit the changes and unmount DIR; prints the commit id once it is durable."""
    merge = _merge_options(ours, theirs, onto_branch)
    if discard and not yes:
        click.confirm(f"Discard every uncommitted change in {directory}?", abort=True)
    reply = _mount_client(app, directory).request(
        "unmount",
        mountpoint=mount_path(directory),
        discard=discard,
        message=message,
        author=default_author(),
        **merge,
    )
    if reply.get("discarded"):
        click.echo(f"unmounted {directory}; changes discarded", err=True)
        return
    _print_results(reply.get("results", []), f"; {directory} unmounted")


@click.command()
@click.argument("directory", metavar="DIR")
@click.option(
    "-m",
    "--message",
    type=UTF8_TEXT,
    default=None,
    help='Commit message (default: what changed, "snapshot: 2 files changed (a, b)").',
)
@merge_options
@pass_app
def snapshot(
    app: AppContext,
    directory: str,
    message: str | None,
    ours: bool,
    theirs: bool,
    onto_branch: str | None,
) -> None:
    """Commit the current state of a mounted DIR; it stays mounted. Prints the commit id."""
    reply = _mount_client(app, directory).request(
        "snapshot",
        mountpoint=mount_path(directory),
        message=message,
        author=default_author(),
        **_merge_options(ours, theirs, onto_branch),
    )
    _print_results(reply.get("results", []))


@click.command("mounts")
@json_option
@pass_app
def mounts(app: AppContext, as_json: bool) -> None:
    """Mounts of this home: base commit and whether they hold unsaved changes."""
    client = _client(app, start=False)
    if client.ping() is None:
        client = _client(app)  # starting a daemon also finds dead mounts' staged changes
    reply = client.request("mounts", timeout=60)
    if as_json:
        emit_json({"mounts": reply["mounts"], "orphans": reply["orphans"]})
        return
    if not reply["mounts"] and not reply["orphans"]:
        click.echo("no mounts")
    for m in reply["mounts"]:
        for v in m["volumes"]:
            what = f"{v['repo']}@{v['branch']}" if v["branch"] else v["repo"]
            where = os.path.join(m["mountpoint"], v["repo"]) if m.get("multi") else m["mountpoint"]
            flags = ["ro" if v["read_only"] else "rw"]
            if m.get("dirty") and not v["read_only"]:
                flags.append("unsaved changes")
            base = (v["base"] or "-")[:12]
            click.echo(f"{where}  {what}  base {base}  {', '.join(flags)}")
    for o in reply["orphans"]:
        click.echo(
            f"{o['mountpoint']}  {','.join(o['refs'])}  DEAD ({o['state']}, "
            f"{o['changes']} staged changes; id {o['id']}): run `pfsfs recover`"
        )


@click.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--list", "list_only", is_flag=True, help="Only list dead mounts' staged changes.")
@click.option("--remount", "remount", is_flag=True, help="Mount the staged state again.")
@click.option("--at", "at", metavar="DIR", help="With --remount: where (default: where it was).")
@click.option("--discard", is_flag=True, help="Throw the staged changes away.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before discarding.")
@click.option("-m", "--message", type=UTF8_TEXT, default=None, help="Commit message.")
@merge_options
@json_option
@pass_app
def recover(
    app: AppContext,
    ids: tuple[str, ...],
    list_only: bool,
    remount: bool,
    at: str | None,
    discard: bool,
    yes: bool,
    message: str | None,
    ours: bool,
    theirs: bool,
    onto_branch: str | None,
    as_json: bool,
) -> None:
    """Commit (default), remount or discard what dead mounts left staged."""
    if sum((list_only, remount, discard)) > 1:
        raise InvalidInput("choose one of --list, --remount and --discard")
    action = "list" if list_only else "remount" if remount else "discard" if discard else "commit"
    if discard and not yes:
        click.confirm("Discard the staged changes of the dead mount(s)?", abort=True)
    reply = _client(app).request(
        "recover",
        ids=list(ids),
        action=action,
        mountpoint=mount_path(at) if at else None,
        message=message,
        author=default_author(),
        **_merge_options(ours, theirs, onto_branch),
    )
    if as_json:
        reply.pop("ok", None)
        emit_json(reply)
        return
    if action == "list":
        if not reply["orphans"]:
            click.echo("nothing to recover")
        for o in reply["orphans"]:
            click.echo(
                f"{o['id']}  {o['mountpoint']}  {','.join(o['refs'])}  {o['state']}  "
                f"{o['changes']} staged changes"
            )
        return
    if not reply["done"] and not reply["failed"]:
        click.echo("nothing to recover")
    for d in reply["done"]:
        if d.get("discarded"):
            click.echo(f"{d['id']}: discarded")
        elif d.get("mountpoint"):
            click.echo(f"{d['id']}: remounted at {d['mountpoint']}")
        else:
            commits = [r for r in d.get("results", []) if r.get("commit")]
            shown = ", ".join(f"{r['repo']}@{r['branch']} {r['commit']}" for r in commits)
            click.echo(f"{d['id']}: committed {shown or 'nothing (no changes)'}")
    if reply["failed"]:
        for f in reply["failed"]:
            click.echo(f"{f['id']}: {f['message']}", err=True)
        first = reply["failed"][0]
        err: PfsError = (
            Conflict(first["message"], first.get("paths"))
            if first.get("type") in ("Conflict", "BranchMoved")
            else PfsError(first["message"])
        )
        raise err


COMMANDS = [daemon, mount, unmount, snapshot, mounts, recover]
