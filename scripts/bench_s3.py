#!/usr/bin/env python3
"""Benchmark pfsfs on S3 against raw boto3, on one moto server started (and killed) here.

In one run, against one ``moto_server`` on a free loopback port, ``--runs`` rounds (default 5),
each round measuring, one right after the other (so a busy machine slows them alike):

1. raw boto3, 8 threads: PUT then GET of 1 GiB in 4 MiB objects (MB/s) — the references;
2. ``pfsfs put`` of a 1 GiB file (the CLI, as a user runs it, start-up included) into a fresh
   home and prefix — target ≥ 80% of that round's raw PUT;
3. a cold-cache read of the committed 1 GiB file through a FUSE mount (``pfsfs mount``, fresh
   home, empty cache; read to the end like ``cat``, then compared with the source untimed) if
   mounting works here — target ≥ 70% of that round's raw GET — and, for reference, with
   ``pfsfs get`` to a local file (another fresh home).

Once per run: raw boto3 with objects of pfsfs's average chunk size (~1.1 MiB: what the same
server allows when every request carries one chunk), and the S3 requests to read every tree
of a 100,000-file commit from a fresh home — target ≤ 100.

Printed per row: min / median / max over the rounds, and the ratio to the reference as the
median (min–max) of the per-round ratios. The load average before and after is printed too.
``--json FILE`` also writes the rows as JSON (``scripts/bench.sh`` prints them in its summary).

The server keeps every object in memory: moto spools objects over ~5 MiB to temporary files
on disk (``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``), which the raw baseline's 4 MiB objects escape
and pfsfs's 16 MiB data packs do not, so the bench raises that limit to 64 MiB; otherwise the
comparison would measure moto's disk, not pfsfs. Each round's put goes to a prefix of its own,
deleted after the round (but the first, which the cold reads read), so moto's memory stays
bounded. Each timed phase starts with a ``sync``, and cold reads drop the page cache (root).

``--quick`` uses 128 MiB, 10,000 files and 2 rounds. Exits 0 even if a target is missed.
To compare with another checkout in the same conditions, point ``PYTHONPATH`` at it: the CLI
runs as ``python -m pfsfs.cli.main`` with this interpreter, from ``/``.

Usage: ``.venv/bin/python scripts/bench_s3.py [--quick] [--runs 5] [--json FILE] [--size-mib N]
[--files N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

BIN = Path(sys.executable).parent
PFSFS = [sys.executable, "-m", "pfsfs.cli.main"]
BUCKET = "bench"
CREDS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
MB = 1e6
CHUNK = 1152 << 10  # pfsfs's average chunk on random data (ChunkParams: ~1.1 MiB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    binary = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
    if binary is None:
        sys.exit("moto_server is not installed (pip install 'moto[server]')")
    with open(workdir / "moto.log", "wb") as out:
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 << 20)},
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("moto_server did not start")
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.kill()
        proc.wait()


def client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        config=Config(max_pool_connections=16),
    )


def raw_boto3(endpoint: str, total: int, size: int) -> tuple[float, float]:
    """(PUT MB/s, GET MB/s) with 8 threads and ``size``-byte objects."""
    c = client(endpoint)
    count = total // size
    body = os.urandom(size)
    keys = [f"raw{size}/{i:05d}" for i in range(count)]
    os.sync()
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: c.put_object(Bucket=BUCKET, Key=k, Body=body), keys))  # type: ignore[attr-defined]
    put = count * size / (time.perf_counter() - start) / MB
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        got = sum(
            pool.map(
                lambda k: len(c.get_object(Bucket=BUCKET, Key=k)["Body"].read()),  # type: ignore[attr-defined]
                keys,
            )
        )
    get = got / (time.perf_counter() - start) / MB
    for k in keys:
        c.delete_object(Bucket=BUCKET, Key=k)  # type: ignore[attr-defined]
    return put, get


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CREDS, "PFSFS_HOME": str(home)}
    # cwd: not the checkout, so that a PYTHONPATH naming another one is what runs
    done = subprocess.run(
        [*PFSFS, *args], env=env, capture_output=True, text=True, timeout=1800, cwd="/"
    )
    if check and done.returncode != 0:
        sys.exit(f"pfsfs {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def init(home: Path, endpoint: str, prefix: str) -> None:
    cli(home, "init", "--store", f"s3://{BUCKET}/{prefix}", "--endpoint-url", endpoint)


def make_source(workdir: Path, total: int) -> Path:
    src = workdir / "big.bin"
    with open(src, "wb") as f:
        left = total
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n
    return src


def pfsfs_put(workdir: Path, endpoint: str, src: Path, total: int, run: int) -> float:
    """MB/s of ``pfsfs put`` of ``src`` into a fresh home and prefix (run 0: prefix "data")."""
    home = workdir / f"writer{run}"
    init(home, endpoint, "data" if run == 0 else f"data{run}")
    cli(home, "repo", "create", "data")
    os.sync()
    start = time.perf_counter()
    cli(home, "put", "data@master:/big.bin", "-f", str(src))
    return total / (time.perf_counter() - start) / MB


def tree_requests(workdir: Path, endpoint: str, nfiles: int) -> tuple[int, int]:
    """(S3 requests, files seen) to read every tree of an ``nfiles``-file commit, fresh home."""
    from pfsfs.changes import ChangeSet
    from pfsfs.home import HomeConfig
    from pfsfs.model import FILE, Entry, ManifestChunk
    from pfsfs.repository import Repository

    os.environ.update(CREDS)
    store = {"type": "s3", "bucket": BUCKET, "prefix": "trees", "endpoint_url": endpoint}
    with Repository.init(workdir / "tree-writer", HomeConfig(store)) as repo:
        repo.create_repo("many")
        changes = ChangeSet()
        with repo.writer() as w:
            for i in range(nfiles):
                data = b"%d" % i
                manifest = w.put_manifest([ManifestChunk(w.put_chunk(data), len(data))])
                entry = Entry(FILE, 0o644, 0, 0, 1, len(data), manifest, nfiles=1)
                changes.put(f"/d{i // 1000:03d}/f{i:06d}", entry)
            repo.commit("many", "master", changes, "many files", writer=w)
    with Repository.init(workdir / "tree-reader", HomeConfig(store)) as reader:
        s3 = reader.store  # the S3 store itself, below the repository's read cache
        s3.requests.reset()
        head = reader.resolve("many@master").commit
        files = sum(1 for _, e in reader.walk(reader.root_of(head)) if e.type == FILE)
        return s3.requests.total, files


def mount_works() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def cold_read(
    workdir: Path, endpoint: str, src: Path, total: int, mount: bool, run: int
) -> tuple[float, str]:
    """(MB/s, how) reading the committed file from a fresh home with an empty cache."""
    home = workdir / f"{'mount' if mount else 'get'}-reader{run}"
    init(home, endpoint, "data")
    if mount and mount_works():
        mnt = workdir / f"mnt{run}"
        mnt.mkdir()
        done = cli(home, "mount", "--read-only", "data@master", str(mnt), check=False)
        if done.returncode == 0:
            try:
                settle_disk()
                start = time.perf_counter()
                n = _read_all(mnt / "big.bin")
                rate = n / (time.perf_counter() - start) / MB
                # Checked after the clock stops, from the page cache the timed read filled.
                if _read_compare(mnt / "big.bin", src) != total:
                    sys.exit("the mounted file has the wrong size")
            finally:
                cli(home, "unmount", str(mnt), check=False)
                cli(home, "daemon", "stop", check=False)
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            return rate, "FUSE mount, empty cache"
        print(f"(mount failed: {done.stderr.strip()})", file=sys.stderr)
        return 0.0, "FUSE mount failed"
    out = workdir / f"out{run}.bin"
    settle_disk()
    start = time.perf_counter()
    cli(home, "get", "data@master:/big.bin", "-o", str(out))
    rate = total / (time.perf_counter() - start) / MB
    if _read_compare(out, src) != total:
        sys.exit("pfsfs get returned the wrong size")
    out.unlink()
    return rate, "pfsfs get, empty cache"


def settle_disk() -> None:
    """Before a cold read: write back what earlier phases left dirty, and (as root) drop the
    page cache, as ``bench_mount.py`` does for its cold reads."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        pass  # not root: the read is still cold for pfsfs (fresh home), not for the kernel


def _read_all(path: Path) -> int:
    """Read ``path`` to the end in 1 MiB requests, as ``cat`` or ``dd`` would; bytes read."""
    n = 0
    buf = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            n += got
    return n


def _read_compare(path: Path, src: Path) -> int:
    n = 0
    with open(path, "rb") as f, open(src, "rb") as g:
        while block := f.read(1 << 20):
            if block != g.read(len(block)):
                sys.exit(f"{path} differs from what was put")
            n += len(block)
    return n


@dataclass
class Row:
    """One line of the table: a figure per round (MB/s, or a count), and what it is against."""

    name: str
    label: str
    values: dict[int, float] = field(default_factory=dict)  # by run number
    unit: str = "MB/s"
    reference: str = ""  # the row whose value of the same round this one is divided by
    target: float | None = None  # the least ratio (or, for counts, the most) that meets it
    note: str = ""

    def ratios(self, rows: dict[str, Row]) -> list[float]:
        ref = rows.get(self.reference)
        if ref is None:
            return []
        return [v / ref.values[run] for run, v in self.values.items() if ref.values.get(run)]


def spread(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return ordered[0], statistics.median(ordered), ordered[-1]


def verdict(row: Row, ratios: list[float]) -> str:
    if row.target is None or not row.values:
        return ""
    if row.unit == "requests":
        met = max(row.values.values()) <= row.target
        return f"<= {row.target:.0f}: {'met' if met else 'MISSED'}"
    if not ratios:
        return ""
    median = statistics.median(ratios)
    met = sum(r >= row.target for r in ratios)
    return (
        f">= {row.target:.0%} of {row.reference}: {'met' if median >= row.target else 'MISSED'}"
        f" (median; {met} of {len(ratios)} runs)"
    )


def summarize(rows: list[Row]) -> list[dict[str, object]]:
    """The rows as plain values: what the table prints and ``--json`` writes."""
    by_name = {r.name: r for r in rows}
    out: list[dict[str, object]] = []
    for row in rows:
        if not row.values:
            out.append({"name": row.name, "label": row.label, "error": row.note or "not run"})
            continue
        lo, med, hi = spread(list(row.values.values()))
        ratios = row.ratios(by_name)
        item: dict[str, object] = {
            "name": row.name,
            "label": row.label,
            "unit": row.unit,
            "runs": len(row.values),
            "min": lo,
            "median": med,
            "max": hi,
            "verdict": verdict(row, ratios),
        }
        if ratios:
            rlo, rmed, rhi = spread(ratios)
            item.update(reference=row.reference, ratio_min=rlo, ratio_median=rmed, ratio_max=rhi)
        out.append(item)
    return out


def print_table(summary: list[dict[str, object]], load: tuple[float, float], note: str) -> None:
    def fmt(item: dict[str, object], key: str) -> str:
        value = float(item[key])  # type: ignore[arg-type]
        return f"{value:,.0f} {item['unit']}" if item["unit"] == "MB/s" else f"{value:.0f}"

    head = f"{'measure':<44} {'min':>10} {'median':>10} {'max':>10}  "
    print(head + f"{'ratio: median (min-max)':<32} target")
    for item in summary:
        if "error" in item:
            print(f"{item['label']:<44} {item['error']}")
            continue
        ratio = ""
        if "ratio_median" in item:
            ratio = (
                f"{item['ratio_median']:.0%} ({item['ratio_min']:.0%}-{item['ratio_max']:.0%}) "
                f"of {item['reference']}"
            )
        print(
            f"{item['label']:<44} {fmt(item, 'min'):>10} {fmt(item, 'median'):>10} "
            f"{fmt(item, 'max'):>10}  {ratio:<32} {item['verdict']}"
        )
    print("* pfsfs's average chunk size: what the store moves per request for big files")
    print(
        f"runs: {max((int(i.get('runs', 0)) for i in summary), default=0)}, interleaved; "
        f"{os.cpu_count()} CPUs; load average (1 min) before {load[0]:.2f}, after {load[1]:.2f}"
        f"{note}"
    )


def delete_prefix(endpoint: str, prefix: str) -> None:
    """Delete every object under ``prefix/`` (a finished round's put: moto's memory)."""
    c = client(endpoint)
    paginator = c.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            c.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB, 10,000 files, 2 runs")
    parser.add_argument("--runs", type=int, default=0, help="interleaved rounds (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON here")
    parser.add_argument("--size-mib", type=int, help="bytes put and read (1024; quick 128)")
    parser.add_argument(
        "--files", type=int, help="files of the tree commit (100,000; quick 10,000)"
    )
    args = parser.parse_args()
    total = (args.size_mib or (128 if args.quick else 1024)) << 20
    nfiles = args.files or (10_000 if args.quick else 100_000)
    runs = args.runs or (2 if args.quick else 5)
    rows = {
        r.name: r
        for r in [
            Row("raw-put", "raw boto3 PUT, 8 threads, 4 MiB objects"),
            Row("raw-get", "raw boto3 GET, 8 threads, 4 MiB objects"),
            Row("raw-put-chunk", "raw boto3 PUT, 8 threads, 1.1 MiB objects*"),
            Row("raw-get-chunk", "raw boto3 GET, 8 threads, 1.1 MiB objects*"),
            Row("put", "pfsfs put (CLI, 1 file)", reference="raw-put", target=0.8),
            Row("tree-requests", "requests to read every tree", unit="requests", target=100),
            Row(
                "mount-read", "cold read, FUSE mount, empty cache", reference="raw-get", target=0.7
            ),
            Row("get-read", "cold read, pfsfs get to a file", reference="raw-get"),
        ]
    }
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, moto_server(Path(tmp)) as ep:
        workdir = Path(tmp)
        client(ep).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        print(f"moto at {ep}; {total >> 20} MiB, {nfiles} files, {runs} runs", file=sys.stderr)
        src = make_source(workdir, total)
        mount = mount_works()
        if not mount:
            rows["mount-read"].note = "not measured: no /dev/fuse or fusermount3 here"
        for run in range(runs):
            raw_put, raw_get = raw_boto3(ep, total, 4 << 20)
            rows["raw-put"].values[run] = raw_put
            rows["raw-get"].values[run] = raw_get
            rows["put"].values[run] = pfsfs_put(workdir, ep, src, total, run)
            if mount:
                rate, how = cold_read(workdir, ep, src, total, True, run)
                if rate > 0:
                    rows["mount-read"].values[run] = rate
                else:
                    rows["mount-read"].note = how
            rows["get-read"].values[run] = cold_read(workdir, ep, src, total, False, run)[0]
            if run > 0:
                delete_prefix(ep, f"data{run}")
            print(f"run {run + 1} of {runs} done", file=sys.stderr)
        small_put, small_get = raw_boto3(ep, total, CHUNK)
        rows["raw-put-chunk"].values[0] = small_put
        rows["raw-get-chunk"].values[0] = small_get
        requests, files = tree_requests(workdir, ep, nfiles)
        rows["tree-requests"].values[0] = requests
        rows["tree-requests"].label += f", {files} files"
    summary = summarize(list(rows.values()))
    load = (load_before, os.getloadavg()[0])
    dropped = os.geteuid() == 0
    print_table(summary, load, "" if dropped else "; NOT root: cold reads are warm for the kernel")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": summary, "load": load}, indent=1))


if __name__ == "__main__":
    main()
