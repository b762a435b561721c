"""Ultralytics YOLO segmentation dataset (``--format yolo``): what ``yolo segment train
data=TO/data.yaml`` reads.

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

from annotator.export.common import (
    AnnotationFilter,
    ExportError,
    ExportOptions,
    ExportResult,
)
from annotator.export.masks import _check_inside, _PathAllocator, safe_relative_path
from annotator.export.shapes import InstanceSplitter, PolygonStats, mask_polygons
from annotator.records.encode import decode_mask
from annotator.storage import parts
from annotator.storage.layout import join_url
from annotator.storage.results import read_metadata, resolve_inputs

__all__ = ["DATA_YAML", "IMAGE_MODES", "export", "split_of"]

DATA_YAML = "data.yaml"
IMAGE_MODES = ("link", "copy", "none")


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


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write the YOLO segmentation dataset of a run folder under ``to``."""
    if options.yolo_images not in IMAGE_MODES:
        raise ExportError(f"yolo_images: expected one of {IMAGE_MODES}, got {options.yolo_images!r}")
    if not 0.0 <= options.val_fraction < 1.0:
        raise ExportError(f"val_fraction: expected a fraction in [0, 1), got {options.val_fraction!r}")
    paths = resolve_inputs(output, options.storage_options)
    metadata = read_metadata(paths, options.storage_options)
    class_names = list(metadata["vocabulary"])
    keep = AnnotationFilter.from_options(class_names, options)
    exported = sorted(keep.class_ids)
    index_of = {cid: k for k, cid in enumerate(exported)}
    split = InstanceSplitter(keep.class_ids)  # every component is one object
    shapes = PolygonStats()
    so = dict(options.storage_options or {})
    fs, root = fsspec.core.url_to_fs(to, **so)
    fs.makedirs(root, exist_ok=True)
    image_so = dict(options.image_storage_options if options.image_storage_options is not None else so)
    allocator = _PathAllocator()
    made: set[str] = set()
    counts = {"images": 0, "annotations": 0, "skipped_error_rows": 0, "empty_images": 0, "renamed": 0,
              "train": 0, "val": 0, "images_linked": 0, "images_copied": 0, "images_missing": 0}

    def makedirs(path: str) -> None:
        parent = posixpath.dirname(path)
        if parent not in made:
            _check_inside(fs, root, parent)
            fs.makedirs(parent, exist_ok=True)
            if len(made) < 10_000:
                made.add(parent)

    for record in parts.iter_records(paths, so or None):
        if record.status != "ok":
            counts["skipped_error_rows"] += 1
            continue
        subset = split_of(record.file_name, options.val_fraction, options.split_seed)
        ext = posixpath.splitext(record.file_name)[1] or ".jpg"
        wanted = safe_relative_path(record.file_name, ".txt")
        rel_label = allocator.take(f"{subset}/{wanted}", record.image_id)
        counts["renamed"] += rel_label != f"{subset}/{wanted}"
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
        label_path = posixpath.join(root, "labels", rel_label)
        makedirs(label_path)
        with fs.open(label_path, "wb") as f:
            f.write(("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        counts["annotations"] += len(lines)
        counts["empty_images"] += not lines
        counts[subset] += 1
        counts["images"] += 1
        if options.yolo_images != "none":
            image_path = posixpath.join(root, "images", posixpath.splitext(rel_label)[0] + ext)
            makedirs(image_path)
            counts[_place_image(record.uri, image_path, fs, image_so, options.yolo_images)] += 1

    data_yaml = join_url(to, DATA_YAML)
    root_shown = os.path.abspath(root) if "://" not in to else to
    val_dir = "images/val" if counts["val"] else "images/train"
    doc = [f"path: {_yaml_str(root_shown)}", "train: images/train", f"val: {val_dir}", "names:"]
    doc += [f"  {k}: {_yaml_str(class_names[cid])}" for k, cid in enumerate(exported)]
    with fsspec.open(data_yaml, "w", encoding="utf-8", **so) as fp:
        fp.write("\n".join(doc) + "\n")
    counts.update(keep.counts())
    counts.update(shapes.counts())
    return ExportResult(format="yolo", paths=[data_yaml, to],
                        counts=counts, files_written=1 + counts["images"] + counts["images_linked"]
                        + counts["images_copied"])


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
