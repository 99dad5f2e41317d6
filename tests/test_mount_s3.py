"""A mount whose home keeps its objects in S3 (moto over real HTTP): the sidecar setup."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .fusehelpers import Env, force_unmount, fuse_mounts, no_leftovers, stop_any_daemon, write
from .s3server import MotoServer
from .tcpproxy import KillableProxy

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
        commit = s3env.out("snapshot", str(mp), "-m", "to s3")
        assert len(commit) == 64
        write(mp / "d" / "small", " more", "ab")
        s3env.unmount(mp)
    finally:
        force_unmount(mp)
    assert s3env.cat("data@master:/d/small") == b"small more"
    with s3env.mounted("data@master") as mp:
        assert (mp / "big.bin").read_bytes() == data
        assert (mp / "big.bin").read_bytes() == data  # again: page cache / chunk cache
    cached = list((s3env.home / "cache" / "store").rglob("*"))
    assert any(p.is_file() for p in cached)  # chunks kept on local disk by the store's cache
    assert not (s3env.home / "cache" / "chunks").exists()  # and not cached a second time


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_stalled_store_holds_up_only_the_read_waiting_for_it(
    tmp_path: Path, s3_server: MotoServer, no_leftovers: None
) -> None:
    """S3 stops answering during a cold read: that read waits, and completes once the store is
    back; meanwhile the rest of the mount (a lookup, a listing) and the daemon keep answering."""
    proxy = KillableProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    e = Env(tmp_path, s3_server.env())
    prefix = f"stall-{uuid.uuid4().hex[:10]}"
    e.run("init", "--store", f"s3://{s3_server.bucket}/{prefix}", "--endpoint-url", proxy.endpoint)
    e.start_daemon()
    data = os.urandom(24 << 20)
    write(tmp_path / "big.bin", data)
    write(tmp_path / "small", "small")
    e.run("repo", "create", "data")
    e.run("put", "data@master:/", "-f", str(tmp_path / "big.bin"), "-m", "big")
    e.run("put", "data@master:/", "-f", str(tmp_path / "small"), "-m", "small")
    mp = e.mount("data@master", "mnt", "--read-only")
    try:
        proxy.pause()
        reader, got = _in_thread(lambda: (mp / "big.bin").read_bytes())
        time.sleep(0.5)
        assert reader.is_alive(), "the read did not wait for the stalled store"
        looker, seen = _in_thread(lambda: ((mp / "small").stat().st_size, os.listdir(mp)))
        looker.join(5)
        assert not looker.is_alive(), "a lookup waited for another file's read from the store"
        assert seen["value"][0] == 5 and "small" in seen["value"][1]  # type: ignore[index]
        assert "data@master" in e.out("mounts")  # the daemon answers too
        assert reader.is_alive()
        proxy.resume()
        reader.join(120)
        assert got.get("value") == data, got.get("error")
        e.unmount(mp)
    finally:
        proxy.resume()
        force_unmount(mp)
        e.stop_daemon()
        stop_any_daemon(e.home)
        proxy.kill()
