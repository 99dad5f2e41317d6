"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest

from .fusehelpers import no_leftovers
from .s3server import s3_server

__all__ = ["no_leftovers", "s3_server"]  # the leftover check; the session's moto server

# Pipeline commands start the daemon (which runs the scheduler) when nothing processes
# pipelines; tests that want a daemon start one themselves, and the suite must leave none.
os.environ.setdefault("PFSFS_NO_DAEMON", "1")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(no_leftovers: None) -> None:
    """The leftover check (``fusehelpers.no_leftovers``) ends every session, whichever
    fixtures its tests use."""
