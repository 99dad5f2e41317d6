"""``S3ObjectStore`` against a real, disk-backed S3 server: Ceph radosgw, restarted mid-test.

Slow (cluster setup ~20 s, restart ~10 s) and needs root plus the Debian packages
``radosgw ceph-mon ceph-osd ceph-common``; skipped otherwise. The cluster comes from
``scripts/s3-radosgw.sh`` in a temporary directory and is destroyed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from pfsfs.errors import NotFound, RefChanged
from pfsfs.store.s3 import MULTIPART_THRESHOLD, S3ObjectStore

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "s3-radosgw.sh"
BUCKET = "pfsfs-radosgw"


@dataclass
class Gateway:
    directory: Path
    endpoint: str
    access_key: str
    secret_key: str

    def store(self, prefix: str) -> S3ObjectStore:
        return S3ObjectStore(
            BUCKET,
            prefix=prefix,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


def _script(action: str, directory: Path) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), action, str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"s3-radosgw.sh {action} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _start(directory: Path) -> Gateway:
    exports: dict[str, str] = {}
    for line in _script("start", directory).splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            exports[name] = value
    return Gateway(
        directory,
        exports["S3_ENDPOINT_URL"],
        exports["AWS_ACCESS_KEY_ID"],
        exports["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("radosgw", "ceph-mon", "ceph-osd")):
        pytest.skip("needs root and radosgw ceph-mon ceph-osd ceph-common")
    directory = tmp_path_factory.mktemp("radosgw") / "cluster"
    try:
        gw = _start(directory)
        boto3.client(
            "s3",
            endpoint_url=gw.endpoint,
            region_name="us-east-1",
            aws_access_key_id=gw.access_key,
            aws_secret_access_key=gw.secret_key,
        ).create_bucket(Bucket=BUCKET)
        yield gw
    finally:
        _script("destroy", directory)


def test_contract_critical_behaviour_survives_a_restart(gateway: Gateway) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = gateway.store(prefix)
    store.check()
    blobs = {
        "chunk/0000000000000000": b"",
        "chunk/1111111111111111": b"hello radosgw",
        "pack/2222222222222222": os.urandom(5 << 20),
        "pack/3333333333333333": os.urandom(2 * MULTIPART_THRESHOLD + 777),  # multipart
    }
    for key, data in blobs.items():
        store.put(key, data)
    store.put("chunk/1111111111111111", blobs["chunk/1111111111111111"])  # idempotent
    big = blobs["pack/3333333333333333"]
    edge = MULTIPART_THRESHOLD - 3
    assert store.get("pack/3333333333333333", edge, 9) == big[edge : edge + 9]
    with pytest.raises(NotFound):
        store.get("chunk/ffffffffffffffff")

    # Refs: create, create twice, move, stale move, update of a missing ref, delete.
    store.set_ref("branches/r/master", None, b"c1")
    with pytest.raises(RefChanged):
        store.set_ref("branches/r/master", None, b"c9")
    store.set_ref("branches/r/master", b"c1", b"c2")
    with pytest.raises(RefChanged):
        store.set_ref("branches/r/master", b"c1", b"c3")
    with pytest.raises(RefChanged):
        store.set_ref("branches/r/none", b"c1", b"c2")
    store.set_ref("branches/r/gone", None, b"x")
    store.set_ref("branches/r/gone", b"x", None)
    assert store.get_ref("branches/r/gone") is None

    # Threads racing on one ref: every increment lands exactly once.
    store.set_ref("counter", None, b"0")
    conflicts = [0]

    def bump() -> None:
        for _ in range(25):
            while True:
                current = store.get_ref("counter")
                assert current is not None
                try:
                    store.set_ref("counter", current, str(int(current) + 1).encode())
                    break
                except RefChanged:
                    conflicts[0] += 1

    start = time.monotonic()
    workers = [threading.Thread(target=bump) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    assert store.get_ref("counter") == b"100"
    print(f"radosgw: 100 CAS increments by 4 threads in {elapsed:.2f}s, {conflicts[0]} conflicts")
    store.close()

    # Restart the whole cluster, then read everything back bit for bit.
    t0 = time.monotonic()
    _script("stop", gateway.directory)
    restarted = _start(gateway.directory)
    print(f"radosgw: stop + start took {time.monotonic() - t0:.1f}s")
    assert restarted.endpoint == gateway.endpoint
    store = restarted.store(prefix)
    store.check()
    for key, data in blobs.items():
        assert store.get(key) == data, key
    assert {i.key: i.size for i in store.list()} == {k: len(v) for k, v in blobs.items()}
    assert dict(store.list_refs()) == {"branches/r/master": b"c2", "counter": b"100"}
    store.set_ref("counter", b"100", b"101")  # CAS still works after the restart
    with pytest.raises(RefChanged):
        store.set_ref("counter", b"100", b"102")
    assert store.get_ref("counter") == b"101"
    store.close()
