"""CLIP backends: open_clip models, and the ``tiny-random`` test model.

A backend exposes ``input_size`` (square side in pixels), ``mean``/``std`` (per RGB
channel, for 0..1 input), ``logit_scale`` (float), ``encode_image(crops)`` (N, 3, S, S)
float normalised -> (N, D), and ``encode_text(prompts)`` list[str] -> (P, D).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from annotator.models.weights import MissingWeight, network_reachable

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_RANDOM_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class OpenClipBackend:
    """An open_clip model in eval mode on one device."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", model.visual.image_size)
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(cfg.get("mean") or getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
        self.std = tuple(cfg.get("std") or getattr(model.visual, "image_std", None) or OPENAI_STD)
        self.logit_scale = float(model.logit_scale.detach().exp().item())

    @torch.inference_mode()
    def encode_image(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(crops)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens)


def open_clip_missing_weights(model: str, pretrained: str, weights_dir: str) -> tuple[str | None, MissingWeight | None]:
    """Resolve ``pretrained`` (tag or file) to a local checkpoint path, downloading if possible."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    option = f"--pretrained /path/to/checkpoint (an open_clip checkpoint of {model})"
    if model not in open_clip.list_models():
        raise ValueError(
            f"--model: unknown open_clip model {model!r}; expected one of open_clip.list_models() "
            f"(e.g. ViT-B-32, ViT-B-16) or the test models 'tiny-random', 'toy'"
        )
    if pretrained in ("random", "none", ""):
        return None, None
    p = Path(pretrained).expanduser()
    if p.is_file():
        return str(p), None
    if any(ch in pretrained for ch in "/\\") or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        return None, MissingWeight(f"CLIP checkpoint {pretrained}", "file not found", option)
    tags = oc_pretrained.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise ValueError(
            f"--pretrained: unknown tag {pretrained!r} for {model}; expected one of {tags}, "
            f"a local checkpoint file, or 'random'"
        )
    cfg = oc_pretrained.get_pretrained_cfg(model, pretrained)
    url, flat = _manual_download(model, pretrained, cfg, weights_dir)
    for f in (flat, flat.with_suffix(".bin"), flat.with_suffix(".pt")):
        if f.is_file():  # a copy placed in --weights-dir by hand
            return str(f), None
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, fname = hub.rstrip("/").rsplit("/", 1) if hub.count("/") > 1 and not hub.endswith("/") else (hub.rstrip("/"), "")
            for name in ([fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
                hit = try_to_load_from_cache(repo, name, cache_dir=weights_dir)
                if isinstance(hit, str):
                    return hit, None
        except Exception:  # cache layout differences: fall through to a download
            pass
        host = "huggingface.co"
    else:
        host = cfg.get("url", "https://unknown/").split("/")[2]
    what = f"CLIP weights {model}/{pretrained}"
    if not network_reachable(host):
        return None, MissingWeight(what, f"{host} is unreachable (offline?) and no copy is in {weights_dir}",
                                   option, url=url, save_as=str(flat))
    try:
        path = oc_pretrained.download_pretrained(cfg, cache_dir=weights_dir)
        return path, None
    except Exception as e:
        return None, MissingWeight(what, f"download failed: {e}", option, url=url, save_as=str(flat))


def _manual_download(model: str, pretrained: str, cfg: dict, weights_dir: str) -> tuple[str, Path]:
    """(where a user fetches the checkpoint of ``model``/``pretrained`` by hand, the
    path in ``weights_dir`` where that file is then found). The file keeps its format:
    ``.safetensors`` from a Hugging Face repository, the URL's suffix otherwise
    (``.bin``/``.pt`` copies are accepted under the same stem)."""
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    stem = f"open_clip_{model}_{pretrained}"
    if hub:
        repo, fname = (hub, "open_clip_model.safetensors") if hub.count("/") == 1 else hub.rsplit("/", 1)
        suffix = Path(fname).suffix or ".safetensors"
        return f"https://huggingface.co/{repo}/resolve/main/{fname}", Path(weights_dir) / (stem + suffix)
    url = cfg.get("url", "")
    return url, Path(weights_dir) / (stem + (Path(url).suffix or ".pt"))


def build_open_clip(model: str, checkpoint: str | None, device: torch.device, seed: int = 0) -> OpenClipBackend:
    """Create an open_clip model (random init when ``checkpoint`` is None) on ``device``."""
    import open_clip

    torch.manual_seed(seed)
    m = open_clip.create_model(model, pretrained=checkpoint, device="cpu")
    return OpenClipBackend(m, open_clip.get_tokenizer(model), device)


def build_tiny_random(device: torch.device, seed: int = 0) -> OpenClipBackend:
    """A small CLIP of open_clip's architecture with seeded random weights (tests only)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    m = CLIP(**TINY_RANDOM_CONFIG)
    return OpenClipBackend(m, SimpleTokenizer(context_length=77), device)
