"""Bad input gets one clear line, a non-zero exit and no traceback — and never loses data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pfsfs.errors import InvalidInput
from pfsfs.repository import Repository

from .cli import fails, run


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    f = tmp_path / "seed"
    f.write_text("seed\n")
    run(h, "repo", "create", "r")
    run(h, "put", "r@master:/dir/seed", "-f", str(f))
    return h


def test_unknown_repo_branch_commit(home: Path) -> None:
    assert "repo 'nope' does not exist" in fails(home, "ls", "nope@master", code=3)
    assert "branch r@dev does not exist" in fails(home, "ls", "r@dev", code=3)
    assert "no commit abcdef0123 in repo r" in fails(home, "ls", "r@abcdef0123", code=3)
    assert "history has only" in fails(home, "ls", "r@master~5", code=3)
    assert "does not exist" in fails(home, "cat", "r@master:/missing", code=3)


@pytest.mark.parametrize(
    "ref", ["r@", "@master", "r@@x", "r@mas ter", "r@master~x", "bad/name@master", "r@~1", ""]
)
def test_malformed_refs(home: Path, ref: str) -> None:
    line = fails(home, "ls", ref)
    assert line.startswith("pfsfs: error:") or line.startswith("Error:")


def test_short_prefix_is_rejected(home: Path) -> None:
    assert "at least 6" in fails(home, "ls", "r@abc", code=2)


def test_ambiguous_prefix_lists_candidates(tmp_path: Path) -> None:
    with Repository.open(tmp_path / "h") as repo:
        repo.create_repo("r")
        a = bytes.fromhex("abcdef01" + "0" * 56)
        b = bytes.fromhex("abcdef02" + "0" * 56)
        repo.index.add_commit("r", a, b"x")
        repo.index.add_commit("r", b, b"y")
        with pytest.raises(InvalidInput) as err:
            repo.resolve("r@abcdef0")
        assert "ambiguous" in str(err.value)
        assert "abcdef01" in str(err.value) and "abcdef02" in str(err.value)


def test_path_traversal_in_put_and_get(home: Path, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    assert "'..'" in fails(home, "put", "r@master:/../../etc/x", "-f", str(f), code=2)
    assert "'..'" in fails(home, "put", "r@master:/a/../../x", "-f", str(f), code=2)
    assert "'..'" in fails(home, "get", "r@master:/../seed", code=2)
    # A -o that is a symlink is never written through.
    target = tmp_path / "victim"
    target.write_text("keep me")
    link = tmp_path / "link"
    os.symlink(target, link)
    assert "symlink" in fails(home, "get", "r@master:/dir/seed", "-o", str(link))
    assert target.read_text() == "keep me"


def test_names_nul_long_and_non_utf8(home: Path, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    # NUL cannot pass through argv at all; the API refuses it with a clear error.
    from pfsfs.changes import split_path

    with pytest.raises(InvalidInput):
        split_path(b"/a\0b")
    long = "n" * 256
    assert "255" in fails(home, "put", f"r@master:/{long}", "-f", str(f), code=2)
    run(home, "put", f"r@master:/{'n' * 255}", "-f", str(f))
    # Non-UTF-8 names are kept byte for byte (decision: names are bytes, shown with escapes).
    src = tmp_path / "src"
    src.mkdir()
    raw = b"caf\xe9.txt"
    with open(os.path.join(os.fsencode(src), raw), "wb") as fh:
        fh.write(b"latin-1 name")
    run(home, "put", "r@master:/latin", "-f", str(src), "-r")
    out_dir = tmp_path / "out"
    run(home, "get", "r@master:/latin", "-o", str(out_dir))
    assert os.listdir(os.fsencode(out_dir)) == [raw]
    assert "caf" in run(home, "ls", "r@master:/latin").stdout.decode(errors="replace")


def test_directory_without_r_and_directory_as_file(home: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    assert "use -r" in fails(home, "put", "r@master:/d", "-f", str(d), code=2)
    assert "is a directory" in fails(home, "cat", "r@master:/dir", code=2)
    assert "not a directory" in fails(home, "ls", "r@master:/dir/seed/x", code=2)
    assert "does not exist" in fails(home, "put", "r@master:/x", "-f", str(tmp_path / "nope"))
    assert "destination path" in fails(home, "put", "r@master", "-f", "-", input=b"x")


def _chunk_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store" / "chunk").rglob("*") if p.is_file())


def test_corrupted_chunk_is_reported_and_never_returned(home: Path, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 * 3)
    f = tmp_path / "big"
    f.write_bytes(data)
    run(home, "put", "r@master:/big", "-f", str(f))
    assert "ok" in run(home, "fsck", "--deep").stdout.decode()
    victim = _chunk_files(home)[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    proc = run(home, "fsck", "--deep", check=False)
    assert proc.returncode == 6
    assert b"corrupt" in proc.stdout
    assert "corrupt" in fails(home, "get", "r@master:/big", "-o", str(tmp_path / "out"), code=6)
    assert not (tmp_path / "out").exists()  # no file with wrong bytes left behind
    proc = run(home, "cat", "r@master:/big", check=False)
    assert proc.returncode == 6
    assert proc.stdout != data and len(proc.stdout) < len(data)
    # Missing (not just corrupt) objects are found by the plain fsck too.
    victim.unlink()
    proc = run(home, "fsck", check=False)
    assert proc.returncode == 6 and b"missing" in proc.stdout


def _mount_tiny_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs (disk-full test)")
def test_disk_full_during_put_leaves_branch_unchanged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tiny = tmp_path / "tiny"
    _mount_tiny_tmpfs(tiny, "6m")
    try:
        run(home, "init", "--store", str(tiny / "store"))
        run(home, "repo", "create", "r")
        small = tmp_path / "small"
        small.write_text("before")
        before = run(home, "put", "r@master:/small", "-f", str(small)).stdout.split()[0].decode()
        big = tmp_path / "big"
        big.write_bytes(os.urandom(12 * 1024 * 1024))
        line = fails(home, "put", "r@master:/big", "-f", str(big), code=7)
        assert "no space left" in line
        head = json.loads(run(home, "log", "r@master", "--json").stdout)[0]["id"]
        assert head == before
        assert b"ok" in run(home, "fsck", "--deep").stdout
        # The failed put's chunks were staged under temp names, never renamed into place,
        # and the put removed them as it failed: nothing is left for gc to clean up.
        assert not [p for p in (tiny / "store").rglob(".*.tmp")]
        report = json.loads(run(home, "gc", "--json").stdout)
        assert report["deleted_bytes"] == 0
        assert run(home, "cat", "r@master:/small").stdout == b"before"
        assert b"ok" in run(home, "fsck").stdout
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)


def test_pfs_at_repo_root_is_reserved(home: Path, tmp_path: Path) -> None:
    """Mounts show their time-travel directory as `.pfs` at a repo's root, which would hide a
    stored `.pfs` there: such a name is refused when committed (elsewhere it is an ordinary
    name)."""
    src = tmp_path / "x"
    src.write_bytes(b"x")
    err = fails(home, "put", "r@master:/.pfs", "-f", str(src), code=2)
    assert "reserved" in err
    run(home, "put", "r@master:/sub/.pfs", "-f", str(src))
    assert run(home, "cat", "r@master:/sub/.pfs").stdout == b"x"


@pytest.mark.parametrize("target", ["r@@x:/f", "r@master~1:/f"])
def test_a_bad_put_target_touches_no_home(tmp_path: Path, target: str) -> None:
    """The target is checked before the home is opened: a typo creates no home."""
    (tmp_path / "f").write_text("x")
    home = tmp_path / "never"
    assert "Traceback" not in fails(home, "put", target, "-f", str(tmp_path / "f"), code=2)
    assert not home.exists()
