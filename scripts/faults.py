#!/usr/bin/env python3
"""Fault-injection campaign: kill -9 at random points, and S3 deaths, checked against a model.

    sudo .venv/bin/python scripts/faults.py [--seed S] [--kills N] [--max-mib M] [--keep]

Three homes in a temp dir, all driven through the real ``pfsfs`` CLI and real FUSE mounts:

- local: a home with its daemon and one read-write mount. Faults: kill -9 of a ``put``, of a
  ``gc`` (with garbage to delete), of the daemon while a writer fsyncs files (``write``), mid-
  ``snapshot`` and mid-``unmount`` (then restart + ``pfsfs recover``), of the mount worker.
- pipeline: a home without a daemon and a ``runner: local`` pipeline; kill -9 of ``pfsfs
  pipeline run`` mid-job, then the next run must finish and the output match the input.
- s3: a home on moto (atomic conditional writes, ``tests/atomic_moto.py``) reached through a
  killable TCP proxy (``tests/tcpproxy.py``). The *server* is killed and restarted from the
  client's view (connections reset, refused for a while, back) mid-``put``, mid-ref-move (a
  small put: most of its time is the ref CAS) and mid-``gc``; the client is killed -9 mid-put.
  moto itself is never killed: it keeps its data in memory, so a real restart loses the bucket.

The model holds what was acknowledged: a ``put`` that exited 0, a snapshot or unmount that
printed an id, an ``fsync`` that returned (the writer prints each). After every fault: no
"Traceback" in any output, exit codes as documented (-9 for the killed process itself, 0 or
9 for a CLI whose daemon died, 0 or 7 for a CLI whose S3 server died), ``fsck --deep`` clean, and
every acknowledged byte read back. A path that is missing is *lost*; one that reads back other
bytes than any version acknowledged or attempted is a *silent corruption*.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers live in tests/ of this checkout

from tests import atomic_moto, s3server  # noqa: E402
from tests.fusehelpers import PFSFS, Env, force_unmount, fuse_mounts  # noqa: E402
from tests.s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY  # noqa: E402
from tests.tcpproxy import KillableProxy  # noqa: E402

WRITER = textwrap.dedent(
    """
    import os, sys
    root, first, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import random
    rng = random.Random(seed)
    i = first
    while True:
        data = os.urandom(rng.choice([1, 700, 4096, 65536, 300000, 2 << 20]))
        name = f"w{i:06d}"
        fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        with open(os.path.join(root, "..", "acks", name), "wb") as f:
            f.write(data)
        print(name, flush=True)
        i += 1
    """
)


@dataclass
class Figures:
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    checked_bytes: int = 0
    checked_files: int = 0
    lost: int = 0
    corrupt: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  FAILURE: {what}", flush=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Campaign:
    def __init__(self, work: Path, rng: random.Random, max_mib: int) -> None:
        self.work = work
        self.rng = rng
        self.max_mib = max_mib
        self.fig = Figures()
        self.counter = 0
        # model: home name -> repo -> path -> acknowledged bytes (the newest per path)
        self.acked: dict[tuple[str, str], dict[str, bytes]] = collections.defaultdict(dict)

    # -- plumbing ---------------------------------------------------------------------------
    def cli(self, env: Env, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = env.run(*args, check=False, timeout=timeout)
        self.no_traceback(f"pfsfs {' '.join(args)}", proc.stdout + proc.stderr)
        return proc

    def ok(self, env: Env, *args: str) -> str:
        proc = self.cli(env, *args)
        if proc.returncode != 0:
            self.fig.fail(f"pfsfs {' '.join(args)} exited {proc.returncode}: {proc.stderr[-400:]}")
        return proc.stdout.strip()

    def no_traceback(self, what: str, text: str) -> None:
        if "Traceback" in text:
            self.fig.fail(f"traceback in {what}: {text[-800:]}")

    def popen(self, env: Env, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PFSFS, "--home", str(env.home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env.environ,
        )

    def finish(
        self, proc: subprocess.Popen[str], what: str, allowed: tuple[int, ...]
    ) -> tuple[int, str]:
        out, err = proc.communicate(timeout=300)
        self.no_traceback(what, out + err)
        if proc.returncode not in allowed:
            self.fig.fail(f"{what} exited {proc.returncode} (allowed {allowed}): {err[-400:]}")
        return proc.returncode, out

    def kill_after(self, proc: subprocess.Popen[str], delay: float) -> None:
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()

    def new_bytes(self) -> bytes:
        return os.urandom(self.rng.choice([100, 70 << 10, 1 << 20, self.max_mib << 20]))

    def check(self, env: Env, home: str, repo: str, attempted: dict[str, bytes]) -> None:
        """fsck --deep, then every acknowledged path of ``repo`` reads back; paths of attempts
        that are there read back the attempted bytes (then they are acknowledged now)."""
        fsck = self.cli(env, "fsck", "--deep")
        if fsck.returncode != 0:
            self.fig.fail(f"fsck --deep on {home}: {fsck.stdout[-600:]}{fsck.stderr[-300:]}")
        out = self.work / "check"
        shutil.rmtree(out, ignore_errors=True)
        got = self.cli(env, "get", f"{repo}@master", "-o", str(out))
        if got.returncode not in (0, 3):
            self.fig.fail(f"get {repo}@master on {home}: {got.stderr[-300:]}")
        model = self.acked[(home, repo)]
        for path, data in list(model.items()):
            f = out / path
            if not f.is_file():
                self.fig.lost += 1
                self.fig.fail(f"LOST {home}:{repo}:/{path} ({len(data)} bytes)")
                continue
            back = f.read_bytes()
            self.fig.checked_files += 1
            self.fig.checked_bytes += len(data)
            if back != data and back != attempted.get(path):
                self.fig.corrupt += 1
                self.fig.fail(f"CORRUPT {home}:{repo}:/{path}: {len(back)} bytes, not the acked")
            elif back != data:
                model[path] = back  # a later attempt that completed
        for path, data in attempted.items():
            f = out / path
            if path not in model and f.is_file():
                back = f.read_bytes()
                if back != data:
                    self.fig.corrupt += 1
                    self.fig.fail(f"CORRUPT {home}:{repo}:/{path}: neither absent nor attempted")
                else:
                    model[path] = data
        shutil.rmtree(out, ignore_errors=True)

    # -- local home: put, gc ----------------------------------------------------------------
    def fault_put(self, env: Env, home: str = "local", kind: str = "put") -> None:
        self.counter += 1
        model = self.acked[(home, "r")]
        path = (
            self.rng.choice(sorted(model))
            if model and self.rng.random() < 0.3
            else f"p{self.counter:05d}"
        )
        data = self.new_bytes()
        src = self.work / "src"
        src.write_bytes(data)
        proc = self.popen(env, "put", f"r@master:/{path}", "-f", str(src))
        self.kill_after(proc, self.rng.uniform(0.1, 0.3 + self.max_mib / 40))
        rc, _ = self.finish(proc, f"put killed ({home})", (0, -9))
        if rc == 0:
            model[path] = data
        self.fig.faults[kind] += 1
        self.check(env, home, "r", {path: data})

    def fault_gc(self, env: Env) -> None:
        self.ok(env, "repo", "create", "junk")
        for i in range(self.rng.randint(1, 4)):
            (self.work / "junk").write_bytes(self.new_bytes())
            self.ok(env, "put", f"junk@master:/j{i}", "-f", str(self.work / "junk"))
        self.ok(env, "repo", "delete", "junk", "--force")
        proc = self.popen(env, "gc")
        self.kill_after(proc, self.rng.uniform(0.1, 0.6))
        self.finish(proc, "gc killed", (0, -9))
        self.fig.faults["gc"] += 1
        self.check(env, "local", "r", {})
        self.ok(env, "gc")  # a later gc finishes what the killed one left

    # -- local home: the mount ---------------------------------------------------------------
    def mount(self, env: Env) -> Path:
        mp = self.work / "local" / "mnt"
        if mp not in [Path(m) for m in fuse_mounts(str(mp))]:
            mp.mkdir(parents=True, exist_ok=True)
            self.ok(env, "mount", "m@master", str(mp), "--create")
        return mp

    def acked_writes(self, mp: Path, n: int) -> None:
        model = self.acked[("local", "m")]
        for _ in range(n):
            self.counter += 1
            data = self.new_bytes()
            name = f"s{self.counter:06d}"
            fd = os.open(mp / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            model[name] = data

    def start_writer(self, mp: Path) -> subprocess.Popen[str]:
        acks = mp.parent / "acks"
        acks.mkdir(exist_ok=True)
        self.counter += 1000
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, str(mp), str(self.counter), str(self.rng.random())[2:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def collect_writer(self, writer: subprocess.Popen[str], mp: Path) -> None:
        if writer.poll() is None:
            writer.kill()
        out, _ = writer.communicate()
        acks = mp.parent / "acks"
        for name in out.split():  # every line printed came after its fsync returned
            self.acked[("local", "m")][name] = (acks / name).read_bytes()
        shutil.rmtree(acks, ignore_errors=True)

    def restart_and_recover(self, env: Env, mp: Path) -> None:
        env.kill_daemon(signal.SIGKILL)
        env.start_daemon()
        force_unmount(mp)
        self.ok(env, "recover")

    def fault_daemon(self, env: Env, during: str) -> None:
        mp = self.mount(env)
        writer = None
        if during == "write":
            writer = self.start_writer(mp)
            time.sleep(self.rng.uniform(0.2, 1.5))
        else:
            self.acked_writes(mp, self.rng.randint(1, 4))
        proc = None
        if during in ("snapshot", "unmount"):
            proc = self.popen(env, during, str(mp), "-m", f"faults {during}")
            time.sleep(self.rng.uniform(0.0, 0.5))
        if during == "worker":
            writer = self.start_writer(mp)
            time.sleep(self.rng.uniform(0.2, 1.0))
            workers = [pid for pid, cmd in daemon_children(env) if "-m pfsfsd.worker " in cmd]
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
            if writer is not None:
                self.collect_writer(writer, mp)
            force_unmount(mp)
            self.ok(env, "recover")
        else:
            self.restart_and_recover(env, mp)
            if writer is not None:
                self.collect_writer(writer, mp)
        if proc is not None:
            # 9: "is a dead mount (no daemon is running)", the CLI arriving between the kill
            # and the restart.
            rc, out = self.finish(proc, f"{during} whose daemon died", (0, 9))
            if rc == 0 and out.strip():  # it printed an id: that commit holds what was acked
                self.check_commit(env, out.strip())
        self.fig.faults[during if during != "worker" else "mount worker"] += 1
        self.check(env, "local", "m", {})

    def check_commit(self, env: Env, commit: str) -> None:
        out = self.work / "commit"
        shutil.rmtree(out, ignore_errors=True)
        self.ok(env, "get", f"m@{commit}", "-o", str(out))
        for name, data in self.acked[("local", "m")].items():
            f = out / name
            if not f.is_file() or f.read_bytes() != data:
                self.fig.lost += 1
                self.fig.fail(f"commit {commit} printed by a snapshot lacks {name}")
        shutil.rmtree(out, ignore_errors=True)

    # -- pipeline ------------------------------------------------------------------------
    def fault_pipeline(self, env: Env) -> None:
        n = self.rng.randint(1, 3)
        for _ in range(n):
            self.counter += 1
            (self.work / "in").write_bytes(self.new_bytes())
            self.ok(env, "put", f"data@master:/d{self.counter:05d}", "-f", str(self.work / "in"))
        proc = self.popen(env, "pipeline", "run")
        self.kill_after(proc, self.rng.uniform(0.1, 2.0))
        self.finish(proc, "pipeline run killed", (0, -9))
        self.fig.faults["pipeline job"] += 1
        fsck = self.cli(env, "fsck", "--deep")
        if fsck.returncode != 0:
            self.fig.fail(f"fsck --deep on pipeline home: {fsck.stdout[-600:]}")
        # The output is a complete copy of some input commit: every output file is an input's.
        self.compare_pipeline(env, complete=False)
        self.ok(env, "pipeline", "run")
        self.compare_pipeline(env, complete=True)

    def compare_pipeline(self, env: Env, complete: bool) -> None:
        inp, outp = self.work / "pin", self.work / "pout"
        for d in (inp, outp):
            shutil.rmtree(d, ignore_errors=True)
        self.ok(env, "get", "data@master", "-o", str(inp))
        got = self.cli(env, "get", "copy@master", "-o", str(outp))
        outs = sorted(p.name for p in outp.iterdir()) if outp.is_dir() else []
        for name in outs:
            if (
                not (inp / name).is_file()
                or (inp / name).read_bytes() != (outp / name).read_bytes()
            ):
                self.fig.corrupt += 1
                self.fig.fail(f"pipeline output {name} is not its input")
            else:
                self.fig.checked_bytes += (outp / name).stat().st_size
                self.fig.checked_files += 1
        if complete and (got.returncode != 0 or outs != sorted(p.name for p in inp.iterdir())):
            self.fig.lost += 1
            self.fig.fail(f"pipeline output after a clean run: {outs[:5]}...")

    # -- S3 --------------------------------------------------------------------------------
    def fault_s3(self, env: Env, direct: Env, proxy: KillableProxy, what: str) -> None:
        self.counter += 1
        model = self.acked[("s3", "r")]
        path = f"p{self.counter:05d}"
        data = os.urandom(
            self.rng.choice([100, 4096])
            if what == "ref move"
            else self.rng.choice([1 << 20, 8 << 20, self.max_mib << 20])
        )
        attempted: dict[str, bytes] = {}
        if what == "gc":
            self.ok(direct, "repo", "create", "junk")
            (self.work / "junk").write_bytes(os.urandom(2 << 20))
            self.ok(direct, "put", "junk@master:/j", "-f", str(self.work / "junk"))
            self.ok(direct, "repo", "delete", "junk", "--force")
            proc = self.popen(env, "gc")
        else:
            (self.work / "s3src").write_bytes(data)
            attempted[path] = data
            proc = self.popen(env, "put", f"r@master:/{path}", "-f", str(self.work / "s3src"))
        time.sleep(self.rng.uniform(0.2, 1.0 if what == "ref move" else 2.0))
        if what == "client":
            proc.kill()
            allowed: tuple[int, ...] = (0, -9)
        else:
            proxy.kill()
            time.sleep(self.rng.uniform(0.2, 2.0))
            proxy.restart()
            allowed = (0, 7)
        rc, _ = self.finish(proc, f"s3 {what}", allowed)
        if rc == 0 and attempted:
            model[path] = data
        self.fig.faults[
            f"s3 {'client kill mid-put' if what == 'client' else 'server mid-' + what}"
        ] += 1
        self.check(direct, "s3", "r", attempted)


def daemon_children(env: Env) -> list[tuple[int, str]]:
    assert env.proc is not None
    pid, found = env.proc.pid, []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                try:
                    with open(f"/proc/{child}/cmdline", "rb") as c:
                        found.append((int(child), c.read().replace(b"\0", b" ").decode()))
                except OSError:
                    pass
    return found


def s3_env(work: Path, name: str, endpoint: str, bucket: str, environ: dict[str, str]) -> Env:
    env = Env(work / name, environ)
    env.home.parent.mkdir(parents=True, exist_ok=True)
    env.run("init", "--store", f"s3://{bucket}/faults", "--endpoint-url", endpoint)
    config = env.home / "config.json"
    conf = json.loads(config.read_text())
    conf["store"].update(max_attempts=3, connect_timeout=2)  # a dead server fails within seconds
    config.write_text(json.dumps(conf))
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--kills", type=int, default=60, help="faults to inject (default 60)")
    ap.add_argument("--max-mib", type=int, default=24, help="largest file written (MiB)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"faults: seed {seed}, {args.kills} faults", flush=True)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="pfsfs-faults-"))
    camp = Campaign(work, rng, args.max_mib)
    started = time.monotonic()
    with ExitStack() as stack:
        stack.callback(lambda: [force_unmount(m) for m in fuse_mounts(str(work))])
        local = Env(work / "local")
        local.start_daemon()
        stack.callback(local.stop_daemon)
        camp.ok(local, "repo", "create", "r")

        pipe = Env(work / "pipeline", {"PFSFS_NO_DAEMON": "1"})
        camp.ok(pipe, "repo", "create", "data")
        spec = work / "copy.json"
        spec.write_text(
            json.dumps(
                {
                    "pipeline": {"name": "copy"},
                    "input": {"pfs": {"repo": "data", "glob": "/*"}},
                    "transform": {"cmd": ["sh", "-c", "sleep 0.2; cp /pfs/data/* /pfs/out/"]},
                    "runner": "local",
                }
            )
        )
        camp.ok(pipe, "pipeline", "create", "-f", str(spec))

        (work / "moto").mkdir()
        script = atomic_moto.executable(work / "moto")
        s3server.moto_server_binary = lambda: script  # conditional writes atomic, as on AWS
        server = stack.enter_context(s3server.run_moto_server())
        proxy = KillableProxy(int(server.endpoint.rsplit(":", 1)[1]))
        stack.callback(proxy.kill)
        aws = {
            "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PFSFS_NO_DAEMON": "1",
        }
        s3 = s3_env(work, "s3", proxy.endpoint, server.bucket, aws)
        direct = s3_env(work, "s3direct", server.endpoint, server.bucket, aws)
        camp.ok(s3, "repo", "create", "r")

        kinds = [
            ("put", lambda: camp.fault_put(local)),
            ("gc", lambda: camp.fault_gc(local)),
            ("write", lambda: camp.fault_daemon(local, "write")),
            ("snapshot", lambda: camp.fault_daemon(local, "snapshot")),
            ("unmount", lambda: camp.fault_daemon(local, "unmount")),
            ("worker", lambda: camp.fault_daemon(local, "worker")),
            ("pipeline", lambda: camp.fault_pipeline(pipe)),
            ("s3 client", lambda: camp.fault_s3(s3, direct, proxy, "client")),
            ("s3 put", lambda: camp.fault_s3(s3, direct, proxy, "put")),
            ("s3 ref", lambda: camp.fault_s3(s3, direct, proxy, "ref move")),
            ("s3 gc", lambda: camp.fault_s3(s3, direct, proxy, "gc")),
        ]
        for i in range(args.kills):
            name, fault = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
            print(f"[{i + 1}/{args.kills}] {name} ({time.monotonic() - started:.0f} s)", flush=True)
            fault()
        # The end: everything acknowledged, once more, on every home.
        force_unmount(work / "local" / "mnt")
        camp.check(local, "local", "r", {})
        camp.check(local, "local", "m", {})
        camp.check(direct, "s3", "r", {})
    left = fuse_mounts(str(work))
    fig = camp.fig
    print(f"\nfaults: seed {seed}, {time.monotonic() - started:.0f} s")
    print("faults injected per kind:")
    for kind, n in sorted(fig.faults.items()):
        print(f"  {kind:<28} {n}")
    print(f"  {'total':<28} {sum(fig.faults.values())}")
    print(f"acknowledged bytes checked: {fig.checked_bytes} ({fig.checked_files} file reads)")
    print(f"lost: {fig.lost}")
    print(f"silent corruptions: {fig.corrupt}")
    print(f"other failures: {len(fig.failures) - fig.lost - fig.corrupt}")
    if left:
        print(f"mounts left behind: {left}")
    if args.keep or fig.failures:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if fig.failures or left else 0


if __name__ == "__main__":
    sys.exit(main())
