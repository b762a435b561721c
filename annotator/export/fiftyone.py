"""A persistent FiftyOne dataset (``--format fiftyone --dataset NAME``), for review in
the FiftyOne App (``fo.launch_app(fo.load_dataset(NAME))``).

One sample per ok image of the run, with these fields:

- ``filepath``: the source image as the run read it (a local path), or, with
  ``--images-root FOLDER``, ``FOLDER/file_name`` (a local copy or mount of the source:
  open-source FiftyOne reads media from local paths only, and turns ``s3://b/k`` into
  ``$PWD/s3:/b/k``; a bucket URL is kept as it is only by a FiftyOne whose storage layer
  keeps it, such as FiftyOne Enterprise, and refused otherwise, naming
  ``--images-root``); ``metadata``: ``fo.ImageMetadata`` with the run's width and height
  (FiftyOne need not open the image); ``image_id``, ``file_name``: the run's ids;
- ``prelabels``: ``fo.Detections``, one ``fo.Detection`` per class mask (per object
  with ``--instances``): ``label`` = the class name, ``bounding_box`` = the tight box
  relative to the image ``[x/W, y/H, w/W, h/H]``, ``mask`` = the boolean mask cropped
  to that box (FiftyOne's instance-mask convention), ``confidence`` = the mask's score,
  ``area`` = its pixel count; or, with ``--semantic``, ``fo.Segmentation`` whose ``mask``
  is the (H, W) label map (pixel = class index, 0 = background; uint8, uint16 beyond
  256 classes), named by the dataset's ``mask_targets``;
- ``confidence``: ``fo.Heatmap`` whose ``map`` is the run's 8-bit confidence map
  (round(255 * confidence), ``range=[0, 255]``);
- ``score``: the image's confidence (:func:`annotator.storage.results.image_score`),
  so that ``dataset.sort_by("score")`` shows the least confident pre-labels first (the
  background-only images, scored 0, before all others).

Failed images are not samples: they are counted (``failed_images``), named in the
export's warnings and in ``dataset.info["failed_images"]`` (the first
:data:`MAX_LISTED_FAILED`).

The maps live in the database with the samples (FiftyOne compresses arrays), so the
dataset holds everything, whatever the OUTPUT's storage, and nothing is written to
files. A sample is a MongoDB document (16 MB at most): a confidence map that would take
more than :data:`MAX_MAP_BYTES` compressed is left out (counted in
``heatmaps_omitted``, with a warning); the labels are always kept.

The dataset is filled under a temporary name and renamed to NAME only when complete (a
failed or interrupted export leaves no half-filled dataset, and a previous dataset NAME
as it was); it is persistent (it outlives the command). An existing dataset NAME is
refused unless ``overwrite_dataset``. ``--classes``, ``--min-area``, ``--min-score`` and
``--instances`` apply as for the other formats. FiftyOne is an optional extra:
``pip install 'annotator[fiftyone]'``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

from annotator.export.common import ExportError, ExportOptions, ExportResult, ExportRun
from annotator.records import decode_confidence_png, decode_mask, labels_from_annotations
from annotator.storage.redact import redact_text
from annotator.storage.results import image_score

__all__ = ["INSTALL_HINT", "LABEL_FIELD", "MAX_MAP_BYTES", "FiftyOneResult", "export", "import_fiftyone"]

INSTALL_HINT = "pip install 'annotator[fiftyone]'"
#: samples added to the database per call
BATCH = 256
#: the label field's name
LABEL_FIELD = "prelabels"
#: run metadata copied into ``dataset.info``
INFO_KEYS = ("vocabulary", "model", "pretrained", "saliency", "protocol", "version", "config_hash")
#: a compressed confidence map larger than this is left out of its sample
MAX_MAP_BYTES = 8 * 1024 * 1024
#: failed images named in ``dataset.info`` and in the warning
MAX_LISTED_FAILED = 1000
MAX_WARNED_FAILED = 10


def import_fiftyone():
    """``fiftyone`` (importing it reads ``FIFTYONE_DATABASE_URI`` and the other
    ``FIFTYONE_*`` settings); a missing package is an :class:`ExportError` (exit 2) that
    names the install command."""
    try:
        import fiftyone
    except ImportError as e:
        raise ExportError(f"the fiftyone export needs the fiftyone package ({e}): {INSTALL_HINT}") from None
    return fiftyone


@dataclass
class FiftyOneResult(ExportResult):
    """An export into a database: the summary names the dataset, not files."""

    dataset: str = ""

    def headline(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"{self.format}: dataset {self.dataset!r} holds {self.counts.get('images', 0)} samples ({counts})"


def _filepath(record, images_root: str) -> str:
    """The sample's ``filepath`` (see the module docstring)."""
    from fiftyone.core.storage import normalize_path

    if images_root:
        return os.path.abspath(os.path.join(os.path.expanduser(images_root), record.file_name))
    uri = record.uri
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://"):])
    if "://" in uri and normalize_path(uri) != uri:
        raise ExportError(f"image {redact_text(uri)!r} is not on a local disk, and this FiftyOne reads media from "
                          "local paths only; copy or mount the source locally and pass --images-root FOLDER "
                          "(the images' file names are joined to it)")
    return os.path.abspath(uri) if "://" not in uri else uri


def _detection(fo, annotation, width: int, height: int):
    """One ``fo.Detection``: relative box, mask cropped to the box, confidence."""
    mask = decode_mask(annotation.segmentation)
    x, y, w, h = (int(round(v)) for v in annotation.bbox_xywh)
    return fo.Detection(
        label=annotation.category_name,
        bounding_box=[x / width, y / height, w / width, h / height],
        mask=np.ascontiguousarray(mask[y : y + h, x : x + w]),
        confidence=float(annotation.score),
        area=int(annotation.area),
    )


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write a run folder into the persistent FiftyOne dataset ``options.dataset``
    (``to`` is not used: nothing is written to files)."""
    name = options.dataset
    if not name:
        raise ExportError("--format fiftyone: expected --dataset NAME, got none")
    if options.semantic and options.instances:
        raise ExportError("--instances is not honoured with --semantic: a label map holds no objects")
    run = ExportRun.open(output, options)
    fo = import_fiftyone()
    from fiftyone.core.utils import serialize_numpy_array

    try:
        exists = fo.dataset_exists(name)
    except Exception as e:  # the database is unreachable: pymongo's errors, FiftyOne's own
        raise ExportError(f"cannot reach FiftyOne's database ({type(e).__name__}: {e}); check "
                          "FIFTYONE_DATABASE_URI") from None
    if exists and not options.overwrite_dataset:
        raise ExportError(f"FiftyOne dataset {name!r} already exists; choose another --dataset or pass "
                          "--overwrite-dataset to replace it")

    class_names, keep, split = run.class_names, run.keep, run.split
    label_dtype = np.uint8 if len(class_names) <= 256 else np.uint16
    counts = {"images": 0, "annotations": 0, "failed_images": 0, "heatmaps_omitted": 0}
    failed: list[dict] = []
    dataset = fo.Dataset(f"{name}-annotator-partial-{uuid.uuid4().hex[:8]}")
    try:
        if options.semantic:
            dataset.mask_targets = {LABEL_FIELD: dict(enumerate(class_names))}
        else:
            dataset.classes = {LABEL_FIELD: [class_names[i] for i in sorted(keep.class_ids)]}
        batch = []
        for record in run.records():
            if record.status != "ok":
                counts["failed_images"] += 1
                if len(failed) < MAX_LISTED_FAILED:
                    failed.append({"image_id": record.image_id, "file_name": record.file_name,
                                   "error": redact_text(record.error or "unknown")})
                continue
            kept = keep.apply(split(record))
            sample = fo.Sample(
                filepath=_filepath(record, options.images_root),
                metadata=fo.ImageMetadata(width=record.width, height=record.height),
                image_id=record.image_id,
                file_name=record.file_name,
                score=image_score(record),
            )
            if options.semantic:
                labels = labels_from_annotations(kept, (record.height, record.width))
                sample[LABEL_FIELD] = fo.Segmentation(mask=labels.astype(label_dtype))
            else:
                sample[LABEL_FIELD] = fo.Detections(
                    detections=[_detection(fo, a, record.width, record.height) for a in kept])
            if record.confidence_png:
                heat = np.rint(decode_confidence_png(record.confidence_png) * 255).astype(np.uint8)
                if len(serialize_numpy_array(heat)) > MAX_MAP_BYTES:
                    counts["heatmaps_omitted"] += 1
                else:
                    sample["confidence"] = fo.Heatmap(map=heat, range=[0, 255])
            batch.append(sample)
            counts["images"] += 1
            counts["annotations"] += len(kept)
            if len(batch) >= BATCH:
                dataset.add_samples(batch, progress=False)
                batch = []
        if batch:
            dataset.add_samples(batch, progress=False)
        dataset.info = {k: run.metadata[k] for k in INFO_KEYS if k in run.metadata} | {
            "annotator_output": redact_text(output), "failed_images": failed,
            "failed_images_count": counts["failed_images"]}
        if fo.dataset_exists(name):
            if not options.overwrite_dataset:  # created while we ran
                raise ExportError(f"FiftyOne dataset {name!r} was created while the export ran; "
                                  "pass --overwrite-dataset to replace it")
            fo.delete_dataset(name)
        dataset.name = name
        dataset.persistent = True
        dataset.save()
    except BaseException:
        dataset.delete()
        raise
    counts.update(run.counts())
    warnings = []
    if failed:
        shown = ", ".join(f"{f['file_name']} ({f['error'].split(':', 1)[0]})" for f in failed[:MAX_WARNED_FAILED])
        more = counts["failed_images"] - min(len(failed), MAX_WARNED_FAILED)
        warnings.append(f"{counts['failed_images']} failed images are not samples: {shown}"
                        + (f" and {more} more (dataset.info['failed_images'])" if more else ""))
    if counts["heatmaps_omitted"]:
        warnings.append(f"{counts['heatmaps_omitted']} confidence maps were left out: each compresses to more "
                        f"than {MAX_MAP_BYTES // 2**20} MiB, too large for a FiftyOne sample")
    return FiftyOneResult(format="fiftyone", paths=[f"fiftyone dataset {name!r}"], counts=counts, files_written=0,
                          warnings=warnings, dataset=name)
