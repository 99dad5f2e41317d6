"""POSIX behaviour of a read-write mount: the calls shell tools, Python and Make rely on."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fusehelpers import Env, env, force_unmount, no_leftovers, sh, write
from .mountmodel import Tree, check_commit, check_remount, unmount_checked

__all__ = ["env", "no_leftovers"]

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def mnt(env: Env) -> Iterator[Path]:
    """A read-write mount of a new repo (tests end with ``unmount_checked``: the commit, read
    back with ``pfsfs get`` and mounted again, is exactly what the mount showed last)."""
    with env.mounted("data@master", "mnt", "--create") as mp:
        yield mp


def test_python_file_api(env: Env, mnt: Path) -> None:
    p = mnt / "f.bin"
    with open(p, "wb") as f:
        f.write(b"a" * 10_000)
        f.seek(5)
        f.write(b"BBB")
        f.seek(20_000)
        f.write(b"end")
    data = p.read_bytes()
    assert len(data) == 20_003
    assert data[:5] == b"aaaaa" and data[5:8] == b"BBB" and data[8:10_000] == b"a" * 9_992
    assert data[10_000:20_000] == bytes(10_000) and data[-3:] == b"end"
    with open(p, "r+b") as f:
        f.truncate(7)
    assert p.read_bytes() == b"aaaaaBB"
    os.truncate(p, 100)
    assert p.read_bytes() == b"aaaaaBB" + bytes(93)
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 100 and st.st_nlink == 1
    fd = os.open(mnt / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(mnt / "excl").st_mode) == 0o640 & ~_umask()
    with pytest.raises(FileExistsError):
        os.open(mnt / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.utime(p, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    assert os.stat(p).st_mtime_ns == 1_000_000_000_123_456_789
    unmount_checked(env, mnt, "data@master")


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_append(env: Env, mnt: Path) -> None:
    p = mnt / "log"
    for i in range(50):
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"line {i}\n".encode())
        os.close(fd)
    lines = p.read_text().splitlines()
    assert lines == [f"line {i}" for i in range(50)]
    sh(f"echo more >> {p}")
    assert p.read_text().endswith("line 49\nmore\n")
    unmount_checked(env, mnt, "data@master")


def test_shared_mmap(env: Env, mnt: Path) -> None:
    p = mnt / "mapped"
    write(p, bytes(1 << 16))
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[100:105] = b"hello"
        m.flush()
        m.close()
    assert p.read_bytes()[100:105] == b"hello"
    with open(p, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert m[100:105] == b"hello"
        m.close()
    unmount_checked(env, mnt, "data@master")


def test_rename(env: Env, mnt: Path) -> None:
    write(mnt / "a", "A")
    write(mnt / "b", "B")
    os.rename(mnt / "a", mnt / "b")  # overwrite
    assert not (mnt / "a").exists() and (mnt / "b").read_text() == "A"
    os.makedirs(mnt / "d1" / "inner")
    write(mnt / "d1" / "inner" / "f", "F")
    os.mkdir(mnt / "d2")
    os.rename(mnt / "d1", mnt / "d2")  # over an empty directory
    assert (mnt / "d2" / "inner" / "f").read_text() == "F"
    os.mkdir(mnt / "full")
    write(mnt / "full" / "x", "x")
    with pytest.raises(OSError) as exc:
        os.rename(mnt / "d2", mnt / "full")
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as exc:
        os.rename(mnt / "d2", mnt / "d2" / "inner" / "loop")
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(IsADirectoryError):
        os.rename(mnt / "b", mnt / "full")
    with pytest.raises(NotADirectoryError):
        os.rename(mnt / "full", mnt / "b")
    unmount_checked(env, mnt, "data@master")


def test_rename_flags(env: Env, mnt: Path) -> None:
    write(mnt / "x", "X")
    write(mnt / "y", "Y")
    with pytest.raises(OSError) as exc:
        renameat2(mnt / "x", mnt / "y", RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    renameat2(mnt / "x", mnt / "z", RENAME_NOREPLACE)
    assert (mnt / "z").read_text() == "X"
    renameat2(mnt / "z", mnt / "y", RENAME_EXCHANGE)
    assert (mnt / "z").read_text() == "Y" and (mnt / "y").read_text() == "X"
    os.mkdir(mnt / "dir")
    renameat2(mnt / "dir", mnt / "y", RENAME_EXCHANGE)
    assert (mnt / "dir").read_text() == "X" and (mnt / "y").is_dir()
    unmount_checked(env, mnt, "data@master")


def test_name_length(env: Env, mnt: Path) -> None:
    ok = mnt / ("n" * 255)
    write(ok, "fine")
    assert ok.read_text() == "fine"
    assert ("n" * 255) in os.listdir(mnt)
    with pytest.raises(OSError) as exc:
        write(mnt / ("n" * 256), "too long")
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as exc:
        os.mkdir(mnt / ("d" * 256))
    assert exc.value.errno == errno.ENAMETOOLONG
    view = Tree(mnt)
    commit = env.unmount(mnt)
    check_remount(env, view, f"data@{commit}")  # `pfsfs get` of it: the test below


def test_get_of_a_255_byte_name(env: Env, mnt: Path) -> None:
    write(mnt / ("n" * 255), "fine")
    unmount_checked(env, mnt, "data@master")


def test_links_and_special_files(env: Env, mnt: Path) -> None:
    write(mnt / "orig", "content")
    os.link(mnt / "orig", mnt / "alias")
    assert os.stat(mnt / "orig").st_nlink == 2
    assert os.stat(mnt / "orig").st_ino == os.stat(mnt / "alias").st_ino
    write(mnt / "alias", " more", "ab")
    assert (mnt / "orig").read_text() == "content more"
    os.unlink(mnt / "orig")
    assert os.stat(mnt / "alias").st_nlink == 1
    os.symlink("alias", mnt / "sym")
    assert os.readlink(mnt / "sym") == "alias" and (mnt / "sym").read_text() == "content more"
    os.mkfifo(mnt / "fifo", 0o620)
    st = os.lstat(mnt / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    os.chmod(mnt / "alias", 0o4755)
    assert stat.S_IMODE(os.stat(mnt / "alias").st_mode) == 0o4755
    os.chown(mnt / "alias", 1234, 5678)
    st = os.stat(mnt / "alias")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    with pytest.raises(PermissionError):
        os.link(mnt, mnt / "dirlink")
    commit = env.out("snapshot", str(mnt), "-m", "owners")
    with env.mounted(f"data@{commit}", "old", "--read-only") as old:
        st = os.stat(old / "alias")
        want = os.stat(mnt / "alias")  # (chown cleared the set-uid bit)
        assert (st.st_uid, st.st_gid, st.st_mode) == (1234, 5678, want.st_mode)
    unmount_checked(env, mnt, "data@master")


def test_unlinked_open_file(env: Env, mnt: Path) -> None:
    p = mnt / "tmp"
    with open(p, "w+b") as f:
        f.write(b"still here")
        f.flush()
        os.unlink(p)
        assert not p.exists()
        f.seek(0)
        assert f.read() == b"still here"
        f.write(b"!")
    assert os.listdir(mnt) == []
    unmount_checked(env, mnt, "data@master")  # an empty tree


def test_directories(env: Env, mnt: Path) -> None:
    os.makedirs(mnt / "a" / "b" / "c")
    assert os.stat(mnt / "a").st_nlink == 3
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt / "a")
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        write(mnt / "file", "x")
        os.rmdir(mnt / "file")
    sh(f"rm -r {mnt}/a")
    assert sorted(os.listdir(mnt)) == ["file"]
    names = [f"entry{i:05d}" for i in range(3000)]
    os.mkdir(mnt / "many")
    for n in names:
        os.close(os.open(mnt / "many" / n, os.O_CREAT | os.O_WRONLY))
    assert sorted(os.listdir(mnt / "many")) == names
    assert len(sh(f"ls -la {mnt}/many").splitlines()) == 3000 + 3
    unmount_checked(env, mnt, "data@master")


def test_statfs_and_xattrs_off(env: Env, mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_namemax == 255 and st.f_blocks > 0 and st.f_bavail > 0
    write(mnt / "f", "x")
    with pytest.raises(OSError) as exc:
        os.setxattr(mnt / "f", "user.k", b"v")
    assert exc.value.errno in (errno.ENOTSUP, errno.ENOSYS)
    with pytest.raises(OSError) as exc:
        os.getxattr(mnt / "f", "user.k")
    assert exc.value.errno in (errno.ENOTSUP, errno.ENOSYS, errno.ENODATA)
    unmount_checked(env, mnt, "data@master")


def test_xattrs_on(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create", "--xattrs")
    try:
        write(mp / "f", "x")
        os.setxattr(mp / "f", "user.color", b"blue")
        assert os.getxattr(mp / "f", "user.color") == b"blue"
        assert os.listxattr(mp / "f") == ["user.color"]
        with pytest.raises(OSError):
            os.getxattr(mp / "f", "user.missing")
        env.unmount(mp)
    finally:
        force_unmount(mp)
    with env.mounted("data@master", "mnt", "--xattrs") as mp:
        assert os.getxattr(mp / "f", "user.color") == b"blue"
        os.removexattr(mp / "f", "user.color")
        assert os.listxattr(mp / "f") == []
        os.setxattr(mp, "user.on-root-dir", b"")
        os.mkdir(mp / "d")
        os.setxattr(mp / "d", "user.bin", bytes(range(256)))
        view = Tree(mp)
        env.unmount(mp)
    check_remount(env, view, "data@master", xattrs=True)
    with env.mounted("data@master", "mnt", "--xattrs") as mp:
        assert os.listxattr(mp / "f") == []
        assert os.getxattr(mp, "user.on-root-dir") == b""


def test_round_trip_metadata(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    expect: dict[str, tuple[int, int, int, int, int]] = {}
    try:
        os.makedirs(mp / "dir" / "sub")
        write(mp / "dir" / "file", "payload")
        os.symlink("dir/file", mp / "link")
        os.link(mp / "dir" / "file", mp / "hard")
        os.mkfifo(mp / "fifo")
        os.chmod(mp / "dir" / "file", 0o751)
        os.chown(mp / "dir" / "file", 1001, 1002)
        os.chmod(mp / "dir" / "sub", 0o2770)
        os.utime(mp / "dir" / "file", ns=(5, 1_234_567_890_123_456_789))
        os.utime(mp / "dir" / "sub", ns=(5, 1_111_111_111_000_000_001))
        os.utime(mp / "link", ns=(5, 1_222_222_222_000_000_002), follow_symlinks=False)
        os.utime(mp / "dir", ns=(5, 1_333_333_333_000_000_003))
        for name in ("dir", "dir/file", "dir/sub", "link", "hard", "fifo"):
            st = os.lstat(mp / name)
            expect[name] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink)
        view = Tree(mp)
        commit = env.unmount(mp)
    finally:
        force_unmount(mp)
    check_commit(env, view, f"data@{commit}")
    with env.mounted("data@master") as mp:
        for name, want in expect.items():
            st = os.lstat(mp / name)
            got = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink)
            assert got == want, name
        assert os.readlink(mp / "link") == "dir/file"
        assert os.stat(mp / "hard").st_ino == os.stat(mp / "dir" / "file").st_ino
        write(mp / "hard", "changed")
        assert (mp / "dir" / "file").read_text() == "changed"
        env.unmount(mp)
    assert env.cat("data@master:/dir/file") == b"changed"
    assert env.cat("data@master:/hard") == b"changed"


def test_hard_link_group_in_unvisited_directory(env: Env) -> None:
    mp = env.mount("data@master", "mnt", "--create")
    try:
        os.makedirs(mp / "a")
        os.makedirs(mp / "b" / "deep")
        write(mp / "a" / "x", "one")
        os.link(mp / "a" / "x", mp / "b" / "deep" / "y")
        env.unmount(mp)
    finally:
        force_unmount(mp)
    mp = env.mount("data@master")
    try:
        write(mp / "a" / "x", "two", "ab")  # b/ is never looked at in this mount
        env.unmount(mp)
    finally:
        force_unmount(mp)
    assert env.cat("data@master:/b/deep/y") == b"onetwo"
    with env.mounted("data@master") as mp:
        assert os.stat(mp / "b" / "deep" / "y").st_ino == os.stat(mp / "a" / "x").st_ino
        assert os.stat(mp / "a" / "x").st_nlink == 2


def test_file_over_4gib_and_partial_rewrite(env: Env) -> None:
    """A sparse 4.5 GiB file round-trips; rewriting a few bytes of it later re-chunks only the
    chunks around them (the commit is quick and stores almost nothing new)."""
    size = (9 << 29) + 12345  # 4.5 GiB and a bit
    mp = env.mount("big@master", "mnt", "--create")
    try:
        with open(mp / "huge", "wb") as f:
            f.write(b"head")
            f.seek(size - 4)
            f.write(b"tail")
        assert os.stat(mp / "huge").st_size == size
        env.unmount(mp)
    finally:
        force_unmount(mp)
    stored_before = json.loads(env.out("stats", "--json"))["stored_bytes"]
    mp = env.mount("big@master")
    try:
        with open(mp / "huge", "r+b") as f:
            f.seek(size // 2)
            f.write(b"MIDDLE")
            f.seek(size - 4)
            assert f.read() == b"tail"
        import time

        t0 = time.monotonic()
        env.unmount(mp)
        assert time.monotonic() - t0 < 10
    finally:
        force_unmount(mp)
    stored_after = json.loads(env.out("stats", "--json"))["stored_bytes"]
    assert stored_after - stored_before < 16 << 20
    with env.mounted("big@master") as mp:
        with open(mp / "huge", "rb") as f:
            assert f.read(4) == b"head"
            f.seek(size // 2 - 2)
            assert f.read(10) == b"\0\0MIDDLE\0\0"
            f.seek(size - 4)
            assert f.read() == b"tail"


def test_non_utf8_names_round_trip(env: Env) -> None:
    name = b"caf\xe9-\xff\xfe.bin"
    mp = env.mount("data@master", "mnt", "--create")
    try:
        with open(os.path.join(os.fsencode(mp), name), "wb") as f:
            f.write(b"latin-1")
        os.mkdir(os.path.join(os.fsencode(mp), b"dir\x80"))
        env.unmount(mp)
    finally:
        force_unmount(mp)
    with env.mounted("data@master") as mp:
        names = set(os.listdir(os.fsencode(mp)))
        assert {name, b"dir\x80"} <= names
        with open(os.path.join(os.fsencode(mp), name), "rb") as f:
            assert f.read() == b"latin-1"
