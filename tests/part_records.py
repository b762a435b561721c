"""Small records shared by the parts and manifest tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotator.records import error_record, ok_record

NAMES = ["background", "cat", "dog"]
META = {"vocabulary": NAMES, "model": "toy", "config_hash": "0123456789abcdef"}


@dataclass
class Ref:
    image_id: int
    file_name: str
    uri: str


def make_records(ids):
    out = []
    for i in ids:
        ref = Ref(i, f"img{i:03d}.jpg", f"/src/img{i:03d}.jpg")
        if i % 3 == 0:
            out.append(error_record(ref, "decode-failed", f"bad file {i}"))
        else:
            labels = np.zeros((5, 6), np.int32)
            labels[: i % 5 + 1, :2] = 1
            labels[4, 5] = 2
            out.append(ok_record(ref, labels, np.full((5, 6), 0.5, np.float32), NAMES))
    return out
