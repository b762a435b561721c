"""Where images come from: listing a source into ImageRefs, and reading their bytes.

Sources:

- a local directory (recursive), a glob (``/data/**/*.jpg``, ``s3://bucket/imgs/*.png``),
  a single file, or any fsspec URL of a directory (``s3://``, ``gs://``, ``memory://``,
  ``file://``, ``http(s)://`` where the server lists directories): :func:`list_images`;
- a Hugging Face dataset: see :mod:`annotator.inputs.hf`.

Listing is deterministic: refs are sorted by ``file_name`` (the path relative to the
source root, ``/``-separated; for a glob the root is the part before the first
wildcard) and ``image_id`` is the 1-based position in that order. Everything whose name
ends in one of :data:`IMAGE_EXTENSIONS` is listed, broken symlinks and unreadable files
included (they become error rows when read); directories are not listed, even when
their name looks like an image's.

Credentials: ``user:password@`` in a URL is moved into fsspec storage options
(:func:`split_credentials`: ``key``/``secret`` for S3, HTTP basic auth for http(s),
``username``/``password`` otherwise) and never appears in an ``ImageRef.uri`` or an error
message; :func:`redact_uri` also masks signed-URL query values (``X-Amz-Signature``,
``sig``, ``token``, ...). A worker reading ``ref.uri`` must therefore be given the
storage options that :func:`resolve_source` returns for the source.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from typing import Any

import fsspec

from annotator.errors import AnnotatorError
from annotator.failpoints import failpoint
from annotator.inputs.catalog import ImageRef, ImageRefs, ImageRefsBuilder
from annotator.inputs.decode import ImageDecodeError
from annotator.storage.redact import redact_uri, scrub_secrets, split_credentials
from annotator.storage.retry import is_transient_storage_error, retry

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRef",
    "ImageRefs",
    "SourceError",
    "check_options_taken",
    "has_image_extension",
    "list_images",
    "options_not_taken",
    "read_image_bytes",
    "redact_uri",
    "resolve_source",
    "split_credentials",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


class SourceError(AnnotatorError, ValueError):
    """A source that cannot be listed: missing, empty, or of an unexpected shape."""


def has_image_extension(path: str) -> bool:
    """True when ``path`` ends with one of IMAGE_EXTENSIONS (case-insensitive)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- credentials

def resolve_source(uri: str, storage_options: dict | None = None) -> tuple[str, dict[str, Any]]:
    """(uri without credentials, storage options = URL credentials updated with the
    explicit ``storage_options``, which win). Pass both to every reader of the source."""
    clean, from_url = split_credentials(uri)
    options = dict(from_url)
    for k, v in (storage_options or {}).items():
        if k == "client_kwargs" and isinstance(v, dict) and isinstance(options.get(k), dict):
            options[k] = {**options[k], **v}
        else:
            options[k] = v
    body = clean.split("://", 1)[1] if "://" in clean else clean
    if body.rstrip("/"):
        clean = clean[: len(clean) - (len(body) - len(body.rstrip("/")))]  # DIR/ and DIR are one source
    return clean, options


#: Options that fsspec's AbstractFileSystem takes for every file system (its instance cache).
_FS_BASE_OPTIONS = frozenset({"use_listings_cache", "listings_expiry_time", "max_paths", "skip_instance_cache"})


def options_not_taken(uri: str, storage_options: dict | None) -> list[str]:
    """The ``storage_options`` that the file system of ``uri`` does not take, sorted.

    Decided for the file systems that hand unknown options on to a client that fails on
    them at the first request (http/https: fsspec passes them to every aiohttp request,
    so an S3 ``key``/``secret`` given for another store ended in a ``TypeError``): the
    options it takes are its constructor's named parameters, fsspec's own and those of an
    aiohttp request. Other file systems take or ignore unknown options themselves: [].
    """
    if not storage_options or "://" not in uri:
        return []
    protocol = uri.split("://", 1)[0].split("::")[0].lower()
    if protocol not in ("http", "https"):
        return []
    import inspect

    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem

    def named(fn) -> set[str]:
        return {n for n, p in inspect.signature(fn).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}

    taken = named(HTTPFileSystem.__init__) | named(aiohttp.ClientSession._request) | _FS_BASE_OPTIONS
    return sorted(k for k in storage_options if k not in taken)


def check_options_taken(uri: str, storage_options: dict | None, what: str = "--source") -> None:
    """SourceError naming the ``storage_options`` that ``uri``'s file system does not
    take (:func:`options_not_taken`), before any request."""
    extra = options_not_taken(uri, storage_options)
    if extra:
        protocol = uri.split("://", 1)[0]
        raise SourceError(
            f"--storage-options: {what} {redact_uri(uri)!r} ({protocol}) does not take the option(s) "
            f"{', '.join(extra)} (options of another store, such as S3's key/secret?): expected only options "
            "of an HTTP request (headers, auth, client_kwargs, ...)"
        )


# ---------------------------------------------------------------- listing

_MAGIC_RE = re.compile(r"[*?\[]")


def _has_wildcard(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """``*``, ``?`` or ``[`` in the path; in an http(s) URL, ``?`` starts the query string."""
    if set(_protocols(fs)) & {"http", "https"}:
        path = path.split("?", 1)[0]
    return bool(_MAGIC_RE.search(path))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _glob_root(path: str) -> str:
    """The non-magic prefix directory of a glob: 'b/imgs/**/*.jpg' -> 'b/imgs'."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _MAGIC_RE.search(part):
            return "/".join(parts[:i]) or "/"
    return posixpath.dirname(path)


def list_images(source: str, storage_options: dict | None = None) -> ImageRefs:
    """List the images of a directory, glob, single file or fsspec URL (see module doc).

    Returns refs sorted by ``file_name`` (byte order of the UTF-8 names), ``image_id`` =
    1-based position, held as columns (:class:`~annotator.inputs.catalog.ImageRefs`): the
    walk streams into them, so a million files never sit in memory as Python objects.
    Raises SourceError when the source does not exist, holds no file with an image
    extension, or its server refuses or cannot be reached (the message names the URL,
    credentials redacted, and the client's reason).
    """
    from fsspec.implementations.local import LocalFileSystem

    clean, options = resolve_source(source, storage_options)
    shown = redact_uri(source)
    builder = ImageRefsBuilder()
    others: list[str] = []  # the first few other files (sorted), for the error message
    num_others = 0
    check_options_taken(clean, options)
    try:
        failpoint("listing")  # ANNOTATOR_FAILPOINTS (annotator.failpoints): tests of a failed listing
        fs, path = local_or_url_fs(clean, options)
        local = isinstance(fs, LocalFileSystem)
        if local and os.path.isdir(path):
            root, paths = path, _walk_local(path)
        elif _has_wildcard(fs, path) and not fs.exists(path):  # a glob, unless a path of that name exists
            root = _glob_root(path)
            paths = (p for p, info in fs.glob(path, detail=True).items() if info.get("type") != "directory")
        elif fs.isdir(path):
            root, paths = path, iter(fs.find(path, withdirs=False))
        elif fs.exists(path):
            root, paths = posixpath.dirname(path), iter([path])
        else:
            raise SourceError(f"source {shown!r} does not exist (expected a directory, glob, file or URL)")
        root = root.rstrip("/")
        for p in paths:
            if p.rstrip("/") == root:
                continue
            rel = _relative(p, root)
            if has_image_extension(p):
                builder.add(rel, redact_uri(p if local else fs.unstrip_protocol(p)))
            else:
                num_others += 1
                if len(others) < 3 or rel < others[-1]:
                    others = sorted([*others, rel])[:3]
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise SourceError(f"source {shown!r} cannot be listed: {scrub_secrets(str(exc), source)}") from None
    except Exception as exc:  # a remote source's client error: name the source, not only the host
        if not _is_remote(clean) or not _is_client_error(exc):
            raise
        detail = scrub_secrets(str(exc) or type(exc).__name__, source)
        hint = ("; check the URL and the network (offline, list a local copy of the images instead)"
                if _is_connection_error(exc) else "")
        raise SourceError(f"source {shown!r} cannot be listed: {detail}{hint}") from None
    if not len(builder):
        found = f"found {num_others} other file(s), e.g. {others}" if num_others else "found no files"
        raise SourceError(
            f"no images in source {shown!r}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
            f"(case-insensitive); {found}"
        )
    return builder.build(sort_by_name=True)


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith(("file:", "memory:"))


def _client_classes(exc: BaseException) -> list[str]:
    return [f"{cls.__module__}.{cls.__name__}" for cls in type(exc).__mro__]


def _is_client_error(exc: BaseException) -> bool:
    """An error of the storage client (the standard library's OSError, which aiohttp's
    connection errors are, or aiohttp / botocore / google's own), not of our code."""
    return isinstance(exc, OSError) or any(
        name.startswith(("aiohttp.", "botocore.", "google.", "requests.")) for name in _client_classes(exc))


def _is_connection_error(exc: BaseException) -> bool:
    """No answer from the server: DNS failure, refused or dropped connection, timeout."""
    import socket

    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return any(("Connect" in name.rsplit(".", 1)[1] or "Timeout" in name.rsplit(".", 1)[1])
               for name in _client_classes(exc) if not name.startswith("builtins."))


def local_or_url_fs(uri: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path) for ``uri``; a local path (no ``scheme://``) is taken literally:
    ``::`` in it is part of a file name, not fsspec chaining."""
    from fsspec.implementations.local import LocalFileSystem

    if "://" not in uri and not uri.startswith(("file:", "memory:")):
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    return fsspec.core.url_to_fs(uri, **(options or {}))


def _walk_local(root: str) -> Iterator[str]:
    """Every file under ``root``, one path at a time, following symlinked folders once
    each (a link back to a folder already walked, a loop, is skipped with a warning)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            log.warning("%s: a symlink to a folder already listed (a loop?): skipped", dirpath)
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in filenames:
            yield os.path.join(dirpath, name)


def _relative(path: str, root: str) -> str:
    if root in ("", "/"):
        return path.lstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return path.lstrip("/")  # fsspec returned a path outside the root: keep it whole


# ---------------------------------------------------------------- reading

#: ``--max-bytes`` by default: larger files are refused before they are read (1 GiB).
DEFAULT_MAX_BYTES = 1 << 30


def read_image_bytes(ref_or_uri: ImageRef | str, storage_options: dict | None = None, *,
                     retries: int = 3, backoff_s: float = 0.5, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of one listed image, via fsspec, retrying transient errors.

    Up to ``retries`` retries after the first attempt, waiting ``backoff_s * 2**k``
    seconds before retry k+1. Credentials may be in the URI or in ``storage_options``.
    Only regular files (object-store objects) are read, and at most ``max_bytes`` of
    them: a FIFO, a device (``/dev/zero`` behind a symlink), a socket or a larger file
    is an ``unreadable`` error, found from its metadata before anything is read.

    Raises:
        ImageDecodeError("missing", ...): no such file, or a broken symlink.
        ImageDecodeError("unreadable", ...): permission denied, a directory, a symlink
            loop, or a transient error that outlasted the retries (detail says so).
        ValueError: an ``hf://`` row ref (read those with HFSource.read_rows).
    """
    uri = ref_or_uri.uri if isinstance(ref_or_uri, ImageRef) else str(ref_or_uri)
    if uri.startswith("hf://") and (not isinstance(ref_or_uri, ImageRef) or ref_or_uri.index is not None):
        raise ValueError(f"{uri!r} is a Hugging Face dataset row: read it with HFSource.read_rows")
    clean, options = resolve_source(uri, storage_options)
    shown = redact_uri(uri)

    def attempt() -> bytes:
        failpoint("image.read")  # ANNOTATOR_FAILPOINTS (annotator.failpoints): a storage read that fails
        fs, path = local_or_url_fs(clean, options)
        _check_readable(fs, path, shown, max_bytes)
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # its metadata said less (e.g. a growing file)
            raise ImageDecodeError("unreadable", f"{shown}: more than --max-bytes {max_bytes} bytes")
        return data

    try:
        return retry(attempt, retries, backoff_s, is_transient=is_transient_storage_error, what=f"reading {shown}")
    except ImportError:
        raise  # a missing fsspec backend (s3fs, gcsfs): a setup error, not a bad image
    except ImageDecodeError:
        raise
    except Exception as exc:  # every other failure becomes this image's error row
        raise _read_error(exc, uri, shown, retries) from None


def _check_readable(fs: fsspec.AbstractFileSystem, path: str, shown: str, max_bytes: int) -> None:
    """Refuse what is not a regular file of at most ``max_bytes`` (never opened, so a
    FIFO cannot block the reader)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        st = os.stat(path)  # follows symlinks: a link to /dev/zero is a device
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise ImageDecodeError("unreadable", f"{shown}: {kind}, not a regular file")
        size = st.st_size
    else:
        try:
            info = fs.info(path)
        except NotImplementedError:  # a file system without metadata: the read itself is bounded
            return
        if info.get("type") not in (None, "file"):
            raise ImageDecodeError("unreadable", f"{shown}: a {info.get('type')}, not a file")
        size = info.get("size") or 0
    if size > max_bytes:
        raise ImageDecodeError("unreadable", f"{shown}: {size} bytes, more than --max-bytes {max_bytes}")


def _read_error(exc: Exception, uri: str, shown: str, retries: int) -> ImageDecodeError:
    message = scrub_secrets(f"{type(exc).__name__}: {exc}", uri)
    if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
        if "://" not in uri and os.path.islink(uri):
            return ImageDecodeError("missing", f"{shown}: broken symlink to {os.readlink(uri)!r}")
        return ImageDecodeError("missing", f"{shown}: no such file ({message})")
    if is_transient_storage_error(exc):
        return ImageDecodeError("unreadable", f"{shown}: gave up after {retries + 1} attempts: {message}")
    return ImageDecodeError("unreadable", f"{shown}: {message}")
