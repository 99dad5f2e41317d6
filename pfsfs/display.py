"""How names and paths (bytes) are shown to people and written into JSON.

Names are stored as bytes, so they need not be UTF-8. Decoding them with ``errors="replace"``
turned every undecodable byte into U+FFFD, and ``bad\\xff\\xfe`` and ``bad\\xfe\\xff`` printed
the same. Every human output (``ls``, ``diff``, ``put``/``get`` lines, error messages) goes
through :func:`show` instead, which is injective: UTF-8 text stays as it is, a byte that is not
part of valid UTF-8 and every control character byte is written ``\\xHH``, and a backslash
is doubled so that a name really containing ``\\xff`` cannot be confused with the byte 0xFF.

JSON output is lossless a different way (:func:`json_name`): a name that is valid UTF-8 is the
JSON string itself (JSON escapes control characters); any other name is given as its
:func:`show` form under ``key`` plus its exact bytes in base64 under ``key + "_b64"``. A reader
takes ``*_b64`` when present and the UTF-8 string otherwise.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if ch == "\\":
        return "\\\\"
    if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F:  # C0, DEL, C1 controls
        return "".join(f"\\x{b:02x}" for b in ch.encode())
    return ch


def show(raw: bytes | str) -> str:
    """``raw`` (a name or path) as text for people, with escapes (see the module docstring)."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to escape
    return "".join(_escape_char(ch) for ch in text)


def show_path(parts: Iterable[bytes]) -> str:
    """A path inside a repo, ``(b"a", b"b")`` → ``/a/b``, with escapes."""
    return show(b"/" + b"/".join(parts))


def show_local(path: bytes | str | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A local filesystem path (as given to ``-f`` or ``-o``), with escapes."""
    return show(os.fsencode(path))


def json_name(raw: bytes, key: str = "path") -> dict[str, str]:
    """``{key: text}`` for a UTF-8 name, else ``{key: show(raw), key + "_b64": base64}``."""
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: show(raw), key + "_b64": base64.b64encode(raw).decode("ascii")}


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 commits`` (``plural_form`` for irregular nouns)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"
