"""Label-map PNGs: one per ok image, PASCAL VOC style.

Layout written by :func:`export`::

    {to}/labels.txt                     "<index> <name>" per line, index 0 = background
    {to}/<file_name with its extension replaced by .png>
    {to}/<stem>_conf.png                with --confidence: 8-bit gray, round(255 * confidence)

Each label PNG holds the class index of every pixel (0 = background) at the image's
resolution: an 8-bit palette PNG ("P" mode) with the VOC colour palette when the
vocabulary has at most 255 classes (255 is VOC's "ignore" index, never written), else a
16-bit grayscale PNG (no palette). Annotations removed by --classes/--min-area/--min-score
become background.

Paths: ``file_name`` comes from the data, so it is sanitised before use: ``\\`` becomes
``/``, empty, ``.`` and ``..`` components and drive letters are dropped, control
characters removed, so nothing is ever written outside ``to``. When two images map to
the same output path (``a.jpg`` and ``a.png``), the later one gets ``__<image_id>``
before the extension. Remembering the written paths costs one short string per image.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from annotator.export.common import (
    ExportError,
    ExportOptions,
    ExportResult,
    ExportRun,
)
from annotator.review.palette import IGNORE_INDEX, flat_palette
from annotator.storage.layout import join_url

__all__ = [
    "LABELS_NAME",
    "ExportFolder",
    "export",
    "label_map_png",
    "read_label_png",
    "safe_relative_path",
]

LABELS_NAME = "labels.txt"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:$")


def safe_relative_path(file_name: str, suffix: str = ".png") -> str:
    """A relative, '/'-separated output path for ``file_name`` that stays inside the target.

    The extension of the last component is replaced by ``suffix``
    (``"a/b.jpg"`` -> ``"a/b.png"``); ``"../../etc/x.jpg"`` -> ``"etc/x.png"``;
    ``"/abs/x.jpg"`` -> ``"abs/x.png"``; a name with nothing left -> ``"image.png"``.
    """
    pieces = []
    for i, piece in enumerate(str(file_name).replace("\\", "/").split("/")):
        piece = _CONTROL.sub("", piece).strip()
        if piece in ("", ".", "..") or (i == 0 and _DRIVE.match(piece)):
            continue
        pieces.append(piece)
    if not pieces:
        pieces = ["image"]
    stem, _ = posixpath.splitext(pieces[-1])
    pieces[-1] = (stem or pieces[-1]) + suffix
    return "/".join(pieces)


def _with_tag(relative: str, tag: str) -> str:
    stem, ext = posixpath.splitext(relative)
    return f"{stem}{tag}{ext}"


def label_map_png(labels_hw: np.ndarray, num_classes: int) -> bytes:
    """Label map (H, W) of class indices in [0, num_classes) -> PNG bytes.

    num_classes <= 255: 8-bit palette PNG with the VOC palette; else 16-bit grayscale
    (num_classes <= 65535).
    """
    labels_hw = np.asarray(labels_hw)
    if labels_hw.ndim != 2 or not np.issubdtype(labels_hw.dtype, np.integer):
        raise ValueError(f"labels_hw must be a 2-D integer array, got {labels_hw.dtype} {labels_hw.shape}")
    if labels_hw.size and (labels_hw.min() < 0 or labels_hw.max() >= num_classes):
        raise ValueError(
            f"labels_hw values must lie in [0, {num_classes}), got [{labels_hw.min()}, {labels_hw.max()}]"
        )
    buf = io.BytesIO()
    if num_classes <= IGNORE_INDEX:
        h, w = labels_hw.shape
        img = Image.frombytes("P", (w, h), np.ascontiguousarray(labels_hw, dtype=np.uint8).tobytes())
        img.putpalette(flat_palette())
        img.save(buf, format="PNG", optimize=False)
    elif num_classes <= 65535:
        Image.fromarray(labels_hw.astype(np.uint16)).save(buf, format="PNG")
    else:
        raise ValueError(f"at most 65535 classes fit a 16-bit PNG, got {num_classes}")
    return buf.getvalue()


def read_label_png(data: bytes) -> np.ndarray:
    """PNG bytes from :func:`label_map_png` -> int32 label map (H, W)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(f"expected a palette, 8-bit or 16-bit label PNG, got mode {img.mode!r}")
        return np.asarray(img).astype(np.int32)


def _check_inside(fs: Any, root: str, target: str) -> None:
    """Refuse a local target that resolves (through symlinks) outside ``root``."""
    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return
    real_root = os.path.realpath(root)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_root, real_target]) != real_root:
        raise ExportError(f"refusing to write {target!r}: it resolves outside the export folder {root!r}")


class _PathAllocator:
    """Unique output paths (case-insensitively, for macOS/Windows file systems)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def take(self, relative: str, image_id: int) -> str:
        candidate = relative
        if candidate.lower() in self._taken:
            candidate = _with_tag(relative, f"__{image_id}")
        n = 1
        while candidate.lower() in self._taken:
            n += 1
            candidate = _with_tag(relative, f"__{image_id}_{n}")
        self._taken.add(candidate.lower())
        return candidate


class ExportFolder:
    """The files of a per-image export under ``to``: one ``makedirs`` per folder, nothing
    written outside ``to`` (symlinks included), a unique name per image (``take``)."""

    def __init__(self, to: str, storage_options: Any = None):
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(to, **self.storage_options)
        self.fs.makedirs(self.root, exist_ok=True)
        self._allocator = _PathAllocator()
        self._made: set[str] = set()

    def take(self, relative: str, image_id: int) -> str:
        """``relative``, or ``__<image_id>`` before its extension when another image has it."""
        return self._allocator.take(relative, image_id)

    def path(self, relative: str) -> str:
        """The full path of ``relative``, its folder created."""
        target = posixpath.join(self.root, relative)
        parent = posixpath.dirname(target)
        if parent not in self._made:  # one makedirs per folder, not per file
            _check_inside(self.fs, self.root, parent)
            self.fs.makedirs(parent, exist_ok=True)
            if len(self._made) < 10_000:
                self._made.add(parent)
        return target

    def write(self, relative: str, data: bytes) -> None:
        with self.fs.open(self.path(relative), "wb") as f:
            f.write(data)


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write one label PNG per ok image (+ confidence PNGs) and ``labels.txt`` under ``to``."""
    from annotator.records import labels_from_annotations

    run = ExportRun.open(output, options)
    class_names, keep = run.class_names, run.keep
    folder = ExportFolder(to, options.storage_options)
    labels_txt = join_url(to, LABELS_NAME)
    with fsspec.open(labels_txt, "w", encoding="utf-8", **folder.storage_options) as fp:
        for i, name in enumerate(class_names):
            fp.write(f"{i} {name}\n")

    counts = {"images": 0, "annotations": 0, "confidence_maps": 0, "skipped_error_rows": 0, "renamed": 0}
    for record in run.records():
        if record.status != "ok":
            counts["skipped_error_rows"] += 1
            continue
        kept = keep.apply(record.annotations)
        counts["annotations"] += len(kept)
        labels = labels_from_annotations(kept, (record.height, record.width))
        wanted = safe_relative_path(record.file_name, ".png")
        relative = folder.take(wanted, record.image_id)
        counts["renamed"] += relative != wanted
        folder.write(relative, label_map_png(labels, len(class_names)))
        counts["images"] += 1
        if options.confidence and record.confidence_png:
            folder.write(folder.take(_with_tag(relative, "_conf"), record.image_id), record.confidence_png)
            counts["confidence_maps"] += 1

    counts.update(keep.counts())
    # The PNGs are not listed one by one (that list would grow with the dataset).
    return ExportResult(format="masks", paths=[labels_txt, to], counts=counts,
                        files_written=1 + counts["images"] + counts["confidence_maps"])
