"""Hugging Face datasets as a source: listing rows into ImageRefs, reading rows by range.

A ``save_to_disk`` folder, a folder of Parquet files (or one file), an imagefolder, or a
hub name (streamed). Rows get ``file_name = "{index:08d}.{ext}"`` and
``uri = "hf://{name}/{split}/{index}"``. An :class:`HFSource` pickles without its open
dataset, so the driver lists and workers re-open it lazily to read their rows.

A dataset is untrusted input, so its cells do not steer reads: an image cell without
bytes names a file by its ``path``, which is resolved against the dataset's own files
(the ``save_to_disk`` folder, the Parquet files' folder, the imagefolder; for a hub
dataset, its repository ``hf://datasets/NAME``), never against the current directory.
A path that is absolute outside that folder, that leaves it (``..``, a symlink pointing
out), or a URL elsewhere is not read: the row is ``unreadable`` and says why, unless
``allow_paths_outside`` (``--hf-allow-paths-outside``) is set by the user who trusts the
dataset.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotator.inputs.catalog import ImageRefs, ImageRefsBuilder
from annotator.inputs.decode import ImageDecodeError, sniff_format
from annotator.inputs.listing import (
    _FORMAT_EXT,
    SourceError,
    has_image_extension,
    read_image_bytes,
)


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
    #: read cell paths outside the dataset's files too (absolute, ``..``, symlinks out, URLs)
    allow_paths_outside: bool = False
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

    @property
    def files_root(self) -> str:
        """Where the dataset's own files are, against which cell paths resolve: the
        ``save_to_disk`` folder, the Parquet files' folder (the file's folder for one
        file), the imagefolder, or ``hf://datasets/NAME`` for a hub dataset."""
        if self.kind == "hub":
            return f"hf://datasets/{self.name_or_path}"
        path = Path(self.name_or_path)
        return os.path.realpath(path.parent if self.kind == "parquet" and path.is_file() else path)

    def locate(self, path: str) -> str:
        """The file a cell's ``path`` names, to read; raises ImageDecodeError("unreadable")
        for a path outside the dataset's files (see the module docstring) unless
        :attr:`allow_paths_outside`. Relative paths resolve against :attr:`files_root`."""
        root = self.files_root
        is_url = "://" in path or "::" in path
        if self.kind == "hub":
            inside = (is_url and path.startswith((root + "/", root + "@"))
                      and "::" not in path and ".." not in path.split("/"))
            if inside or self.allow_paths_outside:
                return path
            why = ("a URL outside the dataset's repository" if is_url
                   else "a local path, and a hub dataset has no local folder")
        elif is_url:
            if self.allow_paths_outside:
                return path
            why = "a URL, not a file of the dataset"
        else:
            given = Path(path)
            candidate = given if given.is_absolute() else Path(root) / given
            if self.allow_paths_outside:
                return str(candidate)
            real = os.path.realpath(candidate)
            if _within(real, root):
                return real
            why = ("an absolute path outside the dataset's folder" if given.is_absolute()
                   else "a path that leaves the dataset's folder through a symlink"
                   if _within(os.path.normpath(candidate), root)
                   else "a path that leaves the dataset's folder with '..'")
        shown = path if len(path) <= 200 else path[:197] + "..."
        raise ImageDecodeError(
            "unreadable", f"the cell names {shown!r}, {why} ({root}); not read (a dataset's cells may name only its "
            "own files; --hf-allow-paths-outside reads them)")

    def read_path(self, path: str) -> bytes:
        """The bytes of the file a cell's ``path`` names (:meth:`locate` first)."""
        location = self.locate(path)
        if self.kind == "hub" or "://" in location or "::" in location:
            import fsspec

            try:
                with fsspec.open(location, "rb") as f:
                    return f.read()
            except Exception as exc:  # noqa: BLE001 - one row's unreadable file, not the run's
                raise ImageDecodeError("unreadable", f"{location}: {type(exc).__name__}") from None
        return read_image_bytes(location)

    def dataset(self):
        """The opened ``datasets.Dataset`` (or ``IterableDataset`` for kind "hub")."""
        if self._dataset is None:
            self._dataset = _open_hf(self.name_or_path, self.split, self.kind)[0]
        return self._dataset

    def refs(self) -> ImageRefs:
        """One ImageRef per row: file_name "{index:08d}.{ext}" with ext from the image's
        leading bytes, else its path's extension, else "png". A streamed dataset is
        iterated once (downloading the image column) and num_rows is recorded. Held as
        columns (:class:`~annotator.inputs.catalog.ImageRefs`)."""
        builder = ImageRefsBuilder()
        for i, cell in enumerate(self._iter_cells(self.image_column, 0, self.num_rows, head_only=True)):
            builder.add(f"{i:08d}.{_cell_ext(cell)}", self.uri(i), image_id=i + 1, index=i)
        if not len(builder):
            raise SourceError(f"dataset {self.name_or_path!r} split {self.split!r} has no rows")
        self.num_rows = len(builder)
        return builder.build()

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
        return [_label_array(cell, self.read_path) for cell in self._iter_cells(column, start, stop)]

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
                    return self.read_path(str(cell["path"]))
                except ImageDecodeError as exc:
                    return ImageDecodeError(exc.reason, f"{shown}: {exc.detail}")
            return ImageDecodeError("missing", f"{shown}: the {self.image_column!r} cell has no bytes and no path")
        if hasattr(cell, "save"):  # a PIL image from a decoding feature
            buf = io.BytesIO()
            cell.save(buf, format=cell.format or "PNG")
            return buf.getvalue()
        return ImageDecodeError("not-an-image", f"{shown}: unexpected cell of type {type(cell).__name__}")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
    return _FORMAT_EXT.get(fmt, "png") if isinstance(fmt, str) else "png"


def _label_array(cell: Any, read_path) -> np.ndarray | None:
    from PIL import Image

    if cell is None:
        return None
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if isinstance(cell, dict) and not data and cell.get("path"):
        data = read_path(str(cell["path"]))
    if isinstance(data, (bytes, bytearray)) or hasattr(cell, "mode"):
        with (cell if hasattr(cell, "mode") else Image.open(io.BytesIO(data))) as img:  # type: ignore[arg-type]
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
        ds = _load_hub(name_or_path, split)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        split = _pick_split(list(ds.keys()), split, name_or_path)
        ds = ds[split]
    return ds, split or str(getattr(ds, "split", None) or "train")


#: Seconds to wait for the Hub's answer before calling it unreachable.
HUB_PROBE_TIMEOUT_S = 5.0


def _offline_hint(name: str) -> str:
    return (f"hub datasets are streamed and need the network; offline, use a local copy: on a connected "
            f"machine save it with datasets.load_dataset({name!r}).save_to_disk(FOLDER) (or download its "
            "Parquet files) and pass that folder instead of the hub name")


def hub_unavailable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now, or None when it answers.

    Offline mode (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) is the reason without a
    request; otherwise one HEAD request to the endpoint (``HF_ENDPOINT``, through
    huggingface_hub's own HTTP session, so its proxy and certificate settings apply)
    that fails to connect within :data:`HUB_PROBE_TIMEOUT_S` seconds. Any HTTP answer,
    an error status included, counts as reachable. Checked once before streaming, so
    that an offline machine is told in seconds, once, instead of after the client's
    retries and their repeated warnings.
    """
    import datasets
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return "offline mode is set (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any transport failure: no connection to the Hub
        reason = " ".join(str(exc).split()) or "no answer"
        return f"the Hub at {constants.ENDPOINT} is unreachable ({reason[:200]})"
    return None


def _load_hub(name: str, split: str | None):
    """A hub dataset, streamed; refused in seconds, with one message, when offline."""
    import datasets

    why = hub_unavailable()
    if why is not None:
        raise SourceError(f"Hugging Face dataset {name!r} cannot be streamed: {why}; {_offline_hint(name)}")
    try:
        return datasets.load_dataset(name, **({"split": split} if split else {}), streaming=True)
    except datasets.exceptions.DatasetNotFoundError:
        raise SourceError(f"Hugging Face dataset {name!r} was not found on the Hub: check the name, or log in "
                          "(HF_TOKEN) for a private or gated dataset; a local dataset is passed as its "
                          "folder path") from None
    except (ConnectionError, OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise SourceError(f"Hugging Face dataset {name!r} cannot be streamed: {reason}; "
                          f"{_offline_hint(name)}") from None


def _feature_kind(feature: Any) -> str:
    """A column's type in a word: "image", "binary" (encoded bytes), or what else it is."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        return "binary" if feature.dtype in ("binary", "large_binary") else str(feature.dtype)
    if isinstance(feature, dict) and _feature_kind(feature.get("bytes")) == "binary":
        return "binary"  # an {"bytes", "path"} struct without the Image type
    return type(feature).__name__


#: Column kinds an image can be read from (an Image feature, or encoded bytes).
_IMAGE_KINDS = ("image", "binary")


def _detect_image_column(ds, image_column: str | None, name: str) -> str:
    features = ds.features
    kinds: dict[str, str]
    if features is None:  # a streamed dataset without declared features: peek one row
        row: dict[str, Any] = next(iter(ds.take(1)), {})
        kinds = {k: ("image" if hasattr(v, "mode") or (isinstance(v, dict) and "bytes" in v)
                     else "binary" if isinstance(v, (bytes, bytearray)) else type(v).__name__)
                 for k, v in row.items()}
    else:
        kinds = {k: _feature_kind(f) for k, f in features.items()}
    if image_column is not None:
        if image_column not in kinds:
            raise SourceError(f"image column {image_column!r} not in dataset {name!r}; columns: {kinds}")
        if kinds[image_column] not in _IMAGE_KINDS:
            usable = [k for k, v in kinds.items() if v in _IMAGE_KINDS]
            raise SourceError(f"--hf-image-column {image_column!r}: expected a column of images, got a "
                              f"{kinds[image_column]} column; the image columns of dataset {name!r} are "
                              f"{usable if usable else 'none'}")
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


def list_hf_dataset(name_or_path: str, split: str | None = None, image_column: str | None = None,
                    allow_paths_outside: bool = False) -> HFSource:
    """Open a Hugging Face dataset split as an :class:`HFSource`.

    ``name_or_path``: a local ``save_to_disk`` folder, a local folder of Parquet files (or
    one ``.parquet`` file), a local imagefolder, or a hub dataset name (streamed; needs
    network: unreachable or offline, a SourceError in seconds names the dataset and the
    local route, see :func:`hub_unavailable`). ``split``: required when the dataset has
    several. ``image_column``: default the single column of ``datasets.Image`` type, or
    among several the one named "image" (segmentation datasets pair it with a label-map
    Image column). Local paths are made absolute so that workers with another working
    directory re-open the same data. ``allow_paths_outside``: read image cells whose path
    leaves the dataset's files (see the module docstring).
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
    return HFSource(resolved, split, column, kind or "hub", num_rows, columns,
                    allow_paths_outside=allow_paths_outside, _dataset=ds)
