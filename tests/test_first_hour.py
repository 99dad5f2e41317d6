"""Issue 15, the first hour: what a new user tripped over, each checked the way they saw it.

CLI tests run the real ``pfsfs`` in a subprocess against a fresh home; mount tests mount for
real (``env``: a daemon subprocess, unmounted in a finally).
"""

from __future__ import annotations

from pathlib import Path

from .cli import fails, run
from .fusehelpers import Env, env, no_leftovers, write

__all__ = ["env", "no_leftovers"]


def out(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stdout.decode()


def err(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stderr.decode()


def commits(home: Path, ref: str) -> int:
    lines = out(run(home, "log", ref)).splitlines()
    return len([line for line in lines if "no commits" not in line])


# -- 6. no empty commits ---------------------------------------------------------------------------
def test_put_of_identical_content_makes_no_commit(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    f.write_text("same")
    run(home, "repo", "create", "r")
    first = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    again = run(home, "put", "r@master:/f", "-f", str(f))
    assert again.returncode == 0 and out(again) == ""
    assert err(again).startswith("no changes; nothing committed"), err(again)
    assert commits(home, "r@master") == 1
    assert out(run(home, "log", "r@master", "-n", "1")).split()[0] == first[:12]
    # A directory put twice, and into a new branch that already holds it: no commit either.
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("x")
    run(home, "put", "r@master", "-f", str(d), "-r")
    assert "no changes" in err(run(home, "put", "r@master", "-f", str(d), "-r"))
    assert commits(home, "r@master") == 2
    # A real change still commits.
    f.write_text("other")
    assert len(out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]) == 64


def test_rollback_to_identical_content_makes_no_commit(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    run(home, "repo", "create", "r")
    f.write_text("1")
    one = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    proc = run(home, "rollback", "r@master", "--to", one[:12])
    assert proc.returncode == 0 and out(proc) == ""
    assert err(proc).startswith("no changes; nothing committed"), err(proc)
    assert commits(home, "r@master") == 1
    f.write_text("2")
    run(home, "put", "r@master:/f", "-f", str(f))
    assert len(out(run(home, "rollback", "r@master", "--to", one[:12])).strip()) == 64
    assert commits(home, "r@master") == 3


def test_library_commit_of_nothing_returns_none_unless_allowed(tmp_path: Path) -> None:
    from pfsfs.changes import ChangeSet
    from pfsfs.repository import Repository

    with Repository.open(tmp_path / "home") as repo:
        repo.create_repo("r")
        assert repo.commit("r", "master", ChangeSet(), "empty") is None  # an empty branch
        cs = ChangeSet()
        cs.delete("/missing")
        assert repo.commit("r", "master", cs, "deletes nothing") is None
        assert repo.branch_head("r", "master") is None
        # Pipelines record provenance even for unchanged output: allowed explicitly.
        made = repo.commit("r", "master", ChangeSet(), "job 1", allow_empty=True)
        assert made is not None and repo.branch_head("r", "master") == made


# -- 7. new branches start at master's head --------------------------------------------------------
def test_branch_create_starts_at_master_and_says_so(tmp_path: Path) -> None:
    home, f = tmp_path / "home", tmp_path / "f"
    run(home, "repo", "create", "r")
    f.write_text("1")
    head = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    assert out(run(home, "branch", "create", "r@b")).strip() == (
        f"created branch r@b from r@master ({head[:12]})"
    )
    assert out(run(home, "cat", "r@b:/f")) == "1"
    f.write_text("2")
    run(home, "put", "r@master:/f", "-f", str(f))
    line = out(run(home, "branch", "create", "r@old", "--from", "master~1")).strip()
    assert line == f"created branch r@old from r@{head[:12]}"
    # put to a new branch creates it the same way (on stderr: stdout stays the commit line).
    proc = run(home, "put", "r@fresh:/g", "-f", str(f))
    assert "created branch r@fresh from r@master" in err(proc)
    assert sorted(out(run(home, "ls", "r@fresh")).split()) == ["f", "g"]


def test_mount_create_new_branch_starts_at_master(env: Env) -> None:
    src = env.mkdir("src")
    write(src / "a.txt", "hello\n")
    env.run("repo", "create", "data")
    env.run("put", "data@master:/a.txt", "-f", str(src / "a.txt"))
    head = env.head("data@master")
    mp = env.mkdir("mnt")
    proc = env.run("mount", "--create", "data@new", str(mp))
    try:
        assert f"created branch data@new from data@master ({head[:12]})" in proc.stdout
        assert f"base {head[:12]}" in proc.stdout
        assert (mp / "a.txt").read_text() == "hello\n"
    finally:
        env.run("unmount", str(mp))
    # --from REF, and a brand-new repo.
    first = env.head("data@master")
    proc = env.run("mount", "--create", "--from", "master", "data@other", str(mp))
    env.run("unmount", str(mp))
    assert f"created branch data@other from data@master ({first[:12]})" in proc.stdout
    proc = env.run("mount", "--create", "fresh@master", str(mp))
    env.run("unmount", str(mp))
    assert "created repo fresh" in proc.stdout and "base empty" in proc.stdout


# -- 8. put DIR/ puts the directory's contents ------------------------------------------------
def test_put_trailing_slash_puts_the_contents(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_text("a")
    (d / "sub" / "b").write_text("b")
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/", "-f", str(d), "-r")
    assert out(run(home, "ls", "r@master")).split() == ["dir/"]
    proc = run(home, "put", "r@master:/", "-f", f"{d}/", "-r")
    assert "(2 files -> r@master:/)" in out(proc)
    assert out(run(home, "ls", "r@master")).split() == ["a", "dir/", "sub/"]  # merged, as rsync
    assert out(run(home, "cat", "r@master:/sub/b")) == "b"
    run(home, "put", "r@master:/x", "-f", f"{d}/", "-r")
    assert out(run(home, "ls", "r@master:/x")).split() == ["a", "sub/"]
    run(home, "put", "r@master:/y/", "-f", f"{d}/", "-r")
    assert out(run(home, "ls", "r@master:/y")).split() == ["a", "sub/"]
    # Without a path, the contents go to the root (here: nothing new, so no commit).
    assert "no changes" in err(run(home, "put", "r@master", "-f", f"{d}/", "-r"))
    assert "use -r" in fails(home, "put", "r@master:/", "-f", f"{d}/", code=2)
