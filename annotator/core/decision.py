"""The per-pixel decision at the output resolution, for both protocols (pure torch).

From one image's per-scale class grids (``multiscale.scale_maps``) and its saliency map
to labels and calibrated confidence at the image's own size:

- ``official`` (:func:`decide_official`): the released evaluation. The dense map and the
  saliency at ``input_size`` squared, the guided decision there, and both results
  resized to the image with nearest.
- ``full`` (:func:`decide_full`): the dense map and the saliency brought to the image's
  size first, then decided there, in row bands (:func:`guidance.band_rows`) so that no
  (K, H, W) tensor of a large photograph is ever held.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from annotator.core import guidance, multiscale

__all__ = ["decide", "decide_full", "decide_official"]


def decide_official(
    maps: list[torch.Tensor],
    saliency: torch.Tensor | None,
    size_hw: tuple[int, int],
    *,
    input_size: int,
    scale_weights: tuple[float, ...],
    logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decide at ``input_size`` squared, then resize labels and confidence with nearest.

    Args:
        maps: per scale, (K, n, n) float class scores of one image.
        saliency: (h, w) float in [0, 1] at any size, or None for no guidance.
        size_hw: the image's (H, W).
    Returns:
        labels (H, W) int32; confidence (H, W) float32.
    """
    side = input_size
    m = multiscale.dense_scores(maps, scale_weights, (side, side))
    s = None
    if saliency is not None:
        s = F.interpolate(saliency[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    labels, conf = guidance.guided_decision(m, s, logit_scale)
    both = torch.stack([labels.float(), conf])[None]
    both = F.interpolate(both, size=size_hw, mode="nearest")[0]
    return both[0].to(torch.int32), both[1]


def decide_full(
    maps: list[torch.Tensor],
    saliency: torch.Tensor | None,
    size_hw: tuple[int, int],
    *,
    num_classes: int,
    scale_weights: tuple[float, ...],
    logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decide at the image's size, band by band (same arguments and results as
    :func:`decide_official`; ``num_classes`` sizes the bands)."""
    device = maps[0].device
    s_full = None
    if saliency is not None:
        s_full = F.interpolate(saliency[None, None].float(), size=size_hw, mode="bilinear", align_corners=False)[0, 0]
    labels = torch.empty(size_hw, dtype=torch.int32, device=device)
    conf = torch.empty(size_hw, dtype=torch.float32, device=device)
    for y0, y1 in guidance.band_rows(num_classes, size_hw):
        m = multiscale.dense_scores(maps, scale_weights, size_hw, rows=(y0, y1))
        lab, cf = guidance.guided_decision(m, None if s_full is None else s_full[y0:y1], logit_scale)
        labels[y0:y1], conf[y0:y1] = lab, cf
    return labels, conf


def decide(
    maps: list[torch.Tensor],
    saliency: torch.Tensor | None,
    size_hw: tuple[int, int],
    *,
    protocol: str,
    input_size: int,
    num_classes: int,
    scale_weights: tuple[float, ...],
    logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decide_official` under ``protocol == "official"``, else :func:`decide_full`."""
    if protocol == "official":
        return decide_official(maps, saliency, size_hw, input_size=input_size, scale_weights=scale_weights,
                               logit_scale=logit_scale)
    return decide_full(maps, saliency, size_hw, num_classes=num_classes, scale_weights=scale_weights,
                       logit_scale=logit_scale)
