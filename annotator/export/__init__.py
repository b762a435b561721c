"""Exporters: a run's Parquet output -> files the labeling tools import.

Registry (``EXPORTERS``), name -> :class:`~annotator.export.formats.Exporter`: the
function ``(output, to, options) -> ExportResult`` and the options it honours:

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

from annotator.export import coco as _coco
from annotator.export import cvat_masks as _cvat_masks
from annotator.export import fiftyone as _fiftyone
from annotator.export import hf_dataset as _hf
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
from annotator.export.completeness import Completeness, IncompleteRunError, check_run
from annotator.export.formats import Exporter, MissingExtraError, check_options
from annotator.export.staging import open_staging
from annotator.storage.layout import EXPORTS_DIR, join_url
from annotator.storage.results import RunOutputError, image_score

__all__ = [
    "DEFAULT_LS_IMAGE_URL_PREFIX",
    "EXPORTERS",
    "AnnotationFilter",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "Exporter",
    "IncompleteRunError",
    "MissingExtraError",
    "UnknownClassError",
    "UnknownFormatError",
    "as_record",
    "export",
    "exporter",
    "image_score",
    "parse_classes",
    "select_class_ids",
]

# ----------------------------------------------------------------------- registry

#: Every format and what it honours (see :mod:`annotator.export.formats`); the filters
#: ``--classes``, ``--min-area``, ``--min-score`` and ``--partial`` go to every format.
EXPORTERS: dict[str, Exporter] = {
    "coco": Exporter(_coco.export, honours={"instances", "iscrowd", "images_root", "polygons", "polygon_tolerance",
                                           "zip"},
                     needs={"polygon_tolerance": "polygons"}),
    "cvat-masks": Exporter(_cvat_masks.export, honours={"instances"}),
    "fiftyone": Exporter(_fiftyone.export, honours={"instances", "dataset", "overwrite_dataset", "semantic",
                                                    "images_root"},
                         extras=(("fiftyone", "fiftyone"),), writes_folder=False),
    "hf": Exporter(_hf.export, honours={"instances", "hf_images"}),
    "labelstudio": Exporter(_labelstudio.export,
                            honours={"instances", "ls_from_name", "ls_to_name", "image_url_prefix", "model_version",
                                     "push"},
                            extras=(("label_studio_sdk", "labelstudio"),)),
    "masks": Exporter(_masks.export, honours={"confidence"}),
    "yolo": Exporter(_yolo.export, honours={"polygon_tolerance", "yolo_images", "val_fraction", "split_seed"},
                     needs={"split_seed": "val_fraction"}),
    "yolo-semantic": Exporter(_yolo.export_semantic, honours={"yolo_images", "val_fraction", "split_seed"},
                              needs={"split_seed": "val_fraction"}),
}


def exporter(format: str) -> Exporter:
    """The registry entry of ``format`` (UnknownFormatError listing the formats)."""
    if format not in EXPORTERS:
        raise UnknownFormatError(
            f"unknown export format {format!r}; available formats: {', '.join(sorted(EXPORTERS))}"
        )
    return EXPORTERS[format]


def prepare(output: str, format: str, options: ExportOptions) -> Completeness:
    """The checks of an export, before any work: the format, the options it honours,
    its optional dependencies, the run's completeness (:mod:`.completeness`)."""
    entry = exporter(format)
    check_options(format, options, EXPORTERS)
    entry.require_extras(format)
    try:
        return check_run(output, options.storage_options, partial=options.partial)
    except RunOutputError as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(str(e)) from None


def export(
    output: str, format: str, to: str | None = None, options: ExportOptions | None = None
) -> ExportResult:
    """Run the exporter ``format`` on the run folder ``output``.

    ``to`` defaults to ``OUTPUT/exports/FORMAT``. The export is built in a staging folder
    beside ``to`` and replaces it only when complete (:mod:`.staging`): ``to`` holds
    exactly this export, or, when it fails or is interrupted, the previous one.

    Raises:
        ExportError: a bad format, option, target or run (one line); IncompleteRunError
            for an incomplete run without ``options.partial``; MissingExtraError.
        OSError, KeyboardInterrupt: while writing (the previous export left intact).
    """
    options = options or ExportOptions()
    state = prepare(output, format, options)
    entry = EXPORTERS[format]
    target = to if to else join_url(output, EXPORTS_DIR, format)
    if not entry.writes_folder:
        result = _run(entry, output, target, options)
    else:
        staging = open_staging(target, format, options.storage_options, replaceable=not to)
        try:
            result = _run(entry, output, staging.path, options)
            staging.publish()
        except BaseException:
            staging.discard()
            raise
        result.paths = [staging.rewrite(p) for p in result.paths]
    if state.missing or state.writer:
        result.missing_rows, result.listed_images = state.missing, state.listed
    return result


def _run(entry: Exporter, output: str, to: str, options: ExportOptions) -> ExportResult:
    try:
        return entry(output, to, options)
    except RunOutputError as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(str(e)) from None
