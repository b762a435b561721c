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
    AnnotationFilter,
    ExportError,
    ExportOptions,
    ExportResult,
)
from annotator.review.palette import IGNORE_INDEX, flat_palette
from annotator.storage import parts
from annotator.storage.layout import join_url
from annotator.storage.results import read_metadata, resolve_inputs

__all__ = [
    "LABELS_NAME",
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


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write one label PNG per ok image (+ confidence PNGs) and ``labels.txt`` under ``to``."""
    from annotator.records import labels_from_annotations

    paths = resolve_inputs(output, options.storage_options)
    metadata = read_metadata(paths, options.storage_options)
    class_names = list(metadata["vocabulary"])
    keep = AnnotationFilter.from_options(class_names, options)
    so = dict(options.storage_options or {})
    fs, root = fsspec.core.url_to_fs(to, **so)
    fs.makedirs(root, exist_ok=True)

    labels_txt = join_url(to, LABELS_NAME)
    with fsspec.open(labels_txt, "w", encoding="utf-8", **so) as fp:
        for i, name in enumerate(class_names):
            fp.write(f"{i} {name}\n")

    allocator = _PathAllocator()
    made_dirs: set[str] = set()
    counts = {"images": 0, "annotations": 0, "confidence_maps": 0, "skipped_error_rows": 0, "renamed": 0}

    def write(relative: str, data: bytes) -> None:
        target = posixpath.join(root, relative)
        parent = posixpath.dirname(target)
        if parent not in made_dirs:  # one makedirs per folder, not per file
            _check_inside(fs, root, parent)
            fs.makedirs(parent, exist_ok=True)
            if len(made_dirs) < 10_000:
                made_dirs.add(parent)
        with fs.open(target, "wb") as f:
            f.write(data)

    for record in parts.iter_records(paths, dict(options.storage_options) if options.storage_options else None):
        if record.status != "ok":
            counts["skipped_error_rows"] += 1
            continue
        kept = keep.apply(record.annotations)
        counts["annotations"] += len(kept)
        labels = labels_from_annotations(kept, (record.height, record.width))
        wanted = safe_relative_path(record.file_name, ".png")
        relative = allocator.take(wanted, record.image_id)
        counts["renamed"] += relative != wanted
        write(relative, label_map_png(labels, len(class_names)))
        counts["images"] += 1
        if options.confidence and record.confidence_png:
            conf_relative = allocator.take(_with_tag(relative, "_conf"), record.image_id)
            write(conf_relative, record.confidence_png)
            counts["confidence_maps"] += 1

    counts.update(keep.counts())
    # The PNGs are not listed one by one (that list would grow with the dataset).
    return ExportResult(format="masks", paths=[labels_txt, to], counts=counts,
                        files_written=1 + counts["images"] + counts["confidence_maps"])
