"""Smoke tests of the mount benchmark: `bench_mount.py --quick --only reference-write` runs and
prints its table, and the reference filesystem (`bench_reffs.py`) mounts and behaves. Neither
needs pfsfs mounts to work; both need FUSE (root, /dev/fuse, fusermount3) and leave no mount."""

from __future__ import annotations

import errno
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench_mount.py"
REFFS = ROOT / "scripts" / "bench_reffs.py"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
    reason="needs root, /dev/fuse and fusermount3",
)


@functools.cache
def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mount", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mount"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_reference_write(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "reference-write", "--base", tmp_path],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("seq write")]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        assert "MB/s" in row, row  # the reference column was measured
    bench = load_bench()
    assert not bench.mounts_under(tmp_path), "the benchmark left a mount behind"
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"


@pytest.fixture
def reffs(tmp_path: Path) -> Iterator[Path]:
    bench = load_bench()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(REFFS), str(mnt)])
    try:
        bench.wait_mounted(mnt, timeout=10, proc=proc)
        yield mnt
    finally:
        bench.unmount(mnt)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert bench.mount_at(mnt) is None


def test_reference_fs_semantics(reffs: Path) -> None:
    d = reffs / "d"
    d.mkdir()
    (d / "a").write_bytes(b"hello")
    os.link(d / "a", reffs / "hard")
    os.symlink("d/a", reffs / "sym")
    assert (reffs / "sym").read_bytes() == b"hello"
    assert os.stat(reffs / "hard").st_nlink == 2
    os.truncate(reffs / "hard", 2)
    assert (d / "a").read_bytes() == b"he"
    with open(d / "a", "r+b") as f:  # a sparse write past the end
        f.seek(10)
        f.write(b"x")
    assert (d / "a").read_bytes() == b"he" + bytes(8) + b"x"
    os.rename(d / "a", reffs / "moved")
    assert sorted(os.listdir(reffs)) == ["d", "hard", "moved", "sym"]
    os.utime(reffs / "moved", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(reffs / "moved").st_mtime_ns == 2_000_000_000
    (d / "x").write_bytes(b"1")
    with pytest.raises(OSError) as e:
        os.rmdir(d)
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(d / "x")
    os.rmdir(d)
    st = os.statvfs(reffs)
    assert st.f_namemax == 255 and st.f_blocks > 0
    big = os.urandom(3 << 20)
    (reffs / "big").write_bytes(big)
    assert (reffs / "big").read_bytes() == big


def test_quick_physical_table(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    args = ["--quick", "--only", "physical", "--size-mib", "32", "--create-files", "200"]
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            *args,
            "--make-targets",
            "20",
            "--disk-base",
            disk,
            "--base",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "physical references:" in out, out
    for label in (
        "create+write 1 KiB+stat",
        "cold read 32 MiB",
        "unmount right after cp -a",
        "unmount after the workload set",
    ):
        row = next((line for line in out.splitlines() if line.startswith(label)), None)
        assert row is not None, out
        pfsfs_value = re.split(r"\s{2,}", row.strip())[1]
        assert pfsfs_value != "-", row  # measured
    assert "stopped" not in out, out
    bench = load_bench()
    assert not bench.mounts_under(tmp_path), "the benchmark left a mount behind"
    assert list(disk.iterdir()) == [], "the benchmark left files on the disk"
