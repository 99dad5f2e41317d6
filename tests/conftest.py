"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pfsfs.store.base import ObjectStore

from .s3server import s3_server  # noqa: F401 - session fixture used by the "s3" store
from .store_backends import make_local_store, make_s3_store

# Pipeline commands start the daemon (which runs the scheduler) when nothing processes
# pipelines; tests that want a daemon start one themselves, and the suite must leave none.
os.environ.setdefault("PFSFS_NO_DAEMON", "1")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh, empty store of each backend kind (s3: moto over HTTP, random prefix)."""
    factories: dict[str, Callable[[Path], ObjectStore]] = {
        "local": make_local_store,
        "s3": lambda p: make_s3_store(p, request.getfixturevalue("s3_server")),
    }
    s = factories[request.param](tmp_path)
    try:
        yield s
    finally:
        s.close()
