"""Ultralytics datasets: YOLO segmentation (``--format yolo``, what ``yolo segment train
data=TO/data.yaml`` reads) and semantic segmentation (``--format yolo-semantic``, what
``yolo semantic train data=TO/data.yaml`` reads: see :func:`export_semantic`).

Layout written by :func:`export`::

    {to}/data.yaml                      path, train, val, names (index from 0)
    {to}/images/{train,val}/<file_name> the source images: symlinks (local source) or copies
    {to}/labels/{train,val}/<stem>.txt  one line per instance: "<class> x1 y1 x2 y2 ..."

Every 8-connected component of a class mask is one object (YOLO is an instance format),
``--min-area``/``--min-score`` apply per object; its polygon is the outer contour with
holes joined by keyhole cuts (:mod:`annotator.export.shapes`), simplified by
``--polygon-tolerance`` pixels, coordinates normalised by the image's width and height.
Class indices count the exported classes from 0 in vocabulary order (``--classes``
selects them; background is never one). An ok image with no object gets an empty label
file (a negative example); error rows are skipped. ``--val-fraction F`` puts a seeded,
per-image-stable fraction F of the images in ``val`` (by a hash of the file name and
``--split-seed``); with 0, ``val`` is the ``train`` folder (Ultralytics needs one).
YOLO labels have no confidence: the counts report the polygons' IoU with the masks.
File names are sanitised as for the masks export; two images that would share a label
stem get ``__<image_id>``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import Any

import fsspec
import numpy as np

from annotator.export.common import (
    YOLO_IMAGE_MODES,
    ExportError,
    ExportOptions,
    ExportResult,
    ExportRun,
)
from annotator.export.masks import ExportFolder, safe_relative_path
from annotator.export.shapes import PolygonStats, mask_polygons
from annotator.export.staging import final_location
from annotator.records.encode import decode_mask
from annotator.storage.layout import join_url

__all__ = ["DATA_YAML", "IMAGE_MODES", "export", "export_semantic", "split_of"]

DATA_YAML = "data.yaml"
IMAGE_MODES = YOLO_IMAGE_MODES


def split_of(file_name: str, val_fraction: float, seed: int) -> str:
    """'val' for a seeded, stable fraction ``val_fraction`` of file names, else 'train'."""
    if val_fraction <= 0:
        return "train"
    h = hashlib.sha256(f"{seed}\0{file_name}".encode("utf-8", "surrogateescape")).digest()
    return "val" if int.from_bytes(h[:8], "big") / 2**64 < val_fraction else "train"


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escaping is valid YAML)."""
    import json

    return json.dumps(text, ensure_ascii=False)


class _Layout:
    """``images/{subset}/...`` beside ``{kind}/{subset}/...`` under ``to``: one stem per
    image (sanitised, unique), the seeded subset, the images linked or copied."""

    def __init__(self, to: str, options: ExportOptions):
        self.options = options
        self.folder = ExportFolder(to, options.storage_options)
        self.so = self.folder.storage_options
        so = options.image_storage_options
        self.image_so = dict(so if so is not None else self.so)
        self.counts = {"images": 0, "annotations": 0, "skipped_error_rows": 0, "empty_images": 0, "renamed": 0,
                       "train": 0, "val": 0, "images_linked": 0, "images_copied": 0, "images_missing": 0}

    def add(self, record, kind: str, suffix: str, data: bytes) -> None:
        """Write ``data`` as ``{kind}/{subset}/{stem}{suffix}`` and place the image beside."""
        subset = split_of(record.file_name, self.options.val_fraction, self.options.split_seed)
        wanted = safe_relative_path(record.file_name, "")
        stem = self.folder.take(f"{subset}/{wanted}", record.image_id)
        self.counts["renamed"] += stem != f"{subset}/{wanted}"
        self.folder.write(f"{kind}/{stem}{suffix}", data)
        self.counts[subset] += 1
        self.counts["images"] += 1
        if self.options.yolo_images != "none":
            ext = posixpath.splitext(record.file_name)[1] or ".jpg"
            image_path = self.folder.path(f"images/{stem}{ext}")
            self.counts[_place_image(record.uri, image_path, self.folder.fs, self.image_so,
                                     self.options.yolo_images)] += 1

    def write_yaml(self, to: str, names: list[str], extra: tuple[str, ...] = ()) -> str:
        data_yaml = join_url(to, DATA_YAML)
        # Where the dataset will be once published (it is written in a staging folder).
        root_shown = os.path.abspath(final_location(self.folder.root)) if "://" not in to else final_location(to)
        val_dir = "images/val" if self.counts["val"] else "images/train"
        doc = [f"path: {_yaml_str(root_shown)}", "train: images/train", f"val: {val_dir}", *extra, "names:"]
        doc += [f"  {k}: {_yaml_str(name)}" for k, name in enumerate(names)]
        with fsspec.open(data_yaml, "w", encoding="utf-8", **self.so) as fp:
            fp.write("\n".join(doc) + "\n")
        return data_yaml

    def result(self, fmt: str, data_yaml: str, to: str, *more: dict) -> ExportResult:
        counts = dict(self.counts)
        for m in more:
            counts.update(m)
        written = 1 + counts["images"] + counts["images_linked"] + counts["images_copied"]
        return ExportResult(format=fmt, paths=[data_yaml, to], counts=counts, files_written=written)


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write the YOLO segmentation dataset of a run folder under ``to``."""
    layout = _Layout(to, options)
    run = ExportRun.open(output, options, split_every_class=True)  # every component is one object
    class_names, keep, split = run.class_names, run.keep, run.split
    exported = sorted(keep.class_ids)
    index_of = {cid: k for k, cid in enumerate(exported)}
    shapes = PolygonStats()
    for record in run.records():
        if record.status != "ok":
            layout.counts["skipped_error_rows"] += 1
            continue
        lines = []
        for a in keep.apply(split(record)):
            mask = decode_mask(a.segmentation)
            polys = mask_polygons(mask, options.polygon_tolerance)
            shapes.add(polys, mask)
            if not polys:
                continue
            # One polygon per object: a component has one outer contour (holes are joined in).
            coords = polys[0]
            xy = [min(1.0, max(0.0, v / (record.width if i % 2 == 0 else record.height))) for i, v in enumerate(coords)]
            lines.append(f"{index_of[a.category_id]} " + " ".join(f"{v:.6f}" for v in xy))
        layout.add(record, "labels", ".txt", ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        layout.counts["annotations"] += len(lines)
        layout.counts["empty_images"] += not lines
    data_yaml = layout.write_yaml(to, [class_names[cid] for cid in exported])
    return layout.result("yolo", data_yaml, to, keep.counts(), shapes.counts())


def export_semantic(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write the Ultralytics semantic segmentation dataset of a run folder under ``to``:
    ``masks/{subset}/<stem>.png`` label maps (8-bit, pixel = class index, background 0,
    255 = ignore where ``--classes``/``--min-area``/``--min-score`` removed a mask) and
    ``data.yaml`` with ``masks_dir: masks``."""
    from annotator.records import labels_from_annotations

    layout = _Layout(to, options)
    run = ExportRun.open(output, options)
    class_names, keep = run.class_names, run.keep
    exported = [0, *sorted(keep.class_ids)]  # background is class 0 of a semantic dataset
    if len(exported) > 255:
        raise ExportError(f"the semantic export holds at most 255 classes (255 = ignore), got {len(exported)}; "
                          "select fewer with --classes")
    lut = np.full(len(class_names), 255, np.uint8)  # a class left out: ignore
    for k, cid in enumerate(exported):
        lut[cid] = k
    for record in run.records():
        if record.status != "ok":
            layout.counts["skipped_error_rows"] += 1
            continue
        kept = keep.apply(record.annotations)
        dropped = [a for a in record.annotations if a not in kept]
        labels = lut[labels_from_annotations(kept, (record.height, record.width))]
        if dropped:
            labels[labels_from_annotations(dropped, (record.height, record.width)) > 0] = 255
        layout.add(record, "masks", ".png", _gray_png(labels))
        layout.counts["annotations"] += len(kept)
        layout.counts["empty_images"] += not kept
    data_yaml = layout.write_yaml(to, [class_names[cid] for cid in exported], ("masks_dir: masks",))
    return layout.result("yolo-semantic", data_yaml, to, keep.counts())


def _gray_png(labels_hw: np.ndarray) -> bytes:
    """(H, W) uint8 -> an 8-bit grayscale PNG (no palette: the pixel is the class index)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels_hw, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _place_image(uri: str, target: str, fs: Any, image_so: dict, mode: str) -> str:
    """The image at ``target``: a symlink when both are local and ``mode`` is link, else a
    copy; returns the count it goes to (a missing source image is counted, not fatal)."""
    local_target = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    local_source = "://" not in uri
    try:
        if mode == "link" and local_target and local_source:
            if not os.path.isfile(uri):
                return "images_missing"
            if os.path.lexists(target):
                os.remove(target)
            os.symlink(os.path.abspath(uri), target)
            return "images_linked"
        with fsspec.open(uri, "rb", **image_so) as src, fs.open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        return "images_copied"
    except FileNotFoundError:
        return "images_missing"
