"""The model registry, as data: every CLIP and saliency backend with its builder and the
weight files it needs. Adding a backend is one entry here (``tests/models/test_registry.py``
smoke-tests every entry).

CLIP backends (``--model``): any open_clip model name (:data:`OPEN_CLIP`, the fallback),
plus the test models ``tiny-random`` (small open_clip CLIP, seeded random weights) and
``toy`` (colour histogram, see :mod:`annotator.models.toy`).

Saliency backends (``--saliency``): ``found``, ``found-bkg``, ``none``,
``precomputed:<dir or URI>``, and the test saliencies ``found-tiny-random`` (FOUND's
structure on a small random ViT) and ``toy`` (pixel saturation).

Weights are resolved (found locally, or downloaded and verified) by
:func:`resolve_weights` BEFORE any model is built, so that every missing file is reported
at once; the builders only load what was resolved. Resolving imports neither torch nor
open_clip (open_clip's model names and tags are read from
:mod:`annotator.models.open_clip_names`): the driver validates a run of any model
without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotator.config import ConfigError, EngineConfig
from annotator.models import open_clip_names
from annotator.models import weights as W

if TYPE_CHECKING:  # torch is imported by the builders only: the driver lists and schedules without it
    import torch


@dataclass
class ResolvedWeights:
    """Local paths of every weight file the configuration needs (None = not needed/random)."""

    clip: str | None = None
    dino: str | None = None
    found: str | None = None


@dataclass(frozen=True)
class ClipBackend:
    """A ``--model`` entry. ``build(config, weights, device)`` returns an object with
    ``input_size``, ``mean``, ``std``, ``logit_scale``, ``encode_image``, ``encode_text``
    (see :mod:`annotator.models.clip`)."""

    name: str
    build: Callable[[EngineConfig, ResolvedWeights, torch.device], Any]
    description: str
    #: its weights come from open_clip's tags or a checkpoint (``--pretrained``)
    open_clip_weights: bool = False
    test_only: bool = False


@dataclass(frozen=True)
class SaliencyBackend:
    """A ``--saliency`` entry. ``build(config, weights, device, autocast_dtype)`` returns
    a saliency model (``None`` for no saliency); ``weights`` are the files it needs,
    resolved before it is built (skipped with ``--pretrained random``); ``prefix``
    entries take an argument after the colon (``precomputed:<dir>``)."""

    name: str
    build: Callable[[EngineConfig, ResolvedWeights, torch.device, Any], Any]
    description: str
    weights: tuple[W.WeightSpec, ...] = ()
    test_only: bool = False
    prefix: bool = False


# --------------------------------------------------------------------------- builders


def _tiny_random_clip(config: EngineConfig, weights: ResolvedWeights, device: torch.device):
    from annotator.models import clip

    return clip.build_tiny_random(device, seed=config.seed)


def _toy_clip(config: EngineConfig, weights: ResolvedWeights, device: torch.device):
    from annotator.models import toy

    return toy.ToyClip(device)


def _open_clip(config: EngineConfig, weights: ResolvedWeights, device: torch.device):
    from annotator.models import clip

    return clip.build_open_clip(config.model, weights.clip, device, seed=config.seed, pretrained=config.pretrained)


def _embed_dim(vit: Any) -> int:
    """The token width of a timm ViT (typed as a plain nn.Module by its builders)."""
    return int(vit.embed_dim)


def _random_decoder(config: EngineConfig, channels: int) -> torch.nn.Conv2d:
    import torch

    torch.manual_seed(config.seed + 1)
    return torch.nn.Conv2d(channels, 1, kernel_size=1)


def _found(config: EngineConfig, weights: ResolvedWeights, device: torch.device, autocast_dtype: Any):
    """FOUND (``found``) or its training-free background query (``found-bkg``) on DINO ViT-S/8."""
    from annotator.models import found

    sd = W.load_state_dict(weights.dino) if weights.dino else None
    vit = found.build_dino_vits8(sd, seed=config.seed)
    dec = None
    if config.saliency == "found":  # a random decoder only when weights were deliberately skipped
        dec = found.load_found_decoder(weights.found) if weights.found else _random_decoder(config, _embed_dim(vit))
    return found.FoundSaliency(vit, dec, device, mode=config.saliency, max_side=config.saliency_max_side or 0,
                               autocast_dtype=autocast_dtype, name=config.saliency)


def _found_tiny_random(config: EngineConfig, weights: ResolvedWeights, device: torch.device, autocast_dtype: Any):
    from annotator.models import found

    vit = found.build_tiny_vit(seed=config.seed)
    dec = _random_decoder(config, _embed_dim(vit))
    return found.FoundSaliency(vit, dec, device, mode="found", max_side=config.saliency_max_side or 0,
                               autocast_dtype=autocast_dtype, name=config.saliency)


def _precomputed(config: EngineConfig, weights: ResolvedWeights, device: torch.device, autocast_dtype: Any):
    from annotator.models.precomputed import PrecomputedSaliency

    return PrecomputedSaliency(config.saliency.split(":", 1)[1], device, storage_options=config.storage_options)


def _toy_saliency(config: EngineConfig, weights: ResolvedWeights, device: torch.device, autocast_dtype: Any):
    from annotator.models import toy

    return toy.ToySaliency(device)


# --------------------------------------------------------------------------- the registry

OPEN_CLIP = ClipBackend("<open_clip model>", _open_clip, "any open_clip model name (ViT-B-32, ViT-B-16, ...)",
                        open_clip_weights=True)
CLIP_BACKENDS: dict[str, ClipBackend] = {
    b.name: b
    for b in (
        ClipBackend("tiny-random", _tiny_random_clip, "small open_clip CLIP, seeded random weights", test_only=True),
        ClipBackend("toy", _toy_clip, "colour-histogram encoder: segments saturated colours", test_only=True),
    )
}
SALIENCY_BACKENDS: dict[str, SaliencyBackend] = {
    b.name: b
    for b in (
        SaliencyBackend("found", _found, "FOUND: DINO ViT-S/8 keys + its trained 1x1 decoder",
                        weights=(W.DINO_VITS8, W.FOUND_DECODER)),
        SaliencyBackend("found-bkg", _found, "FOUND's training-free background query on DINO ViT-S/8",
                        weights=(W.DINO_VITS8,)),
        SaliencyBackend("none", lambda *args: None, "no saliency: raw multi-scale CLIP scores"),
        SaliencyBackend("precomputed", _precomputed, "maps per image stem (.npy in [0,1] or 8-bit .png)",
                        prefix=True),
        SaliencyBackend("found-tiny-random", _found_tiny_random, "FOUND's structure on a small random ViT",
                        test_only=True),
        SaliencyBackend("toy", _toy_saliency, "pixel saturation", test_only=True),
    )
}
TEST_MODELS = tuple(name for name, b in CLIP_BACKENDS.items() if b.test_only)
#: ``--saliency`` values as shown to users.
SALIENCY_NAMES = tuple(f"{n}:<dir or URI>" if b.prefix else n for n, b in SALIENCY_BACKENDS.items())
#: Which ResolvedWeights field each weight file fills, and which option gives it explicitly.
_WEIGHT_FIELDS = {W.DINO_VITS8: ("dino", "dino_weights"), W.FOUND_DECODER: ("found", "found_weights")}


def clip_backend(model: str) -> ClipBackend:
    """The entry for ``--model`` (open_clip for every name that is not a test model)."""
    return CLIP_BACKENDS.get(model, OPEN_CLIP)


def saliency_backend(name: str) -> SaliencyBackend:
    """The entry for ``--saliency``; ValueError naming the valid values otherwise."""
    key = name.split(":", 1)[0] if ":" in name else name
    backend = SALIENCY_BACKENDS.get(key)
    if backend is None or backend.prefix != (":" in name):
        raise ConfigError(f"--saliency: expected one of {', '.join(SALIENCY_NAMES)}, got {name!r}")
    return backend


def check_saliency_name(name: str) -> None:
    """Raise ValueError for an unknown ``--saliency`` value."""
    saliency_backend(name)


def resolve_weights(config: EngineConfig) -> ResolvedWeights:
    """Find or download every weight file; one :class:`WeightsUnavailableError` lists all missing.

    Also validates model/tag/saliency names (ValueError) before touching the network.
    """
    saliency = saliency_backend(config.saliency)
    out, missing = ResolvedWeights(), []
    if clip_backend(config.model).open_clip_weights:  # open_clip's names as data: no open_clip, no torch
        out.clip, m = open_clip_names.resolve_open_clip_weights(config.model, config.pretrained, config.weights_dir)
        missing += [m] if m else []
    if config.pretrained != "random":  # benchmarks: random weights everywhere
        for spec in saliency.weights:
            field, option = _WEIGHT_FIELDS[spec]
            path, m = W.resolve_weight(spec, getattr(config, option), Path(config.weights_dir))
            setattr(out, field, str(path) if path else None)
            missing += [m] if m else []
    if missing:
        raise W.WeightsUnavailableError(missing)
    return out


def describe_weights(config: EngineConfig, weights: ResolvedWeights) -> dict[str, str]:
    """What the engine really loads, for the run metadata: per weight (``clip``, and
    ``dino``/``found`` when the saliency uses them) ``random (seed N)``, a file's
    ``name sha256:<hex>``, the open_clip tag, or ``none``.

    A tag names its weights exactly (open_clip's registry), so its large file is not
    hashed; a file given or found by hand is.
    """
    seed = f"random (seed {config.seed})"
    if config.model == "toy":
        clip = "none (toy model: no weights)"
    elif config.model == "tiny-random" or config.pretrained in ("random", "none", ""):
        clip = seed
    elif Path(config.pretrained).expanduser().is_file():
        clip = W.describe_file(Path(config.pretrained).expanduser())
    elif weights.clip and Path(weights.clip).parent == Path(config.weights_dir):  # placed by hand
        clip = f"{config.pretrained} ({W.describe_file(weights.clip)})"
    else:
        clip = config.pretrained
    out = {"clip": clip}
    if config.saliency in ("found", "found-bkg", "found-tiny-random"):
        out["dino"] = W.describe_file(weights.dino) if weights.dino else seed
    if config.saliency in ("found", "found-tiny-random"):
        out["found"] = W.describe_file(weights.found) if weights.found else seed
    return out


def build_clip(config: EngineConfig, weights: ResolvedWeights, device: torch.device):
    """The CLIP backend named by ``config.model`` on ``device``."""
    return clip_backend(config.model).build(config, weights, device)


def build_saliency(config: EngineConfig, weights: ResolvedWeights, device: torch.device, autocast_dtype=None):
    """The saliency backend named by ``config.saliency`` (None for ``none``)."""
    return saliency_backend(config.saliency).build(config, weights, device, autocast_dtype)
