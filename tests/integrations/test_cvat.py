"""``annotator.integrations.cvat`` with the real cvat-sdk (no CVAT server: it does not
install here). The function is loaded as cvat-cli loads a ``--function-module``
(``importlib.import_module`` then ``create(**params)``, cvat-cli 2.80's
``FunctionLoader``); its spec and every ``detect`` result go through the checks that
``cvat_sdk.auto_annotation.annotate_task`` applies before uploading (the driver's
``_AnnotationMapper.validate_and_remap`` against a task's labels); the masks decode
(``cvat_sdk.masks.decode_mask``) to the engine's own labels of the same images.

Without cvat-sdk the tests skip, or fail under ``ANNOTATOR_REQUIRE_CLIENTS=1``.
"""

from __future__ import annotations

import importlib
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from tests.clients import import_client

pytestmark = pytest.mark.clients

TOY = {"model": "toy", "saliency": "toy", "pretrained": "toy", "device": "cpu"}


@pytest.fixture(scope="module")
def cvat():
    import_client("cvat_sdk.auto_annotation", "pip install 'annotator[cvat]'")
    from cvat_sdk.auto_annotation import driver

    return driver


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A real toy-model run (images, vocabulary, the engine's labels per image)."""
    from tests.export.conftest import build_toy_run_output

    root = tmp_path_factory.mktemp("toy")
    output, expected, class_names = build_toy_run_output(root)
    images = {name: root / "data" / "images" / name for name in expected}
    return root / "vocab.txt", images, expected, class_names


def _load(**params):
    """As cvat-cli: the module, then its ``create`` with the ``-p`` parameters."""
    module = importlib.import_module("annotator.integrations.cvat")
    return module.create(**params)


def _context(driver, name="frame.png", threshold=None, poly=False):
    return driver._DetectionFunctionContextImpl(frame_name=name, conf_threshold=threshold, conv_mask_to_poly=poly)


def _task_labels(spec, type="mask"):
    """The labels a CVAT task made for this function has (same names, the server's ids;
    type ``mask``, or ``any``: CVAT's default for a label created by hand)."""
    import cvat_sdk.models as models

    return [models.Label._from_openapi_data(id=100 + label.id, name=label.name, type=type, color="#ff0000",
                                            attributes=[], sublabels=[], has_parent=False)
            for label in spec.labels]


def _mapper(driver, function, poly=False, type="mask"):
    return driver._AnnotationMapper(logging.getLogger("test"), function.spec.labels, _task_labels(function.spec, type),
                                    allow_unmatched_labels=False, conv_mask_to_poly=poly)


def test_spec_one_mask_label_per_class(cvat, toy_run):
    vocab, _, _, class_names = toy_run
    function = _load(vocab=str(vocab), **TOY)
    assert [(label.name, label.id, label.type) for label in function.spec.labels] == [
        (name, i, "mask") for i, name in enumerate(class_names) if i >= 1]
    _mapper(cvat, function)  # the driver accepts the spec against a task with these labels
    _mapper(cvat, function, type="any")
    comma = _load(vocab=",".join(class_names[1:3]), **TOY)
    assert [label.name for label in comma.spec.labels] == class_names[1:3]


def test_masks_decode_to_the_engines_labels(cvat, toy_run):
    from cvat_sdk.masks import decode_mask

    vocab, images, expected, class_names = toy_run
    function = _load(vocab=str(vocab), **TOY)
    mapper = _mapper(cvat, function)
    shapes_seen = 0
    for name, path in images.items():
        image = Image.open(path)
        shapes = function.detect(_context(cvat, name), image)
        assert all(s.type.value == "mask" and 0 <= s.score <= 1 for s in shapes)
        painted = np.zeros((image.height, image.width), np.int32)
        for s in shapes:
            mask = decode_mask(s.points, image_width=image.width, image_height=image.height)
            assert not (painted[mask] != 0).any()  # classes do not overlap
            painted[mask] = s.label_id
        np.testing.assert_array_equal(painted, expected[name], err_msg=name)
        _, remapped = mapper.validate_and_remap(shapes, 7)  # what annotate_task uploads (ids remapped in place)
        assert [(s.label_id, s.frame, s.source) for s in remapped] == [
            (100 + int(c), 7, "auto") for c in np.unique(expected[name]) if c]
        shapes_seen += len(shapes)
    assert shapes_seen > 0


def test_conf_threshold_and_filters(cvat, toy_run):
    vocab, images, expected, class_names = toy_run
    function = _load(vocab=str(vocab), **TOY)
    name, path = next(iter(images.items()))
    image = Image.open(path)
    scores = sorted(a.score for a in function.annotations(image, name))
    assert len(scores) >= 2
    cut = (scores[0] + scores[-1]) / 2
    shapes = function.detect(_context(cvat, name, threshold=cut), image)
    assert shapes and all(s.score >= cut for s in shapes)
    assert len(shapes) == sum(s >= cut for s in scores)
    assert function.detect(_context(cvat, name, threshold=1.0), image) == [] or max(scores) == 1.0
    # the export filters, from -p parameters as cvat-cli passes them (int:, float:, str:)
    present = [class_names[c] for c in np.unique(expected[name]) if c]
    only = _load(vocab=str(vocab), classes=present[0], min_area=1, **TOY)
    assert [label.name for label in only.spec.labels] == [present[0]]
    assert {s.label_id for s in only.detect(_context(cvat, name), image)} == {class_names.index(present[0])}


def test_instances_and_polygons(cvat, toy_run):
    from cvat_sdk.masks import decode_mask

    from annotator.export.shapes import polygon_iou
    from annotator.records import decode_mask as decode_rle

    vocab, images, expected, class_names = toy_run
    function = _load(vocab=str(vocab), instances=True, **TOY)
    for name, path in images.items():
        image = Image.open(path)
        objects = function.annotations(image, name)
        shapes = function.detect(_context(cvat, name), image)
        assert len(shapes) == len(objects) >= len(np.unique(expected[name])) - 1
        for s, a in zip(shapes, objects, strict=True):
            mask = decode_mask(s.points, image_width=image.width, image_height=image.height)
            np.testing.assert_array_equal(mask, decode_rle(a.segmentation))
        polys = function.detect(_context(cvat, name, poly=True), image)
        assert polys and all(s.type.value == "polygon" for s in polys)
        for c in {s.label_id for s in polys}:
            iou = polygon_iou([s.points for s in polys if s.label_id == c], expected[name] == c)
            assert iou > 0.9, (name, c, iou)
        _mapper(cvat, function, poly=True, type="any").validate_and_remap(polys, 0)  # (remaps label ids in place)


def test_bad_parameters_are_one_line_errors(cvat, toy_run):
    vocab, _, _, _ = toy_run
    with pytest.raises(ValueError, match="expected the parameter vocab"):
        _load(**TOY)
    with pytest.raises(ValueError, match="unknown parameter 'modle'.*valid parameters: .*model"):
        _load(vocab=str(vocab), modle="toy")
    with pytest.raises(ValueError, match="protocol"):
        _load(vocab=str(vocab), protocol="nonesuch", **TOY)
    with pytest.raises(ValueError, match="unknown class name"):
        _load(vocab=str(vocab), classes="nonesuch", **TOY)


def test_missing_cvat_sdk_names_the_extra(toy_run, monkeypatch):
    vocab, _, _, _ = toy_run
    monkeypatch.setitem(sys.modules, "cvat_sdk.auto_annotation", None)
    with pytest.raises(ImportError, match=r"pip install 'annotator\[cvat\]'"):
        _load(vocab=str(vocab), **TOY)
