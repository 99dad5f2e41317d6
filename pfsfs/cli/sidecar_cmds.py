"""``pfsfs sidecar``: the mount daemon as a Kubernetes sidecar (declared mounts, a ready file,
a bounded shutdown). The work is in ``pfsfsd.sidecar``; this process replaces itself with it,
so the sidecar is the container's main process and gets its SIGTERM directly.
"""

from __future__ import annotations

import os
import sys

import click

from .common import AppContext, pass_app

POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    required=True,
    metavar="REF:DIR[:ro|:rw]",
    help="Mount REF at DIR (repeatable): inputs with :ro; at most one read-write output.",
)
@click.option("--ready-file", metavar="PATH", help="Written once every mount answers.")
@click.option(
    "--grace",
    metavar="SECONDS",
    type=POSITIVE,
    default=20.0,
    show_default=True,
    help="Hard deadline for snapshot + unmount after SIGTERM (below the pod's grace period).",
)
@click.option(
    "--autosnapshot",
    metavar="SECONDS",
    type=POSITIVE,
    help="Commit the output after this many quiet seconds.",
)
@click.option("-v", "--verbose", count=True, help="More logging.")
@pass_app
def sidecar(
    app: AppContext,
    mounts: tuple[str, ...],
    ready_file: str | None,
    grace: float,
    autosnapshot: float | None,
    verbose: int,
) -> None:
    """Run the daemon in the foreground with declared mounts (a pod's sidecar).

    The store comes from the environment: PFSFS_STORE=s3://bucket/prefix (or a local path),
    AWS_ENDPOINT_URL for a non-AWS endpoint, credentials from boto3's usual chain. SIGTERM
    snapshots and unmounts within --grace seconds; on overrun it exits 1 and what was staged
    stays recoverable (`pfsfs recover`, or the next sidecar run resumes it).
    """
    argv = [sys.executable, "-m", "pfsfsd.sidecar", "--home", str(app.home_path.absolute())]
    for m in mounts:
        argv += ["--mount", m]
    if ready_file:
        argv += ["--ready-file", ready_file]
    argv += ["--grace", repr(grace)]
    if autosnapshot:
        argv += ["--autosnapshot", repr(autosnapshot)]
    if verbose:
        argv.append("-" + "v" * verbose)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


COMMANDS = [sidecar]
