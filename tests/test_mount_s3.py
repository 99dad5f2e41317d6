"""A mount whose home keeps its objects in S3 (moto over real HTTP): the sidecar setup."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fusehelpers import Env, force_unmount, fuse_mounts, no_leftovers, stop_any_daemon, write
from .mountmodel import snapshot_checked, unmount_checked
from .s3server import MotoServer

__all__ = ["no_leftovers"]


@pytest.fixture
def s3env(tmp_path: Path, s3_server: MotoServer, no_leftovers: None) -> Iterator[Env]:
    e = Env(tmp_path, s3_server.env())
    prefix = f"mount-{uuid.uuid4().hex[:10]}"
    e.run(
        "init",
        "--store",
        f"s3://{s3_server.bucket}/{prefix}",
        "--endpoint-url",
        s3_server.endpoint,
    )
    e.start_daemon()
    try:
        yield e
    finally:
        for mp in fuse_mounts(str(tmp_path)):
            force_unmount(mp)
        e.stop_daemon()
        stop_any_daemon(e.home)
        e.fsck()


def test_mount_on_s3(s3env: Env) -> None:
    data = os.urandom(3 << 20)
    mp = s3env.mount("data@master", "mnt", "--create")
    try:
        write(mp / "big.bin", data)
        os.makedirs(mp / "d")
        write(mp / "d" / "small", "small")
        commit = snapshot_checked(s3env, mp, "data@master", "to s3")
        assert len(commit) == 64
        write(mp / "d" / "small", " more", "ab")
        unmount_checked(s3env, mp, "data@master")
    finally:
        force_unmount(mp)
    assert s3env.cat("data@master:/d/small") == b"small more"
    with s3env.mounted("data@master") as mp:
        assert (mp / "big.bin").read_bytes() == data
        assert (mp / "big.bin").read_bytes() == data  # again: page cache / chunk cache
    cached = list((s3env.home / "cache" / "store").rglob("*"))
    assert any(p.is_file() for p in cached)  # chunks kept on local disk by the store's cache
    assert not (s3env.home / "cache" / "chunks").exists()  # and not cached a second time
