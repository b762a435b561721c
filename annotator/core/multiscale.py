"""Multi-scale dense CLIP inference (pure torch: tensors in, tensors out).

Stages, as in the released CLIP-DIY code:

1. ``resize_input``: each image to ``input_size`` squared, bilinear without antialiasing
   (OpenCV ``INTER_LINEAR`` semantics), rounded back to 0..255 integers.
2. ``cut_crops``: every patch of every scale cut on the device and resized to the
   encoder's input size with antialiased bicubic (PIL's kernel), rounded like a PIL
   uint8 image, scaled to 0..1 and normalised with the encoder's mean/std.

Steps 1 and 2 have two arithmetics. ``exact=True`` (the official protocol) reproduces
OpenCV's and PIL's integer rounding bit for bit (:mod:`annotator.core.exact_resize`);
``exact=False`` (the ``full`` protocol) computes in float32 and rounds half to even,
which differs by 1 on a few percent of channel values and is faster on the CPU.
3. the encoder embeds the crops; ``patch_scores`` = raw cosine with every class.
4. ``scale_maps``: each scale's scores laid out on its grid; ``dense_scores`` upsamples
   each grid bilinearly (``align_corners=False``) and takes the weighted mean.

Upsampling is written as separable interpolation matrices (``bilinear_matrix``), which
equal ``F.interpolate(mode="bilinear", align_corners=False)`` exactly and let the
``full`` protocol produce class maps at the original resolution band by band, without
ever holding a K x H x W tensor for a 4000x3000 photo.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from annotator.core.exact_resize import opencv_linear_resize, pil_bicubic_resize_exact
from annotator.core.geometry import ScaleGrid


def resize_input(image_3hw: torch.Tensor, size: int, exact: bool = False) -> torch.Tensor:
    """Resize one uint8 image to ``size`` x ``size`` (OpenCV INTER_LINEAR semantics).

    Args:
        image_3hw: (3, H, W) uint8, RGB.
        exact: OpenCV's own fixed-point arithmetic (equal to ``cv2.resize``) instead of
            float bilinear rounded half to even.
    Returns:
        (3, size, size) float32 holding integers in 0..255 (like a uint8 image).
    """
    if exact:
        return opencv_linear_resize(image_3hw, (size, size)).float()
    x = image_3hw.unsqueeze(0).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round_().clamp_(0, 255)[0]


def pil_bicubic_resize(x_bchw: torch.Tensor, size: int) -> torch.Tensor:
    """PIL's ``Image.resize(BICUBIC)`` of uint8 images, on the device.

    PIL resamples horizontally, rounds and clips to uint8, then vertically; doing the
    same (antialiased bicubic is PIL's kernel, a = -0.5) matches PIL to +-1 even on
    noise, where one 2-D pass would differ wherever the first pass overshoots 0..255.

    Args:
        x_bchw: (B, C, H, W) float32 holding integers 0..255.
    Returns:
        (B, C, size, size) float32 integers 0..255.
    """
    h = F.interpolate(x_bchw, size=(x_bchw.shape[2], size), mode="bicubic", align_corners=False, antialias=True)
    h = h.round_().clamp_(0, 255)
    v = F.interpolate(h, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return v.round_().clamp_(0, 255)


def cut_crops(
    images_b3ss: torch.Tensor,
    grids: list[ScaleGrid],
    out_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    exact: bool = False,
) -> torch.Tensor:
    """All patches of all scales, resized and normalised for the encoder.

    Args:
        images_b3ss: (B, 3, L, L) float32, integer values 0..255 (from ``resize_input``).
        grids: the scales (see :func:`annotator.core.geometry.scale_grids`).
        out_size: the encoder's square input size.
        exact: PIL's integer bicubic (equal to ``Image.resize(BICUBIC)``), then the
            released preprocessing's order: ``x / 255``, then ``(x - mean) / std``.
    Returns:
        (B * N, 3, out_size, out_size) float32, normalised; ordered image-major, then
        scale, then patch row-major (N = patches per image).
    """
    b = images_b3ss.shape[0]
    per_scale = []
    for g in grids:
        # unfold -> (B, 3, n_rows, n_cols, P, P) views, no copy
        u = images_b3ss.unfold(2, g.patch_px, g.stride_px).unfold(3, g.patch_px, g.stride_px)
        u = u[:, :, : g.n_rows, : g.n_cols]
        u = u.permute(0, 2, 3, 1, 4, 5).reshape(b * g.num_patches, 3, g.patch_px, g.patch_px)
        if g.patch_px != out_size:
            u = pil_bicubic_resize_exact(u, out_size).float() if exact else pil_bicubic_resize(u, out_size)
        per_scale.append(u.reshape(b, g.num_patches, 3, out_size, out_size))
    crops = torch.cat(per_scale, dim=1).reshape(-1, 3, out_size, out_size)
    if exact:
        m = torch.tensor(mean, device=crops.device, dtype=crops.dtype).view(1, 3, 1, 1)
        s = torch.tensor(std, device=crops.device, dtype=crops.dtype).view(1, 3, 1, 1)
        return (crops * (1.0 / 255.0) - m) / s
    m = torch.tensor(mean, device=crops.device, dtype=crops.dtype).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=crops.device, dtype=crops.dtype).view(1, 3, 1, 1) * 255.0
    return (crops - m) / s


def patch_scores(image_emb_nd: torch.Tensor, text_emb_kd: torch.Tensor) -> torch.Tensor:
    """Raw cosine similarity, (N, D) x (K, D) -> (N, K) float32 (no logit scale, no softmax)."""
    img = F.normalize(image_emb_nd.float(), dim=-1)
    txt = F.normalize(text_emb_kd.float(), dim=-1)
    return img @ txt.T


def scale_maps(scores_bnk: torch.Tensor, grids: list[ScaleGrid]) -> list[torch.Tensor]:
    """Split per-image patch scores into one (B, K, n_rows, n_cols) grid per scale."""
    out, start = [], 0
    b, _, k = scores_bnk.shape
    for g in grids:
        s = scores_bnk[:, start : start + g.num_patches]
        out.append(s.reshape(b, g.n_rows, g.n_cols, k).permute(0, 3, 1, 2).contiguous())
        start += g.num_patches
    return out


@functools.lru_cache(maxsize=256)
def _bilinear_matrix_cached(n_in: int, n_out: int, device: str) -> torch.Tensor:
    return _bilinear_matrix(n_in, n_out, torch.device(device))


def bilinear_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """Cached :func:`_bilinear_matrix` (image sizes repeat across a dataset)."""
    return _bilinear_matrix_cached(n_in, n_out, str(torch.device(device or "cpu")))


def _bilinear_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """(n_out, n_in) float32 matrix R with ``R @ v`` == 1-D bilinear resize of v.

    Follows PyTorch's ``align_corners=False`` source index (clamped at 0), so
    ``R_y @ G @ R_x.T`` equals ``F.interpolate(G, mode="bilinear", align_corners=False)``.
    """
    dst = torch.arange(n_out, dtype=torch.float64, device=device)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w1 = (src - i0.double()).clamp_(0.0, 1.0)
    r = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    rows = torch.arange(n_out, device=device)
    r.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    r.index_put_((rows, i1), w1, accumulate=True)
    return r.float()


def dense_scores(
    maps: list[torch.Tensor],
    weights: tuple[float, ...],
    size_hw: tuple[int, int],
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Weighted mean over scales of the grids upsampled to ``size_hw`` (M_clip).

    Upsampling is linear, so the scales are combined before the large product:
    ``M = [w_1 R_y1 | ... | w_S R_yS] @ blockdiag(G_1 R_x1^T, ..., G_S R_xS^T)``, one
    (K, H, W) product with a small inner dimension (sum of the grid rows, 11 for the
    official 1/3/7 grids) instead of one per scale plus the sums.

    Args:
        maps: per scale, (K, n_rows, n_cols) float32 for ONE image.
        weights: per-scale weights summing to 1.
        size_hw: output (H, W).
        rows: optional ``(y0, y1)`` band of output rows to compute (memory bound).
    Returns:
        (K, y1 - y0, W) float32.
    """
    h, w = size_hw
    y0, y1 = rows if rows is not None else (0, h)
    left, right = [], []
    for grid, wt in zip(maps, weights, strict=True):
        _, nr, nc = grid.shape
        left.append(bilinear_matrix(nr, h, device=grid.device)[y0:y1] * wt)  # (h', nr)
        right.append(torch.matmul(grid, bilinear_matrix(nc, w, device=grid.device).T))  # (K, nr, W)
    return torch.matmul(torch.cat(left, dim=1), torch.cat(right, dim=1))  # (K, h', W)
