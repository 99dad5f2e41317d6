"""Bad input to mount/unmount/snapshot: one-line errors, non-zero exits, nothing broken."""

from __future__ import annotations

import os
import subprocess
import sys

from .fusehelpers import (
    PFSFS,
    Env,
    env,
    force_unmount,
    is_mounted,
    no_leftovers,
    stop_any_daemon,
    write,
)

__all__ = ["env", "no_leftovers"]


def test_mount_errors(env: Env) -> None:
    env.run("repo", "create", "data")
    full = env.mkdir("full")
    write(full / "x", "x")
    err = env.fails("mount", "data@master", str(full))
    assert "not empty" in err
    err = env.fails("mount", "nosuch@master", str(env.mkdir("m1")))
    assert "does not exist" in err
    err = env.fails("mount", "data@nosuch", str(env.mkdir("m2")))
    assert "does not exist" in err
    err = env.fails("mount", "data@master", str(env.root / "missing"), code=3)
    assert "missing does not exist (create it, or add --mkdir)" in err
    write(env.root / "file", "x")
    assert "not a directory" in env.fails("mount", "data@master", str(env.root / "file"))
    err = env.fails("mount", "bad name@x", str(env.mkdir("m3")))
    assert "invalid" in err or "malformed" in err
    with env.mounted("data@master") as mp:
        err = env.fails("mount", "data@master", str(mp))
        assert "mount point" in err
        err = env.fails("snapshot", str(env.mkdir("m4")), "-m", "x")
        assert "not a pfsfs mount" in err
        assert is_mounted(mp)
    assert not os.listdir(env.mkdir("m1"))


def test_unmount_errors(env: Env) -> None:
    plain = env.mkdir("plain")
    err = env.fails("unmount", str(plain))
    assert "not a pfsfs mount" in err
    err = env.fails("unmount", str(env.root / "nothing-here"))
    assert "not a pfsfs mount" in err
    # busy: a process has its cwd inside the mount
    with env.mounted("data@master", "mnt", "--create") as mp:
        holder = subprocess.Popen(["sleep", "30"], cwd=mp)
        try:
            err = env.fails("unmount", str(mp))
            assert "busy" in err.lower()
            assert is_mounted(mp)
        finally:
            holder.kill()
            holder.wait()
        env.unmount(mp)
        assert not is_mounted(mp)


def test_output_repo_is_read_only(env: Env) -> None:
    env.run("repo", "create", "data")
    from pfsfs.repository import Repository

    with Repository.open(env.home) as repo:
        repo.create_repo("out", output_of="pipe")
    err = env.fails("mount", "out@master", str(env.mkdir("o1")))
    assert "read-only" in err
    with env.mounted("out@master", "o2", "--read-only") as mp:
        assert os.listdir(mp) == []


def test_cli_never_imports_pyfuse3(env: Env) -> None:
    code = (
        "import sys; import pfsfs.cli.main, pfsfs.daemon_client; "
        "pfsfs.cli.main.cli.load_all(); "  # the command modules are imported lazily
        "assert 'pyfuse3' not in sys.modules and 'trio' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('pyfuse3', 'trio', 'pfsfsd')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_daemon_commands(env: Env) -> None:
    out = env.out("daemon", "status")
    assert "daemon pid" in out
    # a second daemon for the same home refuses to start
    proc = subprocess.run(
        [sys.executable, "-m", "pfsfsd", "--home", str(env.home), "run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "already runs" in proc.stderr
    sock = env.home / "daemon.sock"
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"


def test_autostart(tmp_path: os.PathLike[str], no_leftovers: None) -> None:
    """The first command that needs a daemon starts one in the background."""
    e = Env(tmp_path)  # no daemon started
    mp = e.mkdir("mnt")
    try:
        e.run("mount", "auto@master", str(mp), "--create")
        assert is_mounted(mp)
        write(mp / "f", "x")
        commit = e.unmount(mp)
        assert len(commit) == 64
    finally:
        force_unmount(mp)
        stop_any_daemon(e.home)
    assert (
        subprocess.run(
            [PFSFS, "--home", str(e.home), "daemon", "status"], capture_output=True
        ).returncode
        != 0
    )
    e.fsck()


def test_pfsfs_daemon_runs_in_foreground(tmp_path: os.PathLike[str], no_leftovers: None) -> None:
    import signal
    import time

    from pfsfs.daemon_client import DaemonClient

    home = os.path.join(tmp_path, "home")
    proc = subprocess.Popen(
        [PFSFS, "--home", home, "daemon"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        client = DaemonClient(__import__("pathlib").Path(home))
        deadline = time.monotonic() + 30
        while client.ping() is None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.ping()["pid"] == proc.pid  # exec'd in place: the same process
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
