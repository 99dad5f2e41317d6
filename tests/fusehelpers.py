"""Helpers for tests that mount for real.

``env`` gives each test a fresh home in ``tmp_path`` and a daemon running in a *subprocess*
(a process must never block on a mount it serves). ``env.mounted(...)`` always unmounts in a
``finally`` (lazily with ``fusermount3 -uz`` if the clean way fails); after each test the daemon
is stopped and ``pfsfs fsck`` must pass. A session-level check asserts that no mount and no
daemon started here is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pfsfs.daemon_client import DaemonClient
from pfsfs.launch import CHILD_CWD, python_module_argv

BIN = Path(sys.executable).parent
PFSFS = str(BIN / "pfsfs") if (BIN / "pfsfs").exists() else "pfsfs"

def fuse_mounts(under: str = "/") -> list[str]:
    """Mount points of FUSE filesystems below ``under``."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mp = parts[4].replace("\\040", " ")
            if parts[sep + 1].startswith("fuse") and (mp + "/").startswith(under.rstrip("/") + "/"):
                found.append(mp)
    return found


def daemons_under(base: str) -> list[int]:
    """Processes of pfsfs's daemon, its mount workers and sidecar, and the pipeline scheduler,
    whose ``--home`` lies below ``base``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        ours = ("pfsfsd", "pfsfs.pipeline.scheduler")
        if not any(a in ours or a.startswith("pfsfsd.") for a in args):
            continue
        homes = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--home"]
        if any((h.rstrip("/") + "/").startswith(base.rstrip("/") + "/") for h in homes):
            found.append(int(entry))
    return found


def is_mounted(path: Path | str) -> bool:
    return os.path.realpath(path) in fuse_mounts()


class Env:
    """A home, its daemon (a subprocess) and helpers to run ``pfsfs`` against it."""

    def __init__(self, tmp_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.root = tmp_path
        self.home = tmp_path / "home"
        self.environ = {**os.environ, **(extra_env or {})}
        self.log_path = tmp_path / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- CLI ---------------------------------------------------------------------------------
    def run(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PFSFS, "--home", str(self.home), *args],
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pfsfs {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"--- daemon log tail ---\n{self.log_tail()}"
            )
        return proc

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.strip()

    def fails(self, *args: str, code: int | None = None) -> str:
        """Run a command that must fail with a one-line error (no traceback); its stderr."""
        proc = self.run(*args, check=False)
        assert proc.returncode != 0, f"pfsfs {' '.join(args)} unexpectedly succeeded"
        if code is not None:
            assert proc.returncode == code, (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr.strip()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- daemon ------------------------------------------------------------------------------
    def start_daemon(self) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the daemon process
        self.proc = subprocess.Popen(
            python_module_argv("pfsfsd", "--home", str(self.home), "-v", "run"),
            cwd=CHILD_CWD,  # as the CLI starts it: never importing from the cwd
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=self.environ,
        )
        log.close()
        client = DaemonClient(self.home)
        deadline = time.monotonic() + 30
        while client.ping() is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError("daemon did not start")
            time.sleep(0.05)
        return self.proc

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        if sig == signal.SIGKILL:
            time.sleep(0.3)  # let PDEATHSIG take the workers down

    def stop_daemon(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- mounts ------------------------------------------------------------------------------
    def mkdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mount(self, ref: str | None, name: str = "mnt", *options: str) -> Path:
        mp = self.mkdir(name)
        args = ["mount", *([ref] if ref else []), str(mp), *options]
        self.run(*args)
        assert is_mounted(mp), f"{mp} is not mounted after pfsfs mount"
        return mp

    def unmount(self, mp: Path, *options: str) -> str:
        """``pfsfs unmount``; returns the commit id printed (or "")."""
        return self.run("unmount", str(mp), *options).stdout.strip()

    @contextmanager
    def mounted(self, ref: str | None, name: str = "mnt", *options: str) -> Iterator[Path]:
        mp = self.mount(ref, name, *options)
        try:
            yield mp
        finally:
            force_unmount(mp)

    def fsck(self) -> None:
        proc = self.run("fsck", check=False)
        assert proc.returncode == 0, f"fsck failed: {proc.stdout}{proc.stderr}"

    def head(self, ref: str) -> str:
        repo, _, branch = ref.partition("@")
        line = self.out("log", ref, "-n", "1")
        return line.split()[0] if line and "no commits" not in line else ""

    def commits(self, ref: str) -> int:
        return len([x for x in self.out("log", ref).splitlines() if x and "no commits" not in x])

    def cat_raw(self, ref_path: str) -> subprocess.CompletedProcess[bytes]:
        """``pfsfs cat`` with its output as bytes, whatever its exit code."""
        return subprocess.run(
            [PFSFS, "--home", str(self.home), "cat", ref_path],
            capture_output=True,
            timeout=60,
            env=self.environ,
        )

    def cat(self, ref_path: str) -> bytes:
        proc = self.cat_raw(ref_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


def force_unmount(mp: Path | str) -> None:
    """Unmount if still mounted: the clean way first, lazily if that fails."""
    if not is_mounted(mp):
        return
    subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, timeout=120)
    for _ in range(50):
        if not is_mounted(mp):
            return
        time.sleep(0.1)
    subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True, timeout=60)


def stop_any_daemon(home: Path) -> None:
    """Stop a daemon the CLI may have started by itself (autostart)."""
    client = DaemonClient(home)
    if client.ping() is None:
        return
    try:
        client.request("stop", timeout=10)
    except Exception:  # noqa: BLE001 - it may be exiting already
        pass
    deadline = time.monotonic() + 120
    while client.ping() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="session")
def no_leftovers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session no daemon, worker or scheduler of a test's home is alive and
    nothing is mounted below the session's temp directory, whoever started them (a command
    that starts the daemon itself, say): such leftovers are killed or unmounted, and the
    session fails. Every session runs it (``conftest.py``)."""
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


@pytest.fixture
def env(tmp_path: Path, no_leftovers: None) -> Iterator[Env]:
    with running_env(tmp_path) as e:
        yield e


@contextmanager
def running_env(tmp_path: Path) -> Iterator[Env]:
    """A home in ``tmp_path`` with its daemon; afterwards nothing mounted or running, and
    ``pfsfs fsck`` passes (the ``env`` fixture, also for scripts)."""
    e = Env(tmp_path)
    e.start_daemon()
    try:
        yield e
    finally:
        for mp in fuse_mounts(str(tmp_path)):
            force_unmount(mp)
        e.stop_daemon()
        stop_any_daemon(e.home)
        for mp in fuse_mounts(str(tmp_path)):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        e.fsck()


def write(path: Path, data: bytes | str, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def sh(cmd: str, cwd: Path | None = None, check: bool = True, **kw: Any) -> str:
    proc = subprocess.run(
        cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc.stdout
