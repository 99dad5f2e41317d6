"""Model-based differential testing of a mount: the same random operations on a pfsfs mount and
on a reference directory of a local filesystem, compared after every operation's outcome and, at
checkpoints, after snapshot, unmount + remount, ``kill -9`` + recover, and an old commit mounted
read-only.

What is compared (``Tree`` below):

- **live**: the mount against the reference: type, permission bits, size, content, symlink
  target, hard-link groups, ``user.*`` xattrs (no timestamps: the two run on different clocks);
- **commit read back**: what ``pfsfs get`` writes into a fresh directory and what a remount shows
  against what the mount showed right before the commit, *including mtimes in ns*;
- after ``kill -9`` of the daemon, only acknowledged state is owed: the runner fsyncs every file
  first, so everything is owed, and ``pfsfs recover`` must give it back.

Operations are plain tuples of concrete arguments (paths, offsets, bytes), generated from a
seeded ``random.Random`` by looking at the reference tree, so a failing list can be replayed and
shrunk (``shrink``) on a fresh mount: an operation whose target has gone fails the same way on
both sides. Used by ``tests/test_mount_model.py`` (fixed seeds in CI) and by
``scripts/soak_mount.py`` (any seed, 100k+ operations, prints a minimal reproduction).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Op = tuple[Any, ...]

# errno values POSIX lets two correct filesystems choose between for the same request
_SAME_ERRNO = {errno.EEXIST: errno.ENOTEMPTY}

CHECKPOINTS = ("snapshot", "remount", "kill", "oldcommit")
IDLE_S = 0.4  # longer than the mount's quiet time before background chunking (0.2 s)


class Mismatch(AssertionError):
    """The mount and the reference (or a commit and the mount) disagree."""


# -- observing a tree -------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    kind: str  # f d l p c b s
    mode: int
    size: int
    digest: str  # content (files), target (symlinks), "" otherwise
    mtime_ns: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    ino: int

    def key(self, *, mtime: bool, xattrs: bool) -> tuple[Any, ...]:
        size = self.size if self.kind != "d" else 0
        return (
            self.kind,
            self.mode,
            size,
            self.digest,
            self.mtime_ns if mtime else 0,
            self.xattrs if xattrs else (),
        )


_KINDS = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFIFO: "p",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFSOCK: "s",
}


def _xattrs(path: bytes, kind: str) -> tuple[tuple[bytes, bytes], ...]:
    if kind not in ("f", "d"):
        return ()
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        if n.startswith("user."):
            with suppress(OSError):
                out.append((n.encode(), os.getxattr(path, n, follow_symlinks=False)))
    return tuple(out)


def _digest(path: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Tree:
    """Everything observable of a directory tree, by relative path (bytes)."""

    def __init__(self, root: Path | str, *, skip_pfs: bool = True) -> None:
        self.items: dict[bytes, Item] = {}
        top = os.fsencode(root)
        stack = [b""]
        while stack:
            rel = stack.pop()
            base = top + (b"/" + rel if rel else b"")
            for name in sorted(os.listdir(base)):
                if not rel and skip_pfs and name == b".pfs":
                    continue
                r = rel + b"/" + name if rel else name
                p = top + b"/" + r
                st = os.lstat(p)
                kind = _KINDS[stat.S_IFMT(st.st_mode)]
                digest = ""
                if kind == "f":
                    digest = _digest(p)
                elif kind == "l":
                    digest = os.readlink(p).hex()
                elif kind in ("c", "b"):
                    digest = str(st.st_rdev)
                self.items[r] = Item(
                    kind,
                    stat.S_IMODE(st.st_mode),
                    st.st_size,
                    digest,
                    st.st_mtime_ns,
                    _xattrs(p, kind),
                    st.st_ino,
                )
                if kind == "d":
                    stack.append(r)

    def link_groups(self) -> set[frozenset[bytes]]:
        groups: dict[int, set[bytes]] = {}
        for path, it in self.items.items():
            if it.kind != "d":
                groups.setdefault(it.ino, set()).add(path)
        return {frozenset(g) for g in groups.values() if len(g) > 1}

    def paths(self, kinds: str) -> list[bytes]:
        return [p for p, it in self.items.items() if it.kind in kinds]


def compare(
    expected: Tree,
    actual: Tree,
    what: str,
    *,
    mtime: bool,
    xattrs: bool,
    links: bool = True,
) -> None:
    """Raise ``Mismatch`` listing (at most 10) differences."""
    problems: list[str] = []
    for path in sorted(expected.items.keys() | actual.items.keys()):
        e, a = expected.items.get(path), actual.items.get(path)
        if e is None or a is None:
            problems.append(f"{path!r}: {'missing' if a is None else 'unexpected'} in {what}")
            continue
        if e.key(mtime=mtime, xattrs=xattrs) != a.key(mtime=mtime, xattrs=xattrs):
            problems.append(f"{path!r}: expected {e}, {what} has {a}")
    if links and expected.link_groups() != actual.link_groups():
        problems.append(
            f"hard-link groups differ: expected {sorted(map(sorted, expected.link_groups()))}, "
            f"{what} has {sorted(map(sorted, actual.link_groups()))}"
        )
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise Mismatch(f"{what}: " + "; ".join(problems[:10]) + more)


# -- operations -------------------------------------------------------------------------------
def _content(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.1:
        n = 0
    elif r < 0.7:
        n = rng.randint(1, 200)
    elif r < 0.95:
        n = rng.randint(200, 70_000)
    else:
        n = rng.randint(1 << 20, 3 << 20)  # more than one chunk
    return rng.randbytes(n)


def _name(rng: random.Random) -> bytes:
    return rng.choice([b"a", b"b", b"c", b"d", b"e", b"f.txt", b"g\xff", b"h h"])


def generate(rng: random.Random, ref: Tree, *, xattrs: bool) -> Op:
    """One random operation, aimed at what the reference tree holds now."""
    files = ref.paths("f")
    dirs = [b"", *ref.paths("d")]
    anything = list(ref.items)

    def new_path() -> bytes:
        d = rng.choice(dirs)
        return d + b"/" + _name(rng) if d else _name(rng)

    def a_file() -> bytes:
        return rng.choice(files) if files and rng.random() < 0.85 else new_path()

    def a_path() -> bytes:
        return rng.choice(anything) if anything and rng.random() < 0.85 else new_path()

    kinds = [
        ("write_trunc", 14),
        ("rewrite", 8),
        ("append", 6),
        ("pwrite_hole", 4),
        ("truncate", 6),
        ("rename", 8),
        ("unlink", 5),
        ("unlink_open", 2),
        ("mkdir", 6),
        ("rmdir", 3),
        ("symlink", 3),
        ("link", 4),
        ("chmod", 4),
        ("utime", 4),
        ("fsync", 2),
        ("mmap_write", 3),
        ("reopen_trunc", 3),
        ("trunc_append", 2),
        ("exchange", 1),
        ("idle", 2),  # lets the mount chunk closed files in the background
    ]
    if xattrs:
        kinds += [("setxattr", 3), ("removexattr", 2)]
    op = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
    if op == "write_trunc":
        return (op, a_file(), _content(rng))
    if op in ("rewrite", "mmap_write"):
        f = a_file()
        size = ref.items[f].size if f in ref.items else 0
        off = rng.randint(0, max(0, size))
        return (op, f, off, rng.randbytes(rng.randint(1, 3000)))
    if op in ("append", "trunc_append", "reopen_trunc"):
        return (op, a_file(), _content(rng))
    if op == "pwrite_hole":
        f = a_file()
        size = ref.items[f].size if f in ref.items else 0
        return (op, f, size + rng.choice([1, 4096, 300_000, 5 << 20]), rng.randbytes(100))
    if op == "truncate":
        f = a_file()
        size = ref.items[f].size if f in ref.items else 0
        return (op, f, rng.choice([0, size // 2, size + 10, size + (2 << 20)]))
    if op == "rename":
        return (op, a_path(), a_path() if rng.random() < 0.5 else new_path())
    if op == "exchange":
        return (op, a_path(), a_path())
    if op in ("unlink", "unlink_open"):
        return (op, a_file(), rng.randbytes(50))
    if op == "mkdir":
        return (op, new_path(), rng.choice([0o755, 0o700, 0o2775]))
    if op == "rmdir":
        return (op, rng.choice(dirs[1:]) if len(dirs) > 1 else new_path())
    if op == "symlink":
        return (op, rng.choice([b"a", b"../x", b"/etc/hostname", b"dangling\xfe"]), new_path())
    if op == "link":
        return (op, a_file(), new_path())
    if op == "chmod":
        return (op, a_path(), rng.choice([0o644, 0o600, 0o755, 0o4755, 0o1777, 0o444]))
    if op == "utime":
        t = rng.randint(0, 2_000_000_000) * 1_000_000_000 + rng.randint(0, 999_999_999)
        return (op, a_path(), t)
    if op == "fsync":
        return (op, a_path())
    if op == "idle":
        return (op, b"")
    if op == "setxattr":
        return (op, a_path(), rng.choice([b"user.a", b"user.b"]), rng.randbytes(rng.randint(0, 40)))
    if op == "removexattr":
        return (op, a_path(), rng.choice([b"user.a", b"user.b"]))
    raise AssertionError(op)


def apply(root: bytes, op: Op) -> Any:
    """Run ``op`` under ``root``; returns a comparable outcome (an errno name on failure)."""
    try:
        return _apply(root, op)
    except OSError as exc:
        code = _SAME_ERRNO.get(exc.errno or 0, exc.errno)
        return f"E{errno.errorcode.get(code or 0, code)}"


def _p(root: bytes, rel: bytes) -> bytes:
    return root + b"/" + rel


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _apply(root: bytes, op: Op) -> Any:
    kind, path = op[0], _p(root, op[1])
    if kind == "idle":
        time.sleep(IDLE_S)
        return "ok"
    if kind in ("write_trunc", "append", "trunc_append"):
        flags = os.O_WRONLY | os.O_CREAT
        flags |= {"write_trunc": os.O_TRUNC, "append": os.O_APPEND}.get(kind, 0)
        if kind == "trunc_append":
            flags |= os.O_TRUNC | os.O_APPEND
        fd = os.open(path, flags, 0o644)
        try:
            _write_all(fd, op[2])
        finally:
            os.close(fd)
    elif kind == "reopen_trunc":  # read it, then reopen for writing with O_TRUNC
        with open(path, "rb") as f:
            f.read()
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, op[2])
        finally:
            os.close(fd)
    elif kind in ("rewrite", "pwrite_hole"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, op[3], op[2])
        finally:
            os.close(fd)
    elif kind == "mmap_write":
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return "empty"
            off = min(op[2], size - 1)
            data = op[3][: size - off]
            with mmap.mmap(fd, size) as mm:
                mm[off : off + len(data)] = data
                mm.flush()
        finally:
            os.close(fd)
    elif kind == "truncate":
        os.truncate(path, op[2])
    elif kind == "rename":
        os.rename(path, _p(root, op[2]))
    elif kind == "exchange":
        _renameat2(path, _p(root, op[2]), 2)
    elif kind == "unlink":
        os.unlink(path)
    elif kind == "unlink_open":
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            os.unlink(path)
            return "unlinked"
        fd = os.open(path, os.O_RDWR)
        try:
            os.unlink(path)
            os.pwrite(fd, op[2], 0)
            back = os.pread(fd, len(op[2]), 0)
            return back == op[2]
        finally:
            os.close(fd)
    elif kind == "mkdir":
        os.mkdir(path, op[2])
        os.chmod(path, op[2])  # no umask
    elif kind == "rmdir":
        os.rmdir(path)
    elif kind == "symlink":
        os.symlink(op[1], _p(root, op[2]))
    elif kind == "link":
        os.link(path, _p(root, op[2]), follow_symlinks=False)
    elif kind == "chmod":
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return "symlink"
        os.chmod(path, op[2])
    elif kind == "utime":
        os.utime(path, ns=(op[2], op[2]), follow_symlinks=False)
    elif kind == "fsync":
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return "symlink"
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elif kind == "setxattr":
        if not _xattr_target(path):
            return "skipped"
        os.setxattr(path, op[2], op[3], follow_symlinks=False)
    elif kind == "removexattr":
        if not _xattr_target(path):
            return "skipped"
        os.removexattr(path, op[2], follow_symlinks=False)
    else:
        raise AssertionError(f"unknown operation {kind}")
    return "ok"


def _xattr_target(path: bytes) -> bool:
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)


def _renameat2(a: bytes, b: bytes, flags: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, a, at_fdcwd, b, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def fsync_all(root: Path) -> None:
    """Acknowledge everything: fsync every regular file and directory under ``root``."""
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        if dirpath == os.fsencode(root) and b".pfs" in dirnames:
            dirnames.remove(b".pfs")
        for name in filenames:
            p = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the runner -------------------------------------------------------------------------------
@dataclass
class Model:
    """Applies operations to a mount of ``repo@master`` and to a reference directory.

    ``env`` is a ``tests.fusehelpers.Env`` with its daemon running."""

    env: Any
    reference: Path
    repo: str = "model"
    xattrs: bool = False
    mp: Path | None = None
    commits: list[tuple[str, Tree]] = field(default_factory=list)
    log: list[Op] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def _mount_options(self) -> list[str]:
        return ["--xattrs"] if self.xattrs else []

    def start(self) -> None:
        self.reference.mkdir(parents=True, exist_ok=True)
        self.mp = self.env.mount(f"{self.repo}@master", "model-mnt", "--create",
                                 *self._mount_options())

    def stop(self) -> None:
        from .fusehelpers import force_unmount

        if self.mp is not None:
            force_unmount(self.mp)

    def step(self, op: Op) -> None:
        self.log.append(op)
        self.stats[op[0]] = self.stats.get(op[0], 0) + 1
        if op[0] in CHECKPOINTS:
            getattr(self, "check_" + op[0])()
            return
        assert self.mp is not None
        mine = apply(os.fsencode(self.mp), op)
        theirs = apply(os.fsencode(self.reference), op)
        if mine != theirs:
            raise Mismatch(f"{_show(op)}: the mount answered {mine!r}, the reference {theirs!r}")

    def check_live(self) -> Tree:
        assert self.mp is not None
        view = Tree(self.mp)
        compare(Tree(self.reference, skip_pfs=False), view, "the mount", mtime=False,
                xattrs=self.xattrs)
        return view

    def check_snapshot(self) -> None:
        view = self.check_live()
        commit = self.env.out("snapshot", str(self.mp), "-m", f"model {len(self.log)}")
        if not commit:  # nothing changed since the last commit
            commit = self.env.head(f"{self.repo}@master")
        if commit:
            self._check_get(commit, view)
            self.commits.append((commit, view))
        self.fsck()

    def _check_get(self, commit: str, view: Tree) -> None:
        with tempfile.TemporaryDirectory(dir=self.env.root) as tmp:
            out = Path(tmp) / "got"
            self.env.run("get", f"{self.repo}@{commit}:/", "-o", str(out))
            compare(view, Tree(out), f"`pfsfs get` of commit {commit[:12]}", mtime=True,
                    xattrs=self.xattrs)

    def check_remount(self) -> None:
        view = self.check_live()
        self.env.unmount(self.mp)
        self.mp = self.env.mount(f"{self.repo}@master", "model-mnt", *self._mount_options())
        compare(view, Tree(self.mp), "the remounted commit", mtime=True, xattrs=self.xattrs)
        self.commits.append((self.env.head(f"{self.repo}@master"), view))
        self.fsck()

    def check_kill(self) -> None:
        from .fusehelpers import force_unmount

        assert self.mp is not None
        view = self.check_live()
        fsync_all(self.mp)
        self.env.kill_daemon(signal.SIGKILL)
        force_unmount(self.mp)
        self.env.start_daemon()
        self.env.run("recover")
        self.mp = self.env.mount(f"{self.repo}@master", "model-mnt", *self._mount_options())
        compare(view, Tree(self.mp), "the commit recovered after kill -9", mtime=True,
                xattrs=self.xattrs)
        self.fsck()

    def check_oldcommit(self) -> None:
        from .fusehelpers import force_unmount

        if not self.commits:
            return
        commit, view = self.commits[len(self.log) % len(self.commits)]
        if not commit:
            return
        mp = self.env.mount(f"{self.repo}@{commit}", "model-old", "--read-only",
                            *self._mount_options())
        try:
            compare(view, Tree(mp), f"commit {commit[:12]} mounted read-only", mtime=True,
                    xattrs=self.xattrs)
        finally:
            force_unmount(mp)

    def fsck(self) -> None:
        proc = self.env.run("fsck", "--deep", check=False)
        if proc.returncode != 0:
            raise Mismatch(f"fsck --deep failed: {proc.stdout}{proc.stderr}")


def _show(op: Op) -> str:
    parts = []
    for a in op:
        if isinstance(a, bytes) and len(a) > 24:
            parts.append(f"<{len(a)} bytes>")
        else:
            parts.append(repr(a))
    return "(" + ", ".join(parts) + ")"


def random_ops(
    seed: int, count: int, model: Model, *, checkpoint_every: int = 40
) -> Iterator[Op]:
    """``count`` operations for ``model``, generated as they run (each looks at the reference
    as it is after the previous one), with a checkpoint every ``checkpoint_every``."""
    rng = random.Random(seed)
    for i in range(1, count + 1):
        if i % checkpoint_every == 0:
            yield (rng.choice(["snapshot", "snapshot", "remount", "kill", "oldcommit"]),)
        else:
            yield generate(rng, Tree(model.reference, skip_pfs=False), xattrs=model.xattrs)
    yield ("snapshot",)
    yield ("remount",)


@contextmanager
def model_run(env: Any, workdir: Path, **kw: Any) -> Iterator[Model]:
    m = Model(env, workdir / f"reference-{len(list(workdir.glob('reference-*')))}", **kw)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def run_ops(make_env: Callable[[], Any], ops: list[Op], **kw: Any) -> str | None:
    """Run a fixed list on a fresh home; returns the failure message or None."""
    with make_env() as env, model_run(env, env.root, **kw) as m:
        try:
            for op in ops:
                m.step(op)
            m.check_snapshot()
        except Mismatch as exc:
            return str(exc)
    return None


def shrink(failing: Callable[[list[Op]], bool], ops: list[Op]) -> list[Op]:
    """Delta debugging (ddmin): a smallest-found sublist of ``ops`` that still fails."""
    n = 2
    while len(ops) >= 2:
        size = max(1, len(ops) // n)
        chunks = [ops[i : i + size] for i in range(0, len(ops), size)]
        reduced = False
        for i in range(len(chunks)):
            rest = [op for j, c in enumerate(chunks) if j != i for op in c]
            if rest and failing(rest):
                ops, n, reduced = rest, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(ops):
                break
            n = min(len(ops), n * 2)
    return ops


def replay_source(ops: list[Op], *, short: bool = False) -> str:
    """Python source of ``ops``, for pasting into a regression test (``short``: long byte
    strings abbreviated, for messages)."""
    show = _show if short else repr
    return "[\n" + "".join(f"    {show(op)},\n" for op in ops) + "]"


# -- checks for other mount tests ---------------------------------------------------------------
def only(tree: Tree, kinds: str) -> Tree:
    """A copy of ``tree`` holding only its items of ``kinds``."""
    part = Tree.__new__(Tree)
    part.items = {p: it for p, it in tree.items.items() if it.kind in kinds}
    return part


def got_tree(env: Any, ref: str) -> Tree:
    """What ``pfsfs get REF:/ -o DIR`` writes into a fresh ``DIR``, observed (``ref`` is
    ``repo@commit-or-branch``)."""
    with tempfile.TemporaryDirectory(dir=env.root) as tmp:
        out = Path(tmp) / "got"
        env.run("get", f"{ref}:/", "-o", str(out))
        return Tree(out)


def check_commit(env: Any, view: Tree, ref: str, what: str = "") -> None:
    """The commit ``ref`` read back with ``pfsfs get`` equals ``view`` (what the mount showed
    right before it was committed): content, type, mode, size, symlink targets, hard-link
    groups and mtimes in ns of every kind."""
    compare(view, got_tree(env, ref), what or f"`pfsfs get` of {ref}", mtime=True, xattrs=False)


def check_remount(env: Any, view: Tree, ref: str, *, xattrs: bool = False,
                  name: str = "remount-check") -> None:
    """Mount ``ref`` read-only and compare it with ``view`` in full: hard-link groups and mtimes
    in ns of every kind too (and ``user.*`` xattrs if ``xattrs``)."""
    from .fusehelpers import force_unmount

    mp = env.mount(ref, name, "--read-only", *(["--xattrs"] if xattrs else []))
    try:
        compare(view, Tree(mp), f"{ref} mounted again", mtime=True, xattrs=xattrs)
    finally:
        force_unmount(mp)


def snapshot_checked(env: Any, mp: Path, ref: str, message: str = "checked") -> str:
    """``pfsfs snapshot`` the mount of ``ref`` (``repo@branch``) and check the commit against
    what the mount showed just before (``check_commit``); returns the commit id."""
    view = Tree(mp)
    printed = env.out("snapshot", str(mp), "-m", message).split()  # "ID" or "ID (merged)"
    commit = printed[0] if printed else env.head(ref)  # (nothing new)
    assert commit, "nothing was ever committed"
    check_commit(env, view, f"{ref.partition('@')[0]}@{commit}")
    return commit


def unmount_checked(env: Any, mp: Path, ref: str) -> str:
    """``pfsfs unmount`` the mount of ``ref`` (``repo@branch``) and check the commit against
    what the mount showed just before, read back with ``pfsfs get`` (``check_commit``) and
    mounted again (``check_remount``); returns its id."""
    view = Tree(mp)
    printed = env.unmount(mp).split()  # "ID" or "ID (merged)"
    commit = printed[0] if printed else env.head(ref)  # (nothing new since a snapshot)
    assert commit, "nothing was ever committed"
    at = f"{ref.partition('@')[0]}@{commit}"
    check_commit(env, view, at)
    check_remount(env, view, at)
    return commit


__all__ = [
    "CHECKPOINTS",
    "Mismatch",
    "Model",
    "Tree",
    "apply",
    "check_commit",
    "check_remount",
    "compare",
    "fsync_all",
    "generate",
    "got_tree",
    "model_run",
    "only",
    "random_ops",
    "replay_source",
    "run_ops",
    "shrink",
    "snapshot_checked",
    "unmount_checked",
]
