"""Instances and polygons from masks (annotator.export.shapes), checked by pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from annotator import records
from annotator.export.shapes import (
    InstanceSplitter,
    mask_polygons,
    polygon_iou,
    split_instances,
)
from annotator.inputs.catalog import ImageRef
from annotator.records.encode import decode_mask

NAMES = ["background", "cat", "sky"]


def _two_blobs_with_a_hole():
    labels = np.zeros((60, 80), np.int32)
    labels[10:50, 10:40] = 1
    labels[20:30, 20:30] = 0  # a hole in the first cat
    labels[40:45, 50:70] = 1  # a second cat
    labels[50, 40] = 1  # touches the first cat only by a corner: 8-connected to it
    labels[0:5, :] = 2
    conf = np.full(labels.shape, 0.5, np.float32)
    conf[40:45, 50:70] = 0.9
    return labels, conf


def test_instances_are_8_connected_components_with_own_box_area_and_score():
    labels, conf = _two_blobs_with_a_hole()
    rec = records.ok_record(ImageRef(1, "a.png", "/a.png"), labels, conf, NAMES)
    cat = next(a for a in rec.annotations if a.category_id == 1)
    pieces = split_instances(cat, conf)
    assert len(pieces) == 2
    big, small = pieces
    assert big.area == 40 * 30 - 100 + 1 and small.area == 5 * 20
    assert big.bbox_xywh == [10, 10, 31, 41] and small.bbox_xywh == [50, 40, 20, 5]
    assert big.score == pytest.approx(0.5) and small.score == pytest.approx(0.9, abs=1 / 255)
    union = decode_mask(big.segmentation) | decode_mask(small.segmentation)
    assert (union == (labels == 1)).all()
    assert sum(p.area for p in pieces) == cat.area
    # pycocotools agrees with the boxes and areas
    for p in pieces:
        assert mask_utils.toBbox(p.segmentation).tolist() == p.bbox_xywh
        assert int(mask_utils.area(p.segmentation)) == p.area


def test_splitter_splits_only_the_thing_classes():
    labels, conf = _two_blobs_with_a_hole()
    rec = records.ok_record(ImageRef(1, "a.png", "/a.png"), labels, conf, NAMES)
    out = InstanceSplitter(frozenset({1}))(rec)
    assert sorted(a.category_id for a in out) == [1, 1, 2]
    assert InstanceSplitter()(rec) == rec.annotations


def test_exact_polygons_rasterise_back_to_the_mask_holes_included():
    labels, _ = _two_blobs_with_a_hole()
    mask = labels == 1
    polys = mask_polygons(mask, 0.0)
    assert len(polys) == 2  # one per outer contour; the hole is joined in by a keyhole
    assert polygon_iou(polys, mask) == 1.0
    h, w = mask.shape
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
    assert not drawn[20:30, 20:30].any()


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0])
def test_simplified_polygons_stay_close_and_keep_every_object(tolerance):
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 60) ** 2 + (xx - 80) ** 2 < 40**2
    speck = np.zeros_like(disc)
    speck[3, 3] = True
    exact = len(mask_polygons(disc, 0.0)[0])
    polys = mask_polygons(disc, tolerance)
    assert len(polys[0]) < exact / 2 and polygon_iou(polys, disc) > 0.97
    assert polygon_iou(mask_polygons(speck, tolerance), speck) == 1.0  # a one-pixel object is not dropped


def test_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        mask_polygons(np.ones((3, 3), bool), -1)
