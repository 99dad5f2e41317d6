"""The pyfuse3 ``Operations`` of a mount: translation between FUSE requests and the inode tree.

No filesystem logic lives here: each handler unpacks the request, calls ``tree.Tree`` and
packs the reply. Domain errors (``FsError``, ``PfsError``, ``OSError``) become ``FUSEError`` in
exactly one place, ``to_fuse_error``. Lookup counts are kept here: +1 for lookup, create,
mkdir, mknod, symlink, link, and for each readdirplus entry after ``readdir_reply`` accepted it
(never for ``.`` and ``..``). Settings that matter for speed (measured, see DESIGN.md):
writeback cache, ``keep_cache`` on open, non-zero entry/attr timeouts, ENOSYS for xattrs when
they are off (the kernel then stops asking), ``statfs``, no direct I/O (shared mmap works).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3

from pfsfs.errors import Corruption, NotFound, PfsError, ReadOnly, StoreFull
from pfsfs.model import DIR, FILE, SYMLINK, Kind

from .spinwait import SpinWindow, spin_enabled
from .tree import RO_VOL, FsError, Node, Tree

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT = 30.0  # entries and attributes of this mount's own nodes (we are their only writer)
RO_TIMEOUT = 300.0  # committed trees under .pfs/commits
BRANCH_TIMEOUT = 1.0  # .pfs/branches/<name> follows the branch
BLKSIZE = 128 << 10


CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's number


def fs_now() -> int:
    """The time stamped on changes, from the clock the kernel uses for file times. (Regular
    files' mtimes after creation come from the kernel itself: see ``write`` and ``open``.)"""
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)


# The request loop (see ``serve``): requests served back to back before it yields to the other
# tasks; how long (ms) it waits, blocking, for the next request; and how long (s) after it last
# yielded it may wait so (then it only takes requests already queued).
BURST = 64
WAIT_MS = 1
WAIT_BUDGET_NS = 5_000_000


def _fuse_fd() -> int | None:
    """The descriptor of this process's FUSE session (pyfuse3 holds one per process)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:
            continue
    return None


async def serve() -> None:
    """Run the FUSE session (after ``pyfuse3.init``) until it ends: ``pyfuse3.main`` with one
    request loop, which takes the next request without a trip through trio's scheduler when
    the kernel already has one queued.

    pyfuse3 waits for every request with ``trio.lowlevel.wait_readable``: an epoll
    re-registration and a scheduler pass per request, about a third of the worker's time when
    files are created back to back. Our handlers never await (the tree is synchronous), so
    more request tasks buy nothing; with one, a ``poll`` showing a queued request means the
    read that follows does not block, and only one task ever reads the device.

    A program working file after file (``cp -a``, ``tar x``, a create loop) sends its next
    request a few microseconds after our reply, so the loop waits for it in a blocking
    ``poll`` of up to ``WAIT_MS`` (the GIL released: background chunking runs meanwhile)
    rather than going the usual way at once: 5,600 -> 7,600 files/s created+written+statted
    (``scripts/bench_mount.py --only physical``). Before it sleeps in that ``poll`` it polls
    without sleeping for a while (``spinwait``): where waking a sleeping thread is slow (a VM
    without halt polling) that is what the next request waits for. What the waiting delays is
    the worker's other tasks (control requests, the ends of background chunking): after
    ``BURST`` requests in a row, when none comes within ``WAIT_MS``, or once
    ``WAIT_BUDGET_NS`` has passed since the loop last yielded (then only a queued request is
    taken), it waits the usual way, and they run.
    """
    fd = _fuse_fd()
    # A private function of pyfuse3 (3.3 to 3.5 at least); a version without it runs the
    # ordinary loop, only slower.
    slow = getattr(pyfuse3, "_wait_fuse_readable", None)
    if fd is not None and slow is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        served = 0
        yield_by = 0  # after this (monotonic ns), take only requests already queued
        spin = SpinWindow(spin_enabled())
        queued = [(fd, select.POLLIN)]  # anything else (POLLHUP: unmounted) goes the usual way

        def next_request() -> bool:
            """Whether a request is queued, waiting for one first while within the budget:
            polling for the spin window, then blocking for up to ``WAIT_MS``."""
            now = time.monotonic_ns()
            if now >= yield_by:
                return poller.poll(0) == queued
            if spin.ns:
                events = spin.poll(poller, now)
                if events:
                    return events == queued
            events = poller.poll(WAIT_MS)
            spin.learn(time.monotonic_ns() - now if events else None)
            return events == queued

        async def wait_readable() -> bool:
            nonlocal served, yield_by
            if served < BURST and next_request():
                served += 1
                return True
            served = 0
            ready = await slow()
            yield_by = time.monotonic_ns() + WAIT_BUDGET_NS
            return ready

        pyfuse3._wait_fuse_readable = wait_readable  # type: ignore[attr-defined]
    try:
        await pyfuse3.main(min_tasks=1, max_tasks=1)
    finally:
        if slow is not None:
            pyfuse3._wait_fuse_readable = slow  # type: ignore[attr-defined]


def to_fuse_error(exc: Exception) -> pyfuse3.FUSEError:
    """The one place where errors become errno values."""
    if isinstance(exc, FsError):
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, ReadOnly):
        return pyfuse3.FUSEError(errno.EROFS)
    if isinstance(exc, NotFound):
        return pyfuse3.FUSEError(errno.ENOENT)
    if isinstance(exc, StoreFull):
        return pyfuse3.FUSEError(errno.ENOSPC)
    if isinstance(exc, OSError) and exc.errno:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.error("I/O error in a FUSE handler: %s", exc)
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, Corruption):
        log.error("%s", exc)
        return pyfuse3.FUSEError(errno.EIO)
    if isinstance(exc, PfsError):
        log.error("%s", exc)
        return pyfuse3.FUSEError(errno.EIO)
    log.exception("unexpected error in a FUSE handler", exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def fuse_op(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise to_fuse_error(exc) from None

    return wrapper


class _DirHandle:
    __slots__ = ("ino", "entries")

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.entries: list[tuple[bytes, int]] | None = None


class PfsOperations(pyfuse3.Operations):
    """FUSE requests → ``Tree`` calls."""

    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, tree: Tree, *, xattrs: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.xattrs = xattrs
        self._files: dict[int, int] = {}  # fh → inode
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1

    # -- helpers -----------------------------------------------------------------------------
    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def attr(self, node: Node, entry_timeout: float | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        t = TIMEOUT if node.vol != RO_VOL else RO_TIMEOUT
        if node.virt is not None:
            t = BRANCH_TIMEOUT
            self.tree.pfs.refresh(node)
        a.entry_timeout = t if entry_timeout is None else entry_timeout
        a.attr_timeout = t
        a.st_mode = node.st_mode
        if node.kind == DIR:
            a.st_nlink = self.tree.dir_nlink(node) if node.nlink else 0
            a.st_size = 4096
        else:
            a.st_nlink = node.nlink
            a.st_size = node.size
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        a.st_blksize = BLKSIZE
        a.st_blocks = self._blocks(node, a.st_size)
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        return a

    def _blocks(self, node: Node, size: int) -> int:
        """512-byte blocks really held, so that ``du`` of a sparse file is what it stores."""
        if node.kind != FILE or not size:
            return (size + 511) // 512
        base = node.base
        base_alloc = base.alloc if base is not None else None
        if not node.staged:
            return ((size if base_alloc is None else base_alloc) + 511) // 512
        staging = self.tree.staging
        held = staging.held_bytes(node.ino) if staging is not None else size
        if node.base_len and base is not None:
            kept = min(node.base_len, size)
            held += kept if base_alloc is None else base_alloc * kept // max(1, base.size)
        return (min(held, size) + 511) // 512

    def _entry(self, node: Node, parent: Node | None = None) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        timeout = None
        if parent is not None and parent.virt is not None and parent.virt[0] == "branches":
            timeout = BRANCH_TIMEOUT
        return self.attr(node, timeout)

    # -- lookups and attributes ----------------------------------------------------------------
    @fuse_op
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.tree.node(parent_inode)
        return self._entry(self.tree.lookup(parent_inode, name), parent)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            for ino, n in inode_list:
                self.tree.forget(ino, n)
        except Exception:  # noqa: BLE001 - forget must never raise
            log.exception("forget failed")

    @fuse_op
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attr(self.tree.node(inode))

    @fuse_op
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_size:
            changes["size"] = attr.st_size
            if not self.enable_writeback_cache and not fields.update_mtime:
                changes["mtime"] = fs_now()
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_ctime:  # the kernel's own ctime (writeback cache), kept as it says
            changes["ctime"] = attr.st_ctime_ns
        node = self.tree.setattr(inode, fs_now(), changes)
        return self.attr(node)

    @fuse_op
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.tree.node(inode)
        if node.kind != SYMLINK:
            raise FsError(errno.EINVAL)
        return node.target

    @fuse_op
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        staging = self.tree.staging
        if staging is not None:
            frsize, blocks, avail = staging.free_bytes()
        else:
            frsize, blocks, avail = 4096, 0, 0
        s.f_bsize = BLKSIZE
        s.f_frsize = frsize
        s.f_blocks = blocks
        s.f_bfree = avail
        s.f_bavail = avail
        s.f_files = len(self.tree.nodes) + (1 << 20)
        s.f_ffree = 1 << 20
        s.f_favail = 1 << 20
        s.f_namemax = 255
        return s

    # -- namespace -----------------------------------------------------------------------------
    def _new(
        self,
        parent_inode: int,
        name: bytes,
        kind: str,
        mode: int,
        ctx: pyfuse3.RequestContext,
        rdev: int = 0,
        target: bytes = b"",
    ) -> Node:
        return self.tree.create(
            parent_inode, name, kind, mode, ctx.uid, ctx.gid, rdev, target, fs_now()
        )

    @fuse_op
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            kind = Kind.of_mode(mode)
        except ValueError:
            raise FsError(errno.EINVAL) from None
        if kind in (DIR, SYMLINK):  # mkdir and symlink have requests of their own
            raise FsError(errno.EINVAL)
        node = self._new(parent_inode, name, kind, stat.S_IMODE(mode), ctx, rdev=rdev)
        return self._entry(node)

    @fuse_op
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(self._new(parent_inode, name, "d", stat.S_IMODE(mode), ctx))

    @fuse_op
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(self._new(parent_inode, name, "l", 0o777, ctx, target=target))

    @fuse_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.tree.unlink(parent_inode, name, fs_now(), rmdir=False)

    @fuse_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.tree.unlink(parent_inode, name, fs_now(), rmdir=True)

    @fuse_op
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.tree.rename(
            parent_inode_old, name_old, parent_inode_new, name_new, flags, fs_now()
        )

    @fuse_op
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(self.tree.link(inode, new_parent_inode, new_name, fs_now()))

    # -- files ---------------------------------------------------------------------------------
    def _open_info(self, node: Node) -> pyfuse3.FileInfo:
        fh = self._fh()
        self._files[fh] = node.ino
        node.opens += 1
        virtual = node.virt is not None
        return pyfuse3.FileInfo(fh=fh, keep_cache=not virtual, direct_io=virtual)

    @fuse_op
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.tree.node(inode)
        if node.kind == DIR:
            raise FsError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self.tree.check_writable(node)
        if flags & os.O_TRUNC and node.kind == FILE and node.size:
            # libfuse enables atomic O_TRUNC: the kernel sends no setattr(size=0) of its own,
            # it empties its page cache and trusts us to empty the file. Without this an
            # overwrite with shorter content committed the old file's tail. (The new mtime
            # comes from the kernel, which stamps the truncation itself.)
            self.tree.setattr(inode, fs_now(), {"size": 0})
        elif not flags & (os.O_WRONLY | os.O_RDWR) and node.kind == FILE and not node.staged:
            self.tree.content.start_reading(node)
        return self._open_info(node)

    @fuse_op
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self._new(parent_inode, name, "f", stat.S_IMODE(mode), ctx)
        attr = self._entry(node)
        return self._open_info(node), attr

    @fuse_op
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        return self.tree.read(self.tree.node(self._files[fh]), off, size)

    @fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        # With the writeback cache the kernel owns mtime: it sends it with a setattr when it
        # writes the inode back, and that setattr may arrive before the last data pages. A
        # write stamping its own arrival time made commits disagree with what stat() showed.
        mtime = None if self.enable_writeback_cache else fs_now()
        return self.tree.write(self._files[fh], off, buf, mtime)

    async def flush(self, fh: int) -> None:
        # Nothing to do at close (journal records are appended as mutations happen); ENOSYS
        # makes the kernel stop sending FLUSH: one round trip less per close().
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_op
    async def release(self, fh: int) -> None:
        ino = self._files.pop(fh, None)
        node = self.tree.nodes.get(ino) if ino is not None else None
        if node is not None:
            node.opens -= 1
            self.tree.maybe_drop(node)
            self.tree.file_closed(node)

    @fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        staging = self.tree.staging
        if staging is not None:
            ino = self._files.get(fh)
            if ino is not None:
                staging.sync_data(ino)
            staging.sync()

    # -- directories ---------------------------------------------------------------------------
    @fuse_op
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.tree.node(inode)
        if node.kind != DIR:
            raise FsError(errno.ENOTDIR)
        fh = self._fh()
        self._dirs[fh] = _DirHandle(inode)
        return fh

    @fuse_op
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._dirs[fh]
        tree = self.tree
        d = tree.node(h.ino)
        if h.entries is None or start_id == 0:
            parent = tree.nodes.get(d.parent, d)
            h.entries = [(b".", d.ino), (b"..", parent.ino), *tree.listdir(d)]
        entries = h.entries
        nodes = tree.nodes
        timeout = BRANCH_TIMEOUT if d.virt is not None and d.virt[0] == "branches" else None
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            node = nodes.get(ino)
            if node is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self.attr(node, timeout), i + 1):
                break
            if i >= 2:
                node.lookups += 1

    @fuse_op
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @fuse_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if self.tree.staging is not None:
            self.tree.staging.sync()

    # -- xattrs (off by default: ENOSYS makes the kernel stop asking) -----------------------------
    def _xattrs_on(self) -> None:
        if not self.xattrs:
            raise FsError(errno.ENOSYS)

    @fuse_op
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._xattrs_on()
        value = (self.tree.node(inode).xattrs or {}).get(name)
        if value is None:
            raise FsError(pyfuse3.ENOATTR)
        return value

    @fuse_op
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._xattrs_on()
        return list((self.tree.node(inode).xattrs or {}).keys())

    @fuse_op
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._xattrs_on()
        if not name.startswith(b"user."):
            raise FsError(errno.ENOTSUP)
        self.tree.set_xattr(inode, name, value, fs_now())

    @fuse_op
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._xattrs_on()
        try:
            self.tree.set_xattr(inode, name, None, fs_now())
        except FsError as exc:
            if exc.errno == errno.ENODATA:
                raise FsError(pyfuse3.ENOATTR) from None
            raise
