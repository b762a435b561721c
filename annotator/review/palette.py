"""Class colours: the PASCAL VOC colour palette and helpers around it.

The VOC palette is the bit-interleaving map used by the PASCAL VOC label PNGs:
bits 0, 1, 2 of the class index go to the most significant bit of R, G, B, the
next three bits to the next most significant bit, and so on. Index 0
(background) is black and index 255 (the "ignore" label) is ``(224, 224, 192)``.

Everything here is pure (no I/O).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "class_colors",
    "colorize_labels",
    "flat_palette",
    "hex_color",
    "voc_palette",
]

#: Label index that VOC uses for "void / ignore" pixels.
IGNORE_INDEX = 255


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour palette.

    Args:
        num_entries: number of palette entries, >= 1. Entry i is the colour of
            class index i; the bit pattern repeats its structure for i >= 256.

    Returns:
        uint8 array of shape (num_entries, 3), RGB in [0, 255].
    """
    if num_entries < 1:
        raise ValueError(f"num_entries must be >= 1, got {num_entries}")
    index = np.arange(num_entries, dtype=np.int64)
    palette = np.zeros((num_entries, 3), dtype=np.int64)
    c = index.copy()
    for j in range(8):
        for channel in range(3):
            palette[:, channel] |= ((c >> channel) & 1) << (7 - j)
        c >>= 3
    return palette.astype(np.uint8)


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """RGB colour of every class index 0..num_classes-1 (index 0 = background).

    Uses the VOC palette for the first 255 indices (255 itself is reserved for
    "ignore"); beyond that, a deterministic golden-ratio hue walk so that large
    vocabularies still get distinct, stable colours.

    Returns:
        list of ``num_classes`` (r, g, b) tuples of ints in [0, 255].
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    voc = voc_palette(256)
    colors: list[tuple[int, int, int]] = []
    for i in range(num_classes):
        if i < IGNORE_INDEX:
            r, g, b = (int(v) for v in voc[i])
        else:
            r, g, b = _hue_walk_color(i)
        colors.append((r, g, b))
    return colors


def _hue_walk_color(i: int) -> tuple[int, int, int]:
    import colorsys

    hue = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def hex_color(rgb: tuple[int, int, int]) -> str:
    """``(r, g, b)`` ints in [0, 255] -> ``"#rrggbb"`` (lower case)."""
    if len(rgb) != 3 or any(not 0 <= int(v) <= 255 for v in rgb):
        raise ValueError(f"expected an (r, g, b) tuple of ints in [0, 255], got {rgb!r}")
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def flat_palette() -> list[int]:
    """The VOC palette flattened to 768 ints ``[r0, g0, b0, r1, ...]`` for ``PIL.Image.putpalette``."""
    return voc_palette(256).reshape(-1).tolist()


def colorize_labels(labels_hw: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """Paint a label map with class colours.

    Args:
        labels_hw: integer array (H, W) of class indices in [0, len(colors)).
        colors: (r, g, b) per class index, e.g. from :func:`class_colors`.

    Returns:
        uint8 array (H, W, 3), RGB.
    """
    labels_hw = np.asarray(labels_hw)
    if labels_hw.ndim != 2:
        raise ValueError(f"labels_hw must be 2-D (H, W), got shape {labels_hw.shape}")
    lut = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if labels_hw.size and (labels_hw.min() < 0 or labels_hw.max() >= len(lut)):
        raise ValueError(
            f"labels_hw values must lie in [0, {len(lut)}), got range "
            f"[{labels_hw.min()}, {labels_hw.max()}]"
        )
    return lut[labels_hw]
