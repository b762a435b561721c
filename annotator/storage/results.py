"""Reading a finished (or partial) run: its rows as records and its metadata.

``OUTPUT/annotations.parquet`` is read when the reducer has written it, else every
``OUTPUT/parts/part-*.parquet``; rows stream (memory does not grow with the dataset).
Used by the exporters and the review report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec

from annotator import records
from annotator.errors import AnnotatorError
from annotator.storage import parts
from annotator.storage.layout import ANNOTATIONS_NAME, join_url
from annotator.storage.redact import redact_text

__all__ = ["RunOutputError", "background_confidence", "image_score", "read_metadata", "resolve_inputs"]


class RunOutputError(AnnotatorError, ValueError):
    """A run folder that holds no rows, or rows whose metadata cannot be used."""




def resolve_inputs(output: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The Parquet files holding a run's rows.

    Returns ``[OUTPUT/annotations.parquet]`` when the reducer has written it, else the
    sorted ``OUTPUT/parts/part-*.parquet``. Raises :class:`ExportError` when neither exists.
    """

    fs, _ = fsspec.core.url_to_fs(output, **dict(storage_options or {}))
    merged = join_url(output, ANNOTATIONS_NAME)
    if fs.exists(merged):
        return [merged]
    found = parts.list_parts(output, storage_options=dict(storage_options) if storage_options else None)
    if not found:
        raise RunOutputError(
            f"no annotations found in {redact_text(output)!r}: expected "
            "annotations.parquet or parts/part-*.parquet (is this a run OUTPUT folder?)"
        )
    return found


def read_metadata(paths: list[str], storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run metadata (the ``annotator`` Parquet key) of the first input file.

    Validates the vocabulary: a list of strings whose index 0 is ``"background"``.
    """

    meta = parts.read_part_metadata(paths[0], storage_options=dict(storage_options) if storage_options else None)
    vocabulary = meta.get("vocabulary")
    if (
        not isinstance(vocabulary, list)
        or len(vocabulary) < 1
        or not all(isinstance(n, str) for n in vocabulary)
        or vocabulary[0] != "background"
    ):
        raise RunOutputError(
            "run metadata must hold 'vocabulary': a list of class names with index 0 = "
            f"'background'; got {vocabulary!r:.200} in {redact_text(paths[0])!r}"
        )
    return dict(meta)


def image_score(record: Any) -> float | None:
    """One confidence number per image, in [0, 1], for sorting a review queue (the
    Label Studio prediction ``score``, the FiftyOne sample's and the hf export's
    ``score``); None for an error row (no prediction).

    - An image with annotations: the area-weighted mean of its annotation scores (= the
      mean confidence over its labelled pixels): the model's confidence in what it drew.
    - An image labelled background only: **0.0**. Its prediction is "nothing here", and a
      reviewer who sorts by score, lowest first, must meet it first: an empty prediction
      is where a whole object is likeliest to be missed (a weak mask costs a correction, a
      missed object a whole annotation nobody is prompted to make). The mean of its
      confidence map would say the opposite: a saliency that found nothing makes the
      background look certain, which ranked these images as the most confident of the
      run. How certain the background is stays available as
      :func:`background_confidence` (the review report orders its "nothing found" list
      by it).
    """
    if getattr(record, "status", "ok") != "ok":
        return None
    annotations = list(record.annotations or [])
    total_area = sum(int(a.area) for a in annotations)
    if total_area > 0:
        return float(sum(float(a.score) * int(a.area) for a in annotations) / total_area)
    return 0.0


def background_confidence(record: Any) -> float | None:
    """How certain the background of a background-only image is: the mean of its
    confidence map (``confidence_png``), in [0, 1]; None for an error row, an image with
    annotations, or no confidence map."""
    if getattr(record, "status", "ok") != "ok" or list(record.annotations or []) or not record.confidence_png:
        return None
    conf = records.decode_confidence_png(record.confidence_png)
    return float(conf.mean()) if conf.size else None
