#!/usr/bin/env python3
"""Issue 19's table in one run: pfsfs figures beside the physical references, with ratios.

Every row is measured ``--runs`` times (default 3), interleaved (run 1 of every row, then run
2, ...) so a busy machine slows every row alike; the page cache is dropped before each timed
step (root only: otherwise the table says "warm"). Printed per row: min / median / max and the
ratio of the medians to the row's reference. The machine's load average is printed before and
after. The exit code is 0 whatever the figures are: the numbers are the output.

Rows (``ROWS``, in order; ``--only`` picks some by name):

- ``ref-cp``: ``cp -a`` of the 1 GiB tree + ``sync`` on the bench directory's disk (the write
  reference);
- ``ref-read``: a cold read of the same files (``cat`` into /dev/null: the read reference);
- ``put``: ``pfsfs put -r`` of the tree into a fresh home on the same disk, + ``sync``;
- ``reput``: the same put again after 1 MiB in the middle of one file was rewritten;
- ``small``: ``pfsfs put -r`` of 10k × 1 KiB files into a fresh home;
- ``get``: ``pfsfs get`` of the committed tree into a fresh directory, + ``sync``.

Adding a row (e.g. the mount rows): write ``def row_x(b: Bench) -> Sample`` measuring one run,
and register it with ``ROWS.append(Row("name", "label", row_x, reference="ref-cp"))``; the
``Bench`` gives the trees, a fresh home (``b.fresh_home()``), ``b.pfsfs(...)``, ``b.cold()``.

    .venv/bin/python scripts/bench_speed.py [--runs 3] [--size-mib 1024] [--files 64]
        [--small-files 10000] [--dir /var/tmp] [--only put,reput] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PFSFS = [sys.executable, "-m", "pfsfs.cli.main"]
MiB = 1 << 20


@dataclass
class Sample:
    """One timed run: seconds, and the work done (bytes or files) for a rate."""

    seconds: float
    amount: float = 0.0


@dataclass
class Row:
    name: str
    label: str
    run: Callable[[Bench], Sample]
    unit: str = "MB/s"  # "MB/s" (amount is bytes), "files/s" (amount is files), "s"
    reference: str | None = None  # the row whose median this one is compared with
    samples: list[Sample] = field(default_factory=list)
    error: str = ""


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False when that is not possible."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        return False
    return True


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


class Bench:
    """The trees and homes shared by the rows of one benchmark run."""

    def __init__(self, base: Path, size: int, files: int, small_files: int) -> None:
        self.base = base
        self.size = size
        self.files = files
        self.small_files = small_files
        self.big = base / "big"
        self.small = base / "small"
        self.cold_ok = True
        self._homes = 0
        self.put_home: Path | None = None  # the home of the last ``put`` row (reput, get use it)

    def make_trees(self) -> None:
        self.big.mkdir()
        for i in range(self.files):
            write_random(self.big / f"f{i:03d}.bin", self.size // self.files)
        self.small.mkdir()
        for i in range(self.small_files):
            d = self.small / f"d{i % 100:02d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i}.txt").write_bytes(os.urandom(1024))

    def fresh_home(self) -> Path:
        self._homes += 1
        home = self.base / f"home{self._homes}"
        self.pfsfs(home, "repo", "create", "bench")
        return home

    def scratch(self, name: str) -> Path:
        path = self.base / name
        if path.exists():
            shutil.rmtree(path)
        return path

    def cold(self) -> None:
        self.cold_ok = drop_caches() and self.cold_ok

    @staticmethod
    def pfsfs(home: Path, *args: str, quiet: bool = True) -> None:
        subprocess.run(
            [*PFSFS, *args],
            check=True,
            env={**os.environ, "PFSFS_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if quiet else None,
            cwd=ROOT,
        )

    def timed(self, fn: Callable[[], None]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def sync() -> None:
    subprocess.run(["sync"], check=True)


# -- the rows ------------------------------------------------------------------------------------


def row_ref_cp(b: Bench) -> Sample:
    out = b.scratch("cp-copy")
    b.cold()
    t = b.timed(lambda: (subprocess.run(["cp", "-a", str(b.big), str(out)], check=True), sync()))
    shutil.rmtree(out)
    return Sample(t, b.size)


def row_ref_read(b: Bench) -> Sample:
    b.cold()
    files = sorted(str(p) for p in b.big.iterdir())
    t = b.timed(lambda: subprocess.run(["cat", *files], check=True, stdout=subprocess.DEVNULL))
    return Sample(t, b.size)


def row_put(b: Bench) -> Sample:
    home = b.fresh_home()
    b.cold()
    t = b.timed(lambda: (b.pfsfs(home, "put", "bench@master:/big", "-r", "-f", str(b.big)), sync()))
    b.put_home = home
    return Sample(t, b.size)


def row_reput(b: Bench) -> Sample:
    if b.put_home is None:
        raise RuntimeError("needs the put row")
    victim = b.big / f"f{b.files // 2:03d}.bin"
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        f.write(os.urandom(MiB))
    b.cold()
    home = b.put_home
    t = b.timed(lambda: (b.pfsfs(home, "put", "bench@master:/big", "-r", "-f", str(b.big)), sync()))
    return Sample(t, b.size)


def row_small(b: Bench) -> Sample:
    home = b.fresh_home()
    b.cold()
    t = b.timed(
        lambda: (b.pfsfs(home, "put", "bench@master:/small", "-r", "-f", str(b.small)), sync())
    )
    shutil.rmtree(home)
    return Sample(t, b.small_files)


def row_get(b: Bench) -> Sample:
    if b.put_home is None:
        raise RuntimeError("needs the put row")
    out = b.scratch("got")
    b.cold()
    home = b.put_home
    t = b.timed(lambda: (b.pfsfs(home, "get", "bench@master:/big", "-o", str(out)), sync()))
    shutil.rmtree(out)
    return Sample(t, b.size)


ROWS: list[Row] = [
    Row("ref-cp", "ref: cp -a {size} + sync (disk write)", row_ref_cp),
    Row("ref-read", "ref: cold read of the {size} (cat)", row_ref_read),
    Row("put", "put {size} directory (+ sync)", row_put, reference="ref-cp"),
    Row("reput", "re-put after a 1 MiB edit (+ sync)", row_reput, unit="s"),
    Row("small", "put {small} x 1 KiB files (+ sync)", row_small, unit="files/s"),
    Row("get", "get {size} (+ sync)", row_get, reference="ref-cp"),
]


# -- the table -----------------------------------------------------------------------------------


def figure(row: Row, s: Sample) -> float:
    if row.unit == "s":
        return s.seconds
    scale = 1e6 if row.unit == "MB/s" else 1.0
    return s.amount / s.seconds / scale


def spread(row: Row) -> tuple[float, float, float]:
    values = sorted(figure(row, s) for s in row.samples)
    return values[0], statistics.median(values), values[-1]


def fmt(row: Row, v: float) -> str:
    if row.unit == "s":
        return f"{v:.2f} s"
    return f"{v:,.0f} {row.unit}"


def print_table(rows: list[Row], b: Bench, load: tuple[list[float], list[float]]) -> None:
    by_name = {r.name: r for r in rows}
    sizes = {"size": f"{b.size / MiB:.0f} MiB", "small": f"{b.small_files:,}"}
    print(f"{'workload':<40} {'min':>14} {'median':>14} {'max':>14}  ratio")
    for row in rows:
        if row.error or not row.samples:
            print(f"{row.label.format(**sizes):<40} failed: {row.error}")
            continue
        label = row.label.format(**sizes)
        lo, med, hi = spread(row)
        times = statistics.median(s.seconds for s in row.samples)
        ratio = ""
        ref = by_name.get(row.reference or "")
        if ref is not None and ref.samples and not ref.error:
            ratio = f"{med / spread(ref)[1]:.0%} of {ref.name}"
        extra = f"  (median {times:.2f} s)" if row.unit != "s" else ""
        print(f"{label:<40} {fmt(row, lo):>14} {fmt(row, med):>14} {fmt(row, hi):>14}  "
              f"{ratio}{extra}")
    before, after = load
    print()
    print(f"runs: {len(rows[0].samples) if rows else 0}; page cache dropped before each step: "
          f"{'yes' if b.cold_ok else 'NO (not root: reads are warm)'}; "
          f"{os.cpu_count()} CPUs; load average before {before[0]:.2f} {before[1]:.2f} "
          f"{before[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    print(f"tree: {b.files} files, {b.size / MiB:.0f} MiB; {b.small_files} small files; "
          f"bench directory {b.base} ({fs_type(b.base)})")


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, typ, *_ = line.split()
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, typ
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--dir", default="/var/tmp", help="where trees and homes go (the disk)")
    ap.add_argument("--only", default="", help="comma-separated row names")
    ap.add_argument("--quick", action="store_true", help="128 MiB, 2,000 small files, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.small_files, args.runs = 128, 2000, 1
    wanted = set(filter(None, args.only.split(",")))
    rows = [r for r in ROWS if not wanted or r.name in wanted]
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pfsfs-speed-") as tmp:
        b = Bench(Path(tmp), args.size_mib * MiB, args.files, args.small_files)
        b.make_trees()
        for _ in range(args.runs):
            for row in rows:
                if row.error:
                    continue
                try:
                    row.samples.append(row.run(b))
                except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
                    row.error = str(exc)
        load_after = list(os.getloadavg())
        print_table(rows, b, (load_before, load_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
