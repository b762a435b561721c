from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from annotator.evaluation.metrics import (
    confusion_matrix,
    format_table,
    released_protocol_confusion,
    resize_gt_short_side,
    resize_labels_nearest,
    scores_from_confusion,
)
from annotator.records.schema import validate

NAMES = ["background", "cat", "dog"]


def test_confusion_matrix_literal():
    gt = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], np.int32)
    cm = confusion_matrix(pred, gt, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])  # rows gt, cols pred
    assert cm.sum() == 5  # the 255 pixel is ignored


def test_confusion_matrix_ignores_out_of_vocabulary_gt():
    gt = np.array([[0, 7, -1, 2]], np.int32)
    pred = np.array([[0, 1, 1, 2]], np.int32)
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 3), np.diag([1, 0, 1]))


def test_confusion_matrix_matches_naive_loop():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(20, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 4, size=(20, 30))
    naive = np.zeros((4, 4), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g != 255:
            naive[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 4), naive)


@pytest.mark.parametrize(
    "pred, gt, match",
    [
        (np.zeros((2, 2), np.int32), np.zeros((2, 3), np.int32), "shape"),
        (np.full((2, 2), 3, np.int32), np.zeros((2, 2), np.int32), r"\[0, 2\]"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int32), "integer"),
    ],
)
def test_confusion_matrix_rejects(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, gt, 3)


def test_scores_literal_values():
    # gt bg: 6 px (5 right, 1 as cat); cat: 4 px (2 right, 2 as bg); dog: never present
    cm = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]], np.int64)
    s = scores_from_confusion(cm, NAMES)
    assert s["per_class_iou"]["background"] == pytest.approx(5 / (6 + 7 - 5))
    assert s["per_class_iou"]["cat"] == pytest.approx(2 / (4 + 3 - 2))
    assert s["per_class_iou"]["dog"] is None
    assert s["miou"] == pytest.approx((5 / 8 + 2 / 5) / 2)  # dog left out
    assert s["num_classes_in_mean"] == 2
    assert s["pixel_accuracy"] == pytest.approx(7 / 10)
    assert s["mean_accuracy"] == pytest.approx((5 / 6 + 2 / 4) / 2)
    assert s["num_pixels"] == 10
    assert s["per_class_gt_pixels"] == {"background": 6, "cat": 4, "dog": 0}
    validate(s, "metrics")


def test_scores_released_zero_policy_and_predicted_but_absent_class():
    cm = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]], np.int64)
    z = scores_from_confusion(cm, NAMES, empty_class="zero")
    assert z["per_class_iou"]["dog"] == 0.0
    assert z["miou"] == pytest.approx((5 / 8 + 2 / 5 + 0) / 3)
    # a class predicted but absent from gt has IoU 0 under both policies
    cm2 = np.array([[5, 0, 1], [0, 4, 0], [0, 0, 0]], np.int64)
    assert scores_from_confusion(cm2, NAMES)["per_class_iou"]["dog"] == 0.0
    assert scores_from_confusion(cm2, NAMES)["num_classes_in_mean"] == 3


def test_scores_empty_matrix_and_errors():
    s = scores_from_confusion(np.zeros((3, 3), np.int64), NAMES)
    assert s["miou"] is None and s["pixel_accuracy"] is None and s["mean_accuracy"] is None
    validate(s, "metrics")
    with pytest.raises(ValueError, match="3, 3"):
        scores_from_confusion(np.zeros((2, 2), np.int64), NAMES)
    with pytest.raises(ValueError, match="unique"):
        scores_from_confusion(np.zeros((2, 2), np.int64), ["a", "a"])
    with pytest.raises(ValueError, match="empty_class"):
        scores_from_confusion(np.zeros((3, 3), np.int64), NAMES, empty_class="nan")


def test_perfect_prediction():
    gt = np.array([[0, 1], [2, 2]])
    s = scores_from_confusion(confusion_matrix(gt, gt, 3), NAMES)
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["mean_accuracy"] == 1.0


def test_format_table():
    cm = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]], np.int64)
    text = format_table(scores_from_confusion(cm, NAMES))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "%"]
    assert any(line.split() == ["background", "62.50"] for line in lines)
    assert any(line.split() == ["dog", "-"] for line in lines)
    assert any(line.startswith("mIoU") and "51.25" in line and "(2 classes)" in line for line in lines)
    assert any(line.startswith("pixel accuracy") and "70.00" in line for line in lines)


def test_resize_gt_short_side_matches_torchvision_rule():
    gt = np.arange(375 * 500, dtype=np.int32).reshape(375, 500) % 21
    out = resize_gt_short_side(gt.astype(np.uint8))
    assert out.shape == (448, 597) and out.dtype == np.uint8  # int(448 * 500 / 375) = 597
    tall = resize_gt_short_side(np.zeros((500, 333), np.int32))
    assert tall.shape == (672, 448) and tall.dtype == np.int32  # int(448 * 500 / 333) = 672
    same = np.zeros((448, 600), np.uint8)
    assert resize_gt_short_side(same) is same


def test_resize_gt_is_pil_nearest_and_keeps_labels():
    rng = np.random.default_rng(1)
    gt = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(30, 41))
    out = resize_gt_short_side(gt, short_side=64)
    expected = np.asarray(Image.fromarray(gt).resize((int(64 * 41 / 30), 64), Image.NEAREST))
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out)) <= {0, 3, 7, 255}
    big = rng.integers(0, 300, size=(10, 12)).astype(np.int32)  # int32 maps via PIL mode I
    out32 = resize_gt_short_side(big, short_side=20)
    assert out32.dtype == np.int32 and set(np.unique(out32)) <= set(np.unique(big))


def test_resize_labels_nearest_opencv_semantics():
    src = np.arange(4, dtype=np.int32)[None, :].repeat(2, axis=0)  # 2 x 4, columns 0..3
    up = resize_labels_nearest(src, (2, 10))
    # floor(x * 4 / 10): 0 0 0 1 1 2 2 2 3 3
    np.testing.assert_array_equal(up[0], [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    down = resize_labels_nearest(np.arange(10, dtype=np.uint8)[None, :], (1, 4))
    np.testing.assert_array_equal(down[0], [0, 2, 5, 7])  # floor(x * 2.5)
    assert down.dtype == np.uint8
    assert resize_labels_nearest(src, (2, 4)) is src


def test_resize_labels_nearest_matches_opencv_when_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    src = rng.integers(0, 21, size=(256, 256)).astype(np.uint8)
    for size_hw in [(448, 597), (597, 448), (375, 500), (100, 77)]:
        expected = cv2.resize(src, size_hw[::-1], interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resize_labels_nearest(src, size_hw), expected)


def test_released_protocol_confusion():
    gt = np.zeros((375, 500), np.uint8)
    gt[100:200, 100:300] = 1
    gt[0, :] = 255
    pred = np.zeros((256, 256), np.int32)
    pred[
        math.floor(100 * 256 / 375) : math.floor(200 * 256 / 375),
        math.floor(100 * 256 / 500) : math.floor(300 * 256 / 500),
    ] = 1
    cm = released_protocol_confusion(pred, gt, 3)
    assert cm.sum() == 448 * 597 - np.count_nonzero(resize_gt_short_side(gt) == 255)
    s = scores_from_confusion(cm, NAMES)
    assert s["per_class_iou"]["cat"] > 0.97 and s["per_class_iou"]["dog"] is None
