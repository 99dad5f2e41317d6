"""One mount, served by one process (``python -m pfsfsd.worker``).

pyfuse3 holds a single FUSE session per process, so the daemon runs every mount in a worker
process of its own; workers die with the daemon (``PR_SET_PDEATHSIG``), which is what a
``kill -9`` of the daemon must look like to recovery. The worker talks to the daemon over an
inherited socket (JSON lines, see ``protocol``): a ``start`` message first, then ``snapshot``,
``unmount``, ``status`` and ``shutdown`` requests.

Whatever ends the FUSE session — ``pfsfs unmount``, ``fusermount3 -u``, ``umount`` or a
shutdown — ``pyfuse3.main()`` returns after the kernel has flushed every dirty page to us, and
``finish`` commits what is left. A commit that cannot be made (a merge conflict) leaves the
staging directory in place for ``pfsfs recover``; nothing is lost.

Modes: ``mount`` (a fresh mount), ``resume`` (remount a dead mount's staged state) and
``commit`` (replay a dead mount's staged state and commit it, without mounting).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from pfsfs.errors import (
    Busy,
    Conflict,
    DaemonError,
    InvalidInput,
    NotFound,
    PfsError,
    ReadOnly,
    StoreError,
)
from pfsfs.ids import to_hex
from pfsfs.ops.branches import ensure_branch, names_commit
from pfsfs.refspec import check_name, parse_ref
from pfsfs.repository import Repository
from pfsfs.store.directio import DIRECT_READ_FILESYSTEMS

from .chunkcache import ChunkCache
from .fs import PfsOperations, serve
from .malloc import trim_when_idle
from .mountinfo import (
    READ_AHEAD_KB,
    REMOTE_READ_AHEAD_KB,
    filesystem_of,
    find_mount,
    holders,
    raise_read_ahead,
    unmount,
)
from .precommit import Precommitter
from .protocol import Channel, error_reply
from .snapshot import VolumeResult, snapshot
from .staging import Staging
from .tree import Tree
from .tree.journal import header_volumes

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)

SHUTDOWN_GRACE = 10.0  # seconds a busy mount may live on after a shutdown's lazy unmount
# A local store: chunks fetched (and verified) ahead by 4 threads, 16 chunks ahead, and 4 MiB of
# kernel read-ahead (four 1 MiB requests queued): cold 1 GiB read ~560 -> ~660 MiB/s on a loaded
# 2-core machine (A/B, interleaved, 6 runs each) against 8 chunks, 2 threads and 1 MiB.
LOCAL_READ_AHEAD = 16
LOCAL_READ_AHEAD_WORKERS = 4
LOCAL_READ_AHEAD_KB = 4096
READY_TIMEOUT = 10.0  # seconds to wait for a new mount to answer before reporting it anyway

VolumeSpec = tuple[str, str | None, bytes | None, bool]


def resolve_volumes(
    repo: Repository,
    refs: list[str],
    *,
    read_only: bool,
    create: bool,
    from_ref: str | None = None,
    created: list[str] | None = None,
) -> list[VolumeSpec]:
    """The volumes to mount; with ``create`` a missing repo or branch is made first (a new
    branch of an existing repo at master's head or ``from_ref``, like ``branch create``),
    and ``created`` gets a line saying so for each."""
    volumes: list[VolumeSpec] = []
    seen = set()
    for ref in refs:
        spec = parse_ref(ref, allow_path=False)
        if spec.repo in seen:
            raise InvalidInput(f"repo {spec.repo} is named twice")
        seen.add(spec.repo)
        if create:
            try:
                repo.repo_record(spec.repo)
            except NotFound:
                repo.create_repo(spec.repo)
                if created is not None:
                    created.append(f"created repo {spec.repo}")
            branch = spec.ref or "master"
            if not spec.back and branch not in repo.list_branches(spec.repo):
                start = (
                    None
                    if names_commit(repo, spec)
                    else ensure_branch(repo, spec.repo, check_name("branch", branch), from_ref)
                )
                if start is not None and created is not None:
                    created.append(f"created branch {spec.repo}@{branch} from {start}")
        resolved = repo.resolve(spec)
        ro = read_only or resolved.branch is None
        if not ro:
            try:
                repo.check_writable(spec.repo)
            except ReadOnly as exc:
                raise ReadOnly(f"{exc.message}; mount it with --read-only") from None
        volumes.append((spec.repo, resolved.branch, resolved.commit, ro))
    if not volumes:
        raise InvalidInput("nothing to mount")
    return volumes


def check_mountpoint(path: str) -> str:
    mp = os.path.realpath(path)
    if not os.path.isdir(mp):
        raise (
            NotFound(f"{path} is not a directory")
            if not os.path.exists(mp)
            else InvalidInput(f"{path} is not a directory")
        )
    if find_mount(mp) is not None:
        raise InvalidInput(f"{path} is already a mount point")
    if os.listdir(mp):
        raise InvalidInput(f"{path} is not empty; mount onto an empty directory")
    return mp


def reads_past_page_cache(store: object) -> bool:
    """Whether a local store's chunks should be read past the page cache (``read_chunk``): a
    store with ``get_uncached`` on a disk filesystem (``DIRECT_READ_FILESYSTEMS``)."""
    root = getattr(store, "root", None)
    if root is None or not hasattr(store, "get_uncached"):
        return False
    return filesystem_of(root) in DIRECT_READ_FILESYSTEMS


class Worker:
    def __init__(self, home: Path, mount_id: str, chan: Channel) -> None:
        self.home = home
        self.mount_id = mount_id
        self.chan = chan
        self.repo: Repository | None = None
        self.tree: Tree | None = None
        self.staging: Staging | None = None
        self.meta: dict[str, Any] = {}
        self.mountpoint = ""
        self.lock = trio.Lock()
        self.mounted = False
        self.unmounting = False
        self.created: list[str] = []  # what --create made, for the CLI to say
        self.discard = False
        self.final_message: str | None = None  # None: "unmount: <what changed>"
        self.final_kind = "unmount"
        self.final_strategy: str | None = None
        self.author: str | None = None
        self.waiters: list[int] = []
        self.devno: str | None = None
        self.read_ahead_kb = READ_AHEAD_KB
        self.earlier: list[VolumeResult] = []
        self.snapshots = 0
        self.precommit: Precommitter | None = None

    # -- setup ---------------------------------------------------------------------------------
    def chunk_cache(self, repo: Repository) -> ChunkCache:
        """The chunk cache the mount reads committed files through, tuned to the store."""
        if not repo.store.properties.remote:
            self.read_ahead_kb = LOCAL_READ_AHEAD_KB
            return ChunkCache(
                repo.reader,
                read_ahead=LOCAL_READ_AHEAD,
                read_ahead_workers=LOCAL_READ_AHEAD_WORKERS,
                uncached_reads=reads_past_page_cache(repo.store),
            )
        # A remote store: more kernel read-ahead in flight, and chunks verified further ahead
        # (16 chunks, about a pack) by two threads (BLAKE3 releases the GIL). On 2 cores with
        # moto, a cold 1 GiB read waited for verification ~0.7 s with one thread, ~0.3 s with
        # 4 chunks ahead, ~0.1 s with 16 (8% faster than 4, A/B over 5 pairs of runs); 32
        # pushed spans out of the store's memory before they were read (refetched).
        self.read_ahead_kb = REMOTE_READ_AHEAD_KB
        cache_dir = None
        # A remote store without a read cache of the repository's gets one here; one that has
        # it (S3 behind CachingStore) must not be cached twice (twice the disk writes).
        if repo.cache is None:
            cache_dir = self.home / "cache" / "chunks"
        return ChunkCache(repo.reader, disk_dir=cache_dir, read_ahead=16, read_ahead_workers=2)

    def setup(self, req: dict[str, Any]) -> None:
        self.repo = repo = Repository.open(self.home)
        mode = req.get("mode", "mount")
        cache = self.chunk_cache(repo)
        if mode == "mount":
            self.mountpoint = check_mountpoint(req["mountpoint"])  # before creating branches
            volumes = resolve_volumes(
                repo,
                req["refs"],
                read_only=bool(req.get("read_only")),
                create=bool(req.get("create")),
                from_ref=req.get("from"),
                created=self.created,
            )
            self.meta = {
                "id": self.mount_id,
                "mountpoint": self.mountpoint,
                "refs": req["refs"],
                "multi": bool(req.get("multi")),
                "xattrs": bool(req.get("xattrs")),
                "autosnapshot": req.get("autosnapshot"),
                # Sidecar mounts (pfsfsd.sidecar): other uids may use the mount, and a commit
                # that conflicts goes onto a new branch instead of being kept staged.
                "allow_other": bool(req.get("allow_other")),
                "conflict_branch": bool(req.get("conflict_branch")),
                "open_to_pod": bool(req.get("open_to_pod")),
                "created_ns": time.time_ns(),
                "pid": os.getpid(),
                "state": "mounted",
            }
            self.staging = Staging.create(self.home, self.mount_id, self.meta)
            self.tree = Tree(
                repo,
                volumes,
                self.staging,
                multi=self.meta["multi"],
                mount_id=self.mount_id,
                cache=cache,
            )
            self.tree.journal.restart()  # the new journal: just the header
        else:
            self.staging = Staging.open(self.home, self.mount_id)
            self.meta = self.staging.read_meta()
            records = list(self.staging.records())
            volumes = header_volumes(records)
            if volumes is None:
                raise DaemonError(f"staged mount {self.mount_id} has no journal header")
            self.tree = Tree(
                repo,
                volumes,
                self.staging,
                multi=bool(self.meta.get("multi")),
                mount_id=self.mount_id,
                cache=cache,
            )
            applied = self.tree.replay(records[1:])
            log.info("replayed %d journal records of mount %s", applied, self.mount_id)
            if mode == "resume":
                self.mountpoint = check_mountpoint(req.get("mountpoint") or self.meta["mountpoint"])
                self.staging.update_meta(
                    pid=os.getpid(), mountpoint=self.mountpoint, state="mounted"
                )
        self.set_gc_roots()

    def base_roots(self) -> list[str]:
        assert self.tree is not None
        return [to_hex(v.base) for v in self.tree.volumes if v.base]

    def set_gc_roots(self) -> None:
        """The mount's gc roots: its base commits, and what background chunking stored for
        files no commit holds yet."""
        assert self.repo is not None
        pre = self.precommit.root_locators() if self.precommit is not None else []
        self.repo.index.set_gc_roots(f"mount:{self.mount_id}", self.base_roots(), pre)

    def mount(self) -> None:
        assert self.tree is not None
        ops = PfsOperations(self.tree, xattrs=bool(self.meta.get("xattrs")))
        described = "+".join(v.describe() for v in self.tree.volumes)
        options = set(pyfuse3.default_options)
        # nosuid, nodev: set-id bits and device files are data here (kept, committed), never
        # privileges: a committed set-uid-root file (a pipeline output) must not run as root.
        options |= {f"fsname=pfsfs:{described}", "subtype=pfsfs", "noatime", "nosuid", "nodev"}
        if os.geteuid() == 0 or self.meta.get("allow_other"):
            options.add("allow_other")
        if self.meta.get("open_to_pod"):
            # A sidecar's mount serves the pod's app, whatever uid it runs as (OpenShift picks
            # one at random): no kernel permission checks against the owners stored in the
            # commits; the pod is the boundary, and inputs are read-only mounts anyway.
            options.discard("default_permissions")
        if all(v.read_only for v in self.tree.volumes):
            options.add("ro")
        try:
            pyfuse3.init(ops, self.mountpoint, options)
        except RuntimeError as exc:
            raise DaemonError(f"cannot mount {self.mountpoint}: {exc}") from None
        self.mounted = True

    def info(self) -> dict[str, Any]:
        assert self.tree is not None
        return {
            "id": self.mount_id,
            "mountpoint": self.mountpoint,
            "pid": os.getpid(),
            "dirty": any(self.tree.nodes[v.root].dirty for v in self.tree.volumes),
            "multi": self.tree.multi,
            "autosnapshot": self.meta.get("autosnapshot"),
            "xattrs": bool(self.meta.get("xattrs")),
            "created": self.created,
            "volumes": [
                {
                    "repo": v.repo,
                    "branch": v.branch,
                    "base": to_hex(v.base) if v.base else None,
                    "read_only": v.read_only,
                }
                for v in self.tree.volumes
            ],
        }

    # -- running -------------------------------------------------------------------------------
    async def run(self) -> None:
        start = await self.chan.receive()
        if start is None or start.get("op") != "start":
            return
        mode = start.get("mode", "mount")
        self.author = start.get("author")
        try:
            self.setup(start)
            if mode == "commit":
                await self.commit_only(start)
                return
            self.mount()
        except PfsError as exc:
            await self.chan.send({"event": "failed", **error_reply(exc)})
            self._cleanup_failed_start(mode)
            return
        except OSError as exc:
            err = DaemonError(f"cannot start the mount: {exc.strerror or exc}")
            await self.chan.send({"event": "failed", **error_reply(err)})
            self._cleanup_failed_start(mode)
            return
        clean = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.control_loop, nursery)
                nursery.start_soon(self.signal_loop)
                nursery.start_soon(self.announce_when_ready)
                interval = self.meta.get("autosnapshot")
                if interval:
                    nursery.start_soon(self.autosnapshot_loop, float(interval))
                nursery.start_soon(trim_when_idle, self.activity)
                if not all(v.read_only for v in self.tree.volumes):  # type: ignore[union-attr]
                    self.precommit = Precommitter(
                        self.tree,  # type: ignore[arg-type]
                        f"mount:{self.mount_id}",
                        self.base_roots,
                        self.lock,
                        lambda: self.unmounting,
                    )
                    nursery.start_soon(self.precommit.run)
                await serve()
                clean = True
                nursery.cancel_scope.cancel()
        finally:
            if not clean:  # a bug ended the session: do not leave a dead mount behind
                log.error("the FUSE session of %s failed; unmounting", self.mountpoint)
                unmount(self.mountpoint, lazy=True)
            with trio.CancelScope(shield=True):
                await self.finish()

    def activity(self) -> int:
        """A counter that moves with every read of committed data, mutation and snapshot."""
        assert self.tree is not None
        cache = self.tree.cache
        return cache.hits + cache.misses + self.tree.changes + self.snapshots

    def _cleanup_failed_start(self, mode: str) -> None:
        if mode == "mount" and self.staging is not None:
            self.staging.destroy()
            if self.repo is not None:
                self.repo.index.set_gc_roots(f"mount:{self.mount_id}", [])

    async def control_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                msg = await self.chan.receive()
            except (OSError, ValueError, trio.BrokenResourceError):
                msg = None
            if msg is None:  # the daemon went away: save and leave
                log.warning("daemon connection closed; unmounting %s", self.mountpoint)
                await self.shutdown()
                return
            nursery.start_soon(self.handle, msg)

    async def signal_loop(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                await self.shutdown()

    async def announce_when_ready(self) -> None:
        """Tell the daemon "mounted" once the mount answers requests, with its read-ahead
        raised.

        The kernel sets the bdi read-ahead from the FUSE INIT reply (128 KiB), and a file opened
        before it is raised keeps 128 KiB requests for as long as it stays open (its read-ahead
        state is set at open): so raise it after INIT — a ``statvfs`` of the mountpoint
        answered by this process proves INIT is done — and only then report the mount, so that
        the first reader already gets 1 MiB requests (about twice the cold-read speed on S3;
        for a remote store the kernel also keeps more of them in flight).
        The ``statvfs`` runs in a thread, so the trio thread stays free to serve it.
        """
        with trio.move_on_after(READY_TIMEOUT):
            try:
                await trio.to_thread.run_sync(os.statvfs, self.mountpoint, abandon_on_cancel=True)
            except OSError as exc:
                log.debug("statvfs of %s before announcing it: %s", self.mountpoint, exc)
        entry = find_mount(self.mountpoint)
        self.devno = entry.devno if entry is not None else None
        raise_read_ahead(self.mountpoint, self.read_ahead_kb)
        await self.chan.send({"event": "mounted", **self.info()})

    def abort_connection(self) -> None:
        """Last resort after a lazy unmount that open files keep alive: end the session."""
        log.warning("ending the FUSE session of %s (files are still open)", self.mountpoint)
        if self.devno:
            minor = self.devno.split(":")[1]
            try:
                with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
                    f.write("1")
                return
            except OSError:
                pass  # fusectl is not mounted: stop serving; closing the session aborts it
        pyfuse3.terminate()

    async def autosnapshot_loop(self, interval: float) -> None:
        """Commit after ``interval`` quiet seconds (no mutation seen in that time)."""
        assert self.tree is not None
        tree = self.tree
        seen = tree.changes
        quiet_since = trio.current_time()
        gave_up_at = -1
        while True:
            await trio.sleep(min(0.25, interval / 4))
            now = trio.current_time()
            if tree.changes != seen:
                seen, quiet_since = tree.changes, now
                continue
            dirty = any(not v.read_only and tree.nodes[v.root].dirty for v in tree.volumes)
            if not dirty or now - quiet_since < interval or gave_up_at == seen:
                continue
            try:
                await self.snapshot_or_branch("autosnapshot")
            except PfsError as exc:
                log.warning("autosnapshot of %s failed (changes kept): %s", self.mountpoint, exc)
                gave_up_at = tree.changes  # retry only after new changes
            seen, quiet_since = tree.changes, trio.current_time()

    async def reply(self, req_id: Any, result: dict[str, Any]) -> None:
        try:
            await self.chan.send({**result, "id": req_id})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("cannot reply to the daemon (gone?)")

    async def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        req_id = msg.get("id")
        try:
            if op == "status":
                await self.reply(req_id, {"ok": True, **self.info()})
            elif op == "snapshot":
                results = await self.do_snapshot(
                    msg.get("message") or None,
                    msg.get("strategy"),
                    msg.get("onto_branch"),
                    msg.get("author"),
                )
                await self.reply(req_id, {"ok": True, "results": [r.to_dict() for r in results]})
            elif op == "unmount":
                await self.do_unmount(msg, req_id)
            elif op == "shutdown":
                self.waiters.append(req_id)
                await self.shutdown()
            else:
                raise InvalidInput(f"unknown worker request {op!r}")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reply
            await self.reply(req_id, error_reply(exc))

    def _syncfs(self) -> OSError | None:
        """Flush the kernel's dirty pages of this mount to us (runs in a thread; ctypes drops
        the GIL during the call, pyfuse3.syncfs does not, which would deadlock us). Returns
        the error if a flush failed: then pages the kernel holds never reached staging."""
        try:
            fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _libc.syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("syncfs of %s failed: %s", self.mountpoint, exc)
            return exc
        return None

    async def do_snapshot(
        self,
        message: str | None,
        strategy: str | None = None,
        onto_branch: str | None = None,
        author: str | None = None,
        kind: str = "snapshot",
    ) -> list[VolumeResult]:
        assert self.tree is not None
        if all(v.read_only for v in self.tree.volumes):
            raise ReadOnly(f"{self.mountpoint} is a read-only mount; there is nothing to commit")
        async with self.lock:
            if self.mounted and not self.unmounting:
                # A failed write reaches us (and marks its file, which the snapshot refuses);
                # syncfs also reports a failure the writer already saw at close, once. So
                # only a second failure in a row is one of its own.
                failed = await trio.to_thread.run_sync(self._syncfs)
                if failed is not None:
                    failed = await trio.to_thread.run_sync(self._syncfs)
                if failed is not None and not self.tree.unstaged_paths():
                    raise StoreError(
                        f"flushing {self.mountpoint} failed ({failed.strerror}); nothing was "
                        "committed and the changes are kept"
                    )
            results = snapshot(
                self.tree,
                message,
                strategy=strategy,
                onto_branch=onto_branch,
                author=author or self.author,
                kind=kind,
            )
            if self.precommit is not None:
                self.precommit.after_snapshot()
            self.set_gc_roots()
            self.snapshots += 1
            await self._invalidate(results)
            return results

    async def _invalidate(self, results: list[VolumeResult]) -> None:
        if not self.mounted or self.unmounting:
            return
        for res in results:
            for kind, ino, name in res.invalidate:
                try:
                    if kind == "entry":
                        pyfuse3.invalidate_entry_async(ino, name, ignore_enoent=True)
                    else:
                        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        log.warning("cache invalidation failed: %s", exc)

    # -- conflicts of mounts nobody watches (sidecars): a new branch, never a discard ---------
    def conflict_branch(self) -> str | None:
        """A fresh branch name for a conflicting commit, if this mount wants one."""
        if not self.meta.get("conflict_branch") or self.tree is None:
            return None
        return conflict_branch_name(self.tree.volumes)

    async def snapshot_or_branch(self, kind: str) -> list[VolumeResult]:
        """``do_snapshot`` with a message naming the changes (``kind``: what commits); on a
        conflict, commit onto a new branch if the mount says so."""
        try:
            return await self.do_snapshot(None, kind=kind)
        except Conflict as exc:
            onto = self.conflict_branch()
            if onto is None:
                raise
            results = await self.do_snapshot(None, onto_branch=onto, kind=kind)
            log_conflict_branch(self.mountpoint, onto, exc)
            return results

    def final_snapshot(self) -> list[VolumeResult]:
        """The commit at the end of the session (``finish``), with the same conflict rule."""
        assert self.tree is not None
        try:
            return snapshot(
                self.tree,
                self.final_message,
                strategy=self.final_strategy,
                author=self.author,
                kind=self.final_kind,
            )
        except Conflict as exc:
            onto = self.conflict_branch()
            if onto is None:
                raise
            results = snapshot(
                self.tree,
                self.final_message,
                onto_branch=onto,
                author=self.author,
                kind=self.final_kind,
            )
            log_conflict_branch(self.mountpoint, onto, exc)
            return results

    async def do_unmount(self, msg: dict[str, Any], req_id: Any) -> None:
        assert self.tree is not None
        if self.unmounting:
            raise DaemonError(f"{self.mountpoint} is already being unmounted")
        discard = bool(msg.get("discard"))
        rw = not all(v.read_only for v in self.tree.volumes)
        self.final_message = msg.get("message") or None  # None: describe the changes
        self.final_strategy = msg.get("strategy")
        if msg.get("author"):
            self.author = msg["author"]
        if rw and not discard:
            self.earlier = await self.do_snapshot(
                self.final_message,
                msg.get("strategy"),
                msg.get("onto_branch"),
                msg.get("author"),
                kind=self.final_kind,
            )
        async with self.lock:
            self.discard = discard
            self.unmounting = True
            self.waiters.append(req_id)
            ok, err = await trio.to_thread.run_sync(unmount, self.mountpoint)
            if not ok:
                self.waiters.remove(req_id)
                self.unmounting = False
                self.discard = False
                who = await trio.to_thread.run_sync(holders, self.mountpoint)
                if who or "busy" in err.lower():
                    raise Busy(
                        f"{self.mountpoint} is busy"
                        + (f" (used by {', '.join(who)})" if who else f": {err}")
                        + ("" if discard else "; its changes are committed")
                        + "; close those files or leave the directory, and unmount again"
                    )
                raise DaemonError(f"cannot unmount {self.mountpoint}: {err}")

    async def shutdown(self) -> None:
        """Save (if possible), then unmount, even when busy (lazily)."""
        if self.unmounting or self.tree is None:
            return
        self.final_message, self.final_kind = None, "daemon shutdown"
        if not all(v.read_only for v in self.tree.volumes):
            try:
                self.earlier = await self.snapshot_or_branch("daemon shutdown")
            except PfsError as exc:
                log.warning("snapshot at shutdown failed (changes kept): %s", exc)
        async with self.lock:
            self.unmounting = True
            ok, err = await trio.to_thread.run_sync(unmount, self.mountpoint)
            if not ok:
                log.warning("unmount of %s failed (%s); detaching lazily", self.mountpoint, err)
                await trio.to_thread.run_sync(lambda: unmount(self.mountpoint, lazy=True))
                # open files keep a lazily detached session alive; give them a moment
                await trio.sleep(SHUTDOWN_GRACE)
                self.abort_connection()

    async def finish(self) -> None:
        """The FUSE session ended: commit what is left (or discard), clean up, report."""
        assert self.tree is not None and self.staging is not None and self.repo is not None
        self.unmounting = True
        error: BaseException | None = None
        results: list[VolumeResult] = []
        if self.precommit is not None:
            log.info(
                "background chunking: %d files in %d jobs",
                self.precommit.files_done,
                self.precommit.jobs,
            )
            self.precommit.close()
        try:
            if not self.discard and any(
                not v.read_only and self.tree.nodes[v.root].dirty for v in self.tree.volumes
            ):
                results = self.final_snapshot()
        except Exception as exc:  # noqa: BLE001 - reported, staging kept
            error = exc
            log.error("final commit of %s failed; staged changes kept: %s", self.mountpoint, exc)
        if error is None:
            self.staging.destroy()
            self.repo.index.set_gc_roots(f"mount:{self.mount_id}", [])
        else:
            state = "conflict" if isinstance(error, Conflict) else "error"
            self.staging.update_meta(state=state, pid=None, error=str(error))
            self.staging.close()
        try:
            pyfuse3.close(unmount=False)
        except Exception:  # noqa: BLE001
            log.exception("closing the FUSE session failed")
        combined = _combine(self.earlier, results)
        reply = error_reply(error) if error is not None else {"ok": True, "results": combined}
        if self.discard and error is None:
            reply["discarded"] = True
        for req_id in self.waiters:
            await self.reply(req_id, reply)
        try:
            await self.chan.send({"event": "exited", **reply})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self.tree is not None:
            self.tree.cache.close()  # its read-ahead threads stop before the store closes
        self.repo.close()

    async def commit_only(self, req: dict[str, Any]) -> None:
        """Recovery: commit a dead mount's replayed state without mounting it."""
        assert self.tree is not None and self.staging is not None and self.repo is not None
        try:
            results = snapshot(
                self.tree,
                req.get("message") or None,
                strategy=req.get("strategy"),
                onto_branch=req.get("onto_branch"),
                author=self.author,
                kind="recover",
            )
        except PfsError as exc:
            self.staging.update_meta(state="conflict" if isinstance(exc, Conflict) else "error")
            await self.chan.send({"event": "failed", **error_reply(exc)})
            return
        self.staging.destroy()
        self.repo.index.set_gc_roots(f"mount:{self.mount_id}", [])
        await self.chan.send(
            {"event": "exited", "ok": True, "results": [r.to_dict() for r in results]}
        )


def conflict_branch_name(volumes: Any) -> str:
    """``<branch>.conflict-<pod>-<UTC time>`` (valid branch characters only, <= 100)."""
    branch = next((v.branch for v in volumes if not v.read_only and v.branch), "branch")
    who = os.environ.get("PFSFS_POD") or socket.gethostname() or "pod"
    who = "".join(c if c.isalnum() or c in "_.-" else "-" for c in who)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"[:3]
    tail = f".conflict-{who}-{stamp}"
    return (branch[: 100 - min(len(tail), 60)] + tail)[:100]


def log_conflict_branch(mountpoint: str, branch: str, exc: Conflict) -> None:
    log.warning(
        "commit of %s conflicted (%s); committed onto the new branch %s instead",
        mountpoint,
        exc.message,
        branch,
    )


def _combine(earlier: list[VolumeResult], later: list[VolumeResult]) -> list[dict[str, Any]]:
    """Per volume, the last commit made by this unmount (None: nothing changed)."""
    out: dict[str, dict[str, Any]] = {}
    for res in [*earlier, *later]:
        d = res.to_dict()
        prev = out.get(res.repo)
        if prev is None or d["commit"]:
            out[res.repo] = d
    return list(out.values())


async def _main(args: argparse.Namespace) -> None:
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=args.fd))
    chan = Channel(trio.SocketStream(sock))
    worker = Worker(Path(args.home), args.id, chan)
    await worker.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pfsfsd.worker")
    parser.add_argument("--home", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format=f"%(asctime)s pfsfsd[{args.id}] %(levelname)s %(name)s: %(message)s",
    )
    sys.setrecursionlimit(20_000)
    try:
        trio.run(_main, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
