"""COCO instances JSON with compressed-RLE masks: the profile CVAT and FiftyOne import.

Layout written by :func:`export`::

    {to}/annotations/instances_default.json   (CVAT "COCO 1.0": annotations/instances_<subset>.json)
    {to}/coco.zip                             (with --zip: the same file, ready for CVAT upload)
    {to}/cvat_labels.json                     the labels for CVAT's label editor ("Raw" tab)
    {to}/images/default/                      empty: CVAT's COCO layout, which datumaro's
                                              coco_instances importer requires to exist

JSON profile (see the README, "Use the output", and the tools' importers):

- ``images[]``: ``{"id": image_id, "file_name": [images_root/]file_name, "width", "height"}``,
  only rows with status ``ok`` (error rows are counted in ``skipped_error_rows``).
- ``categories[]``: ``{"id": vocabulary index (>= 1), "name", "supercategory": ""}``;
  background (index 0) is never exported; CVAT maps category 0 to "no label".
- ``annotations[]``: ``{"id": 1, 2, ..., "image_id", "category_id", "segmentation":
  {"size": [h, w], "counts": str}, "area": pixels, "bbox": [x, y, w, h], "iscrowd",
  "score"}``: one per (image, class present), the union mask of that class.
  ``iscrowd`` is always present (CVAT requires it); default 0, since 1 means "ignore
  region" to COCO evaluation.

Streaming: images are written to the output as they come; annotations go to a
temporary file on disk and are appended after the images, so memory stays bounded
whatever the number of images.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from typing import IO, Any

import fsspec

from annotator.export.common import (
    AnnotationFilter,
    ExportError,
    ExportOptions,
    ExportResult,
    as_record,
    instance_class_ids,
    select_class_ids,
)
from annotator.export.shapes import InstanceSplitter, PolygonStats, mask_polygons
from annotator.records.encode import decode_mask
from annotator.storage import parts
from annotator.storage.layout import join_url
from annotator.storage.redact import redact_text
from annotator.storage.results import read_metadata, resolve_inputs

__all__ = [
    "CVAT_LABELS_NAME",
    "IMAGES_FOLDER",
    "JSON_RELATIVE_PATH",
    "ZIP_NAME",
    "categories",
    "cvat_labels",
    "export",
    "write_coco_json",
]

JSON_RELATIVE_PATH = "annotations/instances_default.json"
IMAGES_FOLDER = "images/default"
ZIP_NAME = "coco.zip"
CVAT_LABELS_NAME = "cvat_labels.json"
_INFO_KEYS = ("model", "pretrained", "saliency", "protocol", "version", "config_hash")


def categories(class_names: list[str], class_ids: Iterable[int] | None = None) -> list[dict]:
    """COCO ``categories`` for vocabulary indices ``class_ids`` (default: all but background).

    Returns ``[{"id": c, "name": class_names[c], "supercategory": ""}, ...]`` sorted by id.
    """
    ids = sorted(class_ids) if class_ids is not None else range(1, len(class_names))
    return [{"id": int(c), "name": class_names[c], "supercategory": ""} for c in ids]


def cvat_labels(class_names: list[str], class_ids: Iterable[int] | None = None) -> list[dict]:
    """CVAT label definitions (paste into the task's label editor, "Raw" tab): one per
    exported class, the report's colour (a class named after a colour gets that colour,
    the others VOC's palette), no attributes. Sorted by vocabulary index."""
    from annotator.review.palette import class_colors, hex_color

    colors = class_colors(class_names)
    ids = sorted(class_ids) if class_ids is not None else range(1, len(class_names))
    return [{"name": class_names[c], "color": hex_color(colors[c]), "type": "any", "attributes": []} for c in ids]


def _number(v: float) -> int | float:
    """Integral floats as ints so the JSON reads ``[3, 4, 10, 2]`` rather than ``[3.0, ...]``."""
    f = float(v)
    return int(f) if f.is_integer() else f


def _image_file_name(file_name: str, images_root: str) -> str:
    if not images_root:
        return file_name
    return images_root.rstrip("/") + "/" + file_name.lstrip("/")


def _info(metadata: Mapping[str, Any] | None) -> dict:
    info: dict[str, Any] = {"description": "annotator pre-labels (semantic masks as COCO RLE)"}
    for key in _INFO_KEYS:
        if metadata and metadata.get(key) is not None:
            value = metadata[key]
            info[key] = redact_text(value) if isinstance(value, str) else value
    return info


# Long on purpose: one streaming pass that writes images[] and annotations[] as it reads rows
# (memory flat in the number of images); splitting it would mean a second pass or buffering.
def write_coco_json(
    rows_iter: Iterable[Any],
    class_names: list[str],
    fp: IO,
    *,
    iscrowd: int = 0,
    min_area: int = 0,
    min_score: float = 0.0,
    classes: Iterable[str] | None = None,
    images_root: str = "",
    metadata: Mapping[str, Any] | None = None,
    instances: bool = False,
    instance_classes: Iterable[str] | None = None,
    polygons: bool = False,
    polygon_tolerance: float = 1.0,
) -> dict[str, int]:
    """Stream rows into a COCO instances JSON document written to ``fp``.

    Args:
        rows_iter: Parquet row dicts (``parts.iter_rows``) or ``records.ImageRecord``s.
        class_names: the vocabulary, index 0 = ``"background"``.
        fp: a writable text file (a binary one is wrapped as UTF-8).
        iscrowd: value of every annotation's ``iscrowd``, 0 or 1.
        min_area: drop annotations with fewer pixels than this.
        min_score: drop annotations with a score below this, in [0, 1].
        classes: export only these class names (None = every class but background).
        images_root: prefix joined before each ``file_name`` ("" = none), e.g. a folder or URL.
        metadata: run metadata; its model/version fields go to ``info``.
        instances, instance_classes: one annotation per 8-connected instance (of these
            classes; None = all) instead of one union mask per class and image.
        polygons, polygon_tolerance: ``segmentation`` as polygons (holes joined by
            keyhole cuts), simplified by this many pixels; a mask that simplifies to no
            polygon keeps its RLE. The IoU of the polygons with the masks is counted.

    Returns:
        counts: ``images``, ``annotations``, ``skipped_error_rows``, ``filtered_class``,
        ``filtered_area``, ``filtered_score``, ``empty_images`` (ok images left with no
        annotation); with ``instances``: ``instances``; with ``polygons``:
        ``polygon_masks``, ``polygon_iou_mean``, ``polygon_iou_min``,
        ``polygon_masks_without_polygon``.

    Raises:
        UnknownClassError: a name in ``classes`` is not in the vocabulary.
        ExportError: bad option values.
    """
    # Validates the options the same way the CLI does.
    options = ExportOptions(
        iscrowd=iscrowd, min_area=min_area, min_score=min_score,
        classes=tuple(classes) if classes is not None else None, instances=instances,
        instance_classes=tuple(instance_classes) if instance_classes is not None else None,
        polygons=polygons, polygon_tolerance=polygon_tolerance,
    )
    if not class_names or class_names[0] != "background":
        raise ExportError(
            f"class_names must be the vocabulary with index 0 = 'background', got {list(class_names)[:5]!r}"
        )
    keep = AnnotationFilter(
        class_ids=select_class_ids(class_names, options.classes),
        min_area=options.min_area,
        min_score=options.min_score,
    )
    split = InstanceSplitter(instance_class_ids(class_names, options, keep.class_ids))
    shapes = PolygonStats() if polygons else None
    out, detach = _text_writer(fp)
    counts = {"images": 0, "annotations": 0, "skipped_error_rows": 0, "empty_images": 0}
    try:
        head = {
            "info": _info(metadata),
            "licenses": [],
            "categories": categories(class_names, keep.class_ids),
        }
        # The document is written by hand around the two streamed arrays.
        out.write(json.dumps(head, separators=(",", ":"))[:-1])
        out.write(',\n"images":[')
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
            for row in rows_iter:
                record = as_record(row)
                if record.status != "ok":
                    counts["skipped_error_rows"] += 1
                    continue
                image = {
                    "id": record.image_id,
                    "file_name": _image_file_name(record.file_name, images_root),
                    "width": record.width,
                    "height": record.height,
                }
                out.write(("\n" if counts["images"] == 0 else ",\n") + json.dumps(image))
                counts["images"] += 1
                kept = keep.apply(split(record))
                if not kept:
                    counts["empty_images"] += 1
                for a in kept:
                    counts["annotations"] += 1
                    ann = {
                        "id": counts["annotations"],
                        "image_id": record.image_id,
                        "category_id": a.category_id,
                        "segmentation": _segmentation(a, shapes, polygon_tolerance),
                        "area": int(a.area),
                        "bbox": [_number(v) for v in a.bbox_xywh],
                        "iscrowd": options.iscrowd,
                        "score": float(a.score),
                    }
                    spool.write(("\n" if counts["annotations"] == 1 else ",\n") + json.dumps(ann))
            out.write('\n],\n"annotations":[')
            spool.seek(0)
            shutil.copyfileobj(spool, out)
        out.write("\n]}\n")
    finally:
        detach()
    counts.update(keep.counts())
    counts.update(split.counts())
    if shapes is not None:
        counts.update(shapes.counts())
    return counts


def _segmentation(a, shapes: PolygonStats | None, tolerance_px: float):
    """The annotation's RLE, or its polygons (``shapes`` counts their IoU)."""
    rle = {"size": list(a.segmentation["size"]), "counts": a.segmentation["counts"]}
    if shapes is None:
        return rle
    mask = decode_mask(a.segmentation)
    polys = mask_polygons(mask, tolerance_px)
    shapes.add(polys, mask)
    return [[_number(round(v, 2)) for v in p] for p in polys] if polys else rle


def _text_writer(fp: IO) -> tuple[IO[str], Any]:
    """A text view of ``fp`` and a function that releases it without closing ``fp``."""
    if isinstance(fp, io.TextIOBase):
        return fp, lambda: None
    mode = getattr(fp, "mode", "")
    if isinstance(fp, (io.BufferedIOBase, io.RawIOBase)) or (isinstance(mode, str) and "b" in mode):
        wrapper = io.TextIOWrapper(fp, encoding="utf-8", newline="\n")

        def detach() -> None:
            wrapper.flush()
            wrapper.detach()

        return wrapper, detach
    return fp, lambda: None


def write_zip(json_path: str, zip_path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Pack ``json_path`` as ``annotations/instances_default.json`` into ``zip_path`` (CVAT upload)."""
    so = dict(storage_options or {})
    with fsspec.open(json_path, "rb", **so) as src, fsspec.open(zip_path, "wb", **so) as dst:
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            with archive.open(JSON_RELATIVE_PATH, "w", force_zip64=True) as member:
                shutil.copyfileobj(src, member, length=1 << 20)


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Export a run folder as COCO instances JSON (+ ``coco.zip`` with ``options.zip``)."""
    paths = resolve_inputs(output, options.storage_options)
    metadata = read_metadata(paths, options.storage_options)
    class_names = list(metadata["vocabulary"])
    select_class_ids(class_names, options.classes)  # fail on bad names before writing anything
    so = dict(options.storage_options or {})
    fs, _ = fsspec.core.url_to_fs(to, **so)
    json_path = join_url(to, JSON_RELATIVE_PATH)
    fs.makedirs(fsspec.core.url_to_fs(join_url(to, "annotations"), **so)[1], exist_ok=True)
    with fsspec.open(json_path, "w", encoding="utf-8", **so) as fp:
        counts = write_coco_json(
            parts.iter_records(paths, dict(options.storage_options) if options.storage_options else None),
            class_names,
            fp,
            iscrowd=options.iscrowd,
            min_area=options.min_area,
            min_score=options.min_score,
            classes=options.classes,
            images_root=options.images_root,
            metadata=metadata,
            instances=options.instances,
            instance_classes=options.instance_classes,
            polygons=options.polygons,
            polygon_tolerance=options.polygon_tolerance,
        )
    # CVAT's "COCO 1.0" layout has images/<subset>/ beside annotations/; datumaro (CVAT's
    # importer) refuses the folder without it. Empty: the images stay where the run read them.
    fs.makedirs(fsspec.core.url_to_fs(join_url(to, IMAGES_FOLDER), **so)[1], exist_ok=True)
    written = [json_path]
    labels_path = join_url(to, CVAT_LABELS_NAME)
    with fsspec.open(labels_path, "w", encoding="utf-8", **so) as fp:
        json.dump(cvat_labels(class_names, select_class_ids(class_names, options.classes)), fp, indent=2)
        fp.write("\n")
    if options.zip:
        zip_path = join_url(to, ZIP_NAME)
        write_zip(json_path, zip_path, options.storage_options)
        written.append(zip_path)
    written.append(labels_path)
    return ExportResult(format="coco", paths=written, counts=counts)
