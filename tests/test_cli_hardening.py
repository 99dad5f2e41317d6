"""The CLI under hostile conditions, through real processes: Ctrl-C and SIGTERM mid-command,
private and group-shared homes, and bad input that must be one line with exit 2."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_cat_blocked_on_its_reader_stops_with_one_line(
    tmp_path: Path, signum: int, code: int
) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/big", "-f", "-", input=os.urandom(8 << 20))
    cat = subprocess.Popen(
        [*PFSFS, "cat", "data@master:/big"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(home),
    )
    assert cat.stdout is not None
    try:
        cat.stdout.read(1)  # it is writing; nobody reads on, so it blocks in write()
        time.sleep(0.5)
        cat.send_signal(signum)
        cat.stdout.close()
        _, err = cat.communicate(timeout=60)
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.wait()
    assert cat.returncode == code
    assert len(err.decode().strip().splitlines()) == 1 and b"Traceback" not in err, err


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


# -- bad input: one line, exit 2, never an internal error ---------------------------------------


def run_raw(home: Path, *args: str | bytes, stdin: bytes | None = None) -> tuple[int, list[str]]:
    """Run pfsfs with argv given as bytes where needed (not UTF-8); return code, stderr lines."""
    proc = subprocess.run(
        [*PFSFS, *args], input=stdin, capture_output=True, env=env_for(home), timeout=120
    )
    text = proc.stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    return proc.returncode, text.strip().splitlines()


def refused(home: Path, *args: str | bytes, stdin: bytes | None = None) -> str:
    """A bad-input refusal: exit 2 and exactly one line on stderr (returned)."""
    code, lines = run_raw(home, *args, stdin=stdin)
    assert (code, len(lines)) == (2, 1), (code, lines)
    assert lines[0].startswith("pfsfs: error: "), lines
    assert len(lines[0]) < 400, lines[0]  # the bad value is not echoed back in full
    return lines[0]


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/a", "-f", "-", input=b"alpha\n")
    return home


def test_absurd_history_offsets_are_bad_input_everywhere(seeded: Path) -> None:
    digits = "9" * 5000
    assert "~N is at most" in refused(seeded, "log", f"r@master~{digits}")
    for args in (
        ["ls", f"r@master~{digits}"],
        ["cat", f"r@master~{digits}:/a"],
        ["inspect", "commit", "r@master~10000000000"],
        ["diff", "r@master", f"r@master~{digits}"],
        ["rollback", "r@master", "--to", f"master~{digits}"],
        ["branch", "create", "r@b", "--from", f"r@master~{digits}"],
    ):
        assert "~N is at most" in refused(seeded, *args)
    # Within the bound, a walk past the root is "not found", as before.
    assert "history has only" in fails(seeded, "log", "r@master~999999999", code=3)


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "99999999999999999999999", "9" * 5000])
def test_log_limit_must_be_a_whole_number(seeded: Path, value: str) -> None:
    assert "--limit" in refused(seeded, "log", "r@master", "-n", value)


def test_log_limit_zero_and_small_values_work(seeded: Path) -> None:
    assert json.loads(run(seeded, "log", "r@master", "-n", "0", "--json").stdout) == []
    assert len(json.loads(run(seeded, "log", "r@master", "-n", "1", "--json").stdout)) == 1


@pytest.mark.parametrize("value", ["-1", "nan", "x"])
def test_durations_must_be_seconds_at_least_zero(seeded: Path, value: str) -> None:
    assert "--grace" in refused(seeded, "gc", "--grace", value)
    assert "--timeout" in refused(seeded, "wait", "r@master", "--timeout", value)


def test_text_that_is_not_utf8_is_refused_before_any_work(seeded: Path, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data\n")
    before = head(seeded, "r@master")
    line = refused(seeded, "put", "r@master:/b", "-f", str(f), "-m", b"bad\xff\xfe")
    assert "not valid UTF-8" in line and "--message" in line
    assert head(seeded, "r@master") == before
    assert "not valid UTF-8" in refused(seeded, "repo", "create", "s", "-d", b"\xff")
    assert "not valid UTF-8" in refused(seeded, "pipeline", "inspect", b"p\xff")
    assert "not valid UTF-8" in refused(seeded, "job", "list", "-p", b"p\xff")
    # Names and paths may be any bytes; valid UTF-8 messages still work.
    run(seeded, "put", "r@master:/b", "-f", str(f), "-m", "café ✓")
    assert json.loads(run(seeded, "log", "r@master", "--json").stdout)[0]["message"] == "café ✓"


def test_usage_errors_are_one_line(seeded: Path) -> None:
    assert "Missing argument" in refused(seeded, "log")
    assert "No such option" in refused(seeded, "log", "r@master", "--bogus")
    assert "No such command" in refused(seeded, "bogus")


def test_pipeline_specs_that_are_not_utf8_huge_or_absurd(seeded: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"pipeline:\n  name: p\xff\n")
    assert "must be UTF-8" in refused(seeded, "pipeline", "create", "-f", str(bad))
    assert "must be UTF-8" in refused(
        seeded, "pipeline", "create", "-f", "-", stdin=bad.read_bytes()
    )
    # /dev/zero never ends: the spec is read up to the cap, then refused.
    started = time.monotonic()
    assert "at most 1 MiB" in refused(seeded, "pipeline", "create", "-f", "/dev/zero")
    assert time.monotonic() - started < 30
    assert "at most 1 MiB" in refused(
        seeded, "pipeline", "update", "-f", "-", stdin=b"#" * ((1 << 20) + 1)
    )
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in refused(seeded, "pipeline", "create", "-f", str(deep))
    huge = tmp_path / "huge.yaml"
    huge.write_text("pipeline: {name: p}\nparallelism: " + "9" * 5000 + "\n")
    assert "spec:" in refused(seeded, "pipeline", "create", "-f", str(huge))
    good = {
        "pipeline": {"name": "p"},
        "input": {"pfs": {"repo": "r", "glob": "/*"}},
        "transform": {"cmd": ["true"]},
        "runner": "local",
    }
    spec = tmp_path / "spec.json"
    for extra, field in (
        ({"parallelism": 10**30}, "parallelism: must be at most"),
        ({"datum_tries": 10**30}, "datum_tries: must be at most"),
        ({"resource_limits": {"memory": 10**30}}, "resource_limits.memory: must be at most"),
    ):
        spec.write_text(json.dumps({**good, **extra}))
        assert field in refused(seeded, "pipeline", "create", "-f", str(spec))
    assert "does not exist" in fails(seeded, "pipeline", "inspect", "p", code=3)


# -- who can read a home and a store ------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
USERS_GID = 100  # the Debian "users" group: the team of the shared-store test
#: Accounts of a stock Debian system: two team members (in "users") and an outsider.
ALICE, BOB, OUTSIDER = 1, 2, 65534  # daemon, bin, nobody


def as_user(uid: int, *groups: int) -> Any:
    """A preexec_fn that turns the child into ``uid`` (primary group = uid's) with ``groups``."""

    def drop() -> None:
        os.setgroups(list(groups))
        os.setgid(uid)
        os.setuid(uid)

    return drop


def user_run(
    uid: int, groups: tuple[int, ...], home: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``pfsfs`` run by another local user. The venv's interpreter lives under /root (0700),
    so the system Python of the same version runs pfsfs from this tree and the venv's
    packages."""
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home.parent),
        "PYTHONPATH": f"{ROOT}:{site}",
        "PFSFS_HOME": str(home),
        "PFSFS_NO_DAEMON": "1",
    }
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-m", "pfsfs.cli.main", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd="/",
        preexec_fn=as_user(uid, *groups),
        timeout=120,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


def readable_by(uid: int, groups: tuple[int, ...], path: Path) -> bool:
    """Whether user ``uid`` can read ``path`` (a real ``cat`` run as that user)."""
    proc = subprocess.run(
        ["cat", str(path)], capture_output=True, preexec_fn=as_user(uid, *groups), timeout=30
    )
    return proc.returncode == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is inside a 0700 directory)."""
    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root (to act as other local users) and /usr/bin/python3")
    check = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            f"import sys; sys.exit(sys.version_info[:2] != {sys.version_info[:2]})",
        ]
    )
    if check.returncode != 0:
        pytest.skip("/usr/bin/python3 is not the venv's Python version")
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pfsfs-perm-", dir="/tmp"))
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path)


def _blobs(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and "refs" not in p.parts]


def test_a_new_home_and_its_store_are_private_to_their_user(open_dir: Path) -> None:
    home = open_dir / "home"
    run(home, "repo", "create", "r")  # the home is made on first use
    run(home, "put", "r@master:/secret", "-f", "-", input=b"secret\n")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    blobs = _blobs(home / "store")
    assert blobs and not any(readable_by(OUTSIDER, (), p) for p in blobs)
    assert not readable_by(OUTSIDER, (), home / "index" / "data.mdb")
    assert user_run(OUTSIDER, (), home, "cat", "r@master:/secret").returncode != 0
    # A store elsewhere (`init --store`) is created private too.
    other, store = open_dir / "home2", open_dir / "store2"
    assert "private" in run(other, "init", "--store", str(store)).stdout.decode()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE(other.stat().st_mode) == 0o700


def test_init_makes_an_open_existing_home_private_and_says_so(open_dir: Path) -> None:
    home = open_dir / "home"
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/f", "-f", "-", input=b"data\n")
    os.chmod(home, 0o755)  # a home made by an older pfsfs
    run(home, "ls", "r@master")
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # other commands leave it alone
    assert readable_by(OUTSIDER, (), _blobs(home / "store")[0])
    said = run(home, "init").stdout.decode()
    assert "private: mode 0755 -> 0700" in said
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not readable_by(OUTSIDER, (), _blobs(home / "store")[0])
    assert run(home, "cat", "r@master:/f").stdout == b"data\n"
    assert "private" not in run(home, "init").stdout.decode()  # nothing more to say


def test_a_group_shared_store_serves_its_group_and_nobody_else(open_dir: Path) -> None:
    # As an admin sets up a team directory: the group's, group-writable, setgid.
    store = open_dir / "team-store"
    store.mkdir()
    os.chown(store, 0, USERS_GID)
    os.chmod(store, 0o2770)
    team = (USERS_GID,)
    alice_home, bob_home, out_home = (open_dir / n for n in ("alice", "bob", "outsider"))
    for h, uid in ((alice_home, ALICE), (bob_home, BOB), (out_home, OUTSIDER)):
        h.mkdir()
        os.chown(h, uid, uid)
    said = user_run(ALICE, team, alice_home, "init", "--store", str(store), "--shared-group")
    assert said.returncode == 0, said.stderr
    assert "shared with group users" in said.stdout.decode()
    assert stat.S_IMODE(store.stat().st_mode) == 0o2770
    assert user_run(ALICE, team, alice_home, "repo", "create", "r").returncode == 0
    put = user_run(ALICE, team, alice_home, "put", "r@master:/a", "-f", "-", stdin=b"alice\n")
    assert put.returncode == 0, put.stderr
    # Bob joins with his own (private) home, reads Alice's commit and adds his own.
    joined = user_run(BOB, team, bob_home, "init", "--store", str(store), "--shared-group")
    assert joined.returncode == 0, joined.stderr
    assert stat.S_IMODE(bob_home.stat().st_mode) == 0o700
    user_run(BOB, team, bob_home, "refresh")
    got = user_run(BOB, team, bob_home, "cat", "r@master:/a")
    assert got.stdout == b"alice\n", got.stderr
    put = user_run(BOB, team, bob_home, "put", "r@master:/b", "-f", "-", stdin=os.urandom(1 << 20))
    assert put.returncode == 0, put.stderr
    user_run(ALICE, team, alice_home, "refresh")
    listed = user_run(ALICE, team, alice_home, "ls", "r@master")
    assert b"b" in listed.stdout.split(), listed.stderr
    # What each member added is the group's: setgid directories, group-readable files.
    for path in store.rglob("*"):
        st = path.lstat()
        assert st.st_gid == USERS_GID, path
        if path.is_dir():
            assert stat.S_IMODE(st.st_mode) & 0o2070 == 0o2070, path
        else:
            assert stat.S_IMODE(st.st_mode) & 0o040, path
        assert not stat.S_IMODE(st.st_mode) & 0o007, path
    # Outsiders read nothing, and get one line for trying.
    assert not readable_by(OUTSIDER, (), _blobs(store)[0])
    refused = user_run(OUTSIDER, (), out_home, "init", "--store", str(store), "--shared-group")
    assert refused.returncode != 0
    assert len(refused.stderr.decode().strip().splitlines()) == 1, refused.stderr
    # gc on a shared store keeps young unreachable objects (another member may be writing).
    for args in (("put", "r@tmp:/t", "-f", "-"), ("branch", "delete", "r@tmp")):
        done = user_run(ALICE, team, alice_home, *args, stdin=b"unreachable soon\n")
        assert done.returncode == 0, done.stderr
    gc = user_run(ALICE, team, alice_home, "gc", "--dry-run", "--json")
    report = json.loads(gc.stdout)
    assert report["kept_young"] > 0 and report["deleted_blobs"] == 0, report


def test_shared_group_needs_a_local_store_outside_the_home(tmp_path: Path) -> None:
    assert "--store DIR" in refused(tmp_path / "h", "init", "--shared-group")
    assert "local store" in refused(
        tmp_path / "h", "init", "--store", "s3://bucket/p", "--shared-group"
    )
    assert "must be UTF-8" in refused(tmp_path / "h", "init", "--store", b"/tmp/\xff")
    assert "must be UTF-8" in refused(tmp_path / "h", "--home", b"/tmp/\xff", "repo", "list")


def _catches_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_while_pfsfs_starts_up_is_one_line(tmp_path: Path, sig: signal.Signals) -> None:
    """Importing the commands is slow on a loaded machine: a signal then is one line and
    128 + N, never a KeyboardInterrupt traceback or a silent death (a fixed-delay signal test
    saw both under CI load). The console script users run catches signals from its first line
    (``pfsfs/cli/entry.py``); the interpreter's own start, before any pfsfs code, is not ours:
    the signal is sent from the moment the script catches SIGTERM, at several delays into the
    imports."""
    script = Path(sys.executable).with_name("pfsfs")
    env = {**os.environ, "PFSFS_HOME": str(tmp_path / "home")}
    # the put must get as far as reading stdin (a missing repo fails before it reads)
    run(tmp_path / "home", "repo", "create", "r")
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
        proc = subprocess.Popen(  # reads stdin, which never ends: it is still running
            [str(script), "put", "r@master:/x", "-f", "-"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while not _catches_sigterm(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(delay)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 128 + sig, (delay, proc.returncode, lines)
        assert len(lines) == 1 and "Traceback" not in lines[0], (delay, lines)


#: A command that writes to a pipe whose reader is gone: standard output (``stdout``) or
#: another pipe of its own (``other``); run through the real ``main``.
BROKEN_PIPE = """
import os, sys
import click
from pfsfs.cli import main as m

@click.command("brokenpipe")
@click.argument("where")
def brokenpipe(where):
    if where == "stdout":
        while True:
            sys.stdout.buffer.write(b"x" * 65536)
    r, w = os.pipe()
    os.close(r)
    os.write(w, b"lost")

m.cli.add_command(brokenpipe)
sys.argv = ["pfsfs", "brokenpipe", sys.argv[1]]
m.main()
"""


def test_a_reader_of_stdout_that_goes_away_is_exit_0_and_any_other_broken_pipe_an_error(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PFSFS_HOME": str(tmp_path / "home")}
    gone = subprocess.Popen(
        [sys.executable, "-c", BROKEN_PIPE, "stdout"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert gone.stdout is not None and gone.stderr is not None
    gone.stdout.read(1000)
    gone.stdout.close()  # as `head -c 1000` does
    assert gone.wait(timeout=60) == 0
    assert gone.stderr.read() == b""
    other = subprocess.run(
        [sys.executable, "-c", BROKEN_PIPE, "other"], capture_output=True, env=env, timeout=60
    )
    assert other.returncode == 7, other
    assert other.stderr.decode().splitlines() == ["pfsfs: error: broken pipe"]


def test_a_broken_pipe_that_reaches_main_unconverted_is_the_same_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One from a trio group (``pipeline run``) passes no command's ``invoke``: ``main``
    decides it the same way (stdout here is not a pipe whose reader left)."""
    from pfsfs.cli.main import _report

    assert _report(BrokenPipeError(32, "Broken pipe", "fifo")) == 7
    assert capsys.readouterr().err.splitlines() == ["pfsfs: error: broken pipe: fifo"]
