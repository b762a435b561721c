"""COCO export: the CVAT / FiftyOne profile, options, streaming, zip."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from annotator import records
from annotator.export import (
    ExportError,
    ExportOptions,
    UnknownClassError,
    export,
)
from annotator.export.coco import JSON_RELATIVE_PATH, write_coco_json
from annotator.storage import parts
from tests.export.helpers import coco_labels, load_json


def _export(output: str, tmp_path: Path, **options) -> tuple[dict, object]:
    result = export(output, "coco", str(tmp_path / "coco"), ExportOptions(**options))
    return load_json(result.paths[0]), result


def test_round_trip_labels_and_profile(synthetic_output, tmp_path):
    output, expected, class_names = synthetic_output
    doc, result = _export(output, tmp_path)
    assert result.paths[0] == str(tmp_path / "coco" / JSON_RELATIVE_PATH)
    # images: only ok rows, id = image_id, sizes present
    assert [img["id"] for img in doc["images"]] == [1, 2, 3, 4, 5]
    assert all({"id", "file_name", "width", "height"} <= set(img) for img in doc["images"])
    assert result.counts["images"] == 5 and result.counts["skipped_error_rows"] == 1
    assert "broken.jpg" not in {img["file_name"] for img in doc["images"]}
    # categories from 1, background absent
    assert doc["categories"] == [
        {"id": i, "name": class_names[i], "supercategory": ""} for i in range(1, len(class_names))
    ]
    # annotations: sequential ids, iscrowd always present, tight bbox, area = pixels
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert len(anns) == result.counts["annotations"] == 8
    for a in anns:
        assert a["iscrowd"] == 0 and 0.0 <= a["score"] <= 1.0
        assert isinstance(a["segmentation"]["counts"], str)
        mask = records.decode_mask(a["segmentation"])
        assert a["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    # masks paint back to the label maps exactly
    got = coco_labels(doc)
    assert set(got) == set(expected)
    for name, labels in expected.items():
        np.testing.assert_array_equal(got[name], labels, err_msg=name)


def test_scores_are_the_mean_confidence(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, _ = _export(output, tmp_path)
    by_key = {(a["image_id"], a["category_id"]): a["score"] for a in doc["annotations"]}
    assert by_key[(1, 1)] == pytest.approx(0.9, abs=1e-6)
    assert by_key[(4, 4)] == pytest.approx(0.35, abs=1e-6)


def test_pycocotools_reads_it(synthetic_output, tmp_path):
    output, expected, _ = synthetic_output
    _, result = _export(output, tmp_path)
    coco = COCO(result.paths[0])
    for img in coco.loadImgs(coco.getImgIds()):
        labels = np.zeros((img["height"], img["width"]), np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            labels[coco.annToMask(ann).astype(bool)] = ann["category_id"]
        np.testing.assert_array_equal(labels, expected[img["file_name"]])


def test_iscrowd_option(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, _ = _export(output, tmp_path, iscrowd=1)
    assert {a["iscrowd"] for a in doc["annotations"]} == {1}


def test_min_area_drops_the_one_pixel_mask(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, result = _export(output, tmp_path, min_area=2)
    assert (5, 1) not in {(a["image_id"], a["category_id"]) for a in doc["annotations"]}
    assert result.counts["filtered_area"] == 1
    assert len(doc["annotations"]) == 7
    assert len(doc["images"]) == 5  # images stay even when their annotations are filtered


def test_min_score(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, result = _export(output, tmp_path, min_score=0.5)
    assert all(a["score"] >= 0.5 for a in doc["annotations"])
    assert result.counts["filtered_score"] == 3  # 0.3, 0.35, 0.2


def test_classes_subset_keeps_vocabulary_ids(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, result = _export(output, tmp_path, classes=("dog", "traffic light"))
    assert [c["id"] for c in doc["categories"]] == [2, 4]
    assert {a["category_id"] for a in doc["annotations"]} == {2, 4}
    assert result.counts["filtered_class"] == 4


def test_unknown_class_lists_valid_names(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    with pytest.raises(UnknownClassError, match=r"unknown class name.*'horse'.*valid names.*'cat'"):
        _export(output, tmp_path, classes=("cat", "horse"))
    with pytest.raises(UnknownClassError, match="background"):
        _export(output, tmp_path, classes=("background",))
    assert not (tmp_path / "coco").exists()  # failed before writing


@pytest.mark.parametrize("bad", [{"iscrowd": 2}, {"min_area": -1}, {"min_score": 1.5}])
def test_bad_options(bad):
    with pytest.raises(ExportError):
        ExportOptions(**bad)


def test_images_root_prefix(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, _ = _export(output, tmp_path, images_root="https://host/data/")
    assert doc["images"][0]["file_name"] == "https://host/data/a/cat.jpg"


def test_zip_layout_for_cvat(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    _, result = _export(output, tmp_path, zip=True)
    json_path, zip_path, _ = result.paths
    assert zip_path == str(tmp_path / "coco" / "coco.zip")
    with zipfile.ZipFile(zip_path) as z:
        assert z.namelist() == [JSON_RELATIVE_PATH]
        assert z.read(JSON_RELATIVE_PATH) == Path(json_path).read_bytes()


def test_prefers_merged_annotations_parquet(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    rows = list(parts.iter_records(parts.list_parts(output)))
    meta = parts.read_part_metadata(parts.list_parts(output)[0])
    parts.write_part(rows[:2], str(Path(output) / "annotations.parquet"), meta)
    doc, _ = _export(output, tmp_path)
    assert [img["id"] for img in doc["images"]] == [1, 2]


def test_missing_output_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="annotations.parquet or parts"):
        export(str(tmp_path / "nothing"), "coco")


def test_default_target_folder(synthetic_output):
    output, _, _ = synthetic_output
    result = export(output, "coco")
    assert result.paths[0] == f"{output}/exports/coco/{JSON_RELATIVE_PATH}"


def test_write_coco_json_streams_images(synthetic_output):
    """Each image is in the output before the next row is even read."""
    output, _, class_names = synthetic_output
    fp = io.StringIO()
    seen: list[int] = []

    def rows():
        for row in parts.iter_rows(parts.list_parts(output)):
            if seen:
                assert f'"id": {seen[-1]},' in fp.getvalue()
            if row["status"] == "ok":
                seen.append(row["image_id"])
            yield row

    counts = write_coco_json(rows(), class_names, fp)
    assert counts["images"] == 5 and seen == [1, 2, 3, 4, 5]
    assert json.loads(fp.getvalue())["images"][-1]["id"] == 5


def test_write_coco_json_binary_file_and_records(synthetic_output):
    output, expected, class_names = synthetic_output
    buf = io.BytesIO()
    write_coco_json(parts.iter_records(parts.list_parts(output)), class_names, buf, classes=["cat"])
    doc = json.loads(buf.getvalue().decode("utf-8"))
    assert [c["name"] for c in doc["categories"]] == ["cat"]
    got = coco_labels(doc)
    np.testing.assert_array_equal(got["a/cat.jpg"], np.where(expected["a/cat.jpg"] == 1, 1, 0))


def test_write_coco_json_empty_input():
    fp = io.StringIO()
    counts = write_coco_json(iter([]), ["background", "cat"], fp)
    doc = json.loads(fp.getvalue())
    assert doc["images"] == [] and doc["annotations"] == [] and counts["images"] == 0


def test_write_coco_json_rejects_a_vocabulary_without_background():
    with pytest.raises(ExportError, match="background"):
        write_coco_json(iter([]), ["cat", "dog"], io.StringIO())


def test_matches_the_coco_schema_when_present(synthetic_output, tmp_path):
    schema_path = Path(__file__).resolve().parents[2] / "schemas" / "coco.schema.json"
    if not schema_path.exists():
        pytest.skip("schemas/coco.schema.json not written yet")
    jsonschema = pytest.importorskip("jsonschema")
    output, _, _ = synthetic_output
    doc, _ = _export(output, tmp_path)
    jsonschema.validate(doc, json.loads(schema_path.read_text()))


def test_cvat_labels_file(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    _, result = _export(output, tmp_path, classes=("traffic light", "cat"))
    labels = load_json(result.paths[-1])
    assert result.paths[-1].endswith("cvat_labels.json")
    assert labels == [
        {"name": "cat", "color": "#800000", "type": "any", "attributes": []},
        {"name": "traffic light", "color": "#000080", "type": "any", "attributes": []},
    ]


@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_instances_as_polygons_of_a_real_run_read_by_pycocotools(tmp_path, tolerance):
    """--instances --polygons on a toy-model run: pycocotools' annToMask of each object,
    unioned per image and class, gives the run's class masks back (exactly at tolerance
    0); one annotation per 8-connected component; the summary's IoU says how close."""
    import cv2

    from annotator.records.encode import decode_mask
    from tests.export.conftest import build_toy_run_output

    output, _, _ = build_toy_run_output(tmp_path)
    _, result = _export(output, tmp_path, instances=True, polygons=True, polygon_tolerance=tolerance)
    coco = COCO(result.paths[0])
    runs = {r.image_id: r for r in parts.iter_records(parts.list_parts(output)) if r.status == "ok"}
    components = 0
    for image_id, rec in runs.items():
        for a in rec.annotations:
            mask = decode_mask(a.segmentation)
            n, _, _, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            components += n - 1
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[a.category_id]))
            assert len(anns) == n - 1 and all(isinstance(x["segmentation"], list) for x in anns)
            union = np.zeros_like(mask, dtype=bool)
            for x in anns:
                union |= coco.annToMask(x).astype(bool)
            iou = (union & mask).sum() / (union | mask).sum()
            assert iou == 1.0 if tolerance == 0 else iou > 0.9
            assert sum(x["area"] for x in anns) == a.area  # areas are the instances' pixel counts
    assert result.counts["annotations"] == result.counts["instances"] == components
    assert result.counts["polygon_masks"] == components
    assert result.counts["polygon_iou_min"] <= result.counts["polygon_iou_mean"] <= 1.0
    if tolerance == 0:
        assert result.counts["polygon_iou_min"] == 1.0


def test_instances_apply_min_area_per_object_and_only_to_thing_classes(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    doc, result = _export(output, tmp_path, instances=True, instance_classes=("cat",), min_area=2)
    cats = [a for a in doc["annotations"] if a["category_id"] == 1]
    assert all(a["area"] >= 2 for a in cats)
    assert result.counts["instances"] == 3  # a/cat.jpg, missing.jpg, e.png's one-pixel cat (then filtered)
    assert result.counts["filtered_area"] >= 1
    with pytest.raises(ExportError, match="instances"):
        ExportOptions(instance_classes=("cat",))
