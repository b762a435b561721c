"""Engine configuration and the command-line options that map onto it.

The option names are shared by ``annotator.run``, ``annotator.bench`` and anything else
that builds an :class:`~annotator.engine.Engine`: one definition, here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TEMPLATES = ("a photo of a {}",)
PROTOCOLS = ("full", "official")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: Images per shard by default: ~0.18 s of device time at 360 images/s, several seconds
#: on a CPU. The driver's work per shard (~1 ms: result, manifest, next submission) stays
#: under 1% of that; the actor overlaps shard boundaries by running two shards at once.
DEFAULT_SHARD_SIZE = 64


class ConfigError(ValueError):
    """An option value that cannot be used; the message names expected and received."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each default shown once: appended as ``(default: X)`` only when
    the option's own help does not already say its default, and never for an unset
    (``None``) or off (``False``) one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


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
    saliency_max_side: int = 448
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

    def __post_init__(self) -> None:
        self.templates = tuple(self.templates)
        self.patch_sizes_px = tuple(int(p) for p in self.patch_sizes_px)
        if self.scale_weights is not None:
            self.scale_weights = tuple(float(w) for w in self.scale_weights)
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
        if self.saliency_max_side < 8:
            raise ConfigError(f"--saliency-max-side: expected >= 8 pixels, got {self.saliency_max_side}")
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


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the engine options (shared by every command) to ``parser``."""
    g = parser.add_argument_group("model and method")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="open_clip model name (e.g. ViT-B-32, ViT-B-16), or the test models "
                        "'tiny-random' / 'toy' (not real models). Default: %(default)s")
    g.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip pretrained tag, a local checkpoint file, or 'random' for "
                        "random weights (benchmarks only). Default: %(default)s")
    g.add_argument("--templates", action="append", default=None, metavar="TEMPLATE",
                   help="prompt template with one '{}' (repeat for an ensemble), or a file with "
                        "one template per line. Default: 'a photo of a {}'")
    g.add_argument("--saliency", default="found",
                   help="foreground saliency: found (default), found-bkg (training-free), none, "
                        "precomputed:<dir or URI> (.npy/.png per image stem), or the test "
                        "saliencies found-tiny-random / toy")
    g.add_argument("--dino-weights", default=None, metavar="FILE",
                   help="local DINO ViT-S/8 state dict (dino_deitsmall8_pretrain.pth, or timm's "
                        "vit_small_patch8_224.dino safetensors) instead of downloading it")
    g.add_argument("--found-weights", default=None, metavar="FILE",
                   help="local FOUND decoder file (decoder_weights.pt) instead of downloading it")
    g.add_argument("--weights-dir", default=None, metavar="DIR",
                   help="where weights are cached and looked up offline "
                        "(default: $ANNOTATOR_WEIGHTS_DIR or ~/.cache/annotator)")
    g.add_argument("--saliency-max-side", type=int, default=448, metavar="PX",
                   help="FOUND runs on the original image, shrunk so that its SHORT side is at "
                        "most this many pixels (and its long side at most 4x that). Default: %(default)s")
    g.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="full (default): class maps and saliency brought to the original "
                        "resolution before softmax/argmax; official: everything at 256x256, "
                        "labels resized with nearest (reproduces the paper)")
    g.add_argument("--input-size", type=int, default=256, metavar="PX",
                   help="side of the square image the patches are cut from. Default: %(default)s")
    g.add_argument("--patch-sizes", type=_int_list, default=(256, 128, 64), metavar="P,P,...",
                   help="patch sizes in pixels of the resized image. Default: 256,128,64")
    g.add_argument("--stride-fraction", type=float, default=0.5, metavar="F",
                   help="patch stride as a fraction of the patch size. Default: %(default)s")
    g.add_argument("--scale-weights", type=_float_list, default=None, metavar="W,W,...",
                   help="weight per patch size in the multi-scale mean. Default: equal")
    h = parser.add_argument_group("device")
    h.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda or cuda:N. Default: %(default)s")
    h.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="images per engine step. Default: %(default)s")
    h.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="encoder precision; auto = bf16 on CUDA, fp32 on CPU. Default: %(default)s")


def parse_storage_options(text: str | None) -> dict:
    """``--storage-options`` JSON -> fsspec options dict (``{}`` when not given).

    Shared by every command that takes the option; raises :class:`ConfigError`.
    """
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--storage-options: expected a JSON object, got invalid JSON ({e.msg})") from None
    if not isinstance(opts, dict):
        raise ConfigError(f"--storage-options: expected a JSON object, got {type(opts).__name__}")
    return opts


def _read_templates(values: list[str] | None) -> tuple[str, ...]:
    if not values:
        return DEFAULT_TEMPLATES
    out: list[str] = []
    for v in values:
        p = Path(v)
        if "{}" not in v and p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            out.extend(ln for ln in lines if ln and not ln.startswith("#"))
        else:
            out.append(v)
    return tuple(out)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build (and validate) an :class:`EngineConfig` from parsed engine options."""
    return EngineConfig(
        model=args.model,
        pretrained=args.pretrained,
        templates=_read_templates(args.templates),
        saliency=args.saliency,
        dino_weights=args.dino_weights,
        found_weights=args.found_weights,
        weights_dir=args.weights_dir or default_weights_dir(),
        saliency_max_side=args.saliency_max_side,
        protocol=args.protocol,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        input_size=args.input_size,
        patch_sizes_px=args.patch_sizes,
        stride_fraction=args.stride_fraction,
        scale_weights=args.scale_weights,
    )
