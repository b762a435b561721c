"""``precomputed:<dir or URI>`` saliency: one map per image, from any other segmenter.

For an image whose ``file_name`` is ``a/b/img.jpg``, the map is looked up as
``<root>/a/b/img.npy``, ``<root>/a/b/img.png``, then ``<root>/img.npy``,
``<root>/img.png`` (the file stem, at the root). ``.npy``: float array (H, W) in
[0, 1] (other numeric dtypes are accepted if within [0, 1]); ``.png``: 8-bit grayscale,
value / 255.

A map is in the image's displayed orientation (EXIF applied, as decoded) and has its
aspect ratio: ``(h, w)`` for an image ``(H, W)`` is used when ``|h - w * H / W| <= 1`` or
``|w - h * W / H| <= 1`` (one pixel of rounding, in the map's pixels), and the engine
resizes it bilinearly to the image; any other shape (a transposed map, a crop, another
image's map) is a :class:`PrecomputedSaliencyError` naming both shapes, which makes that
image an error row instead of a stretched map and wrong masks.
"""

from __future__ import annotations

import io
import posixpath

import fsspec
import numpy as np
import torch

from annotator.errors import AnnotatorError


class PrecomputedSaliencyError(AnnotatorError, ValueError):
    """A precomputed saliency map that is missing or malformed."""


#: Pixels (of the map) by which a side may differ from the image's aspect: rounding.
ASPECT_TOLERANCE_PX = 1.0


def same_aspect(map_hw: tuple[int, int], image_hw: tuple[int, int], tolerance_px: float = ASPECT_TOLERANCE_PX) -> bool:
    """Whether a map of ``map_hw`` is the image ``image_hw`` at another resolution: one
    of its sides is within ``tolerance_px`` of what the other side and the image's aspect
    ratio give."""
    (h, w), (big_h, big_w) = map_hw, image_hw
    if min(h, w, big_h, big_w) < 1:
        return False
    return abs(h - w * big_h / big_w) <= tolerance_px or abs(w - h * big_w / big_h) <= tolerance_px


class PrecomputedSaliency:
    name = "precomputed"

    def __init__(self, root: str, device: torch.device, storage_options: dict | None = None):
        if not root:
            raise PrecomputedSaliencyError("--saliency precomputed:<dir or URI>: expected a location after "
                                           "'precomputed:', got nothing")
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
        return self._find(file_name)[1]

    def load_for(self, file_name: str, image_hw: tuple[int, int]) -> np.ndarray:
        """The map of ``file_name``, checked against the image's (H, W): the same aspect
        ratio (see the module docstring), else PrecomputedSaliencyError naming both shapes."""
        path, arr = self._find(file_name)
        map_hw = (int(arr.shape[0]), int(arr.shape[1]))
        if not same_aspect(map_hw, image_hw):
            hint = ("; it is the image's shape transposed: maps follow the displayed orientation (EXIF applied)"
                    if same_aspect(map_hw[::-1], image_hw) else "")
            raise PrecomputedSaliencyError(
                f"{path}: the saliency map is {map_hw[0]}x{map_hw[1]} (HxW) but the image is "
                f"{image_hw[0]}x{image_hw[1]}: another aspect ratio (a map at another resolution must keep the "
                f"image's, within {ASPECT_TOLERANCE_PX:g} pixel){hint}")
        return arr

    def _find(self, file_name: str) -> tuple[str, np.ndarray]:
        for path in self.candidates(file_name):
            if not self.fs.exists(path):
                continue
            data = self.fs.cat_file(path)
            try:
                return path, _read_map(path, data)
            except PrecomputedSaliencyError:
                raise
            except Exception as exc:  # noqa: BLE001 - numpy's and PIL's messages may quote the file: described
                from PIL import UnidentifiedImageError

                from annotator.inputs.decode import content_safe_message, describe_content

                kind = "a .npy array" if path.endswith(".npy") else "an 8-bit grayscale image"
                why = ("no image decoder recognises it" if isinstance(exc, UnidentifiedImageError)
                       else content_safe_message(exc, data))
                raise PrecomputedSaliencyError(f"{path}: expected {kind}, got {describe_content(data)} that cannot "
                                               f"be read as one ({why})") from None
        raise PrecomputedSaliencyError(
            f"no precomputed saliency map for {file_name!r}; looked for {', '.join(self.candidates(file_name))}"
        )

    def __call__(self, images: list[torch.Tensor], names: list[str] | None = None) -> list[torch.Tensor]:
        if names is None or len(names) != len(images):
            raise PrecomputedSaliencyError("precomputed saliency needs the images' file names")
        return [torch.from_numpy(self.load_for(n, (int(im.shape[-2]), int(im.shape[-1])))).to(self.device)
                for im, n in zip(images, names, strict=True)]


def _read_map(path: str, data: bytes) -> np.ndarray:
    """(h, w) float32 in [0, 1] from a .npy or image file's bytes."""
    if path.endswith(".npy"):
        arr = np.squeeze(np.load(io.BytesIO(data), allow_pickle=False))
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise PrecomputedSaliencyError(f"{path}: expected a 2-D numeric array, got shape {arr.shape} "
                                           f"dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or np.isnan(arr).any()):
            raise PrecomputedSaliencyError(f"{path}: expected values in [0, 1], got "
                                           f"{np.nanmin(arr)}..{np.nanmax(arr)}")
        return arr
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        gray: Image.Image = im if im.mode in ("L", "P", "1", "I;16", "I") else im.convert("L")
        arr = np.asarray(gray)
    if arr.ndim != 2:
        raise PrecomputedSaliencyError(f"{path}: expected a grayscale image, got shape {arr.shape}")
    scale = 65535.0 if arr.dtype == np.uint16 else (1.0 if arr.dtype == bool else 255.0)
    return (arr.astype(np.float32) / scale).clip(0, 1)
