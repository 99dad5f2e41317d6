"""Shared pytest fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from .fusehelpers import daemons_under, fuse_mounts
from .s3server import s3_server  # noqa: F401 - the session's moto server, for S3 tests

# Pipeline commands start the daemon (which runs the scheduler) when nothing processes
# pipelines; tests that want a daemon start one themselves, and the suite must leave none.
os.environ.setdefault("PFSFS_NO_DAEMON", "1")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session no daemon or worker of a test's home is alive and nothing is
    mounted below the session's temp directory, whoever started them (a command that starts
    the daemon itself, say): such leftovers are killed and the session fails."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    deadline = time.monotonic() + 3.0  # a daemon told to stop by the last test may be ending
    while (daemons := daemons_under(base)) and time.monotonic() < deadline:
        time.sleep(0.1)
    mounts = fuse_mounts(base)
    for pid in daemons:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass
    for mp in mounts:
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True, check=False)
    assert not mounts and not daemons, f"left behind: mounts {mounts}, processes {daemons}"
