#!/usr/bin/env python3
"""A minimal, correct and fast in-memory pyfuse3 filesystem: the yardstick of bench_mount.py.

It is what "a FUSE filesystem written in Python, done right" costs on this machine, so the
benchmark can say how close pfsfs gets to it. Everything lives in memory: metadata in Python
objects, small files in a ``bytearray``, files over 1 MiB in a memfd. It uses the pyfuse3
settings that matter (measured in the design brief, shared/DESIGN.md): writeback cache,
``keep_cache`` on open, readdirplus (pyfuse3 always answers it), non-zero entry/attr timeouts,
``statfs``, ENOSYS for xattrs so the kernel stops asking, and the bdi ``read_ahead_kb`` raised
after the FUSE INIT (root only). Lookup counts are kept, so unlinked files
are freed when the kernel forgets them.

    python scripts/bench_reffs.py MOUNTPOINT [--timeout SECONDS] [--read-ahead-kb KB]

Runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or sent SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyfuse3
import trio

log = logging.getLogger("bench_reffs")

NAME_MAX = 255
SMALL = 1 << 20  # files up to this size live in a bytearray, bigger ones in a memfd
CAPACITY = 1 << 40  # what statfs reports as the size of the filesystem
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Node:
    """One inode: attributes plus data (file), target (symlink) or children (directory)."""

    __slots__ = (
        "inode",
        "mode",
        "uid",
        "gid",
        "rdev",
        "nlink",
        "atime_ns",
        "mtime_ns",
        "ctime_ns",
        "data",
        "fd",
        "length",
        "target",
        "children",
        "parent",
        "lookups",
        "opens",
    )

    def __init__(self, inode: int, mode: int, uid: int, gid: int, rdev: int = 0) -> None:
        now = time.time_ns()
        self.inode = inode
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.data = bytearray()  # the content of a small file
        self.fd = -1  # a big file's content lives in this memfd
        self.length = 0
        self.target = b""
        self.children: dict[bytes, int] = {}
        self.parent = inode
        self.lookups = 0
        self.opens = 0

    @property
    def size(self) -> int:
        if stat.S_ISLNK(self.mode):
            return len(self.target)
        if stat.S_ISDIR(self.mode):
            return 4096
        return self.length

    def truncate(self, size: int) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, size)
        elif size > SMALL:
            self._to_memfd()
            os.ftruncate(self.fd, size)
        elif size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))
        self.length = size

    def write(self, off: int, buf: bytes) -> None:
        if not buf:
            return
        end = off + len(buf)
        if self.fd < 0 and end > SMALL:
            self._to_memfd()
        if self.fd >= 0:
            view = memoryview(buf)
            done = 0
            while done < len(buf):
                done += os.pwrite(self.fd, view[done:], off + done)
        else:
            data = self.data
            if off > len(data):
                data.extend(bytes(off - len(data)))
            data[off:end] = buf
        self.length = max(self.length, end)

    def read(self, off: int, size: int) -> bytes:
        if self.fd >= 0:
            return os.pread(self.fd, min(size, max(0, self.length - off)), off)
        return bytes(self.data[off : off + size])

    def _to_memfd(self) -> None:
        """Big files move to a memfd: page-cache memory the kernel fills without first zeroing
        it (fresh anonymous memory costs a page clear per 4 KiB, which halves write speed)."""
        self.fd = os.memfd_create(f"ino{self.inode}", os.MFD_CLOEXEC)
        if self.data:
            os.pwrite(self.fd, self.data, 0)
        self.data = bytearray()

    def release_data(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.data = bytearray()


class RefFS(pyfuse3.Operations):
    """The reference filesystem: every operation a shell, Python or Make needs, in memory."""

    enable_writeback_cache = True

    def __init__(self, timeout: float = 300.0) -> None:
        super().__init__()
        self.timeout = timeout
        self.nodes: dict[int, Node] = {}
        self.next_inode = pyfuse3.ROOT_INODE + 1
        self.dir_handles: dict[int, list[tuple[bytes, int]]] = {}
        self.next_dir_handle = 1
        self.initialized = trio.Event()
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        self.nodes[root.inode] = root

    # -- helpers ---------------------------------------------------------------------------

    def init(self) -> None:
        self.initialized.set()

    def _node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _dir(self, inode: int) -> Node:
        node = self._node(inode)
        if not stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        e.entry_timeout = self.timeout
        e.attr_timeout = self.timeout
        e.st_mode = node.mode
        e.st_nlink = node.nlink
        e.st_uid = node.uid
        e.st_gid = node.gid
        e.st_rdev = node.rdev
        size = node.size
        e.st_size = size
        e.st_blksize = 4096
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns = node.atime_ns
        e.st_mtime_ns = node.mtime_ns
        e.st_ctime_ns = node.ctime_ns
        return e

    def _maybe_free(self, node: Node) -> None:
        if node.nlink == 0 and node.lookups <= 0 and node.opens <= 0:
            self.nodes.pop(node.inode, None)
            node.release_data()

    def _new(self, parent: Node, name: bytes, mode: int, ctx: Any, rdev: int = 0) -> Node:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_inode, mode, ctx.uid, ctx.gid, rdev)
        self.next_inode += 1
        self.nodes[node.inode] = node
        parent.children[name] = node.inode
        if stat.S_ISDIR(mode):
            node.parent = parent.inode
            parent.nlink += 1
        parent.mtime_ns = parent.ctime_ns = node.ctime_ns
        node.lookups += 1
        return node

    def _detach(self, parent: Node, name: bytes) -> Node:
        """Remove the entry parent/name and drop one link of its inode."""
        node = self.nodes[parent.children.pop(name)]
        now = time.time_ns()
        parent.mtime_ns = parent.ctime_ns = now
        node.ctime_ns = now
        if stat.S_ISDIR(node.mode):
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
        self._maybe_free(node)
        return node

    # -- lookups and attributes --------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        if name == b".":
            node = parent
        elif name == b"..":
            node = self._node(parent.parent)
        else:
            if len(name) > NAME_MAX:
                raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
            inode = parent.children.get(name)
            if inode is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = self.nodes[inode]
        node.lookups += 1
        return self._attr(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            node = self.nodes.get(inode)
            if node is not None and inode != pyfuse3.ROOT_INODE:
                node.lookups -= count
                self._maybe_free(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        now = time.time_ns()
        if fields.update_size:
            if not stat.S_ISREG(node.mode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            node.truncate(attr.st_size)
            node.mtime_ns = now
        if fields.update_mode:
            node.mode = (node.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now
        return self._attr(node)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        used = sum(n.length for n in self.nodes.values())
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = CAPACITY // 4096
        s.f_bfree = s.f_bavail = max(0, CAPACITY - used) // 4096
        s.f_files = 1 << 32
        s.f_ffree = s.f_favail = (1 << 32) - len(self.nodes)
        s.f_namemax = NAME_MAX
        return s

    # -- namespace -----------------------------------------------------------------------

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        return self._attr(self._new(self._dir(parent_inode), name, mode, ctx, rdev))

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFDIR | (mode & 0o7777)
        return self._attr(self._new(self._dir(parent_inode), name, mode, ctx))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = self._new(self._dir(parent_inode), name, stat.S_IFLNK | 0o777, ctx)
        node.target = target
        return self._attr(node)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        parent = self._dir(new_parent_inode)
        if len(new_name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if new_name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        parent.children[new_name] = node.inode
        node.nlink += 1
        node.lookups += 1
        node.ctime_ns = parent.mtime_ns = parent.ctime_ns = time.time_ns()
        return self._attr(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._dir(parent_inode)
        inode = parent.children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if stat.S_ISDIR(self.nodes[inode].mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._detach(parent, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._dir(parent_inode)
        inode = parent.children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self.nodes[inode]
        if not stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._detach(parent, name)

    def _is_ancestor(self, ancestor: int, inode: int) -> bool:
        while True:
            if inode == ancestor:
                return True
            if inode == pyfuse3.ROOT_INODE:
                return False
            inode = self.nodes[inode].parent

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        old_parent = self._dir(parent_inode_old)
        new_parent = self._dir(parent_inode_new)
        if len(name_new) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        inode = old_parent.children.get(name_old)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self.nodes[inode]
        target_inode = new_parent.children.get(name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if target_inode == inode:
            return
        is_dir = stat.S_ISDIR(node.mode)
        if is_dir and self._is_ancestor(inode, new_parent.inode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        now = time.time_ns()
        if flags & RENAME_EXCHANGE:
            if target_inode is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            target = self.nodes[target_inode]
            if stat.S_ISDIR(target.mode) and self._is_ancestor(target_inode, old_parent.inode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            old_parent.children[name_old] = target_inode
            new_parent.children[name_new] = inode
            for moved, parent in ((node, new_parent), (target, old_parent)):
                if stat.S_ISDIR(moved.mode) and moved.parent != parent.inode:
                    self.nodes[moved.parent].nlink -= 1
                    parent.nlink += 1
                    moved.parent = parent.inode
                moved.ctime_ns = now
        else:
            if target_inode is not None:
                if flags & RENAME_NOREPLACE:
                    raise pyfuse3.FUSEError(errno.EEXIST)
                target = self.nodes[target_inode]
                if stat.S_ISDIR(target.mode):
                    if not is_dir:
                        raise pyfuse3.FUSEError(errno.EISDIR)
                    if target.children:
                        raise pyfuse3.FUSEError(errno.ENOTEMPTY)
                elif is_dir:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                self._detach(new_parent, name_new)
            del old_parent.children[name_old]
            new_parent.children[name_new] = inode
            if is_dir and old_parent is not new_parent:
                old_parent.nlink -= 1
                new_parent.nlink += 1
                node.parent = new_parent.inode
            node.ctime_ns = now
        old_parent.mtime_ns = old_parent.ctime_ns = now
        new_parent.mtime_ns = new_parent.ctime_ns = now

    # -- files -------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
            node.truncate(0)
            node.mtime_ns = node.ctime_ns = time.time_ns()
        node.opens += 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self._new(self._dir(parent_inode), name, stat.S_IFREG | (mode & 0o7777), ctx)
        node.opens += 1
        return pyfuse3.FileInfo(fh=node.inode, keep_cache=True), self._attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.nodes[fh].read(off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.nodes[fh]
        node.write(off, buf)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    async def release(self, fh: int) -> None:
        node = self.nodes.get(fh)
        if node is not None:
            node.opens -= 1
            self._maybe_free(node)

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._dir(inode)
        fh = self.next_dir_handle
        self.next_dir_handle += 1
        self.dir_handles[fh] = list(node.children.items())
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self.dir_handles[fh]
        nodes = self.nodes
        for i in range(start_id, len(entries)):
            name, inode = entries[i]
            node = nodes.get(inode)
            if node is None:  # removed since opendir
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 1):
                return
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- xattrs: not supported, so the kernel stops asking -------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)


def unescape_mountinfo(field: str) -> str:
    """Undo the octal escapes (\\040 for a space...) of a /proc/*/mountinfo path field."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_device(mountpoint: str) -> str | None:
    """The "major:minor" of the mount at `mountpoint` (a canonical path), from
    /proc/self/mountinfo. No stat or realpath here: this process serves the mount, and any
    syscall on it would wait for an answer only this process can give."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if unescape_mountinfo(fields[4]) == mountpoint:
                found = fields[2]
    return found


def raise_read_ahead(mountpoint: str, kb: int) -> None:
    """Set the bdi read_ahead_kb of our mount: bigger read requests, fewer round trips.

    Must run after the FUSE INIT reply, which lowers read-ahead to what the kernel offered."""
    dev = mount_device(mountpoint)
    if dev is None:
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.info("could not set read_ahead_kb: %s", e)


async def serve(fs: RefFS, mountpoint: str, read_ahead_kb: int) -> None:
    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async def after_init() -> None:
        await fs.initialized.wait()  # set in init(), before the INIT reply is written
        await trio.sleep(0)  # the reply is written before this task runs again
        raise_read_ahead(mountpoint, read_ahead_kb)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        if read_ahead_kb > 0 and os.geteuid() == 0:
            nursery.start_soon(after_init)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--timeout", type=float, default=300.0, help="entry/attr timeout (s)")
    parser.add_argument("--read-ahead-kb", type=int, default=1024, help="0 leaves it alone")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)

    mountpoint = os.path.realpath(args.mountpoint)  # before mounting: see mount_device()
    options = set(pyfuse3.default_options)
    options |= {"fsname=benchref", "noatime"}
    fs = RefFS(timeout=args.timeout)
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(serve, fs, mountpoint, args.read_ahead_kb)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
