"""The boundary between pipelines and the storage layer.

The datum machinery never reads a repository itself. For every `(repo, branch)` a pipeline
reads, the caller resolves the branch head once and hands over an `InputCommit`: the commit id
and the list of files (path, content id, size) of that commit. `InputSource` is the small
protocol the wiring implements on top of the Repository facade; `resolve_inputs` calls it for
every branch a spec names.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

BranchKey = tuple[str, str]
"""`(repo, branch)`: how input commits are keyed."""


@dataclass(frozen=True)
class InputFile:
    """One file of an input commit."""

    path: str
    """Absolute in the repo: "/dir/file.txt"."""
    content_id: str
    """Hex content hash: identical content gives an identical id."""
    size: int


@dataclass(frozen=True)
class InputCommit:
    """The files of one commit of one input branch, as seen by a pipeline."""

    repo: str
    branch: str
    commit_id: str
    files: tuple[InputFile, ...] = field(default=())

    @classmethod
    def of(cls, repo: str, branch: str, commit_id: str, files: Iterable[InputFile]) -> InputCommit:
        """Build from any iterable of files; files are sorted by path, duplicates refused."""
        ordered = tuple(sorted(files, key=lambda f: f.path))
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.path == b.path:
                raise ValueError(f"{repo}@{commit_id}: duplicate file {a.path}")
        for f in ordered:
            if not f.path.startswith("/") or f.path.endswith("/") or "//" in f.path:
                raise ValueError(f"{repo}@{commit_id}: bad file path {f.path!r}")
        return cls(repo, branch, commit_id, ordered)

    @property
    def key(self) -> BranchKey:
        return (self.repo, self.branch)


class InputSource(Protocol):
    """What the wiring provides: the current head commit of a branch, with its files."""

    def input_commit(self, repo: str, branch: str) -> InputCommit | None:
        """The head of `repo@branch`, or None when the branch has no commit yet."""
        ...


def resolve_inputs(
    branches: Iterable[BranchKey], source: InputSource
) -> dict[BranchKey, InputCommit] | None:
    """Resolve every `(repo, branch)` once; None when any of them has no commit yet."""
    commits: dict[BranchKey, InputCommit] = {}
    for repo, branch in branches:
        commit = source.input_commit(repo, branch)
        if commit is None:
            log.debug("input %s@%s has no commit yet", repo, branch)
            return None
        commits[(repo, branch)] = commit
    return commits


def provenance(commits: Mapping[BranchKey, InputCommit]) -> list[tuple[str, str, str]]:
    """Sorted `(repo, branch, commit_id)` triples: what an output commit was made from."""
    return sorted((c.repo, c.branch, c.commit_id) for c in commits.values())


def files_under(files: Sequence[InputFile], prefix: str) -> list[InputFile]:
    """The files at `prefix` or below it (`prefix` is a file or directory path)."""
    if prefix == "/":
        return list(files)
    below = prefix + "/"
    return [f for f in files if f.path == prefix or f.path.startswith(below)]


class GlobError(ValueError):
    """A glob pattern that is not valid syntax; the message says why."""


def _char_class(body: str, negate: bool) -> str:
    """Translate the inside of a `[...]` to a regex class that never matches '/'."""
    parts: list[str] = []
    i = 0
    while i < len(body):
        lo = body[i]
        if i + 2 < len(body) and body[i + 1] == "-":
            hi = body[i + 2]
            if lo > hi:
                raise GlobError(f"bad range '{lo}-{hi}' in [...]")
            parts.append(f"{_class_escape(lo)}-{_class_escape(hi)}")
            i += 3
        else:
            parts.append(_class_escape(lo))
            i += 1
    inner = "".join(parts)
    return f"[^/{inner}]" if negate else f"(?!/)[{inner}]"


def _class_escape(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch


@functools.lru_cache(maxsize=256)
def compile_glob(glob: str) -> tuple[re.Pattern[str], int]:
    """Compile a Pachyderm glob to a regex matched against whole paths; returns it and the
    number of capture groups.

    `*` matches within one path component, `**` across components, `?` one character,
    `[abc]`/`[a-z]`/`[!a]` a character class, `(...)` a capture group (for `join_on` and
    `group_by` as `$1`, `$2`...), `\\x` a literal x. The glob must start with `/`.
    """
    if not glob.startswith("/"):
        raise GlobError("must start with '/'")
    if len(glob) > 1 and glob.endswith("/"):
        raise GlobError("must not end with '/'")
    if "//" in glob:
        raise GlobError("empty path component '//'")
    out: list[str] = []
    groups = depth = i = 0
    n = len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("***", i):
                raise GlobError(f"'***' at offset {i}")
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
            else:
                out.append("[^/]*")
                i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and glob[j] in "!^"
            start = j + 1 if negate else j
            end = glob.find("]", start)
            if end < 0:
                raise GlobError(f"unclosed '[' at offset {i}")
            body = glob[start:end]
            if not body:
                raise GlobError(f"empty '[]' at offset {i}")
            if "/" in body:
                raise GlobError(f"'/' inside '[...]' at offset {i}")
            out.append(_char_class(body, negate))
            i = end + 1
        elif c == "]":
            raise GlobError(f"unmatched ']' at offset {i}")
        elif c == "(":
            groups += 1
            depth += 1
            out.append("(")
            i += 1
        elif c == ")":
            if depth == 0:
                raise GlobError(f"unmatched ')' at offset {i}")
            depth -= 1
            out.append(")")
            i += 1
        elif c in "{}":
            raise GlobError(f"'{c}' alternatives are not supported (offset {i})")
        elif c == "\\":
            if i + 1 >= n:
                raise GlobError("trailing '\\'")
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    if depth:
        raise GlobError("unclosed '('")
    return re.compile("".join(out)), groups


_GROUP_REF = re.compile(r"\$(\d+)")


def template_groups(template: str) -> list[int]:
    """The capture group numbers a `join_on`/`group_by` template refers to (`$1` -> 1)."""
    return [int(m.group(1)) for m in _GROUP_REF.finditer(template)]


def expand_template(template: str, match: re.Match[str]) -> str:
    """Replace `$N` in a `join_on`/`group_by` template by capture group N of `match`."""
    return _GROUP_REF.sub(lambda m: match.group(int(m.group(1))) or "", template)
