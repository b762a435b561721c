"""``annotator.storage.results``: the per-image score the exports sort by.

A background-only image scores 0.0, below every annotated image, so that a reviewer who
sorts the review queue by score, lowest first, meets the images where an object is
likeliest missed first; its background's certainty is ``background_confidence``. The
Label Studio and Hugging Face exports are read back here; the FiftyOne export's sample
``score`` is checked against ``image_score`` in tests/export/test_fiftyone.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotator import records
from annotator.export import ExportOptions, export
from annotator.inputs.listing import ImageRef
from annotator.storage import parts
from annotator.storage.results import background_confidence, image_score, resolve_inputs
from tests.export.conftest import build_synthetic_output

BACKGROUND_ONLY = "c.png"  # the synthetic output's background-only image (confidence 0.95 everywhere)


def _record(labels: np.ndarray, confidence: float) -> records.ImageRecord:
    ref = ImageRef(file_name="x.png", uri="/x.png", image_id=1)
    conf = np.full(labels.shape, confidence, np.float32)
    return records.ok_record(ref, labels, conf, ["background", "cat"])


def test_a_background_only_image_scores_zero_and_keeps_its_background_confidence():
    empty = _record(np.zeros((8, 8), np.int32), 0.97)
    assert image_score(empty) == 0.0
    assert background_confidence(empty) == pytest.approx(round(0.97 * 255) / 255)
    labels = np.zeros((8, 8), np.int32)
    labels[:2, :2] = 1
    annotated = _record(labels, 0.3)
    assert image_score(annotated) == pytest.approx(0.3, abs=1e-6)
    assert background_confidence(annotated) is None
    failed = records.error_record(ImageRef(file_name="y.png", uri="/y.png", image_id=2), "unreadable", "denied")
    assert image_score(failed) is None and background_confidence(failed) is None


def test_sorted_lowest_first_a_background_only_image_comes_first(tmp_path):
    output, _, _ = build_synthetic_output(tmp_path)
    rows = [r for r in parts.iter_records(resolve_inputs(output)) if r.status == "ok"]
    ranked = sorted(rows, key=image_score)
    assert ranked[0].file_name == BACKGROUND_ONLY
    assert all(image_score(r) > 0 for r in ranked[1:])


def test_the_labelstudio_export_puts_background_only_first(tmp_path):
    pytest.importorskip("label_studio_sdk")
    output, _, _ = build_synthetic_output(tmp_path)
    tasks = json.loads(open(export(output, "labelstudio", str(tmp_path / "ls")).paths[0], encoding="utf-8").read())
    score = {t["data"]["image"].rsplit("=", 1)[1]: t["predictions"][0]["score"] for t in tasks}
    assert score[BACKGROUND_ONLY] == 0.0
    assert min(score, key=score.get) == BACKGROUND_ONLY
    (empty,) = [t for t in tasks if t["data"]["image"].endswith(BACKGROUND_ONLY)]
    assert empty["predictions"][0]["result"] == []  # the prediction is "nothing here"


def test_the_hf_export_puts_background_only_first(tmp_path):
    datasets = pytest.importorskip("datasets")
    output, _, _ = build_synthetic_output(tmp_path)
    export(output, "hf", str(tmp_path / "hf"), ExportOptions(hf_images="path", partial=True))
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    score = {row["file_name"]: row["score"] for row in ds if row["score"] is not None}
    assert score[BACKGROUND_ONLY] == 0.0
    assert min(score, key=score.get) == BACKGROUND_ONLY
