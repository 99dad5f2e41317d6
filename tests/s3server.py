"""A real S3 server for tests: ``moto_server`` in a subprocess, spoken to over HTTP.

``run_moto_server()`` starts ``moto_server -H 127.0.0.1 -p <free port>``, waits until it
answers, creates a bucket and yields a ``MotoServer`` (endpoint URL, bucket, dummy credentials);
the process is killed in a ``finally``. The ``s3_server`` fixture shares one such server per
test session; tests isolate themselves with a fresh random prefix.

Credentials are dummies (moto accepts any) and are passed explicitly to each store and, for
child processes, in that child's environment only, so nothing leaks into other tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from . import atomic_moto

log = logging.getLogger(__name__)

#: Distinctive dummy credentials, so tests can check that they never show up in messages.
TEST_ACCESS_KEY = "AKIAPFSFSTESTKEY0001"
TEST_SECRET_KEY = "pfsfs-test-secret-never-print-me"


def moto_server_binary() -> str | None:
    """The ``moto_server`` next to this interpreter, else the one on ``PATH``."""
    local = Path(sys.executable).parent / "moto_server"
    if local.exists():
        return str(local)
    return shutil.which("moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    """A running moto server and what a client needs to use it."""

    endpoint: str
    bucket: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    credentials: dict[str, str] = field(
        default_factory=lambda: {
            "aws_access_key_id": TEST_ACCESS_KEY,
            "aws_secret_access_key": TEST_SECRET_KEY,
        }
    )

    def env(self) -> dict[str, str]:
        """An environment for a child process that talks to this server."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
            AWS_DEFAULT_REGION="us-east-1",
        )
        return env

    def client(self) -> object:
        """A plain boto3 client, for setting up and inspecting state directly."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", **self.credentials
        )

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            # /moto-api/ is moto's own dashboard: it does not count as an S3 request (which
            # matters with INITIAL_NO_AUTH_ACTION_COUNT).
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answered, even if with an error status
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def run_moto_server(
    bucket: str = "pfsfs-test",
    timeout: float = 20.0,
    extra_env: dict[str, str] | None = None,
    binary: str | None = None,
) -> Iterator[MotoServer]:
    """Start a moto S3 server, create ``bucket`` on it, yield it, and always kill it.

    ``extra_env`` goes to the server process only, e.g. ``INITIAL_NO_AUTH_ACTION_COUNT=1``
    makes moto check credentials after the first request (the bucket creation). ``binary``:
    a ``moto_server``-compatible executable to start instead of moto's own.
    """
    binary = binary or moto_server_binary()
    if binary is None:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        proc: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(3):  # the free port may be taken between probe and bind
                port = free_port()
                endpoint = f"http://127.0.0.1:{port}"
                with open(log_path, "wb") as out:
                    proc = subprocess.Popen(
                        [binary, "-H", "127.0.0.1", "-p", str(port)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env={**os.environ, **(extra_env or {})},
                    )
                if _wait_ready(proc, endpoint, timeout):
                    break
                proc.kill()
                proc.wait()
            else:
                raise RuntimeError(f"moto_server did not start: {log_path.read_text()[-2000:]}")
            server = MotoServer(endpoint=endpoint, bucket=bucket, proc=proc, log_path=log_path)
            server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
            yield server
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the whole session (tests use fresh prefixes). It is the launcher of
    ``tests/atomic_moto.py``: plain moto can let two racing conditional PUTs both succeed (a
    lost update AWS and radosgw never allow), which made the concurrent-CAS contract test fail
    about once in a few loaded runs."""
    if moto_server_binary() is None:
        pytest.skip("moto_server is not installed")
    script = atomic_moto.executable(tmp_path_factory.mktemp("atomic-moto"))
    with run_moto_server(binary=script) as server:
        yield server
