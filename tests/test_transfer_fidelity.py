"""``put -r`` then ``get`` gives back the tree that was put: a model-based round trip.

A seeded random tree (files of random sizes, empty ones and sparse ones over several chunks,
nested directories, symlinks also dangling, hard-link groups, FIFOs, sockets, device files when
we are root, setuid/setgid/sticky modes, mtimes in ns, non-UTF-8 and 255-byte names, user
xattrs) is put, got back into a fresh directory, and both are read by the same reference walker,
which records everything the README says survives. Further tests cover what a user sees: hard
links and devices written through a mount come back by ``get``; ``get -o`` into an existing
device or FIFO writes into it and never replaces it; names that are not UTF-8 print escaped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from .cli import PFSFS, fails, run
from .fusehelpers import Env, env, force_unmount, no_leftovers

__all__ = ["env", "no_leftovers"]

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="device files need root")
MiB = 1 << 20

# -- the reference walker ------------------------------------------------------------------------


def _xattrs(path: bytes, everything: bool) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in sorted(names)
        if everything or n.startswith("user.")
    }


def _digest(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def describe(root: Path, *, everything: bool = False) -> dict[str, Any]:
    """Everything put/get must keep: per path (bytes, relative) type, mode, size, content
    digest, link target, device number, mtime in ns, xattrs; and the hard-link groups."""
    top = os.fsencode(root)
    files: dict[bytes, tuple[Any, ...]] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        path = os.path.join(top, rel) if rel else top
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        record: tuple[Any, ...] = (
            stat.filemode(st.st_mode),
            st.st_mtime_ns,
            _xattrs(path, everything),
        )
        if stat.S_ISREG(st.st_mode):
            record += (st.st_size, _digest(path), st.st_nlink)
        elif stat.S_ISLNK(st.st_mode):
            record += (os.readlink(path), st.st_nlink)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            record += (os.major(st.st_rdev), os.minor(st.st_rdev), st.st_nlink)
        elif not stat.S_ISDIR(st.st_mode):
            record += (st.st_nlink,)
        files[rel] = record
        if stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(rel, n) if rel else n for n in os.listdir(path))
        elif st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    groups = sorted(sorted(g) for g in inodes.values())
    return {"files": files, "links": groups}


def assert_same(want: dict[str, Any], got: dict[str, Any], seed: object = None) -> None:
    wf, gf = want["files"], got["files"]
    bad = [
        (p, wf.get(p), gf.get(p)) for p in sorted(wf.keys() | gf.keys()) if wf.get(p) != gf.get(p)
    ]
    assert not bad, f"seed {seed}: {len(bad)} paths differ, first: {bad[:3]}"
    assert want["links"] == got["links"], f"seed {seed}: hard-link groups differ"


# -- the random tree -----------------------------------------------------------------------------

_NAME_PARTS = [b"a", b"file", b"data.bin", b"caf\xe9", b"bad\xff\xfe", b"bad\xfe\xff", b"sp ace"]
_NAME_PARTS += [b"back\\slash", b"\xe2\x82\xac", b"nl\nx", b"-dash", b".hidden"]
_FILE_MODES = [0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755, 0o1644, 0o640]
_DIR_MODES = [0o755, 0o700, 0o2775, 0o1777, 0o750]


class TreeBuilder:
    """Makes a random tree; ``rng`` decides everything, so a seed reproduces it."""

    def __init__(self, root: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.top = os.fsencode(root)
        self.dirs: list[bytes] = [b""]
        self.linkable: list[bytes] = []
        self.all: list[bytes] = []

    def name(self, parent: bytes) -> bytes:
        existing = set(os.listdir(os.path.join(self.top, parent) if parent else self.top))
        while True:
            if self.rng.random() < 0.03:
                base = bytes([self.rng.choice(b"xyz")]) * 255
            else:
                base = self.rng.choice(_NAME_PARTS) + str(self.rng.randrange(1000)).encode()
            if base not in existing:
                return base

    def full(self, rel: bytes) -> bytes:
        return os.path.join(self.top, rel)

    def build(self, n: int) -> None:
        for _ in range(n):
            parent = self.rng.choice(self.dirs)
            rel = os.path.join(parent, self.name(parent)) if parent else self.name(parent)
            kind = self.rng.choices(
                ["file", "dir", "symlink", "link", "fifo", "sock", "dev"],
                [40, 12, 10, 10, 4, 3, 4 if ROOT else 0],
            )[0]
            if kind == "link" and not self.linkable:
                kind = "file"
            getattr(self, "make_" + kind)(rel)
            self.all.append(rel)
        self.set_times()

    def make_file(self, rel: bytes) -> None:
        r = self.rng.random()
        path = self.full(rel)
        with open(path, "wb") as f:
            if r < 0.15:
                pass  # empty
            elif r < 0.25:  # sparse, several chunks: a few islands of data in holes
                size = self.rng.randrange(9 * MiB, 14 * MiB)
                f.truncate(size)
                for _ in range(self.rng.randrange(1, 4)):
                    f.seek(self.rng.randrange(size - 100))
                    f.write(self.rng.randbytes(self.rng.randrange(1, 100)))
            else:
                f.write(self.rng.randbytes(self.rng.choice([1, 17, 4096, 70_000, 1_300_000])))
        os.chmod(path, self.rng.choice(_FILE_MODES))
        self.xattrs(path)
        self.linkable.append(rel)

    def make_dir(self, rel: bytes) -> None:
        os.mkdir(self.full(rel))
        os.chmod(self.full(rel), self.rng.choice(_DIR_MODES))
        self.xattrs(self.full(rel))
        self.dirs.append(rel)

    def make_symlink(self, rel: bytes) -> None:
        target = self.rng.choice(self.all) if self.all and self.rng.random() < 0.6 else b"gone"
        os.symlink(b"../" * rel.count(b"/") + target, self.full(rel))
        self.linkable.append(rel)

    def make_link(self, rel: bytes) -> None:
        os.link(self.full(self.rng.choice(self.linkable)), self.full(rel), follow_symlinks=False)

    def make_fifo(self, rel: bytes) -> None:
        os.mkfifo(self.full(rel), self.rng.choice([0o644, 0o600, 0o622]))
        self.linkable.append(rel)

    def make_sock(self, rel: bytes) -> None:
        os.mknod(self.full(rel), stat.S_IFSOCK | 0o755)
        os.chmod(self.full(rel), 0o755)

    def make_dev(self, rel: bytes) -> None:
        kind = self.rng.choice([stat.S_IFCHR, stat.S_IFBLK])
        dev = os.makedev(self.rng.choice([1, 7, 250]), self.rng.randrange(256))
        os.mknod(self.full(rel), kind | 0o600, dev)
        os.chmod(self.full(rel), self.rng.choice([0o600, 0o660, 0o666]))
        self.linkable.append(rel)

    def xattrs(self, path: bytes) -> None:
        for i in range(self.rng.choice([0, 0, 1, 3])):
            value = self.rng.choice([b"", b"blue", self.rng.randbytes(300), b"\0\xff"])
            os.setxattr(path, f"user.k{i}", value)

    def set_times(self) -> None:
        """mtimes last (writing into a directory changes its mtime), deepest first."""
        for rel in sorted(self.all + [b""], key=lambda p: -p.count(b"/") - (p != b"")):
            ns = self.rng.randrange(10**9, 2 * 10**18)
            os.utime(self.full(rel) if rel else self.top, ns=(ns, ns), follow_symlinks=False)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run(home, "repo", "create", "r")
    return home


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_put_get_round_trip(tmp_path: Path, seed: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    TreeBuilder(src, seed).build(120)
    home = _home(tmp_path)
    want = describe(src)
    run(home, "put", "r@master:/tree", "-r", "-f", str(src))
    out = tmp_path / "out"
    run(home, "get", "r@master:/tree", "-o", str(out))
    assert_same(want, describe(out), seed)
    # A second get over the first replaces every name in place: still the same tree.
    run(home, "get", "r@master:/tree", "-o", str(out))
    assert_same(want, describe(out), seed)
    # Holes stay holes: no sparse file takes its full size on disk.
    for dirpath, _, names in os.walk(os.fsencode(out)):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode) and st.st_size > 8 * MiB:
                assert st.st_blocks * 512 < MiB, (n, st.st_blocks)
    assert "ok" in run(home, "fsck", "--deep").stdout.decode()


@pytest.mark.skipif(not ROOT, reason="other xattr namespaces are root's")
def test_root_keeps_trusted_xattrs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "trusted.pfsfs-test", b"secret")
    os.setxattr(src / "f", "user.k", b"v")
    home = _home(tmp_path)
    run(home, "put", "r@master:/t", "-r", "-f", str(src))
    run(home, "get", "r@master:/t", "-o", str(tmp_path / "out"))
    assert _xattrs(os.fsencode(tmp_path / "out" / "f"), True) == {
        "trusted.pfsfs-test": b"secret",
        "user.k": b"v",
    }
    # Without CAP_SYS_ADMIN trusted.* cannot be set: one warning line, the rest is written.
    out = tmp_path / "out2"
    cmd = ["setpriv", "--bounding-set=-sys_admin", "--", *PFSFS, "get", "r@master:/t", "-o"]
    proc = subprocess.run(
        [*cmd, str(out)], capture_output=True, env={**os.environ, "PFSFS_HOME": str(home)}
    )
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 0 and len(err) == 2, err
    assert "f: xattrs not restored (Operation not permitted): trusted.pfsfs-test" in err[0]
    assert _xattrs(os.fsencode(out / "f"), True) == {"user.k": b"v"}
    assert (out / "f").read_bytes() == b"x"


def test_hard_link_with_names_outside_the_put_is_a_plain_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "inside").write_bytes(b"shared")
    os.link(src / "inside", tmp_path / "outside")
    home = _home(tmp_path)
    run(home, "put", "r@master:/t", "-r", "-f", str(src))
    listing = json.loads(run(home, "ls", "--json", "r@master:/t").stdout)
    assert [e["path"] for e in listing] == ["/t/inside"]
    run(home, "get", "r@master:/t", "-o", str(tmp_path / "out"))
    assert os.lstat(tmp_path / "out" / "inside").st_nlink == 1


# -- devices and sockets -------------------------------------------------------------------------


@needs_root
def test_put_of_a_device_or_socket_stores_it(tmp_path: Path) -> None:
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(dev, 0o666)
    sock = tmp_path / "sock"
    os.mknod(sock, stat.S_IFSOCK | 0o755)
    home = _home(tmp_path)
    proc = run(home, "put", "r@master:/null", "-f", str(dev))
    assert proc.stderr == b""
    run(home, "put", "r@master:/sock", "-f", str(sock))
    lines = run(home, "ls", "-l", "r@master").stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["crw-rw-rw-", "srwxr-xr-x"]
    rows = json.loads(run(home, "ls", "--json", "r@master").stdout)
    assert rows[0]["ftype"] == "c" and rows[0]["rdev"] == [1, 3]
    run(home, "get", "r@master:/null", "-o", str(tmp_path / "back"))
    st = os.lstat(tmp_path / "back")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


@needs_root
def test_get_without_cap_mknod_warns_once_per_device_and_writes_the_rest(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(src / "sock", stat.S_IFSOCK | 0o755)
    (src / "file").write_bytes(b"content")
    home = _home(tmp_path)
    run(home, "put", "r@master:/t", "-r", "-f", str(src))
    out = tmp_path / "out"
    # Root without CAP_MKNOD (as in most containers): mknod of a device is refused.
    cmd = ["setpriv", "--bounding-set=-mknod", "--", *PFSFS, "get", "r@master:/t", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, env={**os.environ, "PFSFS_HOME": str(home)})
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 0, err
    assert len(err) == 3, err
    assert "character device 1,3 not created" in err[1] and "null" in err[1]
    assert "block device 7,0 not created" in err[0] and "loop" in err[0]
    assert err[2] == f"1 file written to {out} (2 device files not created)"
    assert sorted(os.listdir(out)) == ["file", "sock"]
    assert stat.S_ISSOCK(os.lstat(out / "sock").st_mode)
    # Asked for one device by name, the refusal is an error (exit 7, one line).
    cmd[-4:] = ["get", "r@master:/t/null", "-o", str(tmp_path / "one")]
    proc = subprocess.run(cmd, capture_output=True, env={**os.environ, "PFSFS_HOME": str(home)})
    assert proc.returncode == 7
    assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "one").exists()


# -- get -o into an existing device, FIFO, /dev/stdout -------------------------------------------


@pytest.fixture
def home5(tmp_path: Path) -> Path:
    """A repo with a 5 MiB file /big and a FIFO entry /pipe."""
    home = _home(tmp_path)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * MiB))
    run(home, "put", "r@master:/big", "-f", str(big))
    os.mkfifo(tmp_path / "pipe")
    run(home, "put", "r@master:/pipe", "-f", str(tmp_path / "pipe"))
    return home


@needs_root
def test_get_into_a_full_device_fails_and_keeps_the_node(tmp_path: Path, home5: Path) -> None:
    full = tmp_path / "full"  # a scratch node: never the real /dev/full
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    line = fails(home5, "get", "r@master:/big", "-o", str(full), code=7)
    assert "no space left on device" in line and str(full) in line
    st = os.lstat(full)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 7)
    assert os.listdir(tmp_path).count("full") == 1 and not any(
        n.startswith(".pfsfs-") for n in os.listdir(tmp_path)
    )


@needs_root
def test_get_into_a_null_device_writes_into_it(tmp_path: Path, home5: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    link = tmp_path / "null-link"  # a symlink to a device is followed (like /dev/stdout)
    os.symlink(null, link)
    run(home5, "get", "r@master:/big", "-o", str(null))
    run(home5, "get", "r@master:/big", "-o", str(link))
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert os.path.islink(link)
    # A FIFO entry is not made over an existing device either: exit 4, node kept.
    assert "not replaced" in fails(home5, "get", "r@master:/pipe", "-o", str(null), code=4)
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_get_into_a_fifo_and_dev_stdout(tmp_path: Path, home5: Path) -> None:
    want = run(home5, "cat", "r@master:/big").stdout
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    run(home5, "get", "r@master:/big", "-o", str(fifo))
    reader.join(timeout=60)
    assert got == [want]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # /dev/stdout (here a pipe to us) is written into, never replaced.
    proc = run(home5, "get", "r@master:/big", "-o", "/dev/stdout")
    assert proc.stdout == want
    assert os.path.islink("/dev/stdout") or stat.S_ISCHR(os.stat("/dev/stdout").st_mode)


def test_get_over_an_existing_regular_file_replaces_it_atomically(
    tmp_path: Path, home5: Path
) -> None:
    target = tmp_path / "old"
    target.write_bytes(b"old content")
    keep = os.open(target, os.O_RDONLY)
    try:
        run(home5, "get", "r@master:/big", "-o", str(target))
        assert os.read(keep, 100) == b"old content"  # a new inode, renamed over the old one
    finally:
        os.close(keep)
    assert target.read_bytes() == run(home5, "cat", "r@master:/big").stdout


# -- names that are not UTF-8 --------------------------------------------------------------------


def test_non_utf8_names_print_escaped_and_distinct(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = [b"bad\xff\xfe", b"bad\xfe\xff", b"bad\\xff\\xfe", b"ok\xe2\x82\xac"]
    for i, name in enumerate(names):
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(b"x" * i)
    home = _home(tmp_path)
    run(home, "put", "r@master:/d", "-r", "-f", str(src))
    shown = run(home, "ls", "r@master:/d").stdout.decode().splitlines()
    assert shown == ["bad\\\\xff\\\\xfe", "bad\\xfe\\xff", "bad\\xff\\xfe", "ok€"]
    assert len(set(run(home, "ls", "-R", "r@master").stdout.splitlines())) == 5
    rows = json.loads(run(home, "ls", "--json", "r@master:/d").stdout)
    exact = [
        base64.b64decode(r["path_b64"]) if "path_b64" in r else r["path"].encode() for r in rows
    ]
    assert sorted(exact) == sorted(b"/d/" + n for n in names)
    assert rows[-1]["path"] == "/d/ok€" and "path_b64" not in rows[-1]
    # diff: the same escapes, and lossless JSON.
    with open(os.path.join(os.fsencode(src), b"bad\xff\xfe"), "wb") as f:
        f.write(b"changed")
    run(home, "put", "r@master:/d", "-r", "-f", str(src))
    diff = run(home, "diff", "r@master~1", "r@master").stdout.decode()
    assert diff.startswith("M /d/bad\\xff\\xfe  (modified")
    item = json.loads(run(home, "diff", "--json", "r@master~1", "r@master").stdout)[0]
    assert base64.b64decode(item["path_b64"]) == b"/d/bad\xff\xfe"
    # errors name the path with the same escapes
    line = fails(home, "cat", os.fsdecode(b"r@master:/d/bad\xff\xff"), code=3)
    assert "r@master:/d/bad\\xff\\xff does not exist" in line


# -- through a mount -----------------------------------------------------------------------------


@needs_root
def test_mount_made_links_devices_and_xattrs_come_back_by_get(env: Env) -> None:
    mp = env.mount("m@master", "mnt", "--create", "--xattrs")
    try:
        os.mkdir(mp / "d")
        (mp / "d" / "a").write_bytes(b"linked")
        os.link(mp / "d" / "a", mp / "b")
        os.setxattr(mp / "b", "user.color", b"blue")
        os.mknod(mp / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(mp / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 1))
        os.mknod(mp / "sock", stat.S_IFSOCK | 0o700)
        os.mkfifo(mp / "fifo")
        os.symlink("nowhere", mp / "dangling")
        seen = describe(mp)
        env.unmount(mp)
    finally:
        force_unmount(mp)
    out = env.root / "out"
    env.run("get", "m@master:/", "-o", str(out))
    got = describe(out)
    assert got["links"] == [[b"b", b"d/a"]]
    seen["files"].pop(b"")  # the mount root's metadata is the volume's, not a stored entry
    got["files"].pop(b"")
    assert_same(seen, got)
    # And back: put the exported tree, mount it, and the mount shows the same tree.
    env.run("put", "m@master:/copy", "-r", "-f", str(out))
    with env.mounted("m@master", "mnt", "--xattrs") as mp:
        copy = describe(mp / "copy")
        assert os.lstat(mp / "copy" / "b").st_ino == os.lstat(mp / "copy" / "d" / "a").st_ino
    copy["files"].pop(b"")
    assert_same(got, copy)


def test_diff_reports_xattr_and_device_number_changes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"same")
    os.setxattr(f, "user.k", b"one")
    home = _home(tmp_path)
    run(home, "put", "r@master:/f", "-f", str(f))
    os.setxattr(f, "user.k", b"two")
    run(home, "put", "r@master:/f", "-f", str(f))
    assert run(home, "diff", "r@master~1", "r@master").stdout.decode().startswith("m /f  (metadata")
    if not ROOT:
        return
    dev = tmp_path / "dev"
    os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.utime(dev, ns=(10**18, 10**18))
    run(home, "put", "r@master:/dev", "-f", str(dev))
    os.unlink(dev)
    os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 7))
    os.utime(dev, ns=(10**18, 10**18))
    run(home, "put", "r@master:/dev", "-f", str(dev))
    assert (
        run(home, "diff", "r@master~1", "r@master").stdout.decode().startswith("M /dev  (modified")
    )
