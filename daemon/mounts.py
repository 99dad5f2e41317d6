"""The mount manager: one worker process per mount, and the channel to each.

``start`` spawns ``python -m pfsfsd.worker`` with one end of a socketpair, sends it the
``start`` message and waits for ``mounted`` (or ``failed``, which becomes the error the CLI
sees). A reader task per worker routes responses to the requests waiting for them and notices
the worker's exit (``exited`` event, or end of stream if it died). Workers get
``PR_SET_PDEATHSIG = SIGKILL``: if the daemon is killed, so are its mounts, and the next
daemon's recovery finds their staged state. Workers run in their own session, so a terminal's
Ctrl-C reaches the daemon only (which then shuts the mounts down in order).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import trio

from pfsfs.daemon_client import error_from_reply
from pfsfs.errors import DaemonError
from pfsfs.launch import CHILD_CWD, python_module_argv

from .malloc import worker_environment
from .protocol import Channel
from .staging import clear_trash

log = logging.getLogger(__name__)

START_TIMEOUT = 300.0  # a resume replays a journal and may load many directories
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """``preexec_fn`` for children: the kernel sends ``sig`` when the forking thread exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


async def _wait(process: subprocess.Popen[bytes]) -> int:
    return await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)


class Mount:
    """A running worker and what it reported."""

    def __init__(self, mount_id: str, process: subprocess.Popen[bytes], chan: Channel) -> None:
        self.id = mount_id
        self.process = process
        self.chan = chan
        self.info: dict[str, Any] = {}
        self.pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.exited = trio.Event()
        self.final: dict[str, Any] | None = None

    @property
    def mountpoint(self) -> str:
        return str(self.info.get("mountpoint", ""))


class MountManager:
    def __init__(self, home: Path, nursery: trio.Nursery, verbose: int = 0) -> None:
        self.home = home
        self.nursery = nursery
        self.verbose = verbose
        self.mounts: dict[str, Mount] = {}
        self.starting: set[str] = set()  # mountpoints being mounted right now

    def by_mountpoint(self, path: str) -> Mount | None:
        for m in self.mounts.values():
            if m.mountpoint == path:
                return m
        return None

    async def _spawn(self, mount_id: str, start: dict[str, Any]) -> tuple[Mount, dict[str, Any]]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = str(theirs.fileno())
        args = ["--home", str(self.home), "--id", mount_id, "--fd", fd]
        cmd = python_module_argv("pfsfsd.worker", *args)
        if self.verbose:
            cmd.append("-" + "v" * min(self.verbose, 2))
        try:
            # Popen on this thread, not in a trio worker thread: PR_SET_PDEATHSIG fires when
            # the *thread* that forked the child exits, and trio retires idle threads.
            process = subprocess.Popen(
                cmd,
                env=worker_environment(os.environ),
                cwd=CHILD_CWD,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                preexec_fn=die_with_parent,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        chan = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        m = Mount(mount_id, process, chan)
        await chan.send(start)
        with trio.move_on_after(START_TIMEOUT) as scope:
            first = await chan.receive()
        if scope.cancelled_caught:
            process.kill()
            raise DaemonError("the mount worker did not start in time")
        if first is None:
            code = await _wait(process)
            raise DaemonError(f"the mount worker exited at start (code {code}); see the daemon log")
        return m, first

    async def start(self, mount_id: str, start: dict[str, Any]) -> Mount:
        """Start a mount (fresh or resumed); returns once it is mounted."""
        m, first = await self._spawn(mount_id, start)
        if first.get("event") != "mounted":
            await _wait(m.process)
            await m.chan.aclose()
            raise error_from_reply(first)
        m.info = first
        self.mounts[mount_id] = m
        self.nursery.start_soon(self._reader, m)
        log.info("mounted %s at %s", mount_id, m.mountpoint)
        return m

    async def run_once(self, mount_id: str, start: dict[str, Any]) -> dict[str, Any]:
        """A worker that does one job without mounting (recovery commits)."""
        m, first = await self._spawn(mount_id, start)
        await _wait(m.process)
        await m.chan.aclose()
        if not first.get("ok"):
            raise error_from_reply(first)
        return first

    async def _reader(self, m: Mount) -> None:
        try:
            while True:
                try:
                    msg = await m.chan.receive()
                except (OSError, ValueError, trio.BrokenResourceError):
                    msg = None
                if msg is None:
                    break
                if "id" in msg and msg["id"] in m.pending:
                    await m.pending.pop(msg["id"]).send(msg)
                elif msg.get("event") == "exited":
                    m.final = msg
        finally:
            self.mounts.pop(m.id, None)
            for waiter in m.pending.values():
                await waiter.send(
                    {"ok": False, "error": {"type": "DaemonError", "message": "the mount died"}}
                )
            m.pending.clear()
            with trio.CancelScope(shield=True):
                code = await _wait(m.process)
                await m.chan.aclose()
            if code:
                log.warning("mount worker %s exited with code %s", m.id, code)
            m.exited.set()
            # what the worker's background removal of its staged files did not finish
            self.nursery.start_soon(self._clear_trash, m.id)

    async def _clear_trash(self, mount_id: str) -> None:
        await trio.to_thread.run_sync(clear_trash, self.home, mount_id, abandon_on_cancel=True)

    async def request(self, m: Mount, op: str, **params: Any) -> dict[str, Any]:
        """Send a request to a worker and wait for its response (raises its error)."""
        rid = next(m.ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        m.pending[rid] = send
        try:
            await m.chan.send({"id": rid, "op": op, **params})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            m.pending.pop(rid, None)
            raise DaemonError(f"the mount at {m.mountpoint} is gone") from None
        reply = await receive.receive()
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply

    async def shutdown_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for m in list(self.mounts.values()):
                nursery.start_soon(self._shutdown_one, m)

    async def _shutdown_one(self, m: Mount) -> None:
        try:
            with trio.move_on_after(120):
                await self.request(m, "shutdown")
        except Exception as exc:  # noqa: BLE001 - best effort; log and go on
            log.warning("shutdown of %s: %s", m.mountpoint, exc)
        with trio.move_on_after(30):
            await m.exited.wait()
        if not m.exited.is_set():
            m.process.kill()
