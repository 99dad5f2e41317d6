#!/usr/bin/env python3
"""Pipeline benchmark: 1,000 small input files, glob /*, a trivial transform.

Prints the first job's time, the job after one file changed (it must process exactly 1 datum),
the per-datum overhead of the local (bubblewrap) and podman runners, and the cost of traced
reads (the same 1,000-datum job without tracing, with inotify only, and with the default
tracing: inotify and strace of opens outside /pfs on a sample; rotating, best of
``--trace-rounds``), against the targets: <= 50 ms per datum with local, <= 0.5 s with podman,
the incremental job <= 2 s with local, tracing < 5 %. Exits 1 if a target is missed.

    .venv/bin/python scripts/bench_pipeline.py [--quick] [--files N] [--podman-datums N]
                                               [--no-podman] [--parallelism N]
                                               [--trace-rounds N] [--only-trace]
                                               [--outside-every N]
"""

from __future__ import annotations

import argparse
import io
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from pfsfs.changes import ChangeSet
from pfsfs.pipeline.engine import Engine, EngineOptions
from pfsfs.pipeline.scheduler import run_pending
from pfsfs.pipeline.spec import parse_spec_dict
from pfsfs.pipeline.state import JobRecord, create_pipeline, update_pipeline
from pfsfs.pipeline.trace import OUTSIDE_EVERY
from pfsfs.repository import Repository
from pfsfs.transfer import ingest_stream

ROOT = Path(__file__).resolve().parent.parent
TARGET_LOCAL = 0.050
TARGET_PODMAN = 0.5
TARGET_INCREMENTAL = 2.0
TARGET_TRACE = 0.05


def put_files(repo: Repository, name: str, files: dict[str, bytes]) -> None:
    changes = ChangeSet()
    with repo.writer() as w:
        chunker = repo.chunker()
        for path, content in files.items():
            changes.put(path, ingest_stream(io.BytesIO(content), w, chunker))
        repo.commit(name, "master", changes, "bench", writer=w)


def pipeline(name: str, repo: str, runner: str, parallelism: int) -> Any:
    d: dict[str, Any] = {
        "pipeline": {"name": name},
        "input": {"pfs": {"repo": repo, "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", "cp /pfs/in/* /pfs/out/"]},
        "runner": runner,
        "parallelism": parallelism,
    }
    d["input"]["pfs"]["name"] = "in"
    if runner == "podman":
        d["transform"]["image"] = "pfsfs/busybox"
    return parse_spec_dict(d)


def timed_job(engine: Engine, name: str) -> tuple[JobRecord, float]:
    start = time.perf_counter()
    jobs = trio.run(lambda: run_pending(engine, [name]))
    elapsed = time.perf_counter() - start
    if len(jobs) != 1 or jobs[0].state != "success":
        raise SystemExit(f"bench: job of {name} did not succeed: {jobs}")
    return jobs[0], elapsed


def cpu_seconds() -> float:
    """CPU time of this process and of its children that were waited for (the transforms,
    their sandboxes and tracers): on a busy machine, steadier than the wall clock."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def trace_overhead(repo: Repository, n: int, parallelism: int, rounds: int, every: int) -> bool:
    """The same first job (every datum runs) without tracing, with inotify only, and with the
    default tracing (inotify, and opens outside /pfs by strace on the sampled datums: the
    first ``OUTSIDE_FIRST``, then one in ``every``), rotating which goes first; the best
    time of each. Returns True if the default missed the target."""
    spec = pipeline("traced", "data", "local", parallelism)
    create_pipeline(repo, spec)
    engines = {
        "off": Engine(repo, EngineOptions(trace_reads=False)),
        "inotify": Engine(repo, EngineOptions(outside_first=0, outside_every=0)),
        "default": Engine(repo, EngineOptions(outside_every=every)),
    }
    names = list(engines)
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    outside = 0
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            update_pipeline(repo, spec, reprocess=True)  # forget reusable outputs: all run
            before = cpu_seconds()
            job, took = timed_job(engines[name], "traced")
            used = cpu_seconds() - before
            if name != "off":
                datums = engines[name].state.datums_of(job.id)
                read = datums[0].read
                assert read and read[0].startswith("/pfs/in/"), read
                if name == "default":
                    outside = sum(1 for d in datums if d.outside_trace == "ok")
                    assert not job.warnings, job.warnings
            best[name] = min(best.get(name, took), took)
            cpu[name] = min(cpu.get(name, used), used)
    overhead = best["default"] / best["off"] - 1
    print(f"traced reads, {n} datums, best of {rounds} (wall clock; CPU time of the job)")
    for name, label in (
        ("off", "without tracing"),
        ("inotify", "inotify only"),
        ("default", "with tracing"),
    ):
        line = f"  {label + ':':<17}{best[name]:8.2f} s  cpu {cpu[name]:7.2f} s"
        if name != "off":
            wall, used = best[name] / best["off"] - 1, cpu[name] / cpu["off"] - 1
            line += f"  overhead {wall * 100:+.1f} % (cpu {used * 100:+.1f} %)"
        if name == "default":
            line += f"  target < {TARGET_TRACE * 100:.0f} %  {verdict(overhead < TARGET_TRACE)}"
        print(line)
    print(f"  (with tracing: inotify, and strace outside /pfs on {outside} of {n} datums)")
    return overhead >= TARGET_TRACE


def trace_cost(repo: Repository, n: int, args: argparse.Namespace) -> bool:
    return trace_overhead(repo, n, args.parallelism, args.trace_rounds, args.outside_every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 files, 5 podman datums")
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--podman-datums", type=int, default=None)
    parser.add_argument("--no-podman", action="store_true")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--trace-rounds", type=int, default=3, help="0: skip the trace cost")
    parser.add_argument("--only-trace", action="store_true", help="only the trace cost")
    parser.add_argument(
        "--outside-every",
        type=int,
        default=OUTSIDE_EVERY,
        help="trace opens outside /pfs on 1 datum in N after the first (1: all)",
    )
    args = parser.parse_args()
    n = args.files or (100 if args.quick else 1000)
    n_podman = args.podman_datums or (5 if args.quick else 20)
    logging.basicConfig(level=logging.WARNING)
    missed = False
    with tempfile.TemporaryDirectory(prefix="pfsfs-bench-pipeline-") as tmp:
        repo = Repository.open(Path(tmp) / "home")
        try:
            engine = Engine(repo)
            repo.create_repo("data")
            put_files(repo, "data", {f"/f{i:05d}.txt": f"line {i}\n".encode() for i in range(n)})
            if args.only_trace:
                sys.exit(1 if trace_cost(repo, n, args) else 0)
            create_pipeline(repo, pipeline("copy", "data", "local", args.parallelism))
            sandbox = "bubblewrap" if shutil.which("bwrap") else "no sandbox"
            print(f"local runner ({sandbox}), {n} files, glob /*, parallelism {args.parallelism}")
            job, first = timed_job(engine, "copy")
            per = first / n
            print(f"  first job:       {first:8.2f} s  ({job.counts['processed']} datums)")
            print(
                f"  per datum:       {per * 1000:8.1f} ms  target <= {TARGET_LOCAL * 1000:.0f} ms"
                f"  {verdict(per <= TARGET_LOCAL)}"
            )
            missed |= per > TARGET_LOCAL
            put_files(repo, "data", {f"/f{n // 2:05d}.txt": b"changed\n"})
            job, inc = timed_job(engine, "copy")
            exact = job.counts["processed"] == 1 and job.counts["skipped"] == n - 1
            print(
                f"  one file changed:{inc:8.2f} s  ({job.counts['processed']} processed, "
                f"{job.counts['skipped']} skipped)  target <= {TARGET_INCREMENTAL:.0f} s and "
                f"exactly 1 datum  {verdict(inc <= TARGET_INCREMENTAL and exact)}"
            )
            missed |= inc > TARGET_INCREMENTAL or not exact
            put_files(repo, "data", {f"/f{n // 3:05d}.txt": b"changed again\n"})
            start = time.perf_counter()
            cli = [sys.executable, "-m", "pfsfs.cli.main", "--home", str(repo.home)]
            subprocess.run([*cli, "pipeline", "run", "copy"], check=True, capture_output=True)
            took = time.perf_counter() - start
            print(
                f"  same, as `pfsfs pipeline run` (a new process): {took:.2f} s  "
                f"{verdict(took <= TARGET_INCREMENTAL)}"
            )
            missed |= took > TARGET_INCREMENTAL
            if args.trace_rounds:
                missed |= trace_cost(repo, n, args)

            if not args.no_podman and shutil.which("podman"):
                build = ROOT / "scripts" / "build-images.sh"
                subprocess.run([str(build), "busybox"], check=True, capture_output=True)
                repo.create_repo("small")
                put_files(repo, "small", {f"/p{i:03d}": b"x\n" for i in range(n_podman)})
                create_pipeline(repo, pipeline("pod", "small", "podman", args.parallelism))
                job, took = timed_job(engine, "pod")
                per = took / n_podman
                print(f"podman runner, {n_podman} datums, parallelism {args.parallelism}")
                print(
                    f"  per datum:       {per:8.2f} s   target <= {TARGET_PODMAN} s"
                    f"  {verdict(per <= TARGET_PODMAN)}"
                )
                missed |= per > TARGET_PODMAN
            else:
                print("podman runner: skipped")
        finally:
            repo.close()
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
