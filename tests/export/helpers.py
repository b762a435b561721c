"""Small helpers shared by the export tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from annotator import records


def coco_labels(doc: dict) -> dict[str, np.ndarray]:
    """COCO document -> {file_name: int32 label map (H, W)} painted from its RLE masks."""
    by_image = {img["id"]: img for img in doc["images"]}
    out = {img["file_name"]: np.zeros((img["height"], img["width"]), np.int32) for img in doc["images"]}
    for ann in doc["annotations"]:
        img = by_image[ann["image_id"]]
        out[img["file_name"]][records.decode_mask(ann["segmentation"])] = ann["category_id"]
    return out


def load_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
