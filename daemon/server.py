"""The daemon process: one per home, a control socket, mount workers, orderly shutdown.

``Daemon.main`` takes ``<home>/daemon.lock`` (``flock``; a second daemon for the same home
refuses to start), cleans up after dead mounts (``recovery``), listens on
``<home>/daemon.sock`` (mode 0600, and only peers with our uid or root are served) and runs
until ``stop``, SIGTERM or SIGINT (it also keeps the pipeline scheduler running, see
``pipelines``): then every read-write mount is snapshotted and unmounted,
and the process exits 0 — what a Kubernetes sidecar needs when its pod stops.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import signal
import socket
import struct
from pathlib import Path
from typing import Any

import trio

from pfsfs.daemon_client import LOCK_NAME, socket_path, unix_address
from pfsfs.errors import DaemonError
from pfsfs.index import Index
from pfsfs.repository import Repository

from . import recovery, staging
from .control import Controller
from .mounts import MountManager
from .pipelines import supervise_scheduler
from .protocol import Channel, error_reply

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, home: Path, verbose: int = 0, run_pipelines: bool = True) -> None:
        self.home = home
        self.verbose = verbose
        self.run_pipelines = run_pipelines
        self.manager: MountManager
        self.repo: Repository | None = None
        self._stop = trio.Event()
        self._lock_fd: int | None = None

    @property
    def index(self) -> Index | None:
        return self.repo.index if self.repo is not None else None

    def request_stop(self) -> None:
        self._stop.set()

    # -- setup ---------------------------------------------------------------------------------
    def _lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(f"a pfsfs daemon already runs for {self.home} (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    async def _listen(self) -> trio.socket.SocketType:
        path = socket_path(self.home)
        try:
            path.unlink()  # left by a dead daemon; we hold the lock, so it is not in use
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with unix_address(path) as address:
                await sock.bind(address)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        return sock

    # -- running -------------------------------------------------------------------------------
    async def main(self) -> None:
        self._lock()
        try:
            self.repo = Repository.open(self.home)
            orphans = recovery.scan(self.home, set(), self.repo.index)
            if orphans:
                log.warning(
                    "%d dead mount(s) left staged changes; `pfsfs recover` commits them: %s",
                    len(orphans),
                    ", ".join(f"{o.id} ({o.mountpoint})" for o in orphans),
                )
            listener = await self._listen()
            controller = Controller(self)
            async with trio.open_nursery() as nursery:
                self.manager = MountManager(self.home, nursery, self.verbose)
                nursery.start_soon(self._signals)
                # what background removals of staged files left when their process ended
                nursery.start_soon(
                    functools.partial(trio.to_thread.run_sync, abandon_on_cancel=True),
                    staging.clear_trash,
                    self.home,
                )
                nursery.start_soon(self._serve, listener, controller)
                if self.run_pipelines:
                    await nursery.start(supervise_scheduler, self.home, self.verbose)
                log.info("pfsfsd %d serving %s", os.getpid(), self.home)
                await self.started()
                await self._stop.wait()
                log.info("stopping: saving and unmounting %d mount(s)", len(self.manager.mounts))
                await self.stop_mounts()
                nursery.cancel_scope.cancel()
            listener.close()
        finally:
            try:
                socket_path(self.home).unlink()
            except FileNotFoundError:
                pass
            if self.repo is not None:
                self.repo.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    # -- hooks for variants of the daemon (the Kubernetes sidecar, ``sidecar``) ----------------
    async def started(self) -> None:
        """Called once the control socket serves and mounts can start: nothing by default."""

    async def stop_mounts(self) -> None:
        """Save and unmount every mount at stop (no deadline here: a sidecar adds one)."""
        await self.manager.shutdown_all()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received signal %d", signum)
                self.request_stop()

    async def _serve(self, listener: trio.socket.SocketType, controller: Controller) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(self._handle, conn, controller)

    @staticmethod
    def _peer_allowed(conn: trio.socket.SocketType) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    async def _handle(self, conn: trio.socket.SocketType, controller: Controller) -> None:
        chan = Channel(trio.SocketStream(conn))
        try:
            if not self._peer_allowed(conn):
                await chan.send(error_reply(DaemonError("permission denied")))
                return
            try:
                req = await chan.receive()
            except ValueError as exc:
                await chan.send(error_reply(DaemonError(f"bad request: {exc}")))
                return
            if req is None:
                return
            try:
                result: dict[str, Any] = {"ok": True, **await controller.dispatch(req)}
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reply
                result = error_reply(exc)
            try:
                await chan.send(result)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("client left before the reply to %r", req.get("op"))
        finally:
            await chan.aclose()
