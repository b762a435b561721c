"""The CLIP-DIY engine: models on one device, a batch of images in, labels out.

Usable without Ray (benchmarks, notebooks)::

    from annotator.config import EngineConfig
    from annotator.engine import Engine
    from annotator.inputs.vocab import load_vocabulary

    engine = Engine(EngineConfig(), load_vocabulary("vocab.txt"))
    preds = engine.predict([rgb_uint8_hwc, ...], names=["a.jpg", ...])

Each :class:`Prediction` is at the image's ORIGINAL resolution.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from annotator.config import ConfigError, EngineConfig
from annotator.core import guidance, multiscale
from annotator.core.geometry import scale_grids, total_patches
from annotator.inputs.vocab import Vocabulary
from annotator.models import (
    ResolvedWeights,
    build_clip,
    build_saliency,
    resolve_weights,
)
from annotator.models.registry import clip_backend


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


def class_stats_torch(labels: torch.Tensor, conf: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) integer labels + (H, W) float confidence on any device -> per class
    (pixel count (K,) int64, confidence sum (K,) float64), like ``records.class_stats_numpy``."""
    flat = labels.reshape(-1).long()
    return (torch.bincount(flat, minlength=num_classes),
            torch.bincount(flat, weights=conf.reshape(-1).double(), minlength=num_classes))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; validates explicit CUDA requests."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), where
    bf16 autocast about doubles the encoders' speed; elsewhere bf16 is emulated and slower."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)  # torch's own detection (private, so guarded)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a probe that fails means "unknown": try the next
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device, protocol: str = "full",
                      test_model: bool = False) -> torch.dtype | None:
    """Autocast dtype for the encoders (None = fp32).

    ``auto``: bf16 on CUDA; on a CPU, bf16 where the CPU has it natively
    (:func:`cpu_bf16_supported`) and fp32 elsewhere, and always fp32 under
    ``--protocol official`` on a CPU (parity with the released fp32 code) and for the
    test models (``test_model``: their outputs must not depend on the machine). ``bf16``
    is honoured on any CPU; ``fp16`` needs CUDA.
    """
    if device.type == "cpu":
        if precision == "fp16":
            raise ConfigError("--precision fp16: expected a CUDA device for fp16, got the CPU "
                              "(use bf16 or fp32 there)")
        if precision == "bf16":
            return torch.bfloat16
        if precision == "auto" and protocol != "official" and not test_model and cpu_bf16_supported():
            return torch.bfloat16
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32``: what the encoders ran at (for metadata and benchmarks)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def to_chw_uint8(image, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 numpy or (3, H, W) uint8 tensor -> (3, H, W) uint8 on ``device``."""
    if isinstance(image, torch.Tensor):
        t = image
        if t.dim() != 3 or t.shape[0] != 3 or t.dtype != torch.uint8:
            raise ValueError(f"expected a (3, H, W) uint8 tensor, got {tuple(t.shape)} {t.dtype}")
        return t.to(device, non_blocking=True)
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {a.shape} {a.dtype}")
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # torch refuses read-only memory; decoders may hand us one
        a = a.copy()
    return torch.from_numpy(a).to(device).permute(2, 0, 1)


class Engine:
    """CLIP-DIY on one device. Models are loaded once; text embeddings once per vocabulary."""

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
        self.timings: dict[str, float] = defaultdict(float)
        self.set_vocabulary(vocabulary)

    # ----------------------------------------------------------------- helpers
    @contextmanager
    def _stage(self, name: str):
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] += time.perf_counter() - t0

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

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
            with self._stage("crops"):
                crops = multiscale.cut_crops(
                    small_b3ss[i : i + per_chunk], self.grids, self.clip.input_size, self.clip.mean, self.clip.std,
                    exact=self.exact_resize,
                )
                if self.autocast_dtype is not None:
                    crops = crops.to(self.autocast_dtype)
            with self._stage("clip"), self._autocast():
                emb = self.clip.encode_image(crops)
            out.append(multiscale.patch_scores(emb, self.text_kd))
        return torch.cat(out).view(b, self.patches_per_image, -1)

    def _decide_one(self, maps: list[torch.Tensor], sal: torch.Tensor | None, size_hw: tuple[int, int]):
        cfg = self.config
        if cfg.protocol == "official":
            side = cfg.input_size
            m = multiscale.dense_scores(maps, self.scale_weights, (side, side))
            s = None
            if sal is not None:
                s = F.interpolate(sal[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
            labels, conf = guidance.guided_decision(m, s, self.logit_scale)
            both = torch.stack([labels.float(), conf])[None]
            both = F.interpolate(both, size=size_hw, mode="nearest")[0]
            return both[0].to(torch.int32), both[1]
        s_full = None
        if sal is not None:
            s_full = F.interpolate(sal[None, None].float(), size=size_hw, mode="bilinear", align_corners=False)[0, 0]
        labels = torch.empty(size_hw, dtype=torch.int32, device=self.device)
        conf = torch.empty(size_hw, dtype=torch.float32, device=self.device)
        for y0, y1 in guidance.band_rows(len(self.vocabulary), size_hw):
            m = multiscale.dense_scores(maps, self.scale_weights, size_hw, rows=(y0, y1))
            lab, cf = guidance.guided_decision(m, None if s_full is None else s_full[y0:y1], self.logit_scale)
            labels[y0:y1], conf[y0:y1] = lab, cf
        return labels, conf

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
        # Stage: upload and resize to the square input
        with self._stage("upload"):
            tensors = [to_chw_uint8(im, self.device) for im in images]
            small = torch.stack([multiscale.resize_input(t, self.config.input_size, self.exact_resize) for t in tensors])
        # Stage: crops -> CLIP -> per-scale grids
        maps_b = multiscale.scale_maps(self.patch_scores(small), self.grids)
        # Stage: saliency on the original images
        with self._stage("saliency"):
            sal = self.saliency(tensors, list(names) if names is not None else None) if self.saliency else [None] * len(tensors)
        # Stage: guidance and the per-pixel decision at the output resolution
        results = []
        with self._stage("guidance"):
            for i, t in enumerate(tensors):
                size_hw = (int(t.shape[1]), int(t.shape[2]))
                labels, conf = self._decide_one([m[i] for m in maps_b], sal[i], size_hw)
                results.append((labels, conf))
        with self._stage("download"):
            k = len(self.vocabulary)
            out = []
            for lab, cf in results:
                stats = None
                if self.device_class_stats:
                    pixels, sums = class_stats_torch(lab, cf, k)
                    stats = (pixels.cpu().numpy(), sums.cpu().numpy())
                out.append(Prediction(lab.cpu().numpy(), cf.float().cpu().numpy(), stats))
            return out
