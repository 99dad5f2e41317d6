"""The CLI under hostile conditions, through real processes: Ctrl-C and SIGTERM mid-command,
private and group-shared homes, and bad input that must be one line with exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .cli import PFSFS, fails, run
from .pipeline_fixtures import ensure_bwrap, require_root

#: Writes 256 KiB to stdout every 20 ms, forever: a put from it only ends when it is stopped.
SLOW_WRITER = """
import os, sys, time
block = os.urandom(256 << 10)
while True:
    sys.stdout.buffer.write(block)
    sys.stdout.flush()
    time.sleep(0.02)
"""


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "PFSFS_HOME": str(home)}


def stopped(proc: subprocess.Popen[bytes], signum: int) -> tuple[int, list[str]]:
    """Send ``signum``; return the exit code and the stderr lines."""
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"pfsfs did not stop within 60 s of signal {signum}") from None
    text = err.decode(errors="replace")
    assert "Traceback" not in text, text
    return proc.returncode, text.strip().splitlines()


def head(home: Path, ref: str) -> str | None:
    """The branch head's id, or None on a branch with no commits."""
    entries = json.loads(run(home, "log", ref, "--json").stdout)
    return entries[0]["id"] if entries else None


@contextmanager
def slow_put(home: Path, target: str) -> Iterator[subprocess.Popen[bytes]]:
    """``pfsfs put TARGET -f -`` reading an endless slow pipe; yields once ~2 MiB went in."""
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    try:
        put = subprocess.Popen(
            [*PFSFS, "put", target, "-f", "-"],
            stdin=writer.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(home),
        )
        writer.stdout.close()
        try:
            deadline = time.monotonic() + 60
            # The writer has put ~2 MiB through the pipe: the put is reading, mid-stream.
            while _bytes_written(writer.pid) < 2 << 20:
                assert put.poll() is None, put.communicate()
                assert time.monotonic() < deadline, "the put did not read its input"
                time.sleep(0.05)
            yield put
        finally:
            if put.poll() is None:
                put.kill()
                put.wait()
    finally:
        writer.kill()
        writer.wait()


def _bytes_written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_put_stopped_mid_stream_exits_128_plus_signal_and_commits_nothing(
    tmp_path: Path, signum: int, code: int
) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/kept", "-f", "-", input=b"kept\n")
    before = head(home, "data@master")
    with slow_put(home, "data@master:/big") as put:
        rc, lines = stopped(put, signum)
    assert rc == code
    expected = "pfsfs: interrupted" if signum == signal.SIGINT else "pfsfs: stopped by SIGTERM"
    assert lines == [expected]
    assert head(home, "data@master") == before
    assert run(home, "cat", "data@master:/kept").stdout == b"kept\n"
    assert "does not exist" in fails(home, "cat", "data@master:/big", code=3)
    run(home, "fsck")


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and b"pytest" not in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_pipeline_run_stopped_mid_transform_is_cancelled_and_commits_nothing(
    tmp_path: Path, signum: int, code: int
) -> None:
    require_root()
    ensure_bwrap()
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/a", "-f", "-", input=b"alpha\n")
    marker = f"sleep 37.{os.getpid()}{signum}"  # unique: this test's transform, nothing else
    spec = {
        "pipeline": {"name": "slow"},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", f"{marker}; cp -r /pfs/data/. /pfs/out"]},
        "runner": "local",
    }
    (tmp_path / "slow.json").write_text(json.dumps(spec))
    run(home, "pipeline", "create", "-f", str(tmp_path / "slow.json"))
    proc = subprocess.Popen(
        [*PFSFS, "pipeline", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(home),
    )
    try:
        deadline = time.monotonic() + 60
        while not _processes_with(marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the transform did not start"
            time.sleep(0.05)
        rc, lines = stopped(proc, signum)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == code
    assert len(lines) == 1 and lines[0].startswith("pfsfs: "), lines
    jobs = json.loads(run(home, "job", "list", "--json").stdout)
    assert [j["state"] for j in jobs] == ["cancelled"]
    assert "not committed" in jobs[0]["reason"]
    assert "cancelled" in run(home, "job", "inspect", jobs[0]["id"]).stdout.decode()
    assert head(home, "slow@master") is None
    deadline = time.monotonic() + 10
    while _processes_with(marker):  # the transform was killed with its job
        assert time.monotonic() < deadline, "the transform outlived its cancelled job"
        time.sleep(0.1)
