"""Retry a storage operation on transient errors, with exponential backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["is_transient_storage_error", "retry"]

T = TypeVar("T")
log = logging.getLogger(__name__)

# Errors that retrying cannot fix: the path or the permissions are wrong.
_PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def is_transient_storage_error(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, dropped connections, other I/O errors.

    fsspec backends (s3fs, gcsfs, adlfs) translate most service errors to OSError
    subclasses; missing paths and denied permissions are permanent and not retried.
    """
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def retry(
    fn: Callable[[], T],
    retries: int = 3,
    backoff_s: float = 0.5,
    is_transient: Callable[[BaseException], bool] = is_transient_storage_error,
    *,
    sleep: Callable[[float], None] | None = None,
    what: str = "storage operation",
) -> T:
    """Call `fn()`; on a transient error retry up to `retries` more times.

    The wait before retry k (1-based) is `backoff_s * 2 ** (k - 1)` seconds. The last
    error, or the first non-transient one, is re-raised unchanged. `sleep` defaults to
    `time.sleep` (looked up at call time, so tests can patch it).
    """
    if retries < 0:
        raise ValueError(f"retries: expected an integer >= 0, received {retries!r}")
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= retries or not is_transient(exc):
                raise
            attempt += 1
            wait_s = backoff_s * 2 ** (attempt - 1)
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.1f s",
                what,
                type(exc).__name__,
                exc,
                attempt,
                retries,
                wait_s,
            )
            (sleep or time.sleep)(wait_s)
