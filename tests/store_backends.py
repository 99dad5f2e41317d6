"""Factories for every ObjectStore backend, and a repository on the memory twin.

Each store factory returns a fresh, empty store; the contract suite
(``tests/test_store_contract.py``) runs once per backend through them. S3 needs a server
(``tests/s3server.py``: moto over HTTP, one per session), handed in by the caller's fixture;
each S3 store gets a random prefix, so tests never see each other's objects.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from pfsfs.home import HomeConfig
from pfsfs.index import Index
from pfsfs.repository import Repository
from pfsfs.store.base import ObjectStore
from pfsfs.store.cache import CachingStore
from pfsfs.store.local import LocalObjectStore
from pfsfs.store.memory import MemoryObjectStore
from pfsfs.store.s3 import S3ObjectStore

from .s3server import MotoServer

#: The ``config.json`` store section a memory repository reports (nothing opens it again).
MEMORY_CONFIG = {"type": "memory"}


def make_memory_store(tmp_path: Path) -> ObjectStore:
    return MemoryObjectStore(f"memory:{tmp_path.name}")


def make_local_store(tmp_path: Path) -> ObjectStore:
    return LocalObjectStore(tmp_path / "store")


def make_s3_store(tmp_path: Path, server: MotoServer, **kwargs: object) -> S3ObjectStore:
    """An S3 store on ``server`` under a fresh random prefix."""
    return S3ObjectStore(
        server.bucket,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=server.endpoint,
        **server.credentials,
        **kwargs,  # type: ignore[arg-type]
    )


def make_cached_s3_store(tmp_path: Path, server: MotoServer) -> CachingStore:
    """The read cache in front of a fresh S3 prefix, as a home with an S3 store has it (small
    blocks, so that ranges of a few KiB already span several)."""
    return CachingStore(
        make_s3_store(tmp_path, server), tmp_path / "cache", 1 << 30, block_size=64 << 10
    )


def memory_repository(tmp_path: Path) -> Repository:
    """A repository whose store is in memory (its index and lock file live in ``tmp_path``):
    the library's core without a store on disk."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    return Repository(
        home, HomeConfig(dict(MEMORY_CONFIG)), MemoryObjectStore(), Index(home / "index")
    )
