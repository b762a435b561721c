"""Engine levers measured side by side (``python -m benchmarks --compare-levers N``):
each variant is a fresh engine with one change, timed in alternating rounds on the same
decoded images, with its label agreement against the baseline.

Variants (on top of the benchmark's own settings, precision included):

- ``baseline``: the engine as it runs;
- ``crop_chunk_x4``: four times the crops per CLIP call (``EngineConfig.crop_chunk``);
- ``channels_last``: the models' conv weights (CLIP's and DINO's patch embeddings) in
  channels-last memory format;
- ``dino_eager_attention``: DINO's blocks with timm's fused attention turned off, i.e.
  what ``F.scaled_dot_product_attention`` (on by default) gains;
- ``torch_compile``: ``torch.compile`` on CLIP's image tower and on each DINO block
  (compiled during the untimed warm-up).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

__all__ = ["LEVERS", "label_agreement", "run_lever_compare", "time_alternately"]


def _channels_last(engine) -> None:
    import torch

    engine.clip.model.to(memory_format=torch.channels_last)
    vit = getattr(engine.saliency, "vit", None)
    if vit is not None:
        vit.to(memory_format=torch.channels_last)


def _eager_attention(engine) -> None:
    vit = getattr(engine.saliency, "vit", None)
    for blk in getattr(vit, "blocks", []):
        blk.attn.fused_attn = False


def _compile(engine) -> None:
    engine.clip.model.visual.compile()
    vit = getattr(engine.saliency, "vit", None)
    for blk in getattr(vit, "blocks", []):
        blk.compile()


#: name -> (config change, engine change applied after it is built)
LEVERS: dict[str, tuple[Callable | None, Callable | None]] = {
    "baseline": (None, None),
    "crop_chunk_x4": (lambda c: dataclasses.replace(c, crop_chunk=4 * c.crop_chunk), None),
    "channels_last": (None, _channels_last),
    "dino_eager_attention": (None, _eager_attention),
    "torch_compile": (None, _compile),
}


def time_alternately(engines: dict, images: list, rounds: int, warmup_images: list) -> tuple[dict, dict, dict]:
    """Each engine on ``warmup_images`` once (untimed), then ``rounds`` alternating timed
    passes over ``images``: (best seconds, the last pass's label maps, warm-up seconds),
    each by engine name."""
    warmup_s = {}
    for name, engine in engines.items():
        t0 = time.perf_counter()
        engine.predict(warmup_images)
        warmup_s[name] = time.perf_counter() - t0
    best = {name: float("inf") for name in engines}
    labels: dict[str, list] = {}
    for _ in range(rounds):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            preds = engine.predict(images)
            best[name] = min(best[name], time.perf_counter() - t0)
            labels[name] = [p.labels_hw for p in preds]
    return best, labels, warmup_s


def label_agreement(a: list, b: list) -> float:
    """Fraction of pixels labelled the same in two lists of (H, W) label maps."""
    return sum(int((x == y).sum()) for x, y in zip(a, b, strict=True)) / sum(x.size for x in a)


def run_lever_compare(config, vocabulary, images: list, rounds: int = 2, levers: list[str] | None = None) -> dict:
    """Images/s of each lever's engine on ``images`` ((H, W, 3) uint8 arrays): the best of
    ``rounds`` alternating timed passes after one untimed pass (warm-up, compilation);
    ``speedup`` = baseline seconds / the variant's; ``label_agreement`` = fraction of
    pixels labelled as the baseline labels them."""
    from annotator.engine import Engine

    names = levers or list(LEVERS)
    if "baseline" not in names:
        names = ["baseline", *names]
    engines = {}
    for name in names:
        change_config, change_engine = LEVERS[name]
        engine = Engine(change_config(config) if change_config else config, vocabulary)
        if change_engine:
            change_engine(engine)
        engines[name] = engine
    # warm-up (and compilation) on the same shapes as the timed passes
    best, labels, warmup_s = time_alternately(engines, images, rounds, warmup_images=images)
    out = {"images": len(images), "precision": engines["baseline"].precision, "rounds": rounds, "levers": {}}
    for name in names:
        out["levers"][name] = {"images_per_s": len(images) / best[name], "seconds": best[name],
                               "speedup": best["baseline"] / best[name], "warmup_s": warmup_s[name],
                               "label_agreement": label_agreement(labels["baseline"], labels[name])}
    return out
