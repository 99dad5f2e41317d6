"""Damage on disk, found and repaired through the real CLI: a flipped byte in every object kind
of the local store, in the index's cached commits, a damaged LMDB page of the index (every
command says so in one line; ``fsck --rebuild-index`` rebuilds it and keeps what is readable of
this machine's own records), and the temp files a ``put`` killed with SIGKILL leaves (gc)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

from pfsfs.index import Index
from pfsfs.model import Locator

from .cli import PFSFS, fails, run

PAGE = 4096


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def flip(path: Path, offset: int) -> None:
    """Flip one bit of the byte at ``offset`` of ``path``, in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def blobs(home: Path, kind: str) -> list[Path]:
    return sorted(p for p in (home / "store" / kind).rglob("*") if p.is_file())


def two_commits(home: Path, tmp_path: Path) -> None:
    run(home, "repo", "create", "r")
    small = tmp_path / "small"
    small.write_bytes(b"hello\n")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(600 << 10))  # standalone chunks (>= 128 KiB)
    run(home, "put", "r@master", "-f", str(small), "-m", "first")
    run(home, "put", "r@master:/big", "-f", str(big), "-m", "second")


def test_corrupt_commit_blob_is_found_by_deep_fsck_though_the_index_caches_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    commits = blobs(home, "commit")
    assert len(commits) == 2
    flip(commits[0], 20)
    problems = run(home, "fsck", "--deep", check=False)
    assert problems.returncode == 6
    assert f"commit {commits[0].name[:12]}" in out(problems)
    assert f"is corrupt in commit/{commits[0].name} (hash mismatch)" in out(problems)


@pytest.mark.parametrize("kind", ["chunk", "data pack", "meta pack"])
def test_flipped_byte_in_each_object_kind_is_named_by_deep_fsck(tmp_path: Path, kind: str) -> None:
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    run(home, "fsck", "--deep")
    if kind == "chunk":
        target = blobs(home, "chunk")[0]
    else:
        tag = "44" if kind == "data pack" else "4d"  # b"D", b"M": the first byte of the name
        target = next(p for p in blobs(home, "pack") if p.name.startswith(tag))
    flip(target, target.stat().st_size // 2)
    if kind != "meta pack":  # trees and manifests are read (so verified) by every walk
        assert run(home, "fsck").returncode == 0  # the sizes are right: only --deep can tell
    problems = run(home, "fsck", "--deep", check=False)
    assert problems.returncode == 6
    assert target.name in out(problems)
    assert "corrupt (hash mismatch)" in out(problems)


def test_ref_to_a_missing_commit_is_a_problem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    head = out(run(home, "log", "r@master", "-n", "1")).split()[0]
    target = next(p for p in blobs(home, "commit") if p.name.startswith(head))
    target.unlink()
    problems = run(home, "fsck", check=False)
    assert problems.returncode == 6
    assert f"commit {head} (the head of ref branches/r/master) is missing" in out(problems)


def test_flipped_byte_in_the_index_cached_commit_never_shows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    data = home / "index" / "data.mdb"
    raw = data.read_bytes()
    hits = [i for i in range(len(raw)) if raw.startswith(b"first", i)]
    assert hits
    for i in hits:  # every copy LMDB holds (live and free pages alike)
        flip(data, i)
    problems = run(home, "fsck", "--deep", check=False)
    assert problems.returncode == 6
    assert "index: the cached copy of commit" in out(problems)
    assert run(home, "fsck", "--deep").returncode == 0  # the bad copy was dropped
    # And the log never shows a damaged copy: damage again, read it.
    raw = data.read_bytes()
    for i in [i for i in range(len(raw)) if raw.startswith(b"first", i)]:
        flip(data, i)
    log = out(run(home, "log", "r@master"))
    assert "first" in log and "girst" not in log


def compact(home: Path) -> Path:
    """Rewrite the index without free pages (each record then lives in one page only)."""
    path = home / "index"
    copy = home / "index.compact"
    copy.mkdir()
    env = lmdb.open(str(path), max_dbs=32)
    env.copy(str(copy), compact=True)
    env.close()
    os.replace(copy / "data.mdb", path / "data.mdb")
    copy.rmdir()
    return path / "data.mdb"


def leaf_pages_with(data: Path, needle: bytes) -> list[int]:
    raw = data.read_bytes()
    found = []
    for n in range(2, len(raw) // PAGE):
        page = raw[n * PAGE : (n + 1) * PAGE]
        flags = int.from_bytes(page[10:12], "little")
        if flags & 0x02 and needle in page:  # P_LEAF
            found.append(n)
    return found


def zero_page(data: Path, n: int) -> None:
    with open(data, "r+b") as f:
        f.seek(n * PAGE)
        f.write(b"\0" * PAGE)


def with_gc_roots(home: Path, owners: int) -> None:
    """Machine-local records (as pipelines and the daemon write them): gc roots."""
    index = Index(home / "index")
    try:
        for i in range(owners):
            index.set_gc_roots(f"owner-{i:04d}", [], [Locator(bytes([i % 256]) * 32, b"", 0, 1)])
    finally:
        index.close()


def test_damaged_main_page_every_command_says_so_and_rebuild_repairs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    with_gc_roots(home, 3)
    data = compact(home)
    (main,) = leaf_pages_with(data, b"gc_roots")  # the page listing the named databases
    zero_page(data, main)
    for args in (["log", "r@master"], ["ls", "r@master"], ["fsck"], ["gc"], ["stats"]):
        line = fails(home, *args, code=6)
        assert f"the index at {home / 'index'} is damaged" in line
        assert "pfsfs fsck --rebuild-index" in line
    rebuilt = run(home, "fsck", "--rebuild-index")
    text = out(rebuilt)
    assert "rebuilt the index" in text and "2 commits" in text
    assert "LOST gc_roots" in text  # what it could not recover is said
    assert "ok: no problems found" in text
    assert list(home.glob("index.damaged-*.mdb"))
    assert "first" in out(run(home, "log", "r@master"))
    run(home, "fsck", "--deep")
    assert out(run(home, "cat", "r@master:/small")) == "hello\n"


def test_damaged_leaf_rebuild_keeps_every_readable_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    with_gc_roots(home, 400)
    data = compact(home)
    pages = leaf_pages_with(data, b"owner-")
    assert len(pages) >= 3
    middle = pages[len(pages) // 2]
    page = data.read_bytes()[middle * PAGE : (middle + 1) * PAGE]
    lost = {i for i in range(400) if f"owner-{i:04d}".encode() in page}
    zero_page(data, middle)
    line = fails(home, "gc", code=6)  # gc reads every gc root: it must not guess
    assert "is damaged" in line and "--rebuild-index" in line
    text = out(run(home, "fsck", "--rebuild-index"))
    assert f"LOST gc_roots: {400 - len(lost)} records copied, {len(lost)} lost" in text
    index = Index(home / "index")
    try:
        with index.read() as txn:
            owners = {bytes(k).decode() for k, _ in txn.cursor(db=index.db("gc_roots"))}
    finally:
        index.close()
    assert owners == {f"owner-{i:04d}" for i in range(400) if i not in lost}
    assert "first" in out(run(home, "log", "r@master"))
    run(home, "fsck", "--deep")


def test_damaged_ref_table_is_one_error_naming_it(tmp_path: Path) -> None:
    """The local store's refs are the truth (no rebuild): the error says so and names it."""
    home = tmp_path / "home"
    two_commits(home, tmp_path)
    data = home / "store" / "refs" / "data.mdb"
    pages = leaf_pages_with(data, b"branches/r/master")
    assert pages
    for n in pages:
        zero_page(data, n)
    for args in (["log", "r@master"], ["repo", "list"]):
        line = fails(home, *args, code=6)
        assert f"the ref table in {home / 'store' / 'refs'} is damaged" in line
        assert "restore it from a backup" in line
    problems = run(home, "fsck", check=False)
    assert problems.returncode == 6 and "the ref table in" in out(problems)


def test_gc_removes_temp_blobs_of_a_killed_put(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "r")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(4 << 20))  # 256 MiB: a put takes a few seconds here
    env = {**os.environ, "PFSFS_HOME": str(home)}
    temps: list[Path] = []
    for _attempt in range(5):
        proc = subprocess.Popen(
            [*PFSFS, "put", "r@master", "-f", str(big)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            temps = list((home / "store").rglob(".*.tmp"))
            if temps:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        temps = list((home / "store").rglob(".*.tmp"))
        if temps:
            break
    assert temps, "no put was caught mid-write"
    assert "temp file" not in out(run(home, "gc", "--grace", "3600"))  # too young
    assert list((home / "store").rglob(".*.tmp"))
    report = out(run(home, "gc"))
    assert re.search(r"removed \d+ temp files? of interrupted writes", report), report
    assert not list((home / "store").rglob(".*.tmp"))
    run(home, "fsck", "--deep")
    run(home, "put", "r@master", "-f", str(big))  # the store works as before
    run(home, "fsck")


def test_gc_keeps_the_temp_file_of_a_live_writer(tmp_path: Path) -> None:
    """Another home sharing this local store may be writing now: its temp file stays."""
    home = tmp_path / "home"
    run(home, "repo", "create", "r")
    fan = home / "store" / "chunk" / "ab"
    fan.mkdir(parents=True)
    live = fan / f".ab{'0' * 62}.{os.getpid()}.1.tmp"  # this test process: alive
    dead = fan / f".ab{'1' * 62}.{2**22 + 7}.1.tmp"  # above pid_max: no such process
    for p in (live, dead):
        p.write_bytes(b"x" * 10)
        old = time.time() - 7200
        os.utime(p, (old, old))
    run(home, "gc")
    assert live.exists() and not dead.exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_deep_fsck_does_not_blame_objects_written_while_it_runs(tmp_path: Path) -> None:
    """A writer may store and index objects after fsck listed the store (a mount's snapshot
    running meanwhile): those index entries are sound, not "missing"."""
    from pfsfs.maintenance import _check_index_objects
    from pfsfs.repository import Repository

    with Repository.open(tmp_path / "home") as repo:
        truth = repo.store
        listed = {info.key: info.size for info in truth.list()}  # fsck's listing, first
        with repo.writer() as w:  # then a writer stores and indexes a new object
            w.put_chunk(os.urandom(200 << 10))
        assert _check_index_objects(repo, truth, set(), listed) == []
