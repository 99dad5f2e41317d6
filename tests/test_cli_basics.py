"""The foundation's user journeys through the real CLI: repos, branches, put/get, history."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .cli import fails, run


def out(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stdout.decode()


def test_repo_lifecycle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "features", "-d", "tf-idf features")
    assert "features" in out(run(home, "repo", "list"))
    listed = json.loads(out(run(home, "repo", "list", "--json")))
    assert listed[0]["name"] == "features" and listed[0]["branches"] == {"master": None}
    assert "already exists" in fails(home, "repo", "create", "features", code=4)
    # Without --force it asks; answering no keeps the repo.
    proc = run(home, "repo", "delete", "features", input=b"n\n", check=False)
    assert proc.returncode != 0
    assert "features" in out(run(home, "repo", "list"))
    run(home, "repo", "delete", "features", "--force")
    assert json.loads(out(run(home, "repo", "list", "--json"))) == []


def test_put_get_roundtrip_file_dir_and_stdin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    big = os.urandom(3 * 1024 * 1024 + 17)
    (src / "sub" / "big.bin").write_bytes(big)
    os.chmod(src / "a.txt", 0o600)
    os.utime(src / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.symlink("a.txt", src / "link")
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/in", "-f", str(src), "-r", "-m", "import")
    run(home, "put", "data@master:/notes/n.txt", "-f", "-", input=b"from stdin\n")
    assert out(run(home, "cat", "data@master:/in/a.txt")) == "alpha\n"
    assert run(home, "cat", "data@master:/in/sub/big.bin").stdout == big
    assert out(run(home, "cat", "data@master:/notes/n.txt")) == "from stdin\n"
    dest = tmp_path / "out"
    run(home, "get", "data@master:/in", "-o", str(dest))
    assert (dest / "sub" / "big.bin").read_bytes() == big
    st = os.stat(dest / "a.txt")
    assert st.st_mode & 0o777 == 0o600
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.readlink(dest / "link") == "a.txt"
    single = tmp_path / "single.bin"
    run(home, "get", "data@master:/in/sub/big.bin", "-o", str(single))
    assert single.read_bytes() == big
    names = out(run(home, "ls", "data@master:/in")).split()
    assert names == ["a.txt", "link -> a.txt", "sub/"] or names == [
        "a.txt",
        "link",
        "->",
        "a.txt",
        "sub/",
    ]
    rec = json.loads(out(run(home, "ls", "-R", "--json", "data@master")))
    assert {r["path"] for r in rec} >= {"/in/sub/big.bin", "/notes/n.txt"}


def test_log_inspect_diff_and_refs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    f = tmp_path / "f.txt"
    run(home, "repo", "create", "r")
    ids = []
    for i in range(3):
        f.write_text("x" * (10 * (i + 1)))
        ids.append(out(run(home, "put", "r@master:/f.txt", "-f", str(f), "-m", f"v{i}")).split()[0])
    log = json.loads(out(run(home, "log", "r@master", "--json")))
    assert [c["id"] for c in log] == ids[::-1]
    assert [c["message"] for c in log] == ["v2", "v1", "v0"]
    assert log[0]["parents"] == [ids[1]] and log[0]["size_change"] == 10
    # ~N, full ids and unique prefixes all resolve to the same commit.
    for ref in ("r@master~2", f"r@{ids[0]}", f"r@{ids[0][:8]}"):
        assert json.loads(out(run(home, "inspect", "commit", ref, "--json")))["id"] == ids[0]
    assert out(run(home, "cat", f"r@{ids[0][:6]}:/f.txt")) == "x" * 10
    d = json.loads(out(run(home, "diff", "r@master~2", "r@master", "--json")))
    assert d == [
        {"path": "/f.txt", "status": "modified", "type": "f", "old_size": 10, "new_size": 30}
    ]
    run(home, "put", "r@master:/g.txt", "-f", str(f))
    d = json.loads(out(run(home, "diff", "r@master~1", "r@master", "--json")))
    assert [(x["path"], x["status"]) for x in d] == [("/g.txt", "added")]
    assert "provenance" in json.loads(out(run(home, "inspect", "commit", "r@master", "--json")))


def test_branches(tmp_path: Path) -> None:
    home = tmp_path / "home"
    f = tmp_path / "f"
    f.write_text("1")
    run(home, "repo", "create", "r")
    first = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    run(home, "branch", "create", "r@exp", "--from", "master")
    f.write_text("2")
    run(home, "put", "r@exp:/f", "-f", str(f))
    assert out(run(home, "cat", "r@master:/f")) == "1"
    assert out(run(home, "cat", "r@exp:/f")) == "2"
    branches = json.loads(out(run(home, "branch", "list", "r", "--json")))
    assert branches["master"] == first and set(branches) == {"master", "exp"}
    run(home, "branch", "delete", "r@exp")
    assert "does not exist" in fails(home, "cat", "r@exp:/f", code=3)
    # put to a new branch creates it.
    run(home, "put", "r@fresh:/f", "-f", str(f))
    assert out(run(home, "cat", "r@fresh:/f")) == "2"


def test_rollback_keeps_history_and_can_be_rolled_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    f = tmp_path / "f"
    run(home, "repo", "create", "r")
    f.write_text("good")
    good = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    f.write_text("bad")
    bad = out(run(home, "put", "r@master:/f", "-f", str(f))).split()[0]
    new = out(run(home, "rollback", "r@master", "--to", good[:10])).strip()
    assert new not in (good, bad)
    assert out(run(home, "cat", "r@master:/f")) == "good"
    log = json.loads(out(run(home, "log", "r@master", "--json")))
    assert [c["id"] for c in log] == [new, bad, good]
    run(home, "rollback", "r@master", "--to", bad)
    assert out(run(home, "cat", "r@master:/f")) == "bad"
    proc = run(home, "rollback", "r@master", "--to", good, "--hard")
    assert "warning" in proc.stderr.decode()
    assert json.loads(out(run(home, "log", "r@master", "--json")))[0]["id"] == good


def test_dedup_across_repos_and_stats(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = os.urandom(4 * 1024 * 1024)
    f = tmp_path / "f"
    f.write_bytes(data)
    run(home, "repo", "create", "a")
    run(home, "repo", "create", "b")
    run(home, "put", "a@master:/f", "-f", str(f))
    before = json.loads(out(run(home, "stats", "--json")))["stored_bytes"]
    run(home, "put", "b@master:/copy", "-f", str(f))
    after = json.loads(out(run(home, "stats", "--json")))
    assert after["stored_bytes"] - before < 64 * 1024  # only the new trees/commit
    assert after["dedup_ratio"] > 1.9
    du = json.loads(out(run(home, "du", "b@master", "--json")))
    assert du["logical_bytes"] == len(data)


def test_gc_removes_unreachable_and_fsck_is_clean(tmp_path: Path) -> None:
    home = tmp_path / "home"
    f = tmp_path / "f"
    f.write_bytes(os.urandom(2 * 1024 * 1024))
    run(home, "repo", "create", "r")
    run(home, "put", "r@master:/f", "-f", str(f))
    run(home, "repo", "create", "tmp")
    f.write_bytes(os.urandom(2 * 1024 * 1024))
    run(home, "put", "tmp@master:/f", "-f", str(f))
    run(home, "repo", "delete", "tmp", "--force")
    dry = json.loads(out(run(home, "gc", "--dry-run", "--json")))
    assert dry["deleted_bytes"] >= 2 * 1024 * 1024 and dry["dry_run"]
    again = json.loads(out(run(home, "gc", "--dry-run", "--json")))
    assert again["deleted_bytes"] == dry["deleted_bytes"]  # dry run deleted nothing
    real = json.loads(out(run(home, "gc", "--json")))
    assert real["deleted_bytes"] == dry["deleted_bytes"]
    assert json.loads(out(run(home, "gc", "--json")))["deleted_bytes"] == 0
    assert "ok" in out(run(home, "fsck", "--deep"))
    assert len(run(home, "cat", "r@master:/f").stdout) == 2 * 1024 * 1024
