"""The naive (released-loop) baseline computes what the engine computes."""

import numpy as np
import pytest
import torch

from annotator.config import EngineConfig
from annotator.engine import Engine
from annotator.inputs.vocab import Vocabulary
from benchmarks.released_loop import bilinear_resize_uint8, naive_predict
from tests.synthetic import make_image


@pytest.fixture(scope="module")
def toy_engine():
    cfg = EngineConfig(model="toy", saliency="toy", pretrained="toy", protocol="official", device="cpu")
    return Engine(cfg, Vocabulary.from_names(["red", "green", "blue", "yellow"]))


def test_naive_agrees_with_engine_on_toy_model(toy_engine):
    images, truths = zip(*(make_image(seed, size) for seed, size in
                           [(0, (240, 320)), (1, (375, 500)), (2, (500, 375))]), strict=True)
    names = [f"img{i}.jpg" for i in range(len(images))]
    timings = {}
    naive = naive_predict(toy_engine, list(images), names, timings=timings)
    fast = toy_engine.predict(list(images), names)
    assert len(naive) == len(fast) == len(images)
    for img, truth, a, b in zip(images, truths, naive, fast, strict=True):
        assert a.labels_hw.shape == img.shape[:2] and a.labels_hw.dtype == np.int32
        assert a.confidence_hw.dtype == np.float32
        assert 0.0 <= a.confidence_hw.min() and a.confidence_hw.max() <= 1.0
        # not a trivial map: the shapes are found, so agreement below means something
        assert len(np.unique(a.labels_hw)) > 1
        assert (a.labels_hw == truth).mean() > 0.9
        assert (a.labels_hw == b.labels_hw).mean() >= 0.99
    assert timings["clip"] > 0 and timings["saliency"] > 0


def test_naive_accepts_chw_tensors_and_odd_batches(toy_engine):
    img, _ = make_image(5, (200, 300))
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    a = naive_predict(toy_engine, [img, t, img], batch_images=2)
    assert len(a) == 3
    np.testing.assert_array_equal(a[0].labels_hw, a[1].labels_hw)
    np.testing.assert_array_equal(a[0].labels_hw, a[2].labels_hw)


def test_naive_rejects_bad_input(toy_engine):
    with pytest.raises(ValueError, match="uint8"):
        naive_predict(toy_engine, [np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="names"):
        naive_predict(toy_engine, [np.zeros((10, 10, 3), np.uint8)], ["a", "b"])


def test_bilinear_resize_matches_half_pixel_definition():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    out = bilinear_resize_uint8(img, 16)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(16, 16),
                                          mode="bilinear", align_corners=False, antialias=False)
    ref = ref[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
