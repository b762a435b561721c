"""Scoring a shard against ground truth while it runs: per image a confusion matrix (the
released protocol), summed per shard; an image whose ground truth cannot be used is left
out of the scores and named, never failed. Ground truth read from a Hugging Face label
column gets each shard's cells as the shard starts (two shards may run at once)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotator import records
from annotator.evaluation import metrics
from annotator.evaluation.gt import GroundTruthError, load_gt
from annotator.shards.task import RunOptions, ShardTask

log = logging.getLogger(__name__)

__all__ = ["ImageScore", "ShardScorer", "ShardScores"]


@dataclass
class ImageScore:
    """One image: its confusion matrix (K, K) int64, or why its ground truth was not used."""

    confusion: np.ndarray | None = None
    gt_error: str | None = None


@dataclass
class ShardScores:
    """A shard's sum: the confusion matrix (None when no image was scored) and the
    images left out, as ``[{file_name, error}]`` (stored in the part's footer)."""

    confusion: np.ndarray | None = None
    gt_errors: list[dict] = field(default_factory=list)

    def add(self, file_name: str, score: ImageScore) -> None:
        if score.confusion is not None:
            self.confusion = score.confusion if self.confusion is None else self.confusion + score.confusion
        if score.gt_error is not None:
            self.gt_errors.append({"file_name": file_name, "error": score.gt_error})


class ShardScorer:
    """The ground truth of a run (``--gt``), loaded once per processor."""

    def __init__(self, options: RunOptions, class_names: list[str]):
        self.options = options
        self.num_classes = len(class_names)
        if options.gt_spec is None:
            raise ValueError("a ShardScorer needs a ground truth (--gt)")
        # Any: the loaded kind (COCO, VOC PNG, HF column) decides the attributes used below
        self.gt: Any = load_gt(options.gt_spec, options.gt_format, class_names, storage_options=options.storage_options)
        self._hf_cells: dict = {}  # file_name -> label cell, for the shards in progress

    def score(self, file_name: str, labels_hw: np.ndarray) -> ImageScore:
        """Called from encoder threads; never raises for a bad ground truth."""
        try:
            gt = self.gt.labels_for(file_name, labels_hw.shape)
        except Exception as e:  # noqa: BLE001 - ground truth of any kind of badness stays per image
            why = str(e) if isinstance(e, GroundTruthError) else f"{type(e).__name__}: {e}"
            why = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "its label cell", why)  # name the row, not an object
            log.warning("%s: ground truth not used: %s", file_name, why)
            return ImageScore(gt_error=why[:records.ERROR_MAX_LENGTH])
        if gt is None:
            return ImageScore()
        return ImageScore(confusion=metrics.released_protocol_confusion(labels_hw, gt, self.num_classes))

    def shard_started(self, task: ShardTask, read_cells: Callable[[ShardTask, str], list]) -> list[str]:
        """Give an ``hf-column:NAME`` ground truth this shard's label cells (beside those
        of a shard running at the same time); returns the names to forget afterwards."""
        if getattr(self.gt, "format", None) != "hf-column":
            return []
        if task.hf is None:
            raise GroundTruthError(f"ground truth {self.options.gt_spec!r} reads a column of a Hugging Face "
                                   "dataset, but the source is not one (use --hf-dataset)")
        cells = read_cells(task, self.gt.column) if task.refs else []
        self._hf_cells.update({ref.file_name: cell for ref, cell in zip(task.refs, cells, strict=True)})
        self.gt.set_lookup(self._hf_cells.get)
        return [ref.file_name for ref in task.refs]

    def shard_finished(self, names: list[str]) -> None:
        for name in names:
            self._hf_cells.pop(name, None)
