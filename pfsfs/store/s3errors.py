"""S3 errors: which SDK failures are worth retrying, and the one-line message each becomes.

Also the small URL helpers: parsing ``s3://bucket/prefix`` and redacting ``user:pass@`` from an
endpoint before it is shown. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import boto3.exceptions
import s3transfer.exceptions
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

from ..errors import InvalidInput, PfsError, StoreError, StoreFull

THROTTLE_CODES = frozenset(
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
TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable"}
)
AUTH_CODES = frozenset(
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
FULL_CODES = frozenset({"QuotaExceeded", "InsufficientStorage", "XAmzContentSHA256Mismatch"})
MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
CAS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")

#: Exceptions from the AWS SDK that this module turns into ``PfsError``.
SDK_ERRORS: tuple[type[BaseException], ...] = (
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


def code_of(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def status_of(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def sdk_retried(exc: ClientError) -> bool:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def is_transient(exc: BaseException) -> bool:
    """Whether an SDK error is worth retrying: connection trouble, 5xx, throttling."""
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not go away by asking again
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return True
    if isinstance(exc, ClientError):
        status = status_of(exc)
        code = code_of(exc)
        return status >= 500 or status == 429 or code in THROTTLE_CODES or code in TRANSIENT_CODES
    return False


def redact_url(url: str) -> str:
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


def translate(
    exc: BaseException,
    what: str,
    *,
    bucket: str,
    location: str,
    endpoint: str,
    scrub: Callable[[str], str],
) -> PfsError:
    """The one-line error a user should see for an SDK failure while doing ``what``;
    ``scrub`` removes known secrets from any text that quotes the server or the SDK."""
    if isinstance(exc, ClientError):
        code, status = code_of(exc), status_of(exc)
        if code == "NoSuchBucket" or (what == "checking the bucket" and status == 404):
            return StoreError(f"bucket '{bucket}' does not exist at {endpoint}")
        if code in AUTH_CODES or status in (401, 403):
            detail = code or str(status)
            return StoreError(
                f"S3 credentials were rejected by {endpoint} ({detail}) while {what} "
                f"in bucket '{bucket}'"
            )
        if code in FULL_CODES or status == 507:
            return StoreFull(f"{location} at {endpoint} is full ({code}) while {what}")
        message = exc.response.get("Error", {}).get("Message", "") or ""
        return StoreError(
            scrub(
                f"S3 error while {what} in {location} at {endpoint}: "
                f"{code or status} {message}".rstrip()
            )
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreError(
            f"no usable S3 credentials for {location}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or another source boto3 reads"
        )
    if isinstance(exc, SSLError):
        return StoreError(f"TLS error talking to S3 endpoint {endpoint} while {what}")
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return StoreError(
            f"cannot reach S3 endpoint {endpoint} while {what} ({type(exc).__name__})"
        )
    return StoreError(scrub(f"S3 error while {what} in {location} at {endpoint}: {exc}"))
