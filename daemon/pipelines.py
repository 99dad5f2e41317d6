"""Hosting the pipeline scheduler: the daemon keeps one scheduler process alive per home.

The scheduler (``pfsfs.pipeline.scheduler``) watches the input branches of every pipeline and
runs jobs. It runs as a child process rather than a task in the daemon: jobs ingest outputs and
hash chunks, which would compete with control requests for the daemon's GIL, and a separate
process opens its own LMDB environment (an environment must not be opened twice in one
process). The child dies with the daemon (``PR_SET_PDEATHSIG``); a scheduler that dies on its
own is restarted after a pause. If another scheduler already holds the home's scheduler lock
(someone runs ``python -m pfsfs.pipeline.scheduler`` by hand), ours exits with the conflict
code and is retried later, quietly: pipelines are being processed either way.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
from pathlib import Path

import trio

from pfsfs.errors import Conflict
from pfsfs.launch import CHILD_CWD, python_module_argv

from .mounts import die_with_parent

log = logging.getLogger(__name__)

RESTART_PAUSE = 2.0
BUSY_PAUSE = 10.0  # another scheduler holds the lock
STOP_TIMEOUT = 15.0


async def supervise_scheduler(
    home: Path, verbose: int = 0, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the scheduler process until cancelled, then stop it with SIGTERM."""
    cmd = python_module_argv("pfsfs.pipeline.scheduler", "--home", str(home.absolute()))
    if verbose:
        cmd.append("-" + "v" * min(verbose, 2))
    started = False
    while True:
        # Popen on the trio thread: PR_SET_PDEATHSIG follows the forking *thread*.
        process = subprocess.Popen(
            cmd,
            cwd=CHILD_CWD,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, signal.SIGTERM),
        )
        if not started:
            task_status.started()
            started = True
        try:
            code = await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await _stop(process)
            raise
        if code == Conflict.exit_code:
            log.debug("another pipeline scheduler runs for %s; retrying later", home)
            await trio.sleep(BUSY_PAUSE)
        else:
            log.warning("the pipeline scheduler exited with code %s; restarting it", code)
            await trio.sleep(RESTART_PAUSE)


async def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    with trio.move_on_after(STOP_TIMEOUT):
        await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
        return
    log.warning("the pipeline scheduler did not stop in %gs; killing it", STOP_TIMEOUT)
    process.kill()
    await trio.to_thread.run_sync(process.wait)
