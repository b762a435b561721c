"""Label Studio export: task layout, labeling config, URLs, the optional SDK."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from annotator.export import ExportOptions, export
from annotator.export import labelstudio as ls
from annotator.export.formats import MissingExtraError
from annotator.review.palette import class_colors, hex_color
from tests.export.helpers import load_json


def test_labeling_config_lists_classes_escaped():
    names = ["background", "cat", "<script>alert(1)</script>", 'a "quoted" & odd']
    text = ls.labeling_config(names, from_name="brush", to_name="img")
    assert "<script>" not in text
    root = ET.fromstring(text)
    assert root.tag == "View"
    image = root.find("Image")
    assert image.get("name") == "img" and image.get("value") == "$image"
    brush = root.find("BrushLabels")
    assert brush.get("name") == "brush" and brush.get("toName") == "img"
    labels = brush.findall("Label")
    assert [label.get("value") for label in labels] == names[1:]
    colors = class_colors(len(names))
    assert [label.get("background") for label in labels] == [hex_color(colors[i]) for i in range(1, len(names))]


def test_labeling_config_subset():
    root = ET.fromstring(ls.labeling_config(["background", "a", "b", "c"], class_ids=[3, 1]))
    assert [label.get("value") for label in root.iter("Label")] == ["a", "c"]


@pytest.mark.parametrize(
    "prefix, name, url",
    [
        ("/data/local-files/?d=", "a/b c#1.jpg", "/data/local-files/?d=a/b%20c%231.jpg"),
        ("https://host/img/", "x&y.png", "https://host/img/x%26y.png"),
        ("s3://bucket/pre/", "a/b c.jpg", "s3://bucket/pre/a/b c.jpg"),
        ("gs://bucket/", "q.jpg", "gs://bucket/q.jpg"),
        ("", "plain.jpg", "plain.jpg"),
    ],
)
def test_image_url(prefix, name, url):
    assert ls.image_url(name, prefix) == url


def test_missing_sdk_is_a_clear_error(monkeypatch, synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)
    monkeypatch.setitem(sys.modules, "label_studio_sdk.converter", None)
    monkeypatch.setitem(sys.modules, "label_studio_sdk.converter.brush", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'annotator\[labelstudio\]' \(or: pip install "
                                                 "'label-studio-sdk") as exc:
        export(output, "labelstudio", str(tmp_path / "ls"))
    assert not (tmp_path / "ls").exists()
    # the hint installs within the project's own pin (pyproject's labelstudio extra)
    import tomllib

    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    (pinned,) = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["labelstudio"]
    hinted = re.search(r"pip install '(label-studio-sdk[^']*)'", str(exc.value)).group(1)
    assert Requirement(hinted).specifier == Requirement(pinned).specifier


def test_tasks_round_trip(synthetic_output, tmp_path):
    pytest.importorskip("label_studio_sdk")
    output, expected, class_names = synthetic_output
    result = export(output, "labelstudio", str(tmp_path / "ls"), ExportOptions(ls_from_name="tag", ls_to_name="pic"))
    tasks_path, config_path = result.paths
    tasks = load_json(tasks_path)
    assert isinstance(tasks, list) and len(tasks) == 5 == result.counts["tasks"]
    assert result.counts["skipped_error_rows"] == 1
    name_to_id = {n: i for i, n in enumerate(class_names)}
    by_url = {}
    for task in tasks:
        assert set(task) == {"data", "predictions"}
        (pred,) = task["predictions"]
        assert pred["model_version"] == "annotator-0.1.0:toy/none+toy"
        assert 0.0 <= pred["score"] <= 1.0
        by_url[task["data"]["image"]] = pred
    for file_name, labels in expected.items():
        pred = by_url[ls.image_url(file_name, "/data/local-files/?d=")]
        painted = np.zeros_like(labels)
        for r in pred["result"]:
            assert r["type"] == "brushlabels" and r["from_name"] == "tag" and r["to_name"] == "pic"
            assert (r["original_height"], r["original_width"]) == labels.shape
            assert r["image_rotation"] == 0 and r["value"]["format"] == "rle"
            (name,) = r["value"]["brushlabels"]
            painted[ls.ls_rle_to_mask(r["value"]["rle"], labels.shape)] = name_to_id[name]
        np.testing.assert_array_equal(painted, labels, err_msg=file_name)
    ids = [r["id"] for p in by_url.values() for r in p["result"]]
    assert len(ids) == len(set(ids))
    config = ET.parse(config_path).getroot()
    assert config.find("BrushLabels").get("name") == "tag"


def test_prediction_score_is_area_weighted(synthetic_output, tmp_path):
    pytest.importorskip("label_studio_sdk")
    output, expected, _ = synthetic_output
    tasks = load_json(export(output, "labelstudio", str(tmp_path / "ls")).paths[0])
    score = {t["data"]["image"].rsplit("=", 1)[1]: t["predictions"][0]["score"] for t in tasks}
    labels = expected["a/cat.jpg"]
    n1, n2 = int((labels == 1).sum()), int((labels == 2).sum())
    assert score["a/cat.jpg"] == pytest.approx((0.9 * n1 + 0.8 * n2) / (n1 + n2), abs=1e-5)
    assert score["c.png"] == 0.0  # background only: first for review (storage.results.image_score)


def test_filters_and_model_version(synthetic_output, tmp_path):
    pytest.importorskip("label_studio_sdk")
    output, _, _ = synthetic_output
    result = export(
        output, "labelstudio", str(tmp_path / "ls"),
        ExportOptions(classes=("cat",), min_area=2, model_version="v7", image_url_prefix="s3://b/"),
    )
    tasks = load_json(result.paths[0])
    labels = {r["value"]["brushlabels"][0] for t in tasks for r in t["predictions"][0]["result"]}
    assert labels == {"cat"}
    assert {t["predictions"][0]["model_version"] for t in tasks} == {"v7"}
    assert tasks[0]["data"]["image"] == "s3://b/a/cat.jpg"
    assert result.counts["filtered_area"] == 1  # the one-pixel cat of e.png
    root = ET.parse(result.paths[1]).getroot()
    assert [label.get("value") for label in root.iter("Label")] == ["cat"]


def test_mask_rle_round_trip_edge_cases():
    pytest.importorskip("label_studio_sdk")
    rng = np.random.default_rng(0)
    for mask in (np.zeros((3, 5), bool), np.ones((4, 2), bool), rng.random((17, 23)) > 0.5):
        np.testing.assert_array_equal(ls.ls_rle_to_mask(ls.mask_to_ls_rle(mask), mask.shape), mask)
    with pytest.raises(ValueError, match="H\\*W\\*4"):
        ls.ls_rle_to_mask(ls.mask_to_ls_rle(np.ones((2, 2), bool)), (3, 3))
