"""The Hugging Face export, read back with datasets.load_from_disk."""

from __future__ import annotations

import numpy as np
import pytest

from annotator.export import ExportOptions, export
from annotator.export.__main__ import main
from annotator.records.encode import decode_mask
from tests.export.conftest import build_synthetic_output, build_toy_run_output


@pytest.mark.parametrize("hf_images", ["path", "bytes"])
def test_load_from_disk_gives_the_runs_labels_masks_and_scores(tmp_path, hf_images):
    datasets = pytest.importorskip("datasets")
    output, expected, class_names = build_toy_run_output(tmp_path)
    to = tmp_path / "hf"
    result = export(output, "hf", str(to), ExportOptions(hf_images=hf_images))
    ds = datasets.load_from_disk(str(to))
    assert len(ds) == len(expected) == result.counts["images"]
    assert ds.features["annotations"].feature["category_id"].names == class_names
    for row in ds:
        labels = expected[row["file_name"]]
        assert (np.asarray(row["label"]) == labels).all()
        if hf_images == "bytes":
            assert row["image"].size == (row["width"], row["height"]) == (labels.shape[1], labels.shape[0])
        else:
            assert row["image"].endswith(row["file_name"])
        got = np.zeros_like(labels)
        for a in row["annotations"]:
            got[decode_mask(a["segmentation"])] = a["category_id"]
            assert 0 <= a["score"] <= 1 and a["area"] == int(decode_mask(a["segmentation"]).sum())
        assert (got == labels).all()
        assert np.asarray(row["confidence"]).shape == labels.shape
    # the saved shards load with the generic Arrow builder too (no load_from_disk state)
    again = datasets.load_dataset("arrow", data_files=str(to / "*.arrow"), split="train")
    assert again.num_rows == len(ds) and again.features == ds.features
    if hf_images == "path":  # the documented way to open them
        opened = ds.cast_column("image", datasets.Image())
        assert opened[0]["image"].size == (opened[0]["width"], opened[0]["height"])


def test_filters_and_instances_reach_the_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    output, expected, class_names = build_synthetic_output(tmp_path)
    to = tmp_path / "hf"
    assert main([output, "--format", "hf", "--to", str(to), "--classes", "cat", "--instances", "--min-area", "2"]) == 0
    ds = datasets.load_from_disk(str(to))
    cat = class_names.index("cat")
    for row in ds:
        assert all(a["category_id"] == cat and a["area"] >= 2 for a in row["annotations"])
        assert set(np.unique(np.asarray(row["label"]))) <= {0, cat}
    assert len(ds) == len(expected)
