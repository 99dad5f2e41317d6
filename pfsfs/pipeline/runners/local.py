"""The local runner: the transform as a host subprocess, sandboxed by bubblewrap when present.

With `bwrap`: the host's top-level directories are bound read-only, `/proc`, `/dev` and a tmpfs
`/tmp` are fresh, inputs are bound read-only at `/pfs/<name>` and the output read-write at
`/pfs/out`, and the network, PID, IPC and UTS namespaces are private (only a loopback device).
Without `bwrap` (warned once): a plain subprocess; `/pfs/<name>` and `/pfs/out` in cmd, stdin,
working_dir and env values are replaced by the host directories, which `PFS_<NAME>` and
`PFS_OUT` also give. Neither enforces cpu/memory limits or `transform.user` (warned once).
A timeout SIGKILLs the whole process group.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
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

FRESH_TOP_LEVEL = frozenset({"proc", "dev", "tmp", "pfs", "lost+found"})
_PFS_PATH = re.compile(r"/pfs/([A-Za-z0-9][A-Za-z0-9_-]*)(?![A-Za-z0-9_-])")
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


class LocalRunner:
    """Runs each datum as a subprocess of the daemon, in a bubblewrap sandbox if possible."""

    kind = "local"

    def __init__(self, sandbox: bool | None = None, bwrap: str | None = None) -> None:
        """`sandbox`: True requires bwrap, False never uses it, None uses it when installed."""
        found = bwrap or shutil.which("bwrap")
        if sandbox and not found:
            raise PfsError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        self.bwrap = found if sandbox is not False else None
        self._procs = ProcessTable()
        self._root_args: list[str] | None = None

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def check(self) -> None:
        """Nothing to check: a plain subprocess always works."""

    # --- bubblewrap ---------------------------------------------------------------------------

    def _host_root(self) -> list[str]:
        """Bind every top-level entry of `/` read-only (symlinks as symlinks), except those
        the sandbox makes fresh; `/` itself is bwrap's tmpfs, so `/pfs` can be created."""
        if self._root_args is None:
            args: list[str] = []
            for entry in sorted(os.listdir("/")):
                if entry in FRESH_TOP_LEVEL:
                    continue
                path = "/" + entry
                if os.path.islink(path):
                    args += ["--symlink", os.readlink(path), path]
                elif os.path.isdir(path) or os.path.isfile(path):
                    args += ["--ro-bind", path, path]
            self._root_args = args
        return self._root_args

    def _bwrap_command(self, ctx: DatumContext) -> tuple[list[str], dict[str, str], str | None]:
        assert self.bwrap is not None
        t = ctx.transform
        argv = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc"]
        argv += ["--unshare-uts", "--unshare-cgroup-try"]
        if not t.network:
            argv.append("--unshare-net")
        argv += self._host_root()
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/pfs"]
        for name, host in sorted(ctx.inputs.items()):
            argv += ["--ro-bind", check_host_path(host), f"/pfs/{name}"]
        argv += ["--bind", check_host_path(ctx.output_dir), "/pfs/out"]
        argv += ["--chdir", t.working_dir or "/pfs/out", "--", *t.cmd]
        env = host_env(TMPDIR="/tmp", **ctx.environment(lambda n: f"/pfs/{n}", "/pfs/out"))
        return argv, env, None

    # --- plain subprocess ---------------------------------------------------------------------

    def _plain_command(self, ctx: DatumContext) -> tuple[list[str], dict[str, str], str | None]:
        _warn_once(
            "plain",
            "local runner without bubblewrap (bwrap): transforms run unsandboxed "
            "(they can write their inputs and use the network)",
        )
        t = ctx.transform
        mounts = _host_mounts(ctx)
        env = ctx.environment(lambda n: mounts[n], mounts["out"])
        env = {k: _to_host(mounts, v) for k, v in env.items()}
        cwd = _to_host(mounts, t.working_dir) if t.working_dir else mounts["out"]
        return [_to_host(mounts, a) for a in t.cmd], host_env(**env), cwd

    # --- the Runner protocol ----------------------------------------------------------------

    def command(self, ctx: DatumContext) -> tuple[list[str], dict[str, str], str | None]:
        """argv, environment and cwd of the run."""
        if ctx.limits.cpu is not None or ctx.limits.memory is not None:
            _warn_once("limits", "the local runner does not enforce resource_limits")
        if ctx.transform.user is not None:
            _warn_once("user", "the local runner ignores transform.user")
        if self.bwrap is not None:
            return self._bwrap_command(ctx)
        return self._plain_command(ctx)

    def run_datum(self, ctx: DatumContext) -> DatumResult:
        argv, env, cwd = self.command(ctx)
        stdin = stdin_bytes(ctx.transform)
        if stdin is not None and self.bwrap is None:
            stdin = _to_host(_host_mounts(ctx), stdin.decode()).encode()
        return run_process(argv, ctx, self._procs, env=env, cwd=cwd, stdin=stdin)

    def kill(self, ctx: DatumContext) -> None:
        ctx.cancel.set()
        proc = self._procs.get(ctx.run_name)
        if proc is not None:
            kill_group(proc)


def _host_mounts(ctx: DatumContext) -> dict[str, str]:
    mounts = {name: str(Path(p).resolve()) for name, p in ctx.inputs.items()}
    mounts["out"] = str(Path(ctx.output_dir).resolve())
    return mounts


def _to_host(mounts: dict[str, str], text: str) -> str:
    """Replace `/pfs/<name>` by the host directory of that input (unsandboxed runs)."""
    return _PFS_PATH.sub(lambda m: mounts.get(m.group(1), m.group(0)), text)
