from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from annotator.evaluation.gt import (
    COCOInstancesGT,
    GroundTruthError,
    HFColumnGT,
    VOCPngGT,
    label_map_from_value,
    load_gt,
)

VOC_NAMES = ["background", "aeroplane", "bicycle", "bird"]


def _palette_png(labels: np.ndarray, path) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 251 + [224, 224, 192]
    img.putpalette(palette)
    img.save(path)


LABELS = np.array([[0, 1, 1], [255, 3, 0]], np.uint8)


def test_voc_png_round_trip(tmp_path):
    (tmp_path / "sub").mkdir()
    _palette_png(LABELS, tmp_path / "2007_000032.png")
    _palette_png(LABELS[::-1], tmp_path / "sub" / "x.png")
    gt = load_gt(str(tmp_path), None, VOC_NAMES)
    assert isinstance(gt, VOCPngGT) and gt.format == "voc-png"
    out = gt.labels_for("2007_000032.jpg", (2, 3))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, LABELS)  # palette indices, not colours
    np.testing.assert_array_equal(gt.labels_for("sub/x.jpg"), LABELS[::-1])  # relative path kept
    np.testing.assert_array_equal(gt.labels_for("JPEGImages/2007_000032.jpg"), LABELS)  # stem fallback
    assert gt.labels_for("missing.jpg") is None


def test_voc_png_size_mismatch_and_rgb(tmp_path):
    _palette_png(LABELS, tmp_path / "a.png")
    Image.new("RGB", (3, 2), (128, 0, 0)).save(tmp_path / "rgb.png")
    gt = VOCPngGT(str(tmp_path), VOC_NAMES)
    with pytest.raises(GroundTruthError, match=r"\(2, 3\)"):
        gt.labels_for("a.jpg", (3, 2))
    with pytest.raises(GroundTruthError, match="mode 'RGB'"):
        gt.labels_for("rgb.jpg")
    with pytest.raises(GroundTruthError, match="folder"):
        VOCPngGT(str(tmp_path / "nope"), VOC_NAMES)


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def _coco_json(tmp_path) -> str:
    h, w = 40, 50
    big_a = np.zeros((h, w), bool)
    big_a[0:30, 0:30] = True  # 900 px "cat"
    big_b = np.zeros((h, w), bool)
    big_b[20:40, 20:50] = True  # 600 px "hot dog", overlaps big_a in [20:30, 20:30]
    data = {
        "images": [
            {"id": 10, "file_name": "val/big.jpg", "height": h, "width": w},
            {"id": 11, "file_name": "small.jpg", "height": h, "width": w},
            {"id": 12, "file_name": "empty.jpg", "height": h, "width": w},
        ],
        "categories": [
            {"id": 17, "name": "cat"},
            {"id": 58, "name": "hot_dog"},
            {"id": 90, "name": "toothbrush"},
            {"id": 91, "name": "Traffic-Light"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 17,
                "segmentation": _rle(big_a),
                "iscrowd": 1,
                "area": 900,
                "bbox": [0, 0, 30, 30],
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 58,
                "segmentation": [[20, 20, 50, 20, 50, 40, 20, 40]],
                "iscrowd": 0,
                "area": 600,
                "bbox": [20, 20, 30, 20],
            },
            {
                "id": 3,
                "image_id": 10,
                "category_id": 90,
                "segmentation": [[45, 0, 50, 0, 50, 5, 45, 5]],
                "iscrowd": 0,
                "area": 25,
                "bbox": [45, 0, 5, 5],
            },
            {
                "id": 4,
                "image_id": 11,
                "category_id": 17,
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
                "iscrowd": 0,
                "area": 100,
                "bbox": [0, 0, 10, 10],
            },
            {
                "id": 5,
                "image_id": 10,
                "category_id": 91,
                "segmentation": [[0, 35, 5, 35, 5, 40, 0, 40]],
                "iscrowd": 0,
                "area": 25,
                "bbox": [0, 35, 5, 5],
            },
        ],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    return str(path)


COCO_NAMES = ["background", "cat", "hot dog", "traffic light"]


def test_coco_first_come_painting_and_name_matching(tmp_path):
    gt = load_gt(_coco_json(tmp_path), None, COCO_NAMES)
    assert isinstance(gt, COCOInstancesGT) and gt.format == "coco"
    assert gt.category_to_class == {
        17: 1,
        58: 2,
        91: 3,
    }  # hot_dog -> "hot dog", Traffic-Light -> "traffic light"
    assert gt.unmatched_categories == ["toothbrush"]
    labels = gt.labels_for("val/big.jpg", (40, 50))
    assert labels.shape == (40, 50) and labels.dtype == np.uint8
    assert (labels[0:30, 0:30] == 1).all()  # the crowd "cat" came first and keeps the overlap
    assert (labels[30:40, 20:50] == 2).all() and (labels[20:30, 30:50] == 2).all()
    assert labels[0, 49] == 0  # the unmatched toothbrush stays background
    assert (labels[35:40, 0:5] == 3).all()
    assert np.count_nonzero(labels) == 900 + 600 - 100 + 25


def test_coco_order_decides_overlap(tmp_path):
    path = _coco_json(tmp_path)
    with open(path) as f:
        data = json.load(f)
    data["annotations"] = [data["annotations"][1], data["annotations"][0]]
    with open(path, "w") as f:
        json.dump(data, f)
    labels = COCOInstancesGT(path, COCO_NAMES).labels_for("big.jpg")
    assert (labels[20:30, 20:30] == 2).all()  # now the hot dog came first


def test_coco_drops_images_under_1000_foreground_pixels(tmp_path):
    gt = COCOInstancesGT(_coco_json(tmp_path), COCO_NAMES)
    assert gt.labels_for("small.jpg") is None  # 100 px
    assert gt.labels_for("empty.jpg") is None  # no annotations
    assert gt.labels_for("unknown.jpg") is None
    keep = COCOInstancesGT(_coco_json(tmp_path), COCO_NAMES, min_foreground_pixels=100)
    assert np.count_nonzero(keep.labels_for("small.jpg")) == 100


def test_coco_basename_fallback_and_size_check(tmp_path):
    gt = COCOInstancesGT(_coco_json(tmp_path), COCO_NAMES)
    assert gt.image_id_for("big.jpg") == 10
    assert gt.image_id_for("some/dir/big.jpg") == 10
    with pytest.raises(GroundTruthError, match=r"\(50, 40\)"):
        gt.labels_for("val/big.jpg", (50, 40))


def test_coco_synonyms_and_no_match(tmp_path):
    path = _coco_json(tmp_path)
    gt = COCOInstancesGT(path, ["background", "kitty"], synonyms=[[], ["cat"]])
    assert gt.category_to_class == {17: 1}
    with pytest.raises(GroundTruthError, match="matches"):
        COCOInstancesGT(path, ["background", "zebra"])


def test_coco_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GroundTruthError, match="JSON"):
        load_gt(str(tmp_path / "bad.json"), "coco", COCO_NAMES)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(GroundTruthError, match="images"):
        load_gt(str(tmp_path / "obj.json"), "coco", COCO_NAMES)


def test_load_gt_detection_and_errors(tmp_path):
    with pytest.raises(GroundTruthError, match="none of these"):
        load_gt(str(tmp_path / "nothing"), None, VOC_NAMES)
    with pytest.raises(GroundTruthError, match="voc-png"):
        load_gt(str(tmp_path), "masks", VOC_NAMES)
    with pytest.raises(GroundTruthError, match="at most 255"):
        load_gt(str(tmp_path), "voc-png", [f"c{i}" for i in range(256)])


def test_hf_column():
    gt = load_gt("hf-column:label", None, VOC_NAMES)
    assert isinstance(gt, HFColumnGT) and gt.column == "label"
    with pytest.raises(GroundTruthError, match="column 'label'"):
        gt.labels_for("00000001.jpg")
    buf = io.BytesIO()
    Image.fromarray(LABELS, mode="L").save(buf, format="PNG")
    values = {"a": {"bytes": buf.getvalue(), "path": None}, "b": LABELS.astype(np.int64), "c": None}
    gt.set_lookup(values.get)
    np.testing.assert_array_equal(gt.labels_for("a", (2, 3)), LABELS)
    np.testing.assert_array_equal(gt.labels_for("b"), LABELS)
    assert gt.labels_for("c") is None


def test_label_map_from_value_rejects():
    with pytest.raises(GroundTruthError, match="2-D integer"):
        label_map_from_value(np.zeros((2, 2), np.float32))
    with pytest.raises(GroundTruthError, match="mode 'RGB'"):
        label_map_from_value(Image.new("RGB", (2, 2)))
