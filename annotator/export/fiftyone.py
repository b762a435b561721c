"""A persistent FiftyOne dataset (``--format fiftyone --dataset NAME``), for review in
the FiftyOne App (``fo.launch_app(fo.load_dataset(NAME))``).

One sample per ok image of the run (failed images are not samples: they are counted,
and listed in ``{to}/failed_images.tsv``, named in the export's summary), with these
fields:

- ``filepath``: the source image's uri as the run recorded it (a local path, or a bucket
  URL); ``metadata``: ``fo.ImageMetadata`` with the run's width and height (FiftyOne
  need not open the image); ``image_id``, ``file_name``: the run's ids;
- ``prelabels``: ``fo.Detections``, one ``fo.Detection`` per class mask (per object
  with ``--instances``): ``label`` = the class name, ``bounding_box`` = the tight box
  relative to the image ``[x/W, y/H, w/W, h/H]``, ``mask`` = the boolean mask cropped
  to that box (FiftyOne's instance-mask convention), ``confidence`` = the mask's score,
  ``area`` = its pixel count; or, with ``--semantic``, ``fo.Segmentation`` whose
  ``mask_path`` is a grayscale PNG label map (pixel = class index, 0 = background; 16-bit
  beyond 256 classes) named by the dataset's ``mask_targets``;
- ``confidence``: ``fo.Heatmap`` whose ``map_path`` is the run's 8-bit confidence map
  (255 * confidence, ``range=[0, 255]``);
- ``score``: the image's confidence (:func:`annotator.storage.results.image_score`),
  so that ``dataset.sort_by("score")`` shows the least confident pre-labels first.

The label-map and confidence PNGs are files under ``to`` (default
``OUTPUT/exports/fiftyone``; a local folder, as FiftyOne reads them from disk), which must
stay where they are while the dataset is used: one dataset's maps per folder (a ``--to``
holding the maps of another dataset that still exists is refused). The dataset is filled
under a temporary name and renamed to NAME only when complete (a failed export leaves no
half-filled dataset, and the previous dataset NAME as it was); it is persistent (it
outlives the command). An existing dataset NAME is refused unless ``overwrite_dataset``.

``--classes``, ``--min-area``, ``--min-score`` and ``--instances`` apply as for the
other formats. FiftyOne is an optional extra: ``pip install 'annotator[fiftyone]'``.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from annotator.export.common import ExportError, ExportOptions, ExportResult, ExportRun
from annotator.export.staging import final_location
from annotator.records import decode_mask, labels_from_annotations
from annotator.storage.redact import redact_text
from annotator.storage.results import image_score

__all__ = ["INSTALL_HINT", "export", "import_fiftyone"]

INSTALL_HINT = "pip install 'annotator[fiftyone]'"
#: samples added to the database per call
BATCH = 256
#: the label field's name
LABEL_FIELD = "prelabels"
#: in ``to``: the name of the dataset whose maps the folder holds
OWNER_NAME = "fiftyone_dataset.json"
#: run metadata copied into ``dataset.info``
INFO_KEYS = ("vocabulary", "model", "pretrained", "saliency", "protocol", "version", "config_hash")


def import_fiftyone():
    """``fiftyone`` (importing it reads ``FIFTYONE_DATABASE_URI`` and the other
    ``FIFTYONE_*`` settings); a missing package is an :class:`ExportError` (exit 2) that
    names the install command."""
    try:
        import fiftyone
    except ImportError as e:
        raise ExportError(f"the fiftyone export needs the fiftyone package ({e}): {INSTALL_HINT}") from None
    return fiftyone


def _final(path: str) -> str:
    """Where ``path`` (under the folder being written, maybe a staging folder) will be
    once the export is published, absolute: what the samples point at."""
    return os.path.abspath(final_location(path))


def _maps_owner(to: str) -> str | None:
    """The dataset whose maps the published ``--to`` holds (None: none)."""
    try:
        with open(os.path.join(final_location(to), OWNER_NAME), encoding="utf-8") as f:
            return json.load(f).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None


def _safe_stem(image_id: int, file_name: str) -> str:
    """A file name for an image's PNGs: unique by image id, readable by its stem."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(file_name).stem)[:80]
    return f"{image_id:08d}_{stem}.png"


def _label_map_png(labels_hw: np.ndarray, path: str, num_classes: int) -> None:
    """Grayscale PNG (8-bit up to 256 classes, else 16-bit): FiftyOne reads a mask file
    with OpenCV, which would expand a palette PNG into colours."""
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    Image.fromarray(labels_hw.astype(dtype)).save(path, format="PNG")


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
    """Write a run folder into the persistent FiftyOne dataset ``options.dataset``; the
    map PNGs go under the local folder ``to``."""
    name = options.dataset
    if not name:
        raise ExportError("--format fiftyone: expected --dataset NAME, got none")
    if "://" in final_location(to):
        raise ExportError(f"--format fiftyone: expected a local --to folder (FiftyOne reads the map files "
                          f"from disk), got {to!r}")
    if options.semantic and options.instances:
        raise ExportError("--instances is not honoured with --semantic: a label map holds no objects")
    run = ExportRun.open(output, options)
    fo = import_fiftyone()
    try:
        exists = fo.dataset_exists(name)
    except Exception as e:  # the database is unreachable: pymongo's errors, FiftyOne's own
        raise ExportError(f"cannot reach FiftyOne's database ({type(e).__name__}: {e}); check "
                          "FIFTYONE_DATABASE_URI") from None
    if exists and not options.overwrite_dataset:
        raise ExportError(f"FiftyOne dataset {name!r} already exists; choose another --dataset or pass "
                          "--overwrite-dataset to replace it")

    owner = _maps_owner(to)
    if owner and owner != name and fo.dataset_exists(owner):
        raise ExportError(f"--to {final_location(to)}: it holds the maps of FiftyOne dataset {owner!r}, which "
                          "still uses them; choose another --to for dataset " f"{name!r}")

    class_names, keep, split = run.class_names, run.keep, run.split
    tag = uuid.uuid4().hex[:8]
    conf_dir = os.path.join(to, "confidence")
    labels_dir = os.path.join(to, "labels")
    os.makedirs(conf_dir, exist_ok=True)
    if options.semantic:
        os.makedirs(labels_dir, exist_ok=True)
    with open(os.path.join(to, OWNER_NAME), "w", encoding="utf-8") as f:
        json.dump({"dataset": name}, f)
    failed_path = os.path.join(to, "failed_images.tsv")
    counts = {"images": 0, "annotations": 0, "failed_images": 0}
    files = 2  # failed_images.tsv, the owner file

    temp_name = f"{name}-annotator-partial-{tag}"
    dataset = fo.Dataset(temp_name)
    try:
        if options.semantic:
            dataset.mask_targets = {LABEL_FIELD: {i: n for i, n in enumerate(class_names)}}
        else:
            dataset.classes = {LABEL_FIELD: [class_names[i] for i in sorted(keep.class_ids)]}
        dataset.info = {k: run.metadata[k] for k in INFO_KEYS if k in run.metadata} | {
            "annotator_output": redact_text(output), "annotator_maps": _final(to)}
        batch = []
        with open(failed_path, "w", encoding="utf-8", newline="") as f_failed:
            failed = csv.writer(f_failed, delimiter="\t", lineterminator="\n")
            failed.writerow(["image_id", "file_name", "error"])
            for record in run.records():
                if record.status != "ok":
                    counts["failed_images"] += 1
                    failed.writerow([record.image_id, record.file_name, redact_text(record.error or "unknown")])
                    continue
                kept = keep.apply(split(record))
                png = _safe_stem(record.image_id, record.file_name)
                sample = fo.Sample(
                    filepath=record.uri,
                    metadata=fo.ImageMetadata(width=record.width, height=record.height),
                    image_id=record.image_id,
                    file_name=record.file_name,
                    score=image_score(record),
                )
                if options.semantic:
                    labels = labels_from_annotations(kept, (record.height, record.width))
                    label_path = os.path.join(labels_dir, png)
                    _label_map_png(labels, label_path, len(class_names))
                    files += 1
                    sample[LABEL_FIELD] = fo.Segmentation(mask_path=_final(label_path))
                else:
                    sample[LABEL_FIELD] = fo.Detections(
                        detections=[_detection(fo, a, record.width, record.height) for a in kept])
                if record.confidence_png:
                    conf_path = os.path.join(conf_dir, png)
                    with open(conf_path, "wb") as f:
                        f.write(record.confidence_png)
                    files += 1
                    sample["confidence"] = fo.Heatmap(map_path=_final(conf_path), range=[0, 255])
                batch.append(sample)
                counts["images"] += 1
                counts["annotations"] += len(kept)
                if len(batch) >= BATCH:
                    dataset.add_samples(batch, progress=False)
                    batch = []
        if batch:
            dataset.add_samples(batch, progress=False)
        dataset.info = dict(dataset.info, failed_images=counts["failed_images"])
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
    paths = [f"fiftyone dataset {name!r}", _final(to)]
    if counts["failed_images"]:
        paths.append(_final(failed_path))
    return ExportResult(format="fiftyone", paths=paths, counts=counts, files_written=files)
