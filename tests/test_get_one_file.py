"""``get`` of one file (``-o`` or stdout) and ``cat``: the chunks are read and verified in a
thread of their own while the caller writes (``transfer.file_chunks``). What a user sees:
the bytes that were put, whatever the size; a corrupt chunk is one error line with exit 6 and
leaves no file (and an older file at ``-o`` as it was); a reader that goes away early ends the
command cleanly; and no reading thread outlives the copy.
"""

from __future__ import annotations

import array
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pfsfs import transfer
from pfsfs.model import Entry
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


@pytest.mark.parametrize(
    "args", [("cat",), ("get",), ("get", "-o", "/dev/stdout")], ids=["cat", "get", "get-o"]
)
def test_a_reader_of_stdout_that_stops_early_is_exit_0(home: Path, args: tuple[str, ...]) -> None:
    i = len(SIZES) - 1
    env = {**os.environ, "PFSFS_HOME": str(home)}
    cat = subprocess.Popen(
        [*PFSFS, args[0], f"r@master:/f{i}", *args[1:]],
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


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, "words"])
def test_sparse_writes_of_any_buffer_keep_the_bytes_and_skip_zero_blocks(
    tmp_path: Path, kind: type
) -> None:
    """``_write_sparse`` of bytes, a bytearray or a view (a read cache's chunk): the same
    bytes, and every aligned all-zero block left a hole, also at a buffer's ends."""
    block = transfer.HOLE_BLOCK
    rng = random.Random(str(kind))
    layout = [0, 1, 1, 0, 0, 1, 0]  # 1: data, 0: zeros, one HOLE_BLOCK each
    data = b"".join(rng.randbytes(block) if d else bytes(block) for d in layout)
    data += b"\0" * 100 + b"\1"  # a short last block that holds data
    parts = [data[: 3 * block + 5], data[3 * block + 5 :]]  # a chunk boundary off the blocks
    out = tmp_path / "sparse"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if kind == "words":  # a view whose items are 4 bytes: written and counted as bytes
            parts = [data[: 3 * block + 4], data[3 * block + 4 : -1]]
            chunks = [memoryview(array.array("I", p)) for p in parts]
            data = data[:-1]
        elif kind is memoryview:
            chunks = [memoryview(bytes(p)) for p in parts]
        else:
            chunks = [kind(p) for p in parts]  # type: ignore[operator]
        transfer._write_all(fd, iter(chunks), holes=True)
    finally:
        os.close(fd)
    assert out.read_bytes() == data
    # Zero blocks are found per chunk, from its start: the first chunk's block 0, and the
    # second chunk's first and fourth blocks (file offsets 3 and 6 blocks + 5 bytes) are holes.
    allocated = out.stat().st_blocks * 512
    assert allocated <= len(data) - 2 * block, allocated


def _big_entry(repository: Repository, i: int = len(SIZES) - 1) -> Entry:
    root = repository.root_of(repository.branch_head("r", "master"))
    return repository.lookup(root, (f"f{i}".encode(),))


def _consume_in_a_thread(fn: Callable[[], object], timeout: float = 60) -> list[object]:
    """Run ``fn`` in a thread of its own; what it returned or raised (a test that would hang
    fails instead)."""
    got: list[object] = []

    def run_it() -> None:
        try:
            got.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            got.append(exc)

    t = threading.Thread(target=run_it, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the reader of file_chunks hung"
    return got


def test_a_reading_thread_that_dies_fails_the_copy_instead_of_hanging_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_push(self: object, no: int, what: object) -> bool:
        raise MemoryError("no memory for the queue")

    monkeypatch.setattr(transfer._FetchWorker, "_push", broken_push)
    with Repository.open(home) as repository:
        entry = _big_entry(repository)

        def copy() -> bytes:
            with transfer.file_chunks(repository, entry) as chunks:
                return b"".join(chunks)

        [got] = _consume_in_a_thread(copy)
    assert isinstance(got, MemoryError)


def test_a_read_ahead_hint_that_fails_is_only_a_lost_hint(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pfsfs.store.local import LocalObjectStore

    def refuse(self: object, ranges: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(LocalObjectStore, "read_ahead_ranges", refuse)
    with Repository.open(home) as repository:
        entry = _big_entry(repository)
        with transfer.file_chunks(repository, entry) as chunks:
            assert b"".join(chunks) == content(SIZES[-1], seed=len(SIZES) - 1)


def test_an_interrupt_does_not_wait_for_a_read_in_flight(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """^C (or SIGTERM, which the CLI turns into one) while a chunk read hangs (a slow S3
    GET): leaving ``file_chunks`` does not wait for it; the thread ends once it returns."""
    from pfsfs.objects import ObjectReader

    original = ObjectReader.read_raw
    release = threading.Event()
    reads = [0]

    def slow_after_the_first(self: ObjectReader, loc: object) -> bytes:
        reads[0] += 1
        if reads[0] > 2:  # the manifest, the first chunk, then a read that hangs
            release.wait(30)
        return original(self, loc)  # type: ignore[arg-type]

    with Repository.open(home) as repository:
        entry = _big_entry(repository)
        monkeypatch.setattr(ObjectReader, "read_raw", slow_after_the_first)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            with transfer.file_chunks(repository, entry) as chunks:
                next(chunks)
                raise KeyboardInterrupt
        assert time.monotonic() - start < 5
        release.set()
        for t in reading_threads():
            t.join(30)
        assert reading_threads() == []


def test_one_file_hints_a_remote_store_as_far_ahead_as_a_mount_and_a_directory_less(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How many chunks a remote store is asked for ahead of what was read: one file's reader
    ``SEQUENTIAL_AHEAD_CHUNKS`` (a mount's), each of a directory get's four streams
    ``PREFETCH``: four streams that far ahead overran the read cache's memory, and the
    blocks dropped before they were read were fetched again."""
    from pfsfs.objects import ObjectReader
    from pfsfs.store.base import SEQUENTIAL_AHEAD_CHUNKS

    from .store_backends import memory_repository

    lock = threading.Lock()
    ahead: dict[int, int] = {}  # per thread: hinted and not read yet
    most: dict[int, int] = {}
    original = ObjectReader.read_raw

    def hinted(self: ObjectReader, locs: object) -> None:
        with lock:
            me = threading.get_ident()
            ahead[me] = ahead.get(me, 0) + len(list(locs))  # type: ignore[call-overload]
            most[me] = max(most.get(me, 0), ahead[me])

    def read(self: ObjectReader, loc: object) -> bytes:
        with lock:
            me = threading.get_ident()
            ahead[me] = ahead.get(me, 0) - 1
        return original(self, loc)  # type: ignore[arg-type]

    with memory_repository(tmp_path) as repository:
        repository.create_repo("r")
        src = tmp_path / "src"
        src.mkdir()
        rng = random.Random(1)
        for i in range(4):
            (src / f"f{i}").write_bytes(rng.randbytes(72 * MiB if i == 0 else 20 * MiB))
        from pfsfs.ops.put import put, resolve_target

        put(repository, resolve_target(repository, "r@master:/d", str(src)), recursive=True)
        monkeypatch.setattr(ObjectReader, "prefetch", hinted)
        monkeypatch.setattr(ObjectReader, "read_raw", read)
        root = repository.root_of(repository.branch_head("r", "master"))
        with transfer.file_chunks(repository, repository.lookup(root, (b"d", b"f0"))) as c:
            for _chunk in c:
                pass
        # (the manifest's read counts as one: a reader is that far ahead, or one less)
        assert SEQUENTIAL_AHEAD_CHUNKS - 1 <= max(most.values()) <= SEQUENTIAL_AHEAD_CHUNKS
        most.clear()
        ahead.clear()
        transfer.export_tree(
            repository, repository.lookup(root, (b"d",)), os.fsencode(tmp_path / "out")
        )
        assert len(most) == transfer._Fetcher.WORKERS
        depth = transfer._FetchWorker.PREFETCH
        assert all(depth - 1 <= n <= depth for n in most.values()), most
