"""``pfsfs sidecar``: the mount daemon as a Kubernetes sidecar (declared mounts, a ready file,
a bounded shutdown). The work is in ``pfsfsd.sidecar``; this process replaces itself with it,
so the sidecar is the container's main process and gets its SIGTERM directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import InvalidInput
from .common import AppContext, pass_app

POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    metavar="REF:DIR[:ro|:rw]",
    help="Mount REF at DIR (repeatable): inputs with :ro; at most one read-write output.",
)
@click.option(
    "--job",
    "job_id",
    metavar="JOB",
    help="Be the sidecar of a pod of this pipeline job's Kubernetes Job (datums from its plan).",
)
@click.option("--ctl", metavar="DIR", default="/run/pfsfs", show_default=True,
              help="With --job: the control directory shared with pfsfs-wrap.")
@click.option("--pfs", metavar="DIR", default="/pfs", show_default=True,
              help="With --job: where /pfs/<input> and /pfs/out are prepared.")
@click.option("--install-wrapper", metavar="PATH",
              help="Copy the pfsfs-wrap script to PATH and exit (a Job pod's init container).")
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
    job_id: str | None,
    ctl: str,
    pfs: str,
    install_wrapper: str | None,
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
    if install_wrapper:
        from ..k8s.protocol import install_wrapper as install

        install(Path(install_wrapper))
        return
    if not mounts and not job_id:
        raise InvalidInput("give --mount REF:DIR (repeatable) or --job JOB")
    if mounts and job_id:
        raise InvalidInput("--job prepares its own mounts; do not give --mount with it")
    argv = [sys.executable, "-m", "pfsfsd.sidecar", "--home", str(app.home_path.absolute())]
    if job_id:
        argv += ["--job", job_id, "--ctl", ctl, "--pfs", pfs]
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
