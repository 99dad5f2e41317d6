"""Moving files between the local filesystem and commits: ``put`` (ingest) and ``get`` (export).

Ingest chunks each file with the native chunker, stores the chunks and a manifest through an
``ObjectWriter`` and returns tree entries carrying the file's POSIX metadata. Export re-checks
every name it writes (a damaged or hostile tree cannot escape the output directory), never
writes through a symlink, writes each file to a temp name and renames it into place, so a
failed read (a corrupt chunk) leaves no wrong bytes behind under the real name.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .changes import ChangeSet, check_name
from .chunking import Chunker
from .errors import InvalidInput, NotFound, PfsError, StoreError, StoreFull
from .model import DIR, FIFO, FILE, SYMLINK, Entry, ManifestChunk
from .objects import ObjectWriter

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


def store_chunks(
    chunks: Iterator[bytes | memoryview], writer: ObjectWriter, progress: Progress
) -> tuple[list[ManifestChunk], int]:
    manifest, size = [], 0
    for data in chunks:
        manifest.append(ManifestChunk(writer.put_chunk(data), len(data)))
        size += len(data)
        progress(len(data))
    return manifest, size


def file_entry(st: os.stat_result, manifest_loc: object, size: int) -> Entry:
    return Entry(
        FILE,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        size,
        manifest_loc,  # type: ignore[arg-type]
        nfiles=1,
    )


def ingest_file(
    path: bytes, st: os.stat_result, writer: ObjectWriter, chunker: Chunker, progress: Progress
) -> Entry:
    try:
        manifest, size = store_chunks(chunker.cut_file(path), writer, progress)
    except OSError as exc:
        raise InvalidInput(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None
    return file_entry(st, writer.put_manifest(manifest), size)


def ingest_stream(
    stream: BinaryIO, writer: ObjectWriter, chunker: Chunker, progress: Progress = _no_progress
) -> Entry:
    """An entry for content read from a stream (stdin): mode 0644, owned by us, mtime now."""
    import time

    manifest, size = store_chunks(chunker.cut_stream(stream), writer, progress)
    return Entry(
        FILE,
        0o644,
        os.getuid(),
        os.getgid(),
        time.time_ns(),
        size,
        writer.put_manifest(manifest),
        nfiles=1,
    )


def _special_entry(path: bytes, st: os.stat_result) -> Entry | None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return Entry(
            SYMLINK, mode, st.st_uid, st.st_gid, st.st_mtime_ns, len(target), target=target
        )
    if stat.S_ISFIFO(st.st_mode):
        return Entry(FIFO, mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    log.warning("skipping %s: sockets and device files are not stored", os.fsdecode(path))
    return None


def dir_entry(st: os.stat_result) -> Entry:
    return Entry(DIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)


def ingest_tree(
    src: Path,
    dest: tuple[bytes, ...],
    changes: ChangeSet,
    writer: ObjectWriter,
    chunker: Chunker,
    *,
    recursive: bool,
    progress: Progress = _no_progress,
) -> int:
    """Stage ``src`` (file, symlink or, with ``recursive``, directory) at ``dest``.

    Returns the number of files staged. Non-UTF-8 names are kept byte for byte.
    """
    raw = os.fsencode(src)
    try:
        st = os.lstat(raw)
    except FileNotFoundError:
        raise NotFound(f"{src} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {src}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise InvalidInput(f"{src} is a directory (use -r to put it recursively)")
        changes.put(dest, dir_entry(st).with_(ref=None))
        count = 0
        for dirpath, dirnames, filenames in os.walk(raw):
            rel = os.path.relpath(dirpath, raw)
            base = dest + (tuple(rel.split(b"/")) if rel != b"." else ())
            for name in dirnames + filenames:
                check_name(name)
                full = os.path.join(dirpath, name)
                count += _stage_one(full, base + (name,), changes, writer, chunker, progress)
        return count
    return _stage_one(raw, dest, changes, writer, chunker, progress)


def _stage_one(
    path: bytes,
    dest: tuple[bytes, ...],
    changes: ChangeSet,
    writer: ObjectWriter,
    chunker: Chunker,
    progress: Progress,
) -> int:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        changes.mkdir(dest, dir_entry(st))
        return 0
    if stat.S_ISREG(st.st_mode):
        changes.put(dest, ingest_file(path, st, writer, chunker, progress))
        return 1
    entry = _special_entry(path, st)
    if entry is not None:
        changes.put(dest, entry)
    return 0


def total_size(src: Path, recursive: bool) -> int:
    """Bytes a put will read (for the progress bar)."""
    if src.is_dir() and recursive:
        return sum(
            os.lstat(os.path.join(d, f)).st_size
            for d, _, files in os.walk(os.fsencode(src))
            for f in files
        )
    return src.stat().st_size if src.is_file() else 0


# -- export --------------------------------------------------------------------------------------


def _write_error(exc: OSError, path: bytes) -> PfsError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left on device writing {os.fsdecode(path)}")
    return StoreError(f"cannot write {os.fsdecode(path)}: {exc.strerror}")


def export_file(chunks: Iterator[bytes], entry: Entry, out: bytes) -> None:
    """Write a file atomically (temp + rename), restoring mode and mtime."""
    if os.path.islink(out):
        raise InvalidInput(f"refusing to write through the symlink {os.fsdecode(out)}")
    tmp = out + b".pfsfs-tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            for data in chunks:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.chmod(tmp, entry.mode)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.rename(tmp, out)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _write_error(exc, out) from None
        raise


def export_special(entry: Entry, out: bytes) -> None:
    try:
        if entry.type == SYMLINK:
            if os.path.lexists(out):
                os.unlink(out)
            os.symlink(entry.target, out)
        elif entry.type == FIFO:
            if not os.path.lexists(out):
                os.mkfifo(out, entry.mode)
    except OSError as exc:
        raise _write_error(exc, out) from None


def export_tree(
    repository: Repository, entry: Entry, out: bytes, progress: Progress = _no_progress
) -> int:
    """Write a directory entry's whole subtree under ``out``; returns files written.

    Directory mtimes are restored after their contents are written (writing changes them).
    """
    count = 0
    if not os.path.isdir(out):
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, out) from None
    for name, child in sorted(repository.list_dir(entry).items()):
        check_name(name)  # a damaged tree must not escape `out`
        target = os.path.join(out, name)
        if child.is_dir:
            if os.path.islink(target):
                raise InvalidInput(f"refusing to write through the symlink {os.fsdecode(target)}")
            count += export_tree(repository, child, target, progress)
        elif child.type == FILE:
            export_file(_counting(repository.iter_file(child), progress), child, target)
            count += 1
        else:
            export_special(child, target)
    try:
        os.chmod(out, entry.mode)
        os.utime(out, ns=(entry.mtime_ns, entry.mtime_ns))
    except OSError as exc:
        raise _write_error(exc, out) from None
    return count


def _counting(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for data in chunks:
        progress(len(data))
        yield data


if TYPE_CHECKING:
    from .repository import Repository
