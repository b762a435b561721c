"""Saliency guidance and the per-pixel decision (pure torch).

Guided scores (released CLIP-DIY code): background ``M[0] * (1 - s)``, every other class
``M[c] * s``, where ``s`` in [0, 1] is the foreground saliency. The label is the argmax.

Confidence: the released code takes a softmax of the guided raw cosines, which lie in
about 0.1..0.35, so it is nearly uniform and useless as a confidence. We report
``max_c softmax(logit_scale * guided)_c`` with the CLIP model's own ``logit_scale``
(100 for the released ViT-B/32): a calibrated probability. The argmax is the same either
way, since scaling by a positive constant keeps the order.
"""

from __future__ import annotations

import torch


def guided_decision(
    scores_khw: torch.Tensor, saliency_hw: torch.Tensor | None, logit_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guide class scores with saliency, then decide labels and calibrated confidence.

    Args:
        scores_khw: (K, H, W) float32 class scores (M_clip), class 0 = background.
        saliency_hw: (H, W) float32 in [0, 1], or None for no guidance.
        logit_scale: the CLIP model's ``logit_scale.exp()``.
    Returns:
        labels (H, W) int64 in 0..K-1; confidence (H, W) float32 in [0, 1] = max over
        classes of softmax(logit_scale * guided).

    The logit scale is folded into the per-pixel guidance factors and the softmax
    maximum, ``1 / sum_c exp(l_c - l_max)``, is computed in place: one (K, H, W)
    temporary, no softmax tensor.
    """
    if saliency_hw is None:
        logits = scores_khw * logit_scale
    else:
        logits = scores_khw * (saliency_hw * logit_scale).unsqueeze(0)
        logits[0] = scores_khw[0] * ((1.0 - saliency_hw) * logit_scale)
    lmax, labels = logits.max(dim=0)
    conf = logits.sub_(lmax.unsqueeze(0)).exp_().sum(dim=0).reciprocal_()
    return labels, conf


def band_rows(num_classes: int, size_hw: tuple[int, int], max_elements: int = 1 << 24) -> list[tuple[int, int]]:
    """Row bands so that a (K, band, W) float32 tensor stays under ``max_elements``."""
    h, w = size_hw
    step = max(1, min(h, max_elements // max(1, num_classes * w)))
    return [(y, min(h, y + step)) for y in range(0, h, step)]
