"""``precomputed:<dir or URI>`` saliency: one map per image, from any other segmenter.

For an image whose ``file_name`` is ``a/b/img.jpg``, the map is looked up as
``<root>/a/b/img.npy``, ``<root>/a/b/img.png``, then ``<root>/img.npy``,
``<root>/img.png`` (the file stem, at the root). ``.npy``: float array (H, W) in
[0, 1] (other numeric dtypes are accepted if within [0, 1]); ``.png``: 8-bit grayscale,
value / 255. Any resolution: the engine resizes the map bilinearly.
"""

from __future__ import annotations

import io
import posixpath

import fsspec
import numpy as np
import torch


class PrecomputedSaliencyError(ValueError):
    """A precomputed saliency map that is missing or malformed."""


class PrecomputedSaliency:
    name = "precomputed"

    def __init__(self, root: str, device: torch.device, storage_options: dict | None = None):
        if not root:
            raise PrecomputedSaliencyError("--saliency precomputed:<dir or URI>: expected a location after 'precomputed:', got nothing")
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        if not self.fs.isdir(self.root):
            raise PrecomputedSaliencyError(f"--saliency precomputed: expected a directory of maps, {root!r} is not one")
        self.device = device

    def candidates(self, file_name: str) -> list[str]:
        stem = posixpath.splitext(file_name.replace("\\", "/"))[0]
        base = posixpath.basename(stem)
        out = [f"{self.root}/{stem}.npy", f"{self.root}/{stem}.png"]
        if base != stem:
            out += [f"{self.root}/{base}.npy", f"{self.root}/{base}.png"]
        return out

    def load(self, file_name: str) -> np.ndarray:
        """(H, W) float32 in [0, 1] for ``file_name``."""
        for path in self.candidates(file_name):
            if not self.fs.exists(path):
                continue
            data = self.fs.cat_file(path)
            if path.endswith(".npy"):
                arr = np.load(io.BytesIO(data), allow_pickle=False)
                arr = np.squeeze(arr)
                if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
                    raise PrecomputedSaliencyError(f"{path}: expected a 2-D numeric array, got shape {arr.shape} dtype {arr.dtype}")
                arr = arr.astype(np.float32)
                if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or np.isnan(arr).any()):
                    raise PrecomputedSaliencyError(f"{path}: expected values in [0, 1], got {np.nanmin(arr)}..{np.nanmax(arr)}")
                return arr
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in ("L", "P", "1", "I;16", "I"):
                    im = im.convert("L")
                arr = np.asarray(im)
            scale = 65535.0 if arr.dtype == np.uint16 else (1.0 if arr.dtype == bool else 255.0)
            return (arr.astype(np.float32) / scale).clip(0, 1)
        raise PrecomputedSaliencyError(
            f"no precomputed saliency map for {file_name!r}; looked for {', '.join(self.candidates(file_name))}"
        )

    def __call__(self, images: list[torch.Tensor], names: list[str] | None = None) -> list[torch.Tensor]:
        if names is None or len(names) != len(images):
            raise PrecomputedSaliencyError("precomputed saliency needs the images' file names")
        return [torch.from_numpy(self.load(n)).to(self.device) for n in names]
