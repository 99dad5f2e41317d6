"""``get`` of one file (``-o`` or stdout) and ``cat``: the chunks are read and verified in a
thread of their own while the caller writes (``transfer.file_chunks``). What a user sees:
the bytes that were put, whatever the size; a corrupt chunk is one error line with exit 6 and
leaves no file (and an older file at ``-o`` as it was); a reader that goes away early ends the
command cleanly; and no reading thread outlives the copy.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

from pfsfs import transfer
from pfsfs.repository import Repository

from .cli import PFSFS, fails, run
from .test_get_streams import ROOT, chunk_files, flip_bit

MiB = 1 << 20
THRESHOLD = transfer.READ_AHEAD_MIN_BYTES


def content(size: int, seed: int) -> bytes:
    """Random bytes with a run of zeros in the middle (the written file gets a hole there)."""
    rng = random.Random(seed)
    if size < 4 * MiB:
        return rng.randbytes(size)
    zeros = 2 * MiB
    head = (size - zeros) // 2
    return rng.randbytes(head) + bytes(zeros) + rng.randbytes(size - zeros - head)


SIZES = [0, 1, THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 13 * MiB + 12345]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repo holding a file of each size in ``SIZES``."""
    base = tmp_path_factory.mktemp("one-file")
    home = base / "home"
    run(home, "repo", "create", "r")
    for i, size in enumerate(SIZES):
        src = base / f"s{i}"
        src.write_bytes(content(size, seed=i))
        run(home, "put", f"r@master:/f{i}", "-f", str(src))
    return home


@pytest.mark.parametrize("i", range(len(SIZES)), ids=[str(s) for s in SIZES])
def test_get_to_a_file_and_to_stdout_and_cat_give_the_bytes_put(
    home: Path, tmp_path: Path, i: int
) -> None:
    want = content(SIZES[i], seed=i)
    out = tmp_path / "out"
    run(home, "get", f"r@master:/f{i}", "-o", str(out))
    assert out.read_bytes() == want
    assert run(home, "get", f"r@master:/f{i}").stdout == want
    assert run(home, "cat", f"r@master:/f{i}").stdout == want


def test_get_into_a_directory_names_the_file_and_replaces_an_older_copy(
    home: Path, tmp_path: Path
) -> None:
    i = len(SIZES) - 1
    (tmp_path / f"f{i}").write_bytes(b"older")
    run(home, "get", f"r@master:/f{i}", "-o", str(tmp_path))
    assert (tmp_path / f"f{i}").read_bytes() == content(SIZES[i], seed=i)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{i}"]  # no temp file left


def corrupt_home(tmp_path: Path) -> tuple[Path, bytes]:
    """A home with one 12 MiB file, a byte flipped in one of its middle chunks."""
    home = tmp_path / "home"
    src = tmp_path / "src"
    data = random.Random(3).randbytes(12 * MiB)
    src.write_bytes(data)
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/big", "-f", str(src))
    chunks = sorted(chunk_files(home), key=lambda p: p.stat().st_size)
    assert len(chunks) >= 4, "the file should span several chunks"
    flip_bit(chunks[len(chunks) // 2], 100, 0x01)
    return home, data


def test_a_corrupt_chunk_fails_get_with_exit_6_and_leaves_no_file(tmp_path: Path) -> None:
    home, _data = corrupt_home(tmp_path)
    out = tmp_path / "out"
    line = fails(home, "get", "r@master:/big", "-o", str(out), code=6)
    assert "corrupt" in line and "fsck" in line
    assert not out.exists()
    older = tmp_path / "older"
    older.write_bytes(b"what was there")
    fails(home, "get", "r@master:/big", "-o", str(older), code=6)
    assert older.read_bytes() == b"what was there"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "older", "src"]  # no temp


def test_a_corrupt_chunk_fails_cat_with_exit_6_after_the_good_bytes(tmp_path: Path) -> None:
    home, data = corrupt_home(tmp_path)
    proc = run(home, "cat", "r@master:/big", check=False)
    assert proc.returncode == 6
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0]
    # What came out before the bad chunk is the file's own beginning, nothing else.
    assert len(proc.stdout) < len(data) and data.startswith(proc.stdout)


def test_cat_into_a_reader_that_stops_early_exits_0(home: Path) -> None:
    i = len(SIZES) - 1
    env = {**os.environ, "PFSFS_HOME": str(home)}
    cat = subprocess.Popen(
        [*PFSFS, "cat", f"r@master:/f{i}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert cat.stdout is not None and cat.stderr is not None
    first = cat.stdout.read(1000)
    cat.stdout.close()  # as `head -c 1000` does
    err = cat.stderr.read()
    assert cat.wait(timeout=60) == 0, err
    assert b"Traceback" not in err and err == b""
    assert first == content(SIZES[i], seed=i)[:1000]


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs for a full disk needs root")
def test_get_of_one_file_onto_a_full_disk_exits_7_and_leaves_no_file(
    home: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], check=True)
    try:
        i = len(SIZES) - 1
        line = fails(home, "get", f"r@master:/f{i}", "-o", str(disk / "out"), code=7)
        assert "no space left on device" in line
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pfsfs-get-read"]


def test_leaving_file_chunks_early_stops_its_reading_thread(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader is held back (1 byte ahead: it waits after every chunk); the caller takes
    one chunk and leaves: the thread ends, and what it yielded is the file's beginning."""
    monkeypatch.setattr(transfer._Fetcher, "AHEAD_BYTES", 1)
    i = len(SIZES) - 1
    want = content(SIZES[i], seed=i)
    with Repository.open(home) as repository:
        root = repository.root_of(repository.branch_head("r", "master"))
        entry = repository.lookup(root, (f"f{i}".encode(),))
        with transfer.file_chunks(repository, entry) as chunks:
            first = next(chunks)
            assert reading_threads(), "a file this big is read in a thread of its own"
        assert want.startswith(first) and 0 < len(first) < len(want)
        assert reading_threads() == []
        with pytest.raises(KeyError):  # an error in the caller's block also stops it
            with transfer.file_chunks(repository, entry) as chunks:
                next(chunks)
                raise KeyError("the caller's own error")
        assert reading_threads() == []
        with transfer.file_chunks(repository, entry) as chunks:
            assert b"".join(chunks) == want
        assert reading_threads() == []


def test_a_small_file_is_read_in_the_callers_thread(home: Path) -> None:
    with Repository.open(home) as repository:
        root = repository.root_of(repository.branch_head("r", "master"))
        entry = repository.lookup(root, (b"f2",))  # THRESHOLD - 1 bytes
        with transfer.file_chunks(repository, entry) as chunks:
            assert reading_threads() == []
            assert b"".join(chunks) == content(SIZES[2], seed=2)


def test_the_zero_run_of_a_file_comes_back_as_a_hole(home: Path, tmp_path: Path) -> None:
    i = len(SIZES) - 1  # 2 MiB of zeros in its middle
    out = tmp_path / "out"
    run(home, "get", f"r@master:/f{i}", "-o", str(out))
    assert out.read_bytes() == content(SIZES[i], seed=i)
    assert out.stat().st_blocks * 512 <= SIZES[i] - MiB


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_sparse_writes_of_any_buffer_keep_the_bytes_and_skip_zero_blocks(
    tmp_path: Path, kind: type
) -> None:
    """``_write_sparse`` of bytes, a bytearray or a view (a read cache's chunk): the same
    bytes, and every aligned all-zero block left a hole, also at a buffer's ends."""
    block = transfer.HOLE_BLOCK
    rng = random.Random(kind.__name__)
    layout = [0, 1, 1, 0, 0, 1, 0]  # 1: data, 0: zeros, one HOLE_BLOCK each
    data = b"".join(rng.randbytes(block) if d else bytes(block) for d in layout)
    data += b"\0" * 100 + b"\1"  # a short last block that holds data
    parts = [data[: 3 * block + 5], data[3 * block + 5 :]]  # a chunk boundary off the blocks
    out = tmp_path / "sparse"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunks = [kind(p) if kind is not memoryview else memoryview(bytes(p)) for p in parts]
        transfer._write_all(fd, iter(chunks), holes=True)
    finally:
        os.close(fd)
    assert out.read_bytes() == data
    # Zero blocks wholly inside one chunk are holes: blocks 0 and 4 (3 straddles the chunks).
    allocated = out.stat().st_blocks * 512
    assert allocated <= len(data) - 2 * block, allocated
