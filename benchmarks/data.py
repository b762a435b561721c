"""Synthetic benchmark inputs: photo-like JPEGs of PASCAL VOC sizes, written in parallel.

:func:`synthetic_image` draws one (H, W, 3) uint8 RGB image (a smooth colour field, 1-5
shapes, sensor-like grain) from a seed; :func:`make_synthetic_jpegs` writes ``n`` of them
as baseline JPEGs, sizes cycling through ``VOC_SIZES_HW`` (mostly 500x375, some 375x500
and 500x333). Used by :mod:`benchmarks` (without ``--source``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["VOC_SIZES_HW", "make_synthetic_jpegs", "synthetic_image"]

#: (height, width) of the synthetic images, cycled: VOC's common sizes.
VOC_SIZES_HW = ((375, 500),) * 6 + ((500, 375), (333, 500), (375, 500), (500, 375))


# --------------------------------------------------------------------------- synthetic data
def synthetic_image(seed: int, size_hw: tuple[int, int]) -> np.ndarray:
    """A photo-like (H, W, 3) uint8 RGB image: a smooth colour field, 1-5 shapes, grain."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    h, w = size_hw
    low = rng.integers(0, 256, size=(int(rng.integers(2, 5)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = int(rng.integers(x0 + 10, w)), int(rng.integers(y0 + 10, h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pts = [(int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.normal(0.0, 5.0, size=(h, w, 1)).astype(np.int16)  # sensor-like grain
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_synthetic_jpegs(directory: str | os.PathLike, n: int, *, seed: int = 0, quality: int = 90,
                         sizes_hw: Sequence[tuple[int, int]] = VOC_SIZES_HW, threads: int | None = None) -> list[Path]:
    """Write ``n`` baseline JPEGs ``img_000000.jpg`` ... into ``directory``; returns their paths.

    Sizes cycle through ``sizes_hw`` ((height, width) pixels); content from
    :func:`synthetic_image` with seed ``seed + i``.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"--images: expected >= 1 image, got {n}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> Path:
        p = root / f"img_{i:06d}.jpg"
        Image.fromarray(synthetic_image(seed + i, sizes_hw[i % len(sizes_hw)])).save(p, "JPEG", quality=quality)
        return p

    with ThreadPoolExecutor(threads or os.cpu_count() or 2) as ex:
        return list(ex.map(one, range(n)))
