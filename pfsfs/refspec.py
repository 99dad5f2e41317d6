"""Parsing of the ref syntax used everywhere: ``repo@REF[~N][:/path]``.

``REF`` is a branch name or a commit id (full, or a unique prefix of at least 6 hex
characters); ``~N`` walks N first-parents back. A branch name wins over a commit prefix that
happens to look the same. Only parsing lives here; resolution needs the repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_REF_RE = re.compile(r"^(?P<repo>[^@:~]+)(@(?P<ref>[^:~]+))?(~(?P<back>[0-9]+))?(:(?P<path>.*))?$")

MIN_PREFIX = 6
#: ``~N`` at most this: far beyond any real history, small enough to parse and count cheaply.
MAX_BACK = 10**9


def check_name(kind: str, name: str) -> str:
    """Repo and branch names: letters, digits, ``_ . -``; up to 100 characters."""
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid {kind} name {short_repr(name)}: use letters, digits, '_', '.', '-' "
            "(starting with a letter, digit or '_'), at most 100 characters"
        )
    return name


@dataclass(frozen=True)
class RefSpec:
    repo: str
    ref: str | None  # branch name, commit id or prefix; None = the default branch
    back: int = 0
    path: str | None = None

    def __str__(self) -> str:
        s = self.repo
        if self.ref:
            s += "@" + self.ref
        if self.back:
            s += f"~{self.back}"
        if self.path is not None:
            s += ":" + self.path
        return s


def parse_ref(text: str, *, allow_path: bool = True, default_branch: str = "master") -> RefSpec:
    m = _REF_RE.match(text)
    if not m:
        raise InvalidInput(
            f"malformed ref {short_repr(text)}: expected repo@branch, repo@COMMIT, repo@branch~N "
            "or repo@REF:/path"
        )
    repo = check_name("repo", m.group("repo"))
    ref = m.group("ref") or default_branch
    if not NAME_RE.match(ref):
        raise InvalidInput(
            f"malformed ref {short_repr(text)}: {short_repr(ref)} is not a branch name or commit id"
        )
    path = m.group("path")
    if path is not None:
        if not allow_path:
            raise InvalidInput(f"{short_repr(text)}: a path is not allowed here")
        if not path.startswith("/"):
            path = "/" + path
    return RefSpec(repo, ref, _back(text, m.group("back")), path)


def _back(text: str, digits: str | None) -> int:
    """The N of ``~N``, refused when absurd (and before ``int()`` of thousands of digits)."""
    if digits is None:
        return 0
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(MAX_BACK)) or int(digits) > MAX_BACK:
        raise InvalidInput(f"malformed ref {short_repr(text)}: ~N is at most {MAX_BACK:,}")
    return int(digits)


def short_repr(text: str | bytes, limit: int = 80) -> str:
    """``text`` quoted for a one-line error, cut in the middle when long."""
    if len(text) > limit:
        cut = b"..." if isinstance(text, bytes) else "..."
        text = text[: limit // 2] + cut + text[-limit // 4 :]  # type: ignore[operator]
    return repr(text)


def parse_branch(text: str) -> tuple[str, str]:
    """``repo@branch`` exactly (no commit, ``~N`` or path)."""
    spec = parse_ref(text, allow_path=False)
    if spec.back:
        raise InvalidInput(f"{short_repr(text)}: expected repo@branch")
    assert spec.ref is not None
    return spec.repo, check_name("branch", spec.ref)
