"""Read an exported dataset with Ultralytics' own checker and loaders, in a process of
its own: importing ultralytics patches ``PIL.Image.open`` for the whole process (and may
try to pip-install a HEIF plugin on the first unidentified image), which must not leak
into the test process.

``python tests/export/ultralytics_read.py DATA_YAML segment|semantic OUT.npz`` writes
``names`` (JSON), and per image ``<subset>/<relative image path>``: for ``segment`` the
classes and the flattened segments (JSON), for ``semantic`` the loaded mask.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(data_yaml: str, task: str, out: str) -> None:
    from ultralytics.data.dataset import SemanticDataset, YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(data_yaml, autodownload=False)
    root = Path(data_yaml).parent
    arrays = {"names": np.array(json.dumps({int(k): v for k, v in data["names"].items()}))}
    for subset in ("train", "val"):
        images = root / "images" / subset
        if subset == "val" and data["val"] == data["train"] or not images.exists():
            continue
        if task == "segment":
            ds = YOLODataset(img_path=data[subset], data=data, task="segment", augment=False, imgsz=160)
            for lb in ds.labels:
                name = Path(lb["im_file"]).relative_to(images).as_posix()
                arrays[f"{subset}/{name}"] = np.array(json.dumps({
                    "cls": [int(c) for c in lb["cls"].ravel()],
                    "segments": [[float(v) for v in seg.ravel()] for seg in lb["segments"]]}))
        else:
            ds = SemanticDataset(img_path=data[subset], data=data, task="semantic", augment=False, imgsz=160)
            for i, lb in enumerate(ds.labels):
                arrays[f"{subset}/{Path(lb['im_file']).relative_to(images).as_posix()}"] = ds.load_mask(i)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:4])
