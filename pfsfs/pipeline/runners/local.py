"""The local runner: the transform as a host subprocess, sandboxed by bubblewrap when present.

With `bwrap` the transform sees only what it needs, nothing else of the host:
- its inputs read-only at `/pfs/<name>` and its output read-write at `/pfs/out`;
- a read-only system: `/usr`, `/bin`, `/sbin`, `/lib*` as present, and a minimal `/etc`:
  `passwd`, `group`, `hosts`, `hostname` and `nsswitch.conf` written for the run, plus a few
  harmless host files (ld.so cache, alternatives, time zone...; `resolv.conf` and the public
  certificates only with `network: true`). No shadow, no keys, no `/root` or `/home`, no
  `/var`, `/run`, `/opt` or `/srv`: neither the pfsfs home nor its store;
- fresh `/proc` and `/dev`, a private tmpfs `/tmp` (also `$HOME`); everything else read-only;
- private user, network (loopback only, unless `network: true`), PID, IPC and UTS namespaces,
  as uid/gid 65534 (nobody), or `transform.user` (a host user name, uid, or uid:gid).
The sandbox uid is mapped to the daemon's own uid (bwrap `--unshare-user`): the transform reads
its inputs and writes `/pfs/out` whatever their modes, and gains nothing on the host, since the
output directory is 0700 while it runs and set-id bits are cleared from its files afterwards
(on the host they belong to the daemon's uid).

Without `bwrap` (warned once): a plain subprocess; `/pfs/<name>` and `/pfs/out` in cmd, stdin,
working_dir and env values are replaced by the host directories, which `PFS_<NAME>` and
`PFS_OUT` also give. Neither enforces cpu/memory limits; the plain one ignores
`transform.user` (warned once). A timeout SIGKILLs the whole process group.

Opens outside `/pfs` (`ctx.trace_outside`, see `..trace`): the transform starts under the
host's strace, inside the sandbox (its log bound at `/.pfsfs-trace/opens.strace`, only failed
opens: nothing else of the host is there to succeed) or, unsandboxed, on the host (every open:
there the host is readable). strace is checked once per process; without a working one each
datum says `not traced: ...`.
"""

from __future__ import annotations

import glob
import grp
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from ...errors import InvalidInput, PfsError
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

NOBODY = 65534
"""The sandbox uid and gid when the spec names no `user`."""
MAX_ID = 2**32 - 2
"""The largest uid/gid a user namespace can map ((uid_t)-1 is reserved)."""
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Top-level entries of the host bound read-only (symlinks kept as symlinks) when present."""
ETC_ENTRIES = (
    "alternatives",
    "debian_version",
    "fonts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "mtab",
    "os-release",
    "protocols",
    "python3*",
    "services",
    "ssl/openssl.cnf",
    "timezone",
)
"""Host files of `/etc` that programs read and that hold no secret (globs allowed)."""
ETC_NETWORK_ENTRIES = ("resolv.conf", "host.conf", "gai.conf", "ssl/certs")
"""Added with `network: true`: name resolution and the public CA certificates."""
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
HOSTNAME = "pfsfs"
NSSWITCH = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"

_probes: dict[tuple[str, ...], str] = {}
_probe_lock = threading.Lock()
_PFS_PATH = re.compile(r"/pfs/([A-Za-z0-9][A-Za-z0-9_-]*)(?![A-Za-z0-9_-])")
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


@dataclass(frozen=True)
class SandboxUser:
    """Who the transform is inside the sandbox."""

    uid: int
    gid: int
    name: str
    group: str


def sandbox_user(spec_user: str | None) -> SandboxUser:
    """The sandbox identity for `transform.user`: nobody by default; a name is looked up in the
    host's passwd (the local runner's "image" is the host system), a bare uid takes the group
    of its host passwd entry if any, else the gid of the same number."""
    if spec_user is None:
        return SandboxUser(NOBODY, NOBODY, "nobody", "nogroup")
    user_text, _, group_text = spec_user.partition(":")
    uid, name, default_gid = _lookup_user(user_text)
    gid, group = _lookup_group(group_text) if group_text else _group_of(default_gid)
    return SandboxUser(uid, gid, name, group)


def _lookup_user(text: str) -> tuple[int, str, int]:
    if text.isdigit():
        uid = _check_id(int(text), "uid")
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return uid, "root" if uid == 0 else "pfsfs", uid
        return uid, entry.pw_name, entry.pw_gid
    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise InvalidInput(
            f"transform.user: no user {text!r} on this host (the local runner takes a host "
            "user name, a uid or uid:gid)"
        ) from None
    return entry.pw_uid, entry.pw_name, entry.pw_gid


def _lookup_group(text: str) -> tuple[int, str]:
    if text.isdigit():
        return _group_of(_check_id(int(text), "gid"))
    try:
        return grp.getgrnam(text).gr_gid, text
    except KeyError:
        raise InvalidInput(f"transform.user: no group {text!r} on this host") from None


def _group_of(gid: int) -> tuple[int, str]:
    try:
        return gid, grp.getgrgid(gid).gr_name
    except KeyError:
        return gid, "root" if gid == 0 else "pfsfs"


def _check_id(value: int, what: str) -> int:
    if value > MAX_ID:
        raise InvalidInput(f"transform.user: {what} {value} is over {MAX_ID}")
    return value


def etc_files(user: SandboxUser) -> dict[str, bytes]:
    """The `/etc` files written for one run: only root, nobody and the sandbox user exist, and
    the sandbox user's home is the private `/tmp`."""
    users = {
        0: "root:x:0:0:root:/root:/usr/sbin/nologin",
        NOBODY: "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    }
    users[user.uid] = f"{user.name}:x:{user.uid}:{user.gid}:{user.name}:/tmp:/bin/sh"
    groups = {0: "root:x:0:", NOBODY: "nogroup:x:65534:", user.gid: f"{user.group}:x:{user.gid}:"}
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost\n"
    return {
        "/etc/passwd": "".join(line + "\n" for _, line in sorted(users.items())).encode(),
        "/etc/group": "".join(line + "\n" for _, line in sorted(groups.items())).encode(),
        "/etc/hosts": hosts.encode(),
        "/etc/hostname": f"{HOSTNAME}\n".encode(),
        "/etc/nsswitch.conf": NSSWITCH,
    }


def _bind_entry(path: str) -> list[str]:
    """Arguments that show host `path` read-only at the same place (a symlink as a symlink)."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.exists(path):
        return ["--ro-bind", path, path]
    return []


def system_args(network: bool) -> list[str]:
    """The read-only system: the host's `SYSTEM_DIRS` and the allowed entries of `/etc`."""
    args: list[str] = []
    for entry in SYSTEM_DIRS:
        args += _bind_entry("/" + entry)
    patterns = ETC_ENTRIES + (ETC_NETWORK_ENTRIES if network else ())
    for pattern in patterns:
        for path in sorted(glob.glob("/etc/" + pattern)):
            args += _bind_entry(path)
    return args


def _data_fds(files: dict[str, bytes]) -> tuple[list[str], list[int]]:
    """`--ro-bind-data` arguments and the pipe fds that carry `files` to bwrap."""
    args: list[str] = []
    fds: list[int] = []
    try:
        for dest, data in files.items():
            read_end, write_end = os.pipe()
            fds.append(read_end)
            try:
                os.write(write_end, data)  # a few hundred bytes: far below the pipe buffer
            finally:
                os.close(write_end)
            args += ["--ro-bind-data", str(read_end), dest]
    except BaseException:
        _close(fds)
        raise
    return args, fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def clear_set_id_bits(root: Path) -> None:
    """Clear setuid/setgid on every regular file below `root`: the transform made them as
    nobody, but on the host they are owned by the daemon's uid."""
    for parent, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(parent, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


@dataclass(frozen=True)
class Command:
    """How to start one run: argv, environment, cwd, and fds the child must inherit."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    pass_fds: tuple[int, ...] = ()


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
        self._system: dict[bool, list[str]] = {}
        self._options: list[str] | None = None
        self._traceable: str | None = None
        """"" once strace is known to work here, else why not (None: not checked yet)."""

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def check(self) -> None:
        """Nothing to check: a plain subprocess always works."""

    # --- bubblewrap ---------------------------------------------------------------------------

    def _namespace_options(self) -> list[str]:
        """Namespaces and hardening; `--disable-userns` (no nested user namespaces) where this
        bwrap has it (0.8+)."""
        if self._options is None:
            assert self.bwrap is not None
            options = ["--die-with-parent", "--new-session", "--unshare-user", "--unshare-pid"]
            options += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
            options += ["--hostname", HOSTNAME]
            helped = subprocess.run([self.bwrap, "--help"], capture_output=True, check=False)
            if b"--disable-userns" in helped.stdout:
                options.append("--disable-userns")
            self._options = options
        return self._options

    def _bwrap_command(self, ctx: DatumContext, strace: str | None = None) -> Command:
        assert self.bwrap is not None
        t = ctx.transform
        user = sandbox_user(t.user)
        argv = [self.bwrap, *self._namespace_options()]
        argv += ["--uid", str(user.uid), "--gid", str(user.gid)]
        if not t.network:
            argv.append("--unshare-net")
        if t.network not in self._system:
            self._system[t.network] = system_args(t.network)
        argv += self._system[t.network]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        argv += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp", "--dir", "/pfs"]
        for name, host in sorted(ctx.inputs.items()):
            argv += ["--ro-bind", check_host_path(host), f"/pfs/{name}"]
        argv += ["--bind", check_host_path(ctx.output_dir), "/pfs/out"]
        sandbox_env = {"PATH": SANDBOX_PATH, "HOME": "/tmp", "TMPDIR": "/tmp"}
        sandbox_env.update(USER=user.name, LOGNAME=user.name)
        sandbox_env.update(ctx.environment(lambda n: f"/pfs/{n}", "/pfs/out"))
        tracer: list[str] = []
        if strace is not None:
            inside = f"{trace.TRACE_DIR}/{trace.TRACE_LOG}"
            argv += ["--bind", check_host_path(new_trace_log(ctx)), inside]
            tracer = [strace, *trace.strace_options(inside, failed_only=True)]
        data_args, fds = _data_fds(etc_files(user))  # last: nothing may fail with fds open
        argv += data_args
        argv += ["--remount-ro", "/", "--chdir", t.working_dir or "/pfs/out", "--"]
        return Command([*argv, *tracer, *t.cmd], host_env(**sandbox_env), None, tuple(fds))

    def _run_sandboxed(self, ctx: DatumContext, stdin: bytes | None) -> DatumResult:
        strace, status = self._tracer(ctx)
        try:
            cmd = self._bwrap_command(ctx, strace)
        except InvalidInput as exc:  # it never ran: nothing was traced
            return replace(_not_started(ctx, str(exc)), outside_trace=trace.OFF)
        try:
            # The sandbox uid is the daemon's on the host: no other host user may reach what it
            # writes while it runs.
            os.chmod(ctx.output_dir, 0o700)
            result = run_process(
                cmd.argv, ctx, self._procs, env=cmd.env, stdin=stdin, pass_fds=cmd.pass_fds
            )
        finally:
            _close(list(cmd.pass_fds))
        clear_set_id_bits(ctx.output_dir)
        cwd = ctx.transform.working_dir or "/pfs/out"
        return with_outside(result, ctx, status, cwd=cwd, sandboxed=True)

    # --- plain subprocess ---------------------------------------------------------------------

    def _plain_command(self, ctx: DatumContext, strace: str | None = None) -> Command:
        _warn_once(
            "plain",
            "local runner without bubblewrap (bwrap): transforms run unsandboxed "
            "(they can write their inputs and use the network)",
        )
        t = ctx.transform
        if t.user is not None:
            _warn_once("user", "the local runner without bubblewrap ignores transform.user")
        mounts = _host_mounts(ctx)
        env = ctx.environment(lambda n: mounts[n], mounts["out"])
        env = {k: _to_host(mounts, v) for k, v in env.items()}
        cwd = _to_host(mounts, t.working_dir) if t.working_dir else mounts["out"]
        argv = [_to_host(mounts, a) for a in t.cmd]
        if strace is not None:
            argv = [
                strace,
                *trace.strace_options(str(new_trace_log(ctx)), failed_only=False),
                *argv,
            ]
        return Command(argv, host_env(**env), cwd)

    # --- the Runner protocol ----------------------------------------------------------------

    def run_datum(self, ctx: DatumContext) -> DatumResult:
        if ctx.limits.cpu is not None or ctx.limits.memory is not None:
            _warn_once("limits", "the local runner does not enforce resource_limits")
        stdin = stdin_bytes(ctx.transform)
        if self.bwrap is not None:
            return self._run_sandboxed(ctx, stdin)
        if stdin is not None:
            stdin = _to_host(_host_mounts(ctx), stdin.decode()).encode()
        strace, status = self._tracer(ctx)
        cmd = self._plain_command(ctx, strace)
        result = run_process(cmd.argv, ctx, self._procs, env=cmd.env, cwd=cmd.cwd, stdin=stdin)
        host_dirs = {host: f"/pfs/{name}" for name, host in _host_mounts(ctx).items()}
        return with_outside(
            result, ctx, status, cwd=cmd.cwd or "/", sandboxed=False, host_dirs=host_dirs
        )

    # --- tracing opens outside /pfs -----------------------------------------------------------

    def _tracer(self, ctx: DatumContext) -> tuple[str | None, str]:
        """The strace to start `ctx`'s transform under (None: none) and the trace status."""
        if not ctx.trace_outside:
            return None, trace.OFF
        strace = trace.find_strace()
        if strace is None:
            return None, trace.not_traced("strace is not installed (apt-get install strace)")
        strace = os.path.realpath(strace)
        if self.bwrap is not None and not strace.startswith("/usr/"):
            return None, trace.not_traced(f"{strace} is not below /usr, so not in the sandbox")
        if self._traceable is None:
            self._traceable = self._probe(strace)
        why = self._traceable
        return (None, trace.not_traced(why)) if why else (strace, trace.OK)

    def _probe(self, strace: str) -> str:
        """Whether strace can trace a process in this runner's sandbox ("" if so): once per
        process and sandbox kind (ptrace or seccomp may be forbidden here)."""
        check = [strace, *trace.strace_options("/dev/null", failed_only=True), "true"]
        if self.bwrap is not None:
            system = self._system.get(False) or system_args(False)
            check = [self.bwrap, *self._namespace_options(), "--unshare-net", *system]
            check += ["--proc", "/proc", "--dev", "/dev", "--", strace]
            check += [*trace.strace_options("/dev/null", failed_only=True), "true"]
        key = tuple(check)
        with _probe_lock:
            if key not in _probes:
                _probes[key] = trace.probe(check, env=host_env())
                if _probes[key]:
                    log.warning("reads outside /pfs are not traced: %s", _probes[key])
            return _probes[key]

    def kill(self, ctx: DatumContext) -> None:
        ctx.cancel.set()
        proc = self._procs.get(ctx.run_name)
        if proc is not None:
            kill_group(proc)


def _not_started(ctx: DatumContext, error: str) -> DatumResult:
    logs = ctx.log_dir
    return DatumResult(None, 0.0, False, logs / "stdout.log", logs / "stderr.log", error)


def _host_mounts(ctx: DatumContext) -> dict[str, str]:
    mounts = {name: str(Path(p).resolve()) for name, p in ctx.inputs.items()}
    mounts["out"] = str(Path(ctx.output_dir).resolve())
    return mounts


def _to_host(mounts: dict[str, str], text: str) -> str:
    """Replace `/pfs/<name>` by the host directory of that input (unsandboxed runs)."""
    return _PFS_PATH.sub(lambda m: mounts.get(m.group(1), m.group(0)), text)
