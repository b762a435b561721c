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

__all__ = ["REDACTED", "install_log_redaction", "redact_text", "redact_uri", "redact_value", "refuse_credentials",
           "register_options_secrets", "register_secret", "scrub_secrets", "split_credentials", "split_userinfo",
           "take_arg_credentials", "take_credentials"]

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
# 'user:password@' without its scheme, as clients quote a bucket or host name
# ('Invalid bucket name "KEY:SECRET@bucket"'): a token, a colon, a token, an '@'.
_BARE_USERINFO_RE = re.compile(r"(?<![^\s\"'(\[{=,;<>`])[^\s\"'@/:<>()\[\]{}]+:[^\s\"'@<>()]+@(?=[A-Za-z0-9\[])")
#: Secrets met in URLs and storage options in this process: replaced in every text.
_SECRETS: set[str] = set()
#: Shorter values are not registered (they would redact ordinary words).
MIN_SECRET_LENGTH = 8
MASK = "***"


def register_secret(value: object) -> None:
    """Remember ``value`` (a password, a key, a token) so that :func:`redact_text`
    replaces it wherever it appears (also percent-encoded)."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    from urllib.parse import quote

    _SECRETS.update({value, quote(value, safe=""), quote(value)})


def register_options_secrets(options: object, key: str = "") -> None:
    """Register every secret-named value of fsspec storage options (``key``, ``secret``,
    ``token``, ``password``, an ``Authorization`` header, ...), recursively."""
    if isinstance(options, Mapping):
        for k, v in options.items():
            register_options_secrets(v, str(k))
    elif isinstance(options, (list, tuple)):
        for v in options:
            register_options_secrets(v, key)
    elif isinstance(options, str) and any(s in key.lower() for s in SECRET_KEYS if s != "storage_options"):
        register_secret(options)
        if options.lower().startswith(("basic ", "bearer ", "token ")):
            register_secret(options.split(" ", 1)[1])


def redact_text(text: str) -> str:
    """``text`` with ``user:pass@`` removed from every URL in it (and where a client
    quotes one without its scheme), secret query values (signatures, tokens) redacted by
    :func:`redact_uri`, and every registered secret (:func:`register_secret`) masked."""
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_TOKEN_RE.sub(lambda m: redact_uri(m.group(0)), text)
    text = _CREDENTIALS_RE.sub("", text)
    return _BARE_USERINFO_RE.sub("", text)


#: Schemes whose fsspec filesystem takes the credentials :func:`split_credentials` makes.
MOVABLE_SCHEMES = {"s3", "s3a", "s3n", "http", "https", "ftp", "sftp", "ssh", "smb", "webdav"}


def _config_error(message: str) -> Exception:
    from annotator.config import ConfigError  # config -> errors -> this module: imported late

    return ConfigError(message)


def refuse_credentials(url: str | None, option: str) -> None:
    """ConfigError (exit 2) when ``url`` carries ``user:password@``: for an option read
    as a local file or written into an export, where no storage option can take them.
    The message shows the URL redacted; the secret is registered all the same."""
    if not url:
        return
    for part in str(url).split("::"):
        _, user, password = split_userinfo(part)
        if user is not None:
            register_secret(user)
            register_secret(password)
            raise _config_error(f"{option} {redact_uri(url)}: expected no credentials in this value (it is not read "
                                "through storage options), got user:password@ in it; remove them")


def _merge(options: dict[str, Any], extra: Mapping[str, Any], option: str, url: str) -> dict[str, Any]:
    out = dict(options)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v, option, url)
        elif k in out and out[k] != v:
            raise _config_error(f"{option} {redact_uri(url)}: expected one set of credentials, got those of its "
                                "URL and others (another option's URL or --storage-options); give them once, in "
                                "--storage-options")
        else:
            out[k] = v
    return out


def take_credentials(url: str | None, storage_options: Mapping[str, Any] | None,
                     option: str = "URL") -> tuple[str | None, dict[str, Any]]:
    """(``url`` without ``user:password@``, ``storage_options`` with them added): the
    one rule for every option read through fsspec (``option`` names it in messages).

    The credentials become ``key``/``secret`` (S3), a Basic ``Authorization`` header
    (HTTP) or ``username``/``password`` (FTP, SFTP, SMB, WebDAV), and are registered for
    :func:`redact_text`. ConfigError (the URL redacted) for credentials a scheme cannot
    take (``gs://``, ``file://``, ...) and for two different sets of credentials."""
    options = dict(storage_options or {})
    if not url:
        return url, options
    parts = str(url).split("::")
    clean_parts = []
    for part in parts:
        clean, creds = split_credentials(part)
        if creds:
            _, user, password = split_userinfo(part)
            register_secret(user)
            register_secret(password)
            register_options_secrets(creds)
            scheme = clean.split("://", 1)[0].lower()
            if scheme not in MOVABLE_SCHEMES:
                raise _config_error(f"{option} {redact_uri(url)}: expected credentials in --storage-options for "
                                    f"{scheme}:// (a user:password@ in its URL means nothing to it), got them in "
                                    "the URL")
            options = _merge(options, creds, option, url)
        clean_parts.append(clean)
    return "::".join(clean_parts), options


def take_arg_credentials(args: Any, move: tuple[str, ...] = (), refuse: tuple[str, ...] = (),
                         secrets: tuple[str, ...] = (), options_dest: str = "storage_options") -> None:
    """The rule applied to a parsed command line (``argparse.Namespace``), in place:
    the ``move`` options' credentials go into ``args.<options_dest>`` (a JSON object
    string, rewritten), the ``refuse`` options' are refused; ``--storage-options``'
    secrets and the ``secrets`` options' values (tokens) are registered. ConfigError as
    :func:`take_credentials`."""
    import json

    for dest in secrets:
        register_secret(getattr(args, dest, None))
    text = getattr(args, options_dest, None)
    try:
        options = json.loads(text) if text else {}
    except ValueError:
        return  # the command's own parser reports it
    if not isinstance(options, dict):
        return
    register_options_secrets(options)
    for dest in refuse:
        refuse_credentials(getattr(args, dest, None), "--" + dest.replace("_", "-"))
    changed = False
    for dest in move:
        value = getattr(args, dest, None)
        if isinstance(value, str):
            clean, new = take_credentials(value, options, "--" + dest.replace("_", "-"))
            if clean != value:
                setattr(args, dest, clean)
                options, changed = new, True
    if changed:
        setattr(args, options_dest, json.dumps(options))


class _RedactingFilter:
    """A logging filter: every record's text through :func:`redact_text`."""

    def filter(self, record: Any) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: logging reports it itself
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Every handler of the root logger (and warnings, routed through logging) redacts
    with :func:`redact_text`. Call after ``logging.basicConfig``; idempotent."""
    import logging

    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())


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


def _install_in_errors() -> None:
    """:mod:`annotator.errors` (the foundation) renders messages through this module's
    redaction without importing it (that would be an upward arrow and a cycle)."""
    from annotator import errors

    errors.set_redactor(redact_text)


_install_in_errors()
