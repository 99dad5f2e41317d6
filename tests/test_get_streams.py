"""``get`` of a directory writes several files at once (``transfer._Fetcher``'s streams): what a
user sees when one of them fails, and that links, modes and times still come back.

A failure in any stream (a corrupt chunk, a full disk) ends the whole ``get`` with its one-line
error and exit code, leaves no temp file behind, and never leaves a partly written file under
its real name: every file that is there holds exactly what was put.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli import fails, run

MiB = 1 << 20
ROOT = os.geteuid() == 0


def chunk_files(home: Path) -> set[Path]:
    return {p for p in (home / "store" / "chunk").rglob("*") if p.is_file()}


def flip_bit(path: Path, offset: int, mask: int) -> None:
    """Corrupt a stored file in place: the byte at ``offset`` XOR ``mask``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def make_tree(src: Path, seed: int) -> dict[str, bytes]:
    """Sixteen files of 1-3 MiB in nested directories, by seed."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(16):
        rel = f"d{i % 3}/sub{i % 2}/f{i:02d}" if i % 4 else f"f{i:02d}"
        data = rng.randbytes(rng.randint(1 * MiB, 3 * MiB))
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = data
    return files


def check_no_partial_files(out: Path, files: dict[str, bytes]) -> int:
    """No temp file anywhere under ``out``; each file there equals its source. Returns how
    many files are there."""
    found = 0
    for root, _dirs, names in os.walk(out):
        for name in names:
            assert not name.startswith(".pfsfs-"), f"temp file left: {root}/{name}"
            rel = os.path.relpath(os.path.join(root, name), out)
            assert Path(root, name).read_bytes() == files[rel], f"{rel} is not what was put"
            found += 1
    return found


def test_a_corrupt_chunk_in_one_file_fails_the_get_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src"
    files = make_tree(src, seed=7)
    run(home, "repo", "create", "r")
    # The victim is put first, alone, so the chunk files it adds are its own.
    victim = "d0/sub1/f09"
    run(home, "put", f"r@master:/{victim}", "-f", str(src / victim))
    own = sorted(chunk_files(home))
    run(home, "put", "-r", "-f", f"{src}/", "r@master")
    flip_bit(own[len(own) // 2], 1000, 0x40)

    out = tmp_path / "out"
    line = fails(home, "get", "r@master", "-o", str(out), code=6)
    assert "corrupt" in line and "fsck" in line
    assert not (out / victim).exists()
    check_no_partial_files(out, files)


def test_get_writes_links_modes_and_times_of_a_tree_written_by_several_streams(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src"
    files = make_tree(src, seed=11)
    # A hard link whose first name (in get's order) is a big file written by another thread,
    # a read-only directory holding files, and directory mtimes set after their files.
    os.link(src / "d2/sub0/f02", src / "f12-link")
    (src / "d0" / "sub1").chmod(0o555)
    for i, d in enumerate(sorted(p for p in src.rglob("*") if p.is_dir())):
        os.utime(d, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    try:
        run(home, "repo", "create", "r")
        run(home, "put", "-r", "-f", f"{src}/", "r@master")
        out = tmp_path / "out"
        run(home, "get", "r@master", "-o", str(out))
        for rel, data in files.items():
            assert (out / rel).read_bytes() == data, rel
        assert os.stat(out / "f12-link").st_ino == os.stat(out / "d2/sub0/f02").st_ino
        assert stat.S_IMODE(os.stat(out / "d0" / "sub1").st_mode) == 0o555
        for d in (p for p in src.rglob("*") if p.is_dir()):
            rel = d.relative_to(src)
            assert os.stat(out / rel).st_mtime_ns == os.stat(d).st_mtime_ns, rel
    finally:
        for d in (src, tmp_path / "out"):
            for root, dirs, _names in os.walk(d):
                for name in dirs:
                    os.chmod(os.path.join(root, name), 0o755)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs for a full disk needs root")
def test_get_onto_a_full_disk_exits_7_and_leaves_no_partial_file(
    tmp_path: Path, small_disk: Path
) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src"
    files = make_tree(src, seed=3)  # ~30 MiB onto 12 MiB
    run(home, "repo", "create", "r")
    run(home, "put", "-r", "-f", f"{src}/", "r@master")
    out = small_disk / "out"
    line = fails(home, "get", "r@master", "-o", str(out), code=7)
    assert "no space left on device" in line
    assert check_no_partial_files(out, files) < len(files)


def test_a_walk_far_ahead_of_the_writers_waits_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With at most 2 files and 1 directory in flight, the walk waits for the writers (the
    bound on what a get of millions of files holds) and everything still comes back."""
    from pfsfs import transfer
    from pfsfs.repository import Repository

    home = tmp_path / "home"
    src = tmp_path / "src"
    files = make_tree(src, seed=5)
    for i in range(40):  # and many small files in one directory
        (src / "many").mkdir(exist_ok=True)
        (src / "many" / f"s{i:02d}").write_bytes(b"%d\n" % i)
        files[f"many/s{i:02d}"] = b"%d\n" % i
    run(home, "repo", "create", "r")
    run(home, "put", "-r", "-f", f"{src}/", "r@master")
    monkeypatch.setattr(transfer._Export, "FILES_PENDING", 2)
    monkeypatch.setattr(transfer._Export, "DIRS_PENDING", 1)
    out = tmp_path / "out"
    with Repository.open(home) as repository:
        root = repository.root_of(repository.branch_head("r", "master"))
        stats = transfer.export_tree(repository, root, os.fsencode(out))
    assert stats.files == len(files)
    assert check_no_partial_files(out, files) == len(files)
