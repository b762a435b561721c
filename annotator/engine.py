"""The CLIP-DIY engine: models on one device, a batch of images in, labels out.

Usable without Ray (benchmarks, notebooks)::

    from annotator.config import EngineConfig
    from annotator.engine import Engine
    from annotator.inputs.vocab import load_vocabulary

    engine = Engine(EngineConfig(), load_vocabulary("vocab.txt"))
    preds = engine.predict([rgb_uint8_hwc, ...], names=["a.jpg", ...])

Each :class:`Prediction` is at the image's ORIGINAL resolution.

The pieces, each in its own module: which device and precision, moving images on and
results off it, timing the stages (:mod:`annotator.device`); the crops, the encoders and
the per-scale grids (:mod:`annotator.core.multiscale`); the per-pixel decision at the
output resolution for each protocol (:mod:`annotator.core.decision`). :class:`Engine`
holds the models and runs the stages in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from annotator.config import EngineConfig
from annotator.core import multiscale
from annotator.core.decision import decide
from annotator.core.geometry import scale_grids, total_patches
from annotator.device import (  # also re-exported: callers import these from annotator.engine
    StageTimer,
    autocast,
    class_stats_torch,
    cpu_bf16_supported,
    precision_name,
    resolve_device,
    resolve_precision,
    to_chw_uint8,
)
from annotator.failpoints import failpoint
from annotator.inputs.vocab import Vocabulary
from annotator.models import (
    ResolvedWeights,
    build_clip,
    build_saliency,
    resolve_weights,
)
from annotator.models.registry import clip_backend

__all__ = [
    "Engine",
    "Prediction",
    "class_stats_torch",
    "cpu_bf16_supported",
    "precision_name",
    "resolve_device",
    "resolve_precision",
    "to_chw_uint8",
]


@dataclass
class Prediction:
    """Per-pixel result for one image at its original resolution.

    ``labels_hw``: (H, W) int32 class indices (0 = background; c >= 1 = category_id c).
    ``confidence_hw``: (H, W) float32 in [0, 1], max softmax(logit_scale * guided scores).
    ``class_stats``: on a GPU, (pixels (K,) int64, confidence sums (K,) float64) per
    class, computed on the device so that the CPU encoders need not (None on the CPU,
    where numpy's bincount is faster than torch's).
    """

    labels_hw: np.ndarray
    confidence_hw: np.ndarray
    class_stats: tuple[np.ndarray, np.ndarray] | None = None


class Engine:
    """CLIP-DIY on one device. Models are loaded once; text embeddings once per vocabulary.

    :meth:`predict` runs the stages in order: upload and resize to the square input,
    crops -> CLIP -> per-scale grids (:meth:`patch_scores`), saliency on the original
    images, the per-pixel decision at the output resolution, download. ``timings[stage]``
    sums each stage's seconds.
    """

    def __init__(
        self,
        config: EngineConfig,
        vocabulary: Vocabulary,
        *,
        weights: ResolvedWeights | None = None,
        profile: bool = False,
    ):
        self.config = config
        self.device = resolve_device(config.device)
        self.autocast_dtype = resolve_precision(config.precision, self.device, config.protocol,
                                                test_model=clip_backend(config.model).test_only)
        #: what the encoders run at: ``bf16``, ``fp16`` or ``fp32``
        self.precision = precision_name(self.autocast_dtype)
        weights = weights if weights is not None else resolve_weights(config)
        self.clip = build_clip(config, weights, self.device)
        self.saliency = build_saliency(config, weights, self.device, self.autocast_dtype)
        self.grids = scale_grids(config.input_size, config.patch_sizes_px, config.stride_fraction)
        self.patches_per_image = total_patches(self.grids)
        self.scale_weights = config.normalized_scale_weights
        self.logit_scale = float(self.clip.logit_scale)
        #: The released code's uint8 resizes bit for bit (OpenCV, PIL) under the official
        #: protocol; float arithmetic (faster on a CPU) under ``full``.
        self.exact_resize = config.protocol == "official"
        self.profile = profile
        #: Per-class pixel counts and confidence sums computed on the device (a GPU) rather
        #: than by the CPU encoders, which hold the GIL for them.
        self.device_class_stats = self.device.type == "cuda"
        self._timer = StageTimer(self.device, profile)
        self.timings: dict[str, float] = self._timer.timings
        self.set_vocabulary(vocabulary)

    def _autocast(self):
        return autocast(self.device, self.autocast_dtype)

    @torch.inference_mode()
    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Compute the (K, D) class embeddings: mean of L2-normalised prompt embeddings, renormalised."""
        self.vocabulary = vocabulary
        per_class = vocabulary.prompts(self.config.templates)
        flat = [p for ps in per_class for p in ps]
        with self._autocast():
            emb = self.clip.encode_text(flat).float()
        emb = F.normalize(emb, dim=-1)
        out, start = [], 0
        for ps in per_class:
            out.append(F.normalize(emb[start : start + len(ps)].mean(dim=0), dim=-1))
            start += len(ps)
        self.text_kd = torch.stack(out)

    # ----------------------------------------------------------------- stages
    @torch.inference_mode()
    def patch_scores(self, small_b3ss: torch.Tensor) -> torch.Tensor:
        """(B, 3, L, L) resized images -> (B, N, K) raw cosine scores of every patch."""
        b = small_b3ss.shape[0]
        per_chunk = max(1, self.config.crop_chunk // self.patches_per_image)
        out = []
        for i in range(0, b, per_chunk):
            with self._timer.stage("crops"):
                crops = multiscale.cut_crops(
                    small_b3ss[i : i + per_chunk], self.grids, self.clip.input_size, self.clip.mean, self.clip.std,
                    exact=self.exact_resize,
                )
                if self.autocast_dtype is not None:
                    crops = crops.to(self.autocast_dtype)
            with self._timer.stage("clip"), self._autocast():
                emb = self.clip.encode_image(crops)
            out.append(multiscale.patch_scores(emb, self.text_kd))
        return torch.cat(out).view(b, self.patches_per_image, -1)

    def _decide_one(self, maps: list[torch.Tensor], sal: torch.Tensor | None, size_hw: tuple[int, int]):
        return decide(maps, sal, size_hw, protocol=self.config.protocol, input_size=self.config.input_size,
                      num_classes=len(self.vocabulary), scale_weights=self.scale_weights,
                      logit_scale=self.logit_scale)

    def _download(self, lab: torch.Tensor, cf: torch.Tensor) -> Prediction:
        stats = None
        if self.device_class_stats:
            pixels, sums = class_stats_torch(lab, cf, len(self.vocabulary))
            stats = (pixels.cpu().numpy(), sums.cpu().numpy())
        return Prediction(lab.cpu().numpy(), cf.float().cpu().numpy(), stats)

    # ----------------------------------------------------------------- API
    @torch.inference_mode()
    def predict(self, images: Sequence, names: Sequence[str] | None = None) -> list[Prediction]:
        """CLIP-DIY for a batch.

        Args:
            images: RGB images, each (H, W, 3) uint8 numpy or (3, H, W) uint8 tensor;
                sizes may differ.
            names: the images' file names (needed by ``precomputed:`` saliency).
        Returns:
            One :class:`Prediction` per image, at its original resolution.
        """
        if len(images) == 0:
            return []
        bs = self.config.batch_size
        if len(images) > bs:
            out: list[Prediction] = []
            for i in range(0, len(images), bs):
                out += self.predict(images[i : i + bs], None if names is None else names[i : i + bs])
            return out
        failpoint("engine.forward")  # ANNOTATOR_FAILPOINTS (annotator.failpoints): a batch forward that fails
        stage = self._timer.stage
        with stage("upload"):
            tensors = [to_chw_uint8(im, self.device) for im in images]
            small = torch.stack([multiscale.resize_input(t, self.config.input_size, self.exact_resize) for t in tensors])
        maps_b = multiscale.scale_maps(self.patch_scores(small), self.grids)
        with stage("saliency"):
            sal = self.saliency(tensors, list(names) if names is not None else None) if self.saliency else [None] * len(tensors)
        with stage("guidance"):
            results = [self._decide_one([m[i] for m in maps_b], sal[i], (int(t.shape[1]), int(t.shape[2])))
                       for i, t in enumerate(tensors)]
        with stage("download"):
            return [self._download(lab, cf) for lab, cf in results]
