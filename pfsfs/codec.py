"""Encoding of stored objects: a format-version byte, a kind byte, then msgpack.

Chunks are stored raw (no header) so their id is the hash of the user's bytes. Every other
object (manifest, tree, commit, pack index) goes through ``encode``/``decode`` here, so a future
format change has one place to branch on the version byte.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import Corruption

FORMAT_VERSION = 1

KIND_MANIFEST = 1
KIND_TREE = 2
KIND_COMMIT = 3

_KIND_NAMES = {KIND_MANIFEST: "manifest", KIND_TREE: "tree", KIND_COMMIT: "commit"}


def encode(kind: int, payload: Any) -> bytes:
    return bytes((FORMAT_VERSION, kind)) + msgpack.packb(payload, use_bin_type=True)


def decode(data: bytes | memoryview, kind: int) -> Any:
    if len(data) < 2:
        raise Corruption("stored object is truncated")
    if data[0] != FORMAT_VERSION:
        raise Corruption(
            f"stored object has format version {data[0]}; this pfsfs reads version "
            f"{FORMAT_VERSION} (upgrade pfsfs?)"
        )
    if data[1] != kind:
        raise Corruption(f"expected a {_KIND_NAMES.get(kind, kind)} object, found kind {data[1]}")
    try:
        return msgpack.unpackb(data[2:], raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise Corruption(f"stored {_KIND_NAMES.get(kind, kind)} cannot be decoded: {exc}") from None


def pack_value(value: Any) -> bytes:
    """msgpack for small index/ref values (no header: they are not content-addressed)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack_value(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
