"""Model registries: names -> builders, and weight resolution before any model is built.

CLIP backends (``--model``): any open_clip model name, plus the test models
``tiny-random`` (small open_clip CLIP, seeded random weights) and ``toy`` (colour
histogram, see :mod:`annotator.models.toy`).

Saliency backends (``--saliency``): ``found``, ``found-bkg``, ``none``,
``precomputed:<dir or URI>``, and the test saliencies ``found-tiny-random`` (FOUND's
structure on a small random ViT) and ``toy`` (pixel saturation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import EngineConfig
from . import weights as W

TEST_MODELS = ("tiny-random", "toy")
SALIENCY_NAMES = ("found", "found-bkg", "none", "precomputed:<dir or URI>", "found-tiny-random", "toy")


@dataclass
class ResolvedWeights:
    """Local paths of every weight file the configuration needs (None = not needed/random)."""

    clip: str | None = None
    dino: str | None = None
    found: str | None = None


def check_saliency_name(name: str) -> None:
    """Raise ValueError for an unknown ``--saliency`` value."""
    if name.startswith("precomputed:") or name in SALIENCY_NAMES:
        return
    raise ValueError(f"--saliency: expected one of {', '.join(SALIENCY_NAMES)}, got {name!r}")


def resolve_weights(config: EngineConfig) -> ResolvedWeights:
    """Find or download every weight file; one :class:`WeightsUnavailableError` lists all missing.

    Also validates model/tag/saliency names (ValueError) before touching the network.
    """
    check_saliency_name(config.saliency)
    out, missing = ResolvedWeights(), []
    cache = Path(config.weights_dir)
    if config.model not in TEST_MODELS:
        from .clip import open_clip_missing_weights

        out.clip, m = open_clip_missing_weights(config.model, config.pretrained, config.weights_dir)
        missing += [m] if m else []
    random_everywhere = config.pretrained == "random"  # benchmarks: no weights at all
    if config.saliency in ("found", "found-bkg") and not random_everywhere:
        path, m = W.resolve_weight(W.DINO_VITS8, config.dino_weights, cache)
        out.dino = str(path) if path else None
        missing += [m] if m else []
    if config.saliency == "found" and not random_everywhere:
        path, m = W.resolve_weight(W.FOUND_DECODER, config.found_weights, cache)
        out.found = str(path) if path else None
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
    from . import clip, toy

    builders: dict[str, Callable] = {
        "tiny-random": lambda: clip.build_tiny_random(device, seed=config.seed),
        "toy": lambda: toy.ToyClip(device),
    }
    if config.model in builders:
        return builders[config.model]()
    return clip.build_open_clip(config.model, weights.clip, device, seed=config.seed)


def build_saliency(config: EngineConfig, weights: ResolvedWeights, device: torch.device, autocast_dtype=None):
    """The saliency backend named by ``config.saliency`` (None for ``none``)."""
    from . import found, toy
    from .precomputed import PrecomputedSaliency

    name = config.saliency
    if name == "none":
        return None
    if name.startswith("precomputed:"):
        return PrecomputedSaliency(name[len("precomputed:") :], device)
    if name == "toy":
        return toy.ToySaliency(device)
    if name == "found-tiny-random":
        vit = found.build_tiny_vit(seed=config.seed)
        torch.manual_seed(config.seed + 1)
        dec = torch.nn.Conv2d(vit.embed_dim, 1, kernel_size=1)
        return found.FoundSaliency(vit, dec, device, mode="found", max_side=config.saliency_max_side,
                                   autocast_dtype=autocast_dtype, name=name)
    sd = W.load_state_dict(weights.dino) if weights.dino else None
    vit = found.build_dino_vits8(sd, seed=config.seed)
    dec = found.load_found_decoder(weights.found) if name == "found" and weights.found else None
    if name == "found" and dec is None:  # random decoder only when weights were deliberately skipped
        torch.manual_seed(config.seed + 1)
        dec = torch.nn.Conv2d(vit.embed_dim, 1, kernel_size=1)
    return found.FoundSaliency(vit, dec, device, mode=name, max_side=config.saliency_max_side,
                               autocast_dtype=autocast_dtype, name=name)
