"""open_clip models built from a resolved checkpoint FILE get the activation their tag
was trained with: open_clip applies a tag's ``quick_gelu`` only when it downloads the
tag itself, so ``build_open_clip`` forces it (OpenAI's weights with plain GELU would be a
silently different model). Nothing is downloaded: ViT-B-32's name is given a tiny
architecture for the test, and the checkpoints are saved from random models."""

from __future__ import annotations

import warnings

import pytest
import torch

from annotator.config import EngineConfig
from annotator.models import clip, registry
from annotator.models.open_clip_names import needs_quick_gelu

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP  # noqa: E402
from open_clip.transformer import QuickGELU  # noqa: E402

CPU = torch.device("cpu")


def _activations(model: torch.nn.Module) -> set[type]:
    return {type(block.mlp.gelu) for block in model.visual.transformer.resblocks}


@pytest.fixture
def tiny_vit_b_32(monkeypatch, tmp_path):
    """ViT-B-32's name with the tiny architecture; a checkpoint file saved from it."""
    from open_clip import factory

    monkeypatch.setitem(factory._MODEL_CONFIGS, "ViT-B-32", dict(clip.TINY_RANDOM_CONFIG))
    path = tmp_path / "open_clip_ViT-B-32_openai.bin"
    torch.save(CLIP(**clip.TINY_RANDOM_CONFIG).state_dict(), path)
    return str(path)


def test_the_names_table_says_which_tags_need_quick_gelu():
    assert needs_quick_gelu("ViT-B-32", "openai") and needs_quick_gelu("ViT-B-16", "OpenAI")
    assert needs_quick_gelu("ViT-B-32", "laion400m_e32")
    assert not needs_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    assert not needs_quick_gelu("ViT-B-32", "/some/file.pt") and not needs_quick_gelu("ViT-B-32", None)


def test_an_openai_tag_resolved_to_a_file_runs_with_quick_gelu(tiny_vit_b_32):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no QuickGELU mismatch warning either
        backend = clip.build_open_clip("ViT-B-32", tiny_vit_b_32, CPU, pretrained="openai")
    assert _activations(backend.model) == {QuickGELU}


def test_a_gelu_tag_and_a_plain_file_keep_gelu(tiny_vit_b_32):
    for tag in ("laion2b_s34b_b79k", tiny_vit_b_32):
        backend = clip.build_open_clip("ViT-B-32", tiny_vit_b_32, CPU, pretrained=tag)
        assert _activations(backend.model) == {torch.nn.GELU}, tag


def test_the_registry_passes_the_tag(tiny_vit_b_32, monkeypatch):
    """The engine's path: EngineConfig(pretrained='openai') -> resolved file -> QuickGELU."""
    cfg = EngineConfig(model="ViT-B-32", pretrained="openai", saliency="none", device="cpu")
    weights = registry.ResolvedWeights(clip=tiny_vit_b_32)
    backend = registry.build_clip(cfg, weights, CPU)
    assert _activations(backend.model) == {QuickGELU}


def _save_torchscript_checkpoint(state_dict: dict, path: str) -> None:
    """A TorchScript archive holding ``state_dict`` under its keys, as OpenAI's ``.pt``
    files do (``torch.load(weights_only=True)`` refuses such archives)."""

    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state_dict.items():
        module = root
        *path_parts, leaf = key.split(".")
        for part in path_parts:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(path)


def test_an_openai_torchscript_checkpoint_loads_with_its_weights_and_quick_gelu(tiny_vit_b_32, tmp_path):
    # OpenAI's builder infers 64-wide heads from the weights: a tiny model with such heads
    openai_like = {"embed_dim": 64,
                   "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
    source = CLIP(**openai_like, quick_gelu=True).eval()
    with torch.no_grad():  # OpenAI's loader rounds the weights through fp16: values it keeps exactly
        for param in source.parameters():
            param.copy_(param.half().float())
    path = str(tmp_path / "open_clip_ViT-B-32_openai.pt")
    _save_torchscript_checkpoint(source.state_dict(), path)
    assert clip.is_torchscript_archive(path) and not clip.is_torchscript_archive(tiny_vit_b_32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = clip.build_open_clip("ViT-B-32", path, CPU, pretrained="openai")
    assert _activations(backend.model) == {QuickGELU}
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(backend.encode_image(x), source.encode_image(x))
