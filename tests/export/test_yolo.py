"""The YOLO segmentation export, read back by Ultralytics' own dataset checker and loader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from annotator.export import ExportOptions, export
from annotator.export.__main__ import main
from annotator.export.masks import safe_relative_path
from annotator.export.yolo import split_of
from annotator.storage import parts
from tests.export.conftest import build_synthetic_output, build_toy_run_output


def _lines(path: Path) -> list[list[float]]:
    return [[float(v) for v in ln.split()] for ln in path.read_text().splitlines() if ln.strip()]


def _objects(output: str, min_area: int = 0) -> dict[str, int]:
    """Instances per ok image, counted from the run's masks by connected components."""
    import cv2

    from annotator.records.encode import decode_mask

    out = {}
    for rec in parts.iter_records(parts.list_parts(output)):
        if rec.status == "ok":
            n = 0
            for a in rec.annotations:
                k, _, stats, _ = cv2.connectedComponentsWithStats(decode_mask(a.segmentation).astype(np.uint8),
                                                                  connectivity=8)
                n += int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum())
            out[rec.file_name] = n
    return out


def _read_with_ultralytics(tmp_path: Path, data_yaml: Path, task: str) -> dict:
    """What Ultralytics reads of the export, from a process of its own (see ultralytics_read.py)."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("ultralytics") is None:  # not imported here: see ultralytics_read.py
        pytest.skip("ultralytics is not installed")
    out = tmp_path / f"ultralytics-{task}.npz"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics-config"), "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("ultralytics_read.py")), str(data_yaml), task,
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as z:
        read = {k: z[k] for k in z.files}
    names = json.loads(str(read.pop("names")))
    return {"names": {int(k): v for k, v in names.items()},
            "items": {k: (json.loads(str(v)) if task == "segment" else v) for k, v in read.items()}}


@pytest.mark.clients
def test_ultralytics_reads_the_export_of_a_real_run(tmp_path):
    output, expected, class_names = build_toy_run_output(tmp_path)
    to = tmp_path / "yolo"
    result = export(output, "yolo", str(to), ExportOptions(polygon_tolerance=0.5, val_fraction=0.34, split_seed=3))
    assert result.counts["polygon_iou_mean"] > 0.95
    read = _read_with_ultralytics(tmp_path, to / "data.yaml", "segment")
    assert [read["names"][k] for k in range(len(class_names) - 1)] == class_names[1:]
    want = _objects(output)
    seen = {}
    for key, lb in read["items"].items():
        subset, name = key.split("/", 1)
        stem = os.path.splitext(name)[0]
        ours = _lines(to / "labels" / subset / f"{stem}.txt")
        assert len(lb["segments"]) == len(ours) == len(lb["cls"])
        for seg, line in zip(lb["segments"], ours, strict=True):
            assert np.allclose(seg, line[1:], atol=1e-6)
        assert lb["cls"] == [int(line[0]) for line in ours]
        seen[stem] = len(ours)
    assert {os.path.splitext(k)[0]: v for k, v in want.items()} == seen
    assert result.counts["annotations"] == sum(want.values())
    assert result.counts["train"] + result.counts["val"] == len(expected)


def test_layout_split_links_and_filters(tmp_path, capsys):
    output, expected, class_names = build_synthetic_output(tmp_path)
    to = tmp_path / "yolo"
    rc = main([output, "--format", "yolo", "--to", str(to), "--classes", "cat,traffic light", "--min-area", "2",
               "--val-fraction", "0.5", "--split-seed", "1"])
    assert rc == 0
    doc = yaml.safe_load((to / "data.yaml").read_text())
    assert doc["names"] == {0: "cat", 1: "traffic light"} and doc["train"] == "images/train"
    labels = sorted(p.relative_to(to / "labels").as_posix() for p in (to / "labels").rglob("*.txt"))
    assert len(labels) == len(expected)
    classes = {int(line[0]) for p in (to / "labels").rglob("*.txt") for line in _lines(p)}
    assert classes <= {0, 1}
    linked = [p for p in (to / "images").rglob("*") if p.is_symlink()]
    assert linked and all(p.resolve().exists() for p in linked)
    assert not any(p.name == "missing.jpg" for p in (to / "images").rglob("*"))  # its source is absent: counted
    assert "images_missing=1" in capsys.readouterr().out
    for file_name in expected:  # the label of each ok image sits in its seeded subset
        assert (to / "labels" / split_of(file_name, 0.5, 1) / Path(safe_relative_path(file_name, ".txt"))).exists()
    e_label = next((to / "labels").rglob("e.txt"))
    assert _lines(e_label) == []  # e.png's cat is one pixel (< --min-area 2), its dog not exported


def test_split_is_seeded_and_stable():
    names = [f"img_{i:04d}.jpg" for i in range(2000)]
    val = [n for n in names if split_of(n, 0.2, 7) == "val"]
    assert 300 < len(val) < 500 and val == [n for n in names if split_of(n, 0.2, 7) == "val"]
    assert val != [n for n in names if split_of(n, 0.2, 8) == "val"]
    assert all(split_of(n, 0.0, 7) == "train" for n in names)


def test_bad_options_are_refused(tmp_path):
    output, _, _ = build_synthetic_output(tmp_path)
    assert main([output, "--format", "yolo", "--val-fraction", "1.5"]) == 2
    assert main([output, "--format", "yolo", "--polygon-tolerance", "-1"]) == 2


@pytest.mark.clients
def test_ultralytics_semantic_dataset_reads_our_label_maps(tmp_path):
    """yolo-semantic on a real run: Ultralytics' SemanticDataset pairs every image with
    its mask and loads the run's labels (background 0, classes from 1; 255 where
    --min-area removed a mask)."""
    from annotator.records.encode import decode_mask

    output, expected, class_names = build_toy_run_output(tmp_path)
    to = tmp_path / "sem"
    result = export(output, "yolo-semantic", str(to), ExportOptions(val_fraction=0.4, min_area=50))
    read = _read_with_ultralytics(tmp_path, to / "data.yaml", "semantic")
    assert [read["names"][k] for k in range(len(class_names))] == class_names
    small = {rec.file_name: [a for a in rec.annotations if a.area < 50]
             for rec in parts.iter_records(parts.list_parts(output))}
    for key, mask in read["items"].items():
        name = key.split("/", 1)[1]
        want = expected[name].astype(np.int64)
        for a in small[name]:
            want[decode_mask(a.segmentation)] = 255
        assert (mask.astype(np.int64) == want).all(), name
    assert len(read["items"]) == len(expected) == result.counts["images"]
