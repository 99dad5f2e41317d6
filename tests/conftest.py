"""Shared pytest fixtures."""

from __future__ import annotations

import os

from .s3server import s3_server  # noqa: F401 - the session's moto server, for S3 tests

# Pipeline commands start the daemon (which runs the scheduler) when nothing processes
# pipelines; tests that want a daemon start one themselves, and the suite must leave none.
os.environ.setdefault("PFSFS_NO_DAEMON", "1")
