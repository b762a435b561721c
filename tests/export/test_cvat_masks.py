"""CVAT "Segmentation mask 1.1", read back by datumaro's voc_segmentation importer (the
library behind CVAT's importers)."""

from __future__ import annotations

import numpy as np
import pytest

from annotator.export import ExportError, ExportOptions, export
from annotator.export.cvat_masks import label_colours
from annotator.export.masks import safe_relative_path
from tests.export.conftest import build_synthetic_output, build_toy_run_output


@pytest.mark.clients
@pytest.mark.parametrize("build", [build_synthetic_output, build_toy_run_output], ids=["synthetic", "toy-run"])
@pytest.mark.parametrize("instances", [False, True], ids=["classes", "objects"])
def test_datumaro_reads_our_masks(tmp_path, build, instances):
    dm = pytest.importorskip("datumaro")
    import cv2

    output, expected, class_names = build(tmp_path)
    to = tmp_path / "cvat"
    result = export(output, "cvat-masks", str(to), ExportOptions(instances=instances))
    dataset = dm.Dataset.import_from(str(to), "voc_segmentation")
    names = [label.name for label in dataset.categories()[dm.AnnotationType.label].items]
    assert names == class_names
    items = {item.id: item for item in dataset}
    assert len(items) == len(expected) == result.counts["images"]
    objects = 0
    for file_name, labels in expected.items():
        item = items[safe_relative_path(file_name, "")]  # the stem, sanitised as the masks export does
        masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        got = np.zeros_like(labels)
        for m in masks:
            got[m.image.astype(bool)] = m.label
        assert (got == labels).all(), file_name
        if instances:
            for c in set(np.unique(labels)) - {0}:
                n, _, _, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
                objects += n - 1
                assert sum(m.label == c for m in masks) == n - 1
    if instances:
        assert result.counts["objects"] == objects


def test_colours_are_distinct_and_background_black():
    colours = label_colours(600)
    assert colours[0] == (0, 0, 0) and len(set(colours)) == 600


def test_a_class_name_with_a_colon_is_refused(tmp_path):
    from annotator import records
    from annotator.inputs.catalog import ImageRef
    from annotator.storage import parts

    names = ["background", "cat: tabby"]
    rec = records.ok_record(ImageRef(1, "a.png", "/a.png"), np.ones((4, 4), np.int32), np.ones((4, 4), np.float32),
                            names)
    parts.write_part([rec], str(tmp_path / "out" / "parts" / "part-00000.parquet"),
                     {"vocabulary": names, "config_hash": "x"})
    with pytest.raises(ExportError, match="':'"):
        export(str(tmp_path / "out"), "cvat-masks", str(tmp_path / "cvat"))


def test_more_than_254_objects_is_loud(tmp_path, capsys):
    """CVAT reads SegmentationObject as 8 bits: an image of 400 objects keeps its largest
    254 there, and the export says so, naming the image (issue 23.4)."""
    from annotator import records
    from annotator.export.__main__ import main
    from annotator.inputs.catalog import ImageRef
    from annotator.storage import parts

    names = ["background", "dot"]
    labels = np.zeros((40, 40), np.int32)
    labels[::2, ::2] = 1  # 400 one-pixel objects, none 8-connected to another
    labels[0:3, 0:3] = 1  # ... one of them larger: kept first
    rec = records.ok_record(ImageRef(1, "dots.png", "/dots.png"), labels, np.ones((40, 40), np.float32), names)
    parts.write_part([rec], str(tmp_path / "out" / "parts" / "part-00000.parquet"),
                     {"vocabulary": names, "config_hash": "x"})
    to = tmp_path / "cvat"
    assert main([str(tmp_path / "out"), "--format", "cvat-masks", "--instances", "--to", str(to)]) == 0
    captured = capsys.readouterr()
    assert "images_with_too_many_objects=1" in captured.out and "objects_left_out=" in captured.out
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert "dots.png" in warning and "254" in warning
    from PIL import Image

    objects = np.asarray(Image.open(to / "SegmentationObject" / "dots.png"))
    assert objects.max() == 254 and (objects[0:3, 0:3] == 1).all()
    n_objects = int(captured.out.split("annotations=")[1].split(",")[0])
    assert f"objects_left_out={n_objects - 254}" in captured.out
