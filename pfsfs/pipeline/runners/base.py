"""What every transform runner shares: the per-datum context, the result, the protocol, and
the subprocess loop (log files, stdin, timeout, kill).

The caller lays out host directories (one per input name, one for the output, one for logs),
materialises the datum's files into the input directories, and calls `run_datum`. A runner
mounts them at `/pfs/<name>` (read-only) and `/pfs/out`, runs the transform, and reports.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from .. import trace
from ..datums import Datum
from ..spec import PipelineSpec, ResourceLimits, Transform, input_env_key

log = logging.getLogger(__name__)

HOST_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
"""The only host variables a transform (or the podman client) inherits: no credentials leak."""


def _run_name() -> str:
    return "pfsfs-" + uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class DatumContext:
    """Everything a runner needs to run one datum."""

    transform: Transform
    inputs: Mapping[str, Path]
    """Input name -> host directory, mounted read-only at `/pfs/<name>`."""
    output_dir: Path
    """Host directory mounted read-write at `/pfs/out`."""
    log_dir: Path
    """Where `stdout.log` and `stderr.log` go."""
    timeout: float | None = None
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra variables, applied after `transform.env`."""
    datum_id: str = ""
    job_id: str = ""
    run_name: str = field(default_factory=_run_name)
    """Unique per run: the container name for podman."""
    cancel: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    """Set by `Runner.kill`: stop now and start no further attempt."""
    trace_outside: bool = False
    """Trace the transform's opens outside `/pfs` (see `trace`), if the runner can."""

    @classmethod
    def for_datum(
        cls,
        spec: PipelineSpec,
        datum: Datum,
        workdir: Path,
        *,
        job_id: str = "",
        env: Mapping[str, str] | None = None,
    ) -> DatumContext:
        """Create `workdir/in/<name>` (one per input of the datum), `workdir/out` and
        `workdir/logs`, and a context with the spec's transform, timeout and limits. The
        caller then writes each `(name, file)` of `datum.files()` to
        `ctx.inputs[name] / file.path.lstrip("/")`."""
        inputs = {di.name: workdir / "in" / di.name for di in datum.inputs}
        for d in (*inputs.values(), workdir / "out", workdir / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        return cls(
            transform=spec.transform,
            inputs=inputs,
            output_dir=workdir / "out",
            log_dir=workdir / "logs",
            timeout=spec.datum_timeout,
            limits=spec.resource_limits,
            env=dict(env or {}),
            datum_id=datum.id,
            job_id=job_id,
        )

    def environment(self, input_path: Callable[[str], str], output_path: str) -> dict[str, str]:
        """The transform's variables: `transform.env`, then `env`, then the `PFS_*` ones
        (`PFS_<NAME>`, `PFS_OUT`, `PFS_DATUM_ID`, `PFS_JOB_ID`), which cannot be overridden."""
        out = dict(self.transform.env)
        out.update(self.env)
        for name in self.inputs:
            out[input_env_key(name)] = input_path(name)
        out["PFS_OUT"] = output_path
        out["PFS_DATUM_ID"] = self.datum_id
        out["PFS_JOB_ID"] = self.job_id
        return out


@dataclass(frozen=True)
class DatumResult:
    """How one datum run ended."""

    exit_code: int | None
    """The transform's exit status; None if it never started (see `error`)."""
    duration: float
    timed_out: bool
    stdout_path: Path
    stderr_path: Path
    error: str | None = None
    """Why the runner itself failed (no podman, image missing...), else None."""
    attempts: int = 1
    outside: tuple[str, ...] = ()
    """Paths outside `/pfs` the transform opened (see `trace.outside_opens`), if traced."""
    outside_count: int = 0
    """How many distinct ones (`outside` keeps the first `trace.MAX_OUTSIDE`)."""
    outside_trace: str = ""
    """`ok` (traced), `off` (not asked), `not traced: why`, or "" (this runner cannot)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def stdout(self) -> bytes:
        return _read(self.stdout_path)

    def stderr(self) -> bytes:
        return _read(self.stderr_path)

    def summary(self, tail: int = 400) -> str:
        """One line for logs and job status."""
        if self.ok:
            return f"ok in {self.duration:.2f}s"
        if self.error:
            return self.error
        what = "timed out" if self.timed_out else f"exit code {self.exit_code}"
        last = self.stderr()[-tail:].decode(errors="replace").strip().replace("\n", " | ")
        return f"{what} after {self.duration:.2f}s" + (f": {last}" if last else "")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


class Runner(Protocol):
    """Runs one datum of a transform. Implementations: podman, local (bubblewrap); a
    Kubernetes Job runner fits the same shape."""

    kind: str

    def check(self) -> None:
        """Raise PfsError if this runner cannot work on this host."""
        ...

    def run_datum(self, ctx: DatumContext) -> DatumResult:
        """Run the transform for one datum; blocks until it ends or times out."""
        ...

    def kill(self, ctx: DatumContext) -> None:
        """Stop the run of `ctx` (from another thread) and prevent further attempts."""
        ...


def host_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in HOST_ENV_PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    env.update(extra)
    return env


def stdin_bytes(transform: Transform) -> bytes | None:
    return ("\n".join(transform.stdin) + "\n").encode() if transform.stdin else None


def check_host_path(path: Path) -> str:
    """An absolute host path usable in mount arguments."""
    text = str(Path(path).resolve())
    if re.search(r"[:,\n]", text):
        raise ValueError(f"host path {text!r} contains ':' ',' or a newline")
    return text


class ProcessTable:
    """The live processes of a runner, by run name, so `kill` can reach them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def add(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs[name] = proc

    def pop(self, name: str) -> subprocess.Popen[bytes] | None:
        with self._lock:
            return self._procs.pop(name, None)

    def get(self, name: str) -> subprocess.Popen[bytes] | None:
        with self._lock:
            return self._procs.get(name)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of `proc` (it was started in a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.kill()


def run_process(
    argv: list[str],
    ctx: DatumContext,
    table: ProcessTable,
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    stdin: bytes | None = None,
    on_timeout: Callable[[subprocess.Popen[bytes]], None] = kill_group,
    grace: float = 30.0,
    pass_fds: Collection[int] = (),
) -> DatumResult:
    """Run `argv` in a new session with output to `ctx.log_dir`; on timeout call `on_timeout`
    and then, if the process still lives after `grace` seconds, kill its group. `pass_fds`
    stay open in the child (the caller closes them)."""
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = ctx.log_dir / "stdout.log", ctx.log_dir / "stderr.log"
    start = time.monotonic()

    def result(code: int | None, timed_out: bool = False, error: str | None = None) -> DatumResult:
        return DatumResult(code, time.monotonic() - start, timed_out, out_path, err_path, error)

    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        if ctx.cancel.is_set():
            return result(None, error="cancelled")
        log.debug("run %s: %s", ctx.run_name, argv)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as e:
            return result(None, error=f"cannot start {argv[0]}: {e.strerror or e}")
        table.add(ctx.run_name, proc)
        timed_out = False
        try:
            try:
                proc.communicate(stdin, timeout=ctx.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                log.info("run %s: timed out after %ss, killing", ctx.run_name, ctx.timeout)
                on_timeout(proc)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
                    proc.wait()
        finally:
            table.pop(ctx.run_name)
            if proc.poll() is None:  # an exception (KeyboardInterrupt...) on the way out
                kill_group(proc)
                proc.wait()
    if ctx.cancel.is_set():
        return result(proc.returncode, timed_out, error="cancelled")
    return result(proc.returncode, timed_out)


def new_trace_log(ctx: DatumContext, mode: int = 0o600) -> Path:
    """An empty tracer log (`trace.TRACE_LOG`) in the datum's log directory, for the runner
    to bind into its sandbox or hand to strace."""
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.log_dir / trace.TRACE_LOG
    path.write_bytes(b"")
    os.chmod(path, mode)
    return path


def with_outside(
    result: DatumResult,
    ctx: DatumContext,
    status: str,
    *,
    cwd: str,
    sandboxed: bool,
    host_dirs: Mapping[str, str] | None = None,
) -> DatumResult:
    """`result` with the opens outside /pfs that its tracer log shows (`status`: how the
    run was traced). The log is kept only if it shows some, to see those calls in full."""
    if status != trace.OK or result.exit_code is None:
        return replace(result, outside_trace=status if status != trace.OK else trace.OFF)
    log_path = ctx.log_dir / trace.TRACE_LOG
    paths, count = trace.outside_opens(log_path, cwd=cwd, sandboxed=sandboxed, host_dirs=host_dirs)
    if not count:
        log_path.unlink(missing_ok=True)
    return replace(result, outside=tuple(paths), outside_count=count, outside_trace=trace.OK)
