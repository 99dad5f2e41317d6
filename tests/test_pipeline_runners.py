"""Transform runners, for real: podman (busybox image built by scripts/build-images.sh), the
local runner in bubblewrap, and the local runner without a sandbox."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from pfsfs.pipeline.datums import compute_datums
from pfsfs.pipeline.runners import (
    DatumContext,
    LocalRunner,
    PodmanRunner,
    Runner,
    make_runner,
    run_datum_async,
    run_with_retries,
)
from pfsfs.pipeline.spec import ResourceLimits, Transform, parse_spec_dict

from .pipeline_fixtures import build_images, commit, ensure_bwrap, require_root, spec_dict

IMAGE = "pfsfs/busybox"


@pytest.fixture(scope="session")
def busybox_image() -> str:
    build_images("busybox")
    return IMAGE


def _runner(kind: str, request: pytest.FixtureRequest) -> Runner:
    if kind == "podman":
        request.getfixturevalue("busybox_image")
        return PodmanRunner()
    if kind == "bwrap":
        require_root()
        ensure_bwrap()
        return LocalRunner(sandbox=True)
    return LocalRunner(sandbox=False)


@pytest.fixture(params=["podman", "bwrap"])
def sandbox(request: pytest.FixtureRequest) -> Runner:
    """A runner that isolates the transform: podman or the local runner in bubblewrap."""
    return _runner(request.param, request)


@pytest.fixture(params=["podman", "bwrap", "plain"])
def runner(request: pytest.FixtureRequest) -> Runner:
    return _runner(request.param, request)


def make_ctx(
    tmp_path: Path,
    *stdin: str,
    cmd: tuple[str, ...] = ("sh",),
    timeout: float | None = 60,
    **transform: object,
) -> DatumContext:
    """Input `in` holds a.txt ("hello") and sub/b.txt; the transform is `cmd` fed `stdin`."""
    indir = tmp_path / "in" / "in"
    (indir / "sub").mkdir(parents=True)
    (indir / "a.txt").write_text("hello\n")
    (indir / "sub" / "b.txt").write_text("bee\n")
    out = tmp_path / "out"
    out.mkdir()
    transform.setdefault("image", IMAGE)
    t = Transform(cmd=cmd, stdin=tuple(stdin), **transform)  # type: ignore[arg-type]
    return DatumContext(t, {"in": indir}, out, tmp_path / "logs", timeout=timeout)


def test_reads_inputs_and_writes_output(runner: Runner, tmp_path: Path) -> None:
    ctx = make_ctx(
        tmp_path,
        "cat /pfs/in/a.txt /pfs/in/sub/b.txt > /pfs/out/both.txt",
        'echo "$FOO $PFS_IN $PFS_OUT" > "$PFS_OUT/env.txt"',
        "echo to-stdout; echo to-stderr >&2",
        env=(("FOO", "bar"),),
    )
    result = runner.run_datum(ctx)
    assert result.ok, result.summary()
    assert (ctx.output_dir / "both.txt").read_text() == "hello\nbee\n"
    foo, pfs_in, pfs_out = (ctx.output_dir / "env.txt").read_text().split()
    assert foo == "bar"
    if not getattr(runner, "sandboxed", True):
        assert (pfs_in, pfs_out) == (str(ctx.inputs["in"]), str(ctx.output_dir))
    else:
        assert (pfs_in, pfs_out) == ("/pfs/in", "/pfs/out")
    assert result.stdout() == b"to-stdout\n"
    assert b"to-stderr" in result.stderr()
    assert result.stdout_path.parent == ctx.log_dir


def test_exit_code_is_reported(runner: Runner, tmp_path: Path) -> None:
    result = runner.run_datum(make_ctx(tmp_path, "echo failing >&2; exit 3"))
    assert (result.exit_code, result.ok, result.timed_out) == (3, False, False)
    assert "exit code 3" in result.summary() and "failing" in result.summary()


def test_inputs_are_read_only(sandbox: Runner, tmp_path: Path) -> None:
    ctx = make_ctx(
        tmp_path,
        "echo changed > /pfs/in/a.txt && echo wrote-a",
        "touch /pfs/in/new && echo wrote-new",
        "rm -f /pfs/in/sub/b.txt && echo removed-b",
        "touch /pfs/out/ok",
    )
    result = sandbox.run_datum(ctx)
    assert result.ok, result.summary()
    assert result.stdout() == b""
    assert b"Read-only file system" in result.stderr()
    assert (ctx.inputs["in"] / "a.txt").read_text() == "hello\n"
    assert not (ctx.inputs["in"] / "new").exists()
    assert (ctx.inputs["in"] / "sub" / "b.txt").exists()
    assert (ctx.output_dir / "ok").exists()


@pytest.fixture
def tcp_server() -> Iterator[tuple[list[str], list[object]]]:
    """A TCP server on all host addresses; yields (addresses to try, connections seen)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen()
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    seen: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                continue
            seen.append(addr)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    addresses = [f"127.0.0.1 {port}"]
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("10.255.255.255", 1))
        addresses.append(f"{probe.getsockname()[0]} {port}")
        probe.close()
    except OSError:
        pass
    # the server really answers from the host
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    time.sleep(0.3)
    assert len(seen) == 1
    seen.clear()
    try:
        yield addresses, seen
    finally:
        stop.set()
        thread.join()
        srv.close()


def test_no_network(sandbox: Runner, tmp_path: Path, tcp_server) -> None:
    addresses, seen = tcp_server
    lines = ["tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /pfs/out/interfaces"]
    for addr in addresses:
        lines.append(f"busybox nc -w 2 {addr} </dev/null && echo connected-{addr.split()[0]}")
    lines.append("true")
    result = sandbox.run_datum(make_ctx(tmp_path, *lines))
    assert result.ok, result.summary()
    assert (tmp_path / "out" / "interfaces").read_text().split() == ["lo"]
    assert b"connected" not in result.stdout()
    assert seen == []


def test_network_opt_in(sandbox: Runner, tmp_path: Path, tcp_server) -> None:
    addresses, seen = tcp_server
    # from a container, the host is its external address; from bwrap, loopback works too
    addr = addresses[-1] if isinstance(sandbox, PodmanRunner) else addresses[0]
    if addr.startswith("127.") and isinstance(sandbox, PodmanRunner):
        pytest.skip("the host has no non-loopback IPv4 address for the container to reach")
    result = sandbox.run_datum(
        make_ctx(tmp_path, f"busybox nc -w 5 {addr} </dev/null", network=True)
    )
    assert result.ok, result.summary()
    time.sleep(0.3)
    assert len(seen) == 1


def _alive(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(pid))
    return pids


def _container_exists(name: str) -> bool:
    runner = PodmanRunner()
    proc = subprocess.run(
        [runner.podman, "ps", "-a", "-q", "--filter", f"name=^{name}$"],
        env=runner.client_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return bool(proc.stdout.strip())


def test_timeout_kills_everything(runner: Runner, tmp_path: Path) -> None:
    marker = f"3{uuid.uuid4().int % 10**6:06d}"  # unique sleep argument: 3xxxxxx seconds
    ctx = make_ctx(tmp_path, f"sleep {marker} &", f"sleep {marker}", timeout=1.0)
    start = time.monotonic()
    result = runner.run_datum(ctx)
    elapsed = time.monotonic() - start
    assert result.timed_out and not result.ok
    assert elapsed < 15, elapsed
    assert "timed out" in result.summary()
    time.sleep(0.5)
    assert _alive(f"sleep\0{marker}") == []
    if isinstance(runner, PodmanRunner):
        assert not _container_exists(ctx.run_name)


def test_cancelling_the_async_run_kills_it(runner: Runner, tmp_path: Path) -> None:
    marker = f"4{uuid.uuid4().int % 10**6:06d}"
    ctx = make_ctx(tmp_path, f"sleep {marker}", timeout=None)

    async def main() -> float:
        start = trio.current_time()
        with trio.move_on_after(1.5):
            await run_datum_async(runner, ctx, tries=3)
        return trio.current_time() - start

    assert trio.run(main) < 15
    deadline = time.monotonic() + 10
    while _alive(f"sleep\0{marker}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(f"sleep\0{marker}") == []
    if isinstance(runner, PodmanRunner):
        assert not _container_exists(ctx.run_name)


def test_async_run_returns_the_result(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "echo hi > /pfs/out/x")

    async def main():
        return await run_datum_async(
            LocalRunner(sandbox=False), ctx, limiter=trio.CapacityLimiter(2)
        )

    result = trio.run(main)
    assert result.ok and (ctx.output_dir / "x").read_text() == "hi\n"


def test_retries_until_success_with_a_clean_output(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    ctx = make_ctx(
        tmp_path,
        'seen=$(ls /pfs/out); printf "%s" "$seen" > /pfs/out/seen-before',
        f"touch /pfs/out/junk-$(cat {counter} 2>/dev/null || echo 0)",
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}",
        "[ $n -ge 2 ]",
    )
    result = run_with_retries(LocalRunner(sandbox=False), ctx, tries=5)
    assert result.ok and result.attempts == 3
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == ["junk-2", "seen-before"]
    assert (ctx.output_dir / "seen-before").read_text() == ""
    assert result.stdout_path == ctx.log_dir / "try-3" / "stdout.log"
    failed = run_with_retries(LocalRunner(sandbox=False), make_ctx(tmp_path / "b", "exit 1"), 2)
    assert (failed.ok, failed.attempts, failed.exit_code) == (False, 2, 1)


def test_plain_runner_substitutes_pfs_paths(tmp_path: Path) -> None:
    ctx = make_ctx(
        tmp_path,
        cmd=("cp", "/pfs/in/a.txt", "/pfs/out/copy.txt"),
        working_dir="/pfs/in/sub",
    )
    result = LocalRunner(sandbox=False).run_datum(ctx)
    assert result.ok, result.summary()
    assert (ctx.output_dir / "copy.txt").read_text() == "hello\n"


def test_podman_limits_user_and_errors(busybox_image: str, tmp_path: Path) -> None:
    runner = PodmanRunner()
    # memory: holding 100 MB in a 32 MiB container gets it killed
    hog = make_ctx(tmp_path / "hog", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}")
    hog = DatumContext(
        hog.transform,
        hog.inputs,
        hog.output_dir,
        hog.log_dir,
        timeout=60,
        limits=ResourceLimits(cpu=0.5, memory=32 * 2**20),
    )
    result = runner.run_datum(hog)
    assert not result.ok and result.exit_code != 0 and not result.timed_out
    # user: a non-root transform can still write /pfs/out
    ctx = make_ctx(tmp_path / "user", "id -u > /pfs/out/uid", user="65534:65534")
    result = runner.run_datum(ctx)
    assert result.ok, result.summary()
    assert (ctx.output_dir / "uid").read_text() == "65534\n"
    assert (ctx.output_dir / "uid").stat().st_uid == 65534
    # a missing image is the runner's error, not the transform's
    ctx = make_ctx(tmp_path / "noimage", "true", image="pfsfs/does-not-exist")
    result = runner.run_datum(ctx)
    assert result.error is not None and result.error.startswith("podman failed")
    assert runner.image_id(IMAGE) and runner.image_id("pfsfs/does-not-exist") is None


def test_podman_command_line(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "true", env=(("SECRET", "s3cr3t"),), working_dir="/w")
    ctx = DatumContext(
        ctx.transform,
        ctx.inputs,
        ctx.output_dir,
        ctx.log_dir,
        limits=ResourceLimits(cpu=1.5, memory=512 * 2**20),
    )
    argv, env = PodmanRunner(podman="podman").command(ctx)
    assert argv[:3] == ["podman", "run", "--rm"]
    for arg in ("--network=none", "-i", "--cpus=1.5", "--memory=536870912b", "--workdir=/w"):
        assert arg in argv
    assert f"{ctx.inputs['in']}:/pfs/in:ro" in argv
    assert f"{ctx.output_dir}:/pfs/out:rw" in argv
    assert "s3cr3t" not in " ".join(argv) and env["SECRET"] == "s3cr3t"
    assert env["CONTAINERS_CONF"].endswith("pfsfs/pipeline/containers.conf")
    assert argv[-3:] == ["--entrypoint", '["sh"]', IMAGE]


def test_for_datum_lays_out_directories(tmp_path: Path) -> None:
    spec = parse_spec_dict(spec_dict(datum_timeout="2m", resource_limits={"memory": "1Gi"}))
    data = commit("data", {"/a/x": "1"})
    datum = compute_datums(spec.input, {data.key: data})[0]
    ctx = DatumContext.for_datum(spec, datum, tmp_path / "w", job_id="j1")
    assert ctx.inputs == {"data": tmp_path / "w" / "in" / "data"}
    assert ctx.inputs["data"].is_dir() and ctx.output_dir.is_dir() and ctx.log_dir.is_dir()
    assert (ctx.timeout, ctx.limits.memory, ctx.datum_id) == (120, 2**30, datum.id)
    assert ctx.environment(lambda n: f"/pfs/{n}", "/pfs/out")["PFS_JOB_ID"] == "j1"
    assert isinstance(make_runner("local"), LocalRunner)
    assert isinstance(make_runner("podman"), PodmanRunner)


# --- opens outside /pfs (strace) ----------------------------------------------------------------


def test_a_traced_run_reports_opens_outside_pfs(runner: Runner, tmp_path: Path) -> None:
    """Under strace the transform still gets its stdin and its exit code; the opens outside
    /pfs are reported (a host file that exists; a path that exists nowhere), not those of
    /pfs, relative to /pfs/out, or of the system."""
    ctx = make_ctx(
        tmp_path,
        "cat /pfs/in/a.txt > /pfs/out/a.txt",
        "cat /var/lib/dpkg/status > /dev/null 2>&1",
        "cat /data/pfsfs-missing/x.csv 2>/dev/null",
        "cat /etc/no-such-file 2>/dev/null",
        "exit 3",
        working_dir="/pfs/out",
    )
    result = runner.run_datum(replace(ctx, trace_outside=True))
    assert (result.exit_code, result.outside_trace) == (3, "ok"), result.summary()
    assert (ctx.output_dir / "a.txt").read_text() == "hello\n"
    assert sorted(result.outside) == ["/data/pfsfs-missing/x.csv", "/var/lib/dpkg/status"]
    assert result.outside_count == 2
    assert (ctx.log_dir / "opens.strace").exists()  # kept: it shows opens outside /pfs


def test_an_untraced_or_clean_run_reports_nothing_outside(runner: Runner, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "cat /pfs/in/a.txt > /pfs/out/a.txt")
    result = runner.run_datum(ctx)
    assert result.ok and (result.outside, result.outside_trace) == ((), "off")
    result = runner.run_datum(replace(ctx, log_dir=tmp_path / "logs2", trace_outside=True))
    assert result.ok and (result.outside, result.outside_trace) == ((), "ok")
    assert not (tmp_path / "logs2" / "opens.strace").exists()  # nothing to show: removed


def test_a_traced_run_times_out_and_is_killed(runner: Runner, tmp_path: Path) -> None:
    marker = f"4{uuid.uuid4().int % 10**6:06d}"
    ctx = make_ctx(tmp_path, f"sleep {marker} &", f"sleep {marker}", timeout=1.0)
    result = runner.run_datum(replace(ctx, trace_outside=True))
    assert result.timed_out and not result.ok
    time.sleep(0.5)
    assert _alive(f"sleep\0{marker}") == []


def test_podman_traced_missing_command_is_the_runners_error(
    busybox_image: str, tmp_path: Path
) -> None:
    ctx = make_ctx(tmp_path, cmd=("no-such-command",))
    result = PodmanRunner().run_datum(replace(ctx, trace_outside=True))
    assert result.error is not None and result.error.startswith("command not found"), result
