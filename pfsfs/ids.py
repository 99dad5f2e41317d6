"""Object ids: BLAKE3 digests of content (chunks) or of encoded objects (manifests, trees, commits).

Ids are 32 raw bytes inside the system and 64 lowercase hex characters for people.
"""

from __future__ import annotations

import blake3

ID_LEN = 32
HEX_LEN = 2 * ID_LEN


def hash_bytes(data: bytes | memoryview | bytearray) -> bytes:
    """The BLAKE3 id of ``data``."""
    return blake3.blake3(data).digest()


def to_hex(object_id: bytes) -> str:
    return object_id.hex()


def is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def from_hex(text: str) -> bytes:
    """Parse a full 64-character id (callers resolve prefixes elsewhere)."""
    if len(text) != HEX_LEN or not is_hex(text):
        raise ValueError(f"not an object id: {text!r}")
    return bytes.fromhex(text)
