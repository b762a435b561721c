"""A Hugging Face ``datasets.Dataset`` (``--format hf``): saved with ``save_to_disk`` to
``to``, read back with ``datasets.load_from_disk(to)``, pushable with
``ds.push_to_hub("user/name")`` (which embeds the images).

One row per ok image (error rows are skipped), with these features:

- ``image_id`` (int64), ``file_name`` (string), ``width``, ``height`` (int32);
- ``image``: ``Image()`` holding the source image's bytes (``--hf-images bytes``, the
  default: a self-contained dataset, what ``push_to_hub`` uploads), or, with
  ``--hf-images path``, a string: the source image's uri (nothing copied; ``datasets``
  embeds an ``Image()`` given a path when it saves, so a path stays a string here, and
  ``ds.cast_column("image", datasets.Image())`` opens the images from it lazily);
- ``label``: ``Image()``: the label map PNG (pixel = class index, 0 = background; what the
  masks export writes), after ``--classes``/``--min-area``/``--min-score``;
- ``confidence``: ``Image()``: the 8-bit confidence map (255 * confidence);
- ``score``: float32, the image's mean confidence over its annotations (None: no annotation);
- ``annotations``: a list of ``{category_id: ClassLabel(the vocabulary), bbox: [x, y, w, h],
  area, score, segmentation: {size: [h, w], counts: COCO compressed RLE}}``, one per class
  mask (per object with ``--instances``).

Rows are generated one at a time into ``datasets``' Arrow writer (a temporary cache
beside the target, removed at the end): memory does not grow with the number of images.
"""

from __future__ import annotations

import shutil
import tempfile

from annotator.export.common import ExportOptions, ExportResult, ExportRun
from annotator.export.formats import MissingExtraError
from annotator.export.masks import label_map_png
from annotator.records import labels_from_annotations
from annotator.storage.results import image_score

__all__ = ["export", "features"]


def features(class_names: list[str], hf_images: str = "bytes"):
    """The dataset's ``datasets.Features`` (see the module docstring)."""
    from datasets import ClassLabel, Features, Image, List, Value

    return Features({
        "image_id": Value("int64"),
        "file_name": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
        "image": Image() if hf_images == "bytes" else Value("string"),
        "label": Image(),
        "confidence": Image(),
        "score": Value("float32"),
        "annotations": List({
            "category_id": ClassLabel(names=list(class_names)),
            "bbox": List(Value("float32"), length=4),
            "area": Value("int64"),
            "score": Value("float32"),
            "segmentation": {"size": List(Value("int32"), length=2), "counts": Value("string")},
        }),
    })


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write a run folder as a ``datasets.Dataset`` saved to disk at ``to``."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a core dependency
        raise MissingExtraError("the hf export needs the datasets package: pip install datasets") from e
    run = ExportRun.open(output, options)
    metadata, class_names, keep, split, so = run.metadata, run.class_names, run.keep, run.split, run.storage_options
    image_so = dict(options.image_storage_options) if options.image_storage_options else so
    counts = {"images": 0, "annotations": 0, "skipped_error_rows": 0, "images_missing": 0}

    def rows():
        import fsspec

        for record in run.records():
            if record.status != "ok":
                counts["skipped_error_rows"] += 1
                continue
            kept = keep.apply(split(record))
            labels = labels_from_annotations(kept, (record.height, record.width))
            if options.hf_images == "bytes":
                try:
                    with fsspec.open(record.uri, "rb", **(image_so or {})) as f:
                        image = {"bytes": f.read(), "path": record.file_name}
                except FileNotFoundError:
                    counts["images_missing"] += 1
                    image = None
            else:
                image = record.uri
            counts["images"] += 1
            counts["annotations"] += len(kept)
            yield {
                "image_id": record.image_id, "file_name": record.file_name,
                "width": record.width, "height": record.height, "image": image,
                "label": {"bytes": label_map_png(labels, len(class_names)), "path": None},
                "confidence": {"bytes": record.confidence_png, "path": None} if record.confidence_png else None,
                "score": image_score(record),
                "annotations": [{"category_id": a.category_id, "bbox": list(a.bbox_xywh), "area": a.area,
                                 "score": a.score, "segmentation": dict(a.segmentation)} for a in kept],
            }

    cache = tempfile.mkdtemp(prefix="annotator-hf-")
    # datasets' own progress bars would come between the summary (or the one error line)
    # and the user, as no other format prints them.
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        try:
            ds = datasets.Dataset.from_generator(rows, features=features(class_names, options.hf_images),
                                                 cache_dir=cache, writer_batch_size=256)
        except datasets.exceptions.DatasetGenerationError as e:
            if isinstance(e.__cause__, OSError):  # a full disk: the OSError itself, not datasets' wrapper
                raise e.__cause__ from None
            raise
        ds.info.description = (f"Pre-labels by annotator {metadata.get('version', '')}: model "
                               f"{metadata.get('model')}, saliency {metadata.get('saliency')}, protocol "
                               f"{metadata.get('protocol')}, config {metadata.get('config_hash')}")
        ds.save_to_disk(to, storage_options=so)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()
    counts.update(run.counts())
    return ExportResult(format="hf", paths=[to], counts=counts, files_written=None)
