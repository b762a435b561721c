"""The released CLIP-DIY inference loop, re-created as the benchmark's baseline.

What the authors' code did per step, and what :func:`naive_predict` does the same way:

- 2 images per step (``batch_images``), fp32 (no autocast), models on ``engine.device``;
- each image resized to ``input_size`` x ``input_size`` (256) on the CPU with bilinear
  interpolation without antialiasing (OpenCV ``INTER_LINEAR``: ``cv2.resize`` when OpenCV
  is importable, else an exact numpy equivalent), kept uint8;
- for every scale, every patch of both images turned into a PIL image, resized to the
  encoder's input size (224 for ViT-B/32) with PIL's bicubic, scaled to 0..1 and
  normalised in numpy, then ALL patches of that scale (of both images) sent to the
  encoder in one call;
- raw cosine with the class embeddings (``engine.text_kd``), each scale's grid upsampled
  to 256 x 256 bilinearly (``align_corners=False``), the scales averaged;
- saliency from the same backend as the engine (``engine.saliency``) on the original
  image, resized bilinearly to 256 x 256; guidance ``bg * (1 - s)``, ``c * s``;
- softmax and argmax at 256 x 256; labels (and the calibrated confidence) resized to the
  original size with nearest.

The released code PRECOMPUTED its saliency maps, so its published speed excludes
saliency. :func:`naive_predict` therefore times the saliency calls separately
(``timings["saliency"]``) so a benchmark can report the baseline with and without them.

It reuses the engine's loaded models (``engine.clip``, ``engine.text_kd``,
``engine.saliency``, ``engine.logit_scale``, ``engine.grids``), so a comparison with
:meth:`annotator.engine.Engine.predict` is the same model on the same device.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from annotator.engine import Engine, Prediction

__all__ = ["NAIVE_BATCH_IMAGES", "bilinear_resize_uint8", "naive_predict"]

#: Images per step in the released code.
NAIVE_BATCH_IMAGES = 2


def bilinear_resize_uint8(image_hw3: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (size, size, 3) uint8, OpenCV ``INTER_LINEAR``.

    Half-pixel centres, no antialiasing. Uses ``cv2.resize`` when OpenCV is importable
    (what the released code called), else an equivalent in numpy (float, rounded; may
    differ from OpenCV's fixed-point result by 1 on some pixels).
    """
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        cv2 = None
    if cv2 is not None:
        return cv2.resize(np.ascontiguousarray(image_hw3), (size, size), interpolation=cv2.INTER_LINEAR)
    h, w = image_hw3.shape[:2]

    def axis(n_in: int):
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(h)
    x0, x1, wx = axis(w)
    f = image_hw3.astype(np.float32)
    rows = f[y0] * (1 - wy)[:, None, None] + f[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _as_hwc_uint8(image) -> np.ndarray:
    """(H, W, 3) uint8 numpy, or a (3, H, W) uint8 tensor (any device) -> (H, W, 3) numpy."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a (3, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
        return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {a.shape} {a.dtype}")
    return a


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
# Long on purpose: the released CLIP-DIY loop re-created step by step, in its order, as the
# benchmark's baseline; splitting it would hide how close it stays to the original.
def naive_predict(
    engine: Engine,
    images_hwc_uint8: Sequence,
    names: Sequence[str] | None = None,
    *,
    batch_images: int = NAIVE_BATCH_IMAGES,
    timings: MutableMapping[str, float] | None = None,
) -> list[Prediction]:
    """CLIP-DIY exactly the way the released loop computes it (slowly), with the engine's models.

    Args:
        engine: a loaded :class:`~annotator.engine.Engine`; only its models, text
            embeddings, grids and device are used (never ``engine.predict``).
        images_hwc_uint8: RGB images, (H, W, 3) uint8 numpy (a (3, H, W) uint8 tensor is
            accepted too); sizes may differ.
        names: the images' file names (needed by ``precomputed:`` saliency).
        batch_images: images per step (2 in the released code).
        timings: when given, seconds are ADDED under ``"clip"`` (everything except the
            saliency backend: resize, per-patch PIL preprocessing, encoder, scores,
            upsampling, guidance, softmax, final resize) and ``"saliency"`` (the
            saliency backend's calls, which the released code precomputed). CUDA work
            is synchronised at the boundaries so the split is exact.
    Returns:
        One :class:`Prediction` per image at its original resolution: labels (H, W)
        int32 = argmax of softmax(guided scores) at 256 x 256 resized with nearest;
        confidence (H, W) float32 in [0, 1] = max softmax(logit_scale * guided), likewise.
    """
    if batch_images < 1:
        raise ValueError(f"batch_images: expected >= 1, got {batch_images}")
    if names is not None and len(names) != len(images_hwc_uint8):
        raise ValueError(f"names: expected {len(images_hwc_uint8)} names (one per image), got {len(names)}")
    t = timings if timings is not None else {}
    t.setdefault("clip", 0.0)
    t.setdefault("saliency", 0.0)
    device = engine.device
    clip = engine.clip
    side = int(engine.config.input_size)
    crop = int(clip.input_size)
    mean = np.asarray(clip.mean, np.float32)
    std = np.asarray(clip.std, np.float32)
    text_kd = engine.text_kd.float()
    weights = engine.scale_weights
    out: list[Prediction] = []
    for start in range(0, len(images_hwc_uint8), batch_images):
        _sync(device)
        t0 = time.perf_counter()
        batch = [_as_hwc_uint8(im) for im in images_hwc_uint8[start : start + batch_images]]
        batch_names = None if names is None else list(names[start : start + batch_images])
        small = [bilinear_resize_uint8(im, side) for im in batch]
        # per scale: every patch of every image of the step through PIL, one encoder call
        m_sum = None
        for g, wt in zip(engine.grids, weights, strict=True):
            crops = []
            for img in small:
                for y0, x0 in ((r * g.stride_px, c * g.stride_px) for r in range(g.n_rows) for c in range(g.n_cols)):
                    patch = Image.fromarray(img[y0 : y0 + g.patch_px, x0 : x0 + g.patch_px])
                    if patch.size != (crop, crop):
                        patch = patch.resize((crop, crop), Image.BICUBIC)
                    x = np.asarray(patch, np.float32) / 255.0
                    crops.append(torch.from_numpy(((x - mean) / std).transpose(2, 0, 1).copy()))
            x = torch.stack(crops).to(device)
            emb = F.normalize(clip.encode_image(x).float(), dim=-1)  # fp32: no autocast
            scores = emb @ text_kd.T  # (B * n * n, K)
            grid = scores.view(len(small), g.n_rows, g.n_cols, -1).permute(0, 3, 1, 2)
            up = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
            m_sum = up * wt if m_sum is None else m_sum + up * wt
        _sync(device)
        t1 = time.perf_counter()
        # saliency: the same backend as the engine (precomputed in the released code)
        if engine.saliency is not None:
            tensors = [torch.from_numpy(im if im.flags.writeable else im.copy()).to(device).permute(2, 0, 1)
                       for im in batch]
            sal = engine.saliency(tensors, batch_names)
            sal = [s.float() for s in sal]
        else:
            sal = [None] * len(batch)
        _sync(device)
        t2 = time.perf_counter()
        for i, im in enumerate(batch):
            m = m_sum[i]
            if sal[i] is not None:
                s = F.interpolate(sal[i][None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
                guided = torch.cat([m[:1] * (1 - s), m[1:] * s])
            else:
                guided = m
            labels = torch.softmax(guided, 0).argmax(0)
            conf = torch.softmax(guided * engine.logit_scale, 0).amax(0)
            both = torch.stack([labels.float(), conf])[None]
            both = F.interpolate(both, size=im.shape[:2], mode="nearest")[0].cpu()
            out.append(Prediction(both[0].numpy().astype(np.int32), both[1].numpy().astype(np.float32)))
        _sync(device)
        t3 = time.perf_counter()
        t["clip"] += (t1 - t0) + (t3 - t2)
        t["saliency"] += t2 - t1
    return out
