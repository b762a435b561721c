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
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import fsspec

from annotator.inputs.decode import ImageDecodeError
from annotator.storage.redact import redact_uri, scrub_secrets, split_credentials
from annotator.storage.retry import is_transient_storage_error, retry

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRef",
    "SourceError",
    "has_image_extension",
    "list_images",
    "read_image_bytes",
    "redact_uri",
    "resolve_source",
    "split_credentials",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


class SourceError(ValueError):
    """A source that cannot be listed: missing, empty, or of an unexpected shape."""


@dataclass(frozen=True)
class ImageRef:
    """One listed image.

    image_id: 1-based position in the sorted listing (stable for a given source).
    file_name: path relative to the source root, '/'-separated; "{index:08d}.{ext}" for
        a Hugging Face row.
    uri: what :func:`read_image_bytes` opens (credentials removed): a local absolute path,
        an fsspec URL, or "hf://{name}/{split}/{index}" (read via HFSource.read_rows).
    index: row index for a Hugging Face dataset, else None.
    """

    image_id: int
    file_name: str
    uri: str
    index: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image_id, int) or self.image_id < 1:
            raise ValueError(f"ImageRef.image_id: expected an int >= 1, received {self.image_id!r}")
        if not self.file_name:
            raise ValueError("ImageRef.file_name: expected a non-empty relative path, received ''")


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
    return clean, options


# ---------------------------------------------------------------- listing

_MAGIC_RE = re.compile(r"[*?\[]")


def _glob_root(path: str) -> str:
    """The non-magic prefix directory of a glob: 'b/imgs/**/*.jpg' -> 'b/imgs'."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _MAGIC_RE.search(part):
            return "/".join(parts[:i]) or "/"
    return posixpath.dirname(path)


def list_images(source: str, storage_options: dict | None = None) -> list[ImageRef]:
    """List the images of a directory, glob, single file or fsspec URL (see module doc).

    Returns refs sorted by ``file_name``; ``image_id`` = 1-based position. Raises
    SourceError when the source does not exist or holds no file with an image extension.
    """
    from fsspec.implementations.local import LocalFileSystem

    clean, options = resolve_source(source, storage_options)
    shown = redact_uri(source)
    try:
        fs, path = fsspec.core.url_to_fs(clean, **options)
        if _MAGIC_RE.search(path):
            root, entries = _glob_root(path), fs.glob(path, detail=True)
        elif fs.isdir(path):
            root, entries = path, fs.find(path, withdirs=True, detail=True)
        elif fs.exists(path):
            root, entries = posixpath.dirname(path), {path: fs.info(path)}
        else:
            raise SourceError(f"source {shown!r} does not exist (expected a directory, glob, file or URL)")
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise SourceError(f"source {shown!r} cannot be listed: {scrub_secrets(str(exc), source)}") from None

    root = root.rstrip("/")
    files = [p for p, info in entries.items() if info.get("type") != "directory" and p.rstrip("/") != root]
    images = sorted((_relative(p, root), p) for p in files if has_image_extension(p))
    if not images:
        others = sorted(_relative(p, root) for p in files)[:3]
        found = f"found {len(files)} other file(s), e.g. {others}" if files else "found no files"
        raise SourceError(
            f"no images in source {shown!r}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
            f"(case-insensitive); {found}"
        )
    local = isinstance(fs, LocalFileSystem)
    return [
        ImageRef(image_id=i, file_name=rel, uri=redact_uri(p if local else fs.unstrip_protocol(p)))
        for i, (rel, p) in enumerate(images, start=1)
    ]


def _relative(path: str, root: str) -> str:
    if root in ("", "/"):
        return path.lstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return path.lstrip("/")  # fsspec returned a path outside the root: keep it whole


# ---------------------------------------------------------------- reading

def read_image_bytes(ref_or_uri: ImageRef | str, storage_options: dict | None = None, *,
                     retries: int = 3, backoff_s: float = 0.5) -> bytes:
    """The bytes of one listed image, via fsspec, retrying transient errors.

    Up to ``retries`` retries after the first attempt, waiting ``backoff_s * 2**k``
    seconds before retry k+1. Credentials may be in the URI or in ``storage_options``.

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
        with fsspec.open(clean, "rb", **options) as f:
            return f.read()

    try:
        return retry(attempt, retries, backoff_s, is_transient=is_transient_storage_error, what=f"reading {shown}")
    except ImportError:
        raise  # a missing fsspec backend (s3fs, gcsfs): a setup error, not a bad image
    except Exception as exc:  # every other failure becomes this image's error row
        raise _read_error(exc, uri, shown, retries) from None


def _read_error(exc: Exception, uri: str, shown: str, retries: int) -> ImageDecodeError:
    message = scrub_secrets(f"{type(exc).__name__}: {exc}", uri)
    if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
        if "://" not in uri and os.path.islink(uri):
            return ImageDecodeError("missing", f"{shown}: broken symlink to {os.readlink(uri)!r}")
        return ImageDecodeError("missing", f"{shown}: no such file ({message})")
    if is_transient_storage_error(exc):
        return ImageDecodeError("unreadable", f"{shown}: gave up after {retries + 1} attempts: {message}")
    return ImageDecodeError("unreadable", f"{shown}: {message}")
