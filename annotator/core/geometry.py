"""Patch geometry of the multi-scale grid (pure; no torch).

On the resized ``input_size`` x ``input_size`` image, square patches of side ``P`` are
cut at stride ``S = round(P * stride_fraction)``; a scale has ``n = (L - P) // S + 1``
patches per side. The official protocol (256 input, P = 256/128/64, S = P/2) gives
grids of 1x1, 3x3 and 7x7: 59 patches per image.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleGrid:
    """One scale: ``n_rows`` x ``n_cols`` patches of ``patch_px`` at ``stride_px``."""

    patch_px: int
    stride_px: int
    n_rows: int
    n_cols: int

    @property
    def num_patches(self) -> int:
        return self.n_rows * self.n_cols

    def boxes_xyxy(self) -> list[tuple[int, int, int, int]]:
        """Patch boxes in row-major order, ``(x0, y0, x1, y1)`` pixels of the resized image."""
        return [
            (c * self.stride_px, r * self.stride_px, c * self.stride_px + self.patch_px, r * self.stride_px + self.patch_px)
            for r in range(self.n_rows)
            for c in range(self.n_cols)
        ]


def scale_grids(input_size: int, patch_sizes_px: tuple[int, ...], stride_fraction: float) -> list[ScaleGrid]:
    """The grid of every scale, in the order of ``patch_sizes_px``."""
    grids = []
    for p in patch_sizes_px:
        if not 1 <= p <= input_size:
            raise ValueError(f"patch size must be in 1..{input_size}, got {p}")
        s = max(1, int(round(p * stride_fraction)))
        n = (input_size - p) // s + 1
        grids.append(ScaleGrid(patch_px=p, stride_px=s, n_rows=n, n_cols=n))
    return grids


def total_patches(grids: list[ScaleGrid]) -> int:
    """Patches per image over all scales (59 for the official protocol)."""
    return sum(g.num_patches for g in grids)
