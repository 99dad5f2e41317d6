"""The README's S3 recipe: ``pfsfs init --store s3://... --create-bucket`` against a real
(moto) server over HTTP, and ``scripts/s3-local.sh`` end to end: start it, paste the lines it
prints, put and read back a file, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .s3server import MotoServer, free_port, moto_server_binary

ROOT = Path(__file__).resolve().parent.parent
PFSFS = [sys.executable, "-m", "pfsfs.cli.main"]


def pfsfs(
    server: MotoServer, home: Path, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*PFSFS, "--home", str(home), *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        env=server.env(),
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_init_create_bucket_makes_a_missing_bucket(s3_server: MotoServer, tmp_path: Path) -> None:
    bucket = f"made-{uuid.uuid4().hex[:10]}"
    url = f"s3://{bucket}/team"
    endpoint = ["--endpoint-url", s3_server.endpoint]
    # Without the flag: one line naming the missing bucket and the fix, exit 7, no home made.
    missing = pfsfs(s3_server, tmp_path / "h0", "init", "--store", url, *endpoint)
    assert missing.returncode == 7
    assert missing.stderr.strip() == (
        f"pfsfs: error: bucket '{bucket}' does not exist at {s3_server.endpoint} "
        "(--create-bucket creates it)"
    )
    assert not (tmp_path / "h0" / "config.json").exists()

    home = tmp_path / "h1"
    made = pfsfs(s3_server, home, "init", "--store", url, *endpoint, "--create-bucket")
    assert made.returncode == 0, made.stderr
    assert f"created bucket '{bucket}'" in made.stderr
    s3_server.client().head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    assert pfsfs(s3_server, home, "repo", "create", "r").returncode == 0
    assert pfsfs(s3_server, home, "put", "r@master:/a", "-f", "-", input=b"A\n").returncode == 0
    assert pfsfs(s3_server, home, "cat", "r@master:/a").stdout == "A\n"

    # An existing bucket is left alone: a second machine's init with the flag joins the store.
    other = tmp_path / "h2"
    again = pfsfs(s3_server, other, "init", "--store", url, *endpoint, "--create-bucket")
    assert again.returncode == 0 and "created" not in again.stderr, again.stderr
    assert pfsfs(s3_server, other, "cat", "r@master:/a").stdout == "A\n"


def test_create_bucket_errors_are_one_line(s3_server: MotoServer, tmp_path: Path) -> None:
    local = pfsfs(
        s3_server, tmp_path / "h", "init", "--store", str(tmp_path / "s"), "--create-bucket"
    )
    assert local.returncode == 2
    assert local.stderr.strip() == (
        "pfsfs: error: --create-bucket is for an S3 store: give --store s3://BUCKET/PREFIX"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    init = ["init", "--store", "s3://bkt/p", "--endpoint-url", dead, "--create-bucket"]
    proc = pfsfs(s3_server, tmp_path / "h2", *init)
    assert proc.returncode == 7
    assert proc.stderr.splitlines() == [
        f"pfsfs: error: cannot reach S3 endpoint {dead} while checking the bucket "
        "(EndpointConnectionError)"
    ]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(moto_server_binary() is None, reason="moto_server is not installed")
def test_s3_local_script_prints_lines_that_work(tmp_path: Path) -> None:
    port = free_port()
    script = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "s3-local.sh"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    home = ""
    try:
        assert script.stdout is not None
        printed = []
        for line in script.stdout:
            printed.append(line)
            if line.startswith("# then"):
                break
        paste = "".join(printed)
        assert f"pfsfs init --store s3://pfsfs/try --endpoint-url http://127.0.0.1:{port} " \
            "--create-bucket" in paste, paste  # fmt: skip
        # What a user does: paste the lines into a shell with pfsfs on PATH, then use it.
        user = subprocess.run(
            [
                "bash", "-c",
                f"set -e\n{paste}\npfsfs repo create r\n"
                "echo hi | pfsfs put r@master:/hi -f -\npfsfs cat r@master:/hi\n"
                'echo "home=$PFSFS_HOME"',
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            cwd=tmp_path,
            timeout=120,
        )  # fmt: skip
        home = user.stdout.rpartition("home=")[2].strip()
        assert user.returncode == 0, user.stderr
        assert "created bucket 'pfsfs'" in user.stderr
        assert "\nhi\n" in user.stdout
    finally:
        if home.startswith("/tmp/pfsfs-s3-home."):
            subprocess.run(["rm", "-rf", home], check=True)
        script.terminate()  # the script alone: it must stop its server itself
        try:
            script.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    assert script.returncode == 0
    assert not port_open(port)  # the server is gone with the script
