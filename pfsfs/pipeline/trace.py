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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Mapping
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
