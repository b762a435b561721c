"""Keeping secrets out of everything a run shows or writes: one implementation.

Credentials reach the run in URLs (``s3://KEY:SECRET@bucket/...``,
``https://user:pw@host/...``, signed query strings) and in ``--storage-options``. They are
moved into storage options where they are needed (:func:`split_credentials`) and removed
from every text that is logged, raised, stored or rendered (:func:`redact_uri` for one
URL, :func:`redact_text` for free text, :func:`redact_value` for metadata, and
:func:`scrub_secrets` for an error message about a given URL).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

__all__ = ["REDACTED", "redact_text", "redact_uri", "redact_value", "scrub_secrets", "split_credentials",
           "split_userinfo"]

_URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", re.S)
# Schemes whose authority is a bucket name, which never contains ':' -- so
# "s3://KEY:SEC/RET@bucket" is a secret containing '/', not a path.
_BUCKET_SCHEMES = {"s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "r2"}
_SECRET_QUERY_RE = re.compile(
    r"(?i)([?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|signature|sig|token|access_token|id_token|api_key|apikey|key|secret|"
    r"client_secret|password|passwd|pwd|awsaccesskeyid)=)[^&;#]*"
)
REDACTED = "REDACTED"


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without 'user:password@', user, password); user None when there is none."""
    m = _URL_RE.match(uri)
    if not m:
        return uri, None, None
    scheme, rest = m["scheme"], m["rest"]
    at = rest.find("@")
    if at < 0:
        return uri, None, None
    slash = rest.find("/")
    authority_end = len(rest) if slash < 0 else slash
    if not (at < authority_end or (scheme.lower() in _BUCKET_SCHEMES and ":" in rest[:authority_end])):
        return uri, None, None
    user, sep, password = rest[:at].partition(":")
    return f"{scheme}://{rest[at + 1:]}", unquote(user), (unquote(password) if sep else None)


def redact_uri(uri: str) -> str:
    """``uri`` safe to show: 'user:password@' removed, secret query values replaced by
    'REDACTED'. Chained fsspec URLs ('a::b') are redacted part by part. Local paths
    (no scheme) are returned unchanged."""
    parts = []
    for part in str(uri).split("::"):
        clean, _, _ = split_userinfo(part)
        if _URL_RE.match(clean):
            clean = _SECRET_QUERY_RE.sub(lambda m: m.group(1) + REDACTED, clean)
        parts.append(clean)
    return "::".join(parts)


def split_credentials(uri: str) -> tuple[str, dict[str, Any]]:
    """Move 'user:password@' of ``uri`` into fsspec storage options.

    Returns (uri without userinfo, options): ``{"key", "secret"}`` for s3/s3a/s3n,
    ``{"client_kwargs": {"headers": {"Authorization": "Basic ..."}}}`` for http/https,
    ``{"username", "password"}`` for other schemes; ``{}`` when there is no userinfo.
    Signed query strings are kept (they are needed to read); see :func:`redact_uri`.
    """
    clean, user, password = split_userinfo(uri)
    if user is None:
        return uri, {}
    scheme = clean.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a", "s3n"):
        return clean, {"key": user, "secret": password}
    if scheme in ("http", "https"):
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        return clean, {"client_kwargs": {"headers": {"Authorization": f"Basic {token}"}}}
    return clean, {"username": user, "password": password}


def scrub_secrets(text: str, uri: str) -> str:
    """``text`` (an error message) with ``uri``'s secrets removed."""
    _, user, password = split_userinfo(uri)
    for secret in (password, user):
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_QUERY_RE.sub(lambda m: m.group(1) + REDACTED, text)


_CREDENTIALS_RE = re.compile(r"(?<=://)[^/@\s?#]+@")
_URL_TOKEN_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def redact_text(text: str) -> str:
    """``text`` with ``user:pass@`` removed from every URL in it, and secret query
    values (signatures, tokens) redacted by :func:`redact_uri`."""
    text = _URL_TOKEN_RE.sub(lambda m: redact_uri(m.group(0)), str(text))
    return _CREDENTIALS_RE.sub("", text)


#: Metadata keys whose values are never shown.
SECRET_KEYS = ("key", "secret", "token", "password", "passwd", "credential", "storage_options", "auth")


def redact_value(key: str, value: Any) -> Any:
    """A metadata value safe to show: secret-named keys redacted, URLs in strings
    without credentials, recursively through mappings and lists."""
    if any(s in key.lower() for s in SECRET_KEYS):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, v) for v in value]
    return value
