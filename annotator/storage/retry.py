"""Retry a storage operation on transient errors, with exponential backoff; tell
transient from permanent storage errors.

The classification (:func:`storage_error_kind`) looks at what the error *is*, never at
the words of its message (an ``AccessDenied`` on a key named ``timeout-notes.jpg`` is
permanent), along the error and its causes (s3fs raises an ``OSError`` from botocore's
``ClientError``):

1. an HTTP status or service error code, where the client gives one: botocore's
   ``ClientError`` (``response['Error']['Code']``, ``ResponseMetadata.HTTPStatusCode``),
   aiohttp's ``ClientResponseError.status``, an integer ``code`` (gcsfs' ``HttpError``)
   or ``response.status_code`` (requests). 5xx, 429, 408 and the throttling codes
   (:data:`TRANSIENT_CODES`) are transient; any other 4xx is permanent.
2. the type: ``TimeoutError`` and ``ConnectionError`` (and the HTTP clients' connection
   and timeout errors: botocore's ``HTTPClientError`` and ``ConnectionError`` families, aiohttp's
   ``ClientConnectionError``/``ServerTimeoutError``/``ClientPayloadError``) are transient;
   missing path, permission, not-a-file, exists, and missing credentials are permanent.
3. an ``OSError``'s errno: :data:`PERMANENT_ERRNOS` (missing, denied, full disk, quota,
   read-only, too large, invalid) are permanent, :data:`TRANSIENT_ERRNOS` (EIO, EBUSY,
   EAGAIN, timeouts, resets, unreachable network) transient; an ``OSError`` with no errno
   and no cause that says more is transient (a storage layer's generic failure).

Anything else (a ``ValueError``, a bug) is not a storage error worth retrying.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from annotator.errors import PERMANENT, TRANSIENT, StorageError
from annotator.storage import redact as _redact  # noqa: F401 - installs the redaction of StorageError's message

__all__ = [
    "PERMANENT",
    "PERMANENT_ERRNOS",
    "TRANSIENT",
    "TRANSIENT_CODES",
    "TRANSIENT_ERRNOS",
    "as_storage_error",
    "is_transient_storage_error",
    "retry",
    "storage_error_kind",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

PERMANENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOENT", "EACCES", "EPERM", "EISDIR", "ENOTDIR", "ELOOP", "ENAMETOOLONG", "EINVAL", "ENOSPC",
        "EDQUOT", "EROFS", "EFBIG", "EEXIST", "ENOTEMPTY", "EMSGSIZE", "ENOSYS", "EREMCHG", "EBADF", "EXDEV",
    ) if hasattr(errno, name)
)
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EIO", "EBUSY", "EAGAIN", "EWOULDBLOCK", "EINTR", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED",
        "ECONNABORTED", "EPIPE", "ENETUNREACH", "ENETDOWN", "ENETRESET", "EHOSTUNREACH", "EHOSTDOWN",
        "EREMOTEIO", "ESTALE", "ENOBUFS", "ENOLINK", "ECOMM", "EPROTO",
    ) if hasattr(errno, name)
)
#: Service error codes (S3 and compatible stores) that are transient whatever their
#: HTTP status (some throttling answers are 400 or 403).
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "BandwidthLimitExceeded", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "OperationAborted", "PriorRequestNotComplete", "ConditionalRequestConflict",
    "EC2ThrottledException", "TransactionInProgressException",
})
#: HTTP statuses below 500 that are transient.
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
#: (module, class name) of client errors that are transient / permanent by type; looked
#: up only in modules already imported (an error of a library is only raised once it is).
_TRANSIENT_CLIENT_TYPES = (
    ("botocore.exceptions", "HTTPClientError"),  # ConnectionClosed, ReadTimeout, EndpointConnection, ...
    ("botocore.exceptions", "ConnectionError"),  # EndpointConnectionError, ConnectTimeoutError, ...
    ("botocore.exceptions", "ConnectTimeoutError"),
    ("botocore.exceptions", "ResponseStreamingError"),
    ("aiohttp", "ClientConnectionError"),
    ("aiohttp", "ServerTimeoutError"),
    ("aiohttp", "ClientPayloadError"),
    ("http.client", "IncompleteRead"),
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
)
_PERMANENT_CLIENT_TYPES = (
    ("botocore.exceptions", "NoCredentialsError"),
    ("botocore.exceptions", "PartialCredentialsError"),
    ("botocore.exceptions", "ParamValidationError"),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error, then its causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_instance(exc: BaseException, names: tuple[tuple[str, str], ...]) -> bool:
    for module, name in names:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _http_kind(exc: BaseException) -> str | None:
    """From the HTTP status / service error code the client attached, if any."""
    code, status = None, None
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = (response.get("Error") or {}).get("Code")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    elif response is not None:  # requests.HTTPError
        status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(exc, "status", None)  # aiohttp ClientResponseError, urllib HTTPError
    if status is None:
        status = getattr(exc, "code", None)  # gcsfs HttpError, google.api_core errors
    if isinstance(code, str) and code in TRANSIENT_CODES:
        return TRANSIENT
    if isinstance(code, str) and code.isdigit() and status is None:
        status = int(code)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return None
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return TRANSIENT
    if status >= 400:
        return PERMANENT
    return None


def _type_kind(exc: BaseException) -> str | None:
    """From the error's type and errno."""
    if isinstance(exc, StorageError):
        return exc.kind
    if isinstance(exc, _PERMANENT_TYPES) or _is_instance(exc, _PERMANENT_CLIENT_TYPES):
        return PERMANENT
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in PERMANENT_ERRNOS:
            return PERMANENT
        if exc.errno in TRANSIENT_ERRNOS:
            return TRANSIENT
    if isinstance(exc, (TimeoutError, ConnectionError)) or _is_instance(exc, _TRANSIENT_CLIENT_TYPES):
        return TRANSIENT
    return None


def storage_error_kind(exc: BaseException) -> str:
    """:data:`TRANSIENT` or :data:`PERMANENT` (see the module docstring): first an HTTP
    status or error code anywhere along the error's causes, then the type and errno of
    the error and then of its causes; an ``OSError`` that none of these decide is
    transient, anything else permanent."""
    chain = list(_chain(exc))
    if isinstance(exc, StorageError):
        return exc.kind
    for e in chain:
        kind = _http_kind(e)
        if kind is not None:
            return kind
    for e in chain:
        kind = _type_kind(e)
        if kind is not None:
            return kind
    return TRANSIENT if isinstance(exc, OSError) else PERMANENT


def is_transient_storage_error(exc: BaseException) -> bool:
    """True for storage errors worth retrying (:func:`storage_error_kind` says transient)."""
    return storage_error_kind(exc) == TRANSIENT


def retry(
    fn: Callable[[], T],
    retries: int = 3,
    backoff_s: float = 0.5,
    is_transient: Callable[[BaseException], bool] = is_transient_storage_error,
    *,
    sleep: Callable[[float], None] | None = None,
    what: str = "storage operation",
    wrap: bool = False,
) -> T:
    """Call `fn()`; on a transient error retry up to `retries` more times.

    The wait before retry k (1-based) is `backoff_s * 2 ** (k - 1)` seconds. The last
    error, or the first non-transient one, is re-raised unchanged; with ``wrap=True`` it
    is raised as a :class:`~annotator.errors.StorageError` (kind transient when it
    outlasted the retries, else permanent) naming ``what``, with the error as its cause.
    Errors that are not the storage's (an ``AnnotatorError``, a bug) are never wrapped.
    `sleep` defaults to `time.sleep` (looked up at call time, so tests can patch it).
    """
    if retries < 0:
        raise ValueError(f"retries: expected an integer >= 0, received {retries!r}")
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            transient = is_transient(exc)
            if attempt >= retries or not transient:
                if wrap and not isinstance(exc, StorageError) and _is_storage_failure(exc):
                    raise StorageError(what, exc, TRANSIENT if transient else PERMANENT, attempt + 1) from exc
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


def _is_storage_failure(exc: BaseException) -> bool:
    """An error of the storage or its client (what :func:`retry` may wrap), as opposed to
    the project's own refusal or a bug in the caller."""
    from annotator.errors import AnnotatorError

    if isinstance(exc, AnnotatorError):
        return False
    return any(
        isinstance(e, OSError)
        or _http_kind(e) is not None
        or _is_instance(e, _TRANSIENT_CLIENT_TYPES + _PERMANENT_CLIENT_TYPES)
        or any(c.__module__.split(".")[0] in ("botocore", "aiohttp", "gcsfs", "google", "s3fs", "requests")
               for c in type(e).__mro__)
        for e in _chain(exc)
    )


def as_storage_error(exc: BaseException, what: str) -> BaseException:
    """What a command reports for ``exc`` (:func:`annotator.cli.report_error`): a
    storage or storage-client error that reached the command unclassified (an
    ``OSError``, botocore's ``EndpointConnectionError``, an HTTP client's error) becomes a
    :class:`~annotator.errors.StorageError` naming ``what`` (exit 2), its kind from
    :func:`storage_error_kind`; anything else (the project's own error, a bug) is
    returned as it is. Only the error itself is looked at, not what it was raised while
    handling: a ``KeyError`` raised in an ``except OSError`` block stays a bug."""
    from annotator.errors import AnnotatorError

    if isinstance(exc, AnnotatorError) or not isinstance(exc, Exception):
        return exc
    client = any(c.__module__.split(".")[0] in ("botocore", "aiohttp", "gcsfs", "s3fs", "requests")
                 for c in type(exc).__mro__)
    if not (isinstance(exc, OSError) or client or _http_kind(exc) is not None
            or _is_instance(exc, _TRANSIENT_CLIENT_TYPES + _PERMANENT_CLIENT_TYPES)):
        return exc
    error = StorageError(what, exc, storage_error_kind(exc))
    error.__cause__ = exc
    return error
