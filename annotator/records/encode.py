"""Prediction -> record: label map + confidence map -> COCO RLE annotations and the
confidence PNG (see :mod:`annotator.records.types` for the encoding rules), and back."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from annotator.core.stats import class_stats_numpy
from annotator.records.types import (
    PNG_COMPRESS_LEVEL,
    SCORE_DECIMALS,
    Annotation,
    ImageRecord,
    ImageRefLike,
    RecordError,
    check_segmentation,
)

__all__ = [
    "annotations_from_labels",
    "decode_confidence_png",
    "decode_mask",
    "encode_confidence_png",
    "encode_mask",
    "labels_from_annotations",
    "ok_record",
]


def encode_mask(mask_hw: np.ndarray) -> dict:
    """Bool/0-1 mask (H, W) -> `{"size": [H, W], "counts": str}` compressed RLE."""
    mask_hw = np.asarray(mask_hw)
    if mask_hw.ndim != 2:
        raise RecordError(f"mask: expected a 2-D (H, W) array, received shape {mask_hw.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask_hw.astype(np.uint8, copy=False)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_mask(segmentation: dict) -> np.ndarray:
    """COCO RLE dict -> bool mask (H, W).

    Accepts compressed RLE (`counts` a str or bytes) and, for convenience, uncompressed
    RLE (`counts` a list of ints).
    """
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        h, w = segmentation.get("size", (None, None))
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        seg = check_segmentation(segmentation)
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


# Kept whole: the per-class loop runs once per image on the encoder threads' hot path.
def annotations_from_labels(
    labels_hw: np.ndarray,
    confidence_hw: np.ndarray,
    class_names: Sequence[str],
    class_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Annotation]:
    """Label map + confidence map -> one `Annotation` per class c >= 1 present.

    labels_hw: (H, W) integer class indices in [0, len(class_names)); 0 is background.
    confidence_hw: (H, W) float in [0, 1], the calibrated confidence of each pixel's label.
    class_names: the vocabulary; `class_names[c]` names category_id c.
    class_stats: optional (pixels (K,) int64, confidence sums (K,) float64) per class,
        as the engine computes them on a GPU (:func:`class_stats`); computed here when
        None. They give the annotations' `area` and `score`.
    Returns annotations sorted by category_id.
    """
    labels_hw = np.asarray(labels_hw)
    confidence_hw = np.asarray(confidence_hw)
    if labels_hw.ndim != 2 or not np.issubdtype(labels_hw.dtype, np.integer):
        raise RecordError(
            f"labels_hw: expected a 2-D integer array (H, W), received {labels_hw.dtype} {labels_hw.shape}"
        )
    if confidence_hw.shape != labels_hw.shape or not np.issubdtype(confidence_hw.dtype, np.floating):
        raise RecordError(
            f"confidence_hw: expected a float array of shape {labels_hw.shape} (like labels_hw), "
            f"received {confidence_hw.dtype} {confidence_hw.shape}"
        )
    if labels_hw.size == 0:
        raise RecordError(f"labels_hw: expected a non-empty image, received shape {labels_hw.shape}")
    num_classes = len(class_names)
    lo, hi = int(labels_hw.min()), int(labels_hw.max())
    if lo < 0 or hi >= num_classes:
        raise RecordError(
            f"labels_hw: expected class indices in [0, {num_classes - 1}] for {num_classes} class names, "
            f"received values in [{lo}, {hi}]"
        )
    cmin, cmax = float(confidence_hw.min()), float(confidence_hw.max())
    if not (0.0 <= cmin and cmax <= 1.0):  # also false for NaN
        raise RecordError(f"confidence_hw: expected values in [0, 1], received values in [{cmin}, {cmax}]")

    if class_stats is None:
        pixels, conf_sums = class_stats_numpy(labels_hw, confidence_hw, num_classes)
    else:
        pixels, conf_sums = (np.asarray(a) for a in class_stats)
        if pixels.shape != (num_classes,) or conf_sums.shape != (num_classes,) or pixels.sum() != labels_hw.size:
            raise RecordError(
                f"class_stats: expected pixel counts summing to {labels_hw.size} and confidence sums, "
                f"each of shape ({num_classes},), received shapes {pixels.shape} and {conf_sums.shape} "
                f"(pixel total {int(pixels.sum())})"
            )
    present = np.flatnonzero(pixels[1:]) + 1
    if present.size == 0:
        return []
    # One pycocotools call for all classes: an (H, W, N) column-major uint8 stack. Comparing
    # against the transposed (W, H) C-contiguous copy writes each Fortran slice contiguously,
    # ~8x faster than building the stack with broadcasting and np.asfortranarray.
    labels_wh = np.ascontiguousarray(labels_hw.T)
    masks = np.empty((*labels_hw.shape, present.size), dtype=np.uint8, order="F")
    for i, c in enumerate(present.tolist()):
        np.equal(labels_wh, c, out=masks[:, :, i].T.view(np.bool_))
    rles = mask_utils.encode(masks)
    boxes = mask_utils.toBbox(rles)
    out = []
    for c, rle, box in zip(present.tolist(), rles, boxes, strict=True):
        out.append(
            Annotation(
                category_id=c,
                category_name=class_names[c],
                segmentation={
                    "size": [int(rle["size"][0]), int(rle["size"][1])],
                    "counts": rle["counts"].decode("ascii"),
                },
                bbox_xywh=[float(v) for v in box],
                area=int(pixels[c]),
                score=min(1.0, max(0.0, round(float(conf_sums[c] / pixels[c]), SCORE_DECIMALS))),
            )
        )
    return out


def labels_from_annotations(annotations: Sequence[Annotation], size_hw: tuple[int, int]) -> np.ndarray:
    """Paint annotations back into an int32 label map (H, W), background 0.

    Annotations are painted in order, a later one overwriting an earlier one where they
    overlap (the annotations this package writes never overlap).
    """
    h, w = (int(v) for v in size_hw)
    labels = np.zeros((h, w), dtype=np.int32)
    for a in annotations:
        if list(a.segmentation["size"]) != [h, w]:
            raise RecordError(
                f"annotation category_id={a.category_id}: expected a mask of size [{h}, {w}], "
                f"received {a.segmentation['size']}"
            )
        labels[decode_mask(a.segmentation)] = a.category_id
    return labels


# ----------------------------------------------------------------------------- confidence


def encode_confidence_png(confidence_hw: np.ndarray) -> bytes:
    """Float confidence (H, W) in [0, 1] -> 8-bit grayscale PNG bytes, value round(255 * c).

    Values are clipped to [0, 1] first; NaN raises.
    """
    confidence_hw = np.asarray(confidence_hw)
    if (
        confidence_hw.ndim != 2
        or not np.issubdtype(confidence_hw.dtype, np.floating)
        or confidence_hw.size == 0
    ):
        raise RecordError(
            f"confidence_hw: expected a non-empty 2-D float array, received {confidence_hw.dtype} {confidence_hw.shape}"
        )
    if np.isnan(confidence_hw).any():
        raise RecordError("confidence_hw: expected values in [0, 1], received NaN")
    q = np.rint(np.clip(confidence_hw, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_confidence_png(data: bytes) -> np.ndarray:
    """PNG bytes from `encode_confidence_png` -> float32 (H, W) in [0, 1] (steps of 1/255)."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise RecordError(f"confidence_png: expected non-empty PNG bytes, received {type(data).__name__}")
    with Image.open(io.BytesIO(bytes(data))) as img:
        if img.format != "PNG" or img.mode != "L":
            raise RecordError(
                f"confidence_png: expected an 8-bit grayscale PNG (mode 'L'), received {img.format} mode {img.mode!r}"
            )
        q = np.asarray(img, dtype=np.uint8)
    return q.astype(np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------- records


def ok_record(
    ref: ImageRefLike,
    labels_hw: np.ndarray,
    confidence_hw: np.ndarray,
    class_names: Sequence[str],
    class_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> ImageRecord:
    """A successful record: annotations from the label map, the confidence PNG, size from
    the map (`class_stats`: see :func:`annotations_from_labels`)."""
    annotations = annotations_from_labels(labels_hw, confidence_hw, class_names, class_stats)
    height, width = np.asarray(labels_hw).shape
    return ImageRecord(
        image_id=ref.image_id,
        file_name=ref.file_name,
        uri=ref.uri,
        width=int(width),
        height=int(height),
        status="ok",
        error=None,
        annotations=annotations,
        confidence_png=encode_confidence_png(confidence_hw),
    )
