"""Traced reads: which input files a transform actually opened.

The engine materialises every datum's inputs into host directories that the runner bind-mounts
at ``/pfs/<name>`` (bubblewrap and podman alike). inotify watches are on inodes, not on mount
points, so an ``IN_OPEN`` watch on each of those host directories sees every open the
transform makes through its bind mount, whatever namespaces it runs in, and costs nothing for
anything else it does: no ptrace (strace stops the process at every traced syscall), no
LD_PRELOAD (static binaries and Go ignore it), no FUSE round trip per read, no root
(fanotify). What inotify cannot see: a failed open (a path that does not exist), and reads
of anything outside the watched input directories.

One ``Tracer`` per job: ``watch`` a datum's input directories after they are materialised and
before its transform starts, ``drain`` events while it runs (a kernel queue that overflows
marks the traces incomplete), ``finish`` the datum after it.

Opens outside ``/pfs`` (what inotify cannot see) are traced by the runner: it starts the
transform under ``strace -f --seccomp-bpf -e trace=open,openat,openat2,creat``, so only those
four system calls stop the traced processes (a seccomp filter lets every other call through
untouched), and ``outside_opens`` reads the log after the run. The local runner runs the host's
strace inside its bubblewrap sandbox (the sandbox has ``/usr``); the podman runner bind-mounts
the host's strace, its libraries and its dynamic loader at ``/.pfsfs-trace`` in the container
and starts it through that loader, so it works whatever the image's libc. A runner without a
working strace says so per datum (``not traced: ...``) and ``job inspect`` warns.

What counts as an open outside ``/pfs``: an open (any of the four calls, read or write) by the
transform or any process it starts, whose path, made absolute against the directory it was
relative to, is

- not below ``/pfs`` (the inputs and the output: inotify traces those),
- not below a system root: ``/usr /bin /sbin /lib* /etc /proc /sys /dev /run /tmp /var/tmp``
  (the image or the host system, and scratch space), nor ``/`` itself,
- and, in a sandbox (bubblewrap or a container), an open that *failed*: everything a
  sandbox offers besides ``/pfs`` is the image or the system, so a successful open there is
  part of what the image id already pins, while a failed one is a path the transform expected
  (``/home/me/data.csv``, ``/data/x``) that exists on some machine and not here. Without a
  sandbox (local runner, no bwrap) successful opens count as well: there they read the host.
- A failed open of a shared library name (``*.so``, ``*.so.N``) is the dynamic loader
  searching its path, not the transform: it does not count.

At most ``MAX_OUTSIDE`` distinct paths are kept per datum, in the order first opened.

strace costs a few milliseconds of CPU per datum (its start, and a stop at each open: a
trivial datum's cost doubles), so the engine traces a sample (``OUTSIDE_FIRST``,
``OUTSIDE_EVERY``): a hard-coded path is in the code every datum runs, so the first datums
show it, and once one does every further datum is traced to show them all. A path only some
datums open can be missed on the untraced ones; ``job inspect`` says how many were traced.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import posixpath
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

IN_OPEN = 0x00000020
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


OK, OFF, OVERFLOW = "ok", "off", "incomplete: the kernel's event queue overflowed"


class Tracer:
    """The files opened below the input directories of the datums of one job, each datum's
    set kept apart (by its key). One inotify instance serves the whole job: closing an
    instance waits for the kernel to retire its marks (milliseconds), removing a watch does
    not."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self._dirs: dict[int, tuple[str, str]] = {}
        self._wds: dict[str, list[int]] = {}
        self._read: dict[str, set[str]] = {}
        self._status: dict[str, str] = {}

    def watch(self, key: str, inputs: Mapping[str, Path]) -> None:
        """Watch every directory below each input of datum ``key`` (the trees are complete:
        nothing is added to an input while the transform runs, it is read-only)."""
        self._wds[key], self._read[key], self._status[key] = [], set(), OK
        for name, root in inputs.items():
            for parent, _dirs, _files in os.walk(root):
                rel = os.path.relpath(parent, root)
                shown = f"/pfs/{name}" + ("" if rel == "." else "/" + rel)
                wd = _lib().inotify_add_watch(self.fd, os.fsencode(parent), IN_OPEN | IN_ONLYDIR)
                if wd < 0:
                    err = ctypes.get_errno()
                    status = f"incomplete: cannot watch {shown}: {os.strerror(err)}"
                    if err == errno.ENOSPC:
                        status += " (raise fs.inotify.max_user_watches)"
                    self._status[key] = status
                    continue
                self._dirs[wd] = (key, shown)
                self._wds[key].append(wd)

    def drain(self) -> None:
        """Read every queued event (non-blocking)."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:  # events were lost: of any datum being traced
                for key in self._wds:
                    self._status[key] = OVERFLOW
            elif mask & IN_OPEN and name and not mask & IN_ISDIR and wd in self._dirs:
                key, shown = self._dirs[wd]
                self._read[key].add(f"{shown}/{os.fsdecode(name)}")

    def finish(self, key: str) -> tuple[list[str], str]:
        """Stop tracing datum ``key`` (its transform has exited, so every event of it is
        queued); its files read, sorted, and the trace status."""
        if self.fd < 0 or key not in self._wds:
            return [], OFF
        self.drain()
        for wd in self._wds.pop(key):
            self._dirs.pop(wd, None)
            _lib().inotify_rm_watch(self.fd, wd)
        return sorted(self._read.pop(key)), self._status.pop(key)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def unread_inputs(
    names: list[str], traces: list[tuple[list[str], str]], offered: Mapping[str, int]
) -> list[str]:
    """Warnings for a job: each input (with files offered) that no traced datum opened."""
    complete = [read for read, status in traces if status == OK]
    if not complete:
        return []
    opened = {p.split("/", 3)[2] for read in complete for p in read}
    return [
        f"input {name}: the transform read none of its files in {len(complete)} traced "
        f"datum{'s' if len(complete) != 1 else ''} ({offered[name]} offered); is it needed?"
        for name in names
        if offered.get(name) and name not in opened
    ]


# --- opens outside /pfs (strace) ----------------------------------------------------------------

TRACED_CALLS = "open,openat,openat2,creat"
SYSTEM_ROOTS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc", "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp",
)  # fmt: skip
"""Where an open is the image's or the system's, not a dependency on outside data."""
MAX_OUTSIDE = 50
"""Distinct paths outside /pfs kept per datum."""
OUTSIDE_FIRST = 8
OUTSIDE_EVERY = 100
"""The sample of a job's datums traced outside /pfs: the first ``OUTSIDE_FIRST``, then one in
``OUTSIDE_EVERY``, and every one after a datum that opened a path outside /pfs."""
SHOWN_PATHS = 3
"""Paths named per datum in a job warning."""
SHOWN_DATUMS = 5
"""Datums named in the job warnings (then one line for the rest)."""
TRACE_DIR = "/.pfsfs-trace"
"""Where a runner puts the tracer's log (and, in a container, the tracer) in the sandbox."""
TRACE_LOG = "opens.strace"
"""The tracer's log, in the datum's log directory on the host."""
NOT_TRACED = "not traced"

_LIBRARY = re.compile(r"\.so(\.[0-9]+)*$")
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_CALL = re.compile(r"^(open|openat|openat2|creat)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (open|openat|openat2|creat) resumed>(.*)$")
_DIRFD = re.compile(r"^(AT_FDCWD|-?\d+)(?:<((?:[^>\\]|\\.)*)>)?, ")


def strace_options(log_path: str, *, failed_only: bool) -> list[str]:
    """The strace arguments (after the binary) before the transform's argv: follow every
    process, stop only at opens (seccomp-bpf), no signals or exit lines, fd paths (``-y``,
    for relative opens), escapes in hex."""
    argv = ["-f", "--seccomp-bpf", "-qq", "-y", "-x", "-e", "signal=none"]
    argv += ["-e", f"trace={TRACED_CALLS}", "-o", log_path]
    if failed_only:
        argv.append("-Z")
    return [*argv, "--"]


def find_strace() -> str | None:
    """The strace to trace with: ``$PFSFS_STRACE`` (a path or a name) or ``strace`` on PATH."""
    return shutil.which(os.environ.get("PFSFS_STRACE") or "strace")


def probe(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Run a tracer check; "" if it worked, else why not (its last line of output)."""
    try:
        proc = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace check failed: {exc}"
    if proc.returncode == 0:
        return ""
    lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
    return f"strace does not work here: {lines[-1] if lines else f'exit code {proc.returncode}'}"


def not_traced(why: str) -> str:
    return f"{NOT_TRACED}: {why}"


def is_outside(path: str, *, failed: bool, sandboxed: bool) -> bool:
    """Whether an open of absolute, normalised ``path`` counts as outside (see the module
    docstring)."""
    if path == "/" or _below(path, "/pfs") or any(_below(path, r) for r in SYSTEM_ROOTS):
        return False
    if failed and _LIBRARY.search(path):
        return False
    return failed or not sandboxed


def _below(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def outside_opens(
    log_path: Path,
    *,
    cwd: str,
    sandboxed: bool,
    host_dirs: Mapping[str, str] | None = None,
) -> tuple[list[str], int]:
    """The paths outside /pfs that the strace log at ``log_path`` shows opened (the first
    ``MAX_OUTSIDE`` distinct ones, in order) and how many distinct ones there were. ``cwd``
    is the transform's working directory (for a relative open whose directory strace could
    not name); ``host_dirs`` maps host directories to the ``/pfs/<name>`` they stand for
    (unsandboxed runs, which see the host paths)."""
    seen: dict[str, None] = {}
    for path, failed in _opens(log_path, cwd):
        path = _to_pfs(path, host_dirs) if host_dirs else path
        if path not in seen and is_outside(path, failed=failed, sandboxed=sandboxed):
            seen[path] = None
    return list(seen)[:MAX_OUTSIDE], len(seen)


def _to_pfs(path: str, host_dirs: Mapping[str, str]) -> str:
    for host, shown in host_dirs.items():
        if _below(path, host):
            return shown + path[len(host) :]
    return path


def _opens(log_path: Path, cwd: str) -> Iterable[tuple[str, bool]]:
    """``(absolute path, failed)`` of each open in a strace log; an interrupted call
    (``<unfinished ...>``) is joined to its ``<... resumed>`` line."""
    pending: dict[str, str] = {}
    try:
        f = open(log_path, encoding="latin-1")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            m = _LINE.match(raw.rstrip("\n"))
            if m is None:
                continue
            pid, text = m.groups()
            if text.endswith("<unfinished ...>"):
                pending[pid] = text[: -len("<unfinished ...>")].rstrip()
                continue
            resumed = _RESUMED.match(text)
            if resumed is not None:
                text = pending.pop(pid, "") + resumed.group(2)
            call = _CALL.match(text)
            if call is None:
                continue
            parsed = _parse_call(call.group(1), call.group(2), cwd)
            if parsed is not None:
                yield parsed


def _parse_call(name: str, rest: str, cwd: str) -> tuple[str, bool] | None:
    base = cwd
    if name in ("openat", "openat2"):
        m = _DIRFD.match(rest)
        if m is None:
            return None
        if m.group(2) is not None:
            base = _unescape(m.group(2))
        elif m.group(1) != "AT_FDCWD":
            base = ""  # a directory strace could not name: only an absolute path is usable
        rest = rest[m.end() :]
    if not rest.startswith('"'):
        return None
    path, end = _quoted(rest)
    if path is None:
        return None
    if not path.startswith("/"):
        if not base.startswith("/"):
            return None
        path = base.rstrip("/") + "/" + path
    result = rest[end:].rsplit(") = ", 1)
    failed = len(result) == 2 and result[1].startswith("-1 ")
    return posixpath.normpath(path).replace("//", "/", 1), failed


def _quoted(text: str) -> tuple[str | None, int]:
    """The string of strace's quoted argument at the start of ``text`` and where it ends."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return _unescape(text[1:i]), i + 1
        i += 1
    return None, len(text)


def _unescape(text: str) -> str:
    """strace's C escapes (``\\x2f``, ``\\"``, ``\\n``, octal) back to the path's bytes."""
    if "\\" not in text:
        return text
    raw = text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    return os.fsdecode(raw)


def outside_warnings(
    kind: str, datums: Sequence[tuple[str, str, list[str], str, int]]
) -> list[str]:
    """Job warnings from the outside traces of the datums it ran: ``(datum id, desc,
    outside paths, status, distinct count)`` each. One line per datum that opened paths
    outside /pfs (the first ``SHOWN_DATUMS``, then one for the rest), and one for each
    reason the opens of some datums were not traced."""
    out = []
    flagged = [d for d in datums if d[2]]
    for datum_id, desc, paths, _status, count in flagged[:SHOWN_DATUMS]:
        shown = ", ".join(paths[:SHOWN_PATHS])
        more = f" (+{count - SHOWN_PATHS} more)" if count > SHOWN_PATHS else ""
        out.append(
            f"datum {datum_id[:12]} ({desc}) opened outside /pfs: {shown}{more}; "
            "not a declared input (pfsfs datum inspect)"
        )
    if len(flagged) > SHOWN_DATUMS:
        out.append(f"{len(flagged) - SHOWN_DATUMS} more datums opened paths outside /pfs")
    reasons: dict[str, int] = {}
    for _id, _desc, _paths, status, _count in datums:
        if status != OK:
            why = status.removeprefix(NOT_TRACED + ": ") if status else ""
            reasons[why] = reasons.get(why, 0) + 1
    for why, n in reasons.items():
        what = f"{n} of {len(datums)} datum{'s' if len(datums) != 1 else ''}"
        out.append(
            f"reads outside /pfs not traced for runner {kind} ({what})"
            + (f": {why}" if why else "")
        )
    return out
