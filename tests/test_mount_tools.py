"""Real tools on a mount: GNU make (mtimes survive commit + remount), git clone, tar x."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .fusehelpers import Env, env, force_unmount, no_leftovers, sh, write
from .mountmodel import Tree, check_remount, unmount_checked

__all__ = ["env", "no_leftovers"]

MAKEFILE = """\
SRCS := $(wildcard src/*.txt)
OUTS := $(patsubst src/%.txt,out/%.len,$(SRCS))

all: out/total

out/%.len: src/%.txt | out
\twc -c < $< > $@

out:
\tmkdir -p out

out/total: $(OUTS)
\tcat $^ > $@
"""


def test_make_second_run_does_nothing(env: Env) -> None:
    mp = env.mount("build@master", "mnt", "--create")
    try:
        write(mp / "Makefile", MAKEFILE)
        os.mkdir(mp / "src")
        for i in range(40):
            write(mp / "src" / f"f{i}.txt", "x" * i)
        sh("make -j2 -s", cwd=mp)
        assert len((mp / "out" / "total").read_text().split()) == 40
        assert "Nothing to be done" in sh("make", cwd=mp)
        unmount_checked(env, mp, "build@master")  # the mtimes make relies on, in ns
    finally:
        force_unmount(mp)
    mp = env.mount("build@master")
    try:
        out = sh("make", cwd=mp)
        assert "Nothing to be done" in out, out
        # touching one source rebuilds exactly its target and the total
        sh("touch src/f3.txt", cwd=mp)
        out = sh("make", cwd=mp)
        assert "src/f3.txt" in out and "src/f4.txt" not in out
        unmount_checked(env, mp, "build@master")
    finally:
        force_unmount(mp)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_clone_onto_mount(env: Env) -> None:
    origin = env.mkdir("origin")
    sh("git init -q -b main . && git config user.email t@t && git config user.name t", cwd=origin)
    for i in range(20):
        write(origin / f"file{i}.py", f"print({i})\n" * 50)
    os.symlink("file1.py", origin / "link.py")
    sh("git add -A && git commit -qm init && git tag v1", cwd=origin)
    with env.mounted("code@master", "mnt", "--create") as mp:
        sh(f"git clone -q {origin} {mp}/clone")
        assert (mp / "clone" / "file3.py").read_text().startswith("print(3)")
        status = sh("git status --porcelain", cwd=mp / "clone")
        assert status == ""
        sh("git fsck --no-progress", cwd=mp / "clone")
        write(mp / "clone" / "file3.py", "changed\n")
        assert "file3.py" in sh("git status --porcelain", cwd=mp / "clone")
        unmount_checked(env, mp, "code@master")
    with env.mounted("code@master") as mp:
        sh("git fsck --no-progress", cwd=mp / "clone")
        assert "file3.py" in sh("git status --porcelain", cwd=mp / "clone")
        assert sh("git log --oneline", cwd=mp / "clone").count("\n") == 1


def test_tar_extract_onto_mount(env: Env) -> None:
    src = env.mkdir("tree")
    for d in range(5):
        (src / f"d{d}").mkdir()
        for f in range(20):
            write(src / f"d{d}" / f"f{f}", os.urandom(f * 100))
    os.symlink("d0/f1", src / "sym")
    os.link(src / "d1" / "f2", src / "hardlink")
    os.chmod(src / "d2" / "f3", 0o700)
    tarball = env.root / "t.tar"
    sh(f"tar --format=posix -C {src} -cf {tarball} .")
    with env.mounted("t@master", "mnt", "--create") as mp:
        sh(f"tar -C {mp} -xpf {tarball}")
        diff = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(mp)])
        assert diff.returncode == 0
        assert os.stat(mp / "hardlink").st_ino == os.stat(mp / "d1" / "f2").st_ino
        view = Tree(mp)
        unmount_checked(env, mp, "t@master")
    check_remount(env, Tree(src), "t@master")  # what tar was given, mtimes of all kinds too
    assert view.link_groups() == {frozenset({b"hardlink", b"d1/f2"})}
    with env.mounted("t@master") as mp:
        assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(mp)]).returncode == 0
        st = os.stat(mp / "d2" / "f3")
        assert st.st_mode & 0o777 == 0o700
        assert st.st_mtime_ns == os.stat(src / "d2" / "f3").st_mtime_ns
