"""CLIP backends: open_clip models, and the ``tiny-random`` test model.

A backend exposes ``input_size`` (square side in pixels), ``mean``/``std`` (per RGB
channel, for 0..1 input), ``logit_scale`` (float), ``encode_image(crops)`` (N, 3, S, S)
float normalised -> (N, D), and ``encode_text(prompts)`` list[str] -> (P, D).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_RANDOM_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class OpenClipBackend:
    """An open_clip model in eval mode on one device."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", model.visual.image_size)
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(cfg.get("mean") or getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
        self.std = tuple(cfg.get("std") or getattr(model.visual, "image_std", None) or OPENAI_STD)
        self.logit_scale = float(model.logit_scale.detach().exp().item())

    @torch.inference_mode()
    def encode_image(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(crops)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens)


def is_torchscript_archive(path: str) -> bool:
    """``path`` is a TorchScript archive (OpenAI's released ``ViT-B-32.pt`` and the like):
    a zip holding ``<name>/code/``; ``torch.load(weights_only=True)`` refuses those."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except OSError:
        return False


def build_open_clip(model: str, checkpoint: str | None, device: torch.device, seed: int = 0,
                    pretrained: str | None = None) -> OpenClipBackend:
    """Create an open_clip model (random init when ``checkpoint`` is None) on ``device``.

    ``pretrained`` is the tag ``checkpoint`` was resolved from (``openai``, ...): open_clip
    applies a tag's ``quick_gelu`` only when it downloads the tag itself, never to a file,
    so it is forced here when the tag was trained with QuickGELU
    (:func:`annotator.models.open_clip_names.needs_quick_gelu`); otherwise OpenAI's
    weights would run with plain GELU. A TorchScript archive (OpenAI's own ``.pt``
    files) is rebuilt from its state dict by open_clip's ``load_openai_model``, which
    always uses QuickGELU, as those models were trained."""
    import open_clip

    from annotator.models.open_clip_names import needs_quick_gelu

    torch.manual_seed(seed)
    if checkpoint and is_torchscript_archive(checkpoint):
        m = open_clip.load_openai_model(checkpoint, precision="fp32", device="cpu")
    else:
        m = open_clip.create_model(model, pretrained=checkpoint, device="cpu",
                                   force_quick_gelu=needs_quick_gelu(model, pretrained))
    return OpenClipBackend(m, open_clip.get_tokenizer(model), device)


def build_tiny_random(device: torch.device, seed: int = 0) -> OpenClipBackend:
    """A small CLIP of open_clip's architecture with seeded random weights (tests only)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    m = CLIP(**TINY_RANDOM_CONFIG)
    return OpenClipBackend(m, SimpleTokenizer(context_length=77), device)
