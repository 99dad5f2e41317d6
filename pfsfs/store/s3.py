"""The S3 object store (boto3): blobs and compare-and-swap refs in one bucket under a prefix.

Layout: blob ``<key>`` is the object ``<prefix>/<key>``; ref ``<name>`` is the object
``<prefix>/refs/<name>`` whose body is the ref's value. Blob keys under ``refs/`` are therefore
reserved and rejected.

Refs move by value-based compare-and-swap, made atomic by S3 conditional writes: read the ref
(value + ETag in one GET), compare the value with ``expected``, then write with
``If-None-Match: *`` (create) or ``If-Match: <etag>`` (move; the ETag is sent without quotes,
which Ceph radosgw requires and AWS and moto accept). A 412, a 409 ``ConditionalRequestConflict``
or a 404 on an ``If-Match`` write means another writer got there first: ``RefChanged``.

A conditional write whose answer was lost and that was retried is ambiguous: the retry may see
412 *because the first attempt landed*. Each ref write therefore carries a random writer token
in its metadata; on a 412 after a retry the ref is read back and the write counts as done if the
token is ours. (Same idea for deletes: a retried conditional delete that finds the ref gone is
done.)

Retries happen at two levels: botocore's own (``standard`` mode, ``max_attempts`` per request)
and :mod:`.retry` around each whole operation, which also covers reading the response body (a
connection dropped mid-body is not retried by botocore). Only connection errors, 5xx answers and
throttling are retried; every other 4xx fails at once.

Every botocore/boto3 failure is translated into a one-line ``StoreError`` (or ``NotFound``,
``RefChanged``, ``StoreFull``) that names the bucket and endpoint and never the credentials.

The boto3 client is created lazily on first use (resolving credentials can mean network I/O to
an instance-metadata service), once, under a lock; boto3 clients are thread-safe after that.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import boto3.exceptions
import s3transfer.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)

from ..errors import InvalidInput, NotFound, PfsError, RefChanged, StoreError, StoreFull
from .base import BlobInfo, ObjectStore, check_key
from .retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Blobs larger than this go up as a multipart upload, in parts of this size.
MULTIPART_THRESHOLD = 8 * 1024 * 1024

_WRITER_META = "pfsfs-writer"

_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
        "RequestThrottled",
        "PriorRequestNotComplete",
    }
)
_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable"}
)
_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidSecurity",
        "AccountProblem",
        "AllAccessDisabled",
        "AccessDenied",
        "403",
    }
)
_FULL_CODES = frozenset({"QuotaExceeded", "InsufficientStorage", "XAmzContentSHA256Mismatch"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CAS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")

#: Exceptions from the AWS SDK that this module turns into ``PfsError``.
_SDK_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    boto3.exceptions.Boto3Error,
    s3transfer.exceptions.RetriesExceededError,
    s3transfer.exceptions.S3UploadFailedError,
)


def parse_store_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``.

    The prefix may be empty; a trailing slash is ignored. Raises ``InvalidInput`` for anything
    that is not a plain ``s3://`` URL with a valid bucket name and prefix.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "s3":
        raise InvalidInput(f"store URL {url!r} must start with s3://")
    if parts.query or parts.fragment:
        raise InvalidInput(f"store URL {url!r} must not have a query or fragment")
    netloc = parts.netloc
    if "@" in netloc or ":" in netloc:
        raise InvalidInput(
            f"store URL {url!r} must name only a bucket after s3:// "
            "(give the endpoint and credentials separately)"
        )
    if not netloc:
        raise InvalidInput(f"store URL {url!r} names no bucket")
    if not _BUCKET_RE.match(netloc) or ".." in netloc:
        raise InvalidInput(
            f"invalid bucket name {netloc!r} in {url!r}: use 3-63 lower-case letters, digits, "
            "dots and hyphens"
        )
    prefix = parts.path.strip("/")
    if prefix:
        for component in prefix.split("/"):
            if component in ("", ".", "..") or not _COMPONENT_RE.match(component):
                raise InvalidInput(
                    f"invalid prefix {prefix!r} in {url!r}: use '/'-separated names made of "
                    "letters, digits, '.', '_' and '-'"
                )
    return netloc, prefix


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _sdk_retried(exc: ClientError) -> bool:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def is_transient(exc: BaseException) -> bool:
    """Whether an SDK error is worth retrying: connection trouble, 5xx, throttling."""
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not go away by asking again
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return True
    if isinstance(exc, ClientError):
        status = _status(exc)
        code = _code(exc)
        return status >= 500 or status == 429 or code in _THROTTLE_CODES or code in _TRANSIENT_CODES
    return False


def _redact_url(url: str) -> str:
    """Drop any ``user:password@`` from a URL before it is shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class S3ObjectStore(ObjectStore):
    """Blobs and refs in an S3 bucket (AWS, Ceph radosgw, moto, ...)."""

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
        retry_mode: str = "standard",
        retry_policy: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 32,
        verify_checksums: bool | None = None,
    ) -> None:
        """No network I/O happens here; call :meth:`check` to validate early.

        Credentials come from the arguments if given, else from boto3's usual chain
        (environment, ``~/.aws``, instance metadata). ``verify_checksums`` selects boto3's
        default CRC checksums; it defaults to on for AWS and off for a custom ``endpoint_url``
        (many S3-compatible servers reject them), where ``Content-MD5`` is sent instead.
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
        except _SDK_ERRORS as exc:
            raise StoreError(f"cannot set up S3 access for {self.location}: {exc}") from None
        if verify_checksums is None:
            verify_checksums = endpoint_url is None
        self._send_md5 = not verify_checksums
        checksum_mode = "when_supported" if verify_checksums else "when_required"
        self._config = Config(
            retries={"mode": retry_mode, "max_attempts": max_attempts},  # type: ignore[typeddict-item]
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": "path"} if endpoint_url else None,
            request_checksum_calculation=checksum_mode,
            response_checksum_validation=checksum_mode,
            user_agent_extra="pfsfs",
        )
        self._policy = retry_policy or RetryPolicy()
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=4,
        )
        self._client_obj: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.location!r}, endpoint={self.endpoint!r})"

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The endpoint URL requests go to (as configured or as boto3 resolved it)."""
        if self._client_obj is not None:
            return _redact_url(str(self._client_obj.meta.endpoint_url))
        if self._configured_endpoint:
            return _redact_url(self._configured_endpoint)
        return "the default AWS S3 endpoint"

    def _client(self) -> Any:
        client = self._client_obj
        if client is not None:
            return client
        with self._client_lock:
            if self._client_obj is None:
                try:
                    self._client_obj = self._session.client(
                        "s3",
                        endpoint_url=self._configured_endpoint,
                        region_name=self._region,
                        config=self._config,
                    )
                except (*_SDK_ERRORS, ValueError) as exc:
                    raise StoreError(
                        self._scrub(f"cannot set up an S3 client for {self.location}: {exc}")
                    ) from None
                self._remember_secrets()
            return self._client_obj

    def _remember_secrets(self) -> None:
        """Note the resolved credentials so that no message can ever quote them."""
        try:
            creds = self._session.get_credentials()  # cached by now: no I/O
        except _SDK_ERRORS:
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
        check_key(key)
        if key == "refs" or key.startswith("refs/"):
            raise ValueError(f"store key {key!r} is reserved for refs")
        return self._base + key

    def _ref_key(self, name: str) -> str:
        check_key(name)
        return f"{self._base}refs/{name}"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, is_transient, self._policy, describe=f"S3 {what}")

    def _error(self, exc: BaseException, what: str) -> PfsError:
        """The one-line error a user should see for an SDK failure while doing ``what``."""
        endpoint = self.endpoint
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket" or (what == "checking the bucket" and status == 404):
                return StoreError(f"bucket '{self.bucket}' does not exist at {endpoint}")
            if code in _AUTH_CODES or status in (401, 403):
                detail = code or str(status)
                return StoreError(
                    f"S3 credentials were rejected by {endpoint} ({detail}) while {what} "
                    f"in bucket '{self.bucket}'"
                )
            if code in _FULL_CODES or status == 507:
                return StoreFull(f"{self.location} at {endpoint} is full ({code}) while {what}")
            message = exc.response.get("Error", {}).get("Message", "") or ""
            return StoreError(
                self._scrub(
                    f"S3 error while {what} in {self.location} at {endpoint}: "
                    f"{code or status} {message}".rstrip()
                )
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(
                f"no usable S3 credentials for {self.location}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or another source boto3 reads"
            )
        if isinstance(exc, SSLError):
            return StoreError(f"TLS error talking to S3 endpoint {endpoint} while {what}")
        if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
            return StoreError(
                f"cannot reach S3 endpoint {endpoint} while {what} ({type(exc).__name__})"
            )
        return StoreError(
            self._scrub(f"S3 error while {what} in {self.location} at {endpoint}: {exc}")
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
        except _SDK_ERRORS as exc:
            self._fail(exc, "checking the bucket")

    # -- blobs -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | memoryview) -> None:
        s3key = self._key(key)
        client = self._client()
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
                body = bytes(data)
                extra: dict[str, str] = {}
                if self._send_md5:
                    digest = hashlib.md5(body, usedforsecurity=False).digest()
                    extra["ContentMD5"] = base64.b64encode(digest).decode()
                self._call(
                    lambda: client.put_object(Bucket=self.bucket, Key=s3key, Body=body, **extra),
                    what,
                )
        except _SDK_ERRORS as exc:
            self._fail(exc, what)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        s3key = self._key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            if not self.exists(key):
                raise NotFound(f"object {key} is missing from {self.location}")
            return b""
        extra: dict[str, str] = {}
        if length is not None:
            extra["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            extra["Range"] = f"bytes={offset}-"
        client = self._client()

        def fetch() -> bytes:
            resp = client.get_object(Bucket=self.bucket, Key=s3key, **extra)
            body = resp["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        try:
            data = self._call(fetch, f"reading {key}")
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                raise NotFound(f"object {key} is missing from {self.location}") from None
            if _status(exc) == 416 or _code(exc) == "InvalidRange":
                if length is None:
                    return b""  # offset at or past the end, like reading a file there
                raise NotFound(
                    f"object {key} in {self.location} is shorter than expected"
                ) from None
            self._fail(exc, f"reading {key}")
        except _SDK_ERRORS as exc:
            self._fail(exc, f"reading {key}")
        if length is not None and len(data) != length:
            raise NotFound(f"object {key} in {self.location} is shorter than expected")
        return data

    def exists(self, key: str) -> bool:
        s3key = self._key(key)
        client = self._client()
        try:
            self._call(lambda: client.head_object(Bucket=self.bucket, Key=s3key), f"checking {key}")
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return False
            self._fail(exc, f"checking {key}")
        except _SDK_ERRORS as exc:
            self._fail(exc, f"checking {key}")
        return True

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
            except _SDK_ERRORS as exc:
                self._fail(exc, what)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
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
        client = self._client()
        try:
            self._call(
                lambda: client.delete_object(Bucket=self.bucket, Key=s3key), f"deleting {key}"
            )
        except _SDK_ERRORS as exc:
            self._fail(exc, f"deleting {key}")

    # S3 acknowledges a PUT only once the object is durable, so ``flush`` has nothing to do.

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
            return self._call(fetch, f"reading ref {name}")
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return None, None, None
            self._fail(exc, f"reading ref {name}")
        except _SDK_ERRORS as exc:
            self._fail(exc, f"reading ref {name}")

    def get_ref(self, name: str) -> bytes | None:
        return self._read_ref(name)[0]

    def set_ref(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        s3key = self._ref_key(name)
        current, etag, _ = self._read_ref(name)
        if current != expected:
            raise RefChanged(f"ref {name} changed concurrently")
        if current is None and new is None:
            return  # deleting a ref that is not there, as expected
        client = self._client()
        what = f"updating ref {name}"
        token = uuid.uuid4().hex
        attempts = 0

        def write() -> object:
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
            self._call(write, what)
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            lost = code in _CAS_CODES or status in (409, 412)
            # AWS answers 404 to If-Match on a key that is gone; moto does too.
            lost = lost or (etag is not None and code in _MISSING_KEY_CODES)
            if not lost:
                self._fail(exc, what)
            if (attempts > 1 or _sdk_retried(exc)) and self._landed(name, new, token):
                log.debug("ref %s: a retried write had landed before its answer was lost", name)
                return
            raise RefChanged(f"ref {name} changed concurrently") from None
        except _SDK_ERRORS as exc:
            self._fail(exc, what)

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
        with self._client_lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not fail
                log.debug("closing the S3 client failed", exc_info=True)
