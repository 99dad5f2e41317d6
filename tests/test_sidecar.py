"""``pfsfs sidecar`` for real: local processes, real FUSE mounts, S3 over HTTP from moto.

What a pod needs from its sidecar: a ready file once every mount answers, read-only inputs and
a read-write output, SIGTERM → commit + exit 0 within the grace, a grace overrun that exits
non-zero within the deadline and leaves the staged changes recoverable, a restart in place
after SIGKILL (the predecessor's dead mount detached, its staged changes resumed), and a
conflicting autosnapshot that goes onto a new branch.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from .fusehelpers import PFSFS, Env, force_unmount, fuse_mounts, is_mounted, no_leftovers, write
from .s3server import MotoServer, run_moto_server

__all__ = ["no_leftovers"]


class SidecarProc:
    """A ``pfsfs sidecar`` process (exec'd: its pid is the daemon's) and its ready file."""

    def __init__(self, root: Path, env: dict[str, str], *args: str) -> None:
        self.root = root
        self.home = root / "home"
        self.ready = root / "run" / "ready"
        self.env = env
        self.args = args
        self.log = root / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PFSFS, "--home", str(self.home), "sidecar", *self.args, *extra]
                + ["--ready-file", str(self.ready)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        return self.proc

    def wait_ready(self, timeout: float = 60) -> dict[str, object]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                info = json.loads(self.ready.read_text())
                if info["pid"] == self.proc.pid:
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"no ready file:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, float]:
        """Send ``sig``; (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for mp in fuse_mounts(str(self.root)):
            force_unmount(mp)


def pfsfs(home: Path, env: dict[str, str], *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [PFSFS, "--home", str(home), *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert proc.returncode == 0, f"pfsfs {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def seed(home: Path, env: dict[str, str], repo: str, name: str, data: bytes) -> None:
    src = home.parent / f"seed-{name}"
    src.write_bytes(data)
    pfsfs(home, env, "repo", "create", repo)
    pfsfs(home, env, "put", f"{repo}@master:/{name}", "-f", str(src))


@pytest.fixture
def local(tmp_path: Path, no_leftovers: None) -> SidecarProc:
    env = {k: v for k, v in os.environ.items() if k != "PFSFS_STORE"}
    sc = SidecarProc(
        tmp_path,
        env,
        "--mount",
        f"in@master:{tmp_path}/x:ro",
        "--mount",
        f"out@master:{tmp_path}/y",
    )
    seed(sc.home, env, "in", "in.txt", b"input bytes\n")
    try:
        yield sc
    finally:
        sc.cleanup()


def s3_env(server: MotoServer, prefix: str) -> dict[str, str]:
    env = server.env()
    env.update(PFSFS_STORE=f"s3://{server.bucket}/{prefix}", AWS_ENDPOINT_URL=server.endpoint)
    return env


def test_sidecar_over_s3_from_the_environment(
    tmp_path: Path, s3_server: MotoServer, no_leftovers: None
) -> None:
    prefix = f"sidecar-{uuid.uuid4().hex[:10]}"
    env = s3_env(s3_server, prefix)
    store = f"s3://{s3_server.bucket}/{prefix}"  # another home over the same bucket
    pfsfs(tmp_path / "seed", env, "init", "--store", store, "--endpoint-url", s3_server.endpoint)
    seed(tmp_path / "seed", env, "in", "in.txt", b"from the bucket\n")
    # Outside tmp_path (0700 for root): uid 1000 must be able to reach the mounts.
    base = Path(tempfile.mkdtemp(prefix="pfsfs-sidecar-"))
    os.chmod(base, 0o755)
    x, y = base / "x", base / "y"  # created by the sidecar
    sc = SidecarProc(tmp_path, env, "--mount", f"in@master:{x}:ro", "--mount", f"out@master:{y}")
    try:
        sc.start("--grace", "15")
        info = sc.wait_ready()
        assert [m["dir"] for m in info["mounts"]] == [str(x), str(y)]  # type: ignore[index]
        config = json.loads((sc.home / "config.json").read_text())  # implicit `pfsfs init`
        assert config["store"]["type"] == "s3" and config["store"]["endpoint_url"]
        assert (x / "in.txt").read_bytes() == b"from the bucket\n"
        with pytest.raises(OSError) as exc:
            write(x / "nope", "x")
        assert exc.value.errno == errno.EROFS
        write(y / "out.txt", "result\n")
        # The app container runs as another uid: it reads the input and writes the output.
        as_app = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c"]
        script = f"cat {x}/in.txt > {y}/by-app.txt && id -u >> {y}/by-app.txt"
        subprocess.run([*as_app, script], check=True, timeout=30)
        code, took = sc.stop(signal.SIGTERM)
        assert code == 0, sc.tail()
        assert took < 15
        assert not sc.ready.exists()
        assert not is_mounted(x) and not is_mounted(y)
    finally:
        sc.cleanup()
        for mp in (x, y):
            force_unmount(mp)
        shutil.rmtree(base, ignore_errors=True)
    # The commit is in the bucket: another home over the same store reads it.
    assert pfsfs(tmp_path / "seed", env, "cat", "out@master:/out.txt") == "result\n"
    by_app = pfsfs(tmp_path / "seed", env, "cat", "out@master:/by-app.txt")
    assert by_app == "from the bucket\n1000\n"
    assert "Traceback" not in sc.tail()


def test_sigkill_then_restart_in_place(local: SidecarProc) -> None:
    x, y = local.root / "x", local.root / "y"
    local.start()
    local.wait_ready()
    fd = os.open(y / "kept.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"written before the crash\n")
    os.fsync(fd)
    os.close(fd)
    local.stop(signal.SIGKILL)
    time.sleep(0.3)  # PDEATHSIG takes the workers down
    with pytest.raises(OSError) as exc:
        os.listdir(y)
    assert exc.value.errno == errno.ENOTCONN  # what the app container sees meanwhile
    assert local.ready.exists()  # the predecessor's: the restart must replace it

    local.start()
    local.wait_ready()  # pid of the new process
    assert (x / "in.txt").read_bytes() == b"input bytes\n"
    assert (y / "kept.txt").read_bytes() == b"written before the crash\n"  # resumed
    assert "resuming the dead mount" in local.tail()
    code, _ = local.stop(signal.SIGTERM)
    assert code == 0, local.tail()
    assert pfsfs(local.home, local.env, "cat", "out@master:/kept.txt") == (
        "written before the crash\n"
    )
    assert "Traceback" not in local.tail()


def test_grace_overrun_exits_nonzero_and_keeps_staging(tmp_path: Path, no_leftovers: None) -> None:
    """The store hangs at SIGTERM (moto stopped): the sidecar gives up at --grace, kills and
    detaches its mount, exits 1; `pfsfs recover` commits the staged file afterwards."""
    with run_moto_server() as server:
        env = s3_env(server, "overrun")
        y = tmp_path / "y"
        sc = SidecarProc(tmp_path, env, "--mount", f"out@master:{y}")
        try:
            sc.start("--grace", "2")
            sc.wait_ready()
            write(y / "staged.bin", os.urandom(1 << 20))
            server.proc.send_signal(signal.SIGSTOP)
            try:
                code, took = sc.stop(signal.SIGTERM)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert code == 1, sc.tail()
            assert 2 <= took < 2 + 10, took  # the grace plus killing and detaching
            errors = [ln for ln in sc.tail().splitlines() if ln.startswith("pfsfs: error:")]
            assert len(errors) == 1 and "overran the 2 s grace" in errors[0], sc.tail()
            assert "Traceback" not in sc.tail()
            assert not is_mounted(y)
        finally:
            sc.cleanup()
        data = None
        e = Env(tmp_path, env)
        e.start_daemon()
        try:
            out = e.run("recover")
            assert out.returncode == 0, out.stderr
            data = e.cat("out@master:/staged.bin")
        finally:
            e.stop_daemon()
        assert data is not None and len(data) == 1 << 20


def test_busy_mount_never_wedges_the_shutdown(local: SidecarProc) -> None:
    """A process keeps a file open in the output: unmount is busy, the sidecar still exits
    within --grace (non-zero), with the changes committed by the snapshot before it."""
    y = local.root / "y"
    local.start("--grace", "1")
    local.wait_ready()
    write(y / "a.txt", "committed at SIGTERM\n")
    holder = subprocess.Popen(["sleep", "60"], cwd=y)
    try:
        code, took = local.stop(signal.SIGTERM)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1, local.tail()
    assert took < 1 + 10, took
    assert not is_mounted(y)
    assert pfsfs(local.home, local.env, "cat", "out@master:/a.txt") == "committed at SIGTERM\n"


def test_autosnapshot_conflict_goes_onto_a_new_branch(local: SidecarProc) -> None:
    y = local.root / "y"
    local.start("--autosnapshot", "0.3")
    local.wait_ready()
    write(y / "a.txt", "one\n")
    _wait_for(lambda: _cat(local, "out@master:/a.txt") == "one\n")
    theirs = local.root / "theirs"
    theirs.write_text("theirs\n")
    pfsfs(local.home, local.env, "put", "out@master:/a.txt", "-f", str(theirs))
    write(y / "a.txt", "mine\n")
    _wait_for(lambda: "onto the new branch" in local.tail())
    code, _ = local.stop(signal.SIGTERM)
    assert code == 0, local.tail()
    branches = pfsfs(local.home, local.env, "branch", "list", "out")
    conflict = [b.split()[0] for b in branches.splitlines() if ".conflict-" in b]
    assert len(conflict) == 1, branches
    assert _cat(local, "out@master:/a.txt") == "theirs\n"  # the other writer's commit stays
    assert _cat(local, f"out@{conflict[0]}:/a.txt") == "mine\n"  # and ours is not discarded
    assert conflict[0] in local.tail()


def _cat(sc: SidecarProc, ref: str) -> str | None:
    proc = subprocess.run(
        [PFSFS, "--home", str(sc.home), "cat", ref], capture_output=True, text=True, env=sc.env
    )
    return proc.stdout if proc.returncode == 0 else None


def _wait_for(cond, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mount", "in@master"], "expected REF:DIR"),
        (["--mount", "a@master:/tmp/p1", "--mount", "b@master:/tmp/p2"], "one read-write mount"),
        (["--mount", "a@master:/tmp/p1:ro", "--mount", "b@master:/tmp/p1/q:ro"], "inside"),
        (["--mount", "bad name@x:/tmp/p1"], "invalid"),
    ],
)
def test_bad_mount_options(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [PFSFS, "--home", str(tmp_path / "h"), "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfsfs: error:") and message in lines[0], lines


def test_home_of_another_store_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h"
    pfsfs(home, dict(os.environ), "init")
    env = {**os.environ, "PFSFS_STORE": "s3://bucket/prefix"}
    proc = subprocess.run(
        [PFSFS, "--home", str(home), "sidecar", "--mount", f"o@master:{tmp_path}/y"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "PFSFS_STORE names s3://bucket/prefix" in proc.stderr
