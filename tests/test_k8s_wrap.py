"""pfsfs-wrap's protocol (pfsfs/k8s/pfsfs-wrap.sh) under dash, busybox sh and bash.

The wrapper runs for real as a process of each shell; a scripted sidecar (a thread of the
test) plays the other side in a temporary control directory, as the real sidecar does in a pod:
ready, datum.N, committed.N / failed.N, done. What is checked is what the pod shows: the
wrapper's exit code, the files it leaves for the sidecar, what the command saw.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pfsfs.k8s import protocol

SHELLS = {
    "dash": ["dash"],
    "busybox": ["busybox", "sh"],
    "bash": ["bash", "--posix"],
}


@pytest.fixture(params=sorted(SHELLS))
def shell(request: pytest.FixtureRequest) -> list[str]:
    argv = SHELLS[request.param]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed (scripts/setup.sh installs it)")
    return argv


class FakeSidecar(threading.Thread):
    """Offers ``datums`` one by one; answers each request with ``answers[i]`` ("ok" or a
    failure message); writes ``done`` at the end. Stops at the first abort."""

    def __init__(self, ctl: Path, datums: list[str], answers: list[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.ctl = ctl
        self.datums = datums
        self.answers = answers or ["ok"] * len(datums)
        self.events: list[str] = []
        self.stop = threading.Event()

    def wait_for(self, *names: str) -> str | None:
        while not self.stop.is_set():
            for name in names:
                if (self.ctl / name).exists():
                    return name
            time.sleep(0.02)
        return None

    def run(self) -> None:
        protocol.ctl_put(self.ctl, "ready", "{}")
        for n, (datum, answer) in enumerate(zip(self.datums, self.answers, strict=True), 1):
            env = {"PFS_DATUM_ID": datum, "PFS_OUT": str(self.ctl / "out"), "PFS_JOB_ID": "j1"}
            protocol.ctl_put(self.ctl, f"datum.{n}", protocol.env_lines(env))
            got = self.wait_for(f"request.{n}", f"abort.{n}")
            if got is None:
                return
            self.events.append(got)
            if got.startswith("abort"):
                return
            if answer == "ok":
                protocol.ctl_put(self.ctl, f"committed.{n}", f"k8s/jobs/j1/datums/{datum}")
            else:
                protocol.ctl_put(self.ctl, f"failed.{n}", answer)
                return
        protocol.ctl_put(self.ctl, "done", str(len(self.datums)))


def run_wrap(
    shell: list[str],
    ctl: Path,
    command: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    script = ctl.parent / "pfsfs-wrap"
    protocol.install_wrapper(script)
    full_env = {"PATH": os.environ["PATH"], "PFSFS_CTL": str(ctl), **(env or {})}
    return subprocess.run(
        [*shell, str(script), "--", *command],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture
def ctl(tmp_path: Path) -> Path:
    d = tmp_path / "ctl"
    d.mkdir()
    (d / "out").mkdir()
    return d


LOG_DATUM = 'echo "$PFS_DATUM_ID" >> "$PFS_OUT/seen"'


def test_every_datum_committed_then_exit_0(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, ["d1", "d2", "d3"])
    side.start()
    proc = run_wrap(shell, ctl, ["sh", "-c", LOG_DATUM])
    side.join(5)
    assert proc.returncode == 0, proc.stderr
    assert (ctl / "out" / "seen").read_text().split() == ["d1", "d2", "d3"]
    assert side.events == ["request.1", "request.2", "request.3"]
    assert "done: 3 datum(s) committed" in proc.stderr
    assert "pfsfs-wrap: begin datum d2" in proc.stderr
    assert "pfsfs-wrap: end datum d2 committed" in proc.stderr


def test_no_datum_for_this_pod(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, [])
    side.start()
    proc = run_wrap(shell, ctl, ["sh", "-c", "exit 9"])
    assert proc.returncode == 0, proc.stderr
    assert "done: 0 datum(s)" in proc.stderr


def test_failing_command_aborts_with_its_code(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, ["d1", "d2"])
    side.start()
    proc = run_wrap(shell, ctl, ["sh", "-c", LOG_DATUM + '; [ "$PFS_DATUM_ID" = d1 ] || exit 3'])
    side.join(5)
    assert proc.returncode == 3, proc.stderr
    assert side.events == ["request.1", "abort.2"]
    assert (ctl / "abort.2").read_text().split()[0] == "3"
    assert not (ctl / "request.2").exists()
    assert "end datum d2 failed: exit code 3" in proc.stderr


def test_store_failure_is_retriable_75(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, ["d1"], ["S3 said 500"])
    side.start()
    proc = run_wrap(shell, ctl, ["true"])
    assert proc.returncode == protocol.EXIT_RETRY, proc.stderr
    assert "not stored: S3 said 500" in proc.stderr


def test_prepare_failure_runs_nothing(shell: list[str], ctl: Path) -> None:
    protocol.ctl_put(ctl, "ready", "{}")
    protocol.ctl_put(ctl, "failed.1", "no such commit")
    proc = run_wrap(shell, ctl, ["sh", "-c", "touch $PFSFS_CTL/ran"])
    assert proc.returncode == protocol.EXIT_RETRY, proc.stderr
    assert not (ctl / "ran").exists()
    assert "could not prepare datum 1: no such commit" in proc.stderr


def test_sigterm_is_forwarded_and_nothing_committed(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, ["d1"])
    side.start()
    script = ctl.parent / "pfsfs-wrap"
    protocol.install_wrapper(script)
    cmd = (
        f"trap 'echo got-term > {ctl}/term; exit 5' TERM; touch {ctl}/started; "
        "while :; do sleep 0.1; done"
    )
    proc = subprocess.Popen(
        [*shell, str(script), "--", "sh", "-c", cmd],
        env={"PATH": os.environ["PATH"], "PFSFS_CTL": str(ctl)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not (ctl / "started").exists():
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    side.join(5)
    assert code == protocol.EXIT_TERM
    assert elapsed < 3
    assert (ctl / "term").read_text().strip() == "got-term"
    assert (ctl / "abort.1").read_text().split()[0] == "143"
    assert side.events == ["abort.1"]


def test_sigterm_while_waiting_for_the_sidecar(shell: list[str], ctl: Path) -> None:
    script = ctl.parent / "pfsfs-wrap"
    protocol.install_wrapper(script)
    proc = subprocess.Popen(
        [*shell, str(script), "--", "true"],
        env={"PATH": os.environ["PATH"], "PFSFS_CTL": str(ctl)},
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == protocol.EXIT_TERM
    assert time.monotonic() - t0 < 3


def test_datum_timeout_is_124(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, ["d1"])
    side.start()
    proc = run_wrap(shell, ctl, ["sleep", "30"], env={"PFSFS_WRAP_TIMEOUT": "1"})
    side.join(5)
    assert proc.returncode == protocol.EXIT_TIMEOUT, proc.stderr
    assert side.events == ["abort.1"]
    assert "timed out after 1s" in proc.stderr


def test_stdin_reaches_the_command(shell: list[str], ctl: Path) -> None:
    side = FakeSidecar(ctl, ["d1"])
    side.start()
    proc = run_wrap(
        shell,
        ctl,
        ["sh", "-c", 'cat > "$PFS_OUT/stdin"'],
        env={"PFSFS_WRAP_STDIN": "line one\nline 'two' $HOME"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (ctl / "out" / "stdin").read_text() == "line one\nline 'two' $HOME\n"


def test_sidecar_never_ready_is_75(shell: list[str], ctl: Path) -> None:
    proc = run_wrap(shell, ctl, ["true"], env={"PFSFS_WRAP_READY_TIMEOUT": "1"})
    assert proc.returncode == protocol.EXIT_RETRY
    assert "was not ready after 1s" in proc.stderr


def test_usage_errors_are_86(shell: list[str], ctl: Path) -> None:
    proc = run_wrap(shell, ctl, [])
    assert proc.returncode == protocol.EXIT_NO_RETRY
    assert "usage: pfsfs-wrap -- COMMAND" in proc.stderr
    proc = run_wrap(shell, ctl / "missing", ["true"])
    assert proc.returncode == protocol.EXIT_NO_RETRY
    assert "does not exist" in proc.stderr
