"""Per-class statistics: of one label map (numpy; the engine's device path computes the
same with ``torch.bincount``), and over a run's annotations (:class:`ClassTally`, the one
aggregator behind ``summary.json`` and the report)."""

from __future__ import annotations

import numpy as np

__all__ = ["ClassTally", "class_stats_numpy"]


def class_stats_numpy(labels_hw: np.ndarray, confidence_hw: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: (pixel count (K,) int64, sum of confidence (K,) float64)."""
    flat = labels_hw.ravel().astype(np.intp, copy=False)
    pixels = np.bincount(flat, minlength=num_classes)
    conf_sums = np.bincount(flat, weights=confidence_hw.ravel().astype(np.float64, copy=False), minlength=num_classes)
    return pixels, conf_sums


class ClassTally:
    """Totals per class index over a stream of annotations: ``images`` holding the class
    (K,) int64, ``pixels`` (K,) int64, and the area-weighted ``score_sum`` (K,) float64,
    so that ``score_sum / pixels`` is the mean confidence over the class's pixels."""

    def __init__(self, num_classes: int):
        self.images = np.zeros(num_classes, dtype=np.int64)
        self.pixels = np.zeros(num_classes, dtype=np.int64)
        self.score_sum = np.zeros(num_classes, dtype=np.float64)

    def add(self, category_id: int, area: int, score: float) -> None:
        """One annotation (one class present in one image); ids outside 0..K-1 are ignored."""
        if 0 <= category_id < len(self.images):
            self.images[category_id] += 1
            self.pixels[category_id] += int(area)
            self.score_sum[category_id] += float(score) * int(area)

    def mean_score(self, category_id: int, decimals: int | None = None) -> float | None:
        """Mean confidence over the class's pixels (None when it has none)."""
        if not self.pixels[category_id]:
            return None
        value = float(self.score_sum[category_id] / self.pixels[category_id])
        return round(value, decimals) if decimals is not None else value
