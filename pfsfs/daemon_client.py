"""The CLI side of the mount daemon's control socket (pure Python: no pyfuse3, no trio).

The daemon listens on ``<home>/daemon.sock`` (mode 0600; it also checks the peer's uid). One
request per connection: a JSON object on one line, answered by one JSON line with ``ok`` and
the result, or ``error: {type, message, paths}`` which becomes the matching ``PfsError`` here,
so the CLI prints one line and exits with that error's code.

``DaemonClient.ensure_running`` starts a daemon in the background (``python -P -m pfsfsd``
in ``/``: see ``pfsfs.launch``; logging to ``<home>/daemon.log``) when none answers, and waits
until it does; if it cannot start, the error says why (the tail of the log).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import errors
from .errors import DaemonError, PfsError
from .launch import CHILD_CWD, python_module_argv

SOCKET_NAME = "daemon.sock"
LOCK_NAME = "daemon.lock"
LOG_NAME = "daemon.log"
START_TIMEOUT = 30.0
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; longer paths go through /proc


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


@contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits in ``sun_path`` (via ``/proc/self/fd`` if long)."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dfd}/{path.name}"
    finally:
        os.close(dfd)


def error_from_reply(reply: dict[str, Any]) -> PfsError:
    err = reply.get("error") or {}
    cls = getattr(errors, str(err.get("type", "")), None)
    message = str(err.get("message") or "the daemon refused the request")
    if not (isinstance(cls, type) and issubclass(cls, PfsError)):
        cls = DaemonError
    if issubclass(cls, errors.Conflict):
        return cls(message, list(err.get("paths") or []))
    return cls(message)


def mount_path(path: str | os.PathLike[str]) -> str:
    """The absolute, symlink-free form of a mount point, without touching the mount itself
    (a stat of a dead mount fails; of a live one it costs a FUSE round trip)."""
    absolute = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(absolute)
    if not name:
        return absolute
    return os.path.join(os.path.realpath(parent), name)


class DaemonClient:
    """Requests to the daemon of one home."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with unix_address(socket_path(self.home)) as address:
                sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def request(self, op: str, *, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """Send one request; returns the reply's fields or raises the error it carries."""
        try:
            sock = self._connect(5.0)
        except OSError as exc:
            raise DaemonError(
                f"no pfsfs daemon is running for {self.home} ({exc.strerror or exc})"
            ) from None
        with sock:
            sock.settimeout(timeout)
            payload = json.dumps({"op": op, **params}).encode() + b"\n"
            try:
                sock.sendall(payload)
                buf = bytearray()
                while b"\n" not in buf:
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    buf += data
            except TimeoutError:
                raise DaemonError(f"the daemon did not answer {op!r} in time") from None
            except OSError as exc:
                raise DaemonError(f"lost the connection to the daemon: {exc}") from None
        if not buf.strip():
            raise DaemonError(f"the daemon closed the connection during {op!r} (did it crash?)")
        reply = json.loads(bytes(buf).split(b"\n", 1)[0])
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply

    def ping(self) -> dict[str, Any] | None:
        try:
            return self.request("ping", timeout=5.0)
        except DaemonError:
            return None

    def ensure_running(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        info = self.ping()
        if info is not None:
            return info
        return start_daemon(self.home, timeout)


def start_daemon(home: Path, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Start ``pfsfsd`` for ``home`` in the background and wait until it answers."""
    home = home.absolute()  # the daemon runs in CHILD_CWD
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / LOG_NAME
    with open(log_path, "ab") as log_file:
        start = log_file.tell()
        try:
            proc = subprocess.Popen(
                python_module_argv("pfsfsd", "--home", str(home), "run"),
                cwd=CHILD_CWD,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise DaemonError(f"cannot start the pfsfs daemon: {exc}") from None
    client = DaemonClient(home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.ping()
        if info is not None:
            return info
        code = proc.poll()
        if code is not None:
            info = client.ping()  # another daemon won the race for the lock
            if info is not None:
                return info
            raise DaemonError(
                f"the pfsfs daemon exited with code {code} at start: {_log_tail(log_path, start)}"
            )
        time.sleep(0.05)
    raise DaemonError(f"the pfsfs daemon did not start within {timeout:g}s (see {log_path})")


def _log_tail(path: Path, start: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(nothing logged)"
