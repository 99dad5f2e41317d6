"""What the scheduler, the pod's sidecar and ``pfsfs-wrap`` agree on for a Kubernetes job.

The scheduler writes one immutable **plan** to the store (``k8s/jobs/<job>/plan``: the datums,
their input files and commits, the shard count, fuse or copy mode). Pod ``i`` of the Indexed
Job takes the plan's datums ``k`` with ``k % shards == i``. For each, its sidecar prepares
``/pfs/<input>`` and an empty ``/pfs/out``, offers it to the wrapper through the control
directory, and once the wrapper asks, stores the output's chunks and manifests and then writes
the datum's **record** ``k8s/jobs/<job>/datums/<datum>`` (create-only, like ``If-None-Match:
*``: the first record of a datum stays). Records and plans are refs of the store, so they live
in the bucket next to the objects they name. The sidecar never moves a branch: the scheduler
reads every expected record and makes the one output commit, after which the plan and records
are deleted (``pfsfs.k8s.retention`` says when, for failed jobs too).

The control files (atomic renames, see ``pfsfs-wrap.sh``): ``ready``, ``datum.N``, ``done``
(sidecar); ``request.N``, ``abort.N`` (wrapper); ``committed.N``, ``failed.N`` (sidecar).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import codec
from ..errors import Corruption, InvalidInput, PfsError
from ..model import Entry, Locator
from ..refs import JOB_RECORDS, Refs
from ..repository import Repository
from ..store.base import ObjectStore
from ..transfer import export_committed_file

PLAN_VERSION = 1
RECORD_VERSION = 1
FUSE, COPY = "fuse", "copy"
MODES = (FUSE, COPY)

READY, DONE = "ready", "done"
EXIT_RETRY, EXIT_NO_RETRY, EXIT_TIMEOUT, EXIT_TERM = 75, 86, 124, 143

Output = tuple[bytes, Entry, list[Locator]]


def wrapper_text() -> str:
    """The POSIX-sh wrapper the init container copies into the control directory."""
    return resources.files("pfsfs.k8s").joinpath("pfsfs-wrap.sh").read_text()


def install_wrapper(dest: Path) -> None:
    """Write the wrapper to ``dest`` (mode 0755) by atomic rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_text(wrapper_text())
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def plan_key(job_id: str) -> str:
    return f"{JOB_RECORDS}{job_id}/plan"


def record_key(job_id: str, datum_id: str) -> str:
    return f"{JOB_RECORDS}{job_id}/datums/{datum_id}"


def record_roots(refs: Refs) -> list[Locator]:
    """Every object the datum records of the store name: gc roots (a pod's sidecar stored
    them from another home; until the scheduler commits them, only the record holds them)."""
    roots: list[Locator] = []
    for name, value in refs.job_records():
        if "/datums/" not in name:
            continue
        try:
            roots.extend(Record.from_wire(codec.unpack_value(value)).locators())
        except (PfsError, ValueError, TypeError) as exc:
            raise Corruption(f"ref {name} is not a datum record: {exc}") from None
    return roots


@dataclass(frozen=True)
class PlanInput:
    """One input of a datum: mount ``repo@commit`` (``whole``: the datum is the whole commit)
    or copy ``files`` of it to ``/pfs/<name>``."""

    name: str
    repo: str
    commit: str
    files: tuple[str, ...]
    whole: bool


@dataclass(frozen=True)
class PlanDatum:
    id: str
    hash: str
    desc: str
    inputs: tuple[PlanInput, ...]


@dataclass(frozen=True)
class Plan:
    job: str
    pipeline: str
    mode: str
    shards: int
    datums: tuple[PlanDatum, ...]

    def shard(self, index: int) -> list[PlanDatum]:
        """The datums pod ``index`` of the Indexed Job processes, in plan order."""
        return [d for k, d in enumerate(self.datums) if k % self.shards == index]

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": PLAN_VERSION,
            "job": self.job,
            "pipeline": self.pipeline,
            "mode": self.mode,
            "shards": self.shards,
            "datums": [
                [
                    d.id,
                    d.hash,
                    d.desc,
                    [[i.name, i.repo, i.commit, list(i.files), i.whole] for i in d.inputs],
                ]
                for d in self.datums
            ],
        }

    @classmethod
    def from_wire(cls, w: Mapping[str, Any]) -> Plan:
        if w.get("v") != PLAN_VERSION:
            raise PfsError(f"job plan version {w.get('v')!r} is not {PLAN_VERSION}")
        datums = tuple(
            PlanDatum(
                d[0],
                d[1],
                d[2],
                tuple(PlanInput(i[0], i[1], i[2], tuple(i[3]), i[4]) for i in d[3]),
            )
            for d in w["datums"]
        )
        return cls(w["job"], w["pipeline"], w["mode"], int(w["shards"]), datums)


def put_plan(store: ObjectStore, plan: Plan) -> Plan:
    """Write the plan once; if this job already has one (a restarted scheduler adopting its
    Job), return the stored one: the running pods use that."""
    if Refs(store).create_job_record(plan_key(plan.job), codec.pack_value(plan.to_wire())):
        return plan
    return get_plan(store, plan.job)


def get_plan(store: ObjectStore, job_id: str) -> Plan:
    value = store.get_ref(plan_key(job_id))
    if value is None:
        raise PfsError(f"job {job_id} has no plan in the store ({plan_key(job_id)})")
    return Plan.from_wire(codec.unpack_value(value))


# -- datum records ------------------------------------------------------------------------------


@dataclass
class Record:
    """The durable result of one datum, written by the sidecar."""

    job: str
    datum: str
    hash: str
    outputs: list[list[Any]]
    """``Entry.to_wire(path)`` of every output: files, symlinks and directories (records
    written before directories were recorded hold no directory entries; theirs are implied
    by the paths, as they were)."""
    locs: list[list[Any]]
    """Every object the outputs reference (gc roots, cache checks)."""
    pod: str = ""
    duration: float = 0.0
    time_ns: int = field(default_factory=time.time_ns)

    def to_wire(self) -> dict[str, Any]:
        return {"v": RECORD_VERSION, **vars(self)}

    @classmethod
    def from_wire(cls, w: Mapping[str, Any]) -> Record:
        if w.get("v") != RECORD_VERSION:
            raise PfsError(f"datum record version {w.get('v')!r} is not {RECORD_VERSION}")
        return cls(**{k: v for k, v in w.items() if k != "v"})

    def entries(self) -> list[Output]:
        """``(path, entry, [])`` per output (directories too), as the engine merges them."""
        return [(*Entry.from_wire(w), []) for w in self.outputs]  # type: ignore[misc]

    def locators(self) -> list[Locator]:
        return [Locator.from_wire(w) for w in self.locs]


def put_record(store: ObjectStore, record: Record) -> str:
    """Create the datum's record; an existing one (an earlier attempt got there) is kept."""
    key = record_key(record.job, record.datum)
    Refs(store).create_job_record(key, codec.pack_value(record.to_wire()))
    return key


def get_record(store: ObjectStore, job_id: str, datum_id: str) -> Record | None:
    value = store.get_ref(record_key(job_id, datum_id))
    return Record.from_wire(codec.unpack_value(value)) if value is not None else None


def has_record(store: ObjectStore, job_id: str, datum_id: str) -> bool:
    return store.get_ref(record_key(job_id, datum_id)) is not None


# -- the sidecar's side: inputs in, outputs out --------------------------------------------------


def ingest(repository: Repository, out_dir: Path, warn: Callable[[str], None]) -> list[Output]:
    """Store every file, symlink and directory below ``out_dir`` (durable when this returns);
    the same entries the engine's local ingest makes."""
    from ..pipeline.engine import ingest_output  # (the engine imports runners: no cycle here)

    with repository.writer() as writer:
        return ingest_output(
            out_dir,
            repository.chunker(),
            writer,
            lambda what: warn(f"skipping {what} (not a file)"),
        )


def store_datum(
    repository: Repository,
    job_id: str,
    datum: PlanDatum,
    out_dir: Path,
    *,
    pod: str = "",
    duration: float = 0.0,
    warn: Callable[[str], None] = lambda _m: None,
) -> str:
    """Ingest ``/pfs/out`` and write the datum's record (after the objects are durable)."""
    outputs = ingest(repository, out_dir, warn)
    record = Record(
        job=job_id,
        datum=datum.id,
        hash=datum.hash,
        outputs=[e.to_wire(p) for p, e, _ in outputs],
        locs=[loc.to_wire() for _, _, locs in outputs for loc in locs],
        pod=pod,
        duration=duration,
    )
    return put_record(repository.store, record)


class InputFiles:
    """Entries of input commits by path, read once per commit (copy mode)."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self._by_commit: dict[str, dict[str, Entry]] = {}

    def entries(self, commit: str) -> dict[str, Entry]:
        if commit not in self._by_commit:
            root = self.repository.root_of(bytes.fromhex(commit))
            self._by_commit[commit] = {
                os.fsdecode(p): e for p, e in self.repository.walk(root) if not e.is_dir
            }
        return self._by_commit[commit]

    def copy(self, item: PlanInput, target: Path) -> None:
        """Materialise the datum's files of one input below ``target``."""
        entries = self.entries(item.commit)
        base = os.fsencode(target)
        for path in item.files:
            entry = entries.get(path)
            if entry is None:
                raise PfsError(f"{item.repo}@{item.commit[:12]}: {path} is not in the commit")
            dest = base + os.fsencode(path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            export_committed_file(self.repository, entry, dest)


_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./@:+=-]*$")


def datum_env(datum: PlanDatum, job_id: str, pfs: str = "/pfs") -> dict[str, str]:
    """The ``PFS_*`` variables of one datum, as the podman and local runners set them."""
    from ..pipeline.spec import input_env_key

    env = {input_env_key(i.name): f"{pfs}/{i.name}" for i in datum.inputs}
    env.update(PFS_OUT=f"{pfs}/out", PFS_DATUM_ID=datum.id, PFS_JOB_ID=job_id)
    return env


def env_lines(env: Mapping[str, str]) -> str:
    """``export K='v'`` lines the wrapper sources (names and values are checked)."""
    lines = []
    for key, value in sorted(env.items()):
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) or not _SAFE_VALUE.match(value):
            raise InvalidInput(f"cannot pass {key}={value!r} to the wrapper")
        lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def ctl_put(ctl: Path, name: str, text: str) -> None:
    """Write a control file by atomic rename (the wrapper never sees half of it)."""
    tmp = ctl / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, ctl / name)


def ctl_sequence(ctl: Path) -> int:
    """The highest ``datum.N`` a predecessor offered in ``ctl`` (0: none)."""
    best = 0
    for p in ctl.glob("datum.*"):
        tail = p.name.split(".", 1)[1]
        if tail.isdigit():
            best = max(best, int(tail))
    return best


def ctl_settled(ctl: Path, n: int) -> bool:
    """True if datum ``n``'s exchange has ended (committed, failed or aborted)."""
    return any((ctl / f"{what}.{n}").exists() for what in ("committed", "failed", "abort"))
