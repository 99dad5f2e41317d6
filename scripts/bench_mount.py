#!/usr/bin/env python3
"""Mount benchmark: the same file operations on tmpfs, on a reference FUSE filesystem and on pfsfs.

Three columns, measured in one run:

- ``tmpfs``: a fresh tmpfs mount (the physical ceiling of this machine);
- ``reference``: ``scripts/bench_reffs.py``, a minimal in-memory pyfuse3 filesystem done right
  (writeback cache, keep_cache, readdirplus, attr/entry timeouts), run as a separate process:
  what a Python FUSE filesystem can reach here;
- ``pfsfs``: ``pfsfs mount bench@master DIR`` with a fresh ``PFSFS_HOME`` next to the others
  (under ``--base``, /dev/shm by default), its daemon run in the foreground as our subprocess.

Rows: sequential write (bs=1M and bs=4k, fsync at the end), cold and warm sequential read of a
committed file (cold: caches dropped, and for pfsfs a fresh mount after the commit), create+stat
of small files, ``ls -lR`` of a pre-created tree (for pfsfs made with ``pfsfs put -r`` and then
mounted, so only the listing is timed), ``make -j2`` over generated targets and a no-op ``make``
(also after commit + remount), and pfsfs snapshot latency with one changed file in the big tree.
Each group runs on all columns at once, interleaved (run 1 on tmpfs, reference, pfsfs, then
run 2...), so a busy machine slows every column alike. Throughputs are the best of ``--repeat``
runs after one unmeasured warm-up write; no-op makes the best of 3; snapshots the median of 3.
The ratio column is pfsfs speed / reference speed (timed rows: reference time / pfsfs time).
Notes under the table: pfsfs commit and ``put`` times, CLI start-up, bdi ``read_ahead_kb``
during cold reads, and the peak RSS of each filesystem process.

A second table (``PhysicalBench``; ``--only physical`` runs it alone, ``--phys-runs``) puts
pfsfs with its home on the disk (``--disk-base``, /var/tmp by default) next to the physical
references measured in the same run: create + write 1 KiB + stat of small files against ext4
and tmpfs, a cold ``cat`` of the big files (16 MiB each) through a fresh mount against a cold
``cat`` of the same files on the disk, ``cp -a`` in against ``cp -a`` + ``sync``, and
``pfsfs unmount`` right after ``cp -a`` of the big files and after the workload set (big files
+ small files + ``make -j2``), with no idle pause; median [min-max] over the runs.

Every mount is unmounted in a ``finally`` (``fusermount3 -u``, lazily if that fails), every
process started here is stopped, temporary directories are removed. Needs root for tmpfs mounts
and ``drop_caches``; without root, tmpfs is a directory in /dev/shm and "cold" reads are warm.
The exit code is 0 when the tmpfs and reference columns could be measured, whatever pfsfs does.

    .venv/bin/python scripts/bench_mount.py [--quick] [--only reference,write,pfsfs-ls,...]
    .venv/bin/python scripts/bench_mount.py --only physical [--phys-runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REFFS = HERE / "bench_reffs.py"
BACKENDS = ("tmpfs", "reference", "pfsfs")
GROUPS = ("write", "read", "create", "ls", "make", "snapshot")
MiB = 1 << 20


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    size: int  # bytes of the big file
    create_files: int
    ls_files: int
    make_targets: int
    repeat: int
    snapshots: int
    warmup: bool
    base: Path
    pfsfs: str
    selected: frozenset[tuple[str, str]]
    verbose: bool
    physical: bool = False  # the physical-reference table (PhysicalBench)
    phys_files: int = 64  # 16 MiB files in its big set
    phys_runs: int = 3
    disk_base: Path = Path("/var/tmp")

    def wants(self, backend: str, group: str) -> bool:
        return (backend, group) in self.selected


@dataclass(frozen=True)
class Row:
    key: str
    group: str
    label: str
    unit: str  # "MB/s", "files/s" or "s"
    kind: str  # write, read, meta, noop, snapshot
    pfsfs_only: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s"


def make_rows(cfg: Config) -> list[Row]:
    size = f"{cfg.size / 2**30:g} GiB" if cfg.size >= 2**30 else f"{cfg.size // MiB} MiB"
    n = f"{cfg.make_targets:,}"
    return [
        Row("write-1M", "write", f"seq write {size}, bs=1M", "MB/s", "write"),
        Row("write-4k", "write", f"seq write {size}, bs=4k", "MB/s", "write"),
        Row("read-cold", "read", f"cold seq read {size}", "MB/s", "read"),
        Row("read-warm", "read", f"warm seq read {size}", "MB/s", "read"),
        Row("create", "create", f"create+stat {cfg.create_files:,} files", "files/s", "meta"),
        Row("ls", "ls", f"ls -lR {cfg.ls_files:,} files", "files/s", "meta"),
        Row("make", "make", f"make -j2, {n} targets", "s", "meta"),
        Row("make-noop", "make", f"no-op make, {n} targets", "s", "noop"),
        Row("make-noop-remount", "make", "no-op make after commit+remount", "s", "noop"),
        Row(
            "snapshot",
            "snapshot",
            f"snapshot, 1 changed file of {cfg.ls_files:,}",
            "s",
            "snapshot",
            pfsfs_only=True,
        ),
    ]


TARGETS = {
    "write": ">= 50% of ref",
    "read": ">= 70% of ref",
    "meta": ">= 60% of ref",
    "noop": "<= 3x tmpfs",
    "snapshot": "< 0.5 s",
}


@dataclass
class Cell:
    value: float | None = None
    error: str | None = None
    note: str = ""  # shown next to the value, e.g. "rebuilt 3"
    failed: bool = False  # a correctness failure (e.g. make rebuilt targets)


@dataclass
class Results:
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def set(
        self, row: str, backend: str, value: float, note: str = "", failed: bool = False
    ) -> None:
        self.cells[(row, backend)] = Cell(value=value, note=note, failed=failed)

    def fail(self, rows: list[str], backend: str, error: str) -> None:
        for row in rows:
            if (row, backend) not in self.cells:
                self.cells[(row, backend)] = Cell(error=error)

    def get(self, row: str, backend: str) -> Cell | None:
        return self.cells.get((row, backend))

    def any_value(self, backend: str) -> bool:
        return any(c.value is not None for (_, b), c in self.cells.items() if b == backend)


def progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------


class CommandFailed(RuntimeError):
    pass


class NotMountable(CommandFailed):
    """The filesystem could not be mounted at all: the whole column is unavailable."""


def run(
    cmd: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> tuple[int, str]:
    """Run a command with its output in a temp file (never a pipe: a daemon it starts could
    hold a pipe open forever). Returns (exit code, output); kills it on timeout."""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{shlex_join(cmd)}: timed out after {timeout:.0f} s") from None
        out.seek(0)
        text = out.read().decode(errors="replace")
    if check and proc.returncode != 0:
        raise CommandFailed(f"{shlex_join(cmd)}: exit {proc.returncode}: {last_lines(text)}")
    return proc.returncode, text


def timed(cmd: list[str], *, timeout: float, **kwargs: Any) -> tuple[float, str]:
    t = time.perf_counter()
    _, out = run(cmd, timeout=timeout, **kwargs)
    return time.perf_counter() - t, out


def shlex_join(cmd: list[str]) -> str:
    return shlex.join(cmd)


def last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def stop_process(proc: subprocess.Popen[bytes], term_timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL: the process we started, by its pid."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def pids_mentioning(marker: str) -> list[int]:
    """Processes (other than us) whose command line or environment names `marker`, a unique
    temporary path of this run: what a daemon we started may have left behind."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{what}", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
                        break
            except OSError:
                continue
    return found


def kill_pids(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        if not alive:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.1)
        pids = [p for p in alive if Path(f"/proc/{p}").exists()]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def tree_peak_rss(pid: int) -> str:
    """Peak RSS of a process and its children, e.g. "30 + 210 MiB"."""
    peaks = [r for r in (peak_rss_mib(p) for p in descendants(pid)) if r is not None]
    return " + ".join(f"{r:.0f}" for r in peaks) + " MiB" if peaks else "?"


# -- mounts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    point: str
    fstype: str
    dev: str


def unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounts() -> list[MountInfo]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            found.append(MountInfo(unescape(parts[4]), parts[sep + 1], parts[2]))
    return found


def mount_at(path: Path) -> MountInfo | None:
    """The mount at `path` (canonical), without touching the path itself."""
    hits = [m for m in mounts() if m.point == str(path)]
    return hits[-1] if hits else None


def mounts_under(root: Path) -> list[MountInfo]:
    prefix = str(root).rstrip("/") + "/"
    return [m for m in mounts() if (m.point + "/").startswith(prefix)]


def wait_mounted(
    path: Path, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> MountInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = mount_at(path)
        if info is not None and info.fstype.startswith("fuse"):
            return info
        if proc is not None and proc.poll() is not None:
            raise CommandFailed(f"the filesystem process exited ({proc.returncode}) unmounted")
        if time.monotonic() > deadline:
            raise CommandFailed(f"{path} was not mounted after {timeout:.0f} s")
        time.sleep(0.02)


def tear_down(
    mnt: Path, home: Path, pfsfs_unmount: Callable[[], Any], daemon: subprocess.Popen[bytes] | None
) -> bool:
    """Unmount ``mnt`` the pfsfs way, stop its daemon, then force whatever is left (a mount, a
    worker of ``home``); True when nothing is mounted there any more."""
    if mount_at(mnt) is not None:
        with contextlib.suppress(CommandFailed, OSError):
            pfsfs_unmount()
    if daemon is not None:
        stop_process(daemon, term_timeout=120)
    unmount(mnt)
    kill_pids(pids_mentioning(str(home)))
    unmount(mnt)
    return mount_at(mnt) is None


def unmount(path: Path) -> None:
    """Unmount if mounted: cleanly, then lazily, then by aborting the FUSE connection."""
    info = mount_at(path)
    if info is None:
        return
    fuse = info.fstype.startswith("fuse")
    attempts = [["fusermount3", "-u", str(path)], ["fusermount3", "-uz", str(path)]]
    if not fuse:
        attempts = [["umount", str(path)], ["umount", "-l", str(path)]]
    for cmd in attempts:
        with contextlib.suppress(CommandFailed, OSError):
            run(cmd, timeout=60, check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if mount_at(path) is None:
                return
            time.sleep(0.05)
    if fuse:  # a hung server: abort its connection (fusectl), then detach
        minor = info.dev.split(":")[1]
        with contextlib.suppress(OSError):
            Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
        with contextlib.suppress(CommandFailed, OSError):
            run(["fusermount3", "-uz", str(path)], timeout=60, check=False)
    if mount_at(path) is not None:
        print(f"warning: {path} is still mounted", file=sys.stderr)


def read_ahead_kb(info: MountInfo) -> str:
    try:
        return Path(f"/sys/class/bdi/{info.dev}/read_ahead_kb").read_text().strip()
    except OSError:
        return "?"


def drop_caches() -> bool:
    """Drop the page, dentry and inode caches (root only). Dirty pages stay: callers fsync."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return True
    except OSError:
        return False


# -- the three backends --------------------------------------------------------------------------


class Session:
    """One mounted (or plain) directory in which a group of operations runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self) -> float | None:
        """Commit and mount afresh; returns the commit time if there is one."""
        return None

    def commit(self, message: str) -> float | None:
        """Commit the current state; returns the seconds it took (None: not versioned)."""
        return None


class Backend:
    name = ""

    def __init__(self, cfg: Config, work: Path, results: Results) -> None:
        self.cfg = cfg
        self.work = work
        self.results = results

    def available(self) -> str | None:
        """None if usable, else the reason why not."""
        return None

    @contextlib.contextmanager
    def session(self, group: str, preload: list[Path]) -> Iterator[Session]:
        raise NotImplementedError
        yield  # pragma: no cover


class TmpfsBackend(Backend):
    name = "tmpfs"

    @contextlib.contextmanager
    def session(self, group: str, preload: list[Path]) -> Iterator[Session]:
        path = self.work / f"tmpfs-{group}"
        path.mkdir()
        mounted = False
        if os.geteuid() == 0:
            code, _ = run(
                ["mount", "-t", "tmpfs", "-o", "size=90%,mode=0755", "benchtmpfs", str(path)],
                timeout=30,
                check=False,
            )
            mounted = code == 0
        try:
            for item in preload:
                run(["cp", "-a", str(item), str(path)], timeout=3600)
            yield Session(path)
        finally:
            if mounted:
                unmount(path)
            if mount_at(path) is None:
                shutil.rmtree(path, ignore_errors=True)


class ReferenceBackend(Backend):
    name = "reference"

    @contextlib.contextmanager
    def session(self, group: str, preload: list[Path]) -> Iterator[Session]:
        path = self.work / f"reference-{group}"
        path.mkdir()
        log_path = self.work / f"reference-{group}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(REFFS), str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            info = wait_mounted(path, proc=proc)
            time.sleep(0.1)  # read_ahead_kb is raised right after the FUSE INIT
            for item in preload:
                run(["cp", "-a", str(item), str(path)], timeout=3600)
            yield Session(path)
            self.results.notes.append(
                f"reference [{group}]: read_ahead_kb={read_ahead_kb(info)}, "
                f"peak RSS {tree_peak_rss(proc.pid)}"
            )
        finally:
            unmount(path)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                unmount(path)  # a dead server's mount: "transport endpoint is not connected"
            if proc.returncode not in (0, None):
                self.results.notes.append(
                    f"reference [{group}] exited {proc.returncode}: "
                    + last_lines(log_path.read_text(errors="replace"))
                )
            if mount_at(path) is None:
                shutil.rmtree(path, ignore_errors=True)


class PfsfsSession(Session):
    def __init__(self, backend: PfsfsBackend, path: Path, home: Path) -> None:
        super().__init__(path)
        self.backend = backend
        self.home = home
        self.info: MountInfo | None = None

    def cli(self, *args: str, timeout: float = 600) -> tuple[float, str]:
        return timed(
            [self.backend.cfg.pfsfs, *args], timeout=timeout, env=self.backend.env(self.home)
        )

    def mount(self) -> float:
        seconds, _ = self.cli("mount", "bench@master", str(self.path), timeout=120)
        self.info = wait_mounted(self.path, timeout=30)
        return seconds

    def unmount(self) -> float:
        seconds, _ = self.cli("unmount", str(self.path), timeout=1800)
        if mount_at(self.path) is not None:
            raise CommandFailed(f"pfsfs unmount returned but {self.path} is still mounted")
        return seconds

    def remount(self) -> float | None:
        seconds = self.unmount()
        self.mount()
        return seconds

    def commit(self, message: str) -> float | None:
        seconds, _ = self.cli("snapshot", str(self.path), "-m", message, timeout=600)
        return seconds


class PfsfsBackend(Backend):
    name = "pfsfs"

    def env(self, home: Path) -> dict[str, str]:
        return {**os.environ, "PFSFS_HOME": str(home)}

    def available(self) -> str | None:
        exe = self.cfg.pfsfs
        if not (os.path.isfile(exe) or shutil.which(exe)):
            return f"{exe} not found"
        try:
            code, out = run([exe, "mount", "--help"], timeout=60, check=False)
            if code != 0:
                return f"'pfsfs mount --help' failed: {last_lines(out, 1)}"
            t, _ = timed([exe, "--version"], timeout=60)
        except CommandFailed as e:
            return str(e)
        self.results.notes.append(f"pfsfs: CLI start-up ('pfsfs --version'): {t:.3f} s")
        return None

    def start_daemon(self, home: Path, log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [self.cfg.pfsfs, "--home", str(home), "daemon", "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env(home),
                start_new_session=True,
            )
        sock = home / "daemon.sock"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise CommandFailed(
                    f"pfsfs daemon exited ({proc.returncode}): "
                    + last_lines(log_path.read_text(errors="replace"), 2)
                )
            if sock.exists():
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                    return proc
            if time.monotonic() > deadline:
                stop_process(proc)
                raise CommandFailed("pfsfs daemon did not answer within 60 s")
            time.sleep(0.05)

    @contextlib.contextmanager
    def session(self, group: str, preload: list[Path]) -> Iterator[Session]:
        home = self.work / f"pfsfs-home-{group}"
        path = self.work / f"pfsfs-{group}"
        path.mkdir()
        home.mkdir()
        log_path = self.work / f"pfsfs-{group}-daemon.log"
        proc: subprocess.Popen[bytes] | None = None
        sess = PfsfsSession(self, path, home)
        try:
            run([self.cfg.pfsfs, "repo", "create", "bench"], timeout=120, env=self.env(home))
            for item in preload:
                t, _ = sess.cli("put", "bench@master:/", "-f", str(item), "-r", timeout=7200)
                self.results.notes.append(f"pfsfs [{group}]: put -r of {item.name}: {t:.1f} s")
            try:
                proc = self.start_daemon(home, log_path)
                t = sess.mount()
            except CommandFailed as e:
                raise NotMountable(str(e)) from None
            self.results.notes.append(f"pfsfs [{group}]: mount {t:.2f} s")
            yield sess
            self.results.notes.append(
                f"pfsfs [{group}]: read_ahead_kb="
                f"{read_ahead_kb(sess.info) if sess.info else '?'} at the end, "
                f"peak RSS of the daemon (+ workers): {tree_peak_rss(proc.pid)}"
            )
        except BaseException:
            if log_path.exists():
                tail = last_lines(log_path.read_text(errors="replace"), 5)
                self.results.notes.append(f"pfsfs [{group}] daemon log tail: {tail}")
            raise
        finally:
            if tear_down(path, home, sess.unmount, proc):
                shutil.rmtree(path, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)


# -- workloads -----------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))


def make_tree(root: Path, files: int) -> None:
    """`files` small files, 1,000 per directory."""
    per_dir = 1000
    for d in range((files + per_dir - 1) // per_dir):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(d * per_dir, min(files, (d + 1) * per_dir)):
            (sub / f"f{i:06d}.txt").write_bytes(b"file %d\n" % i)


def make_build(root: Path, targets: int) -> None:
    """A Makefile with one rule per target, each transforming a small source file."""
    (root / "src").mkdir(parents=True)
    (root / "out").mkdir()
    names = [f"t{i:05d}" for i in range(targets)]
    rules = []
    for i, name in enumerate(names):
        (root / "src" / f"{name}.txt").write_bytes(b"source %d: some small input text\n" % i)
        rules.append(f"out/{name}.out: src/{name}.txt\n\ttr a-z A-Z < $< > $@\n")
    outs = " \\\n  ".join(f"out/{n}.out" for n in names)
    (root / "Makefile").write_text(
        f".PHONY: all\nall: {outs}\n\n" + "\n".join(rules), encoding="utf-8"
    )


def worker_create(root: Path, count: int) -> float:
    """create+stat of `count` small files in `root` (run in a child process)."""
    root.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.perf_counter()
    for i in range(count):
        p = f"{root}/f{i:06d}"
        fd = os.open(p, flags, 0o644)
        os.write(fd, b"small file %d\n" % i)
        os.close(fd)
        os.stat(p)
    return time.perf_counter() - start


def mbps(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


class Bench:
    """Runs each group of operations on every selected backend at once, interleaved (run 1 on
    tmpfs, reference, pfsfs; run 2 on each...), so that a busy machine slows all columns alike."""

    def __init__(self, cfg: Config, work: Path, shm: Path) -> None:
        self.cfg = cfg
        self.work = work
        self.shm = shm
        self.results = Results()
        self.rows = make_rows(cfg)
        self.src: Path | None = None
        self.tree: Path | None = None
        self.build: Path | None = None
        self.dropped = os.geteuid() == 0
        self.ok = True  # False if tmpfs or the reference failed somewhere
        self.sessions: dict[str, Session] = {}
        self.group_rows: list[str] = []

    def rows_of(self, *groups: str) -> list[str]:
        return [r.key for r in self.rows if r.group in groups]

    # inputs, made once and shared by every backend
    def source(self) -> Path:
        if self.src is None:
            progress(f"making {self.cfg.size // MiB} MiB of random data")
            self.src = self.shm / "random.bin"
            write_random(self.src, self.cfg.size)
        return self.src

    def tree_dir(self) -> Path:
        if self.tree is None:
            progress(f"making a tree of {self.cfg.ls_files:,} files")
            self.tree = self.shm / "prep-tree" / "tree"
            make_tree(self.tree, self.cfg.ls_files)
        return self.tree

    def build_dir(self) -> Path:
        if self.build is None:
            self.build = self.shm / "prep-build" / "build"
            make_build(self.build, self.cfg.make_targets)
        return self.build

    def cold(self) -> None:
        if not drop_caches():
            self.dropped = False

    # running one step on every live backend
    def failed(self, name: str, what: str, e: BaseException) -> None:
        msg = str(e) if isinstance(e, CommandFailed) else repr(e)
        self.results.fail(self.group_rows, name, msg)
        self.results.notes.append(f"{name} [{what}] failed: {msg}")
        progress(f"[{name}] {what} FAILED: {msg}")
        if self.cfg.verbose:
            traceback.print_exc()
        if name != "pfsfs":
            self.ok = False
        self.sessions.pop(name, None)  # skip this backend for the rest of the group

    def each(self, what: str, step: Callable[[str, Session], None]) -> None:
        for name, sess in list(self.sessions.items()):
            try:
                step(name, sess)
            except Exception as e:  # noqa: BLE001 - reported in the table; the run goes on
                self.failed(name, what, e)

    def best(self, key: str, what: str, measure: Callable[[str, Session], float]) -> None:
        """Best of `repeat` interleaved runs of a throughput (higher is better)."""
        best: dict[str, float] = {}

        def step(name: str, sess: Session) -> None:
            best[name] = max(best.get(name, 0.0), measure(name, sess))

        for _ in range(self.cfg.repeat):
            self.each(what, step)
        for name, value in best.items():
            if name in self.sessions:
                self.results.set(key, name, value)
                unit = next(r.unit for r in self.rows if r.key == key)
                progress(f"[{name}] {what}: {value:,.0f} {unit}")

    # the groups
    def group_io(self, write: bool, read: bool) -> None:
        cfg, src = self.cfg, self.source()
        timeout = max(600.0, cfg.size / 5e6)
        dd = ["dd", f"if={src}", "conv=fsync", "status=none"]

        def write_file(dst: Path, bs: str) -> float:
            t, _ = timed([*dd, f"of={dst}", f"bs={bs}"], timeout=timeout)
            return mbps(cfg.size, t)

        def write_and_delete(bs: str) -> Callable[[str, Session], float]:
            def measure(name: str, sess: Session) -> float:
                dst = sess.path / f"w{bs}.bin"
                speed = write_file(dst, bs)
                dst.unlink()
                return speed

            return measure

        if write:
            if cfg.warmup:
                self.each("warm-up write", lambda n, s: write_and_delete("1M")(n, s) and None)
            self.best("write-1M", "write bs=1M", write_and_delete("1M"))
            self.best("write-4k", "write bs=4k", write_and_delete("4k"))
        if not read:
            return

        def commit_big(name: str, sess: Session) -> None:
            write_file(sess.path / "big.bin", "1M")
            seconds = sess.remount()
            if seconds is not None:
                self.results.notes.append(
                    f"{name}: commit (unmount) of the {cfg.size // MiB} MiB file: {seconds:.2f} s"
                )

        self.each("write+commit of the file to read", commit_big)
        read_cmd = ["dd", "of=/dev/null", "bs=1M", "status=none"]
        first = set(self.sessions)

        read_ahead: dict[str, list[str]] = {}

        def cold(name: str, sess: Session) -> float:
            if name not in first:
                sess.remount()  # a fresh mount for every cold read but the first (just made)
            first.discard(name)
            info = mount_at(sess.path)
            if info is not None and info.fstype.startswith("fuse"):
                read_ahead.setdefault(name, []).append(read_ahead_kb(info))
            self.cold()
            t, _ = timed([*read_cmd, f"if={sess.path / 'big.bin'}"], timeout=timeout)
            return mbps(cfg.size, t)

        primed: set[str] = set()

        def warm(name: str, sess: Session) -> float:
            cmd = [*read_cmd, f"if={sess.path / 'big.bin'}"]
            if name not in primed:  # the other columns' cold reads dropped our cache
                timed(cmd, timeout=timeout)
                primed.add(name)
            t, _ = timed(cmd, timeout=timeout)
            return mbps(cfg.size, t)

        self.best("read-cold", "cold read", cold)
        for name, values in read_ahead.items():
            self.results.notes.append(f"{name}: read_ahead_kb during cold reads: {values}")
        self.best("read-warm", "warm read", warm)

    def group_create(self) -> None:
        n = self.cfg.create_files
        runs: dict[str, int] = {}

        def measure(name: str, sess: Session) -> float:
            runs[name] = runs.get(name, 0) + 1
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-create"]
            where = sess.path / f"small-{runs[name]}"
            _, out = run([*cmd, str(where), str(n)], timeout=max(600.0, n / 10))
            return n / float(out.strip().splitlines()[-1])

        self.best("create", "create+stat", measure)

    def group_ls_snapshot(self, ls: bool, snap: bool) -> None:
        n = self.cfg.ls_files
        if ls:

            def measure(name: str, sess: Session) -> float:
                self.cold()
                cmd = ["sh", "-c", 'ls -lR "$1" > /dev/null', "ls", str(sess.path / "tree")]
                t, _ = timed(cmd, timeout=3600)
                return n / t

            self.best("ls", "ls -lR", measure)
        sess = self.sessions.get("pfsfs")
        if snap and sess is not None:

            def snapshots(name: str, sess: Session) -> None:
                times = []
                for i in range(self.cfg.snapshots):
                    with open(sess.path / "tree" / "d000" / f"f{i:06d}.txt", "ab") as f:
                        f.write(b"changed\n")
                    t = sess.commit(f"bench: one changed file ({i})")
                    assert t is not None
                    times.append(t)
                med = statistics.median(times)
                self.results.set("snapshot", name, med)
                shown = ", ".join(f"{t:.3f}" for t in times)
                self.results.notes.append(f"pfsfs: snapshot times (s): {shown}; median shown")
                progress(f"[{name}] snapshot: {med:.3f} s")

            self.sessions = {"pfsfs": sess, **self.sessions}
            self.each("snapshot", lambda name, s: snapshots(name, s) if name == "pfsfs" else None)

    def group_make(self) -> None:
        n = self.cfg.make_targets
        timeout = max(900.0, n / 2)

        def make(sess: Session, *args: str) -> tuple[float, int]:
            cmd = ["make", "-C", str(sess.path / "build"), *args]
            t, out = timed(cmd, timeout=timeout)
            return t, sum(1 for line in out.splitlines() if line.startswith("tr "))

        def build(name: str, sess: Session) -> None:
            t, built = make(sess, "-j2")
            ok = built == n
            self.results.set("make", name, t, "" if ok else f"built {built}", failed=not ok)
            progress(f"[{name}] make -j2: {t:.2f} s ({built} built)")

        self.each("make -j2", build)
        self.noop_make("make-noop", make)
        self.each("remount", lambda name, sess: sess.remount() and None)
        self.noop_make("make-noop-remount", make)

    def noop_make(self, key: str, make: Callable[[Session], tuple[float, int]]) -> None:
        """Best time of 3 no-op makes; what the first one rebuilt is the correctness check."""
        times: dict[str, list[float]] = {}
        rebuilt: dict[str, int] = {}

        def step(name: str, sess: Session) -> None:
            t, count = make(sess)
            times.setdefault(name, []).append(t)
            rebuilt.setdefault(name, count)

        for _ in range(max(3, self.cfg.repeat)):
            self.each(key, step)
        for name, ts in times.items():
            if name in self.sessions:
                note = f"rebuilt {rebuilt[name]}" if rebuilt[name] else ""
                self.results.set(key, name, min(ts), note, failed=rebuilt[name] > 0)
                progress(f"[{name}] {key}: {min(ts):.3f} s ({rebuilt[name]} rebuilt)")

    def run_group(
        self,
        group: str,
        rows: list[str],
        preload: Callable[[], list[Path]],
        backends: list[Backend],
        body: Callable[[], None],
    ) -> None:
        """Open a session on every backend, run `body` over them, close them all."""
        if not backends:
            return
        progress(f"{group}: {', '.join(b.name for b in backends)}")
        self.group_rows = rows
        self.sessions = {}
        items = preload()
        with contextlib.ExitStack() as stack:
            for b in backends:
                try:
                    self.sessions[b.name] = stack.enter_context(b.session(group, items))
                except NotMountable as e:
                    if b.name == "pfsfs" and not self.results.any_value("pfsfs"):
                        self.results.unavailable["pfsfs"] = f"pfsfs mount failed: {e}"
                        progress(f"[pfsfs] not available: {e}")
                    else:
                        self.failed(b.name, f"{group} mount", e)
                except Exception as e:  # noqa: BLE001 - reported in the table
                    self.failed(b.name, f"{group} setup", e)
            body()
            self.sessions = {}

    def run(self, backends: list[Backend]) -> None:
        cfg = self.cfg
        usable = []
        for b in backends:
            if not any(cfg.wants(b.name, g) for g in GROUPS):
                continue
            reason = b.available()
            if reason is None:
                usable.append(b)
            else:
                self.results.unavailable[b.name] = reason
                progress(f"[{b.name}] not available: {reason}")
                if b.name != "pfsfs":
                    self.ok = False

        def on(*groups: str) -> list[Backend]:
            return [
                b
                for b in usable
                if b.name not in self.results.unavailable
                and any(cfg.wants(b.name, g) for g in groups)
            ]

        def anyone(group: str) -> bool:
            return bool(on(group))

        w, r = anyone("write"), anyone("read")
        rows = (self.rows_of("write") if w else []) + (self.rows_of("read") if r else [])
        self.run_group("io", rows, list, on("write", "read"), lambda: self.group_io(w, r))
        self.run_group("create", self.rows_of("create"), list, on("create"), self.group_create)
        snap = any(b.name == "pfsfs" for b in on("snapshot"))
        ls = anyone("ls")
        ls_backends = [b for b in usable if b in on("ls") or (snap and b.name == "pfsfs")]
        rows = (self.rows_of("ls") if ls else []) + (self.rows_of("snapshot") if snap else [])
        self.run_group(
            "ls",
            rows,
            lambda: [self.tree_dir()],
            ls_backends,
            lambda: self.group_ls_snapshot(ls, snap),
        )
        self.run_group(
            "make", self.rows_of("make"), lambda: [self.build_dir()], on("make"), self.group_make
        )

    # the table
    def ratio(self, row: Row) -> float | None:
        ref, pf = self.results.get(row.key, "reference"), self.results.get(row.key, "pfsfs")
        if not ref or not pf or ref.value is None or pf.value is None or not pf.value:
            return None
        return pf.value / ref.value if row.higher_is_better else ref.value / pf.value

    def verdict(self, row: Row) -> str:
        pf = self.results.get(row.key, "pfsfs")
        if "pfsfs" in self.results.unavailable or pf is None:
            return "n/a"
        if pf.value is None:
            return "error"
        if pf.failed:
            return "MISSED"
        if row.kind == "snapshot":
            return "met" if pf.value < 0.5 else "MISSED"
        if row.kind == "noop":
            tm = self.results.get(row.key, "tmpfs")
            if tm is None or tm.value is None:
                return "n/a"
            return "met" if pf.value <= 3 * tm.value else "MISSED"
        ratio = self.ratio(row)
        if ratio is None:
            return "n/a"
        need = {"write": 0.5, "read": 0.7, "meta": 0.6}[row.kind]
        return "met" if ratio >= need else "MISSED"

    def fmt(self, row: Row, backend: str) -> str:
        if backend != "pfsfs" and row.pfsfs_only:
            return "-"
        if backend in self.results.unavailable:
            return "n/a"
        cell = self.results.get(row.key, backend)
        if cell is None:
            return "-"
        if cell.value is None:
            return "error"
        v = cell.value
        if row.unit == "s":
            text = f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
        else:
            text = f"{v:,.0f} {row.unit}"
        return f"{text} ({cell.note})" if cell.note else text

    def table(self) -> str:
        head = ("operation", "tmpfs", "reference", "pfsfs", "pfsfs/ref", "target", "result")
        lines = []
        for row in self.rows:
            if not any((row.key, be) in self.results.cells for be in BACKENDS):
                continue
            ratio = self.ratio(row)
            lines.append(
                (
                    row.label,
                    self.fmt(row, "tmpfs"),
                    self.fmt(row, "reference"),
                    self.fmt(row, "pfsfs"),
                    f"{ratio:.2f}" if ratio is not None else "-",
                    TARGETS[row.kind],
                    self.verdict(row),
                )
            )
        widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]

        def fmt_line(cols: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i in (0, 5, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(cols, widths, strict=True))
            ).rstrip()

        out = [fmt_line(head), fmt_line(tuple("-" * w for w in widths))]
        out += [fmt_line(line) for line in lines]
        return "\n".join(out)


# -- the physical references (issue 19): pfsfs with its home on the disk, against the disk ---------


@dataclass
class Spread:
    """Values of one measurement over several runs."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def show(self, unit: str) -> str:
        if not self.values:
            return "-"
        fmt = (lambda v: f"{v:.2f}") if unit == "s" else (lambda v: f"{v:,.0f}")
        lo, med, hi = min(self.values), statistics.median(self.values), max(self.values)
        if len(self.values) == 1:
            return f"{fmt(med)} {unit}"
        return f"{fmt(med)} {unit} [{fmt(lo)}-{fmt(hi)}]"


@dataclass(frozen=True)
class PhysRow:
    key: str
    label: str
    unit: str
    reference: str  # what the reference column is ("" for absolute targets)
    target: str
    need: float  # ratio (pfsfs/reference) at least, or seconds at most for absolute rows
    absolute: bool = False  # a time with an absolute bound (no reference)


def physical_rows(cfg: Config) -> list[PhysRow]:
    size = f"{cfg.size / 2**30:g} GiB" if cfg.size >= 2**30 else f"{cfg.size // MiB} MiB"
    files = f"{cfg.phys_files} x 16 MiB"
    n = f"{cfg.create_files:,}"
    return [
        PhysRow(
            "create-ext4",
            f"create+write 1 KiB+stat, {n} files",
            "files/s",
            "ext4",
            ">= 5,000 files/s",
            5000,
            absolute=True,
        ),
        PhysRow("create-tmpfs", f"  same, vs tmpfs ({n} files)", "files/s", "tmpfs", "-", 0.0),
        PhysRow(
            "cold-read",
            f"cold read {size} ({files}), cat",
            "MB/s",
            "disk cold read",
            ">= 80% of disk",
            0.8,
        ),
        PhysRow(
            "cp-in", f"cp -a {size} in (+ sync on disk)", "MB/s", "cp -a + sync, disk", "-", 0.0
        ),
        PhysRow(
            "unmount-big",
            f"unmount right after cp -a {size}",
            "s",
            "",
            "<= 2 s",
            2.0,
            absolute=True,
        ),
        PhysRow(
            "unmount-all", "unmount after the workload set", "s", "", "<= 3 s", 3.0, absolute=True
        ),
    ]


def worker_create_1k(root: Path, count: int) -> float:
    """create + write 1 KiB + close + stat of `count` new files in `root` (a child process)."""
    root.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    payload = b"x" * 1024
    start = time.perf_counter()
    for i in range(count):
        p = f"{root}/f{i:06d}"
        fd = os.open(p, flags, 0o644)
        os.write(fd, payload)
        os.close(fd)
        os.stat(p)
    return time.perf_counter() - start


class PhysicalBench:
    """pfsfs with ``PFSFS_HOME`` on the disk (``--disk-base``) against that disk and tmpfs, in
    one run, each measurement ``--phys-runs`` times (min/median/max shown), interleaved:

    - create+write 1 KiB+stat of small files: in a mount, in a directory on the disk, on tmpfs;
    - ``cp -a`` of ``--size-mib`` in 16 MiB files into a fresh mount, then ``pfsfs unmount`` at
      once (no idle pause: background chunking must keep up by itself); the disk's reference is
      ``cp -a`` + ``sync`` of the same files;
    - cold read (``cat`` of every file, caches dropped) of the committed files through a fresh
      mount, against a cold read of the same files on the disk;
    - the workload set in a fresh mount: ``cp -a`` of the big files + the small files + a
      ``make -j2`` of ``--make-targets`` targets, then ``pfsfs unmount`` at once.
    """

    def __init__(self, cfg: Config, shm: Path, build: Callable[[], Path]) -> None:
        self.cfg = cfg
        self.shm = shm
        self.build = build
        self.rows = physical_rows(cfg)
        self.pf: dict[str, Spread] = {r.key: Spread() for r in self.rows}
        self.ref: dict[str, Spread] = {r.key: Spread() for r in self.rows}
        self.notes: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="pfsfs-bench-disk-", dir=cfg.disk_base))
        self.dropped = True

    # helpers
    def cold(self) -> None:
        os.sync()
        if not drop_caches():
            self.dropped = False

    def sources(self) -> Path:
        src = self.shm / "phys-src"
        if not src.exists():
            progress(f"making {self.cfg.phys_files} files of 16 MiB")
            src.mkdir()
            for i in range(self.cfg.phys_files):
                write_random(src / f"f{i:03d}.bin", 16 * MiB)
        return src

    def create(self, where: Path) -> float:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-create-1k"]
        n = self.cfg.create_files
        _, out = run([*cmd, str(where), str(n)], timeout=max(600.0, n / 10))
        return n / float(out.strip().splitlines()[-1])

    def run(self) -> None:
        cfg = self.cfg
        src = self.sources()
        size = cfg.phys_files * 16 * MiB
        home = self.work / "home"
        mnt = self.work / "mnt"
        mnt.mkdir()
        home.mkdir()
        env = {**os.environ, "PFSFS_HOME": str(home)}
        log_path = self.work / "daemon.log"
        daemon: subprocess.Popen[bytes] | None = None

        def cli(*args: str, timeout: float = 1800) -> float:
            t, _ = timed([cfg.pfsfs, *args], timeout=timeout, env=env)
            return t

        def mount() -> None:
            cli("mount", "bench@master", str(mnt), timeout=120)
            wait_mounted(mnt)

        def unmount_timed() -> float:
            t = cli("unmount", str(mnt))
            if mount_at(mnt) is not None:
                raise CommandFailed(f"pfsfs unmount returned but {mnt} is still mounted")
            return t

        try:
            run([cfg.pfsfs, "repo", "create", "bench"], timeout=120, env=env)
            with open(log_path, "ab") as log:
                daemon = subprocess.Popen(
                    [cfg.pfsfs, "--home", str(home), "daemon", "run"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 60
            while not (home / "daemon.sock").exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise CommandFailed(
                        "the pfsfs daemon did not start: "
                        + last_lines(log_path.read_text(errors="replace"))
                    )
                time.sleep(0.05)
            for i in range(cfg.phys_runs):
                progress(f"physical references: run {i + 1} of {cfg.phys_runs}")
                self.one_run(i, src, size, mnt, mount, unmount_timed)
        finally:
            if tear_down(mnt, home, lambda: cli("unmount", str(mnt), timeout=600), daemon):
                shutil.rmtree(self.work, ignore_errors=True)

    def one_run(
        self,
        i: int,
        src: Path,
        size: int,
        mnt: Path,
        mount: Callable[[], None],
        unmount_timed: Callable[[], float],
    ) -> None:
        disk = self.work / f"disk-{i}"
        disk.mkdir()
        tmpfs = Path(tempfile.mkdtemp(prefix="phys-", dir=self.shm))
        try:
            # small files: disk, tmpfs, mount (a fresh one, committed by the unmount after)
            ext4 = self.create(disk / "small")
            self.ref["create-ext4"].add(ext4)
            self.ref["create-tmpfs"].add(self.create(tmpfs / "small"))
            mount()
            pf = self.create(mnt / f"small-{i}")
            self.pf["create-ext4"].add(pf)
            self.pf["create-tmpfs"].add(pf)
            unmount_timed()
            # cp -a in, then unmount at once
            t, _ = timed(
                ["sh", "-c", 'cp -a "$1" "$2" && sync', "cp", str(src), str(disk / "big")],
                timeout=3600,
            )
            self.ref["cp-in"].add(size / 1e6 / t)
            mount()
            t, _ = timed(["cp", "-a", str(src), str(mnt / f"big-{i}")], timeout=3600)
            self.pf["cp-in"].add(size / 1e6 / t)
            self.pf["unmount-big"].add(unmount_timed())
            # cold reads: the disk's copy, then the committed copy through a fresh mount
            cat = ["sh", "-c", 'cat "$1"/* > /dev/null', "cat"]
            self.cold()
            t, _ = timed([*cat, str(disk / "big")], timeout=3600)
            self.ref["cold-read"].add(size / 1e6 / t)
            mount()
            self.cold()
            t, _ = timed([*cat, str(mnt / f"big-{i}")], timeout=3600)
            self.pf["cold-read"].add(size / 1e6 / t)
            unmount_timed()
            # the workload set, then unmount at once
            mount()
            timed(["cp", "-a", str(src), str(mnt / f"set-{i}")], timeout=3600)
            self.create(mnt / f"set-{i}" / "small")
            timed(["cp", "-a", str(self.build()), str(mnt / f"set-{i}" / "build")], timeout=3600)
            _, out = timed(["make", "-C", str(mnt / f"set-{i}" / "build"), "-j2"], timeout=3600)
            built = sum(1 for line in out.splitlines() if line.startswith("tr "))
            if built != self.cfg.make_targets:
                self.notes.append(f"run {i + 1}: make built {built} of {self.cfg.make_targets}")
            self.pf["unmount-all"].add(unmount_timed())
        finally:
            shutil.rmtree(disk, ignore_errors=True)
            shutil.rmtree(tmpfs, ignore_errors=True)

    def ratio(self, row: PhysRow) -> float | None:
        pf, ref = self.pf[row.key].median, self.ref[row.key].median
        if row.absolute and row.unit == "s" or pf is None or ref is None or not ref:
            return None
        return pf / ref

    def verdict(self, row: PhysRow) -> str:
        pf = self.pf[row.key].median
        if pf is None:
            return "n/a"
        if row.absolute:
            ok = pf <= row.need if row.unit == "s" else pf >= row.need
            return "met" if ok else "MISSED"
        if not row.need:
            return "-"
        ratio = self.ratio(row)
        return "n/a" if ratio is None else ("met" if ratio >= row.need else "MISSED")

    def table(self) -> str:
        head = (
            "operation",
            "pfsfs (median [min-max])",
            "reference",
            "reference value",
            "pfsfs/ref",
            "target",
            "result",
        )
        lines = []
        for row in self.rows:
            ratio = self.ratio(row)
            lines.append(
                (
                    row.label,
                    self.pf[row.key].show(row.unit),
                    row.reference or "-",
                    self.ref[row.key].show(row.unit) if row.reference else "-",
                    f"{ratio:.2f}" if ratio is not None else "-",
                    row.target,
                    self.verdict(row),
                )
            )
        widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]

        def fmt_line(cols: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i in (0, 2, 5, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(cols, widths, strict=True))
            ).rstrip()

        out = [fmt_line(head), fmt_line(tuple("-" * w for w in widths))]
        return "\n".join(out + [fmt_line(line) for line in lines])


def fs_type(path: Path) -> str:
    best = ""
    fstype = "?"
    for m in mounts():
        if (str(path) + "/").startswith(m.point.rstrip("/") + "/") and len(m.point) >= len(best):
            best, fstype = m.point, m.fstype
    return fstype


def parse_only(spec: str | None) -> frozenset[tuple[str, str]]:
    """`--only`: backends and groups combine (``reference,write`` = reference-write); a
    BACKEND-GROUP token adds that one case. (``physical`` is taken out by ``parse_args``.)"""
    if spec is not None and not spec.strip(","):
        return frozenset()
    if not spec:
        return frozenset((b, g) for b in BACKENDS for g in GROUPS)
    backends: set[str] = set()
    groups: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token in BACKENDS:
            backends.add(token)
        elif token in GROUPS:
            groups.add(token)
        else:
            backend, _, group = token.partition("-")
            if backend not in BACKENDS or group not in GROUPS:
                raise SystemExit(
                    f"--only: unknown {token!r}; use backends ({', '.join(BACKENDS)}), groups "
                    f"({', '.join(GROUPS)}) or BACKEND-GROUP, comma-separated"
                )
            pairs.add((backend, group))
    if backends or groups:
        pairs |= {(b, g) for b in backends or BACKENDS for g in groups or GROUPS}
    return frozenset(pairs)


def default_pfsfs() -> str:
    beside = Path(sys.executable).parent / "pfsfs"
    return str(beside) if beside.exists() else "pfsfs"


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--only", metavar="NAMES", help="comma-separated backends/groups/BACKEND-GROUP")
    p.add_argument("--size-mib", type=int, help="big file size (default 1024; quick 128)")
    p.add_argument("--create-files", type=int, help="default 10,000 (quick 1,000)")
    p.add_argument("--ls-files", type=int, help="default 100,000 (quick 10,000)")
    p.add_argument("--make-targets", type=int, help="default 2,000 (quick 200)")
    p.add_argument("--repeat", type=int, help="runs per throughput row, best shown (2; quick 1)")
    p.add_argument("--snapshots", type=int, default=3, help="snapshots timed (median shown)")
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up write")
    p.add_argument("--base", default="/dev/shm", help="where mounts, homes and inputs go")
    p.add_argument("--pfsfs", default=default_pfsfs(), help="the pfsfs command")
    p.add_argument(
        "--disk-base",
        default="/var/tmp",
        help="a directory on the disk: the physical table's pfsfs home and disk references",
    )
    p.add_argument("--phys-runs", type=int, help="runs of the physical table (3; quick 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failures")
    a = p.parse_args(argv)
    q = a.quick
    tokens = [t.strip() for t in (a.only or "").split(",") if t.strip()]
    physical = not tokens or "physical" in tokens
    only = ",".join(t for t in tokens if t != "physical") if a.only else None
    return Config(
        size=(a.size_mib or (128 if q else 1024)) * MiB,
        create_files=a.create_files or (1000 if q else 10_000),
        ls_files=a.ls_files or (10_000 if q else 100_000),
        make_targets=a.make_targets or (200 if q else 2000),
        repeat=a.repeat or (1 if q else 2),
        snapshots=a.snapshots,
        warmup=not a.no_warmup,
        base=Path(a.base).resolve(),
        pfsfs=a.pfsfs,
        selected=parse_only(only),
        verbose=a.verbose,
        physical=physical,
        phys_files=max(1, (a.size_mib or (128 if q else 1024)) // 16),
        phys_runs=a.phys_runs or (1 if q else 3),
        disk_base=Path(a.disk_base).resolve(),
    )


def cleanup(work: Path) -> None:
    for m in reversed(mounts_under(work)):
        unmount(Path(m.point))
    left = mounts_under(work)
    if left:
        print(f"warning: left mounted: {[m.point for m in left]}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--worker-create"]:
        print(f"{worker_create(Path(args[1]), int(args[2])):.6f}")
        return 0
    if args[:1] == ["--worker-create-1k"]:
        print(f"{worker_create_1k(Path(args[1]), int(args[2])):.6f}")
        return 0
    cfg = parse_args(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="pfsfs-bench-", dir=cfg.base))
    shm = work
    if fs_type(work) != "tmpfs":  # the inputs are read at memory speed whatever --base is
        ram = "/dev/shm" if os.path.isdir("/dev/shm") else None
        shm = Path(tempfile.mkdtemp(prefix="pfsfs-bench-in-", dir=ram))
    bench = Bench(cfg, work, shm)
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = (
        f"{os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM, "
        f"kernel {os.uname().release}, load {os.getloadavg()[0]:.1f}"
    )
    phys: PhysicalBench | None = None
    try:
        progress(f"pfsfs mount benchmark, {started}, {machine}")
        bench.run(
            [
                cls(cfg, work, bench.results)
                for cls in (TmpfsBackend, ReferenceBackend, PfsfsBackend)
            ]
        )
        if cfg.physical:
            phys = PhysicalBench(cfg, shm, bench.build_dir)
            try:
                phys.run()
            except Exception as e:  # noqa: BLE001 - reported under its table
                phys.notes.append(f"the physical table stopped: {e}")
                progress(f"[physical] FAILED: {e}")
                if cfg.verbose:
                    traceback.print_exc()
    finally:
        cleanup(work)
        if shm != work:
            shutil.rmtree(shm, ignore_errors=True)
    out: IO[str] = sys.stdout
    print(file=out)
    print(
        f"pfsfs mount benchmark, {started}, {time.monotonic() - t0:.0f} s; {machine} at start, "
        f"{os.getloadavg()[0]:.1f} at end\nbase {cfg.base} ({fs_type(cfg.base)}); "
        f"throughputs: best of {cfg.repeat}, interleaved"
        + ("" if bench.dropped else "; caches NOT dropped (not root): cold = warm"),
        file=out,
    )
    if bench.results.cells or bench.results.unavailable:
        print(bench.table(), file=out)
        for name, reason in bench.results.unavailable.items():
            print(f"{name}: not available ({reason})", file=out)
        print(
            "pfsfs/ref: pfsfs speed / reference speed (timed rows: reference time / pfsfs time)",
            file=out,
        )
        for note in bench.results.notes:
            print(f"  - {note}", file=out)
    if phys is not None:
        print(file=out)
        print(
            f"physical references: pfsfs home and disk directories in {cfg.disk_base} "
            f"({fs_type(cfg.disk_base)}), tmpfs {shm} ({fs_type(shm)}); median [min-max] of "
            f"{cfg.phys_runs} interleaved run(s)"
            + ("" if phys.dropped else "; caches NOT dropped (not root): cold = warm"),
            file=out,
        )
        print(phys.table(), file=out)
        print(
            "pfsfs/ref: ratio of the medians; unmount rows: `pfsfs unmount` right after the "
            "last write (no idle pause); the workload set = cp -a of the big files + "
            f"{cfg.create_files:,} small files + make -j2 of {cfg.make_targets:,} targets",
            file=out,
        )
        for note in phys.notes:
            print(f"  - {note}", file=out)
    return 0 if bench.ok else 1


if __name__ == "__main__":
    sys.exit(main())
