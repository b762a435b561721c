"""Label Studio tasks with brush-label predictions, and the matching labeling config.

Layout written by :func:`export`::

    {to}/tasks.json             a JSON array, one task per ok image (import it in the project)
    {to}/labeling_config.xml    <View><Image/><BrushLabels>...</BrushLabels></View>

One task::

    {"data": {"image": image_url_prefix + quote(file_name)},
     "predictions": [{"model_version": ..., "score": image score,
        "result": [{"id", "type": "brushlabels", "from_name", "to_name",
                    "original_width": W, "original_height": H, "image_rotation": 0,
                    "value": {"format": "rle", "rle": [...], "brushlabels": [name]}}, ...]}]}

Label Studio does not read COCO RLE: ``value.rle`` is its own encoding (an rle-pack
bitstream over the row-major RGBA bytes of the mask, W*H*4 values, alpha read back),
produced by the SDK's ``label_studio_sdk.converter.brush.mask2rle`` on the mask times
255. The SDK is an optional dependency (``pip install 'annotator[labelstudio]'``).

The prediction ``score`` is :func:`annotator.export.image_score`: the area-weighted mean
of the annotation scores (the mean confidence over the labelled pixels); 0 for an image
labelled background only, so that it comes first for review.

Images: ``data.image`` is ``image_url_prefix`` followed by the percent-encoded
``file_name``. The default prefix ``/data/local-files/?d=`` serves the files from Label
Studio's local storage when ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` is the source
root; for images in a bucket that the project has as cloud storage, use e.g.
``s3://bucket/prefix/`` (cloud URIs are not percent-encoded).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import quote

import fsspec
import numpy as np

from annotator.export.common import (
    AnnotationFilter,
    ExportOptions,
    ExportResult,
    as_record,
    instance_class_ids,
)
from annotator.export.formats import MissingExtraError, install_command
from annotator.export.shapes import InstanceSplitter
from annotator.review.palette import class_colors, hex_color
from annotator.storage import parts
from annotator.storage.layout import join_url
from annotator.storage.redact import redact_text
from annotator.storage.results import image_score, read_metadata, resolve_inputs

__all__ = [
    "CONFIG_NAME",
    "TASKS_NAME",
    "MissingDependencyError",
    "export",
    "image_url",
    "labeling_config",
    "ls_rle_to_mask",
    "mask_to_ls_rle",
    "task_for_record",
    "write_tasks_json",
]

TASKS_NAME = "tasks.json"
CONFIG_NAME = "labeling_config.xml"


def install_hint() -> str:
    """What to pip install for the SDK (:func:`annotator.export.formats.install_command`)."""
    return ("the Label Studio export needs the label-studio-sdk package, which is not installed: "
            + install_command("labelstudio"))

# Cloud-storage URIs that Label Studio resolves itself: the key must stay as written.
_CLOUD_SCHEMES = re.compile(r"^(s3|gs|gcs|azure-blob|azure-spi|az|abfs)://", re.IGNORECASE)


class MissingDependencyError(MissingExtraError):
    """The SDK is not installed (the message says what to pip install; exit 2)."""


def _brush() -> Any:
    try:
        from label_studio_sdk.converter import brush
    except ImportError as exc:
        raise MissingDependencyError(f"{install_hint()} ({exc})") from exc
    return brush


def mask_to_ls_rle(mask_hw: np.ndarray) -> list[int]:
    """Binary mask (H, W), bool or 0/1 -> Label Studio brush RLE (list of ints).

    Encoded with the SDK's ``mask2rle`` on ``uint8(mask) * 255`` (row-major, 4
    channels per pixel; Label Studio reads the alpha channel).
    """
    mask_hw = np.asarray(mask_hw)
    if mask_hw.ndim != 2:
        raise ValueError(f"mask_hw must be a 2-D (H, W) array, got shape {mask_hw.shape}")
    alpha = np.ascontiguousarray(mask_hw.astype(bool), dtype=np.uint8) * np.uint8(255)
    return [int(v) for v in _brush().mask2rle(alpha)]


def ls_rle_to_mask(rle: list[int], size_hw: tuple[int, int]) -> np.ndarray:
    """Label Studio brush RLE -> bool mask (H, W) (alpha channel > 127), via the SDK."""
    h, w = (int(v) for v in size_hw)
    flat = np.asarray(_brush().decode_rle(rle), dtype=np.uint8)
    if flat.size != h * w * 4:
        raise ValueError(f"RLE holds {flat.size} values, expected H*W*4 = {h * w * 4} for size_hw {(h, w)}")
    return flat.reshape(h, w, 4)[:, :, 3] > 127


def image_url(file_name: str, prefix: str) -> str:
    """``prefix`` + ``file_name``, percent-encoded unless ``prefix`` is a cloud URI (s3://, gs://, ...)."""
    if _CLOUD_SCHEMES.match(prefix):
        return prefix + file_name
    return prefix + quote(file_name, safe="/")


def labeling_config(
    class_names: list[str],
    from_name: str = "label",
    to_name: str = "image",
    class_ids: Iterable[int] | None = None,
) -> str:
    """The labeling config XML: an ``<Image>`` and a ``<BrushLabels>`` with one
    ``<Label value=name background=#rrggbb/>`` per exported class (the report's colours:
    a class named after a colour gets that colour, the others VOC's palette).

    ``class_ids``: vocabulary indices to list (default: all but background). Names are
    XML-escaped by ElementTree.
    """
    ids = sorted(class_ids) if class_ids is not None else list(range(1, len(class_names)))
    colors = class_colors(class_names)  # the report's colours: class 'red' is drawn red
    view = ET.Element("View")
    ET.SubElement(view, "Image", {"name": to_name, "value": "$image", "zoom": "true"})
    brush = ET.SubElement(view, "BrushLabels", {"name": from_name, "toName": to_name})
    for c in ids:
        ET.SubElement(brush, "Label", {"value": class_names[c], "background": hex_color(colors[c])})
    ET.indent(view, space="  ")
    return ET.tostring(view, encoding="unicode") + "\n"


def task_for_record(
    record: Any,
    *,
    keep: AnnotationFilter,
    from_name: str,
    to_name: str,
    image_url_prefix: str,
    model_version: str,
    split: InstanceSplitter | None = None,
) -> dict:
    """One Label Studio task for an ok :class:`annotator.records.types.ImageRecord`
    (``split``: its instances, one brush result each)."""
    from annotator.records import decode_mask

    results = []
    per_class: dict[int, int] = {}
    for a in keep.apply(split(record) if split is not None else record.annotations):
        k = per_class[a.category_id] = per_class.get(a.category_id, 0) + 1
        results.append(
            {
                "id": f"r{record.image_id}c{a.category_id}" + (f"i{k}" if k > 1 else ""),
                "type": "brushlabels",
                "from_name": from_name,
                "to_name": to_name,
                "original_width": record.width,
                "original_height": record.height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": mask_to_ls_rle(decode_mask(a.segmentation)),
                    "brushlabels": [a.category_name],
                },
            }
        )
    prediction: dict[str, Any] = {"model_version": model_version, "result": results}
    score = image_score(record)
    if score is not None:
        prediction["score"] = round(score, 6)
    return {
        "data": {"image": image_url(record.file_name, image_url_prefix)},
        "predictions": [prediction],
    }


def write_tasks_json(
    rows_iter: Iterable[Any],
    class_names: list[str],
    fp: IO[str],
    options: ExportOptions,
    model_version: str,
) -> dict[str, int]:
    """Stream tasks as one JSON array into the text file ``fp``, one task per line.

    Returns counts: ``tasks``, ``annotations`` (brush results), ``skipped_error_rows``, ``filtered_*``.
    """
    _brush()  # fail before writing anything when the SDK is missing
    keep = AnnotationFilter.from_options(class_names, options)
    split = InstanceSplitter(instance_class_ids(class_names, options, keep.class_ids))
    counts = {"tasks": 0, "annotations": 0, "skipped_error_rows": 0}
    fp.write("[")
    for row in rows_iter:
        record = as_record(row)
        if record.status != "ok":
            counts["skipped_error_rows"] += 1
            continue
        task = task_for_record(
            record,
            keep=keep,
            from_name=options.ls_from_name,
            to_name=options.ls_to_name,
            image_url_prefix=options.image_url_prefix,
            model_version=model_version,
            split=split,
        )
        fp.write(("\n" if counts["tasks"] == 0 else ",\n") + json.dumps(task, separators=(",", ":")))
        counts["tasks"] += 1
        counts["annotations"] += len(task["predictions"][0]["result"])
    fp.write("\n]\n")
    counts.update(keep.counts())
    counts.update(split.counts())
    return counts


def default_model_version(metadata: dict) -> str:
    """``annotator-<version>:<model>[/<weights>]+<saliency>`` from the run metadata.

    ``<weights>``: the open_clip tag, ``random``, or a checkpoint file's name with the
    first 12 hex digits of its sha256, ``none`` for a model without weights (``toy``).
    """
    parts = [f"annotator-{metadata.get('version', '?')}:{metadata.get('model', '?')}"]
    weights = str(metadata.get("pretrained") or "")
    if weights:
        name, _, digest = weights.partition(" sha256:")
        parts.append(f"/{name.split(' (')[0]}" + (f"@{digest[:12]}" if digest else ""))
    if metadata.get("saliency"):
        parts.append(f"+{metadata['saliency']}")
    return redact_text("".join(parts))


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Export a run folder as Label Studio ``tasks.json`` + ``labeling_config.xml``."""
    _brush()
    paths = resolve_inputs(output, options.storage_options)
    metadata = read_metadata(paths, options.storage_options)
    class_names = list(metadata["vocabulary"])
    keep_ids = AnnotationFilter.from_options(class_names, options).class_ids
    model_version = options.model_version or default_model_version(metadata)
    so = dict(options.storage_options or {})
    fs, root = fsspec.core.url_to_fs(to, **so)
    fs.makedirs(root, exist_ok=True)
    config_path = join_url(to, CONFIG_NAME)
    with fsspec.open(config_path, "w", encoding="utf-8", **so) as fp:
        fp.write(labeling_config(class_names, options.ls_from_name, options.ls_to_name, keep_ids))
    tasks_path = join_url(to, TASKS_NAME)
    with fsspec.open(tasks_path, "w", encoding="utf-8", **so) as fp:
        rows = parts.iter_records(paths, dict(options.storage_options) if options.storage_options else None)
        counts = write_tasks_json(rows, class_names, fp, options, model_version)
    return ExportResult(format="labelstudio", paths=[tasks_path, config_path], counts=counts)
