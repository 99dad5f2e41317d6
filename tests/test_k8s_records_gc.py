"""Datum records of Kubernetes jobs are part of the store: fsck accepts them, and gc keeps the
objects they name (a pod's sidecar stored those from its own home; until the scheduler commits
them, the record is the only thing that holds them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfsfs.errors import PfsError
from pfsfs.k8s.protocol import Record, put_record
from pfsfs.maintenance import fsck, gc

from .store_backends import memory_repository


def test_gc_keeps_what_datum_records_name_and_fsck_accepts_them(tmp_path: Path) -> None:
    repo = memory_repository(tmp_path)
    try:
        with repo.writer() as w:  # two sessions: two packs (or blobs), one each
            kept = w.put_chunk(b"output of a datum " * 1000)
        with repo.writer() as w:
            gone = w.put_chunk(b"unreferenced " * 1000)
        record = Record("job1", "d1", "h", outputs=[], locs=[kept.to_wire()])
        put_record(repo.store, record)
        gc(repo, grace=0)
        assert repo.reader.read_raw(kept) == b"output of a datum " * 1000
        with pytest.raises(PfsError):  # gc did run: what nothing names is gone
            repo.reader.read_raw(gone)
        assert fsck(repo) == []
    finally:
        repo.close()
