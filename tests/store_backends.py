"""Factories for every ObjectStore backend the contract suite runs against.

Each factory takes pytest's ``tmp_path`` and returns a fresh, empty store. Backends that need a
server (S3) start it from fixtures in ``conftest.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from pfsfs.store.base import ObjectStore
from pfsfs.store.local import LocalObjectStore
from pfsfs.store.s3 import S3ObjectStore

from .s3server import MotoServer


def make_local_store(tmp_path: Path) -> ObjectStore:
    return LocalObjectStore(tmp_path / "store")


def make_s3_store(tmp_path: Path, server: MotoServer) -> ObjectStore:
    """An S3 store on ``server`` under a fresh random prefix, so tests never see each other."""
    return S3ObjectStore(
        server.bucket,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=server.endpoint,
        **server.credentials,
    )
