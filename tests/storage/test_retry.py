"""Transient vs permanent storage errors: by type, errno and HTTP status / error code
(real botocore, s3fs and aiohttp error objects), never by the words of the message."""

from __future__ import annotations

import errno

import pytest

from annotator.errors import StorageError
from annotator.storage.retry import PERMANENT, TRANSIENT, is_transient_storage_error, retry, storage_error_kind

botocore_exceptions = pytest.importorskip("botocore.exceptions")


def client_error(code: str, status: int, message: str = "", operation: str = "GetObject"):
    """A real botocore ClientError, as the S3 client raises it."""
    return botocore_exceptions.ClientError(
        {"Error": {"Code": code, "Message": message or code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


def s3fs_error(code: str, status: int, message: str = ""):
    """What s3fs raises: its translation of the ClientError, with the ClientError as cause."""
    from s3fs.errors import translate_boto_error

    cause = client_error(code, status, message)
    try:
        raise translate_boto_error(cause) from cause
    except Exception as exc:  # noqa: BLE001 - keep __cause__ as raising sets it
        return exc


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("SlowDown", 503, TRANSIENT),
        ("ServiceUnavailable", 503, TRANSIENT),
        ("InternalError", 500, TRANSIENT),
        ("RequestTimeout", 400, TRANSIENT),  # a code that is transient whatever its status
        ("Throttling", 400, TRANSIENT),
        ("TooManyRequestsException", 429, TRANSIENT),
        ("SomethingNew", 502, TRANSIENT),  # unknown code: the status decides
        ("AccessDenied", 403, PERMANENT),
        ("NoSuchKey", 404, PERMANENT),
        ("NoSuchBucket", 404, PERMANENT),
        ("InvalidAccessKeyId", 403, PERMANENT),
        ("PreconditionFailed", 412, PERMANENT),
        ("QuotaExceeded", 403, PERMANENT),
    ],
)
def test_botocore_and_s3fs_errors_by_code_and_status(code, status, kind):
    assert storage_error_kind(client_error(code, status)) == kind
    assert storage_error_kind(s3fs_error(code, status)) == kind


def test_message_words_do_not_decide():
    # an AccessDenied on a key whose name says "timeout": permanent
    denied = client_error("AccessDenied", 403, "Access Denied for s3://b/timeout-notes.jpg (connection reset?)")
    assert storage_error_kind(denied) == PERMANENT
    assert storage_error_kind(s3fs_error("AccessDenied", 403, "timeout-notes.jpg: 503 throttled")) == PERMANENT
    # a 503 whose message sounds final: transient
    final = client_error("ServiceUnavailable", 503, "Access denied; not found; forbidden")
    assert storage_error_kind(final) == TRANSIENT
    # words alone, on an error that is not the storage's, decide nothing
    assert not is_transient_storage_error(RuntimeError("An error occurred (503) when calling GetObject: SlowDown"))
    assert not is_transient_storage_error(ValueError("timed out"))


def test_connection_and_credential_errors_of_botocore():
    assert storage_error_kind(botocore_exceptions.EndpointConnectionError(endpoint_url="http://x")) == TRANSIENT
    assert storage_error_kind(botocore_exceptions.ReadTimeoutError(endpoint_url="http://x")) == TRANSIENT
    assert storage_error_kind(botocore_exceptions.ConnectionClosedError(endpoint_url="http://x")) == TRANSIENT
    assert storage_error_kind(botocore_exceptions.NoCredentialsError()) == PERMANENT


def test_aiohttp_errors_by_status_and_type():
    aiohttp = pytest.importorskip("aiohttp")

    def response_error(status):
        return aiohttp.ClientResponseError(None, (), status=status, message="timeout" if status == 403 else "x")

    assert storage_error_kind(response_error(503)) == TRANSIENT
    assert storage_error_kind(response_error(429)) == TRANSIENT
    assert storage_error_kind(response_error(403)) == PERMANENT
    assert storage_error_kind(response_error(404)) == PERMANENT
    assert storage_error_kind(aiohttp.ClientConnectionError("refused")) == TRANSIENT
    assert storage_error_kind(aiohttp.ServerTimeoutError("slow")) == TRANSIENT


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), PERMANENT),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), PERMANENT),
        (OSError(errno.EROFS, "Read-only file system"), PERMANENT),
        (OSError(errno.ELOOP, "Too many levels of symbolic links"), PERMANENT),
        (OSError(errno.EIO, "Input/output error"), TRANSIENT),
        (OSError(errno.EBUSY, "busy"), TRANSIENT),
        (OSError(errno.ETIMEDOUT, "no space left (says the message)"), TRANSIENT),
        (FileNotFoundError("timeout.jpg"), PERMANENT),
        (PermissionError("try again"), PERMANENT),
        (IsADirectoryError("x"), PERMANENT),
        (FileExistsError("x"), PERMANENT),
        (TimeoutError("forbidden"), TRANSIENT),
        (ConnectionResetError("not found"), TRANSIENT),
        (ConnectionError(), TRANSIENT),
        (OSError("a storage layer's generic failure"), TRANSIENT),
        (ValueError("bad argument"), PERMANENT),
        (KeyError("x"), PERMANENT),
    ],
)
def test_errno_and_type(error, kind):
    assert storage_error_kind(error) == kind


def test_retry_waits_then_succeeds_and_never_retries_a_permanent_error():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise s3fs_error("SlowDown", 503)
        return "ok"

    assert retry(flaky, retries=3, backoff_s=0.5, sleep=waits.append) == "ok"
    assert waits == [0.5, 1.0]
    with pytest.raises(PermissionError):  # unchanged without wrap
        retry(lambda: (_ for _ in ()).throw(s3fs_error("AccessDenied", 403, "timeout-notes.jpg")), sleep=waits.append)
    assert waits == [0.5, 1.0]


def test_retry_wraps_storage_errors_with_their_kind():
    def denied():
        raise s3fs_error("AccessDenied", 403, "timeout-notes.jpg")

    with pytest.raises(StorageError) as info:
        retry(denied, retries=3, sleep=lambda s: None, what="writing s3://b/timeout-notes.jpg", wrap=True)
    e = info.value
    assert (e.kind, e.attempts) == (PERMANENT, 1) and isinstance(e.__cause__, PermissionError)
    assert str(e).startswith("writing s3://b/timeout-notes.jpg: permanent storage error")
    with pytest.raises(StorageError) as info:
        retry(lambda: (_ for _ in ()).throw(TimeoutError("slow")), retries=2, sleep=lambda s: None, wrap=True)
    assert (info.value.kind, info.value.attempts) == (TRANSIENT, 3) and "gave up after 3 attempts" in str(info.value)
    assert storage_error_kind(info.value) == TRANSIENT
    with pytest.raises(KeyError):  # a bug in the operation is not a storage error: never wrapped
        retry(lambda: {}["x"], wrap=True)
