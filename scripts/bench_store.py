#!/usr/bin/env python3
"""Storage benchmark: ingest speed, dedup, small files and log speed, with `cp -r` beside it.

Runs on tmpfs (/dev/shm) for source and home, as the targets are stated. Prints one table;
`--size-mib` scales the big-file cases (default 1024 = 1 GiB). Exit code 0 even when a target
is missed: the numbers are the output.

    .venv/bin/python scripts/bench_store.py [--size-mib 1024] [--small-files 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pfsfs.changes import ChangeSet  # noqa: E402
from pfsfs.model import FILE, Entry  # noqa: E402
from pfsfs.repository import Repository  # noqa: E402

PFSFS = [sys.executable, "-m", "pfsfs.cli.main"]


def pfsfs(home: Path, *args: str) -> float:
    t = time.perf_counter()
    subprocess.run(
        [*PFSFS, *args],
        check=True,
        env={**os.environ, "PFSFS_HOME": str(home)},
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def stored_bytes(home: Path) -> int:
    return sum(
        p.stat().st_size
        for p in (home / "store").rglob("*")
        if p.is_file() and "refs" not in p.parts
    )


def average_chunk(home: Path) -> float:
    sizes = [p.stat().st_size for p in (home / "store" / "chunk").rglob("*") if p.is_file()]
    return sum(sizes) / max(1, len(sizes))


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--commits", type=int, default=10_000)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    size = args.size_mib << 20
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pfsfs-bench-") as tmp:
        base = Path(tmp)
        home = base / "home"
        src = base / "big.bin"
        write_random(src, size)
        pfsfs(home, "repo", "create", "bench")

        t = pfsfs(home, "put", "bench@master:/big.bin", "-f", str(src))
        cp = timed(["cp", "-r", str(src), str(base / "cp-copy")])
        os.unlink(base / "cp-copy")
        mbs = size / t / 1e6
        rows.append(
            (
                "ingest 1 file",
                f"{mbs:.0f} MB/s ({t:.2f} s)",
                f"cp -r {cp:.2f} s",
                "target >= 400 MB/s: " + ("met" if mbs >= 400 else "MISSED"),
            )
        )

        s0 = stored_bytes(home)
        t = pfsfs(home, "put", "bench@master:/again.bin", "-f", str(src))
        grew = stored_bytes(home) - s0
        rows.append(
            (
                "put same data again",
                f"+{grew} B stored ({t:.2f} s)",
                "-",
                "target: no chunk growth (trees/commit only): "
                + ("met" if grew < 64 << 10 else "MISSED"),
            )
        )

        with open(src, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(1 << 20))
        s0 = stored_bytes(home)
        pfsfs(home, "put", "bench@master:/changed.bin", "-f", str(src))
        grew = stored_bytes(home) - s0
        avg = average_chunk(home)
        rows.append(
            (
                "1 MiB changed in middle",
                f"+{grew / 2**20:.2f} MiB stored",
                f"avg chunk {avg / 2**20:.2f} MiB",
                f"target <= 3 avg chunks ({3 * avg / 2**20:.2f} MiB): "
                + ("met" if grew <= 3 * avg else "MISSED"),
            )
        )
        os.unlink(src)

        small = base / "small"
        small.mkdir()
        for i in range(args.small_files):
            d = small / f"d{i % 100:02d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i}.txt").write_bytes(os.urandom(1000))
        t = pfsfs(home, "put", "bench@master:/small", "-f", str(small), "-r")
        cp = timed(["cp", "-r", str(small), str(base / "small-copy")])
        rate = args.small_files / t
        rows.append(
            (
                f"put {args.small_files} small files",
                f"{rate:.0f} files/s ({t:.2f} s)",
                f"cp -r {cp:.2f} s",
                "target <= 10 s: " + ("met" if t <= 10 else "MISSED"),
            )
        )

        with Repository.open(home) as repo:
            repo.create_repo("history")
            t0 = time.perf_counter()
            with repo.writer() as w:
                for i in range(args.commits):
                    cs = ChangeSet()
                    cs.put("/counter", Entry(FILE, 0o644, 0, 0, i, 0, nfiles=1))
                    repo.commit("history", "master", cs, f"commit {i}", writer=w)
            made = time.perf_counter() - t0
        t = pfsfs(home, "log", "history@master")
        rows.append(
            (
                f"log of {args.commits} commits",
                f"{t:.2f} s",
                f"(making them: {args.commits / made:.0f} commits/s)",
                "target <= 2 s: " + ("met" if t <= 2 else "MISSED"),
            )
        )

    print(f"{'case':<28} {'pfsfs':<28} {'reference':<26} target")
    for r in rows:
        print(f"{r[0]:<28} {r[1]:<28} {r[2]:<26} {r[3]}")


if __name__ == "__main__":
    main()
