"""The released code's two uint8 resizes, reproduced bit for bit with torch integer ops.

The official protocol resizes twice on uint8 images, and the rounding of each decides
some pixels' labels (``../shared/reference/algorithm.md``, section 5):

1. ``opencv_linear_resize``: the image to 256 x 256 as ``cv2.resize(img, (w, h),
   interpolation=cv2.INTER_LINEAR)`` does on uint8. OpenCV computes the horizontal pass
   in fixed point with 11-bit coefficients (``round_half_even(w * 2048)`` of float32
   weights) into int32, and the vertical pass with its SIMD kernel:
   ``(((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2) >> 2``, saturated to 0..255.
   Horizontal borders clamp the source index and its weight; vertical ones clamp only
   the row index.
2. ``pil_bicubic_resize_exact``: each patch to 224 as ``PIL.Image.resize(BICUBIC)``
   does: a = -0.5 cubic, support scaled by the reduction factor, weights normalised in
   float64 then made 22-bit integers (rounded away from zero); a horizontal pass, then a
   vertical one, each ``(sum + 2**21) >> 22`` clipped to 0..255 (round half up).

Both run batched on whatever device the tensor is on, with no per-patch CPU call: the
OpenCV resize as gathers, integer multiplies and shifts; the PIL one as float32 matmuls
with the integer weights split into 8-bit parts, which are exact (see
:func:`_pil_matrices_on`) and use the BLAS. The coefficient tables are computed once per
(input size, output size, device) with numpy, following each library's float steps. ``tests/core/test_exact_resize.py`` checks
equality (not a tolerance) against cv2 and PIL.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

_CV_COEF_BITS = 11
_CV_COEF_SCALE = 1 << _CV_COEF_BITS
_PIL_PRECISION_BITS = 32 - 8 - 2


# --------------------------------------------------------------------------- OpenCV


def _opencv_linear_table(n_in: int, n_out: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """Source indices (i0, i1) and 11-bit weights (w0, w1), each (n_out,) int64.

    As ``cv::resize``: ``scale = 1 / (n_out / n_in)`` in double; the source coordinate
    ``(d + 0.5) * scale - 0.5`` rounded to float32; weights ``1 - f`` and ``f`` in float32,
    times 2048, rounded half to even (``saturate_cast<short>``). ``clamp_weights``: the
    horizontal table moves out-of-range taps to the border with weight (2048, 0).
    """
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low, high = s < 0, s >= n_in - 1
        f[low | high] = 0.0
        s[low], s[high] = 0, n_in - 1
    w0 = np.rint((np.float32(1.0) - f) * np.float32(_CV_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_CV_COEF_SCALE)).astype(np.int64)
    return np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1), w0, w1


@functools.lru_cache(maxsize=512)
def _opencv_tables_on(n_in: int, n_out: int, clamp_weights: bool, device: str) -> tuple[torch.Tensor, ...]:
    i0, i1, w0, w1 = _opencv_linear_table(n_in, n_out, clamp_weights)
    dev = torch.device(device)
    return (torch.from_numpy(i0).to(dev), torch.from_numpy(i1).to(dev),
            torch.from_numpy(w0).to(dev, torch.int32), torch.from_numpy(w1).to(dev, torch.int32))


def opencv_linear_resize(image_3hw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(INTER_LINEAR)`` of one uint8 image, exactly.

    Args:
        image_3hw: (C, H, W) uint8 (any values of C; channels are independent).
        size_hw: output (height, width).
    Returns:
        (C, height, width) uint8 on the input's device.
    """
    if image_3hw.dtype != torch.uint8 or image_3hw.dim() != 3:
        raise ValueError(f"expected a (C, H, W) uint8 tensor, got {tuple(image_3hw.shape)} {image_3hw.dtype}")
    _, h, w = image_3hw.shape
    oh, ow = size_hw
    dev = str(image_3hw.device)
    x0, x1, a0, a1 = _opencv_tables_on(int(w), int(ow), True, dev)
    y0, y1, b0, b1 = _opencv_tables_on(int(h), int(oh), False, dev)
    src = image_3hw.to(torch.int32)
    rows = src.index_select(2, x0) * a0 + src.index_select(2, x1) * a1  # (C, H, ow) int32, <= 255 * 2048
    top = ((rows.index_select(1, y0) >> 4) * b0[:, None]) >> 16
    bottom = ((rows.index_select(1, y1) >> 4) * b1[:, None]) >> 16
    return ((top + bottom + 2) >> 2).clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- PIL


def _pil_bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _pil_bicubic_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, ``taps`` source indices and 22-bit integer weights, (n_out, taps).

    As Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: support 2 times the
    reduction factor (at least 1), ``taps = 2 * ceil(support) + 1``; unused taps point at
    the first source pixel with weight 0.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((n_out, taps), np.int64)
    weight = np.zeros((n_out, taps), np.int64)
    one = 1 << _PIL_PRECISION_BITS
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        w = [_pil_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(w)
        for x in range(xmax):
            k = w[x] / total if total != 0.0 else w[x]
            weight[xx, x] = int(-0.5 + k * one) if k < 0 else int(0.5 + k * one)
        index[xx, :xmax] = np.arange(xmin, xmin + xmax)
        index[xx, xmax:] = xmin
    return index, weight


@functools.lru_cache(maxsize=512)
def _pil_matrices_on(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """(3, n_out, n_in) float32: the 22-bit weights as dense matrices, split in 8-bit parts.

    ``w = 65536 * w2 + 256 * w1 + w0`` with ``w0, w1`` in 0..255 and ``w2`` in -128..127.
    Every operand then has at most 8 significant bits, so a float32 matmul of 0..255
    pixels by one part is exact however it is computed: each product is below 2**16, each
    sum of a pixel's few taps below 2**19, within float32's 24 bits, and inputs rounded
    to TF32 or bf16 (a GPU's or oneDNN's fast fp32 modes) are unchanged.
    """
    index, weight = _pil_bicubic_table(n_in, n_out)
    dense = np.zeros((n_out, n_in), np.int64)
    np.add.at(dense, (np.repeat(np.arange(n_out), index.shape[1]), index.ravel()), weight.ravel())
    parts = np.stack([dense & 255, (dense >> 8) & 255, dense >> 16]).astype(np.float32)
    return torch.from_numpy(parts).to(torch.device(device))


def _pil_pass(x: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """One separable pass along ``dim`` (-1 or -2) of float32 integers 0..255:
    ``(sum + 2**21) >> 22`` clipped to 0..255, as int32 (same layout as ``x``)."""
    parts = _pil_matrices_on(int(x.shape[dim]), n_out, str(x.device))  # (3, n_out, n_in)
    acc: torch.Tensor | None = None
    with torch.autocast(device_type=x.device.type, enabled=False):  # a float16/bf16 result would round
        for shift, m in zip((0, 8, 16), parts, strict=True):
            part = torch.matmul(x, m.T) if dim == -1 else torch.matmul(m, x)
            part = part.to(torch.int32).bitwise_left_shift_(shift)
            acc = part if acc is None else acc.add_(part)
    assert acc is not None  # three parts, always
    return ((acc + (1 << (_PIL_PRECISION_BITS - 1))) >> _PIL_PRECISION_BITS).clamp_(0, 255)


def pil_bicubic_resize_exact(x_bchw: torch.Tensor, size: int) -> torch.Tensor:
    """``PIL.Image.resize((size, size), BICUBIC)`` of each uint8 image in a batch, exactly.

    Args:
        x_bchw: (B, C, H, W) integer (uint8 or int32) values 0..255.
    Returns:
        (B, C, size, size) int32 values 0..255 on the input's device.
    """
    x = x_bchw
    if x.shape[-1] != size:
        x = _pil_pass(x.float(), -1, size)
    if x.shape[-2] != size:
        x = _pil_pass(x.float(), -2, size)
    return x.to(torch.int32)
