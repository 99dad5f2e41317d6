"""Datums: split input commits into the units a transform runs on, and name them.

Glob semantics follow Pachyderm: every file and directory path of an input commit that the glob
matches is one datum of that input (`/` = one datum with everything, `/*` = one per top-level
entry, a directory datum holds every file below it). Combinators then build datums from datums:
`cross` (cartesian product), `union` (concatenation), `join` (datums whose `join_on` values are
equal, crossed per value; `outer_join` keeps unmatched datums of that input) and `group` (one
datum per `group_by` value). Ordering is deterministic. Datums without files are dropped; equal
datums (same id) are kept once.

`Datum.id` names the data (input names, paths and content ids); `datum_hash` adds the transform,
so an unchanged datum under unchanged code can reuse its previous output. With
`transform.code`, a code input contributes only the declared files to its datums (and so to
their ids and hashes): editing another file of the code repo changes nothing here.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import blake3

from .inputs import BranchKey, InputCommit, InputFile, compile_glob, expand_template
from .spec import (
    CrossInput,
    GroupInput,
    Input,
    JoinInput,
    PfsInput,
    Transform,
    UnionInput,
    canonical_json,
    code_paths,
    transform_to_dict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatumInput:
    """The part of a datum that comes from one pfs input, mounted at `/pfs/<name>`."""

    name: str
    repo: str
    branch: str
    commit_id: str
    files: tuple[InputFile, ...]
    matches: tuple[str, ...]
    """The paths the glob matched (a file or a directory each)."""


@dataclass(frozen=True)
class Datum:
    """One unit of work: for each input name, the files the transform sees."""

    id: str
    inputs: tuple[DatumInput, ...]

    @classmethod
    def of(cls, inputs: Sequence[DatumInput]) -> Datum:
        return cls(datum_id(inputs), tuple(inputs))

    def files(self) -> Iterator[tuple[str, InputFile]]:
        """`(input name, file)` for every file; the file goes to `/pfs/<name><file.path>`."""
        for di in self.inputs:
            for f in di.files:
                yield di.name, f

    @property
    def size(self) -> int:
        return sum(f.size for _, f in self.files())

    def describe(self) -> str:
        """A short human description: `name:/match ...`."""
        return " ".join(f"{di.name}:{','.join(di.matches)}" for di in self.inputs)


def datum_id(inputs: Sequence[DatumInput]) -> str:
    """Hex BLAKE3 over the sorted (input name, path, content id) of the files."""
    rows = sorted((di.name, f.path, f.content_id) for di in inputs for f in di.files)
    return blake3.blake3(b"pfsfs-datum-v1\0" + canonical_json(rows)).hexdigest()


def transform_fingerprint(transform: Transform, image_id: str | None = None) -> bytes:
    """What about the transform changes outputs: image (and its id when known), cmd, stdin,
    env, working_dir, user, network. Not limits, parallelism or timeouts."""
    d = transform_to_dict(transform)
    if image_id is not None:
        d["image_id"] = image_id
    return canonical_json(d)


def datum_hash(datum: Datum | str, transform: Transform, image_id: str | None = None) -> str:
    """Hex BLAKE3 of the datum id and the transform: equal hash, reusable output."""
    did = datum if isinstance(datum, str) else datum.id
    payload = did.encode() + b"\0" + transform_fingerprint(transform, image_id)
    return blake3.blake3(b"pfsfs-datum-hash-v1\0" + payload).hexdigest()


# --- pfs inputs ----------------------------------------------------------------------------------


def _entries(files: Sequence[InputFile]) -> list[str]:
    """Every file path and every directory path (except the root), sorted."""
    paths: set[str] = set()
    for f in files:
        paths.add(f.path)
        cut = f.path.rfind("/")
        while cut > 0:
            parent = f.path[:cut]
            if parent in paths:
                break
            paths.add(parent)
            cut = parent.rfind("/")
    return sorted(paths)


def _under(files: Sequence[InputFile], paths: Sequence[str], entry: str) -> tuple[InputFile, ...]:
    """The file at `entry`, or every file below the directory `entry` (a contiguous run of
    the sorted paths, since all strings with the prefix `entry/` sort together)."""
    i = bisect.bisect_left(paths, entry)
    if i < len(paths) and paths[i] == entry:
        return (files[i],)
    lo = bisect.bisect_left(paths, entry + "/")
    hi = bisect.bisect_left(paths, entry + "0")  # '0' follows '/'
    return tuple(files[lo:hi])


def select_code(files: Sequence[InputFile], paths: Sequence[str]) -> list[InputFile]:
    """The files of a code input that `transform.code` declares (each path a file or a
    directory, "/" = all), in path order."""
    if "/" in paths:
        return sorted(files, key=lambda f: f.path)
    wanted = set(paths)
    prefixes = tuple(p + "/" for p in paths)
    return sorted(
        (f for f in files if f.path in wanted or f.path.startswith(prefixes)),
        key=lambda f: f.path,
    )


def missing_code(
    transform: Transform, pfs_inputs: Sequence[PfsInput], commits: Mapping[BranchKey, InputCommit]
) -> str | None:
    """A one-line error naming the first `transform.code` path with no file in its input's
    commit, or None when every declared path exists."""
    by_name = {p.name: p for p in pfs_inputs}
    for name, declared in code_paths(transform).items():
        pfs = by_name[name]
        commit = commits.get((pfs.repo, pfs.branch))
        if commit is None:
            continue
        for i, path in declared:
            if not select_code(commit.files, [path]):
                where = "transform.code" + (f"[{i}]" if len(transform.code) > 1 else "")
                return (
                    f"{where}: {transform.code[i]} does not exist in "
                    f"{pfs.repo}@{commit.commit_id[:12]} ({pfs.branch})"
                )
    return None


def pfs_datums(
    pfs: PfsInput, commit: InputCommit, code: Sequence[str] | None = None
) -> list[tuple[DatumInput, re.Match[str]]]:
    """The datums of one pfs input, sorted by matched path, with the glob's match. For a code
    input, `code` is its declared paths: the other files are not part of any datum."""
    regex, _ = compile_glob(pfs.glob)
    files = sorted(commit.files, key=lambda f: f.path)
    if code is not None:
        files = select_code(files, code)
    paths = [f.path for f in files]

    def part(entry: str, chosen: tuple[InputFile, ...]) -> DatumInput:
        return DatumInput(pfs.name, commit.repo, commit.branch, commit.commit_id, chosen, (entry,))

    if pfs.glob == "/":
        m = regex.fullmatch("/")
        assert m is not None
        return [(part("/", tuple(files)), m)] if files else []
    out = []
    for entry in _entries(files):
        m = regex.fullmatch(entry)
        if m is not None:
            out.append((part(entry, _under(files, paths, entry)), m))
    return out


# --- combinators ---------------------------------------------------------------------------------

Part = tuple[DatumInput, ...]


def _commit(pfs: PfsInput, commits: Mapping[BranchKey, InputCommit]) -> InputCommit:
    try:
        return commits[(pfs.repo, pfs.branch)]
    except KeyError:
        raise ValueError(f"no input commit given for {pfs.repo}@{pfs.branch}") from None


Code = Mapping[str, Sequence[str]]
"""Input name -> the paths `transform.code` declares in it."""


def _keyed(
    pfs: PfsInput, template: str, commits: Mapping[BranchKey, InputCommit], code: Code
) -> dict[str, list[DatumInput]]:
    keyed: dict[str, list[DatumInput]] = {}
    for di, m in pfs_datums(pfs, _commit(pfs, commits), code.get(pfs.name)):
        keyed.setdefault(expand_template(template, m), []).append(di)
    return keyed


def _join(node: JoinInput, commits: Mapping[BranchKey, InputCommit], code: Code) -> list[Part]:
    per_input = [_keyed(p, p.join_on or "", commits, code) for p in node.inputs]
    out: list[Part] = []
    for key in sorted(set().union(*per_input)):
        present = [i for i, keyed in enumerate(per_input) if key in keyed]
        if len(present) < len(per_input) and not any(node.inputs[i].outer_join for i in present):
            continue
        out.extend(itertools.product(*(per_input[i][key] for i in present)))
    return out


def _merge(parts: Sequence[DatumInput]) -> DatumInput:
    """One input's datums merged into one (a group): files by path, matches in order."""
    files = {f.path: f for di in parts for f in di.files}
    first = parts[0]
    return DatumInput(
        first.name,
        first.repo,
        first.branch,
        first.commit_id,
        tuple(files[p] for p in sorted(files)),
        tuple(m for di in parts for m in di.matches),
    )


def _group(node: GroupInput, commits: Mapping[BranchKey, InputCommit], code: Code) -> list[Part]:
    per_input = [_keyed(p, p.group_by or "", commits, code) for p in node.inputs]
    out: list[Part] = []
    for key in sorted(set().union(*per_input)):
        out.append(tuple(_merge(keyed[key]) for keyed in per_input if key in keyed))
    return out


def _parts(node: Input, commits: Mapping[BranchKey, InputCommit], code: Code) -> list[Part]:
    if isinstance(node, PfsInput):
        return [(di,) for di, _ in pfs_datums(node, _commit(node, commits), code.get(node.name))]
    if isinstance(node, CrossInput):
        children = [_parts(c, commits, code) for c in node.inputs]
        return [tuple(itertools.chain.from_iterable(p)) for p in itertools.product(*children)]
    if isinstance(node, UnionInput):
        return [p for c in node.inputs for p in _parts(c, commits, code)]
    if isinstance(node, JoinInput):
        return _join(node, commits, code)
    if isinstance(node, GroupInput):
        return _group(node, commits, code)
    raise TypeError(f"not an input: {node!r}")


def compute_datums(
    tree: Input, commits: Mapping[BranchKey, InputCommit], code: Code | None = None
) -> list[Datum]:
    """All datums of a pipeline's input tree, given the commit of every `(repo, branch)` it
    reads (see `PipelineSpec.input_branches`). `code` (input name -> declared paths, from
    `transform.code`) narrows code inputs to the files the transform declares."""
    datums: list[Datum] = []
    seen: set[str] = set()
    for part in _parts(tree, commits, code or {}):
        if not any(di.files for di in part):
            continue
        datum = Datum.of(part)
        if datum.id in seen:
            log.debug("dropping repeated datum %s (%s)", datum.id[:12], datum.describe())
            continue
        seen.add(datum.id)
        datums.append(datum)
    return datums
