"""The podman runner: one `podman run --rm --network=none` container per datum.

Inputs are bind-mounted read-only at `/pfs/<name>`, the output read-write at `/pfs/out`.
Podman uses the `containers.conf` shipped next to this package (runc, cgroupfs, file events
logger, the two ulimits this kind of host needs) through `CONTAINERS_CONF`. Images are local
(`--pull=never`); `scripts/build-images.sh` builds `pfsfs/busybox` and `pfsfs/python`.
A timed-out or killed datum's container is removed with `podman rm -f -t 0 <name>`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ...errors import PfsError
from .base import (
    DatumContext,
    DatumResult,
    ProcessTable,
    check_host_path,
    host_env,
    kill_group,
    run_process,
    stdin_bytes,
)

log = logging.getLogger(__name__)

CONTAINERS_CONF = Path(__file__).resolve().parent.parent / "containers.conf"
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

    def command(self, ctx: DatumContext) -> tuple[list[str], dict[str, str]]:
        """The `podman run` argv and the client environment (variable values are passed
        by name through the client's environment, so they never show in `ps`)."""
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
        variables = ctx.environment(lambda name: f"/pfs/{name}", "/pfs/out")
        for key in sorted(variables):
            argv += ["-e", key]
        argv += [*self.extra_args, "--entrypoint", json.dumps(list(t.cmd)), t.image]
        return argv, self.client_env(**variables)

    def run_datum(self, ctx: DatumContext) -> DatumResult:
        argv, env = self.command(ctx)
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
        if result.error is None and result.exit_code in PODMAN_ERRORS and not result.timed_out:
            last = result.stderr()[-300:].decode(errors="replace").strip().splitlines()
            why = last[-1] if last else ""
            if result.exit_code == 125 or "OCI runtime" in why or "executable file" in why:
                return replace(result, error=f"{PODMAN_ERRORS[result.exit_code]}: {why}")
        return result

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
