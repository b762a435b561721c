"""Semantic segmentation scores: confusion matrix, IoU, mIoU, pixel accuracy.

The released CLIP-DIY protocol (the reference for the published numbers):
- ground truth resized to short side 448 with nearest neighbour (torchvision `resize`
  on a PIL image: PIL NEAREST, long side `int(448 * long / short)`) -> `resize_gt_short_side`;
- the prediction resized to the ground truth's shape with OpenCV `INTER_NEAREST`
  (source index `floor(dst * src / dst_size)`) -> `resize_labels_nearest`;
- ground-truth label 255 ignored;
- one confusion matrix accumulated over the whole dataset (not a mean of per-image
  IoUs); mIoU = mean IoU over all classes including background; pixel accuracy over the
  non-ignored pixels.

Classes with an empty union (absent from both ground truth and prediction over the
whole dataset) have no defined IoU. The released code counts them as IoU 0
(`tp / max(tp + fp + fn, 1e-8)`); here they are reported as None and left out of the
mean (nanmean semantics), which is the usual convention and gives the same number
whenever every class occurs, as on VOC and COCO-Object. `empty_class="zero"` reproduces
the released behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "IGNORE_INDEX",
    "confusion_matrix",
    "format_table",
    "released_protocol_confusion",
    "resize_gt_short_side",
    "resize_labels_nearest",
    "scores_from_confusion",
]

IGNORE_INDEX = 255
GT_SHORT_SIDE = 448


def _check_labels(name: str, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(
            f"{name}: expected a 2-D integer label map (H, W), received {labels.dtype} {labels.shape}"
        )
    return labels


def confusion_matrix(
    pred_hw: np.ndarray, gt_hw: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Pixel confusion matrix, int64 (K, K): rows = ground truth class, columns = prediction.

    pred_hw, gt_hw: (H, W) integer label maps of the same shape.
    Pixels whose ground truth is `ignore_index`, negative or >= num_classes are not
    counted. Predictions must lie in [0, num_classes) (anything else is a bug upstream
    and raises ValueError).
    """
    pred_hw = _check_labels("pred_hw", pred_hw)
    gt_hw = _check_labels("gt_hw", gt_hw)
    if pred_hw.shape != gt_hw.shape:
        raise ValueError(
            f"pred_hw: expected the ground truth's shape {gt_hw.shape}, received {pred_hw.shape}"
        )
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, received {num_classes!r}")
    gt = gt_hw.ravel().astype(np.int64)
    pred = pred_hw.ravel().astype(np.int64)
    valid = (gt != ignore_index) & (gt >= 0) & (gt < k)
    gt, pred = gt[valid], pred[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(
            f"pred_hw: expected class indices in [0, {k - 1}], received values in [{pred.min()}, {pred.max()}]"
        )
    return np.bincount(gt * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def _ratio_or_none(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(n) / float(d) if d > 0 else None for n, d in zip(num.tolist(), den.tolist(), strict=True)]


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def scores_from_confusion(
    cm: np.ndarray, class_names: Sequence[str], *, empty_class: str = "exclude"
) -> dict:
    """Scores from an accumulated (K, K) confusion matrix (rows = ground truth).

    Returns a dict (see `schemas/metrics.schema.json`):
      miou: mean IoU over the classes with a defined IoU (None if there is none);
      per_class_iou: {class name: IoU or None when the union is empty};
      pixel_accuracy: correct / counted pixels (None when no pixel was counted);
      mean_accuracy: mean over classes with ground truth pixels of the per-class recall;
      per_class_gt_pixels: {class name: ground-truth pixel count};
      num_pixels: counted pixels; num_classes_in_mean: classes averaged into miou;
      empty_class: the policy used.
    empty_class: "exclude" (None, left out of the mean) or "zero" (IoU 0, as the
    released code does).
    """
    cm = np.asarray(cm)
    k = len(class_names)
    if cm.shape != (k, k) or not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(
            f"cm: expected an integer ({k}, {k}) matrix for {k} class names, received {cm.dtype} {cm.shape}"
        )
    if len(set(class_names)) != k:
        raise ValueError(f"class_names: expected unique names, received {list(class_names)}")
    if empty_class not in ("exclude", "zero"):
        raise ValueError(f"empty_class: expected 'exclude' or 'zero', received {empty_class!r}")
    cm = cm.astype(np.int64)
    tp = np.diag(cm)
    gt_pixels = cm.sum(axis=1)
    union = gt_pixels + cm.sum(axis=0) - tp
    iou = _ratio_or_none(tp, union)
    if empty_class == "zero":
        iou = [0.0 if v is None else v for v in iou]
    total = int(cm.sum())
    return {
        "miou": _mean_or_none(iou),
        "per_class_iou": dict(zip(class_names, iou, strict=True)),
        "pixel_accuracy": float(tp.sum()) / total if total else None,
        "mean_accuracy": _mean_or_none(_ratio_or_none(tp, gt_pixels)),
        "per_class_gt_pixels": dict(zip(class_names, (int(v) for v in gt_pixels), strict=True)),
        "num_pixels": total,
        "num_classes_in_mean": sum(v is not None for v in iou),
        "empty_class": empty_class,
    }


def format_table(scores: dict) -> str:
    """A plain-text table of per-class IoU (in %) followed by the summary scores."""

    def pct(v: float | None) -> str:
        return "     -" if v is None else f"{100.0 * v:6.2f}"

    names = list(scores["per_class_iou"])
    width = max([len("pixel accuracy"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}  IoU %", "-" * (width + 8)]
    lines += [f"{n:<{width}}  {pct(v)}" for n, v in scores["per_class_iou"].items()]
    lines.append("-" * (width + 8))
    lines.append(
        f"{'mIoU':<{width}}  {pct(scores['miou'])}  ({scores.get('num_classes_in_mean', '?')} classes)"
    )
    lines.append(f"{'pixel accuracy':<{width}}  {pct(scores['pixel_accuracy'])}")
    lines.append(f"{'mean accuracy':<{width}}  {pct(scores['mean_accuracy'])}")
    lines.append(f"{'pixels':<{width}}  {scores['num_pixels']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- resizing


def _pil_resize_nearest(labels_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """PIL NEAREST (pixel-centre sampling) on an integer label map; keeps the dtype."""
    if labels_hw.dtype == np.uint8:
        img = Image.fromarray(labels_hw)
    else:
        lo, hi = int(labels_hw.min()), int(labels_hw.max())
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise ValueError(f"labels: expected values that fit int32, received [{lo}, {hi}]")
        img = Image.fromarray(np.ascontiguousarray(labels_hw, dtype=np.int32))
    out = img.resize((int(size_hw[1]), int(size_hw[0])), resample=Image.Resampling.NEAREST)
    return np.asarray(out).astype(labels_hw.dtype, copy=False)


def resize_gt_short_side(gt_hw: np.ndarray, short_side: int = GT_SHORT_SIDE) -> np.ndarray:
    """Resize a ground-truth label map so its short side is `short_side`, nearest neighbour.

    Same as torchvision `resize(pil_image, size=short_side, NEAREST)`: the long side
    becomes `int(short_side * long / short)` (truncated), PIL NEAREST sampling. Keeps
    the dtype; a map whose short side already matches is returned unchanged.
    """
    gt_hw = _check_labels("gt_hw", gt_hw)
    h, w = gt_hw.shape
    if h == 0 or w == 0:
        raise ValueError(f"gt_hw: expected a non-empty label map, received shape {gt_hw.shape}")
    if min(h, w) == short_side:
        return gt_hw
    if h <= w:
        size_hw = (short_side, int(short_side * w / h))
    else:
        size_hw = (int(short_side * h / w), short_side)
    return _pil_resize_nearest(gt_hw, size_hw)


def resize_labels_nearest(labels_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a label map to `size_hw` with OpenCV `INTER_NEAREST` semantics; keeps the dtype.

    Output pixel (y, x) takes source pixel (min(floor(y / sy), H - 1), min(floor(x / sx), W - 1))
    with sy = out_h / H, sx = out_w / W, computed in float64 as OpenCV does. This is how
    the released code brings its 256x256 prediction to the ground truth's shape.
    """
    labels_hw = _check_labels("labels_hw", labels_hw)
    h, w = labels_hw.shape
    out_h, out_w = (int(v) for v in size_hw)
    if out_h < 1 or out_w < 1 or h == 0 or w == 0:
        raise ValueError(
            f"size_hw: expected positive sizes and a non-empty map, received {size_hw} for {labels_hw.shape}"
        )
    if (out_h, out_w) == (h, w):
        return labels_hw
    rows = np.minimum(np.floor(np.arange(out_h) * (1.0 / (out_h / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (1.0 / (out_w / w))).astype(np.int64), w - 1)
    return labels_hw[rows[:, None], cols[None, :]]


def released_protocol_confusion(
    pred_hw: np.ndarray,
    gt_hw: np.ndarray,
    num_classes: int,
    short_side: int = GT_SHORT_SIDE,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """One image's confusion matrix under the released protocol (see module docstring).

    gt_hw at its native resolution; pred_hw at any resolution (256x256 in the released
    code, the original image size here). Sum the results over the dataset.
    """
    gt = resize_gt_short_side(gt_hw, short_side)
    pred = resize_labels_nearest(pred_hw, gt.shape)
    return confusion_matrix(pred, gt, num_classes, ignore_index)
