"""Retry with exponential backoff and full jitter, for calls that fail transiently.

Generic: the caller says what is worth retrying with a predicate over the exception, so the S3
store can retry connection errors, 5xx answers and throttling while letting every other error
(a 4xx, a failed compare-and-swap, a missing key) through at once.

    @retry(is_retryable=lambda exc: isinstance(exc, ConnectionError), attempts=4)
    def fetch() -> bytes: ...

``RetryPolicy`` is a frozen value so a store can hold one and build decorators from it.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``attempts`` counts every call, the first included (1 means "never retry"). The n-th retry
    sleeps a uniformly random time in ``[0, min(max_delay, base_delay * 2**n))`` ("full jitter"),
    which spreads out clients that failed together.
    """

    attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 5.0

    def delay(self, retry_number: int) -> float:
        """The sleep before retry number ``retry_number`` (0-based)."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * (2**retry_number)))


def call_with_retry(
    fn: Callable[[], T],
    is_retryable: Callable[[BaseException], bool],
    policy: RetryPolicy = RetryPolicy(),
    *,
    describe: str = "operation",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, raises something not retryable, or attempts run out.

    The last exception is re-raised unchanged, so callers translate errors exactly as they
    would without retries.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            attempt += 1
            if attempt >= policy.attempts or not is_retryable(exc):
                raise
            pause = policy.delay(attempt - 1)
            log.debug(
                "%s failed (%s), retry %d/%d in %.2fs",
                describe,
                type(exc).__name__,
                attempt,
                policy.attempts - 1,
                pause,
            )
            sleep(pause)


def retry(
    is_retryable: Callable[[BaseException], bool],
    policy: RetryPolicy = RetryPolicy(),
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of :func:`call_with_retry`."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return call_with_retry(
                lambda: fn(*args, **kwargs),
                is_retryable,
                policy,
                describe=getattr(fn, "__qualname__", "operation"),
                sleep=sleep,
            )

        return wrapper

    return decorate
