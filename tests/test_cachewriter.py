"""The read cache's background writer and its direct-I/O file writes, on real files.

``CacheWriter.submit_copy`` copies a block into one of a few reusable buffers and keeps no
reference to the caller's memory; with no buffer free, a block is not cached (never waited for);
``DirectFileWriter`` writes exact lengths past the page cache, and falls back to ordinary writes
where the filesystem refuses ``O_DIRECT``.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pfsfs.store import cachewriter, directio
from pfsfs.store.cachewriter import CacheWriter
from pfsfs.store.directio import DirectFileWriter, padded

from .pagecache import DIRECT_IO_FILESYSTEMS, filesystem_of, resident_bytes


@contextmanager
def _writer(slots: int, gate: threading.Event | None = None) -> Iterator[CacheWriter]:
    """A writer of ``slots`` 64 KiB slots whose block writes wait for ``gate``; closed after
    (the gate opened first, so a test that fails cannot leave its thread waiting)."""
    direct = DirectFileWriter()

    def write_copy(path: Path, slot: memoryview, length: int) -> None:
        if gate is not None:
            gate.wait(10)
        direct.write(path, slot, length)

    def write(path: Path, data: bytes | memoryview) -> None:
        path.write_bytes(data)

    writer = CacheWriter(write, write_copy=write_copy, copy_slots=slots, slot_bytes=64 << 10)
    try:
        yield writer
    finally:
        if gate is not None:
            gate.set()
        writer.close()


def test_a_copied_block_keeps_no_reference_to_the_callers_memory(tmp_path: Path) -> None:
    """The caller may free or reuse its buffer at once: the file holds what was submitted."""
    data = os.urandom(50_000)
    buffer = bytearray(data)
    gate = threading.Event()
    with _writer(4, gate) as writer:
        view = memoryview(buffer)
        writer.submit_copy(tmp_path / "block", view[:40_000])
        view.release()
        buffer.extend(b"more")  # a bytearray still exported elsewhere cannot grow
        buffer[:] = bytes(len(buffer))
        gate.set()
        writer.drain()
        assert (tmp_path / "block").read_bytes() == data[:40_000]


def test_blocks_beyond_the_free_slots_are_dropped_and_slots_come_back(tmp_path: Path) -> None:
    gate = threading.Event()
    with _writer(2, gate) as writer:
        blocks = {tmp_path / f"b{i}": os.urandom(10_000 + i) for i in range(6)}
        paths = list(blocks)
        for path in paths[:4]:
            writer.submit_copy(path, blocks[path])  # two fit; two find no free slot
        assert writer.pending(paths[1]) == blocks[paths[1]]
        assert writer.pending(paths[2]) is None
        gate.set()
        writer.drain()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b0", "b1"]
        gate.clear()
        writer.submit_copy(paths[4], blocks[paths[4]])
        writer.submit_copy(paths[5], blocks[paths[5]])
        writer.cancel(paths[5])  # a cancelled block gives its slot back too
        writer.submit_copy(paths[2], blocks[paths[2]])
        gate.set()
        writer.drain()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b0", "b1", "b2", "b4"]
        for path in tmp_path.iterdir():
            assert path.read_bytes() == blocks[path]


def test_a_block_bigger_than_a_slot_is_not_cached(tmp_path: Path) -> None:
    with _writer(2) as writer:
        writer.submit_copy(tmp_path / "big", os.urandom((64 << 10) + 1))
        writer.drain()
        assert not (tmp_path / "big").exists()


def _page_buffer(data: bytes) -> memoryview:
    region = mmap.mmap(-1, max(padded(len(data)), directio.PAGE))
    region[: len(data)] = data
    return memoryview(region)


@pytest.mark.parametrize("length", [0, 1, 4095, 4096, 4097, (1 << 20) + 5])
def test_direct_writes_keep_the_exact_length_and_skip_the_page_cache(
    tmp_path: Path, length: int
) -> None:
    data = os.urandom(length)
    path = tmp_path / "block"
    writer = DirectFileWriter()
    writer.write(path, _page_buffer(b"stale" * 300_000), 1_500_000)
    writer.write(path, _page_buffer(data), length)  # over an older, longer file
    fs = filesystem_of(tmp_path)
    if fs in DIRECT_IO_FILESYSTEMS:
        assert writer.direct, f"{fs} takes O_DIRECT"
        assert resident_bytes(path) == 0
    assert path.read_bytes() == data


def test_a_filesystem_refusing_o_direct_gets_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    refused = []

    def no_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(directio.os, "open", no_direct)
    writer = DirectFileWriter()
    data = os.urandom(10_000)
    for name in ("a", "b"):
        writer.write(tmp_path / name, _page_buffer(data), len(data))
        assert (tmp_path / name).read_bytes() == data
    assert not writer.direct
    assert len(refused) == (1 if hasattr(os, "O_DIRECT") else 0)  # asked once, then not again


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="this OS has no O_DIRECT")
def test_a_refused_direct_write_is_written_the_ordinary_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that opens with O_DIRECT but refuses the write: that file is written
    ordinarily, and O_DIRECT is tried again for the next."""
    real_write = os.write
    refusals = iter([True])

    def refuse_once(fd: int, data: bytes | memoryview) -> int:
        if next(refusals, False):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", refuse_once)
    writer = DirectFileWriter()
    data = os.urandom(10_000)
    writer.write(tmp_path / "a", _page_buffer(data), len(data))
    assert (tmp_path / "a").read_bytes() == data
    assert writer.direct


def test_a_pending_copy_stays_right_after_its_slot_is_reused(tmp_path: Path) -> None:
    gate = threading.Event()
    with _writer(1, gate) as writer:
        first, second = os.urandom(20_000), os.urandom(20_000)
        writer.submit_copy(tmp_path / "first", first)
        held = writer.pending(tmp_path / "first")
        gate.set()
        writer.drain()
        writer.submit_copy(tmp_path / "second", second)  # the one slot, again
        writer.drain()
        assert held == first
        assert (tmp_path / "second").read_bytes() == second


def test_a_failed_write_gives_its_slot_back(tmp_path: Path) -> None:
    with _writer(1) as writer:
        writer.submit_copy(tmp_path / "missing-dir" / "a", b"x" * 100)  # cannot be written
        writer.drain()
        writer.submit_copy(tmp_path / "b", b"y" * 100)
        writer.drain()
        assert (tmp_path / "b").read_bytes() == b"y" * 100


def test_no_memory_for_write_slots_leaves_blocks_uncached_without_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(cachewriter.mmap, "mmap", no_memory)
    with _writer(4) as writer:
        writer.submit_copy(tmp_path / "a", b"x" * 100)
        writer.submit_copy(tmp_path / "b", b"x" * 100)
        writer.drain()
        assert not list(tmp_path.iterdir())
