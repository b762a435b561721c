"""Batched JPEG decoding on the device (nvJPEG through ``torchvision.io.decode_jpeg``)
for :class:`annotator.inputs.loader.ImageLoader`.

Only files where the batched decoder is certain to give the same picture as
:func:`annotator.inputs.decode.decode_image` take this path
(:func:`jpeg_fast_path_size_hw`: baseline 8-bit YCbCr/grey JPEGs that end with an EOI
marker, no EXIF orientation other than 1, within ``max_pixels``); the loader decodes
everything else, and every image :func:`decode_jpeg_batch` hands back as None, on the
CPU, so bad files still get :class:`~annotator.inputs.decode.ImageDecodeError` with the
right reason.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

import torch
from PIL import Image

from annotator.inputs.decode import DEFAULT_MAX_PIXELS

__all__ = ["EncodedJpeg", "batched_jpeg_available", "decode_jpeg_batch", "jpeg_fast_path_size_hw"]

_EXIF_ORIENTATION_TAG = 0x0112


def batched_jpeg_available() -> bool:
    """True when ``torchvision.io.decode_jpeg`` can be imported."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # ImportError, or a torchvision built against another torch
        return False
    return True


def jpeg_fast_path_size_hw(data: bytes | bytearray | memoryview,
                           max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | None:
    """(height, width) when ``data`` may go to the batched (GPU) JPEG decoder, else None.

    Reads the header only. Accepted: a JPEG that ends with an EOI marker (trailing
    zero bytes allowed; anything else could be truncated and must get PIL's error),
    PIL mode RGB (YCbCr-coded) or L, 8 bits per sample, not progressive, not an Adobe
    file with untransformed RGB, no EXIF orientation other than 1, at most
    ``max_pixels`` pixels. Anything doubtful returns None (the CPU path decides).
    """
    if len(data) < 4 or bytes(data[:3]) != b"\xff\xd8\xff":
        return None
    end = len(data)
    while end > 2 and data[end - 1] == 0:
        end -= 1
    if bytes(data[end - 2 : end]) != b"\xff\xd9":
        return None
    try:
        img = Image.open(io.BytesIO(bytes(data)))
    except Exception:
        return None
    with img:
        info = img.info
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        if info.get("progressive") or info.get("progression"):
            return None
        if getattr(img, "bits", 8) != 8 or getattr(img, "layers", 3 if img.mode == "RGB" else 1) not in (1, 3):
            return None
        if img.mode == "RGB" and "adobe" in info and info.get("adobe_transform") == 0:
            return None
        width, height = img.size
        if width < 1 or height < 1 or width * height > max_pixels:
            return None
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        except Exception:
            return None
        if orientation != 1:
            return None
    return height, width


@dataclass
class EncodedJpeg:
    """An image left encoded for the batched decoder: its bytes, its name for error
    details, and its (height, width) from :func:`jpeg_fast_path_size_hw`."""

    data: bytes
    name: str
    size_hw: tuple[int, int]


def decode_jpeg_batch(encoded: list[EncodedJpeg], device: torch.device) -> tuple[list[torch.Tensor | None], float]:
    """One batched torchvision decode on ``device`` (one by one when the batch call
    fails). Returns per image a (3, H, W) uint8 tensor, or None where it failed or gave
    an unexpected shape; and the seconds spent (device sync included)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # torchvision >= 0.29 warns that its image codecs are deprecated (still present)
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    tensors = [torch.frombuffer(bytearray(e.data), dtype=torch.uint8) for e in encoded]
    t0 = time.perf_counter()
    try:
        out = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except Exception:  # one bad file fails the whole call: retry one by one
        out = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except Exception:
                out.append(None)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    seconds = time.perf_counter() - t0
    checked: list[torch.Tensor | None] = []
    for e, t in zip(encoded, out, strict=True):
        ok = (
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 3
            and tuple(t.shape) == (3, *e.size_hw)
        )
        checked.append(t if ok else None)
    return checked, seconds
