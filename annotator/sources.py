"""Where images come from: listing a source into ImageRefs, and reading their bytes.

Sources:

- a local directory (recursive), a glob (``/data/**/*.jpg``, ``s3://bucket/imgs/*.png``),
  a single file, or any fsspec URL of a directory (``s3://``, ``gs://``, ``memory://``,
  ``file://``, ``http(s)://`` where the server lists directories): :func:`list_images`;
- a Hugging Face dataset (``save_to_disk`` folder, a folder of Parquet files, an
  imagefolder, or a hub name streamed): :func:`list_hf_dataset` -> :class:`HFSource`.

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

import base64
import errno
import io
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import fsspec
import numpy as np

from annotator.decode import ImageDecodeError, sniff_format
from annotator.retry import retry

__all__ = [
    "IMAGE_EXTENSIONS",
    "HFSource",
    "ImageRef",
    "SourceError",
    "has_image_extension",
    "is_transient_error",
    "list_hf_dataset",
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


def _split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
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
        clean, _, _ = _split_userinfo(part)
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
    clean, user, password = _split_userinfo(uri)
    if user is None:
        return uri, {}
    scheme = clean.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a", "s3n"):
        return clean, {"key": user, "secret": password}
    if scheme in ("http", "https"):
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        return clean, {"client_kwargs": {"headers": {"Authorization": f"Basic {token}"}}}
    return clean, {"username": user, "password": password}


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


def _scrub(text: str, uri: str) -> str:
    """``text`` (an error message) with ``uri``'s secrets removed."""
    _, user, password = _split_userinfo(uri)
    for secret in (password, user):
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_QUERY_RE.sub(lambda m: m.group(1) + REDACTED, text)


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
        raise SourceError(f"source {shown!r} cannot be listed: {_scrub(str(exc), source)}") from None

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

_PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                     errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL}
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    FileExistsError)
_TRANSIENT_RE = re.compile(
    r"(?i)\b(5\d\d|429)\b|throttl|slow ?down|time[d ]?out|temporar|unavailable|too many requests|"
    r"connection ?(reset|aborted|refused|closed|error)|disconnect|broken pipe|internal ?error|"
    r"request ?limit|try again|reset by peer|incomplete ?read|endpoint ?connection"
)
_PERMANENT_RE = re.compile(r"(?i)\b(40[0134])\b|not ?found|no ?such ?(key|bucket|file)|access ?denied|forbidden")


def is_transient_error(exc: BaseException) -> bool:
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
    if _TRANSIENT_RE.search(text):
        return True
    if _PERMANENT_RE.search(text):
        return False
    return isinstance(exc, OSError)


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
        return retry(attempt, retries, backoff_s, is_transient=is_transient_error, what=f"reading {shown}")
    except ImportError:
        raise  # a missing fsspec backend (s3fs, gcsfs): a setup error, not a bad image
    except Exception as exc:  # every other failure becomes this image's error row
        raise _read_error(exc, uri, shown, retries) from None


def _read_error(exc: Exception, uri: str, shown: str, retries: int) -> ImageDecodeError:
    message = _scrub(f"{type(exc).__name__}: {exc}", uri)
    if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
        if "://" not in uri and os.path.islink(uri):
            return ImageDecodeError("missing", f"{shown}: broken symlink to {os.readlink(uri)!r}")
        return ImageDecodeError("missing", f"{shown}: no such file ({message})")
    if is_transient_error(exc):
        return ImageDecodeError("unreadable", f"{shown}: gave up after {retries + 1} attempts: {message}")
    return ImageDecodeError("unreadable", f"{shown}: {message}")


# ---------------------------------------------------------------- Hugging Face datasets


@dataclass
class HFSource:
    """A Hugging Face dataset split, listable into ImageRefs and readable by row range
    in any process (the dataset is re-opened lazily there; the open dataset is not
    pickled).

    kind: "disk" (``save_to_disk`` folder, memory-mapped), "parquet" (a local folder of
    Parquet files or one file), "imagefolder" (a local folder of images, HF layout),
    "hub" (a hub name, streamed: no random access, rows are reached with skip/take and
    the length is known only if the hub's metadata gives it).
    """

    name_or_path: str
    split: str
    image_column: str
    kind: str
    num_rows: int | None
    columns: tuple[str, ...]
    _dataset: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def __len__(self) -> int:
        if self.num_rows is None:
            raise SourceError(
                f"the length of streamed dataset {self.name_or_path!r} split {self.split!r} is unknown "
                "without iterating it: call refs() once (it iterates and records the count)"
            )
        return self.num_rows

    def uri(self, index: int) -> str:
        return f"hf://{self.name_or_path}/{self.split}/{index}"

    def dataset(self):
        """The opened ``datasets.Dataset`` (or ``IterableDataset`` for kind "hub")."""
        if self._dataset is None:
            self._dataset = _open_hf(self.name_or_path, self.split, self.kind)[0]
        return self._dataset

    def refs(self) -> list[ImageRef]:
        """One ImageRef per row: file_name "{index:08d}.{ext}" with ext from the image's
        leading bytes, else its path's extension, else "png". A streamed dataset is
        iterated once (downloading the image column) and num_rows is recorded."""
        refs = [
            ImageRef(image_id=i + 1, file_name=f"{i:08d}.{_cell_ext(cell)}", uri=self.uri(i), index=i)
            for i, cell in enumerate(self._iter_cells(self.image_column, 0, self.num_rows, head_only=True))
        ]
        if not refs:
            raise SourceError(f"dataset {self.name_or_path!r} split {self.split!r} has no rows")
        self.num_rows = len(refs)
        return refs

    def read_rows(self, start: int, stop: int) -> list[bytes | ImageDecodeError]:
        """Encoded image bytes of rows [start, stop) (clipped to the length), in order; a
        row that cannot be read gives its ImageDecodeError instead of raising."""
        return [self._cell_bytes(cell, start + k)
                for k, cell in enumerate(self._iter_cells(self.image_column, start, stop))]

    def read_labels(self, start: int, stop: int, column: str) -> list[np.ndarray | None]:
        """Ground-truth label maps of rows [start, stop) from ``column``.

        Image cells are decoded WITHOUT colour conversion: modes "1"/"L"/"P" give (H, W)
        uint8 (palette indices, as in VOC label PNGs), 16/32-bit modes (H, W) int32, other
        modes (H, W, C) uint8; EXIF orientation is not applied. Array/sequence cells give
        ``np.asarray(cell)``; empty cells give None.
        """
        if column not in self.columns:
            raise SourceError(f"label column {column!r} not in dataset {self.name_or_path!r}; "
                              f"columns: {list(self.columns)}")
        return [_label_array(cell) for cell in self._iter_cells(column, start, stop)]

    # -- internals

    def _iter_cells(self, column: str, start: int, stop: int | None, head_only: bool = False):
        """Raw cells (Image cells undecoded: {"bytes", "path"} dicts) of rows [start, stop)."""
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"row range: expected 0 <= start <= stop, received [{start}, {stop})")
        ds = self.dataset()
        if self.kind == "hub":
            yield from _iter_streamed(ds, column, start, stop)
            return
        import pyarrow.compute as pc

        stop = len(ds) if stop is None else min(stop, len(ds))
        table_view = ds.select_columns([column]).with_format("arrow")  # raw cells: no image decoding
        for lo in range(start, stop, 4096):
            arr = table_view[lo:min(lo + 4096, stop)].column(column)
            if head_only:  # listing needs the leading bytes and the path, not whole images
                arr = arr.combine_chunks()
                if _is_struct(arr) and "bytes" in {f.name for f in arr.type}:
                    heads = pc.binary_slice(arr.field("bytes"), 0, 12).to_pylist()
                    paths = arr.field("path").to_pylist() if "path" in {f.name for f in arr.type} else None
                    valid = arr.is_valid().to_pylist()
                    yield from ({"bytes": h, "path": paths[i] if paths else None} if valid[i] else None
                                for i, h in enumerate(heads))
                    continue
                if _is_binary(arr):
                    yield from pc.binary_slice(arr, 0, 12).to_pylist()
                    continue
            yield from arr.to_pylist()

    def _cell_bytes(self, cell: Any, index: int) -> bytes | ImageDecodeError:
        shown = self.uri(index)
        if cell is None:
            return ImageDecodeError("missing", f"{shown}: the {self.image_column!r} cell is empty")
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            if cell.get("path"):
                try:
                    return read_image_bytes(cell["path"])
                except ImageDecodeError as exc:
                    return ImageDecodeError(exc.reason, f"{shown}: {exc.detail}")
            return ImageDecodeError("missing", f"{shown}: the {self.image_column!r} cell has no bytes and no path")
        if hasattr(cell, "save"):  # a PIL image from a decoding feature
            buf = io.BytesIO()
            cell.save(buf, format=cell.format or "PNG")
            return buf.getvalue()
        return ImageDecodeError("not-an-image", f"{shown}: unexpected cell of type {type(cell).__name__}")


def _is_struct(arr) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(arr.type)


def _is_binary(arr) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)


def _iter_streamed(ds, column: str, start: int, stop: int | None):
    import datasets

    ds = ds.select_columns([column])
    if isinstance((ds.features or {}).get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    ds = ds.skip(start) if start else ds
    ds = ds.take(stop - start) if stop is not None else ds
    for row in ds:
        yield row[column]


def _cell_ext(cell: Any) -> str:
    head = cell.get("bytes") if isinstance(cell, dict) else cell
    if isinstance(head, (bytes, bytearray)):
        fmt = sniff_format(head)
        if fmt:
            return _FORMAT_EXT[fmt]
    path = cell.get("path") if isinstance(cell, dict) else None
    if isinstance(path, str) and has_image_extension(path):
        return path.rsplit(".", 1)[1].lower()
    fmt = getattr(cell, "format", None)  # a decoded PIL image
    return _FORMAT_EXT.get(fmt, "png")


def _label_array(cell: Any) -> np.ndarray | None:
    from PIL import Image

    if cell is None:
        return None
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if isinstance(cell, dict) and not data and cell.get("path"):
        data = read_image_bytes(cell["path"])
    if isinstance(data, (bytes, bytearray)) or hasattr(cell, "mode"):
        with (cell if hasattr(cell, "mode") else Image.open(io.BytesIO(data))) as img:
            arr = np.asarray(img)
            if img.mode in ("1", "L", "P"):
                return np.ascontiguousarray(arr, dtype=np.uint8)
            if arr.ndim == 2:
                return np.ascontiguousarray(arr, dtype=np.int32)
            return np.ascontiguousarray(arr, dtype=np.uint8)
    return np.asarray(cell)


def _pick_split(splits: list[str], split: str | None, name: str) -> str:
    if split is not None:
        if split not in splits:
            raise SourceError(f"dataset {name!r} has no split {split!r}; splits: {splits}")
        return split
    if len(splits) == 1:
        return splits[0]
    raise SourceError(f"dataset {name!r} has several splits {splits}: choose one with split=")


def _local_kind(path: Path) -> str | None:
    if path.is_file() and path.suffix.lower() == ".parquet":
        return "parquet"
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk"
    if next(path.rglob("*.parquet"), None) is not None:
        return "parquet"
    return "imagefolder"


def _open_hf(name_or_path: str, split: str | None, kind: str):
    """(dataset, split) for ``kind``; a dict of splits is narrowed to ``split``."""
    import datasets

    if kind == "disk":
        ds = datasets.load_from_disk(name_or_path)
    elif kind in ("parquet", "imagefolder"):
        where = ({"data_files": name_or_path} if Path(name_or_path).is_file()
                 else {"data_dir": name_or_path})
        ds = datasets.load_dataset(kind, **where)
    else:
        ds = datasets.load_dataset(name_or_path, **({"split": split} if split else {}), streaming=True)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        split = _pick_split(list(ds.keys()), split, name_or_path)
        ds = ds[split]
    return ds, split or str(getattr(ds, "split", None) or "train")


def _detect_image_column(ds, image_column: str | None, name: str) -> str:
    import datasets

    features = ds.features
    if features is None:  # a streamed dataset without declared features: peek one row
        row = next(iter(ds.take(1)), {})
        kinds = {k: ("image" if hasattr(v, "mode") or (isinstance(v, dict) and "bytes" in v) else type(v).__name__)
                 for k, v in row.items()}
    else:
        kinds = {k: ("image" if isinstance(f, datasets.Image) else type(f).__name__) for k, f in features.items()}
    if image_column is not None:
        if image_column not in kinds:
            raise SourceError(f"image column {image_column!r} not in dataset {name!r}; columns: {kinds}")
        return image_column
    images = [k for k, v in kinds.items() if v == "image"]
    if len(images) > 1 and sum(k.lower() == "image" for k in images) == 1:
        images = [k for k in images if k.lower() == "image"]  # e.g. "image" + "annotation" maps
    if len(images) != 1:
        raise SourceError(
            f"dataset {name!r}: expected exactly one column of Image type to use as the image column, "
            f"found {len(images)} ({images}); columns: {kinds}; pass image_column="
        )
    return images[0]


def list_hf_dataset(name_or_path: str, split: str | None = None, image_column: str | None = None) -> HFSource:
    """Open a Hugging Face dataset split as an :class:`HFSource`.

    ``name_or_path``: a local ``save_to_disk`` folder, a local folder of Parquet files (or
    one ``.parquet`` file), a local imagefolder, or a hub dataset name (streamed; needs
    network). ``split``: required when the dataset has several. ``image_column``: default
    the single column of ``datasets.Image`` type, or among several the one named "image"
    (segmentation datasets pair it with a label-map Image column). Local paths are made absolute so that
    workers with another working directory re-open the same data.
    """
    path = Path(name_or_path).expanduser()
    kind = _local_kind(path)
    if kind is None and (path.exists() or name_or_path.startswith((".", "/", "~"))):
        raise SourceError(f"dataset path {name_or_path!r}: expected a save_to_disk folder, a folder of "
                          "Parquet files or images, or a .parquet file; it does not exist or is none of these")
    resolved = str(path.resolve()) if kind is not None else name_or_path
    ds, split = _open_hf(resolved, split, kind or "hub")
    column = _detect_image_column(ds, image_column, resolved)
    num_rows: int | None
    if kind is not None:
        num_rows = len(ds)
    else:
        splits = getattr(getattr(ds, "info", None), "splits", None) or {}
        num_rows = splits[split].num_examples if split in splits else None
    columns = tuple(ds.features.keys()) if ds.features is not None else (column,)
    return HFSource(resolved, split, column, kind or "hub", num_rows, columns, _dataset=ds)
