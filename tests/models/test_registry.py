"""Every entry of the model registry builds and runs (as timm's tests/test_models.py
does over its registry): a CLIP backend encodes crops and prompts into vectors of one
width; a saliency backend maps images to (H, W) maps in [0, 1]. Random weights only
(``--pretrained random``): nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotator.config import EngineConfig
from annotator.models import registry
from annotator.models.registry import (
    CLIP_BACKENDS,
    OPEN_CLIP,
    SALIENCY_BACKENDS,
    ResolvedWeights,
)

CPU = torch.device("cpu")
CLIP_ENTRIES = [*CLIP_BACKENDS, "ViT-B-32"]  # the open_clip fallback, with one real architecture


@pytest.mark.parametrize("model", CLIP_ENTRIES)
def test_clip_backend_builds_and_encodes(model):
    cfg = EngineConfig(model=model, pretrained="random", saliency="none", device="cpu")
    weights = registry.resolve_weights(cfg)
    backend = registry.build_clip(cfg, weights, CPU)
    assert registry.clip_backend(model) is CLIP_BACKENDS.get(model, OPEN_CLIP)
    size = backend.input_size
    crops = torch.rand(2, 3, size, size)
    image_vectors = backend.encode_image(crops)
    text_vectors = backend.encode_text(["a photo of a red", "a photo of a background"])
    assert image_vectors.shape[0] == 2 and text_vectors.shape[0] == 2
    assert image_vectors.shape[1] == text_vectors.shape[1]
    assert torch.isfinite(image_vectors.float()).all() and backend.logit_scale > 0


def _saliency_name(name: str, tmp_path) -> str:
    backend = SALIENCY_BACKENDS[name]
    if not backend.prefix:
        return name
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "img.npy", np.full((24, 32), 0.25, dtype=np.float32))
    return f"{name}:{maps}"


@pytest.mark.parametrize("name", list(SALIENCY_BACKENDS))
def test_saliency_backend_builds_and_maps(name, tmp_path):
    cfg = EngineConfig(model="toy", pretrained="random", saliency=_saliency_name(name, tmp_path), device="cpu",
                       saliency_max_side=16)
    weights = registry.resolve_weights(cfg)
    assert weights == ResolvedWeights()  # random: nothing to resolve
    model = registry.build_saliency(cfg, weights, CPU)
    if name == "none":
        assert model is None
        return
    images = [torch.rand(3, 24, 32)]
    (saliency_hw,) = model(images, ["img.jpg"])
    # at the size the backend ran at: FOUND's short side is capped at saliency_max_side=16
    # (24x32 -> 16x21; the engine upsamples), the others' at the image's size
    expected_hw = (16, 21) if name.startswith("found") else (24, 32)
    assert tuple(saliency_hw.shape) == expected_hw, (name, tuple(saliency_hw.shape))
    assert float(saliency_hw.min()) >= 0.0 and float(saliency_hw.max()) <= 1.0


def test_weight_files_are_data():
    """The FOUND entry needs DINO and the decoder, found-bkg only DINO; each spec names
    its file, source, option and (for the decoder) sha256."""
    assert [s.file_name for s in SALIENCY_BACKENDS["found"].weights] == ["dino_deitsmall8_pretrain.pth",
                                                                        "decoder_weights.pt"]
    assert [s.file_name for s in SALIENCY_BACKENDS["found-bkg"].weights] == ["dino_deitsmall8_pretrain.pth"]
    assert SALIENCY_BACKENDS["found"].weights[1].sha256.startswith("47ff2a4a")
    for backend in SALIENCY_BACKENDS.values():
        for spec in backend.weights:
            assert spec.url.startswith("https://") and spec.option.startswith("--")


@pytest.mark.parametrize("bad", ["sam", "precomputed", "toy:x", ""])
def test_unknown_saliency_names_are_refused(bad):
    with pytest.raises(ValueError, match="--saliency: expected one of found, found-bkg, none, precomputed:"):
        registry.check_saliency_name(bad)
