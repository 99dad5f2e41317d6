"""Pipeline specs: parse YAML/JSON (close to Pachyderm's format), validate, normalise, hash.

A spec becomes a tree of frozen dataclasses. Every refusal is an `InvalidInput` whose one-line
message starts with the field path, e.g. `input.cross[1].pfs.glob: must start with '/'`.
`check_dag` validates a new spec against the pipelines that already exist (cycles, reading its
own output); `spec_hash` names a pipeline version.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import blake3
import yaml

from ..errors import InvalidInput
from .inputs import BranchKey, GlobError, compile_glob, template_groups

T = TypeVar("T")

log = logging.getLogger(__name__)

RUNNERS = ("podman", "local", "kubernetes")
"""Accepted `runner:` values."""
K8S_MODES = ("fuse", "copy")
"""`kubernetes.mode`: inputs through the sidecar's FUSE mounts, or copied (no privileges)."""
DEFAULT_K8S_TTL = 86400.0

#: Bounds that keep a spec's values storable (msgpack: 64-bit integers) and sane.
MAX_SPEC_BYTES = 1 << 20
MAX_PARALLELISM = 1024
MAX_DATUM_TRIES = 100
MAX_MEMORY = 1 << 60

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_INPUT_NAMES = frozenset({"out"})
COMBINATORS = ("cross", "union", "join", "group")


@dataclass(frozen=True)
class PfsInput:
    """One input branch, split into datums by `glob`, mounted at `/pfs/<name>`."""

    repo: str
    name: str
    branch: str = "master"
    glob: str = "/"
    join_on: str | None = None
    outer_join: bool = False
    group_by: str | None = None


@dataclass(frozen=True)
class CrossInput:
    """Cartesian product of the datums of each input."""

    inputs: tuple[Input, ...]


@dataclass(frozen=True)
class UnionInput:
    """The datums of each input, one after the other."""

    inputs: tuple[Input, ...]


@dataclass(frozen=True)
class JoinInput:
    """Datums of pfs inputs whose `join_on` values are equal, crossed per value."""

    inputs: tuple[PfsInput, ...]


@dataclass(frozen=True)
class GroupInput:
    """One datum per `group_by` value, with every matching datum of every input."""

    inputs: tuple[PfsInput, ...]


Input = PfsInput | CrossInput | UnionInput | JoinInput | GroupInput


@dataclass(frozen=True)
class Transform:
    """What runs for each datum. `env` is sorted `(name, value)` pairs."""

    cmd: tuple[str, ...]
    image: str | None = None
    stdin: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    user: str | None = None
    network: bool = False
    code: tuple[str, ...] = ()
    """What the transform's code is (`transform.code`): `/pfs/<input>/<path>` files or
    directories of a code input (only those are given to the transform, and only their content
    goes into datum hashes), or `image` (the image is the code). Empty: not declared."""

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class ResourceLimits:
    """Per-datum limits: `cpu` in cores, `memory` in bytes; None means unlimited."""

    cpu: float | None = None
    memory: int | None = None


@dataclass(frozen=True)
class KubernetesOptions:
    """The `kubernetes:` section, read by the kubernetes runner only (other runners ignore it,
    so one spec runs anywhere by changing `runner:` alone)."""

    mode: str = "fuse"
    job_timeout: float | None = None
    """The Job's activeDeadlineSeconds (default: derived from datum_timeout, if set)."""
    ttl_after_finished: float = DEFAULT_K8S_TTL


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline. `name` is also the output repo."""

    name: str
    input: Input
    transform: Transform
    description: str = ""
    output_branch: str = "master"
    parallelism: int = 1
    datum_tries: int = 3
    datum_timeout: float | None = None
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    runner: str = "podman"
    kubernetes: KubernetesOptions = field(default_factory=KubernetesOptions)

    def pfs_inputs(self) -> list[PfsInput]:
        """Every pfs input, in spec order."""
        return [p for _, p in iter_pfs(self.input)]

    def input_branches(self) -> list[BranchKey]:
        """The sorted, distinct `(repo, branch)` pairs the pipeline reads."""
        return sorted({(p.repo, p.branch) for p in self.pfs_inputs()})

    def input_repos(self) -> list[str]:
        return sorted({p.repo for p in self.pfs_inputs()})


def iter_pfs(node: Input, path: str = "input") -> Iterator[tuple[str, PfsInput]]:
    """`(field path, pfs input)` for every pfs input below `node`, in spec order."""
    if isinstance(node, PfsInput):
        yield f"{path}.pfs", node
        return
    kind = _kind(node)
    for i, child in enumerate(node.inputs):
        yield from iter_pfs(child, f"{path}.{kind}[{i}]")


def _kind(node: Input) -> str:
    return {CrossInput: "cross", UnionInput: "union", JoinInput: "join", GroupInput: "group"}[
        type(node)
    ]


# --- parsing -----------------------------------------------------------------------------------


def _bad(path: str, message: str) -> InvalidInput:
    return InvalidInput(f"{path}: {message}")


def _sub(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Fields:
    """A mapping being parsed: refuses unknown keys, tracks the field path."""

    def __init__(self, raw: Any, path: str, allowed: Iterable[str]) -> None:
        if not isinstance(raw, dict):
            raise _bad(path or "spec", f"must be a mapping, not {_typename(raw)}")
        for key in raw:
            if key not in allowed:
                raise _bad(_sub(path, str(key)), "unknown field")
        self.raw = raw
        self.path = path

    def at(self, key: str) -> str:
        return _sub(self.path, key)

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                raise _bad(self.at(key), "required")
            return default
        if not isinstance(value, str):
            raise _bad(self.at(key), f"must be a string, not {_typename(value)}")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(self.at(key), f"must be an integer, not {_typename(value)}")
        if value < minimum:
            raise _bad(self.at(key), f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise _bad(self.at(key), f"must be at most {maximum}, got {_shown(value)}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _bad(self.at(key), f"must be true or false, not {_typename(value)}")
        return value


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for an error line, cut when long (integers of thousands of digits)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _typename(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _scalar_str(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise _bad(path, f"must be a string, not {_typename(value)}")


def _str_list(raw: Any, path: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise _bad(path, f"must be a list of strings, not {_typename(raw)}")
    return tuple(_scalar_str(v, f"{path}[{i}]") for i, v in enumerate(raw))


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(value: Any, path: str) -> float:
    """Seconds from a number of seconds or a Go duration string ("30s", "1h30m", "500ms")."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        if re.fullmatch(r"\d+(\.\d*)?", text):
            seconds, pos = float(text), len(text)
        for m in _DURATION_PART.finditer(text) if not pos else ():
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise _bad(path, f"bad duration {value!r} (use seconds or e.g. 30s, 5m, 1h30m)")
    else:
        raise _bad(path, f"must be a duration, not {_typename(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise _bad(path, f"must be a positive duration, got {value!r}")
    return seconds


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?[bB]?$")
_QUANTITY_UNITS = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def parse_memory(value: Any, path: str) -> int:
    """Bytes from an integer or a Kubernetes quantity ("512Mi", "1G", "1.5Gi")."""
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    elif isinstance(value, str) and (m := _QUANTITY.match(value.strip())):
        amount = int(float(m.group(1)) * _QUANTITY_UNITS[m.group(2)])
    else:
        raise _bad(path, f"bad memory size {value!r} (use bytes or e.g. 512Mi, 2Gi, 1G)")
    if amount <= 0:
        raise _bad(path, f"must be positive, got {value!r}")
    if amount > MAX_MEMORY:
        raise _bad(path, f"must be at most {MAX_MEMORY} bytes (1 EiB), got {_shown(value)}")
    return amount


def parse_cpu(value: Any, path: str) -> float:
    """Cores from a number or a Kubernetes quantity ("500m" = 0.5)."""
    cores: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        cores = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            cores = None
    if cores is None:
        raise _bad(path, f"bad cpu {value!r} (use cores, e.g. 2, 0.5 or 500m)")
    if not math.isfinite(cores) or cores <= 0:
        raise _bad(path, f"must be positive, got {value!r}")
    return cores


def _check_name(value: str, path: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise _bad(path, f"bad {what} {value!r} (letters, digits, '_' and '-', at most 63)")
    return value


def _parse_pfs(raw: Any, path: str, parent: str | None) -> PfsInput:
    f = _Fields(raw, path, ("repo", "branch", "glob", "name", "join_on", "outer_join", "group_by"))
    repo = _check_name(f.text("repo", required=True) or "", f.at("repo"), "repo name")
    branch = _check_name(f.text("branch", "master") or "", f.at("branch"), "branch name")
    name = _check_name(f.text("name", repo) or "", f.at("name"), "input name")
    if name in RESERVED_INPUT_NAMES:
        raise _bad(f.at("name"), f"{name!r} is reserved (/pfs/out is the output)")
    glob = f.text("glob", "/") or ""
    try:
        _, groups = compile_glob(glob)
    except GlobError as e:
        raise _bad(f.at("glob"), f"bad glob {glob!r}: {e}") from None
    join_on = f.text("join_on")
    group_by = f.text("group_by")
    outer = f.flag("outer_join")
    if parent == "join" and join_on is None:
        raise _bad(f.at("join_on"), "required in a join input")
    if parent != "join" and (join_on is not None or outer):
        key = "join_on" if join_on is not None else "outer_join"
        raise _bad(f.at(key), "only allowed in a join input")
    if parent == "group" and group_by is None:
        raise _bad(f.at("group_by"), "required in a group input")
    if parent != "group" and group_by is not None:
        raise _bad(f.at("group_by"), "only allowed in a group input")
    for key, template in (("join_on", join_on), ("group_by", group_by)):
        for n in template_groups(template or ""):
            if not 1 <= n <= groups:
                raise _bad(f.at(key), f"${n} but the glob {glob!r} has {groups} capture groups")
    return PfsInput(repo, name, branch, glob, join_on, outer, group_by)


def _parse_input(raw: Any, path: str, parent: str | None = None) -> Input:
    f = _Fields(raw, path, ("pfs", *COMBINATORS))
    kinds = [k for k in ("pfs", *COMBINATORS) if k in raw]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "nothing"
        raise _bad(path, f"needs exactly one of pfs, {', '.join(COMBINATORS)}; got {found}")
    kind = kinds[0]
    if kind == "pfs":
        return _parse_pfs(raw["pfs"], f.at("pfs"), parent)
    if parent in ("join", "group"):
        raise _bad(f.at(kind), f"a {parent} can only contain pfs inputs")
    items = raw[kind]
    if not isinstance(items, list) or not items:
        raise _bad(f.at(kind), "must be a non-empty list of inputs")
    children = tuple(_parse_input(c, f"{f.at(kind)}[{i}]", kind) for i, c in enumerate(items))
    cls = {"cross": CrossInput, "union": UnionInput, "join": JoinInput, "group": GroupInput}[kind]
    return cls(children)  # type: ignore[arg-type]


def input_env_key(name: str) -> str:
    """The environment variable that holds the mount point of input `name`."""
    return "PFS_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _check_names(node: Input, path: str) -> dict[str, tuple[str, str]]:
    """Names that can appear together in one datum: env key -> (name, path). Inputs of a
    union may share a name (a datum only ever has one of them); others must not."""
    if isinstance(node, PfsInput):
        return {input_env_key(node.name): (node.name, f"{path}.pfs.name")}
    kind = _kind(node)
    merged: dict[str, tuple[str, str]] = {}
    for i, child in enumerate(node.inputs):
        names = _check_names(child, f"{path}.{kind}[{i}]")
        for key, (name, where) in names.items():
            if key in merged and kind != "union":
                other, first = merged[key]
                what = f"duplicate input name {name!r}"
                if other != name:
                    what = f"input name {name!r} clashes with {other!r} (both are ${key})"
                raise _bad(where, f"{what}; first at {first}")
            merged.setdefault(key, (name, where))
    return merged


def _parse_transform(raw: Any, path: str) -> Transform:
    f = _Fields(
        raw, path, ("image", "cmd", "stdin", "env", "working_dir", "user", "network", "code")
    )
    stdin = _str_list(raw["stdin"], f.at("stdin")) if f.has("stdin") else ()
    if f.has("cmd"):
        cmd = _str_list(raw["cmd"], f.at("cmd"))
        if not cmd:
            raise _bad(f.at("cmd"), "must not be empty")
    elif stdin:
        cmd = ("sh",)
    else:
        raise _bad(f.at("cmd"), "required (a list, e.g. [python3, /code/run.py])")
    env: dict[str, str] = {}
    if f.has("env"):
        env_raw = raw["env"]
        if not isinstance(env_raw, dict):
            raise _bad(f.at("env"), f"must be a mapping, not {_typename(env_raw)}")
        for key, value in env_raw.items():
            where = f"{f.at('env')}.{key}"
            if not isinstance(key, str) or not ENV_NAME_RE.match(key):
                raise _bad(where, "bad environment variable name")
            if key.startswith("PFS_"):
                raise _bad(where, "PFS_* variables are set by pfsfs")
            env[key] = _scalar_str(value, where)
    working_dir = f.text("working_dir")
    if working_dir is not None and not working_dir.startswith("/"):
        raise _bad(f.at("working_dir"), "must be an absolute path")
    user = _scalar_str(raw["user"], f.at("user")) if f.has("user") else None
    if user is not None and not re.match(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$", user):
        raise _bad(f.at("user"), f"bad user {user!r} (name, uid or uid:gid)")
    image = f.text("image")
    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        raise _bad(f.at("image"), f"bad image name {image!r}")
    return Transform(
        cmd=cmd,
        image=image,
        stdin=stdin,
        env=tuple(sorted(env.items())),
        working_dir=working_dir,
        user=user,
        network=f.flag("network"),
        code=_parse_code(raw.get("code"), f.at("code")),
    )


# --- transform.code --------------------------------------------------------------------------

CODE_IMAGE = "image"
"""`transform.code: image`: the transform's code is its image (no code input)."""


def _parse_code(raw: Any, path: str) -> tuple[str, ...]:
    """`transform.code`: one string or a list; each `image` or an absolute `/pfs/<input>/...`
    path (a file or a directory), normalised without a trailing '/'."""
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise _bad(path, "must be a path like /pfs/code/run.py, a list of them, or 'image'")
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(raw, list) else path
        if not isinstance(item, str):
            raise _bad(where, f"must be a string, not {_typename(item)}")
        if item == CODE_IMAGE:
            out.append(item)
            continue
        text = item.rstrip("/") if item != "/" else item
        parts = text.split("/")
        if not text.startswith("/pfs/") or len(parts) < 3 or "" in parts[1:] or ".." in parts:
            raise _bad(where, f"{item!r} is not a path in an input (e.g. /pfs/code/run.py)")
        if text in out:
            raise _bad(where, f"{item!r} is listed twice")
        out.append(text)
    if CODE_IMAGE in out and len(out) > 1:
        raise _bad(path, "'image' cannot be combined with code paths")
    return tuple(out)


def split_code_path(text: str) -> tuple[str, str]:
    """`/pfs/code/scripts/a.py` -> (`code`, `/scripts/a.py`); `/pfs/code` -> (`code`, `/`)."""
    rest = text[len("/pfs/") :]
    name, _, below = rest.partition("/")
    return name, "/" + below


def code_paths(transform: Transform) -> dict[str, list[tuple[int, str]]]:
    """Input name -> `(index in transform.code, path inside the input)` of its declared code."""
    out: dict[str, list[tuple[int, str]]] = {}
    for i, text in enumerate(transform.code):
        if text != CODE_IMAGE:
            name, below = split_code_path(text)
            out.setdefault(name, []).append((i, below))
    return out


def _check_code(transform: Transform, input_: Input, runner: str, problems: _Problems) -> None:
    """Every code path names a pfs input of the spec; `image` needs an image. Each bad entry
    is one problem, reported with the spec's other field errors."""
    names = {p.name for _, p in iter_pfs(input_)}
    for i, text in enumerate(transform.code):
        where = "transform.code" + (f"[{i}]" if len(transform.code) > 1 else "")
        if text == CODE_IMAGE:
            if transform.image is None:
                problems.add(where, f"'image' but the {runner} runner has no transform.image")
            continue
        name, _ = split_code_path(text)
        if name not in names:
            known = ", ".join(sorted(names))
            problems.add(where, f"{text}: /pfs/{name} is not an input (inputs: {known})")


_TOP_FIELDS = (
    "pipeline",
    "description",
    "input",
    "transform",
    "output_branch",
    "parallelism",
    "parallelism_spec",
    "datum_tries",
    "datum_timeout",
    "resource_limits",
    "runner",
    "kubernetes",
)


def _parse_kubernetes(raw: Any) -> KubernetesOptions:
    f = _Fields(raw, "kubernetes", ("mode", "job_timeout", "ttl_after_finished"))
    mode = f.text("mode", "fuse") or ""
    if mode not in K8S_MODES:
        raise _bad(f.at("mode"), f"unknown mode {mode!r} (one of {', '.join(K8S_MODES)})")
    timeout = raw.get("job_timeout")
    ttl = raw.get("ttl_after_finished")
    return KubernetesOptions(
        mode=mode,
        job_timeout=parse_duration(timeout, f.at("job_timeout")) if timeout is not None else None,
        ttl_after_finished=(
            parse_duration(ttl, f.at("ttl_after_finished")) if ttl is not None else DEFAULT_K8S_TTL
        ),
    )


class _Problems:
    """Field errors collected while parsing, so that one ``create`` names every one of them
    (a missing repo and a missing image at once, not one per try)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def attempt(self, fn: Callable[..., T], *args: Any, default: T) -> T:
        try:
            return fn(*args)
        except InvalidInput as e:
            self.messages.append(e.message)
            return default

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{path}: {message}")

    def raise_any(self) -> None:
        if len(self.messages) == 1:
            raise InvalidInput(self.messages[0])
        if self.messages:
            raise InvalidInput(f"{len(self.messages)} problems: " + "; ".join(self.messages))


def _pipeline_name(raw: Any) -> str:
    p = _Fields(raw, "pipeline", ("name",))
    return _check_name(p.text("name", required=True) or "", "pipeline.name", "pipeline name")


def _parse_spec_input(raw: Any) -> Input:
    node = _parse_input(raw, "input")
    _check_names(node, "input")
    return node


def parse_spec_dict(raw: Any, *, repos: Collection[str] | None = None) -> PipelineSpec:
    """Validate a decoded spec (a dict) and build the `PipelineSpec`; with ``repos`` (the
    repos that exist) also check that every input repo is one of them. Every independent
    field error is reported, in one line: "2 problems: input.pfs.repo: ...; transform...".
    """
    if not isinstance(raw, dict):
        raise _bad("spec", f"must be a mapping, not {_typename(raw)}")
    problems = _Problems()
    for key in raw:
        if key not in _TOP_FIELDS:
            problems.add(str(key), "unknown field")
    f = _Fields({k: v for k, v in raw.items() if k in _TOP_FIELDS}, "", _TOP_FIELDS)
    name = ""
    if not f.has("pipeline"):
        problems.add("pipeline.name", "required")
    else:
        name = problems.attempt(_pipeline_name, raw["pipeline"], default="")
    input_: Input | None = None
    if not f.has("input"):
        problems.add("input", "required")
    else:
        input_ = problems.attempt(_parse_spec_input, raw["input"], default=None)
    if input_ is not None and repos is not None:
        for path, pfs in iter_pfs(input_):
            if pfs.repo not in repos and pfs.repo != name:  # its own output: check_dag says
                problems.add(f"{path}.repo", f"repo {pfs.repo!r} does not exist")
    transform: Transform | None = None
    if not f.has("transform"):
        problems.add("transform.cmd", "required")
    else:
        transform = problems.attempt(_parse_transform, raw["transform"], "transform", default=None)
    runner = problems.attempt(f.text, "runner", "podman", default="podman") or ""
    if runner not in RUNNERS:
        problems.add("runner", f"unknown runner {runner!r} (one of {', '.join(RUNNERS)})")
    if transform is not None and input_ is not None:
        _check_code(transform, input_, runner, problems)
    if runner in ("podman", "kubernetes") and transform is not None and transform.image is None:
        problems.add("transform.image", f"required by the {runner} runner")
    kubernetes = (
        problems.attempt(_parse_kubernetes, raw["kubernetes"], default=None)
        if f.has("kubernetes")
        else None
    )
    parallelism = problems.attempt(_parallelism, f, raw, default=1)
    limits = problems.attempt(_limits, f, raw, default=ResourceLimits())
    description = problems.attempt(f.text, "description", "", default="") or ""
    output_branch = problems.attempt(
        lambda: _check_name(f.text("output_branch", "master") or "", "output_branch", "branch"),
        default="master",
    )
    datum_tries = problems.attempt(f.integer, "datum_tries", 3, 1, MAX_DATUM_TRIES, default=3)
    timeout = raw.get("datum_timeout")
    datum_timeout = (
        problems.attempt(parse_duration, timeout, "datum_timeout", default=None)
        if timeout is not None
        else None
    )
    problems.raise_any()
    assert input_ is not None and transform is not None
    return PipelineSpec(
        name=name,
        input=input_,
        transform=transform,
        description=description,
        output_branch=output_branch,
        parallelism=parallelism,
        datum_tries=datum_tries,
        datum_timeout=datum_timeout,
        resource_limits=limits,
        runner=runner,
        kubernetes=kubernetes or KubernetesOptions(),
    )


def _parallelism(f: _Fields, raw: dict[str, Any]) -> int:
    parallelism = f.integer("parallelism", 1, 1, MAX_PARALLELISM)
    if f.has("parallelism_spec"):
        if f.has("parallelism"):
            raise _bad("parallelism_spec", "give parallelism or parallelism_spec, not both")
        ps = _Fields(raw["parallelism_spec"], "parallelism_spec", ("constant",))
        parallelism = ps.integer("constant", 1, 1, MAX_PARALLELISM)
    return parallelism


def _limits(f: _Fields, raw: dict[str, Any]) -> ResourceLimits:
    if not f.has("resource_limits"):
        return ResourceLimits()
    r = _Fields(raw["resource_limits"], "resource_limits", ("cpu", "memory"))
    cpu = parse_cpu(raw["resource_limits"]["cpu"], r.at("cpu")) if r.has("cpu") else None
    mem = raw["resource_limits"].get("memory")
    return ResourceLimits(cpu, parse_memory(mem, r.at("memory")) if mem is not None else None)


def parse_spec(text: str, *, repos: Collection[str] | None = None) -> PipelineSpec:
    """Parse a YAML or JSON spec (JSON is YAML); ``repos``: see ``parse_spec_dict``."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidInput(f"spec: not valid YAML or JSON{where}: {first}") from None
    except RecursionError:  # the YAML composer recurses once per nesting level
        raise InvalidInput("spec: nested too deeply to be a pipeline spec") from None
    except ValueError as e:  # an integer of thousands of digits (Python refuses to convert it)
        raise InvalidInput(f"spec: not a usable value: {str(e).split(':')[0]}") from None
    if raw is None:
        raise InvalidInput("spec: empty")
    return parse_spec_dict(raw, repos=repos)


def read_spec_text(stream: BinaryIO, name: str) -> str:
    """The text of a spec from ``stream``, refusing more than ``MAX_SPEC_BYTES`` (``-f
    /dev/zero`` must not read forever) and bytes that are not UTF-8."""
    data = stream.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise InvalidInput(f"{name}: a spec is at most {MAX_SPEC_BYTES >> 20} MiB; this is larger")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"{name}: a spec must be UTF-8 text (bad byte at offset {e.start})"
        ) from None


def load_spec(path: str | Path, *, repos: Collection[str] | None = None) -> PipelineSpec:
    """Read and parse a spec file (``repos``: see ``parse_spec_dict``)."""
    try:
        with open(path, "rb") as f:
            text = read_spec_text(f, str(path))
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read spec: {e.strerror or e}") from None
    return parse_spec(text, repos=repos)


# --- serialising and hashing ---------------------------------------------------------------------


def _input_to_dict(node: Input) -> dict[str, Any]:
    if isinstance(node, PfsInput):
        d: dict[str, Any] = {
            "repo": node.repo,
            "branch": node.branch,
            "glob": node.glob,
            "name": node.name,
        }
        if node.join_on is not None:
            d["join_on"] = node.join_on
        if node.outer_join:
            d["outer_join"] = True
        if node.group_by is not None:
            d["group_by"] = node.group_by
        return {"pfs": d}
    return {_kind(node): [_input_to_dict(c) for c in node.inputs]}


def transform_to_dict(t: Transform) -> dict[str, Any]:
    d: dict[str, Any] = {"cmd": list(t.cmd), "stdin": list(t.stdin), "env": dict(t.env)}
    for key in ("image", "working_dir", "user"):
        if getattr(t, key) is not None:
            d[key] = getattr(t, key)
    d["network"] = t.network
    if t.code:  # absent when not declared: older specs keep their hash
        d["code"] = list(t.code)
    return d


def spec_to_dict(spec: PipelineSpec) -> dict[str, Any]:
    """The normalised spec (defaults filled in); `parse_spec_dict` gives the same spec back."""
    d: dict[str, Any] = {
        "pipeline": {"name": spec.name},
        "description": spec.description,
        "input": _input_to_dict(spec.input),
        "transform": transform_to_dict(spec.transform),
        "output_branch": spec.output_branch,
        "parallelism": spec.parallelism,
        "datum_tries": spec.datum_tries,
        "runner": spec.runner,
    }
    if spec.datum_timeout is not None:
        d["datum_timeout"] = spec.datum_timeout
    limits = {k: v for k, v in vars(spec.resource_limits).items() if v is not None}
    if limits:
        d["resource_limits"] = limits
    if spec.kubernetes != KubernetesOptions():  # absent from older specs: their hash stays
        k8s = {k: v for k, v in vars(spec.kubernetes).items() if v is not None}
        d["kubernetes"] = k8s
    return d


def canonical_json(value: Mapping[str, Any] | list[Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_hash(spec: PipelineSpec) -> str:
    """Hex BLAKE3 of the normalised spec: equal specs, equal hash (the pipeline version)."""
    return blake3.blake3(b"pfsfs-spec-v1\0" + canonical_json(spec_to_dict(spec))).hexdigest()


# --- the pipeline graph ------------------------------------------------------------------------


def check_dag(
    new: PipelineSpec, existing: Iterable[PipelineSpec], existing_repos: Iterable[str] = ()
) -> None:
    """Refuse `new` if it reads its own output, takes over a repo that is not a pipeline's
    output, or closes a cycle. `existing` may contain an older version of `new` (an update)."""
    specs = list(existing)
    others = {s.name: s for s in specs if s.name != new.name}
    updating = any(s.name == new.name for s in specs)
    for path, pfs in iter_pfs(new.input):
        if pfs.repo == new.name:
            raise _bad(f"{path}.repo", f"pipeline {new.name!r} cannot read its own output repo")
    if not updating:
        readers = sorted(s.name for s in others.values() if new.name in s.input_repos())
        if readers:
            raise _bad(
                "pipeline.name",
                f"repo {new.name!r} already exists as an input of {readers[0]!r} "
                "and is not a pipeline's output",
            )
        if new.name in set(existing_repos):
            raise _bad("pipeline.name", f"repo {new.name!r} already exists")
    reads = {name: s.input_repos() for name, s in others.items()}
    reads[new.name] = new.input_repos()

    def walk(node: str, chain: list[str], seen: set[str]) -> list[str] | None:
        for repo in reads.get(node, []):
            if repo == new.name:
                return [*chain, repo]
            if repo in reads and repo not in seen:
                seen.add(repo)
                found = walk(repo, [*chain, repo], seen)
                if found:
                    return found
        return None

    cycle = walk(new.name, [new.name], set())
    if cycle:
        first_hop = cycle[1]
        where = next(p for p, pfs in iter_pfs(new.input) if pfs.repo == first_hop)
        flow = " -> ".join(reversed(cycle))
        raise _bad(f"{where}.repo", f"pipelines would form a cycle: {flow}")
