"""Class colours: the PASCAL VOC colour palette and helpers around it.

The VOC palette is the bit-interleaving map used by the PASCAL VOC label PNGs:
bits 0, 1, 2 of the class index go to the most significant bit of R, G, B, the
next three bits to the next most significant bit, and so on. Index 0
(background) is black and index 255 (the "ignore" label) is ``(224, 224, 192)``.

:func:`class_colors` given the class NAMES does not contradict them: a class named
after a CSS/X11 colour (``red``, ``light blue``, ``dark_green``: the 148 names of
``PIL.ImageColor``) is drawn in that colour, and every other class keeps its VOC colour
unless that colour would read as one of the named classes' colours (the same basic
colour term, or closer than :data:`MIN_DELTA_E` in CIELAB); then it takes the next
VOC colour (or hue-walk colour) that does not.

Everything here is pure (no I/O).
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence

import numpy as np
from PIL import ImageColor

__all__ = [
    "IGNORE_INDEX",
    "class_colors",
    "colorize_labels",
    "color_category",
    "css_color",
    "delta_e",
    "to_lab",
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


_VOC = voc_palette(256)

#: Colours closer than this (CIE76 delta E) read as the same colour.
MIN_DELTA_E = 25.0

#: Basic colour terms (Berlin & Kay, with cyan) and typical sRGB colours of each, dark
#: ones included (maroon reads as a dark red, navy as a dark blue): a colour's term is
#: that of the nearest of these in CIELAB (:func:`color_category`).
BASIC_COLORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0),),
    "white": ((255, 255, 255),),
    "grey": ((128, 128, 128), (192, 192, 192), (64, 64, 64)),
    "red": ((220, 20, 20), (128, 0, 0), (178, 34, 34), (80, 0, 0)),
    "orange": ((255, 140, 0), (210, 105, 30)),
    "yellow": ((255, 230, 0), (240, 230, 140)),
    "green": ((0, 160, 0), (0, 100, 0), (128, 200, 80), (0, 60, 0)),
    "cyan": ((0, 200, 200), (0, 128, 128)),
    "blue": ((0, 0, 230), (0, 0, 128), (100, 149, 237), (0, 0, 70)),
    "purple": ((128, 0, 160), (75, 0, 110), (180, 110, 220)),
    "pink": ((255, 150, 200), (255, 20, 147)),
    "brown": ((139, 69, 19), (101, 67, 33)),
}
_TERMS = [term for term, examples in BASIC_COLORS.items() for _ in examples]


def css_color(name: str) -> tuple[int, int, int] | None:
    """The CSS/X11 colour a class name names (case, spaces, ``-`` and ``_`` ignored:
    ``"Light Blue"`` -> ``lightblue``), or None when the name is not a colour's."""
    key = re.sub(r"[\s_\-]+", "", name.strip().lower())
    if key not in ImageColor.colormap:
        return None
    r, g, b = ImageColor.getrgb(key)[:3]
    return int(r), int(g), int(b)


def to_lab(rgb: np.ndarray | Sequence) -> np.ndarray:
    """sRGB in [0, 255], shape (..., 3) -> CIELAB (D65), float64 of the same shape."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = (c @ m.T) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: Sequence[int], b: Sequence[int]) -> float:
    """CIE76 colour difference of two sRGB colours (about 2.3 = just noticeable)."""
    return float(np.linalg.norm(to_lab(a) - to_lab(b)))


_TERM_LAB = to_lab([c for examples in BASIC_COLORS.values() for c in examples])


def _categories(lab: np.ndarray) -> np.ndarray:
    """Index into _TERMS of the basic term of each CIELAB colour, shape (N,)."""
    d = np.linalg.norm(lab[:, None, :] - _TERM_LAB[None, :, :], axis=-1)
    return d.argmin(axis=1)


def color_category(rgb: Sequence[int]) -> str:
    """The basic colour term of an sRGB colour (a key of :data:`BASIC_COLORS`)."""
    return _TERMS[int(_categories(to_lab(np.asarray([rgb])))[0])]


def class_colors(classes: int | Sequence[str]) -> list[tuple[int, int, int]]:
    """RGB colour of every class index (index 0 = background, black).

    ``classes``: the class names (index order), or only their number. By number: the
    VOC palette for the first 255 indices (255 itself is reserved for "ignore"), then a
    deterministic golden-ratio hue walk, so that large vocabularies still get distinct,
    stable colours. By name: a class named after a colour gets that colour
    (:func:`css_color`), and the others the colours above except any that would read as
    a named class's colour (see the module docstring); all colours differ.

    Returns:
        list of (r, g, b) tuples of ints in [0, 255], one per class.
    """
    if isinstance(classes, int):
        if classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {classes}")
        return [_default_color(i) for i in range(classes)]
    names = list(classes)
    colors = [_default_color(i) for i in range(len(names))]
    named = [i for i in range(1, len(names)) if css_color(names[i]) is not None]
    if not named:
        return colors
    used = {colors[0]}  # background's black: a class named "black" is drawn a little lighter
    for i in named:
        color = css_color(names[i]) or (0, 0, 0)  # never None: `named` holds colour names only
        while color in used:  # "grey" and "gray": kept apart, both near their colour
            color = _nudge(color)
        colors[i] = color
        used.add(color)
    named_lab = to_lab([colors[i] for i in named])
    banned = {_TERMS[k] for k in _categories(named_lab)}

    def admissible(rgbs: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """(far from every named colour, of a term no named colour has), shape (N,) each."""
        lab = to_lab(np.asarray(rgbs, dtype=np.float64).reshape(-1, 3))
        far = np.linalg.norm(lab[:, None, :] - named_lab[None, :, :], axis=-1).min(axis=1) >= MIN_DELTA_E
        unbanned = np.array([_TERMS[k] not in banned for k in _categories(lab)], dtype=bool)
        return far, unbanned & far

    unnamed = [i for i in range(1, len(names)) if i not in set(named)]
    far, strict = admissible([colors[i] for i in unnamed])
    first_walk = max(len(names), IGNORE_INDEX + 1)
    spares = [_default_color(j) for j in [*range(len(names), IGNORE_INDEX), *range(first_walk, first_walk + 4096)]]
    spare_far, spare_strict = admissible(spares)
    queues = [iter([c for c, ok in zip(spares, spare_strict, strict=True) if ok]),
              iter([c for c, ok in zip(spares, spare_far, strict=True) if ok])]
    for k, i in enumerate(unnamed):
        if strict[k] and colors[i] not in used:
            used.add(colors[i])
            continue
        for queue in queues:  # a vocabulary of every colour word leaves no unbanned term: then only far
            pick = next((c for c in queue if c not in used), None)
            if pick is not None:
                colors[i] = pick
                break
        else:
            pass  # nothing far enough is left: the class keeps its default colour
        used.add(colors[i])
    return colors


def _default_color(i: int) -> tuple[int, int, int]:
    if i < IGNORE_INDEX:
        r, g, b = (int(v) for v in _VOC[i])
        return r, g, b
    return _hue_walk_color(i)


def _nudge(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A slightly lighter (or, for light colours, darker) version of ``rgb``."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*(v / 255 for v in rgb))
    lightness = lightness + 0.12 if lightness < 0.5 else lightness - 0.12
    r, g, b = colorsys.hls_to_rgb(hue, min(max(lightness, 0.0), 1.0), saturation)
    return round(r * 255), round(g * 255), round(b * 255)


def _hue_walk_color(i: int) -> tuple[int, int, int]:
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
