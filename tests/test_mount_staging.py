"""The staging directory's bulk removals (pfsfsd.staging): after a snapshot the files still
staged keep their bytes and their open descriptors while the others go in the background; a
crash in the middle of that swap loses no staged byte; an unmount leaves no staged file behind
once the daemon has cleared its trash. And the mount's request loop (``serve``) still answers
control requests while a writer keeps it busy."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pfsfsd import staging as st
from pfsfsd.mountinfo import filesystem_of
from pfsfsd.staging import Staging

from .fusehelpers import Env, env, no_leftovers

__all__ = ["env", "no_leftovers"]


def _stage(s: Staging, ino: int, data: bytes) -> None:
    os.pwrite(s.fd(ino), data, 0)


def _wait_gone(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} was not removed"
        time.sleep(0.05)


def test_keep_only_drops_many_files_and_keeps_the_live_ones(tmp_path: Path) -> None:
    s = Staging.create(tmp_path, "m1", {})
    n = st.SWAP_MIN * 2
    for ino in range(10, 10 + n):
        _stage(s, ino, b"file %d" % ino)
    live = {10, 11}
    fd_before = s.fd(10)
    s.keep_only(live)
    assert sorted(s.data_inos()) == [10, 11]
    assert Path(s.data_path(11)).read_bytes() == b"file 11"
    os.pwrite(s.fd(10), b"FILE", 0)  # the open descriptor still is the live file
    assert s.fd(10) == fd_before
    assert Path(s.data_path(10)).read_bytes() == b"FILE 10"
    _stage(s, 12, b"again")  # a dropped inode staged again starts empty
    assert Path(s.data_path(12)).read_bytes() == b"again"
    deadline = time.monotonic() + 20
    while any(st.trash_root(tmp_path).iterdir()):
        assert time.monotonic() < deadline, "the old data directory was not removed"
        time.sleep(0.05)
    s.destroy()
    _wait_gone(tmp_path / "staging" / "m1")


def test_a_crash_in_the_middle_of_a_swap_loses_no_staged_file(tmp_path: Path) -> None:
    s = Staging.create(tmp_path, "m1", {"id": "m1"})
    _stage(s, 5, b"dead")
    _stage(s, 7, b"live")
    s.close()
    # what keep_only leaves when killed after moving the live files, before the last rename
    new = s.path / st.DATA_NEW
    new.mkdir()
    os.rename(s.data_path(7), new / "7")
    os.rename(s.data_dir, s.path / "old")
    reopened = Staging.open(tmp_path, "m1")
    assert Path(reopened.data_path(7)).read_bytes() == b"live"
    assert not new.exists()
    assert sorted(reopened.data_inos()) == [7]


def test_snapshot_of_many_files_then_rewrite_and_unmount(env: Env) -> None:
    with env.mounted("data@master", "mnt", "--create") as mp:
        for i in range(300):
            (mp / f"f{i:03d}").write_bytes(b"first %d\n" % i)
        env.run("snapshot", str(mp), "-m", "many")
        (mp / "f007").write_bytes(b"second\n")
        with open(mp / "f008", "ab") as f:
            f.write(b"more\n")
        env.unmount(mp)
    assert env.cat("data@master:/f007") == b"second\n"
    assert env.cat("data@master:/f008") == b"first 8\nmore\n"
    assert env.cat("data@master:/f299") == b"first 299\n"
    deadline = time.monotonic() + 20
    staging = env.home / "staging"
    while any(p.name != st.TRASH for p in staging.iterdir()) or any(
        (staging / st.TRASH).glob("*")
    ):
        assert time.monotonic() < deadline, f"left in staging: {list(staging.rglob('*'))[:5]}"
        time.sleep(0.1)


def test_control_requests_are_answered_while_a_writer_keeps_the_mount_busy(env: Env) -> None:
    with env.mounted("data@master", "mnt", "--create") as mp:
        stop = threading.Event()
        made: list[int] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                (mp / f"w{i:06d}").write_bytes(b"x")
                os.stat(mp / f"w{i:06d}")
                i += 1
            made.append(i)

        t = threading.Thread(target=writer)
        t.start()
        try:
            time.sleep(0.5)
            out = env.run("snapshot", str(mp), "-m", "busy", timeout=60)
            assert out.returncode == 0
        finally:
            stop.set()
            t.join(60)
        env.unmount(mp)
    assert made and made[0] > 0
    assert env.cat(f"data@master:/w{made[0] - 1:06d}") == b"x"


def test_a_swap_that_fails_at_its_last_rename_keeps_the_live_files_and_empties_the_trash(
    tmp_path: Path, monkeypatch
) -> None:
    s = Staging.create(tmp_path, "m1", {})
    n = st.SWAP_MIN * 2
    for ino in range(10, 10 + n):
        _stage(s, ino, b"file %d" % ino)
    real_rename = os.rename

    def rename(src, dst):  # the data.new -> data rename fails (EXDEV, a full inode table...)
        if Path(src).name == st.DATA_NEW:
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(st.os, "rename", rename)
    s.keep_only({10, 11})
    monkeypatch.setattr(st.os, "rename", real_rename)
    assert sorted(s.data_inos()) == [10, 11]
    assert Path(s.data_path(11)).read_bytes() == b"file 11"
    deadline = time.monotonic() + 20
    while any(st.trash_root(tmp_path).iterdir()):  # the dead files moved aside are removed
        assert time.monotonic() < deadline, "the old data directory stayed in the trash"
        time.sleep(0.05)
    s.destroy()


def test_clearing_the_trash_leaves_the_calling_threads_priority_alone(tmp_path: Path) -> None:
    (st.trash_root(tmp_path) / "m9.x").mkdir(parents=True)
    seen: list[int] = []

    def clear() -> None:
        st.clear_trash(tmp_path)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, 0)
    t = threading.Thread(target=clear)
    t.start()
    t.join()
    assert seen == [before]  # a pooled thread would otherwise run its next work at nice 19
    assert not any(st.trash_root(tmp_path).iterdir())


@contextmanager
def _on_ext4(tmp_path: Path) -> Iterator[Path]:
    """A directory on ext4: ``tmp_path`` itself if it is, else a loop-mounted image."""
    if filesystem_of(tmp_path) in ("ext2", "ext3", "ext4"):
        yield tmp_path
        return
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    subprocess.run(["mkfs.ext4", "-q", str(image), "32M"], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:  # lazily if busy: a failed test may leave a background removal running in it
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def _has_topdir_flag(path: Path) -> bool:
    """``lsattr``'s word, not our ioctl's: "T" among the directory's attributes."""
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True)
    return "T" in out.stdout.split()[0]


def test_each_mount_is_staged_in_a_directory_the_filesystem_places_apart(tmp_path: Path) -> None:
    """ext4 places the subdirectories of a directory flagged +T by the hash of their names,
    so a new mount's staged files do not take the inode numbers the last mount's trash just
    freed. The root and the trash are flagged, where a fresh data directory is made before a
    snapshot's swap renames it into place; mount directories are not (every ``data`` would go
    to one group). A root made by an older pfsfs gets the flag too."""
    with _on_ext4(tmp_path) as home:
        s = Staging.create(home, "m1", {})
        assert _has_topdir_flag(st.staging_root(home)) and not _has_topdir_flag(s.path)
        for ino in range(10, 10 + st.SWAP_MIN):
            _stage(s, ino, b"file %d" % ino)
        _stage(s, 5, b"staged")
        s.keep_only({5})
        assert _has_topdir_flag(st.trash_root(home))
        assert s.data_inos() == [5] and Path(s.data_path(5)).read_bytes() == b"staged"
        s.destroy()
        subprocess.run(["chattr", "-T", str(st.staging_root(home))], check=True)
        s = Staging.create(home, "m2", {})
        assert _has_topdir_flag(st.staging_root(home))
        s.destroy()
        deadline = time.monotonic() + 20  # the background removal is done with the filesystem
        while any(st.trash_root(home).iterdir()):
            assert time.monotonic() < deadline, "the staging directory stayed in the trash"
            time.sleep(0.05)


def test_staging_on_a_filesystem_without_the_placement_flag(tmp_path: Path) -> None:
    """tmpfs refuses the +T flag: staging works the same without it."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        home = Path(shm)
        s = Staging.create(home, "m1", {})
        _stage(s, 5, b"staged")
        s.close()
        s = Staging.open(home, "m1")
        assert Path(s.data_path(5)).read_bytes() == b"staged"
        s.destroy()


def test_a_crash_before_a_fresh_data_directory_is_in_place_leaves_nothing(tmp_path: Path) -> None:
    """A snapshot's fresh data directory is made in the trash and renamed into place. Left
    there by a crash, it is removed; but clearing the trash never empties one, which may be a
    live mount's data directory by the time its files are removed."""
    s = Staging.create(tmp_path, "m1", {})
    left = s._trash_name(st.FRESH)
    left.mkdir()  # the crash: made, never renamed
    live = s._trash_name(st.FRESH)
    live.mkdir()
    (live / "7").write_bytes(b"staged")  # what rmtree would have found had it raced the rename
    st.clear_trash(tmp_path, "m1")
    assert not left.exists()
    assert (live / "7").read_bytes() == b"staged"
    old = s._trash_name()
    old.mkdir()
    (old / "3").write_bytes(b"dead")
    st.clear_trash(tmp_path)  # every mount's, and ordinary trash whole
    assert not old.exists() and (live / "7").exists()
