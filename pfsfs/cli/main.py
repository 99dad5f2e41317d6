"""Entry point: the ``pfsfs`` click group, ``init``, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import PfsError, StoreError
from ..home import HomeConfig
from ..repository import Repository
from .common import (
    AppContext,
    Interrupted,
    PfsGroup,
    install_signal_handlers,
    interrupted,
    pass_app,
)


@click.group(cls=PfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
@pass_app
def init(
    app: AppContext, store_url: str | None, endpoint_url: str | None, region: str | None
) -> None:
    """Create the home (done implicitly on first use with the local store)."""
    if store_url is None:
        config = HomeConfig.local()
    elif store_url.startswith("s3://"):
        from ..store.s3 import parse_store_url

        bucket, prefix = parse_store_url(store_url)
        store: dict[str, object] = {"type": "s3", "bucket": bucket, "prefix": prefix}
        if endpoint_url:
            store["endpoint_url"] = endpoint_url
        if region:
            store["region"] = region
        config = HomeConfig(store)
    else:
        config = HomeConfig({"type": "local", "path": str(Path(store_url).resolve())})
    repo = Repository.init(app.home_path, config)
    check = getattr(repo.store, "check", None)
    if check is not None:
        check()
    repo.close()
    click.echo(f"initialised {app.home_path} (store: {repo.store.location})")


def _register() -> None:
    from . import data_cmds, history_cmds, maint_cmds, repo_cmds

    for module in (repo_cmds, data_cmds, history_cmds, maint_cmds):
        for command in module.COMMANDS:
            cli.add_command(command)
    # Optional command groups from higher layers (daemon, pipelines) register themselves here.
    for name in ("mount_cmds", "pipeline_cmds", "sync_cmds"):
        try:
            module = __import__(f"pfsfs.cli.{name}", fromlist=["COMMANDS"])
        except ModuleNotFoundError as exc:
            if exc.name != f"pfsfs.cli.{name}":
                raise
            continue
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


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
    if isinstance(exc, BrokenPipeError):
        # `pfsfs cat big | head`: the reader went away; that is not an error.
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
