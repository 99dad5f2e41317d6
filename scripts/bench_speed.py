#!/usr/bin/env python3
"""Issue 19's table in one run: pfsfs figures beside the physical references, with ratios.

Every row is measured ``--runs`` times (default 3), interleaved (run 1 of every row, then run
2, ...) so a busy machine slows every row alike; the page cache is dropped before each timed
step (root only: otherwise the table says "warm"), then the CLI is run once untimed so the
program itself is warm (``Bench.cold``). Printed per row: min / median / max, and against each
reference the median (min-max) of the per-run ratios (``run_ratios``), the target's verdict on
the median and in how many runs it was met. The machine's load average is printed before and
after. The exit code is 0 whatever the figures are: the numbers are the output.

Rows (``ROWS``, in order; ``--only`` picks some by name):

- ``ref-cp``: ``cp -a`` of the 1 GiB tree (64 files) + ``sync`` on the bench directory's disk
  (the reference of ``put``: the same bytes read and written on the same disk);
- ``ref-write``: the disk's write speed: the same bytes from memory (/dev/shm) into one file
  with ``dd conv=fsync`` (the reference of ``get``);
- ``ref-read``: a cold read of the same files (``cat`` into /dev/null: for cold-read rows);
- ``ref-rw``: the disk reading and writing at once, what any restore from this disk does: a
  cold read of the tree (4 ``cat`` in parallel) while ``dd`` writes the in-memory copy with
  ``conv=fsync`` (the bound of ``get``, which reads its store from the same disk while it
  writes; ``ref-write`` writes only);
- ``put``: ``pfsfs put -r`` of the tree into a fresh home on the same disk, + ``sync``;
- ``reput``: the same put again after 1 MiB in the middle of one file was rewritten;
- ``small``: ``pfsfs put -r`` of 10k × 1 KiB files into a fresh home, + ``sync``;
- ``get``: ``pfsfs get`` of the committed tree into a fresh directory, + ``sync``;
- ``get-file``: ``pfsfs get -o`` of the same bytes committed as one file, + ``sync``;
- ``cat``: ``pfsfs cat`` of that file into /dev/null (the reference: ``ref-read``).

Adding a row (e.g. the mount rows): write ``def row_x(b: Bench) -> Sample`` measuring one run,
and register it in ``ROWS`` as ``Row("name", "label", row_x, reference="ref-read", target=...,
met=...)``; the ``Bench`` gives the trees (``b.big``, ``b.small``), a fresh home
(``b.fresh_home()``), ``b.pfsfs(home, ...)``, ``b.cold()`` (sync + drop caches), ``b.scratch``.

To compare with another checkout in the same conditions, point ``PYTHONPATH`` at it: the CLI
runs as ``python -m pfsfs.cli.main`` with this interpreter.

    .venv/bin/python scripts/bench_speed.py [--runs 3] [--size-mib 1024] [--files 64]
        [--small-files 10000] [--dir /var/tmp] [--only put,reput] [--quick] [--json FILE]

``--json FILE`` also writes the table's rows as JSON (``scripts/bench.sh`` prints them in its
summary).
"""

from __future__ import annotations

import argparse
import json
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

PFSFS = [sys.executable, "-m", "pfsfs.cli.main"]
#: The CLI's environment: as installed, pfsfs has its bytecode compiled (pip does it), so a
#: PYTHONDONTWRITEBYTECODE of the caller's is dropped: the warm-up run (``Bench.cold``) writes
#: the .pyc files (ignored by git) instead of every timed run compiling every module again.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
MiB = 1 << 20


@dataclass
class Sample:
    """One timed run: seconds, and the work done (bytes or files) for a rate."""

    seconds: float
    amount: float = 0.0


@dataclass
class Row:
    """One line of the table: ``run`` measures one run of it (``Bench`` gives the trees)."""

    name: str
    label: str  # "{size}" / "{small}" are filled in
    run: Callable[[Bench], Sample]
    unit: str = "MB/s"  # "MB/s" (amount is bytes), "files/s" (amount is files), "s"
    reference: str | None = None  # the row whose median this one is compared with
    also: tuple[str, ...] = ()  # more references, shown beside the first
    target: str = ""  # issue 19's target, shown beside the figures
    met: Callable[[float, float | None], bool] | None = None  # (median, ratio) → met?
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
        self.one_file_put = False  # whether put_home holds /one.bin (``_one_file``)

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
        """Cold data, warm program: drop the page cache, then run the CLI once (untimed) so
        the interpreter and pfsfs's modules are cached again, as for any command run twice
        (a cold Python start is ~0.2 s of disk reads that ``cp`` does not have)."""
        self.cold_ok = drop_caches() and self.cold_ok
        subprocess.run(
            [*PFSFS, "--help"], check=True, stdout=subprocess.DEVNULL, cwd="/", env=CLI_ENV
        )

    @staticmethod
    def pfsfs(home: Path, *args: str) -> None:
        """Run the CLI as a user does (a fresh process); a failure raises with its stderr."""
        proc = subprocess.run(
            [*PFSFS, *args],
            env={**CLI_ENV, "PFSFS_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",  # not the checkout: PYTHONPATH may name another one to compare
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"pfsfs {args[0]} exited {proc.returncode}: {err[-1:]}")

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


def row_ref_write(b: Bench) -> Sample:
    """The disk's write speed: the tree's bytes from memory (a tmpfs copy) to one file on the
    bench disk, ``dd`` with ``conv=fsync``."""
    src = _memory_copy(b)
    out = b.base / "dd.bin"
    try:
        b.cold()
        t = b.timed(
            lambda: subprocess.run(
                ["dd", f"if={src}", f"of={out}", "bs=16M", "conv=fsync", "status=none"], check=True
            )
        )
    finally:
        out.unlink(missing_ok=True)
    return Sample(t, b.size)


def cleanup_ref_write() -> None:
    Path(f"/dev/shm/pfsfs-speed-{os.getpid()}.bin").unlink(missing_ok=True)


def _memory_copy(b: Bench) -> Path:
    """The tree's bytes in one file in memory (/dev/shm), made once per run."""
    mem = Path("/dev/shm")
    if not mem.is_dir():
        raise RuntimeError("no /dev/shm for the in-memory source")
    src = mem / f"pfsfs-speed-{os.getpid()}.bin"
    if not src.exists():
        with src.open("wb") as out:
            subprocess.run(["cat", *sorted(map(str, b.big.iterdir()))], check=True, stdout=out)
    return src


def row_ref_rw(b: Bench) -> Sample:
    """The disk reading the tree cold (4 ``cat`` in parallel) while ``dd`` writes the same
    number of bytes from memory with ``conv=fsync``: until both are done."""
    src = _memory_copy(b)
    out = b.base / "dd-rw.bin"
    files = sorted(str(p) for p in b.big.iterdir())
    groups = [files[k::4] for k in range(4) if files[k::4]]

    def both() -> None:
        readers = [subprocess.Popen(["cat", *g], stdout=subprocess.DEVNULL) for g in groups]
        dd = ["dd", f"if={src}", f"of={out}", "bs=16M", "conv=fsync", "status=none"]
        subprocess.run(dd, check=True)
        if any(r.wait() != 0 for r in readers):
            raise RuntimeError("cat of the tree failed")

    try:
        b.cold()
        t = b.timed(both)
    finally:
        out.unlink(missing_ok=True)
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
    b.put_home, b.one_file_put = home, False
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


def _one_file(b: Bench) -> Path:
    """The put row's home, holding the tree's bytes also as one file (``/one.bin``, put once
    from the in-memory copy, untimed): what the one-file rows read."""
    if b.put_home is None:
        raise RuntimeError("needs the put row")
    if not b.one_file_put:
        b.pfsfs(b.put_home, "put", "bench@master:/one.bin", "-f", str(_memory_copy(b)))
        b.one_file_put = True
    return b.put_home


def row_get_file(b: Bench) -> Sample:
    home = _one_file(b)
    out = b.scratch("got.bin")
    b.cold()
    t = b.timed(lambda: (b.pfsfs(home, "get", "bench@master:/one.bin", "-o", str(out)), sync()))
    out.unlink()
    return Sample(t, b.size)


def row_cat(b: Bench) -> Sample:
    home = _one_file(b)
    b.cold()
    t = b.timed(lambda: b.pfsfs(home, "cat", "bench@master:/one.bin"))  # stdout: /dev/null
    return Sample(t, b.size)


def _at_least(x: float) -> Callable[[float, float | None], bool]:
    return lambda _median, ratio: ratio is not None and ratio >= x


ROWS: list[Row] = [
    Row("ref-cp", "ref: cp -a {size} + sync", row_ref_cp),
    Row("ref-write", "ref: disk write {size} (dd, fsync)", row_ref_write),
    Row("ref-read", "ref: cold read of the {size} (cat)", row_ref_read),
    Row("ref-rw", "ref: cold read + disk write at once", row_ref_rw),
    Row(
        "put",
        "put {size} directory (+ sync)",
        row_put,
        reference="ref-cp",
        target=">= 80% of cp -a + sync",
        met=_at_least(0.8),
    ),
    Row(
        "reput",
        "re-put after a 1 MiB edit (+ sync)",
        row_reput,
        unit="s",
        target="<= 0.3 s",
        met=lambda median, _r: median <= 0.3,
    ),
    Row(
        "small",
        "put {small} x 1 KiB files (+ sync)",
        row_small,
        unit="files/s",
        target=">= 10,000 files/s",
        met=lambda median, _r: median >= 10_000,
    ),
    Row(
        "get",
        "get {size} (+ sync)",
        row_get,
        reference="ref-write",
        also=("ref-rw", "ref-cp"),
        target=">= 80% of disk write",
        met=_at_least(0.8),
    ),
    Row(
        "get-file",
        "get one {size} file (+ sync)",
        row_get_file,
        reference="ref-write",
        also=("ref-rw",),
        target=">= 80% of disk write",
        met=_at_least(0.8),
    ),
    Row("cat", "cat one {size} file (> /dev/null)", row_cat, reference="ref-read"),
]
# The mount rows of issue 19 go here too: a ``row_x(b: Bench) -> Sample`` each, appended to
# ROWS with its reference row (``reference="ref-read"`` for cold reads through a mount).


# -- the table -----------------------------------------------------------------------------------


def figure(row: Row, s: Sample) -> float:
    if row.unit == "s":
        return s.seconds
    scale = 1e6 if row.unit == "MB/s" else 1.0
    return s.amount / s.seconds / scale


def spread(row: Row) -> tuple[float, float, float]:
    values = sorted(figure(row, s) for s in row.samples)
    return values[0], statistics.median(values), values[-1]


def run_ratios(row: Row, by_name: dict[str, Row]) -> dict[str, list[float]]:
    """For each of the row's references measured: the row's figure over the reference's in
    each run. The rows of one run are measured one right after another, so these pair figures
    taken minutes apart at most; a ratio of medians would pair runs far apart, and this disk's
    speed drifts by up to 2x between them (``dd`` of 1 GiB: 472-1,320 MB/s in one bench run)."""
    out: dict[str, list[float]] = {}
    for name in (row.reference, *row.also):
        ref = by_name.get(name or "")
        if name and ref is not None and ref.samples and not ref.error:
            pairs = zip(row.samples, ref.samples, strict=False)  # a failed ref stopped early
            out[name] = [figure(row, s) / figure(ref, r) for s, r in pairs]
    return out


def fmt(row: Row, v: float) -> str:
    if row.unit == "s":
        return f"{v:.2f} s"
    return f"{v:,.0f} {row.unit}"


def print_table(rows: list[Row], b: Bench, load: tuple[list[float], list[float]]) -> None:
    by_name = {r.name: r for r in rows}
    sizes = {"size": f"{b.size / MiB:.0f} MiB", "small": f"{b.small_files:,}"}
    print(
        f"{'workload':<38} {'min':>15} {'median':>15} {'max':>15}  "
        f"{'ratio per run: median (min-max)':<60} {'median s':>8}  target"
    )
    for row in rows:
        label = row.label.format(**sizes)
        if row.error or not row.samples:
            print(f"{label:<38} failed: {row.error}")
            continue
        lo, med, hi = spread(row)
        times = statistics.median(s.seconds for s in row.samples)
        ratio, shown = None, []
        per_run = run_ratios(row, by_name)
        for i, (name, ratios) in enumerate(per_run.items()):
            r = statistics.median(ratios)
            ratio = r if i == 0 else ratio
            shown.append(f"{r:.0%} ({min(ratios):.0%}-{max(ratios):.0%}) of {name}")
        verdict = ""
        if row.met is not None:
            verdict = f"{row.target}: {'met' if row.met(med, ratio) else 'MISSED'}"
            if row.reference in per_run:  # how often a single run met it
                runs = per_run[row.reference]
                verdict += f" ({sum(row.met(med, r) for r in runs)} of {len(runs)} runs)"
        print(
            f"{label:<38} {fmt(row, lo):>15} {fmt(row, med):>15} {fmt(row, hi):>15}  "
            f"{', '.join(shown):<60} {times:>8.2f}  {verdict}"
        )
    before, after = load
    print()
    print(
        f"runs: {len(rows[0].samples) if rows else 0}; page cache dropped before each step: "
        f"{'yes' if b.cold_ok else 'NO (not root: reads are warm)'}; "
        f"{os.cpu_count()} CPUs; load average before {before[0]:.2f} {before[1]:.2f} "
        f"{before[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    )
    print(
        f"tree: {b.files} files, {b.size / MiB:.0f} MiB; {b.small_files} small files; "
        f"bench directory {b.base} ({fs_type(b.base)})"
    )


def summary(rows: list[Row], b: Bench) -> list[dict[str, object]]:
    """The table's rows as plain values (``--json``): figures, ratios to each reference."""
    by_name = {r.name: r for r in rows}
    sizes = {"size": f"{b.size / MiB:.0f} MiB", "small": f"{b.small_files:,}"}
    out: list[dict[str, object]] = []
    for row in rows:
        item: dict[str, object] = {"name": row.name, "label": row.label.format(**sizes)}
        if row.error or not row.samples:
            item["error"] = row.error or "not run"
            out.append(item)
            continue
        lo, med, hi = spread(row)
        per_run = run_ratios(row, by_name)
        ratios = {name: statistics.median(r) for name, r in per_run.items()}
        ratio_range = {name: [min(r), max(r)] for name, r in per_run.items()}
        item.update(unit=row.unit, runs=len(row.samples), min=lo, median=med, max=hi)
        item.update(ratios=ratios, ratio_range=ratio_range, target=row.target)
        if row.met is not None:
            item["met"] = row.met(med, ratios.get(row.reference or ""))
        out.append(item)
    return out


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
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.small_files, args.runs = 128, 2000, 1
    wanted = set(filter(None, args.only.split(",")))
    rows = [r for r in ROWS if not wanted or r.name in wanted]
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pfsfs-speed-") as tmp:
        b = Bench(Path(tmp), args.size_mib * MiB, args.files, args.small_files)
        b.make_trees()
        # A tree exists before it is put: files written within a put's racy window (2 s,
        # ``pfsfs.transfer.RACY_NS``) are not stat-cached, so let them age past it.
        time.sleep(2.5)
        try:
            for _ in range(args.runs):
                for row in rows:
                    if row.error:
                        continue
                    try:
                        row.samples.append(row.run(b))
                    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
                        row.error = str(exc)
        finally:
            cleanup_ref_write()
        load_after = list(os.getloadavg())
        print_table(rows, b, (load_before, load_after))
        if args.json:
            doc = {"rows": summary(rows, b), "load": [load_before[0], load_after[0]]}
            doc.update(cold=b.cold_ok, size_mib=args.size_mib, files=args.files)
            Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
