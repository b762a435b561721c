"""Engine configuration: :class:`EngineConfig` (validated once, in ``__post_init__``)
and :class:`ConfigError`. The command-line options that map onto it: :mod:`annotator.cli`.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from annotator.errors import AnnotatorError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TEMPLATES = ("a photo of a {}",)
PROTOCOLS = ("full", "official")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: FOUND's input cap per protocol (0 = none): the released evaluation ran it at full size.
DEFAULT_SALIENCY_MAX_SIDE = {"full": 448, "official": 0}
#: Images per shard by default: ~0.18 s of device time at 360 images/s, several seconds
#: on a CPU. The driver's work per shard (~1 ms: result, manifest, next submission) stays
#: under 1% of that; the actor overlaps shard boundaries by running two shards at once.
DEFAULT_SHARD_SIZE = 64


class ConfigError(AnnotatorError, ValueError):
    """An option value that cannot be used; the message names expected and received."""


def default_weights_dir() -> str:
    """``$ANNOTATOR_WEIGHTS_DIR`` or ``~/.cache/annotator``: where downloads are cached."""
    return os.environ.get("ANNOTATOR_WEIGHTS_DIR") or str(Path.home() / ".cache" / "annotator")


@dataclass
class EngineConfig:
    """Everything that decides what the engine computes and where.

    Geometry follows the released CLIP-DIY code: the image is resized to
    ``input_size`` x ``input_size``; square patches of each size in ``patch_sizes_px``
    are cut at stride ``patch * stride_fraction``; the per-scale maps are averaged with
    ``scale_weights`` (equal when None).
    """

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    saliency: str = "found"
    dino_weights: str | None = None
    found_weights: str | None = None
    weights_dir: str = field(default_factory=default_weights_dir)
    #: FOUND's input cap (short side <= this, long side <= 4x this); 0 = no cap (the
    #: image at full size). None = the protocol's default: 448 under ``full``, no cap
    #: under ``official`` (the released evaluation ran FOUND on the full image).
    saliency_max_side: int | None = None
    protocol: str = "full"
    device: str = "auto"
    batch_size: int = 32
    precision: str = "auto"
    input_size: int = 256
    patch_sizes_px: tuple[int, ...] = (256, 128, 64)
    stride_fraction: float = 0.5
    scale_weights: tuple[float, ...] | None = None
    crop_chunk: int = 1024
    seed: int = 0
    #: fsspec options for the readers the engine itself opens (``precomputed:`` saliency
    #: maps on object storage); never stored or shown (left out of to_json).
    storage_options: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.templates = tuple(self.templates)
        self.patch_sizes_px = tuple(int(p) for p in self.patch_sizes_px)
        if self.scale_weights is not None:
            self.scale_weights = tuple(float(w) for w in self.scale_weights)
        if self.saliency_max_side is None:  # resolved here, so manifests store what ran
            self.saliency_max_side = DEFAULT_SALIENCY_MAX_SIDE.get(self.protocol, 448)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for any inconsistent value."""
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol: expected one of {PROTOCOLS}, got {self.protocol!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if not self.templates:
            raise ConfigError("--templates: expected at least one template, got none")
        for t in self.templates:
            if t.count("{}") != 1:
                raise ConfigError(f"--templates: expected exactly one '{{}}' in each template, got {t!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected >= 1, got {self.batch_size}")
        if self.crop_chunk < 1:
            raise ConfigError(f"crop_chunk: expected >= 1, got {self.crop_chunk}")
        if self.saliency_max_side is not None and self.saliency_max_side != 0 and self.saliency_max_side < 8:
            raise ConfigError(
                f"--saliency-max-side: expected 0 (no cap) or >= 8 pixels, got {self.saliency_max_side}"
            )
        if self.input_size < 1:
            raise ConfigError(f"--input-size: expected >= 1, got {self.input_size}")
        if not self.patch_sizes_px:
            raise ConfigError("--patch-sizes: expected at least one patch size, got none")
        for p in self.patch_sizes_px:
            if not 1 <= p <= self.input_size:
                raise ConfigError(
                    f"--patch-sizes: expected sizes in 1..{self.input_size} (the input size), got {p}"
                )
        if not 0.0 < self.stride_fraction <= 1.0:
            raise ConfigError(f"--stride-fraction: expected a value in (0, 1], got {self.stride_fraction}")
        if self.scale_weights is not None:
            if len(self.scale_weights) != len(self.patch_sizes_px):
                raise ConfigError(
                    f"--scale-weights: expected {len(self.patch_sizes_px)} weights (one per patch size), "
                    f"got {len(self.scale_weights)}"
                )
            if any(w < 0 for w in self.scale_weights) or sum(self.scale_weights) <= 0:
                raise ConfigError(f"--scale-weights: expected non-negative weights with a positive sum, got {self.scale_weights}")
        if self.model == "toy" and self.pretrained not in ("", DEFAULT_PRETRAINED, "random", "toy"):
            raise ConfigError(f"--model toy takes no --pretrained weights, got {self.pretrained!r}")

    @property
    def normalized_scale_weights(self) -> tuple[float, ...]:
        """Weights per scale summing to 1 (equal weights by default)."""
        w = self.scale_weights or tuple(1.0 for _ in self.patch_sizes_px)
        total = sum(w)
        return tuple(x / total for x in w)

    def to_json(self) -> dict:
        """JSON-ready dict; local paths kept, nothing secret is stored here."""
        d = asdict(self)
        d.pop("storage_options", None)  # credentials: never in metadata or hashes
        d["templates"] = list(self.templates)
        d["patch_sizes_px"] = list(self.patch_sizes_px)
        d["scale_weights"] = list(self.normalized_scale_weights)
        return d

    def identity(self) -> dict:
        """The fields that change results (hashed to decide whether outputs are compatible)."""
        d = self.to_json()
        for k in ("device", "batch_size", "crop_chunk", "weights_dir", "dino_weights", "found_weights"):
            d.pop(k, None)
        return d
