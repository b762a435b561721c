from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from annotator.records import (
    ERROR_MAX_LENGTH,
    Annotation,
    ImageRecord,
    RecordError,
    annotations_from_labels,
    decode_confidence_png,
    decode_mask,
    encode_confidence_png,
    encode_mask,
    error_record,
    labels_from_annotations,
    ok_record,
)

NAMES = ["background", "cat", "dog", "person"]


@dataclass
class Ref:
    image_id: int
    file_name: str
    uri: str


REF = Ref(7, "a/b.jpg", "/data/a/b.jpg")


def _literal_labels() -> np.ndarray:
    # 4 x 5; class 1 an L shape, class 3 a single pixel, class 2 absent
    return np.array(
        [
            [0, 1, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 1, 1, 0, 3],
            [0, 0, 0, 0, 0],
        ],
        dtype=np.int32,
    )


def _tight_bbox(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def test_annotations_from_literal_labels():
    labels = _literal_labels()
    conf = np.full(labels.shape, 0.5, dtype=np.float32)
    conf[0, 1] = 1.0
    conf[2, 4] = 0.25
    anns = annotations_from_labels(labels, conf, NAMES)
    assert [a.category_id for a in anns] == [1, 3]
    assert [a.category_name for a in anns] == ["cat", "person"]
    cat, person = anns
    assert cat.bbox_xywh == [1.0, 0.0, 2.0, 3.0]
    assert cat.area == 4
    assert cat.score == pytest.approx((1.0 + 0.5 * 3) / 4)
    assert person.bbox_xywh == [4.0, 2.0, 1.0, 1.0]
    assert person.area == 1
    assert person.score == 0.25
    assert cat.segmentation["size"] == [4, 5]
    assert isinstance(cat.segmentation["counts"], str)
    np.testing.assert_array_equal(decode_mask(cat.segmentation), labels == 1)
    np.testing.assert_array_equal(decode_mask(person.segmentation), labels == 3)


def test_rle_is_pycocotools_compatible():
    labels = _literal_labels()
    ann = annotations_from_labels(labels, np.zeros(labels.shape, np.float32), NAMES)[0]
    rle = {"size": ann.segmentation["size"], "counts": ann.segmentation["counts"].encode("ascii")}
    assert int(mask_utils.area(rle)) == ann.area
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), labels == 1)
    # same bytes as encoding the mask directly
    direct = mask_utils.encode(np.asfortranarray((labels == 1).astype(np.uint8)))
    assert direct["counts"].decode("ascii") == ann.segmentation["counts"]


@pytest.mark.parametrize("seed", range(5))
def test_random_labels_round_trip_and_tight_boxes(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 40, size=2)
    labels = rng.integers(0, len(NAMES), size=(h, w)).astype(np.int64)
    # sparse class so boxes are not the whole image
    labels[labels == 2] = 0
    labels[rng.integers(0, h), rng.integers(0, w)] = 2
    conf = rng.random((h, w), dtype=np.float32)
    anns = annotations_from_labels(labels, conf, NAMES)
    assert [a.category_id for a in anns] == sorted(set(np.unique(labels).tolist()) - {0})
    for a in anns:
        mask = labels == a.category_id
        np.testing.assert_array_equal(decode_mask(a.segmentation), mask)
        assert a.bbox_xywh == _tight_bbox(mask)
        assert a.area == int(mask.sum())
        assert a.score == round(float(conf[mask].astype(np.float64).mean()), 6)
    np.testing.assert_array_equal(labels_from_annotations(anns, (h, w)), labels)


def test_background_only_gives_no_annotations():
    labels = np.zeros((3, 3), np.int32)
    assert annotations_from_labels(labels, np.ones((3, 3), np.float32), NAMES) == []


@pytest.mark.parametrize(
    "labels, conf, match",
    [
        (np.zeros((2, 2, 1), np.int32), np.zeros((2, 2, 1), np.float32), "2-D integer"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), "2-D integer"),
        (np.zeros((2, 2), np.int32), np.zeros((2, 3), np.float32), "shape"),
        (np.full((2, 2), 4, np.int32), np.zeros((2, 2), np.float32), r"\[0, 3\]"),
        (np.full((2, 2), -1, np.int32), np.zeros((2, 2), np.float32), r"\[0, 3\]"),
        (np.ones((2, 2), np.int32), np.full((2, 2), 1.5, np.float32), r"\[0, 1\]"),
        (np.ones((2, 2), np.int32), np.full((2, 2), np.nan, np.float32), r"\[0, 1\]"),
    ],
)
def test_annotations_from_labels_rejects_bad_input(labels, conf, match):
    with pytest.raises(RecordError, match=match):
        annotations_from_labels(labels, conf, NAMES)


def test_annotations_from_labels_encodes_all_classes_in_one_call(monkeypatch):
    """The cost that kept it fast, counted instead of timed (the time per image is in
    ``python -m benchmarks.encode``): one pycocotools call for every class present, on
    one (H, W, present) Fortran-ordered uint8 stack, so the work grows with the pixels
    times the classes present, never with the vocabulary; one pass for the statistics."""
    from annotator.records import encode as encode_module

    calls, stats_calls = [], []
    real_encode, real_stats = encode_module.mask_utils.encode, encode_module.class_stats_numpy

    def counting_encode(masks):
        calls.append((masks.shape, masks.dtype, masks.flags.f_contiguous, masks.nbytes))
        return real_encode(masks)

    def counting_stats(*a, **kw):
        stats_calls.append(1)
        return real_stats(*a, **kw)

    monkeypatch.setattr(encode_module.mask_utils, "encode", counting_encode)
    monkeypatch.setattr(encode_module, "class_stats_numpy", counting_stats)
    names = ["background", *(f"class {i}" for i in range(1, 1000))]  # a large vocabulary, 3 classes present
    labels = np.zeros((375, 500), np.int32)
    labels[50:200, 100:300] = 1
    labels[220:370, 10:80] = 500
    labels[10:40, 400:499] = 999
    conf = np.random.default_rng(0).random((375, 500), dtype=np.float32)
    anns = annotations_from_labels(labels, conf, names)
    assert [a.category_id for a in anns] == [1, 500, 999]
    assert calls == [((375, 500, 3), np.uint8, True, 375 * 500 * 3)] and stats_calls == [1]
    calls.clear()
    stats_calls.clear()
    pixels = np.bincount(labels.ravel(), minlength=len(names)).astype(np.int64)
    sums = np.bincount(labels.ravel(), weights=conf.ravel(), minlength=len(names))
    assert len(annotations_from_labels(labels, conf, names, class_stats=(pixels, sums))) == 3
    assert len(calls) == 1 and stats_calls == []  # statistics given (from the GPU): not recomputed


def test_confidence_png_round_trip():
    conf = np.array([[0.0, 1.0, 0.5], [0.2, 0.999, 0.001]], np.float32)
    png = encode_confidence_png(conf)
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.mode == "L" and img.size == (3, 2)
        raw = np.asarray(img)
    np.testing.assert_array_equal(raw, np.rint(conf * 255).astype(np.uint8))
    back = decode_confidence_png(png)
    assert back.dtype == np.float32 and back.shape == (2, 3)
    np.testing.assert_allclose(back, conf, atol=0.5 / 255 + 1e-7)


def test_confidence_png_rejects():
    with pytest.raises(RecordError):
        encode_confidence_png(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(RecordError):
        encode_confidence_png(np.full((2, 2), np.nan, np.float32))
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    with pytest.raises(RecordError, match="grayscale"):
        decode_confidence_png(buf.getvalue())


def test_ok_record_row_round_trip():
    labels = _literal_labels()
    conf = np.full(labels.shape, 0.75, np.float32)
    rec = ok_record(REF, labels, conf, NAMES)
    assert (rec.width, rec.height, rec.status, rec.error) == (5, 4, "ok", None)
    row = rec.to_row()
    assert set(row) == {
        "image_id",
        "file_name",
        "uri",
        "width",
        "height",
        "status",
        "error",
        "annotations",
        "confidence_png",
    }
    assert set(row["annotations"][0]) == {
        "category_id",
        "category_name",
        "segmentation",
        "bbox",
        "area",
        "score",
    }
    back = ImageRecord.from_row(row)
    assert back == rec
    np.testing.assert_array_equal(labels_from_annotations(back.annotations, back.size_hw), labels)
    np.testing.assert_allclose(decode_confidence_png(back.confidence_png), conf, atol=1 / 255)


def test_from_row_accepts_base64_png():
    import base64

    rec = ok_record(REF, _literal_labels(), np.zeros((4, 5), np.float32), NAMES)
    row = rec.to_row()
    row["confidence_png"] = base64.b64encode(row["confidence_png"]).decode("ascii")
    assert ImageRecord.from_row(row) == rec


def test_error_record():
    rec = error_record(REF, "decode-failed", "cannot identify image file")
    assert rec.status == "error" and rec.error == "decode-failed: cannot identify image file"
    assert rec.width is None and rec.height is None and rec.annotations == [] and rec.confidence_png is None
    assert ImageRecord.from_row(rec.to_row()) == rec
    long = error_record(REF, "engine-failed", "x" * 10_000, size_hw=(4, 5))
    assert len(long.error) == ERROR_MAX_LENGTH and long.error.endswith("...")
    assert (long.height, long.width) == (4, 5)


def _ann(**kw) -> dict:
    d = {
        "category_id": 1,
        "category_name": "cat",
        "segmentation": encode_mask(np.ones((2, 2), bool)),
        "bbox_xywh": [0, 0, 2, 2],
        "area": 4,
        "score": 0.5,
    }
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "kw",
    [
        {"category_id": 0},
        {"category_id": True},
        {"category_id": 1.0},
        {"category_name": ""},
        {"segmentation": {"size": [2, 2]}},
        {"segmentation": {"size": [2], "counts": "abc"}},
        {"segmentation": {"size": [2, 2], "counts": ""}},
        {"bbox_xywh": [0, 0, 2]},
        {"bbox_xywh": [0, -1, 2, 2]},
        {"bbox_xywh": [0, float("nan"), 2, 2]},
        {"area": 0},
        {"score": 1.5},
        {"score": -0.1},
    ],
)
def test_annotation_validation(kw):
    with pytest.raises(RecordError):
        Annotation(**_ann(**kw))


def test_annotation_dict_round_trip():
    a = Annotation(**_ann())
    d = a.to_dict()
    assert d["bbox"] == [0.0, 0.0, 2.0, 2.0] and "bbox_xywh" not in d
    assert Annotation.from_dict(d) == a


def _record(**kw) -> dict:
    d = {
        "image_id": 1,
        "file_name": "x.jpg",
        "uri": "x.jpg",
        "width": 2,
        "height": 2,
        "status": "ok",
        "error": None,
        "annotations": [Annotation(**_ann())],
        "confidence_png": b"\x89PNG",
    }
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"image_id": 0}, "image_id"),
        ({"file_name": ""}, "file_name"),
        ({"status": "done"}, "status"),
        ({"error": "oops"}, "error"),
        ({"width": None}, "width"),
        ({"width": 3}, "segmentation.size"),
        ({"confidence_png": None}, "confidence_png"),
        ({"annotations": [Annotation(**_ann()), Annotation(**_ann())]}, "increasing"),
        ({"status": "error", "error": None, "annotations": [], "confidence_png": None}, "error"),
        ({"status": "error", "error": "x: y", "confidence_png": None}, "annotations"),
        (
            {
                "status": "error",
                "error": "x" * (ERROR_MAX_LENGTH + 1),
                "annotations": [],
                "confidence_png": None,
            },
            "at most",
        ),
    ],
)
def test_image_record_validation(kw, match):
    with pytest.raises(RecordError, match=match):
        ImageRecord(**_record(**kw))


def test_decode_mask_accepts_uncompressed_rle():
    mask = np.array([[1, 0], [1, 1]], bool)
    # column-major runs: 0 zeros, 2 ones, 1 zero, 1 one
    np.testing.assert_array_equal(decode_mask({"size": [2, 2], "counts": [0, 2, 1, 1]}), mask)


def test_labels_from_annotations_size_mismatch():
    a = Annotation(**_ann())
    with pytest.raises(RecordError, match=r"\[3, 3\]"):
        labels_from_annotations([a], (3, 3))


def test_precomputed_class_stats_are_used_and_checked():
    labels = _literal_labels()
    conf = np.full(labels.shape, 0.5, np.float32)
    pixels = np.bincount(labels.ravel(), minlength=len(NAMES))
    sums = pixels * 0.25  # not what the confidence map says: proves the given stats are used
    anns = annotations_from_labels(labels, conf, NAMES, (pixels, sums))
    assert [a.score for a in anns] == [0.25] * len(anns)
    assert [a.area for a in anns] == [int(pixels[a.category_id]) for a in anns]
    with pytest.raises(RecordError, match=r"class_stats: expected pixel counts summing to"):
        annotations_from_labels(labels, conf, NAMES, (pixels[:2], sums[:2]))
    with pytest.raises(RecordError, match=r"pixel total"):
        annotations_from_labels(labels, conf, NAMES, (pixels + 1, sums))
