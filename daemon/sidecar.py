"""``pfsfs sidecar``: the daemon as a Kubernetes sidecar, with its mounts declared up front.

``python -m pfsfsd.sidecar --mount REF:DIR[:ro|:rw] ... [--ready-file F] [--grace S]
[--autosnapshot S]`` (what ``pfsfs sidecar`` execs, so the sidecar is the container's main
process) runs an ordinary daemon for its home — control socket included, so ``pfsfs snapshot``
and ``pfsfs mounts`` work inside the pod — without the pipeline scheduler, and:

- takes the store from the environment: ``PFSFS_STORE`` (``s3://bucket/prefix`` or a local
  path), ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for a non-AWS endpoint, and boto3's usual
  credential chain (env vars, a mounted profile, IRSA / Pod Identity). A fresh home is
  initialised for it (``pfsfs init``); a home made for another store is refused;
- mounts every ``REF:DIR`` (``:ro`` is an input, read-only; at most one read-write mount, the
  output, whose repo and branch are created if missing), with ``allow_other`` and without
  ``default_permissions`` (the app container runs as another uid, often an arbitrary one, and
  must be able to write the output: the pod is the boundary), creating DIR if needed;
- writes the ready file (atomically) once every mount answers a ``statvfs``, and removes it
  when it stops or a mount dies (a startupProbe or a wrapper waits for it);
- on SIGTERM snapshots and unmounts within ``--grace`` seconds (default 20, below Kubernetes'
  30 s). On overrun the mounts still running are killed and detached, and it exits 1: what they
  had staged stays in the home's staging, which ``pfsfs recover`` commits and a restarted
  sidecar resumes. It never waits longer than the grace (hf-mount #186: a pod unkillable for
  days);
- restarts in place: a predecessor's dead mounts at the DIRs (ENOTCONN) are detached, and a
  dead read-write mount of the same ref with staged changes is resumed at its DIR (its changes
  are neither lost nor committed behind the user's back);
- commits that conflict (the branch moved and the same path changed) go onto a new branch
  ``<branch>.conflict-<pod>-<time>``, logged, never discarded: there is no one in a pod to ask.

A mount that dies while the sidecar runs (a crashed worker) stops the sidecar with exit 1, so
the kubelet restarts it and the restart in place brings the mount back.

``--job JOB --ctl DIR --pfs DIR`` is the sidecar of a pod of a pipeline's Kubernetes Job
(``JobSidecar``): it reads the job's plan from the store, takes the datums of its shard
(``JOB_COMPLETION_INDEX``), and for each one prepares ``/pfs/<input>`` (a read-only FUSE mount
of the input commit when the datum is the whole commit, else the datum's files copied; always
copied in copy mode) and an empty ``/pfs/out``, offers it to ``pfsfs-wrap`` and, when the
wrapper asks, stores the output and writes the datum's record (``pfsfs.k8s.protocol``). It never
moves a branch. Datums that already have a record (an earlier attempt of the pod) are skipped;
a restart finds its predecessor's datum in flight and answers ``failed`` for it (the inputs it
read may have broken mid-way), so the pod fails and Kubernetes retries the index. A SIGTERM
while a datum's output is being stored lets that store finish within ``--grace`` (its record
then counts); past it the sidecar exits 1 at once, the datum unrecorded (it runs again).
``--install-wrapper PATH`` copies the wrapper there (the pod's first init container).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pfsfs.errors import DaemonError, InvalidInput, PfsError
from pfsfs.home import HomeConfig, default_home, read_config
from pfsfs.k8s import protocol
from pfsfs.refspec import parse_ref
from pfsfs.repository import Repository

from . import recovery
from .mountinfo import unmount
from .mounts import Mount
from .server import Daemon

log = logging.getLogger("pfsfsd.sidecar")  # also when run as __main__

DEFAULT_GRACE = 20.0  # seconds; Kubernetes' default terminationGracePeriodSeconds is 30
ANSWER_TIMEOUT = 30.0  # seconds a fresh mount may take to answer its first statvfs
KILL_WAIT = 5.0  # seconds to wait for a killed worker to be gone before detaching its mount
OVERRUN_EXIT = 1


@dataclass(frozen=True)
class MountSpec:
    """One ``--mount REF:DIR[:ro|:rw]``."""

    ref: str
    directory: str
    read_only: bool


def parse_mount(text: str) -> MountSpec:
    """``REF:DIR``, ``REF:DIR:ro`` or ``REF:DIR:rw`` (DIR absolute; REF has no path part)."""
    ref, sep, rest = text.partition(":")
    if not sep or not ref or not rest.startswith("/"):
        raise InvalidInput(f"--mount {text!r}: expected REF:DIR[:ro|:rw] with an absolute DIR")
    read_only = False
    for suffix, ro in ((":ro", True), (":rw", False)):
        if rest.endswith(suffix):
            rest, read_only = rest[: -len(suffix)], ro
            break
    parse_ref(ref, allow_path=False)  # a bad ref fails here, in words
    return MountSpec(ref, os.path.normpath(rest), read_only)


def check_specs(specs: list[MountSpec]) -> None:
    if not specs:
        raise InvalidInput("give at least one --mount REF:DIR")
    dirs = [s.directory for s in specs]
    for d in dirs:
        if dirs.count(d) > 1:
            raise InvalidInput(f"{d} is named by two --mount options")
        for other in dirs:
            if other != d and other.startswith(d.rstrip("/") + "/"):
                raise InvalidInput(f"--mount {other} is inside another mount ({d})")
    writable = [s.ref for s in specs if not s.read_only]
    if len(writable) > 1:
        raise InvalidInput(
            "one read-write mount (the output) at most; mount the inputs with :ro "
            f"(read-write: {', '.join(writable)})"
        )


def store_from_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any] | None:
    """The ``store`` section of ``config.json`` that ``PFSFS_STORE`` names (None: not set)."""
    url = (environ.get("PFSFS_STORE") or "").strip()
    if not url:
        return None
    if url.startswith("s3://"):
        from pfsfs.store.s3errors import parse_store_url

        bucket, prefix = parse_store_url(url)
        store: dict[str, Any] = {"type": "s3", "bucket": bucket, "prefix": prefix}
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            store["endpoint_url"] = endpoint
        return store
    if "://" in url:
        raise InvalidInput(f"PFSFS_STORE={url!r}: use s3://bucket/prefix or a local path")
    return {"type": "local", "path": os.path.abspath(url)}


def prepare_home(home: Path, store: dict[str, Any] | None) -> None:
    """``pfsfs init`` for a fresh home; refuse a home that belongs to another store."""
    existing = read_config(home)
    if store is None or (existing is not None and existing.store == store):
        return
    if existing is not None:
        raise InvalidInput(
            f"{home} is initialised for store {existing.store.get('type')} "
            f"{_where(existing.store)}, but PFSFS_STORE names {_where(store)}; use another "
            "PFSFS_HOME"
        )
    repo = Repository.init(home, HomeConfig(store))
    try:
        repo.store.check()  # wrong credentials or a missing bucket fail now, in one line
    finally:
        repo.close()
    log.info("initialised %s for store %s", home, _where(store))


def _where(store: dict[str, Any]) -> str:
    if store.get("type") == "s3":
        return f"s3://{store.get('bucket')}/{store.get('prefix') or ''}".rstrip("/")
    return str(store.get("path"))


def write_ready(path: Path, mounts: list[dict[str, Any]]) -> None:
    """Write the ready file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "mounts": mounts}) + "\n")
    os.replace(tmp, path)


def remove_ready(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class Sidecar(Daemon):
    """The daemon plus declared mounts, a ready file and a bounded shutdown."""

    def __init__(
        self,
        home: Path,
        specs: list[MountSpec],
        *,
        ready_file: Path | None = None,
        grace: float = DEFAULT_GRACE,
        autosnapshot: float | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(home, verbose, run_pipelines=False)
        self.specs = specs
        self.ready_file = ready_file
        self.grace = grace
        self.autosnapshot = autosnapshot
        self.exit_code = 0
        self.stopping = False
        self.ours: list[Mount] = []

    # -- start ---------------------------------------------------------------------------------
    async def started(self) -> None:
        remove_ready(self.ready_file)  # a predecessor's; rewritten once the mounts answer
        try:
            for spec in self.specs:
                self.ours.append(await self._mount(spec))
            for m in self.ours:
                await self._answers(m.mountpoint)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.manager.shutdown_all()
            raise
        rows = [
            {"ref": s.ref, "dir": m.mountpoint, "read_only": s.read_only, "id": m.id}
            for s, m in zip(self.specs, self.ours, strict=True)
        ]
        if self.ready_file is not None:
            write_ready(self.ready_file, rows)
        for m in self.ours:
            self.manager.nursery.start_soon(self._watch, m)
        log.info("sidecar ready: %s", ", ".join(f"{r['ref']} at {r['dir']}" for r in rows))

    async def _mount(self, spec: MountSpec) -> Mount:
        os.makedirs(spec.directory, exist_ok=True)
        mp = os.path.realpath(spec.directory)
        recovery.clean_stale(mp)  # a predecessor's dead mount (ENOTCONN) at our directory
        orphan = self._orphan_at(mp)
        if orphan is not None and not spec.read_only and orphan.refs == [spec.ref]:
            log.warning(
                "resuming the dead mount %s at %s: %d staged change(s) of the previous run",
                orphan.id,
                mp,
                orphan.records,
            )
            start: dict[str, Any] = {"op": "start", "mode": "resume", "mountpoint": mp}
            return await self.manager.start(orphan.id, start)
        if orphan is not None:
            log.warning(
                "the dead mount %s (%s) left staged changes; kept for `pfsfs recover`",
                orphan.id,
                ", ".join(orphan.refs),
            )
        start = {
            "op": "start",
            "mode": "mount",
            "mountpoint": mp,
            "refs": [spec.ref],
            "read_only": spec.read_only,
            "create": not spec.read_only,
            "autosnapshot": None if spec.read_only else self.autosnapshot,
            "allow_other": True,
            "open_to_pod": True,
            "conflict_branch": True,
        }
        return await self.manager.start(secrets.token_hex(6), start)

    def _orphan_at(self, mountpoint: str) -> recovery.Orphan | None:
        live = set(self.manager.mounts)
        for orphan in recovery.scan(self.home, live, self.index):
            if orphan.mountpoint == mountpoint:
                return orphan
        return None

    @staticmethod
    async def _answers(mountpoint: str) -> None:
        with trio.move_on_after(ANSWER_TIMEOUT) as scope:
            try:
                await trio.to_thread.run_sync(os.statvfs, mountpoint, abandon_on_cancel=True)
            except OSError as exc:
                raise DaemonError(f"the mount at {mountpoint} does not answer: {exc}") from None
        if scope.cancelled_caught:
            raise DaemonError(f"the mount at {mountpoint} did not answer in {ANSWER_TIMEOUT:g} s")

    async def _watch(self, m: Mount) -> None:
        """A mount gone while we run (a crash, a manual unmount): stop, exit 1, get restarted."""
        await m.exited.wait()
        if self.stopping:
            return
        log.error("the mount at %s ended while the sidecar ran; stopping", m.mountpoint)
        remove_ready(self.ready_file)
        self.exit_code = OVERRUN_EXIT
        self.request_stop()

    # -- stop ----------------------------------------------------------------------------------
    async def stop_mounts(self) -> None:
        self.stopping = True
        remove_ready(self.ready_file)
        with trio.move_on_after(self.grace):
            await self.manager.shutdown_all()
        left = list(self.manager.mounts.values())
        if left:
            await self._kill(left)

    async def _kill(self, left: list[Mount]) -> None:
        """The grace ran out: kill what still runs and detach it; its staging stays."""
        places = ", ".join(m.mountpoint for m in left)
        for m in left:
            m.process.kill()
        with trio.move_on_after(KILL_WAIT):
            for m in left:
                await m.exited.wait()
        for m in left:
            if not recovery.clean_stale(m.mountpoint):
                await trio.to_thread.run_sync(lambda mp=m.mountpoint: unmount(mp, lazy=True))
        self.exit_code = OVERRUN_EXIT
        message = (
            f"shutdown overran the {self.grace:g} s grace: killed the mount(s) at {places}; "
            "what they had staged is kept in the home: `pfsfs recover` commits it, and a "
            "restarted sidecar resumes it"
        )
        log.error("%s", message)
        print(f"pfsfs: error: {message}", file=sys.stderr, flush=True)


class JobSidecar(Sidecar):
    """The sidecar of one pod of a pipeline's Kubernetes Job (see the module docstring)."""

    POLL = 0.05

    def __init__(
        self,
        home: Path,
        job_id: str,
        ctl: Path,
        pfs: Path,
        shard: int,
        *,
        pod: str = "",
        grace: float = DEFAULT_GRACE,
        verbose: int = 0,
    ) -> None:
        super().__init__(home, [], ready_file=ctl / protocol.READY, grace=grace, verbose=verbose)
        self.job_id = job_id
        self.ctl = ctl
        self.pfs = pfs
        self.shard = shard
        self.pod = pod
        self.inputs: protocol.InputFiles | None = None
        self.datum_mounts: list[Mount] = []
        self.storing: tuple[str, trio.Event] | None = None
        """The datum whose output is being stored, and the event set when that ends."""

    async def started(self) -> None:
        assert self.repo is not None
        remove_ready(self.ready_file)
        self.ctl.mkdir(parents=True, exist_ok=True)
        plan = await trio.to_thread.run_sync(protocol.get_plan, self.repo.store, self.job_id)
        if plan.mode not in protocol.MODES:
            raise InvalidInput(f"job {self.job_id}: unknown mode {plan.mode!r}")
        self.inputs = protocol.InputFiles(self.repo)
        seq = protocol.ctl_sequence(self.ctl)
        in_flight = seq > 0 and not protocol.ctl_settled(self.ctl, seq)
        if in_flight:
            log.warning("datum %d was in flight when the previous sidecar ended: failing it", seq)
            protocol.ctl_put(
                self.ctl,
                f"failed.{seq}",
                "the pfsfs sidecar restarted during this datum; its output was not stored",
            )
        await trio.to_thread.run_sync(self._clear_pfs)
        write_ready(self.ctl / protocol.READY, [])
        log.info(
            "job %s shard %d of %d (%s mode): %d datum(s)",
            self.job_id,
            self.shard,
            plan.shards,
            plan.mode,
            len(plan.shard(self.shard)),
        )
        if not in_flight:
            self.manager.nursery.start_soon(self._work, plan, seq)

    def _clear_pfs(self) -> None:
        """Detach a predecessor's dead mounts below /pfs and empty it."""
        self.pfs.mkdir(parents=True, exist_ok=True)
        for child in self.pfs.iterdir():
            recovery.clean_stale(str(child))
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
                if child.exists():  # still a live mount: not ours to remove
                    raise DaemonError(f"{child} is busy (a mount that is not this sidecar's?)")
            else:
                child.unlink()

    async def _work(self, plan: protocol.Plan, seq: int) -> None:
        assert self.repo is not None
        stored = 0
        for datum in plan.shard(self.shard):
            if await trio.to_thread.run_sync(
                protocol.has_record, self.repo.store, self.job_id, datum.id
            ):
                log.info("datum %s has a record already; skipping it", datum.id[:12])
                continue
            seq += 1
            if not await self._one(plan, datum, seq):
                return  # the wrapper exits with the datum's failure; SIGTERM follows
            stored += 1
        protocol.ctl_put(self.ctl, protocol.DONE, f"{stored}")
        log.info("job %s shard %d: done, %d datum(s) stored", self.job_id, self.shard, stored)

    async def _one(self, plan: protocol.Plan, datum: protocol.PlanDatum, seq: int) -> bool:
        """Offer one datum and store its output; False if it failed (nothing was recorded)."""
        assert self.repo is not None
        try:
            await self._prepare(plan, datum)
        except (PfsError, OSError) as exc:
            message = f"cannot prepare the inputs: {getattr(exc, 'message', None) or exc}"
            log.error("datum %s: %s", datum.id[:12], message)
            await self._cleanup()
            protocol.ctl_put(self.ctl, f"failed.{seq}", message)
            return False
        protocol.ctl_put(self.ctl, f"datum.{seq}", protocol.env_lines(self._env(datum)))
        self._forget(seq - 1)  # after: the highest datum.N always names the current exchange
        started = trio.current_time()
        while True:
            if (self.ctl / f"request.{seq}").exists():
                break
            if (self.ctl / f"abort.{seq}").exists():
                why = (self.ctl / f"abort.{seq}").read_text().strip()
                log.info("datum %s aborted by the wrapper: %s", datum.id[:12], why)
                await self._cleanup()
                return False
            await trio.sleep(self.POLL)
        duration = trio.current_time() - started
        stored = trio.Event()
        self.storing = (datum.id, stored)
        try:
            key = await trio.to_thread.run_sync(
                lambda: protocol.store_datum(
                    self.repo,  # type: ignore[arg-type]
                    self.job_id,
                    datum,
                    self.pfs / "out",
                    pod=self.pod,
                    duration=duration,
                    warn=lambda m: log.warning("datum %s: %s", datum.id[:12], m),
                )
            )
        except (PfsError, OSError) as exc:
            message = f"cannot store /pfs/out: {getattr(exc, 'message', None) or exc}"
            log.error("datum %s: %s", datum.id[:12], message)
            protocol.ctl_put(self.ctl, f"failed.{seq}", message)
            await self._cleanup()
            return False
        finally:
            stored.set()
            self.storing = None
        log.info("datum %s stored: %s", datum.id[:12], key)
        protocol.ctl_put(self.ctl, f"committed.{seq}", key)
        await self._cleanup()
        return True

    async def stop_mounts(self) -> None:
        """At SIGTERM a datum's output may be being stored (the user command ended, then the
        pod was deleted): let that finish within the grace, so its record counts. Past the
        grace give up on it — exit 1 at once, saying so — rather than wait for the kubelet's
        SIGKILL (never wedge). Nothing acknowledged is lost: the wrapper has not been told
        ``committed``, and a datum without a record is run again by the retried pod."""
        begun = trio.current_time()
        if self.storing is not None:
            datum_id, stored = self.storing
            log.info("SIGTERM while storing datum %s: waiting for it", datum_id[:12])
            with trio.move_on_after(self.grace):
                await stored.wait()
            if not stored.is_set():
                self._give_up(datum_id)
        self.grace = max(self.grace - (trio.current_time() - begun), 1.0)
        await super().stop_mounts()

    def _give_up(self, datum_id: str) -> None:
        message = (
            f"shutdown overran the {self.grace:g} s grace: the output of datum "
            f"{datum_id[:12]} was still being stored and is not recorded; the retried pod "
            "runs the datum again"
        )
        log.error("%s", message)
        print(f"pfsfs: error: {message}", file=sys.stderr, flush=True)
        remove_ready(self.ready_file)
        for m in list(self.manager.mounts.values()):  # the datum's read-only inputs
            m.process.kill()
            unmount(m.mountpoint, lazy=True)
        # The store's thread cannot be cancelled, and the process must not wait for it.
        os._exit(OVERRUN_EXIT)

    def _env(self, datum: protocol.PlanDatum) -> dict[str, str]:
        return protocol.datum_env(datum, self.job_id, str(self.pfs))

    def _forget(self, seq: int) -> None:
        """Remove the control files of an exchange that is over (the ctl volume is small)."""
        for what in ("datum", "request", "committed", "failed", "abort"):
            try:
                (self.ctl / f"{what}.{seq}").unlink()
            except FileNotFoundError:
                pass

    async def _prepare(self, plan: protocol.Plan, datum: protocol.PlanDatum) -> None:
        assert self.inputs is not None
        out = self.pfs / "out"
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o777)  # the user container runs as another uid
        for item in datum.inputs:
            target = self.pfs / item.name
            target.mkdir(parents=True, exist_ok=True)
            if plan.mode == protocol.FUSE and item.whole:
                self.datum_mounts.append(await self._mount_input(item, target))
            else:
                await trio.to_thread.run_sync(self.inputs.copy, item, target)

    async def _mount_input(self, item: protocol.PlanInput, target: Path) -> Mount:
        start: dict[str, Any] = {
            "op": "start",
            "mode": "mount",
            "mountpoint": str(target),
            "refs": [f"{item.repo}@{item.commit}"],
            "read_only": True,
            "create": False,
            "autosnapshot": None,
            "allow_other": True,
            "open_to_pod": True,
        }
        m = await self.manager.start(secrets.token_hex(6), start)
        await self._answers(m.mountpoint)
        return m

    async def _cleanup(self) -> None:
        mounts, self.datum_mounts = self.datum_mounts, []
        for m in mounts:
            await self.manager._shutdown_one(m)
        await trio.to_thread.run_sync(self._clear_pfs)


# -- entry point -------------------------------------------------------------------------------
def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfsfs sidecar", description=__doc__)
    parser.add_argument("--home")
    parser.add_argument("--job", help="be the sidecar of this pfsfs job's Kubernetes pod")
    parser.add_argument("--ctl", type=Path, default=Path("/run/pfsfs"))
    parser.add_argument("--pfs", type=Path, default=Path("/pfs"))
    parser.add_argument("--install-wrapper", type=Path, metavar="PATH")
    parser.add_argument("--mount", action="append", default=[], metavar="REF:DIR[:ro|:rw]")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--grace", type=_positive, default=DEFAULT_GRACE)
    parser.add_argument("--autosnapshot", type=_positive)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _shard_index(environ: dict[str, str] | os._Environ[str]) -> int:
    text = environ.get("JOB_COMPLETION_INDEX", "")
    if not text.isdigit():
        raise InvalidInput(
            f"JOB_COMPLETION_INDEX={text!r}: --job needs the pod's index of an Indexed Job"
        )
    return int(text)


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO - 10 * min(args.verbose, 1),
        format="%(asctime)s pfsfs-sidecar %(levelname)s %(name)s: %(message)s",
    )
    home = Path(args.home).expanduser().absolute() if args.home else default_home().absolute()
    if args.install_wrapper is not None:
        protocol.install_wrapper(args.install_wrapper)
        sys.exit(0)
    try:
        if args.job is not None:
            prepare_home(home, store_from_env(os.environ))
            sidecar: Sidecar = JobSidecar(
                home,
                args.job,
                args.ctl.absolute(),
                args.pfs.absolute(),
                _shard_index(os.environ),
                pod=os.environ.get("PFSFS_POD", ""),
                grace=args.grace,
                verbose=args.verbose,
            )
        else:
            specs = [parse_mount(text) for text in args.mount]
            check_specs(specs)
            prepare_home(home, store_from_env(os.environ))
            sidecar = Sidecar(
                home,
                specs,
                ready_file=args.ready_file.absolute() if args.ready_file else None,
                grace=args.grace,
                autosnapshot=args.autosnapshot,
                verbose=args.verbose,
            )
        try:
            trio.run(sidecar.main)
        except BaseException as exc:  # noqa: BLE001 - unwrap trio's one-error groups
            raise _single(exc) from None
    except PfsError as exc:
        print(f"pfsfs: error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:  # the home or a directory cannot be made (permissions, full disk)
        print(f"pfsfs: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        sys.exit(7)
    sys.exit(sidecar.exit_code)


if __name__ == "__main__":
    main()
