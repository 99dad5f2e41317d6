"""S3-specific behaviour of ``S3ObjectStore`` against a real moto server over HTTP.

The shared contract lives in ``test_store_contract.py``; here: URL parsing, error messages for a
wrong bucket / rejected credentials / unreachable endpoint (never quoting credentials), CAS
across processes, multipart uploads, upload checksums, the retry layer, and a server dying
mid-operation.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from pfsfs.errors import InvalidInput, NotFound, RefChanged, StoreError
from pfsfs.store.retry import RetryPolicy, call_with_retry, retry
from pfsfs.store.s3 import (
    MULTIPART_THRESHOLD,
    S3ObjectStore,
    from_config,
    is_transient,
    parse_store_url,
)

from .s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer, free_port, run_moto_server

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


def make_store(server: MotoServer, **kwargs: object) -> S3ObjectStore:
    args: dict[str, object] = {
        "prefix": f"t-{uuid.uuid4().hex[:12]}",
        "endpoint_url": server.endpoint,
        **server.credentials,
    }
    args.update(kwargs)
    bucket = str(args.pop("bucket", server.bucket))
    return S3ObjectStore(bucket, **args)  # type: ignore[arg-type]


def put_and_flush(store: S3ObjectStore, key: str, data: bytes) -> None:
    """A put is queued for a background upload; its failure surfaces at the flush barrier."""
    store.put(key, data)
    store.flush()


@pytest.fixture
def s3(s3_server: MotoServer) -> Iterator[S3ObjectStore]:
    store = make_store(s3_server)
    try:
        yield store
    finally:
        store.close()


def assert_clean(exc: BaseException) -> None:
    """A user-facing error: one line, no credentials, no chained SDK traceback."""
    text = str(exc)
    assert "\n" not in text
    assert TEST_ACCESS_KEY not in text and TEST_SECRET_KEY not in text
    assert exc.__cause__ is None and exc.__suppress_context__
    formatted = "".join(traceback.format_exception(exc))
    assert "botocore" not in formatted and "During handling" not in formatted


# -- URLs ---------------------------------------------------------------------------------------
def test_parse_store_url() -> None:
    assert parse_store_url("s3://bucket") == ("bucket", "")
    assert parse_store_url("s3://bucket/") == ("bucket", "")
    assert parse_store_url("s3://my.bucket-1/a/b_c/") == ("my.bucket-1", "a/b_c")
    for bad in (
        "bucket/prefix",
        "http://bucket/x",
        "s3://",
        "s3:///prefix",
        "s3://Bu",
        "s3://BUCKET/x",
        "s3://key:secret@bucket/x",
        "s3://bucket:9000/x",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
        "s3://bucket/a b",
        "s3://bucket/x?versionId=1",
    ):
        with pytest.raises(InvalidInput):
            parse_store_url(bad)


# -- layout ------------------------------------------------------------------------------------
def test_refs_are_not_blobs(s3: S3ObjectStore) -> None:
    s3.set_ref("branches/r/master", None, b"c1")
    s3.put("chunk/0123456789abcdef", b"x")
    assert [i.key for i in s3.list()] == ["chunk/0123456789abcdef"]
    with pytest.raises(ValueError):
        s3.put("refs/branches/r/master", b"evil")
    assert dict(s3.list_refs()) == {"branches/r/master": b"c1"}


def test_objects_live_under_the_prefix(s3_server: MotoServer, s3: S3ObjectStore) -> None:
    s3.put("chunk/0123456789abcdef", b"x")
    s3.set_ref("repos/r", None, b"v")
    listing = s3_server.client().list_objects_v2(  # type: ignore[attr-defined]
        Bucket=s3_server.bucket, Prefix=s3.prefix + "/"
    )
    keys = sorted(o["Key"] for o in listing["Contents"])
    assert keys == [f"{s3.prefix}/chunk/0123456789abcdef", f"{s3.prefix}/refs/repos/r"]


def test_delete_missing_ref_as_expected_is_a_no_op(s3: S3ObjectStore) -> None:
    s3.set_ref("x", None, None)
    with pytest.raises(RefChanged):
        s3.set_ref("x", b"1", None)


def test_get_past_the_end(s3: S3ObjectStore) -> None:
    s3.put("pack/0123456789abcdef", b"0123456789")
    assert s3.get("pack/0123456789abcdef", 10) == b""
    with pytest.raises(NotFound):
        s3.get("pack/0123456789abcdef", 8, 5)
    with pytest.raises(NotFound):
        s3.get("pack/ffffffffffffffff", 0, 0)


def test_get_upto_reads_no_further_than_asked(s3: S3ObjectStore) -> None:
    """From the start and for at least a whole pack's worth, ``get_upto`` asks for the whole
    object but reads only what it needs: a blob longer than that yields exactly ``length``
    bytes (and the next requests still work); a shorter one yields all of it; smaller reads
    and other offsets are ranges; a missing blob is NotFound."""
    big = MULTIPART_THRESHOLD
    data = os.urandom(big + (1 << 20))
    put_and_flush(s3, "pack/0123456789abcdef", data)
    for _ in range(3):  # the connection dropped after a partial read is not reused
        assert s3.get_upto("pack/0123456789abcdef", 0, big) == data[:big]
    assert s3.get_upto("pack/0123456789abcdef", 0, 2 * big) == data
    assert s3.get_upto("pack/0123456789abcdef", 0, 1 << 20) == data[: 1 << 20]
    assert s3.get_upto("pack/0123456789abcdef", 5, 10) == data[5:15]
    assert s3.get_upto("pack/0123456789abcdef", len(data), 10) == b""
    with pytest.raises(NotFound):
        s3.get_upto("pack/ffffffffffffffff", 0, 10)
    s3.put("pack/00000000000000ee", b"")
    s3.flush()
    assert s3.get_upto("pack/00000000000000ee", 0, 10) == b""


# -- errors ------------------------------------------------------------------------------------
def test_wrong_bucket(s3_server: MotoServer) -> None:
    store = make_store(s3_server, bucket="no-such-bucket")
    for op in (
        store.check,
        lambda: put_and_flush(store, "chunk/0123456789abcdef", b"x"),
        lambda: store.get("chunk/0123456789abcdef"),
        lambda: list(store.list()),
        lambda: store.get_ref("x"),
    ):
        with pytest.raises(StoreError) as info:
            op()
        assert str(info.value).startswith(
            f"bucket 'no-such-bucket' does not exist at {s3_server.endpoint}"
        ), str(info.value)
        assert_clean(info.value)


def test_rejected_credentials_are_never_quoted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # moto checks credentials once its first request (creating the bucket) is done.
    with run_moto_server(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as server:
        store = make_store(server)
        assert TEST_SECRET_KEY not in repr(store) and TEST_ACCESS_KEY not in repr(store)
        for op in (
            store.check,
            lambda: put_and_flush(store, "chunk/0123456789abcdef", b"x"),
            lambda: store.get("chunk/0123456789abcdef"),
            lambda: store.set_ref("x", None, b"1"),
        ):
            with pytest.raises(StoreError) as info:
                op()
            assert f"S3 credentials were rejected by {server.endpoint}" in str(info.value)
            assert_clean(info.value)
        assert TEST_SECRET_KEY not in repr(store) and TEST_ACCESS_KEY not in repr(store)
    for record in caplog.records:
        text = record.getMessage()
        assert TEST_SECRET_KEY not in text  # not even botocore's own debug log has the secret
        if record.name.startswith("pfsfs"):
            assert TEST_ACCESS_KEY not in text


class _TruncatingS3(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 and a Content-Length its body never reaches, then hangs
    up: a connection cut in the middle of a download (moto cannot be made to do that)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(MULTIPART_THRESHOLD))
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_download_cut_short_is_an_error_not_a_short_blob() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = S3ObjectStore(
            "bucket",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            aws_access_key_id=TEST_ACCESS_KEY,
            aws_secret_access_key=TEST_SECRET_KEY,
            max_attempts=1,
            retry_policy=FAST,
        )
        for length in (MULTIPART_THRESHOLD, 2 * MULTIPART_THRESHOLD):  # whole-object reads
            with pytest.raises(StoreError) as info:
                store.get_upto("pack/0123456789abcdef", 0, length)
            assert "IncompleteReadError" in str(info.value)
        with pytest.raises(StoreError):
            store.get("pack/0123456789abcdef")
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_endpoint_is_quick_with_short_retries() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3ObjectStore(
        "bucket",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        max_attempts=2,
        retry_policy=FAST,
        connect_timeout=1,
    )
    start = time.monotonic()
    for op in (store.check, lambda: put_and_flush(store, "chunk/0123456789abcdef", b"x")):
        with pytest.raises(StoreError) as info:
            op()
        assert str(info.value).startswith(f"cannot reach S3 endpoint {endpoint}")
        assert_clean(info.value)
    assert time.monotonic() - start < 15


def test_no_network_io_in_constructor() -> None:
    # A constructor against a dead endpoint returns at once and holds no client yet.
    store = S3ObjectStore("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert store._client_obj is None
    assert repr(store).startswith("S3ObjectStore('s3://bucket'")


# -- retries -----------------------------------------------------------------------------------
def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def test_transient_classification() -> None:
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(_client_error(503, "SlowDown"))
    assert is_transient(_client_error(500, "InternalError"))
    assert is_transient(_client_error(400, "Throttling"))
    for status, code in ((412, "PreconditionFailed"), (404, "NoSuchKey"), (403, "AccessDenied")):
        assert not is_transient(_client_error(status, code))


def test_retry_decorator_retries_only_what_the_predicate_allows() -> None:
    sleeps: list[float] = []
    calls = {"n": 0}

    @retry(lambda e: isinstance(e, ConnectionError), RetryPolicy(4, 0.1, 0.3), sleep=sleeps.append)
    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("down")
        return "ok"

    assert flaky() == "ok" and calls["n"] == 3
    assert len(sleeps) == 2 and all(0 <= s <= 0.3 for s in sleeps)

    def permanent() -> None:
        calls["n"] += 1
        raise KeyError("4xx-like")

    calls["n"] = 0
    with pytest.raises(KeyError):
        call_with_retry(permanent, lambda e: isinstance(e, ConnectionError), sleep=sleeps.append)
    assert calls["n"] == 1

    def always_down() -> None:
        calls["n"] += 1
        raise ConnectionError("down")

    calls["n"] = 0
    with pytest.raises(ConnectionError):
        call_with_retry(always_down, lambda e: True, RetryPolicy(3, 0, 0), sleep=sleeps.append)
    assert calls["n"] == 3


def test_retried_cas_write_whose_answer_was_lost_counts_as_done(s3: S3ObjectStore) -> None:
    """The write lands, the answer is lost, the retry sees 412: still a success."""
    s3.set_ref("counter", None, b"0")
    client = s3._client()
    lost = {"n": 0}

    def drop_answer(**kwargs: object) -> None:
        if lost["n"] == 0:
            lost["n"] += 1
            raise ConnectionClosedError(endpoint_url=s3.endpoint)

    client.meta.events.register("after-call.s3.PutObject", drop_answer)
    try:
        s3.set_ref("counter", b"0", b"1")
    finally:
        client.meta.events.unregister("after-call.s3.PutObject", drop_answer)
    assert lost["n"] == 1
    assert s3.get_ref("counter") == b"1"
    with pytest.raises(RefChanged):  # and a genuinely stale CAS still fails
        s3.set_ref("counter", b"0", b"2")


# -- concurrency across processes ------------------------------------------------------------
_WORKER = textwrap.dedent(
    """
    import sys, time
    from pfsfs.errors import RefChanged
    from pfsfs.store.s3 import S3ObjectStore
    endpoint, bucket, prefix, count, start_at = sys.argv[1:6]
    store = S3ObjectStore(bucket, prefix=prefix, endpoint_url=endpoint)
    while time.time() < float(start_at):
        time.sleep(0.005)
    conflicts = 0
    for _ in range(int(count)):
        while True:
            current = store.get_ref("counter")
            try:
                store.set_ref("counter", current, str(int(current) + 1).encode())
                break
            except RefChanged:
                conflicts += 1
    print(conflicts)
    """
)


def test_two_processes_increment_one_ref_without_losing_any(
    s3_server: MotoServer, s3: S3ObjectStore
) -> None:
    per_process, processes = 50, 2
    s3.set_ref("counter", None, b"0")
    start_at = time.time() + 2.0
    env = s3_server.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    args = [s3_server.endpoint, s3_server.bucket, s3.prefix, str(per_process), str(start_at)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    conflicts = sum(int(out.strip()) for out, _ in outputs)
    assert s3.get_ref("counter") == str(per_process * processes).encode()
    print(f"{per_process * processes} increments, {conflicts} CAS conflicts retried")


# -- big blobs ---------------------------------------------------------------------------------
def test_multipart_put_of_a_large_blob(s3_server: MotoServer, s3: S3ObjectStore) -> None:
    data = os.urandom(2 * MULTIPART_THRESHOLD + 12345)
    s3.put("pack/0123456789abcdef", memoryview(data))
    s3.flush()  # uploads run in the background until the barrier
    head = s3_server.client().head_object(  # type: ignore[attr-defined]
        Bucket=s3_server.bucket, Key=f"{s3.prefix}/pack/0123456789abcdef"
    )
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["ContentLength"] == len(data)
    assert s3.get("pack/0123456789abcdef") == data
    boundary = MULTIPART_THRESHOLD - 5
    assert s3.get("pack/0123456789abcdef", boundary, 10) == data[boundary : boundary + 10]
    assert [(i.key, i.size) for i in s3.list("pack/")] == [("pack/0123456789abcdef", len(data))]


def test_put_owned_uploads_the_buffer_handed_over(s3: S3ObjectStore) -> None:
    data = bytearray(os.urandom(300_000))
    expected = bytes(data)
    s3.put_owned("pack/00aa", data)
    got = s3.get("pack/00aa", 10, 20)  # maybe still queued: read your writes, as bytes
    assert type(got) is bytes and got == expected[10:30]
    s3.flush()
    assert s3.get("pack/00aa") == expected


@pytest.mark.parametrize(
    ("mode", "header"), [("crc32", "x-amz-checksum-crc32"), ("md5", "Content-MD5")]
)
def test_uploads_carry_the_configured_checksum(
    s3_server: MotoServer, mode: str, header: str
) -> None:
    """The server is given a checksum of every body it stores, computed here: CRC32 by default
    on a custom endpoint (cheap), Content-MD5 for servers without flexible checksums."""
    store = make_store(s3_server, upload_checksum=mode)
    sent: list[dict[str, str]] = []
    try:
        store._blob_client().meta.events.register(
            "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
        )
        body = os.urandom(200_000)
        put_and_flush(store, "chunk/" + "ef" * 32, body)
        assert store.get("chunk/" + "ef" * 32) == body
    finally:
        store.close()
    values = [h[header] for h in sent if header in h]
    assert len(values) == 1
    if mode == "crc32":
        expected = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    else:
        expected = base64.b64encode(hashlib.md5(body).digest()).decode()
    value = values[0].decode() if isinstance(values[0], bytes) else values[0]
    assert value == expected


def _header(headers: dict[str, object], name: str) -> str:
    value = headers.get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


def test_blob_bodies_go_unsigned_over_plain_http_and_refs_signed(s3_server: MotoServer) -> None:
    """Over plain HTTP a blob's body is not SHA-256 hashed for SigV4 (as botocore does over
    HTTPS; its id and CRC32 header cover it) and the server stores it; a ref's body, whose value
    nothing else verifies, is still signed."""
    store = make_store(s3_server)
    sent: list[tuple[str, dict[str, object]]] = []

    def record(request: object, **_: object) -> None:
        sent.append((str(request.url), dict(request.headers)))  # type: ignore[attr-defined]

    try:
        for client in {id(c): c for c in (store._client(), store._blob_client())}.values():
            client.meta.events.register("before-send.s3.PutObject", record)
        body = os.urandom(300_000)
        key = "chunk/" + "ab" * 32
        put_and_flush(store, key, body)
        store.set_ref("heads/x", None, b"value")
        assert store.get(key) == body
        assert store.get_ref("heads/x") == b"value"
    finally:
        store.close()
    blob = [h for url, h in sent if "/chunk/" in url]
    ref = [h for url, h in sent if "/refs/" in url]
    assert len(blob) == 1 and len(ref) == 1
    assert _header(blob[0], "X-Amz-Content-SHA256") == "UNSIGNED-PAYLOAD"
    assert _header(ref[0], "X-Amz-Content-SHA256") == hashlib.sha256(b"value").hexdigest()


def test_blob_bodies_keep_the_sdk_default_over_https() -> None:
    """Only plain-HTTP endpoints get the unsigned-body client: on HTTPS (and AWS) botocore's
    own rule already leaves bodies that carry a checksum unsigned, so nothing changes there."""
    for endpoint in ("https://s3.example.com", None):
        store = S3ObjectStore("b", endpoint_url=endpoint, region="us-east-1")
        assert store._blob_config is None
        store.close()
    assert S3ObjectStore("b", endpoint_url="http://127.0.0.1:1")._blob_config is not None


def test_unknown_upload_checksum_is_refused() -> None:
    with pytest.raises(InvalidInput, match="upload checksum"):
        S3ObjectStore("b", endpoint_url="http://127.0.0.1:1", upload_checksum="sha1")
    with pytest.raises(InvalidInput, match="store.upload_checksum"):
        from_config({"bucket": "b", "upload_checksum": "sha1"})


# -- faults ------------------------------------------------------------------------------------
def test_server_killed_mid_operation_gives_a_clean_store_error() -> None:
    with run_moto_server() as server:
        store = make_store(server, max_attempts=2, retry_policy=FAST, connect_timeout=1)
        store.set_ref("counter", None, b"0")
        done = {"ops": 0}
        failure: list[BaseException] = []

        def work() -> None:
            try:
                i = 0
                while True:
                    key = f"chunk/{i:016x}"
                    store.put(key, os.urandom(64 * 1024))
                    assert len(store.get(key)) == 64 * 1024
                    current = store.get_ref("counter")
                    assert current is not None
                    store.set_ref("counter", current, str(int(current) + 1).encode())
                    i += 1
                    done["ops"] += 1
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                failure.append(exc)

        worker = threading.Thread(target=work)
        worker.start()
        deadline = time.monotonic() + 10
        while done["ops"] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        worker.join(timeout=60)
        assert not worker.is_alive()
    assert done["ops"] >= 20
    assert len(failure) == 1
    exc = failure[0]
    assert isinstance(exc, StoreError), repr(exc)
    assert str(exc).startswith(f"cannot reach S3 endpoint {server.endpoint}"), str(exc)
    assert_clean(exc)
