"""Finding what dead mounts left behind, and cleaning up after them.

At start the daemon looks at every staging directory of its home. A mount whose process is gone
left a stale kernel mount ("Transport endpoint is not connected"): it is detached lazily. If
its journal holds changes, the staging directory is kept as an *orphan* and reported by
``pfsfs mounts``; ``pfsfs recover`` commits it (or remounts it, or discards it). Staging of
mounts without changes (read-only mounts, clean ones) is removed, with its gc roots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfsfs.index import Index

from .mountinfo import find_mount, is_stale, unmount
from .staging import Staging, list_staged

log = logging.getLogger(__name__)


@dataclass
class Orphan:
    """The staged state of a mount that no process serves any more."""

    id: str
    mountpoint: str
    refs: list[str]
    state: str
    error: str | None
    records: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mountpoint": self.mountpoint,
            "refs": self.refs,
            "state": self.state,
            "error": self.error,
            "changes": self.records,
        }


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"pfsfsd.worker" in f.read()
    except OSError:
        return False


def clean_stale(mountpoint: str) -> bool:
    """Detach a dead FUSE mount at ``mountpoint``; True if one was there."""
    if not mountpoint or find_mount(mountpoint) is None or not is_stale(mountpoint):
        return False
    ok, err = unmount(mountpoint, lazy=True)
    if ok:
        log.warning("detached the stale mount at %s", mountpoint)
    else:
        log.error("cannot detach the stale mount at %s: %s", mountpoint, err)
    return ok


def scan(home: Path, live_ids: set[str], index: Index | None = None) -> list[Orphan]:
    """Orphans of ``home`` (mounts not in ``live_ids``); removes staging without changes."""
    orphans = []
    for staging in list_staged(home):
        mount_id = staging.mount_id
        if mount_id in live_ids:
            continue
        try:
            meta = staging.read_meta()
        except (OSError, ValueError) as exc:
            log.error("unreadable staging %s: %s", staging.path, exc)
            continue
        if meta.get("state") == "mounted" and _alive(meta.get("pid")):
            continue  # being served by a worker we do not know (starting up)
        mountpoint = str(meta.get("mountpoint") or "")
        clean_stale(mountpoint)
        records = sum(1 for _ in staging.records()) - 1
        if records <= 0:
            staging.destroy()
            if index is not None:
                index.set_gc_roots(f"mount:{mount_id}", [])
            log.info("removed the staging of %s (no changes)", mount_id)
            continue
        state = meta.get("state") or "dead"
        if state == "mounted":
            state = "dead"
            staging.update_meta(state=state, pid=None)
        orphans.append(
            Orphan(
                mount_id,
                mountpoint,
                list(meta.get("refs") or []),
                state,
                meta.get("error"),
                records,
            )
        )
    return orphans


def discard(home: Path, mount_id: str, index: Index | None) -> None:
    staging = Staging.open(home, mount_id)
    staging.destroy()
    if index is not None:
        index.set_gc_roots(f"mount:{mount_id}", [])
