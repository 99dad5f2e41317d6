"""The podman runner: one `podman run --rm --network=none` container per datum.

Inputs are bind-mounted read-only at `/pfs/<name>`, the output read-write at `/pfs/out`.
Podman uses the `containers.conf` shipped next to this package (runc, cgroupfs, file events
logger, the two ulimits this kind of host needs) through `CONTAINERS_CONF`. Images are local
(`--pull=never`); `scripts/build-images.sh` builds `pfsfs/busybox` and `pfsfs/python`.
A timed-out or killed datum's container is removed with `podman rm -f -t 0 <name>`.

Opens outside `/pfs` (`ctx.trace_outside`, see `..trace`): the host's strace, its libraries
and its dynamic loader are bind-mounted read-only at `/.pfsfs-trace` and the entrypoint becomes
`/.pfsfs-trace/ld.so --library-path /.pfsfs-trace/lib /.pfsfs-trace/strace ... -- <cmd>`: the
host loader runs the host strace whatever libc the image has (or none), and strace starts the
transform with the image's own. Its log (failed opens only: what succeeds in a container is
the image's) is bound at `/.pfsfs-trace/opens.strace`. Tracing a child needs no capability,
only ptrace and seccomp, which podman's default seccomp profile allows; that is checked once
per process and image, and a datum says `not traced: ...` if it fails.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ...errors import PfsError
from .. import trace
from .base import (
    DatumContext,
    DatumResult,
    ProcessTable,
    check_host_path,
    host_env,
    kill_group,
    new_trace_log,
    run_process,
    stdin_bytes,
    with_outside,
)

log = logging.getLogger(__name__)

CONTAINERS_CONF = Path(__file__).resolve().parent.parent / "containers.conf"
_probes: dict[tuple[str, str], str] = {}
_probe_lock = threading.Lock()


@dataclass(frozen=True)
class HostTracer:
    """The host's strace as the container sees it: the `-v` arguments and the argv prefix."""

    volumes: tuple[str, ...]
    launcher: tuple[str, ...]


def host_tracer() -> HostTracer | str:
    """The bind mounts that bring the host's strace into a container, or why there are none."""
    found = trace.find_strace()
    if found is None:
        return "strace is not installed (apt-get install strace)"
    strace = os.path.realpath(found)
    inside = trace.TRACE_DIR
    volumes = [f"{check_host_path(Path(strace))}:{inside}/strace:ro"]
    try:
        proc = subprocess.run(["ldd", strace], capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"cannot list the libraries of {strace}: {exc}"
    loader = None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            lib = parts[parts.index("=>") + 1]
            if lib.startswith("/"):
                name = os.path.basename(lib)
                volumes.append(f"{check_host_path(Path(lib))}:{inside}/lib/{name}:ro")
        elif parts and parts[0].startswith("/"):
            loader = parts[0]
    if loader is None:  # a static strace
        return HostTracer(tuple(volumes), (f"{inside}/strace",))
    volumes.append(f"{check_host_path(Path(loader))}:{inside}/ld.so:ro")
    launcher = (f"{inside}/ld.so", "--library-path", f"{inside}/lib", f"{inside}/strace")
    return HostTracer(tuple(volumes), launcher)


_STRACE_START = re.compile(r"^\S*strace: (Can't stat .*|exec: .*)$")
"""strace's last line when it could not start the command (its argv[0] is a path here)."""
PODMAN_ERRORS = {125: "podman failed", 126: "command cannot be invoked", 127: "command not found"}


class PodmanRunner:
    """Runs each datum in a fresh podman container."""

    kind = "podman"

    def __init__(
        self,
        podman: str | None = None,
        containers_conf: Path | None = CONTAINERS_CONF,
        ulimits: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.podman = podman or shutil.which("podman") or "podman"
        self.containers_conf = containers_conf
        self.ulimits = tuple(ulimits)
        self.extra_args = tuple(extra_args)
        self._procs = ProcessTable()
        self._image_ids: dict[str, str] = {}
        self._tracer: HostTracer | str | None = None

    # --- helpers the wiring may use ---------------------------------------------------------

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of the podman client itself."""
        env = host_env(**extra)
        if self.containers_conf is not None:
            env["CONTAINERS_CONF"] = str(self.containers_conf)
        return env

    def _podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.podman, *args],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self) -> None:
        """Raise PfsError if podman cannot be run here."""
        if shutil.which(self.podman) is None:
            raise PfsError("podman is not installed (scripts/build-images.sh deps installs it)")

    def image_id(self, image: str) -> str | None:
        """The local image id of `image` (for datum hashes), or None if there is no such image."""
        if image not in self._image_ids:
            proc = self._podman("image", "inspect", "--format", "{{.Id}}", image)
            if proc.returncode != 0:
                return None
            self._image_ids[image] = proc.stdout.strip()
        return self._image_ids[image]

    # --- the Runner protocol ----------------------------------------------------------------

    def command(
        self, ctx: DatumContext, tracer: HostTracer | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The `podman run` argv and the client environment (variable values are passed
        by name through the client's environment, so they never show in `ps`); with
        `tracer`, the transform starts under strace (its log: `ctx.log_dir/opens.strace`)."""
        t = ctx.transform
        if t.image is None:
            raise ValueError("the podman runner needs transform.image")
        argv = [self.podman, "run", "--rm", "--name", ctx.run_name, "--pull=never"]
        argv += ["--log-driver=none", "--security-opt=no-new-privileges"]
        argv += [f"--label=io.pfsfs.job={ctx.job_id}", f"--label=io.pfsfs.datum={ctx.datum_id}"]
        if not t.network:
            argv.append("--network=none")
        if t.stdin:
            argv.append("-i")
        if ctx.limits.cpu is not None:
            argv.append(f"--cpus={ctx.limits.cpu:g}")
        if ctx.limits.memory is not None:
            argv += [f"--memory={ctx.limits.memory}b", f"--memory-swap={ctx.limits.memory}b"]
        argv += [f"--ulimit={u}" for u in self.ulimits]
        if t.user is not None:
            argv.append(f"--user={t.user}")
        if t.working_dir is not None:
            argv.append(f"--workdir={t.working_dir}")
        for name, host in sorted(ctx.inputs.items()):
            argv += ["-v", f"{check_host_path(host)}:/pfs/{name}:ro"]
        argv += ["-v", f"{check_host_path(ctx.output_dir)}:/pfs/out:rw"]
        entrypoint = list(t.cmd)
        if tracer is not None:
            inside = f"{trace.TRACE_DIR}/{trace.TRACE_LOG}"
            for volume in tracer.volumes:
                argv += ["-v", volume]
            argv += ["-v", f"{check_host_path(new_trace_log(ctx, 0o666))}:{inside}:rw"]
            opts = trace.strace_options(inside, failed_only=True)
            entrypoint = [*tracer.launcher, *opts, *entrypoint]
        variables = ctx.environment(lambda name: f"/pfs/{name}", "/pfs/out")
        for key in sorted(variables):
            argv += ["-e", key]
        argv += [*self.extra_args, "--entrypoint", json.dumps(entrypoint), t.image]
        return argv, self.client_env(**variables)

    def _host_tracer(self, ctx: DatumContext) -> tuple[HostTracer | None, str]:
        """The tracer to start `ctx`'s transform under (None: none) and the trace status."""
        if not ctx.trace_outside:
            return None, trace.OFF
        if self._tracer is None:
            self._tracer = host_tracer()
        if isinstance(self._tracer, str):
            return None, trace.not_traced(self._tracer)
        why = self._probe(self._tracer, ctx.transform.image or "")
        return (None, trace.not_traced(why)) if why else (self._tracer, trace.OK)

    def _probe(self, tracer: HostTracer, image: str) -> str:
        """Whether strace can trace in a container of `image` ("" if so): strace tracing
        `strace -V`, which needs nothing of the image. Once per process and image."""
        key = (self.podman, image)
        with _probe_lock:
            if key not in _probes:
                argv = [self.podman, "run", "--rm", "--pull=never", "--log-driver=none"]
                argv += ["--security-opt=no-new-privileges", "--network=none"]
                for volume in tracer.volumes:
                    argv += ["-v", volume]
                check = [*tracer.launcher, *trace.strace_options("/dev/null", failed_only=True)]
                check += [*tracer.launcher, "-V"]
                argv += [*self.extra_args, "--entrypoint", json.dumps(check), image]
                _probes[key] = trace.probe(argv, env=self.client_env())
                if _probes[key]:
                    log.warning("reads outside /pfs are not traced: %s", _probes[key])
            return _probes[key]

    def run_datum(self, ctx: DatumContext) -> DatumResult:
        tracer, status = self._host_tracer(ctx)
        argv, env = self.command(ctx, tracer)
        if ctx.transform.user is not None:
            os.chmod(ctx.output_dir, 0o777)  # the container user must be able to write
        result = run_process(
            argv,
            ctx,
            self._procs,
            env=env,
            stdin=stdin_bytes(ctx.transform),
            # conmon leaves an `oom` marker file in its working directory when a container is
            # OOM-killed: keep it in the datum's log directory, not wherever we were started.
            cwd=ctx.log_dir,
            on_timeout=lambda proc: self._remove(ctx.run_name),
        )
        if tracer is not None and result.exit_code == 1 and not result.timed_out:
            why = _strace_start_failure(result)
            if why:  # strace could not start the command: what podman says without it
                return replace(result, error=f"command not found: {why}")
        if result.error is None and result.exit_code in PODMAN_ERRORS and not result.timed_out:
            last = result.stderr()[-300:].decode(errors="replace").strip().splitlines()
            why = last[-1] if last else ""
            if result.exit_code == 125 or "OCI runtime" in why or "executable file" in why:
                return replace(result, error=f"{PODMAN_ERRORS[result.exit_code]}: {why}")
        cwd = ctx.transform.working_dir or "/"
        return with_outside(result, ctx, status, cwd=cwd, sandboxed=True)

    def kill(self, ctx: DatumContext) -> None:
        ctx.cancel.set()
        self._remove(ctx.run_name)
        proc = self._procs.get(ctx.run_name)
        if proc is not None:
            kill_group(proc)

    def _remove(self, name: str) -> None:
        proc = self._podman("rm", "-f", "-t", "0", "--ignore", name)
        if proc.returncode != 0:
            log.warning("podman rm -f %s failed: %s", name, proc.stderr.strip())


def _strace_start_failure(result: DatumResult) -> str:
    """Why strace could not start the transform ("" if it did): its last stderr line."""
    lines = result.stderr()[-300:].decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    m = _STRACE_START.match(last)
    return m.group(1) if m else ""
