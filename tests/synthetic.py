"""Synthetic images of coloured shapes on grey, with their exact label maps.

Used with the toy models (``--model toy --saliency toy``) to show CLIP-DIY end to end
on data whose correct segmentation is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOUR_RGB = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 50, 220),
    "yellow": (230, 220, 30),
}
VOCAB = ["red", "green", "blue", "yellow"]  # class index = position + 1 (0 = background)


def make_image(seed: int, size_hw: tuple[int, int] = (240, 320), max_shapes: int = 2):
    """One image and its label map.

    Returns:
        rgb (H, W, 3) uint8 and labels (H, W) uint8 (0 = background, c = VOCAB[c-1]).
    """
    rng = np.random.default_rng(seed)
    h, w = size_hw
    rgb = np.full((h, w, 3), 128, np.int16)
    rgb += rng.integers(-6, 7, size=(h, w, 1), dtype=np.int16)  # grey texture, unsaturated
    labels = np.zeros((h, w), np.uint8)
    n = int(rng.integers(1, max_shapes + 1))
    colours = rng.choice(len(VOCAB), size=n, replace=False)
    # shapes in separate vertical halves so colours do not touch
    for j, ci in enumerate(colours):
        x_lo, x_hi = (j * w) // n, ((j + 1) * w) // n
        sw = int(rng.integers((x_hi - x_lo) // 3, (x_hi - x_lo) * 3 // 4))
        sh = int(rng.integers(h // 4, h * 2 // 3))
        x0 = int(rng.integers(x_lo + 4, max(x_lo + 5, x_hi - sw - 4)))
        y0 = int(rng.integers(4, max(5, h - sh - 4)))
        yy, xx = np.mgrid[0:h, 0:w]
        if rng.random() < 0.5:
            m = (yy >= y0) & (yy < y0 + sh) & (xx >= x0) & (xx < x0 + sw)
        else:
            cy, cx, ry, rx = y0 + sh / 2, x0 + sw / 2, sh / 2, sw / 2
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        rgb[m] = COLOUR_RGB[VOCAB[ci]]
        labels[m] = ci + 1
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


def write_dataset(root: Path, n: int, size_hw=(240, 320), fmt: str = "png", seed: int = 0, nested: bool = True):
    """Write ``n`` images (and VOC-style label PNGs under ``root/gt``) to ``root/images``.

    Returns (images_dir, gt_dir, {file_name: labels}).
    """
    images, gt = root / "images", root / "gt"
    out = {}
    for i in range(n):
        rgb, lab = make_image(seed + i, size_hw)
        rel = f"{f'sub{i % 3}/' if nested else ''}img_{i:04d}.{fmt}"
        p = images / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if fmt in ("jpg", "jpeg"):
            Image.fromarray(rgb).save(p, quality=95)
        else:
            Image.fromarray(rgb).save(p)
        g = (gt / rel).with_suffix(".png")
        g.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab, mode="L").save(g)
        out[rel] = lab
    return images, gt, out


def write_vocab(path: Path) -> Path:
    path.write_text("# toy colour vocabulary\n" + "\n".join(VOCAB) + "\n", encoding="utf-8")
    return path
