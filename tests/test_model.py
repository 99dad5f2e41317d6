"""The entry format's kinds: one enum, encoded as its wire letter, strict on unknown letters."""

from __future__ import annotations

import os
import stat

import pytest

from pfsfs import codec
from pfsfs.errors import Corruption
from pfsfs.model import (
    DIR,
    FIFO,
    FILE,
    SYMLINK,
    Entry,
    Kind,
    decode_tree,
    encode_tree,
    entry_extra,
)


def test_kind_round_trips_through_a_tree_as_its_letter() -> None:
    entries = {
        b"f": Entry(FILE, 0o644, 0, 0, 1),
        b"d": Entry(DIR, 0o755, 0, 0, 1),
        b"l": Entry(SYMLINK, 0o777, 0, 0, 1, target=b"f"),
        b"s": Entry(FIFO, 0o600, 0, 0, 1, extra=entry_extra(ftype=Kind.SOCKET)),
    }
    data = encode_tree(entries)
    raw = codec.decode(data, codec.KIND_TREE)
    assert [w[1] for w in raw] == ["d", "f", "l", "p"]  # the wire keeps one-letter codes
    back = decode_tree(data)
    assert back == entries
    assert all(type(e.type) is Kind for e in back.values())
    assert back[b"s"].kind is Kind.SOCKET and back[b"s"].type is Kind.FIFO


def test_an_unknown_entry_letter_is_corruption_not_a_guess() -> None:
    data = codec.encode(codec.KIND_TREE, [[b"x", "q", 0o644, 0, 0, 1, 0, None, b"", 0, None]])
    with pytest.raises(Corruption, match="unknown entry type 'q'"):
        decode_tree(data)


def test_kind_maps_to_and_from_file_type_bits(tmp_path) -> None:
    os.mkfifo(tmp_path / "p")
    (tmp_path / "f").write_bytes(b"")
    os.symlink("f", tmp_path / "l")
    assert Kind.of_mode(os.lstat(tmp_path / "p").st_mode) is Kind.FIFO
    assert Kind.of_mode(os.lstat(tmp_path / "f").st_mode) is Kind.FILE
    assert Kind.of_mode(os.lstat(tmp_path / "l").st_mode) is Kind.SYMLINK
    assert Kind.of_mode(os.lstat(tmp_path).st_mode) is Kind.DIR
    assert Kind.CHAR.mode_bits == stat.S_IFCHR and Kind.SOCKET.mode_bits == stat.S_IFSOCK
    with pytest.raises(ValueError, match="unknown file type"):
        Kind.of_mode(0o170000)
