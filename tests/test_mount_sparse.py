"""Sparse files through a mount: ``st_blocks`` (what ``du`` shows) is what is really held, before
and after commit, and the content reads back with its holes as zeros."""

from __future__ import annotations

import os

from .fusehelpers import Env, env, no_leftovers, sh

__all__ = ["env", "no_leftovers"]

GiB = 1 << 30


def _du_kib(path: os.PathLike[str]) -> int:
    return int(sh(f"du -k '{path}'").split()[0])


def test_sparse_file_reports_allocated_blocks(env: Env) -> None:
    with env.mounted("data@master", "mnt", "--create") as mp:
        f = mp / "sparse.bin"
        with open(f, "wb") as fh:
            fh.truncate(5 * GiB)
            fh.seek(5 * GiB - 4096)
            fh.write(b"x" * 4096)
        (mp / "dense.bin").write_bytes(os.urandom(3 << 20))
        assert os.stat(f).st_size == 5 * GiB
        assert _du_kib(f) < 10 * 1024, "a staged sparse file counts only what it holds"
        env.run("snapshot", str(mp), "-m", "sparse")
    with env.mounted("data@master", "again") as mp:
        f = mp / "sparse.bin"
        assert os.stat(f).st_size == 5 * GiB
        assert _du_kib(f) < 64 * 1024, "a committed sparse file counts only what it holds"
        assert _du_kib(mp / "dense.bin") >= 3 * 1024, "dense files count their full size"
        with open(f, "rb") as fh:
            fh.seek(5 * GiB - 8192)
            assert fh.read() == bytes(4096) + b"x" * 4096
        # a metadata change keeps the allocation; rewriting the tail keeps it sparse
        os.chmod(f, 0o600)
        with open(f, "r+b") as fh:
            fh.seek(5 * GiB - 4096)
            fh.write(b"y" * 4096)
        env.run("snapshot", str(mp), "-m", "tail")
    with env.mounted("data@master", "third") as mp:
        assert _du_kib(mp / "sparse.bin") < 64 * 1024
        with open(mp / "sparse.bin", "rb") as fh:
            fh.seek(5 * GiB - 4096)
            assert fh.read() == b"y" * 4096
