"""Where a mount's uncommitted state lives: one directory per mount under ``<home>/staging/``.

Layout of ``<home>/staging/<mount-id>/``:

``meta.json``  static facts about the mount (mountpoint, options, the pid serving it), written
               atomically when the mount starts; recovery reads it to find dead mounts.
``journal``    the mount's metadata log: length-prefixed msgpack records. The first record is a
               header naming each volume's repo, branch and base commit; every later record is
               one mutation of the inode tree (see ``tree.journal``), appended with ``os.write`` as
               soon as the mutation succeeds. A process kill loses nothing the kernel accepted
               (the page cache survives); ``fsync`` of any file in the mount fsyncs the journal.
               After a snapshot the journal is replaced atomically by one holding only the new
               header, so replay work is bounded by what changed since the last commit.
``data/<ino>`` the staged bytes of one file, sparse, at the file's own offsets. Data never sits
               in daemon memory: the daemon's footprint does not depend on file sizes.

Removing thousands of data files is slow on a busy disk (an ext4 unlink waits for the journal:
10,000 took 11 s here under load), so bulk removals never happen in the foreground: after a
snapshot the few files still staged move to a fresh ``data`` directory and the old one, like a
whole staging directory at unmount, is renamed into ``<home>/staging/.trash/`` and removed by a
background thread (what a process exit interrupts, the daemon removes later; see
``clear_trash``). A crash mid-swap leaves ``data.new``: ``Staging.open`` moves its files back.

Each mount's directory, and each fresh ``data`` directory after a snapshot, starts in a block
group of its own on ext2/3/4: the staging root and the trash carry the "top of a directory
hierarchy" flag (``chattr +T``, ``spread_subdirectories``), so ext4 places each of their
subdirectories by the hash of its (unique) name, as it does the top-level ones. A fresh ``data``
is made in the trash and renamed into place (``_fresh_directory``: a rename keeps the placement).
Without this, new files take the inode numbers that the trash just freed, and on an ext4 without
a journal each new inode then checks the just-freed ones one by one (``recently_deleted``):
10,000 creates ran at ~4,000/s instead of ~7,000/s in a mount made right after an unmount, and
3,200-3,800/s after the second snapshot of a mount. (Mount directories are not flagged: every
mount's ``data`` would go to the one group that name hashes to.)

Nothing here is in LMDB: staged state is per mount and must survive the daemon, so it lives in
plain files next to the data it describes. Open mounts keep their base commits alive through
``Index.set_gc_roots("mount:<id>", ...)``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from pfsfs.errors import StoreFull

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")
JOURNAL = "journal"
META = "meta.json"
TRASH = ".trash"  # under the staging root: directories being removed in the background
DATA_NEW = "data.new"
FRESH = ".fresh-"  # in the trash: a directory being made to be renamed into place (not trash)
SWAP_MIN = 64  # fewer data files to drop than this: unlink them one by one


def staging_root(home: Path) -> Path:
    return home / "staging"


def trash_root(home: Path) -> Path:
    return staging_root(home) / TRASH


def _remove_tree(path: Path) -> None:
    """Remove a directory tree at the lowest CPU priority (a background thread's own)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def remove_in_background(path: Path) -> threading.Thread:
    thread = threading.Thread(target=_remove_tree, args=(path,), name="trash", daemon=True)
    thread.start()
    return thread


def clear_trash(home: Path, mount_id: str | None = None) -> None:
    """Remove what background removals left (a process exits before its thread is done):
    every trash directory, or only those of ``mount_id``. Blocking: run it in a thread."""
    root = trash_root(home)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        fresh = name.startswith(FRESH)
        owner = name[len(FRESH) :] if fresh else name
        if mount_id is not None and owner.split(".", 1)[0] != mount_id:
            continue
        if fresh:  # left empty by a crash; never rmtree: a live mount may be renaming it
            try:  # into place, and files moved into it then are staged data
                os.rmdir(root / name)
            except OSError:
                pass
        else:
            # not _remove_tree: this runs on a pooled thread (trio's), which must not keep
            # the lowest priority for the work it does next
            shutil.rmtree(root / name, ignore_errors=True)


_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: Path) -> None:
    """Ask the filesystem to place ``path``'s new subdirectories as it does top-level ones:
    each in the block group its name hashes to (ext4's Orlov allocator honours the flag; other
    filesystems refuse or ignore it, which only costs the speed-up)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        flags = bytearray(8)  # the kernel reads and writes an int at its start
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        current = struct.unpack_from("i", flags)[0]
        if not current & _FS_TOPDIR_FL:
            struct.pack_into("i", flags, 0, current | _FS_TOPDIR_FL)
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError as exc:  # ENOTTY, EOPNOTSUPP, EPERM...: a placement hint, nothing more
        log.debug("%s keeps its default directory placement: %s", path, exc)
    finally:
        os.close(fd)


def _placing_apart(root: Path) -> Path:
    """``root``, made if missing, flagged to place its subdirectories apart."""
    root.mkdir(parents=True, exist_ok=True)
    spread_subdirectories(root)
    return root


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_record(record: list[Any]) -> bytes:
    body = msgpack.packb(record, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def read_records(path: Path) -> Iterator[list[Any]]:
    """Records of a journal file; a torn record at the tail (a crash mid-append) ends it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + _LEN.size + n > len(data):
            log.warning("journal %s ends with a torn record; ignoring it", path)
            return
        try:
            record = msgpack.unpackb(
                data[pos + _LEN.size : pos + _LEN.size + n], raw=False, strict_map_key=False
            )
        except (ValueError, msgpack.UnpackException):
            log.warning("journal %s has an unreadable record; stopping replay there", path)
            return
        yield record
        pos += _LEN.size + n


class Staging:
    """One mount's staging directory: the journal appender and the staged data files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data_dir = path / "data"
        self._prefix = os.fspath(self.data_dir) + "/"
        self._journal_fd: int | None = None
        self._fds: dict[int, int] = {}

    @property
    def mount_id(self) -> str:
        return self.path.name

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, home: Path, mount_id: str, meta: dict[str, Any]) -> Staging:
        # Flagged at each mount (a root made by an older pfsfs gets it too), not at each swap.
        path = _placing_apart(staging_root(home)) / mount_id
        _placing_apart(trash_root(home))
        (path / "data").mkdir(parents=True)
        staging = cls(path)
        staging.write_meta(meta)
        return staging

    @classmethod
    def open(cls, home: Path, mount_id: str) -> Staging:
        path = staging_root(home) / mount_id
        if not (path / META).exists():
            raise FileNotFoundError(f"no staged mount {mount_id} in {staging_root(home)}")
        (path / "data").mkdir(exist_ok=True)
        staging = cls(path)
        staging._finish_swap()
        return staging

    def read_meta(self) -> dict[str, Any]:
        return json.loads((self.path / META).read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.path / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, self.path / META)

    def update_meta(self, **changes: Any) -> None:
        self.write_meta({**self.read_meta(), **changes})

    def records(self) -> Iterator[list[Any]]:
        return read_records(self.path / JOURNAL)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def destroy(self) -> None:
        """Remove the whole staging directory (after a commit or a discard): renamed into the
        trash at once, its files removed in the background."""
        self.close()
        trash = self._trash_name()
        try:
            os.rename(self.path, trash)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        remove_in_background(trash)

    def _trash_name(self, prefix: str = "") -> Path:
        root = trash_root(self.path.parent.parent)  # the mount's directory is home/staging/<id>
        root.mkdir(exist_ok=True)
        return root / f"{prefix}{self.mount_id}.{uuid.uuid4().hex[:12]}"

    def _fresh_directory(self, path: Path) -> None:
        """``mkdir path``, in a block group of its own (module docstring): made in the trash
        under a unique ``FRESH`` name, then renamed into place. A crash in between leaves it
        empty in the trash, where ``clear_trash`` removes it only while it is empty: a
        ``rmtree`` started just before the rename could have removed the live files moved in
        after it."""
        if path.is_dir():
            return
        made = self._trash_name(FRESH)
        made.mkdir()
        os.rename(made, path)

    # -- journal -----------------------------------------------------------------------------
    def _jfd(self) -> int:
        if self._journal_fd is None:
            self._journal_fd = os.open(
                self.path / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
        return self._journal_fd

    def append(self, record: list[Any]) -> None:
        data = encode_record(record)
        fd = self._jfd()
        try:
            written = os.write(fd, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull("no space left for the mount's staging journal") from None
            raise
        if written != len(data):  # a short append: disk full mid-record
            # Cut the torn record off: replay stops at the first torn record, so records
            # appended after it (once space is free again) would be lost in a crash.
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise StoreFull("no space left for the mount's staging journal")

    def rewrite_journal(self, records: list[list[Any]]) -> None:
        """Atomically replace the journal (after a snapshot: just the new header)."""
        tmp = self.path / (JOURNAL + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(encode_record(r) for r in records))
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        os.replace(tmp, self.path / JOURNAL)
        _fsync_dir(self.path)

    def sync(self) -> None:
        """Make the journal durable (fsync, fsyncdir and snapshot call this)."""
        os.fsync(self._jfd())

    # -- data files --------------------------------------------------------------------------
    def data_path(self, ino: int) -> str:
        return f"{self._prefix}{ino}"

    def fd(self, ino: int, create: bool = True) -> int:
        fd = self._fds.get(ino)
        if fd is None:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            fd = os.open(self.data_path(ino), flags, 0o600)
            if len(self._fds) >= 512:  # bound open descriptors; reopen on demand
                old_ino, old_fd = next(iter(self._fds.items()))
                del self._fds[old_ino]
                os.close(old_fd)
            self._fds[ino] = fd
        return fd

    def drop(self, ino: int) -> None:
        fd = self._fds.pop(ino, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.data_path(ino))
        except FileNotFoundError:
            pass

    def keep_only(self, live: set[int]) -> None:
        """Drop the data file of every inode not in ``live`` (after a snapshot). Many: the
        live ones move to a fresh data directory and the old one goes to the trash."""
        inos = self.data_inos()
        dead = [ino for ino in inos if ino not in live]
        if len(dead) < SWAP_MIN:
            for ino in dead:
                self.drop(ino)
            return
        for ino in dead:
            fd = self._fds.pop(ino, None)
            if fd is not None:
                os.close(fd)
        new = self.path / DATA_NEW
        moved = False
        try:
            self._fresh_directory(new)
            for ino in inos:
                if ino in live:  # open descriptors follow the file
                    os.rename(self.data_path(ino), new / str(ino))
            trash = self._trash_name()
            os.rename(self.data_dir, trash)
            moved = True
            os.rename(new, self.data_dir)
        except OSError as exc:  # put back what moved, then the slow way
            log.warning(
                "cannot swap the staged data directory (%s); removing files one by one", exc
            )
            self._finish_swap()
            for ino in dead:
                self.drop(ino)
            if moved:  # the old directory, now holding only dead files, is in the trash
                remove_in_background(trash)
            return
        remove_in_background(trash)

    def _finish_swap(self) -> None:
        """A crash interrupted ``keep_only``: the live files already moved go back."""
        new = self.path / DATA_NEW
        try:
            names = os.listdir(new)
        except FileNotFoundError:
            return
        self.data_dir.mkdir(exist_ok=True)
        for name in names:
            os.rename(new / name, self.data_dir / name)
        os.rmdir(new)

    def data_inos(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(self.data_dir) if n.isdigit()]
        except FileNotFoundError:
            return []

    def held_bytes(self, ino: int) -> int:
        """Bytes the file's staged data really occupies on disk (a stat of its descriptor if
        one is open, else of its path: none opened or created, none of the open ones evicted,
        on this getattr path)."""
        fd = self._fds.get(ino)
        try:
            st = os.fstat(fd) if fd is not None else os.stat(self.data_path(ino))
        except FileNotFoundError:
            return 0
        return st.st_blocks * 512

    def sync_data(self, ino: int) -> None:
        fd = self._fds.get(ino)
        if fd is not None:
            os.fsync(fd)
        elif os.path.exists(self.data_path(ino)):
            fd = self.fd(ino, create=False)
            os.fsync(fd)

    def free_bytes(self) -> tuple[int, int, int]:
        """(block size, total blocks, available blocks) of the disk holding the staging dir."""
        st = os.statvfs(self.path)
        return st.f_frsize, st.f_blocks, st.f_bavail


def list_staged(home: Path) -> list[Staging]:
    root = staging_root(home)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [Staging(root / n) for n in names if (root / n / META).exists()]
