"""The daemon, its mount workers, the pipeline scheduler and the index salvager never import
from the directory the user runs ``pfsfs`` in.

``python -m pfsfsd`` used to put the working directory first on ``sys.path``: a folder named
``pfsfs`` there (the directory holding a clone) broke the daemon's start, and a planted
``pfsfsd/__main__.py`` (a shared /tmp, a downloaded data set) ran as the daemon, as root. Each
test runs the real CLI from such a directory and checks that everything works and that no
planted file ran (each writes a marker when imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsfs.daemon_client import DaemonClient

from .fusehelpers import PFSFS, force_unmount, fuse_mounts, no_leftovers, stop_any_daemon  # noqa: F401

FRUIT = Path(__file__).resolve().parent.parent / "examples" / "fruit-stand"

#: Module files a ``python -m`` of ours would import first if the cwd came first on sys.path.
PLANTED = [
    "pfsfs/__init__.py",
    "pfsfs/pipeline/__init__.py",
    "pfsfs/pipeline/scheduler.py",
    "pfsfs/index.py",
    "pfsfsd/__init__.py",
    "pfsfsd/__main__.py",
    "pfsfsd/worker.py",
]


def plant(cwd: Path, marker: Path) -> None:
    """Make ``cwd`` a trap: every planted module appends its name to ``marker`` when run."""
    for rel in PLANTED:
        path = cwd / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"open({str(marker)!r}, 'a').write({rel!r} + '\\n')\n")


class Cli:
    """The real ``pfsfs`` run in ``cwd``, with the daemon allowed to start by itself."""

    def __init__(self, tmp_path: Path, cwd: Path) -> None:
        self.home = tmp_path / "home"
        self.cwd = cwd
        self.environ = {k: v for k, v in os.environ.items() if k != "PFSFS_NO_DAEMON"}

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [PFSFS, "--home", str(self.home), *args],
            input=input,
            capture_output=True,
            cwd=self.cwd,
            env=self.environ,
            timeout=180,
        )
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, f"pfsfs {' '.join(args)} exited {proc.returncode}: {err}"
        assert "Traceback" not in err, err
        return proc.stdout


@pytest.fixture
def trap(tmp_path: Path, no_leftovers: None) -> Iterator[tuple[Cli, Path]]:  # noqa: F811
    """A planted working directory, a CLI running there, and the marker file; afterwards no
    daemon and no mount is left."""
    cwd, marker = tmp_path / "cwd", tmp_path / "marker"
    cwd.mkdir()
    plant(cwd, marker)
    cli = Cli(tmp_path, cwd)
    try:
        yield cli, marker
    finally:
        for mp in fuse_mounts(str(tmp_path)):
            force_unmount(mp)
        stop_any_daemon(cli.home)
    assert not marker.exists(), f"planted code ran: {marker.read_text()}"


def mount_write_read(cli: Cli, mp: Path) -> None:
    """A read-write mount (a worker of the daemon) takes a file, commits it on unmount."""
    mp.mkdir()
    try:
        cli.run("mount", "--create", "r@master", str(mp))
        (mp / "hello.txt").write_bytes(b"hello\n")
        cli.run("unmount", str(mp))
    finally:
        force_unmount(mp)
    assert cli.run("cat", "r@master:/hello.txt") == b"hello\n"


def pipeline_runs(cli: Cli) -> None:
    """``pipeline create`` has something (the daemon's scheduler) process the pipeline."""
    cli.run("repo", "create", "data")
    cli.run("put", "data@master:/sales", "-f", str(FRUIT / "sales"))
    cli.run("pipeline", "create", "-f", str(FRUIT / "sum.yaml"))
    cli.run("wait", "data@master", "--timeout", "120")
    assert cli.run("cat", "sum@master:/apple").strip() == b"5"


def test_a_folder_named_pfsfs_in_the_cwd_does_not_break_the_daemon(tmp_path: Path) -> None:
    cwd = tmp_path / "clone-parent"
    (cwd / "pfsfs").mkdir(parents=True)  # e.g. the directory holding a clone named pfsfs
    (cwd / "pfsfsd").mkdir()
    cli = Cli(tmp_path, cwd)
    try:
        mount_write_read(cli, tmp_path / "mnt")
    finally:
        stop_any_daemon(cli.home)


def test_an_autostarted_daemon_its_workers_and_scheduler_ignore_planted_code(
    trap: tuple[Cli, Path], tmp_path: Path
) -> None:
    cli, _ = trap
    pipeline_runs(cli)  # starts the daemon, which starts the scheduler
    mount_write_read(cli, tmp_path / "mnt")
    pid = DaemonClient(cli.home).ping()["pid"]  # type: ignore[index]
    assert os.readlink(f"/proc/{pid}/cwd") == "/"  # nor does it keep the user's directory busy


def test_a_daemon_started_in_a_planted_cwd_starts_clean_workers_and_scheduler(
    trap: tuple[Cli, Path], tmp_path: Path
) -> None:
    """The daemon itself safely started but left in the trap directory (as a service manager
    with WorkingDirectory= would): its own children must not import from there either."""
    cli, _ = trap
    cli.home.mkdir()
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - the daemon's
    daemon = subprocess.Popen(
        [sys.executable, "-P", "-m", "pfsfsd", "--home", str(cli.home), "run"],
        cwd=cli.cwd,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:
        client = DaemonClient(cli.home)
        deadline = time.monotonic() + 30
        while client.ping() is None:
            assert daemon.poll() is None and time.monotonic() < deadline, "no daemon"
            time.sleep(0.05)
        pipeline_runs(cli)
        mount_write_read(cli, tmp_path / "mnt")
    finally:
        for mp in fuse_mounts(str(tmp_path)):
            force_unmount(mp)
        daemon.terminate()
        daemon.wait(timeout=120)


def test_daemon_run_in_the_foreground_ignores_planted_code(
    trap: tuple[Cli, Path], tmp_path: Path
) -> None:
    cli, _ = trap
    daemon = subprocess.Popen(
        [PFSFS, "--home", str(cli.home), "daemon", "run"],
        cwd=cli.cwd,
        env=cli.environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = DaemonClient(cli.home)
        deadline = time.monotonic() + 30
        while client.ping() is None:
            assert daemon.poll() is None and time.monotonic() < deadline, "no daemon"
            time.sleep(0.05)
        assert client.ping()["pid"] == daemon.pid  # type: ignore[index] - exec'd in place
        mount_write_read(cli, tmp_path / "mnt")
    finally:
        for mp in fuse_mounts(str(tmp_path)):
            force_unmount(mp)
        daemon.terminate()
        daemon.wait(timeout=120)


def test_rebuilding_the_index_ignores_planted_code(trap: tuple[Cli, Path]) -> None:
    """``fsck --rebuild-index`` salvages the old index in a ``python -m pfsfs.index`` child."""
    cli, _ = trap
    cli.run("repo", "create", "r")
    cli.run("put", "r@master:/a", "-f", "-", input=b"a\n")
    out = cli.run("fsck", "--rebuild-index")
    assert cli.run("cat", "r@master:/a") == b"a\n", out


def test_every_source_package_is_in_the_distribution() -> None:
    """pyproject.toml lists packages explicitly (pfsfsd lives in daemon/): a package missing
    there works in an editable checkout and is absent from a real install (the pfsfs image)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = set()
    for top, name in (("pfsfs", "pfsfs"), ("daemon", "pfsfsd")):
        for init in (root / top).rglob("__init__.py"):
            rel = init.parent.relative_to(root / top).parts
            on_disk.add(".".join((name, *rel)))
    assert on_disk == listed
