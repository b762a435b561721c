"""Deterministic toy models that make CLIP-DIY verifiably correct on synthetic images.

NOT real models: selectable as ``--model toy --saliency toy`` for tests and demos on
images of saturated coloured shapes on a grey background.

- Toy image encoder: each pixel is assigned to the nearest of a few colour prototypes
  (brightness removed), or to ``grey`` when unsaturated; a crop's embedding is the
  fraction of its pixels per colour.
- Toy text encoder: a prompt's embedding is the one-hot of the colour word it contains
  (``red``, ``green``, ``blue``, ``yellow``, ``cyan``, ``magenta``, ``orange``,
  ``purple``); ``background`` maps to ``grey``; any other prompt gets a fixed
  pseudo-random direction in extra dimensions (so it matches no colour).
- Toy saliency: pixel saturation, soft-thresholded to [0, 1].
"""

from __future__ import annotations

import hashlib
import re

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 1.0),
}
GREY_AXIS = len(COLOURS)
EXTRA_DIMS = 16
EMBED_DIM = len(COLOURS) + 1 + EXTRA_DIMS
SATURATION_MIN = 0.35


def saturation(rgb_b3hw: torch.Tensor) -> torch.Tensor:
    """HSV saturation (max - min) / max of (B, 3, H, W) non-negative RGB -> (B, H, W)."""
    mx = rgb_b3hw.amax(dim=1)
    mn = rgb_b3hw.amin(dim=1)
    return (mx - mn) / mx.clamp(min=1e-6)


class ToyClip:
    """Colour-histogram 'CLIP' (see module docstring). Crops arrive as 0..1 RGB."""

    input_size = 32
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    logit_scale = 100.0

    def __init__(self, device: torch.device):
        self.device = device
        self.protos = torch.tensor(list(COLOURS.values()), device=device)  # (C, 3)

    @torch.inference_mode()
    def encode_image(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.float().clamp(0, 1)
        n = x.shape[0]
        sat = saturation(x)  # (N, H, W)
        unit = x / x.amax(dim=1, keepdim=True).clamp(min=1e-6)
        d = ((unit.unsqueeze(1) - self.protos.view(1, -1, 3, 1, 1)) ** 2).sum(dim=2)  # (N, C, H, W)
        idx = d.argmin(dim=1)
        idx = torch.where(sat >= SATURATION_MIN, idx, torch.full_like(idx, GREY_AXIS))
        hist = torch.zeros(n, EMBED_DIM, device=x.device)
        hist.scatter_add_(1, idx.view(n, -1), torch.ones_like(idx.view(n, -1), dtype=hist.dtype))
        return hist / idx[0].numel()

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), EMBED_DIM, device=self.device)
        names = list(COLOURS)
        for i, p in enumerate(prompts):
            words = re.findall(r"[a-z]+", p.lower())
            hit = next((w for w in words if w in COLOURS), None)
            if hit is not None:
                out[i, names.index(hit)] = 1.0
            elif "background" in words or "grey" in words or "gray" in words:
                out[i, GREY_AXIS] = 1.0
            else:  # unknown words: a fixed direction orthogonal to every colour
                seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
                g = torch.Generator().manual_seed(seed)
                out[i, GREY_AXIS + 1 :] = torch.randn(EXTRA_DIMS, generator=g).to(self.device)
        return out


class ToySaliency:
    """Saturated pixels are foreground: s = clamp((sat - 0.15) / 0.2, 0, 1)."""

    name = "toy"

    def __init__(self, device: torch.device):
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: list[torch.Tensor], names: list[str] | None = None) -> list[torch.Tensor]:
        out = []
        for img in images:
            sat = saturation(img.unsqueeze(0).float())[0]
            out.append(((sat - 0.15) / 0.2).clamp_(0, 1))
        return out
