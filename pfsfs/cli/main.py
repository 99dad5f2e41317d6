"""Entry point: the ``pfsfs`` click group, ``init``, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import grp
import logging
import os
import signal
import stat
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import InvalidInput, PfsError, StoreError
from ..home import (
    HomeConfig,
    check_path,
    is_shared,
    make_private_dir,
    read_config,
    share_with_group,
    tighten,
    write_config,
)
from ..repository import Repository
from .common import (
    AppContext,
    Interrupted,
    PfsGroup,
    ReaderGone,
    broken_pipe,
    install_signal_handlers,
    interrupted,
    pass_app,
)


def _command_modules() -> dict[str, str]:
    """Each command's module. The core's are always there; the higher layers' (daemon,
    pipelines, sync, sidecar) may not be installed, and then their commands are not offered."""
    modules = {
        "repo_cmds": ["repo", "branch", "du"],
        "data_cmds": ["put", "get", "cat", "ls"],
        "history_cmds": ["log", "inspect", "diff", "rollback"],
        "maint_cmds": ["gc", "fsck", "stats"],
        "completion": ["completion"],
        "mount_cmds": ["daemon", "mount", "unmount", "snapshot", "mounts", "recover"],
        "pipeline_cmds": ["pipeline", "job", "datum", "logs", "provenance", "subvenance"]
        + ["wait", "lineage", "why"],
        "sync_cmds": ["push", "pull", "remote", "refresh"],
        "sidecar_cmds": ["sidecar"],
    }
    return {name: f"pfsfs.cli.{m}" for m, names in modules.items() for name in names}


@click.group(
    cls=PfsGroup,
    lazy=_command_modules(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--home",
    envvar="PFSFS_HOME",
    help="pfsfs home (index, local store, daemon socket). Default: $XDG_DATA_HOME/pfsfs.",
)
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
@click.version_option(__version__, prog_name="pfsfs")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: int) -> None:
    """pfsfs: version your data as a plain directory.

    Refs: repo@branch, repo@COMMIT (6+ hex chars), repo@branch~N, and repo@REF:/path.
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    app = AppContext(home)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@click.option("--store", "store_url", help="Object store: a local path or s3://bucket/prefix.")
@click.option("--endpoint-url", help="S3 endpoint (MinIO, Ceph, moto...).")
@click.option("--region", help="S3 region.")
@click.option(
    "--shared-group",
    is_flag=True,
    help="Share the local store (--store DIR) with DIR's group: directories 2770, files 0660.",
)
@click.option(
    "--create-bucket", is_flag=True, help="Create the S3 bucket of --store s3://... if missing."
)
@pass_app
def init(
    app: AppContext,
    store_url: str | None,
    endpoint_url: str | None,
    region: str | None,
    shared_group: bool,
    create_bucket: bool,
) -> None:
    """Create the home (done implicitly on first use with the local store), private to you.

    Run again on an existing home, it makes the home private (0700) if others can enter it.
    """
    home = app.home_path
    existing = read_config(home)
    store, outside = _store_section(store_url, endpoint_url, region, shared_group)
    if create_bucket:
        _create_bucket(store)
    if not shared_group and existing is not None and is_shared(existing):
        # `init` again without the flag keeps a shared store shared.
        if {k: v for k, v in existing.store.items() if k != "shared_group"} == store:
            store["shared_group"] = True
    config = HomeConfig(store)
    if existing is not None and existing != config and _only_sharing_differs(existing, config):
        write_config(home, config)  # a private store becoming group-shared
    created = outside is not None and make_private_dir(outside)
    try:
        repo = Repository.init(home, config)
    except StoreError as exc:
        if store.get("type") == "s3" and not create_bucket and "does not exist" in exc.message:
            raise StoreError(f"{exc.message} (--create-bucket creates it)") from None
        raise
    repo.store.check()
    repo.close()
    click.echo(f"initialised {home} (store: {repo.store.location})")
    _report_modes(home, outside, created, shared_group)


def _store_section(
    store_url: str | None, endpoint_url: str | None, region: str | None, shared_group: bool
) -> tuple[dict[str, object], Path | None]:
    """The ``store`` section of the config, and the local store's directory if outside the home."""
    if store_url is not None and store_url.startswith("s3://"):
        if shared_group:
            raise InvalidInput("--shared-group is for a local store; a bucket's access is its own")
        from ..store.s3 import parse_store_url

        bucket, prefix = parse_store_url(store_url)
        store: dict[str, object] = {"type": "s3", "bucket": bucket, "prefix": prefix}
        if endpoint_url:
            store["endpoint_url"] = endpoint_url
        if region:
            store["region"] = region
        return store, None
    if store_url is None:
        if shared_group:
            raise InvalidInput(
                "--shared-group shares a store outside the home: give --store DIR "
                "(each member of the group keeps a private home)"
            )
        return dict(HomeConfig.local().store), None
    path = check_path(Path(store_url).resolve(), "store")
    store = {"type": "local", "path": str(path)}
    if shared_group:
        store["shared_group"] = True
    return store, path


def _create_bucket(store: dict[str, object]) -> None:
    """``--create-bucket``: make the bucket of an S3 store section if it does not exist."""
    if store.get("type") != "s3":
        raise InvalidInput("--create-bucket is for an S3 store: give --store s3://BUCKET/PREFIX")
    from ..store.s3 import from_config

    s3 = from_config(store)
    try:
        if s3.create_bucket():
            click.echo(f"created bucket {store['bucket']!r} at {s3.endpoint}", err=True)
    finally:
        s3.close()


def _only_sharing_differs(old: HomeConfig, new: HomeConfig) -> bool:
    def without(c: HomeConfig) -> dict[str, object]:
        return {k: v for k, v in c.store.items() if k != "shared_group"}

    return without(old) == without(new) and is_shared(new)


def _report_modes(home: Path, outside: Path | None, created: bool, shared_group: bool) -> None:
    """Apply and tell what ``init`` did to the modes of the home and the store."""
    old = tighten(home)
    if old is not None:
        click.echo(f"made {home} private: mode {old:04o} -> 0700 (only you can enter it)")
    if outside is None:
        return
    if shared_group:
        share_with_group(outside)
        group = grp.getgrgid(outside.stat().st_gid).gr_name
        click.echo(
            f"store {outside} is shared with group {group}: directories 2770, files 0660; "
            f"each member runs `pfsfs init --store {outside} --shared-group` in their own home"
        )
    elif created:
        click.echo(f"created {outside} private (mode 0700)")
    elif stat.S_IMODE(outside.stat().st_mode) & 0o007:
        mode = stat.S_IMODE(outside.stat().st_mode)
        click.echo(
            f"note: other users can enter the store {outside} (mode {mode:04o}); "
            f"`chmod 700 {outside}` unless that is meant (or share it: --shared-group)",
            err=True,
        )


INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in pfsfs, not bad input


def main() -> None:
    install_signal_handlers()
    try:
        cli.main(standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - every way out is one line and an exit code
        sys.exit(_report(exc))


def _report(exc: BaseException) -> int:
    """Print the one line ``exc`` deserves on stderr; return the exit code."""
    if isinstance(exc, SystemExit):
        raise exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _report(exc.exceptions[0])  # one failure wrapped by a trio nursery
    if isinstance(exc, KeyboardInterrupt):  # before a command started (parsing, --help)
        exc = interrupted()
    if isinstance(exc, Interrupted):
        # On a terminal the ^C echo has no newline; start the message on a line of its own.
        lead = "\n" if exc.signum == signal.SIGINT and sys.stderr.isatty() else ""
        click.echo(f"{lead}pfsfs: {exc.message}", err=True)
        return exc.exit_code
    if isinstance(exc, click.exceptions.Abort):
        click.echo("aborted", err=True)
        return 1
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        exc.show()  # `pfsfs` or `pfsfs pipeline` alone: the help text
        return exc.exit_code
    if isinstance(exc, click.UsageError):
        # One line like every other error (click's own form is usage + hint + message).
        where = exc.ctx.command_path if exc.ctx is not None else "pfsfs"
        click.echo(f"pfsfs: error: {exc.format_message()} (see `{where} --help`)", err=True)
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        click.echo(f"pfsfs: error: {exc.format_message()}", err=True)
        return exc.exit_code
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, PfsError):
        click.echo(f"pfsfs: error: {exc.message}", err=True)
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # one that no command's invoke saw (a trio group's)
        return _report(broken_pipe(exc))
    if isinstance(exc, ReaderGone):
        # `pfsfs cat big | head`: the reader went away; that is not an error. (Standard
        # output goes to /dev/null: its buffer must not fail again at exit.)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            err: PfsError = StoreError(f"no space left on device: {exc.filename or ''}")
        else:
            err = StoreError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        click.echo(f"pfsfs: error: {err.message}", err=True)
        return err.exit_code
    # A bug must still not print a traceback at users.
    logging.getLogger("pfsfs").debug("internal error", exc_info=exc)
    click.echo(
        f"pfsfs: internal error: {type(exc).__name__}: {exc} (run with -vv for details)",
        err=True,
    )
    return INTERNAL_ERROR


if __name__ == "__main__":
    main()
