"""Handlers of the control socket's requests (one request per connection).

``ping``/``status``, ``stop``, ``mount``, ``unmount``, ``snapshot``, ``mounts`` and
``recover``. Mount points arrive already absolute (the client resolves them without touching a
mount). Every failure is a ``PfsError`` whose type and message travel back to the CLI.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import trio

from pfsfs import __version__
from pfsfs.errors import DaemonError, InvalidInput, NotFound, PfsError

from . import recovery
from .mountinfo import find_mount, is_stale

if TYPE_CHECKING:
    from .server import Daemon

log = logging.getLogger(__name__)

STRATEGIES = (None, "ours", "theirs")


def _mountpoint(req: dict[str, Any]) -> str:
    mp = req.get("mountpoint")
    if not isinstance(mp, str) or not os.path.isabs(mp):
        raise InvalidInput("a mount point (absolute path) is required")
    return os.path.normpath(mp)


def _strategy(req: dict[str, Any]) -> str | None:
    strategy = req.get("strategy")
    if strategy not in STRATEGIES:
        raise InvalidInput(f"unknown merge strategy {strategy!r}")
    return strategy


class Controller:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.started = time.time()

    @property
    def manager(self) -> Any:
        return self.daemon.manager

    async def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise InvalidInput(f"unknown request {op!r}")
        return await handler(req)

    # -- daemon --------------------------------------------------------------------------------
    async def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "home": str(self.daemon.home), "version": __version__}

    async def op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "home": str(self.daemon.home),
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "mounts": len(self.manager.mounts),
            "orphans": len(self._orphans()),
        }

    async def op_stop(self, req: dict[str, Any]) -> dict[str, Any]:
        self.daemon.request_stop()
        return {"pid": os.getpid(), "mounts": len(self.manager.mounts)}

    # -- mounts --------------------------------------------------------------------------------
    async def op_mount(self, req: dict[str, Any]) -> dict[str, Any]:
        mp = _mountpoint(req)
        refs = req.get("refs")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise InvalidInput("nothing to mount")
        manager = self.manager
        if mp in manager.starting or manager.by_mountpoint(mp) is not None:
            raise InvalidInput(f"{mp} is already a mount point")
        entry = find_mount(mp)
        if entry is not None:
            if is_stale(mp):
                raise InvalidInput(
                    f"{mp} is a dead mount; run `pfsfs recover` (or `fusermount3 -uz {mp}`)"
                )
            raise InvalidInput(f"{mp} is already a mount point")
        autosnapshot = req.get("autosnapshot")
        if autosnapshot is not None and (
            not isinstance(autosnapshot, int | float) or autosnapshot <= 0
        ):
            raise InvalidInput("--autosnapshot takes a positive number of seconds")
        mount_id = secrets.token_hex(6)
        start = {
            "op": "start",
            "mode": "mount",
            "mountpoint": mp,
            "refs": refs,
            "multi": bool(req.get("multi")),
            "read_only": bool(req.get("read_only")),
            "create": bool(req.get("create")),
            "from": req.get("from"),
            "xattrs": bool(req.get("xattrs")),
            "autosnapshot": autosnapshot,
            "author": req.get("author"),
        }
        manager.starting.add(mp)
        try:
            m = await manager.start(mount_id, start)
        finally:
            manager.starting.discard(mp)
        return dict(m.info)

    def _mount_at(self, req: dict[str, Any]) -> Any:
        mp = _mountpoint(req)
        m = self.manager.by_mountpoint(mp)
        if m is None:
            if find_mount(mp) is not None and is_stale(mp):
                raise InvalidInput(
                    f"{mp} is a dead mount (its daemon died); `pfsfs recover` saves its changes"
                )
            raise InvalidInput(f"{mp} is not a pfsfs mount of this daemon")
        return m

    async def op_unmount(self, req: dict[str, Any]) -> dict[str, Any]:
        m = self._mount_at(req)
        reply = await self.manager.request(
            m,
            "unmount",
            discard=bool(req.get("discard")),
            strategy=_strategy(req),
            onto_branch=req.get("onto_branch"),
            message=req.get("message"),
            author=req.get("author"),
        )
        with trio.move_on_after(30):
            await m.exited.wait()
        reply.pop("id", None)
        return reply

    async def op_snapshot(self, req: dict[str, Any]) -> dict[str, Any]:
        m = self._mount_at(req)
        reply = await self.manager.request(
            m,
            "snapshot",
            message=req.get("message"),  # none: the worker says what changed
            strategy=_strategy(req),
            onto_branch=req.get("onto_branch"),
            author=req.get("author"),
        )
        reply.pop("id", None)
        return reply

    async def op_mounts(self, req: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for m in list(self.manager.mounts.values()):
            info = dict(m.info)
            try:
                with trio.move_on_after(5):
                    info = await self.manager.request(m, "status")
            except PfsError:
                pass
            info.pop("id", None)
            info.pop("ok", None)
            info.pop("event", None)
            rows.append({"id": m.id, "state": "mounted", **info})
        orphans = [o.to_dict() for o in self._orphans()]
        return {"mounts": rows, "orphans": orphans}

    def _orphans(self) -> list[recovery.Orphan]:
        return recovery.scan(self.daemon.home, set(self.manager.mounts), self.daemon.index)

    async def op_recover(self, req: dict[str, Any]) -> dict[str, Any]:
        action = req.get("action") or "commit"
        if action not in ("list", "commit", "remount", "discard"):
            raise InvalidInput(f"unknown recover action {action!r}")
        orphans = self._orphans()
        ids = req.get("ids") or []
        if ids:
            chosen = []
            for wanted in ids:
                match = [o for o in orphans if o.id.startswith(str(wanted))]
                if len(match) != 1:
                    raise NotFound(f"no single dead mount matches {wanted!r}")
                chosen.extend(match)
        else:
            chosen = orphans
        if action == "list":
            return {"orphans": [o.to_dict() for o in chosen]}
        if action == "remount" and len(chosen) > 1 and req.get("mountpoint"):
            raise InvalidInput("give one mount id to remount at a new place")
        done, failed = [], []
        for o in chosen:
            try:
                if action == "discard":
                    recovery.discard(self.daemon.home, o.id, self.daemon.index)
                    done.append({"id": o.id, "discarded": True})
                elif action == "remount":
                    mp = req.get("mountpoint") or o.mountpoint
                    recovery.clean_stale(mp)
                    m = await self.manager.start(
                        o.id,
                        {
                            "op": "start",
                            "mode": "resume",
                            "mountpoint": mp,
                            "author": req.get("author"),
                        },
                    )
                    done.append({"id": o.id, "mountpoint": m.mountpoint})
                else:
                    reply = await self.manager.run_once(
                        o.id,
                        {
                            "op": "start",
                            "mode": "commit",
                            "strategy": _strategy(req),
                            "onto_branch": req.get("onto_branch"),
                            "message": req.get("message"),
                            "author": req.get("author"),
                        },
                    )
                    done.append({"id": o.id, "results": reply.get("results", [])})
            except PfsError as exc:
                err: dict[str, Any] = {
                    "id": o.id,
                    "type": type(exc).__name__,
                    "message": exc.message,
                }
                if getattr(exc, "paths", None):
                    err["paths"] = exc.paths  # type: ignore[attr-defined]
                failed.append(err)
        if failed and not done and len(failed) == 1:
            f = failed[0]
            raise _rebuild(f)
        return {"done": done, "failed": failed}


def _rebuild(f: dict[str, Any]) -> PfsError:
    from pfsfs.daemon_client import error_from_reply

    exc = error_from_reply({"error": f})
    if not isinstance(exc, PfsError):  # pragma: no cover - defensive
        return DaemonError(str(f.get("message")))
    return exc
