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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pfsfs.errors import DaemonError, InvalidInput, PfsError
from pfsfs.home import HomeConfig, default_home, read_config
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
    parser.add_argument("--mount", action="append", default=[], metavar="REF:DIR[:ro|:rw]")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--grace", type=_positive, default=DEFAULT_GRACE)
    parser.add_argument("--autosnapshot", type=_positive)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


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
    try:
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
    sys.exit(sidecar.exit_code)


if __name__ == "__main__":
    main()
