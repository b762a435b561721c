"""Shapes from masks, for the exporters: instances (connected components of a class's
union mask) and polygons (contours, simplified), with OpenCV doing the geometry.

- :func:`split_instances`: one :class:`~annotator.records.Annotation` per 8-connected
  component of an annotation's mask, each with its own tight ``bbox_xywh``, ``area`` and
  ``score`` (the mean confidence over its pixels, from the image's confidence map).
- :func:`mask_polygons`: the mask's outer contours with their holes (``cv2.findContours``,
  ``RETR_CCOMP``), each simplified by ``cv2.approxPolyDP`` with a tolerance in pixels.
  A hole is joined to its outer contour by a zero-width cut (a "keyhole"), so that one
  polygon per outer contour carries its holes in formats that have no hole syntax
  (COCO polygons, whose readers union the polygons of one object; YOLO segments).
  Coordinates are in pixel-edge space (pixel ``(x, y)`` spans ``[x, x+1) x [y, y+1)``):
  the contours are traced on the mask upsampled 2x, so that they run a quarter pixel
  inside the mask's edges, outside and around holes alike, and a reader that fills the
  pixels whose centres lie inside (pycocotools) gets the mask back exactly for an
  unsimplified axis-aligned shape (OpenCV's own pixel-centre contours lose half a pixel
  all round, and grow every hole by one).
- :func:`polygon_iou`: the IoU of the polygons rasterised by pycocotools (as COCO
  readers do) against the mask, which the exporters report (mean, min) so that a user
  can choose ``--polygon-tolerance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annotator.records import Annotation
from annotator.records.encode import decode_mask, encode_mask

__all__ = ["PolygonStats", "mask_polygons", "polygon_iou", "split_instances"]


def split_instances(annotation: Annotation, confidence_hw: np.ndarray | None) -> list[Annotation]:
    """The 8-connected components of ``annotation``'s mask, largest first (ties: top-left
    first), as annotations of the same class.

    Args:
        confidence_hw: (H, W) float32 confidence in [0, 1] at the mask's size, or None
            (then every instance keeps the class's score).
    """
    import cv2
    mask = decode_mask(annotation.segmentation)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:  # one component (or none): the annotation as it is
        return [annotation]
    if confidence_hw is not None:
        sums = np.bincount(comp.ravel(), weights=confidence_hw.ravel().astype(np.float64), minlength=n)
    out = []
    order = sorted(range(1, n), key=lambda k: (-stats[k, cv2.CC_STAT_AREA], stats[k, cv2.CC_STAT_TOP],
                                               stats[k, cv2.CC_STAT_LEFT]))
    for k in order:
        area = int(stats[k, cv2.CC_STAT_AREA])
        x, y, w, h = (int(stats[k, c]) for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                 cv2.CC_STAT_HEIGHT))
        score = annotation.score if confidence_hw is None else round(min(1.0, max(0.0, sums[k] / area)), 6)
        out.append(Annotation(category_id=annotation.category_id, category_name=annotation.category_name,
                              segmentation=encode_mask(comp == k), bbox_xywh=[x, y, w, h], area=area, score=score))
    return out


def mask_polygons(mask_hw: np.ndarray, tolerance_px: float = 1.0) -> list[list[float]]:
    """Polygons of a (H, W) boolean mask: one flat ``[x1, y1, x2, y2, ...]`` list per outer
    contour (holes joined in by keyhole cuts), each of at least 3 points. A contour that
    simplifies to fewer points (a sliver one or two pixels wide) is kept unsimplified, and
    a hole that does is left open: no object is lost to the tolerance."""
    import cv2
    if tolerance_px < 0:
        raise ValueError(f"polygon tolerance: expected >= 0 pixels, got {tolerance_px}")
    up = np.repeat(np.repeat(np.asarray(mask_hw, dtype=np.uint8), 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hierarchy = hierarchy[0]

    def simplified(c: np.ndarray) -> np.ndarray:
        pts = cv2.approxPolyDP(c, 2 * tolerance_px, True) if tolerance_px > 0 else c  # in upsampled pixels
        if len(pts) < 3:
            pts = c
        return (pts.reshape(-1, 2).astype(np.float64) + 0.5) / 2

    out = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue  # a hole: joined to its outer contour below
        outer = simplified(c)
        if len(outer) < 3:
            continue
        child = hierarchy[i][2]
        while child != -1:
            hole = simplified(contours[child])
            if len(hole) >= 3:  # a hole of 2 points (a one-pixel crack) stays filled
                outer = _keyhole(outer, hole)
            child = hierarchy[child][0]
        out.append([float(v) for v in outer.ravel()])
    return out


def _keyhole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One ring from ``outer`` and ``hole`` ((N, 2) each): cut from the closest pair of
    vertices, around the hole and back along the same cut."""
    d = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], around, outer[i:]])


def polygon_iou(polygons: Sequence[Sequence[float]], mask_hw: np.ndarray) -> float:
    """IoU of ``polygons`` as pycocotools rasterises them (the union of the polygons, as
    COCO readers decode one object) with the (H, W) boolean mask; 0 for no polygon."""
    from pycocotools import mask as mask_utils

    h, w = mask_hw.shape
    mask = mask_hw.astype(bool)
    if not polygons:
        return 0.0
    rles = mask_utils.frPyObjects([list(p) for p in polygons], h, w)
    drawn = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    union = int((drawn | mask).sum())
    return float((drawn & mask).sum() / union) if union else 1.0


@dataclass
class PolygonStats:
    """IoU of each polygon-encoded mask with its mask, folded as the export goes:
    reported in the export's counts (``polygon_iou_mean``, ``polygon_iou_min``) and
    the number of masks with no polygon left after simplification."""

    masks: int = 0
    iou_sum: float = 0.0
    iou_min: float = 1.0
    no_polygon: int = 0

    def add(self, polygons: Sequence[Sequence[float]], mask_hw: np.ndarray) -> float:
        iou = polygon_iou(polygons, mask_hw)
        self.masks += 1
        self.iou_sum += iou
        self.iou_min = min(self.iou_min, iou)
        self.no_polygon += not polygons
        return iou

    def counts(self) -> dict:
        if not self.masks:
            return {"polygon_masks": 0}
        return {"polygon_masks": self.masks, "polygon_iou_mean": round(self.iou_sum / self.masks, 6),
                "polygon_iou_min": round(self.iou_min, 6), "polygon_masks_without_polygon": self.no_polygon}


class InstanceSplitter:
    """The annotations an exporter writes for one record: those of the classes in
    ``class_ids`` split into instances (:func:`split_instances`), the others as they are
    (the semantic union). ``class_ids`` empty: nothing is split."""

    def __init__(self, class_ids: frozenset[int] = frozenset()):
        self.class_ids = frozenset(class_ids)
        self.split_masks = 0  # class masks that were split
        self.instances = 0  # the instances they gave

    def __call__(self, record) -> list[Annotation]:
        if not self.class_ids or not any(a.category_id in self.class_ids for a in record.annotations):
            return list(record.annotations)
        from annotator.records.encode import decode_confidence_png

        confidence = decode_confidence_png(record.confidence_png) if record.confidence_png else None
        out: list[Annotation] = []
        for a in record.annotations:
            if a.category_id in self.class_ids:
                pieces = split_instances(a, confidence)
                self.split_masks += 1
                self.instances += len(pieces)
                out.extend(pieces)
            else:
                out.append(a)
        return out

    def counts(self) -> dict:
        return {"instances": self.instances} if self.class_ids else {}
