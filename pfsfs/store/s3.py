"""The S3 object store (boto3): blobs and compare-and-swap refs in one bucket under a prefix.

Layout: blob ``<key>`` is the object ``<prefix>/<key>``; ref ``<name>`` is the object
``<prefix>/refs/<name>`` whose body is the ref's value. Blob keys under ``refs/`` are therefore
reserved and rejected.

Refs move by value-based compare-and-swap, made atomic by S3 conditional writes: a create is
one ``If-None-Match: *`` PUT; a move reads the ref (value + ETag in one GET), compares the
value with ``expected`` and writes with ``If-Match: <etag>`` (sent without quotes, which Ceph
radosgw requires and AWS and moto accept). The read is skipped when this store's own last read
or write of the ref saw ``expected`` (the usual read-modify-write); a 412 then re-reads once to
tell a real conflict from a stale ETag. A 412, a 409 ``ConditionalRequestConflict`` or a 404 on
an ``If-Match`` write means another writer got there first: ``RefChanged``.

A conditional write whose answer was lost and that was retried is ambiguous: the retry may see
412 *because the first attempt landed*. Each ref write therefore carries a random writer token
in its metadata; on a 412 after a retry the ref is read back and the write counts as done if the
token is ours. (Same idea for deletes: a retried conditional delete that finds the ref gone is
done.)

Retries happen in one place, :mod:`.retry`, around each whole operation (``max_attempts``
attempts, exponential backoff with full jitter from 0.1 s up to 10 s: a server that is gone
for a few seconds is waited for, a dead endpoint fails after ~6 s). That covers reading the
response body too (a connection dropped mid-body is not retried by botocore), and it has no
retry quota: botocore's ``standard`` mode stops retrying every request of a client once its
token bucket is spent, which parallel uploads during a short outage empty at once. botocore's
own retries are therefore off. Only connection errors, 5xx answers and throttling are retried;
every other 4xx fails at once.

Every botocore/boto3 failure is translated into a one-line ``StoreError`` (or ``NotFound``,
``RefChanged``, ``StoreFull``) that names the bucket and endpoint and never the credentials.

The boto3 client is created lazily on first use (resolving credentials can mean network I/O to
an instance-metadata service), once, under a lock; boto3 clients are thread-safe after that.

Uploads run in the background (:mod:`.uploads`): ``put`` queues the blob for a pool of
``upload_workers`` threads (bounded by ``max_pending_bytes``) and returns; ``get``/``exists`` of a
queued key answer from memory; ``flush`` waits for every upload and raises if one failed, so
the caller's ref never moves over a blob that did not land. Blobs over ``MULTIPART_THRESHOLD``
go up as multipart uploads.

``requests`` (a :class:`RequestCounter`) counts every HTTP request sent, retries included, by
operation; ``close`` logs the total at INFO level (``pfsfs -v``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import boto3
import boto3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, IncompleteReadError

try:
    # ISA-L's CRC32: the same function as zlib's (same polynomial, same values), 0.04 s of CPU
    # per GiB here against zlib 1.2's 0.24 s, a tenth of a put's CPU on a 2-core machine
    # that the S3 server shares. zlib's stays the fallback where no isal wheel installs.
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency
    from zlib import crc32

from ..errors import InvalidInput, NotFound, PfsError, RefChanged, StoreError
from .base import BlobInfo, ObjectStore, StoreProperties, check_blob_key, check_key
from .retry import RetryPolicy, call_with_retry
from .s3errors import (
    CAS_CODES,
    MISSING_KEY_CODES,
    SDK_ERRORS,
    code_of,
    is_transient,
    parse_store_url,
    redact_url,
    sdk_retried,
    status_of,
    translate,
)
from .uploads import UploadQueue

__all__ = [
    "MULTIPART_THRESHOLD",
    "RequestCounter",
    "S3ObjectStore",
    "from_config",
    "is_transient",
    "parse_store_url",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Blobs larger than this go up as a multipart upload, in parts of this size. pfsfs's own blobs
#: (chunks ≤ 4 MiB, packs ≈ 16 MiB) stay below it: one PUT of a 16 MiB pack measured 1.7x faster
#: than two 8 MiB parts (which cost four requests) against moto, and AWS takes 5 GiB in one PUT.
MULTIPART_THRESHOLD = 32 * 1024 * 1024

_WRITER_META = "pfsfs-writer"

#: How the server is shown that an uploaded body arrived intact (``store.upload_checksum``):
#: ``crc32`` — an ``x-amz-checksum-crc32`` header computed here (with ISA-L: 0.04 s of CPU per
#: GiB on this machine, zlib 0.24 s, MD5 1.4 s), checked by AWS and servers with
#: flexible-checksum support, accepted unchecked by older ones (and by moto); ``md5`` — a
#: ``Content-MD5`` header, checked by S3 servers old and new; ``sdk`` — whatever botocore
#: adds by itself (on AWS: CRC32). Either way every read re-hashes the content with BLAKE3,
#: so a corrupted blob is never returned, whatever the server checked.
UPLOAD_CHECKSUMS = ("crc32", "md5", "sdk")

#: ``config.json`` store keys that tune the client, with their types (see ``from_config``).
TUNING_KEYS: dict[str, type] = {
    "max_attempts": int,
    "connect_timeout": float,
    "read_timeout": float,
    "upload_workers": int,
    "max_pool_connections": int,
}


def from_config(store: dict[str, Any]) -> S3ObjectStore:
    """An ``S3ObjectStore`` for a home's ``config.json`` ``store`` section (no network I/O).

    Besides ``bucket``, ``prefix``, ``endpoint_url`` and ``region``, the optional keys in
    ``TUNING_KEYS`` are passed on; a value of the wrong type is an ``InvalidInput``.
    """
    if not isinstance(store.get("bucket"), str) or not store["bucket"]:
        raise InvalidInput("the S3 store in config.json names no bucket")
    tuning: dict[str, Any] = {}
    if "upload_checksum" in store:
        tuning["upload_checksum"] = store["upload_checksum"]  # checked by the constructor
    for name, kind in TUNING_KEYS.items():
        if name in store:
            value = store[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidInput(f"config.json: store.{name} must be a non-negative number")
            tuning[name] = kind(value)
    return S3ObjectStore(
        bucket=store["bucket"],
        prefix=store.get("prefix", "") or "",
        endpoint_url=store.get("endpoint_url"),
        region=store.get("region"),
        **tuning,
    )


class RequestCounter:
    """HTTP requests sent to S3, by operation (each attempt counts: retries are requests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_op: Counter[str] = Counter()

    def __call__(self, event_name: str = "", **_kwargs: Any) -> None:
        """A botocore ``before-send`` handler; returns ``None`` so the request goes ahead."""
        op = event_name.rsplit(".", 1)[-1] or "?"
        with self._lock:
            self._by_op[op] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._by_op.values())

    def by_operation(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_op)

    def reset(self) -> None:
        with self._lock:
            self._by_op.clear()


class S3ObjectStore(ObjectStore):
    """Blobs and refs in an S3 bucket (AWS, Ceph radosgw, moto, ...)."""

    #: Other machines write to and collect the same bucket; a request costs ~ms, so big files
    #: go up in ~16 MiB packs.
    properties = StoreProperties(remote=True, shared=True, pack_large_chunks=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile: str | None = None,
        max_attempts: int = 8,
        retry_policy: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 32,
        upload_checksum: str | None = None,
        upload_workers: int = 8,
        max_pending_bytes: int = 128 << 20,
    ) -> None:
        """No network I/O happens here; call :meth:`check` to validate early.

        Credentials come from the arguments if given, else from boto3's usual chain
        (environment, ``~/.aws``, instance metadata). ``upload_checksum`` is one of
        ``UPLOAD_CHECKSUMS``: by default ``sdk`` for AWS and ``crc32`` for a custom
        ``endpoint_url``.
        ``upload_workers=0`` makes every ``put`` synchronous.
        """
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self._configured_endpoint = endpoint_url
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._region = region or ("us-east-1" if endpoint_url else None)
        self._secrets = tuple(
            s for s in (aws_access_key_id, aws_secret_access_key, aws_session_token) if s
        )
        try:
            self._session = boto3.session.Session(
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token,
                profile_name=profile,
            )
        except SDK_ERRORS as exc:
            raise StoreError(f"cannot set up S3 access for {self.location}: {exc}") from None
        if upload_checksum is None:
            upload_checksum = "crc32" if endpoint_url else "sdk"
        if upload_checksum not in UPLOAD_CHECKSUMS:
            known = ", ".join(UPLOAD_CHECKSUMS)
            raise InvalidInput(
                f"unknown upload checksum {upload_checksum!r}: config.json's "
                f"store.upload_checksum must be one of {known}"
            )
        self.upload_checksum = upload_checksum
        # botocore's own checksums only where they are known to work: AWS (a custom server
        # may reject the aws-chunked trailers botocore sends over HTTPS).
        checksum_mode = "when_required" if endpoint_url else "when_supported"
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": "path"} if endpoint_url else None,
            request_checksum_calculation=checksum_mode,
            response_checksum_validation=checksum_mode,
            user_agent_extra="pfsfs",
        )
        # Blob bodies over plain HTTP go unsigned, as botocore sends them over HTTPS anyway:
        # a blob's name is the BLAKE3 hash of its content, which every read checks, and its
        # CRC32 header (signed with the other headers) lets the server check the body, so the
        # SHA-256 of each body that SigV4 would add costs CPU (0.7 s per GiB here: a quarter
        # of an S3 put's) and protects nothing the reader does not check. Refs, whose values
        # are not self-verifying, stay signed (``_client``).
        self._blob_config: Config | None = None
        if (endpoint_url or "").lower().startswith("http://"):
            self._blob_config = self._config.merge(
                Config(s3={"addressing_style": "path", "payload_signing_enabled": False})
            )
        self._policy = retry_policy or RetryPolicy(max(1, max_attempts), 0.1, 10.0)
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=4,
        )
        self._client_obj: Any = None
        self._blob_client_obj: Any = None
        self._client_lock = threading.Lock()
        self._upload_workers = upload_workers
        self._max_pending_bytes = max_pending_bytes
        self._uploads: UploadQueue | None = None
        #: ref name → (value, ETag) as this store last read or wrote it: lets a CAS that
        #: follows a read skip re-reading the ref (a stale entry costs one retry, never safety).
        self._etags: dict[str, tuple[bytes, str]] = {}
        self.requests = RequestCounter()

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.location!r}, endpoint={self.endpoint!r})"

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The endpoint URL requests go to (as configured or as boto3 resolved it)."""
        if self._client_obj is not None:
            return redact_url(str(self._client_obj.meta.endpoint_url))
        if self._configured_endpoint:
            return redact_url(self._configured_endpoint)
        return "the default AWS S3 endpoint"

    def _client(self) -> Any:
        client = self._client_obj
        if client is not None:
            return client
        with self._client_lock:
            if self._client_obj is None:
                self._client_obj = self._new_client(self._config)
            return self._client_obj

    def _blob_client(self) -> Any:
        """The client blob PUTs go through: ``_client`` unless blob bodies go unsigned (plain
        HTTP: see ``_blob_config``), then a second client (a pool of its own) configured so."""
        if self._blob_config is None:
            return self._client()
        client = self._blob_client_obj
        if client is not None:
            return client
        with self._client_lock:
            if self._blob_client_obj is None:
                self._blob_client_obj = self._new_client(self._blob_config)
            return self._blob_client_obj

    def _new_client(self, config: Config) -> Any:
        """A boto3 client with the request counter; called under ``_client_lock``."""
        try:
            client = self._session.client(
                "s3",
                endpoint_url=self._configured_endpoint,
                region_name=self._region,
                config=config,
            )
        except (*SDK_ERRORS, ValueError) as exc:
            raise StoreError(
                self._scrub(f"cannot set up an S3 client for {self.location}: {exc}")
            ) from None
        client.meta.events.register("before-send.s3", self.requests)
        # botocore's DEBUG log prints each request's headers, the access key id among them:
        # even with `pfsfs -vv`, nothing below INFO from botocore is logged.
        boto_log = logging.getLogger("botocore")
        boto_log.setLevel(max(boto_log.getEffectiveLevel(), logging.INFO))
        self._remember_secrets()
        return client

    def _remember_secrets(self) -> None:
        """Note the resolved credentials so that no message can ever quote them."""
        try:
            creds = self._session.get_credentials()  # cached by now: no I/O
        except SDK_ERRORS:
            return
        if creds is None:
            return
        frozen = creds.get_frozen_credentials()
        found = (frozen.access_key, frozen.secret_key, frozen.token)
        self._secrets = tuple({*self._secrets, *(s for s in found if s)})

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return " ".join(text.split())  # one line

    def _key(self, key: str) -> str:
        return self._base + check_blob_key(key)

    def _ref_key(self, name: str) -> str:
        check_key(name)
        return f"{self._base}refs/{name}"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, is_transient, self._policy, describe=f"S3 {what}")

    def _error(self, exc: BaseException, what: str) -> PfsError:
        """The one-line error a user should see for an SDK failure while doing ``what``."""
        return translate(
            exc,
            what,
            bucket=self.bucket,
            location=self.location,
            endpoint=self.endpoint,
            scrub=self._scrub,
        )

    def _fail(self, exc: BaseException, what: str) -> NoReturn:
        err = self._error(exc, what)
        log.debug("%s", err.message)
        raise err from None

    # -- setup -------------------------------------------------------------------------------
    def check(self) -> None:
        """One ``HeadBucket`` call: fail early, clearly, if the bucket, endpoint or credentials
        are wrong."""
        client = self._client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except SDK_ERRORS as exc:
            self._fail(exc, "checking the bucket")

    def create_bucket(self) -> bool:
        """Create the bucket if it does not exist (``pfsfs init --create-bucket``); True if it
        was created. Outside us-east-1 the bucket is made in the client's region (AWS wants
        it named; other servers ignore it). A bucket that exists is left as it is."""
        client = self._client()
        try:
            client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if status_of(exc) != 404 and code_of(exc) not in ("404", "NoSuchBucket"):
                self._fail(exc, "checking the bucket")
        except SDK_ERRORS as exc:
            self._fail(exc, "checking the bucket")
        region = client.meta.region_name
        where = {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            client.create_bucket(Bucket=self.bucket, **(where if region != "us-east-1" else {}))
        except ClientError as exc:
            code = code_of(exc)
            if code == "BucketAlreadyOwnedByYou":  # made meanwhile, by us
                return False
            if code == "BucketAlreadyExists":
                raise StoreError(
                    f"cannot create bucket '{self.bucket}' at {self.endpoint}: the name is "
                    "taken (bucket names are global; choose another)"
                ) from None
            self._fail(exc, f"creating bucket '{self.bucket}'")
        except SDK_ERRORS as exc:
            self._fail(exc, f"creating bucket '{self.bucket}'")
        return True

    # -- blobs -------------------------------------------------------------------------------
    def _queue(self) -> UploadQueue | None:
        if self._upload_workers <= 0:
            return None
        if self._uploads is None:
            with self._client_lock:
                if self._uploads is None:
                    self._uploads = UploadQueue(
                        self._put_now,
                        workers=self._upload_workers,
                        max_pending_bytes=self._max_pending_bytes,
                    )
        return self._uploads

    def _pending(self, key: str) -> bytes | None:
        uploads = self._uploads
        return uploads.pending(key) if uploads is not None else None

    def put(self, key: str, data: bytes | memoryview) -> None:
        # A private copy (none for bytes): the caller's buffer (an mmap, a reused bytearray)
        # may change while the upload waits.
        self._submit(key, bytes(data))

    def put_owned(self, key: str, data: bytearray) -> None:
        self._submit(key, data)  # the caller gave it up: no copy

    def _submit(self, key: str, data: bytes | bytearray) -> None:
        self._key(key)  # reject bad keys now, not in a background thread
        uploads = self._queue()
        if uploads is None:
            self._put_now(key, data)
        else:
            uploads.submit(key, data)

    def flush(self) -> None:
        """Wait for every background upload; raise the first failure that retrying at this
        barrier could not fix."""
        if self._uploads is not None:
            self._uploads.flush()

    def _put_now(self, key: str, data: bytes | memoryview) -> None:
        s3key = self._key(key)
        client = self._blob_client()
        size = memoryview(data).nbytes
        what = f"writing {key}"
        try:
            if size > MULTIPART_THRESHOLD:
                self._call(
                    lambda: client.upload_fileobj(
                        io.BytesIO(data), self.bucket, s3key, Config=self._transfer
                    ),
                    what,
                )
            else:
                body = data if isinstance(data, bytes | bytearray) else bytes(data)
                extra = self._body_checksum(body)
                self._call(
                    lambda: client.put_object(Bucket=self.bucket, Key=s3key, Body=body, **extra),
                    what,
                )
        except SDK_ERRORS as exc:
            self._fail(exc, what)

    def _body_checksum(self, body: bytes | bytearray) -> dict[str, str]:
        """The integrity header the server checks the body against (see ``UPLOAD_CHECKSUMS``);
        none when botocore adds its own (``sdk``, AWS)."""
        if self.upload_checksum == "crc32":
            crc = crc32(body).to_bytes(4, "big")
            return {"ChecksumCRC32": base64.b64encode(crc).decode()}
        if self.upload_checksum == "md5":
            digest = hashlib.md5(body, usedforsecurity=False).digest()
            return {"ContentMD5": base64.b64encode(digest).decode()}
        return {}

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._get(key, offset, length, exact=True)

    def get_upto(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``: fewer at the end of the blob, none past it.
        Raises ``NotFound`` only if the blob is missing. (One request, like S3 itself.)"""
        return self._get(key, offset, length, exact=False)

    def _get(self, key: str, offset: int, length: int | None, *, exact: bool) -> bytes:
        s3key = self._key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        pending = self._pending(key)
        if pending is not None:
            view = memoryview(pending)
            data = bytes(view[offset:] if length is None else view[offset : offset + length])
            if exact and length is not None and len(data) != length:
                raise NotFound(f"object {key} in {self.location} is shorter than expected")
            return data
        if length == 0:
            if not self.exists(key):
                raise NotFound(f"object {key} is missing from {self.location}")
            return b""
        # Up to ``length`` bytes from the start, ``length`` at least the largest blob a single
        # PUT makes (a read cache's span over a whole data pack): a plain GET gives the same
        # bytes as a range, and the server need not cut a range out of the object (moto
        # copies the whole object once more to do that). Smaller reads keep their Range: a
        # plain GET read only in part would waste what the server sent ahead and the
        # connection with it.
        from_start = (
            not exact and offset == 0 and length is not None and length >= MULTIPART_THRESHOLD
        )
        extra: dict[str, str] = {}
        if length is not None and not from_start:
            extra["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            extra["Range"] = f"bytes={offset}-"
        client = self._client()

        def fetch() -> bytes:
            resp = client.get_object(Bucket=self.bucket, Key=s3key, **extra)
            body = resp["Body"]
            try:
                if not from_start:
                    return bytes(body.read())  # botocore checks Content-Length at the end
                # closing before the end (a blob longer than ``length``) drops the connection
                data = bytes(body.read(length))
                expected = min(length, int(resp["ContentLength"]))
                if len(data) != expected:  # a cut connection: read(amt) does not check
                    raise IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
                return data
            finally:
                body.close()

        try:
            data = self._call(fetch, f"reading {key}")
        except ClientError as exc:
            if code_of(exc) in MISSING_KEY_CODES:
                raise NotFound(f"object {key} is missing from {self.location}") from None
            if status_of(exc) == 416 or code_of(exc) == "InvalidRange":
                if length is None or not exact:
                    return b""  # offset at or past the end, like reading a file there
                raise NotFound(
                    f"object {key} in {self.location} is shorter than expected"
                ) from None
            self._fail(exc, f"reading {key}")
        except SDK_ERRORS as exc:
            self._fail(exc, f"reading {key}")
        if exact and length is not None and len(data) != length:
            raise NotFound(f"object {key} in {self.location} is shorter than expected")
        return data

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> BlobInfo | None:
        queued = self._pending(key)
        if queued is not None:
            return BlobInfo(key, len(queued), time.time())
        client = self._client()
        s3key = self._key(key)
        try:
            resp = self._call(
                lambda: client.head_object(Bucket=self.bucket, Key=s3key), f"checking {key}"
            )
        except ClientError as exc:
            if code_of(exc) in MISSING_KEY_CODES:
                return None
            self._fail(exc, f"checking {key}")
        except SDK_ERRORS as exc:
            self._fail(exc, f"checking {key}")
        return BlobInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())

    def touch(self, key: str) -> None:
        """Copy the object onto itself: S3 gives it a new LastModified, which restarts the gc
        grace period of every machine sharing the bucket (no data travels)."""
        if self._pending(key) is not None:
            return
        client = self._client()
        s3key = self._key(key)
        try:
            self._call(
                lambda: client.copy_object(
                    Bucket=self.bucket,
                    Key=s3key,
                    CopySource={"Bucket": self.bucket, "Key": s3key},
                    MetadataDirective="REPLACE",
                ),
                f"refreshing {key}",
            )
        except ClientError as exc:
            if code_of(exc) in MISSING_KEY_CODES:
                raise NotFound(f"object {key} is missing from {self.location}") from None
            self._fail(exc, f"refreshing {key}")
        except SDK_ERRORS as exc:
            self._fail(exc, f"refreshing {key}")

    def _list_objects(self, s3prefix: str, what: str) -> Iterator[dict[str, Any]]:
        """Every object under ``s3prefix``; pages are fetched (and retried) one by one."""
        client = self._client()
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": s3prefix}
            if token:
                args["ContinuationToken"] = token
            try:
                page = self._call(functools.partial(client.list_objects_v2, **args), what)
            except SDK_ERRORS as exc:
                self._fail(exc, what)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        if self._uploads is not None:
            self._uploads.drain()  # a listing shows every put that returned
        for obj in self._list_objects(self._base + prefix, f"listing {prefix or 'blobs'}"):
            key = obj["Key"][len(self._base) :]
            if key == "refs" or key.startswith("refs/"):
                continue
            try:
                check_key(key)
            except ValueError:
                log.debug("ignoring foreign object %r in %s", obj["Key"], self.location)
                continue
            yield BlobInfo(key, int(obj["Size"]), obj["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        s3key = self._key(key)
        if self._uploads is not None:
            self._uploads.discard(key)
        client = self._client()
        try:
            self._call(
                lambda: client.delete_object(Bucket=self.bucket, Key=s3key), f"deleting {key}"
            )
        except SDK_ERRORS as exc:
            self._fail(exc, f"deleting {key}")

    # -- refs --------------------------------------------------------------------------------
    def _read_ref(self, name: str) -> tuple[bytes | None, str | None, str | None]:
        """``(value, etag without quotes, writer token)``; ``(None, None, None)`` if absent."""
        s3key = self._ref_key(name)
        client = self._client()

        def fetch() -> tuple[bytes, str, str | None]:
            resp = client.get_object(Bucket=self.bucket, Key=s3key)
            body = resp["Body"]
            try:
                value = bytes(body.read())
            finally:
                body.close()
            etag = str(resp.get("ETag", "")).strip('"')
            return value, etag, resp.get("Metadata", {}).get(_WRITER_META)

        try:
            value, etag, writer = self._call(fetch, f"reading ref {name}")
        except ClientError as exc:
            if code_of(exc) in MISSING_KEY_CODES:
                self._etags.pop(name, None)
                return None, None, None
            self._fail(exc, f"reading ref {name}")
        except SDK_ERRORS as exc:
            self._fail(exc, f"reading ref {name}")
        self._etags[name] = (value, etag)
        return value, etag, writer

    def get_ref(self, name: str) -> bytes | None:
        return self._read_ref(name)[0]

    def set_ref(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        """Value-based CAS in as few round trips as safe: a create is one conditional PUT
        (``If-None-Match: *``); a move reuses the ETag of this store's last read of the ref
        when that read saw ``expected`` (the usual read-modify-write), and only on a 412
        reads the ref again to tell a real conflict from a stale ETag."""
        if expected is None:
            if new is None:  # "delete if absent": nothing to write, only to check
                if self._read_ref(name)[0] is not None:
                    raise RefChanged(f"ref {name} changed concurrently")
                return
            self._write_ref(name, new, None)
            return
        cached = self._etags.get(name)
        if cached is not None and cached[0] == expected:
            try:
                self._write_ref(name, new, cached[1])
                return
            except RefChanged:
                log.debug("ref %s: cached ETag was stale; reading it again", name)
        current, etag, _ = self._read_ref(name)
        if current != expected:
            raise RefChanged(f"ref {name} changed concurrently")
        self._write_ref(name, new, etag)

    def _write_ref(self, name: str, new: bytes | None, etag: str | None) -> None:
        """One conditional write: create (``etag`` None), move or delete (``If-Match``)."""
        s3key = self._ref_key(name)
        client = self._client()
        what = f"updating ref {name}"
        token = uuid.uuid4().hex
        attempts = 0
        self._etags.pop(name, None)  # unknown until this write's answer says otherwise

        def write() -> Any:
            nonlocal attempts
            attempts += 1
            if new is None:
                # Conditional delete (If-Match on DeleteObject): atomic on AWS and moto. Ceph
                # radosgw 16.2 ignores If-Match on DELETE (measured), which makes this an
                # unconditional delete there: a writer that moves the ref between our read
                # above and this delete loses its update (a window of one round trip).
                # Deleting refs is rare (branch deletion); creation and moves stay atomic.
                return client.delete_object(Bucket=self.bucket, Key=s3key, IfMatch=etag)
            cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
            return client.put_object(
                Bucket=self.bucket,
                Key=s3key,
                Body=new,
                Metadata={_WRITER_META: token},
                **cond,
            )

        try:
            resp = self._call(write, what)
        except ClientError as exc:
            code, status = code_of(exc), status_of(exc)
            lost = code in CAS_CODES or status in (409, 412)
            # AWS answers 404 to If-Match on a key that is gone; moto does too.
            lost = lost or (etag is not None and code in MISSING_KEY_CODES)
            if not lost:
                self._fail(exc, what)
            if (attempts > 1 or sdk_retried(exc)) and self._landed(name, new, token):
                log.debug("ref %s: a retried write had landed before its answer was lost", name)
                return
            raise RefChanged(f"ref {name} changed concurrently") from None
        except SDK_ERRORS as exc:
            self._fail(exc, what)
        new_etag = str(resp.get("ETag", "")).strip('"') if new is not None else ""
        if new_etag:
            self._etags[name] = (new, new_etag)

    def _landed(self, name: str, new: bytes | None, token: str) -> bool:
        """After an ambiguous CAS failure: did our own earlier attempt succeed?"""
        value, _, writer = self._read_ref(name)
        if new is None:
            return value is None
        return writer == token and value == new

    def list_refs(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        refs_base = f"{self._base}refs/"
        for obj in self._list_objects(refs_base + prefix, f"listing refs {prefix}".rstrip()):
            name = obj["Key"][len(refs_base) :]
            try:
                check_key(name)
            except ValueError:
                continue
            value = self.get_ref(name)
            if value is not None:  # deleted since the listing
                yield name, value

    def close(self) -> None:
        uploads, self._uploads = self._uploads, None
        if uploads is not None:
            uploads.close()
        if self.requests.total:
            log.info(
                "%s: %d S3 requests %s",
                self.location,
                self.requests.total,
                self.requests.by_operation(),
            )
        with self._client_lock:
            clients = (self._client_obj, self._blob_client_obj)
            self._client_obj = self._blob_client_obj = None
        for client in clients:
            if client is None:
                continue
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not fail
                log.debug("closing the S3 client failed", exc_info=True)
