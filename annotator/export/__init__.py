"""Exporters: a run's Parquet output -> files the labeling tools import.

Registry (``EXPORTERS``), name -> ``export(output, to, options) -> ExportResult``:

- ``coco``: COCO instances JSON with compressed-RLE masks (CVAT "COCO 1.0", FiftyOne,
  datumaro, pycocotools), ``{to}/annotations/instances_default.json`` (+ ``coco.zip``).
- ``cvat-masks``: CVAT "Segmentation mask 1.1" (``labelmap.txt``, colour PNGs in
  ``SegmentationClass/``, per-object PNGs in ``SegmentationObject/`` with ``--instances``).
- ``hf``: a Hugging Face ``datasets.Dataset`` saved to disk (image, label map and
  confidence as ``Image`` features, annotations with RLE, scores).
- ``labelstudio``: Label Studio task JSON with brush-label predictions, plus the
  matching ``labeling_config.xml``.
- ``masks``: one 8-bit VOC-palette PNG label map per image (+ ``labels.txt``).
- ``yolo``: an Ultralytics YOLO segmentation dataset (``data.yaml``, ``images/``,
  ``labels/*.txt`` with one normalised polygon per instance).
- ``yolo-semantic``: an Ultralytics semantic segmentation dataset (``data.yaml`` with
  ``masks_dir``, ``images/``, ``masks/*.png`` label maps, 255 = ignore).

Every exporter streams the rows (``parts.iter_rows``) and writes its output piece by
piece: memory does not grow with the number of images. ``output`` is the run's OUTPUT
folder (local path or fsspec URL): ``OUTPUT/annotations.parquet`` is read when it
exists (the reducer's merge), else every ``OUTPUT/parts/part-*.parquet``.

Helpers shared by the exporters: :mod:`annotator.export.common`; a run's rows and
metadata: :mod:`annotator.storage.results`.
"""

from __future__ import annotations

from collections.abc import Callable

from annotator.export import coco as _coco
from annotator.export import cvat_masks as _cvat_masks
from annotator.export import hf as _hf
from annotator.export import labelstudio as _labelstudio
from annotator.export import masks as _masks
from annotator.export import yolo as _yolo
from annotator.export.common import (
    DEFAULT_LS_IMAGE_URL_PREFIX,
    AnnotationFilter,
    ExportError,
    ExportOptions,
    ExportResult,
    UnknownClassError,
    UnknownFormatError,
    as_record,
    parse_classes,
    select_class_ids,
)
from annotator.storage.layout import EXPORTS_DIR, join_url
from annotator.storage.results import RunOutputError, image_score

__all__ = [
    "DEFAULT_LS_IMAGE_URL_PREFIX",
    "EXPORTERS",
    "AnnotationFilter",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "UnknownClassError",
    "UnknownFormatError",
    "as_record",
    "export",
    "image_score",
    "parse_classes",
    "select_class_ids",
]

# ----------------------------------------------------------------------- registry

ExportFn = Callable[[str, str, ExportOptions], ExportResult]

EXPORTERS: dict[str, ExportFn] = {
    "coco": _coco.export,
    "cvat-masks": _cvat_masks.export,
    "hf": _hf.export,
    "labelstudio": _labelstudio.export,
    "masks": _masks.export,
    "yolo": _yolo.export,
    "yolo-semantic": _yolo.export_semantic,
}


def export(
    output: str, format: str, to: str | None = None, options: ExportOptions | None = None
) -> ExportResult:
    """Run the exporter ``format`` on the run folder ``output``.

    ``to`` defaults to ``OUTPUT/exports/FORMAT``.
    """
    if format not in EXPORTERS:
        raise UnknownFormatError(
            f"unknown export format {format!r}; available formats: {', '.join(sorted(EXPORTERS))}"
        )
    target = to if to else join_url(output, EXPORTS_DIR, format)
    try:
        return EXPORTERS[format](output, target, options or ExportOptions())
    except RunOutputError as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(str(e)) from None
