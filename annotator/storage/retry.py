"""Retry a storage operation on transient errors, with exponential backoff."""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["is_transient_storage_error", "retry"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                     errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                     errno.EFBIG}
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    FileExistsError)
_TRANSIENT_RE = re.compile(
    r"(?i)\b(5\d\d|429)\b|throttl|slow ?down|time[d ]?out|temporar|unavailable|too many requests|"
    r"connection ?(reset|aborted|refused|closed|error)|disconnect|broken pipe|internal ?error|"
    r"request ?limit|try again|reset by peer|incomplete ?read|endpoint ?connection"
)
_PERMANENT_RE = re.compile(r"(?i)\b(40[0134])\b|not ?found|no ?such ?(key|bucket|file)|access ?denied|forbidden|"
                           r"no space left|quota|read-only file ?system|file too large")


def is_transient_storage_error(exc: BaseException) -> bool:
    """True for storage errors worth retrying: timeouts, dropped connections, HTTP 5xx /
    429 / throttling (recognised by class name or message, so botocore and aiohttp
    errors count too) and OSErrors other than missing-path / permission / not-a-file."""
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    if re.search(r"(?i)no space left|quota exceeded|read-only file ?system", text):  # full disk: waiting won't help
        return False
    if _TRANSIENT_RE.search(text):
        return True
    if _PERMANENT_RE.search(text):
        return False
    return isinstance(exc, OSError)


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
