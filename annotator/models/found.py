"""FOUND saliency on a DINO ViT-S/8 backbone (and its training-free FOUND-bkg variant).

Facts from the released FOUND code (valeoai/FOUND):
- input: the image, ImageNet mean/std, zero-padded right/bottom to a multiple of 8
  AFTER normalisation; positional embeddings interpolated bicubically to the token grid
  (DINO's ``interpolate_pos_encoding``, with its +0.1 offset);
- features: the KEYS of the last block's attention (bias included), CLS dropped, heads
  concatenated -> (B, D, H/8, W/8), not normalised;
- FOUND: ``Conv2d(D, 1, 1)`` on the keys -> logits, upsampled x8 bilinear
  (``align_corners=False``), cropped to the image, sigmoid: a soft map;
- FOUND-bkg: the least-attended patch is the background seed; patches whose
  beta-weighted key is close to the seed's (cosine > 0.3) are background; the patch-grid
  mask is resized bilinearly (``align_corners=False``) straight to the image's size and
  thresholded at > 0.5, as the released evaluation does.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOUND_BKG_SIM_THRESHOLD = 0.3


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """DINO's positional-embedding interpolation.

    Args:
        pos_embed: (1, 1 + n*n, D), CLS first.
        grid_hw: token grid (rows, cols) of the input.
    Returns:
        (1, 1 + rows*cols, D).
    """
    n_tok = pos_embed.shape[1] - 1
    rows, cols = grid_hw
    n = int(math.sqrt(n_tok))
    if n * n == n_tok and rows == n and cols == n:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    d = pos_embed.shape[-1]
    patch_pos = F.interpolate(
        patch_pos.reshape(1, n, n, d).permute(0, 3, 1, 2).float(),
        scale_factor=((rows + 0.1) / n, (cols + 0.1) / n),
        mode="bicubic",
        align_corners=False,
    )
    assert patch_pos.shape[-2:] == (rows, cols), patch_pos.shape
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, d).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def last_block_qk(vit: Any, images_b3hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys of the last attention block of a timm ViT.

    Runs every block but the last in full, then only ``norm1`` and ``qkv`` of the last.

    Args:
        vit: timm ``VisionTransformer`` (CLS token, no register tokens).
        images_b3hw: (B, 3, H, W) normalised, H and W multiples of the patch size.
    Returns:
        q, k: (B, heads, 1 + N, head_dim) each, CLS first; bias included.
    """
    b, _, h, w = images_b3hw.shape
    p = vit.patch_embed.patch_size[0] if isinstance(vit.patch_embed.patch_size, (tuple, list)) else vit.patch_embed.patch_size
    x = vit.patch_embed.proj(images_b3hw)  # (B, D, H/p, W/p)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([vit.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
    x = x + interpolate_pos_embed(vit.pos_embed, (h // p, w // p)).to(x.dtype)
    x = vit.norm_pre(x)
    for blk in vit.blocks[:-1]:
        x = blk(x)
    last = vit.blocks[-1]
    attn = last.attn
    qkv = attn.qkv(last.norm1(x))
    heads = attn.num_heads
    qkv = qkv.reshape(b, x.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1]


def keys_to_features(k_bhnd: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(B, heads, 1 + N, hd) keys -> (B, heads*hd, rows, cols), CLS dropped, heads concatenated."""
    b, nh, _, hd = k_bhnd.shape
    feats = k_bhnd[:, :, 1:].permute(0, 2, 1, 3).reshape(b, -1, nh * hd)
    return feats.transpose(1, 2).reshape(b, nh * hd, *grid_hw)


def found_bkg_foreground(q_bhnd: torch.Tensor, k_bhnd: torch.Tensor, scale: float) -> torch.Tensor:
    """FOUND-bkg: (B, N) float 1 = foreground, 0 = background (training-free).

    Args:
        q_bhnd, k_bhnd: (B, heads, 1 + N, hd) last-block queries and keys, CLS first.
        scale: the attention scale (head_dim ** -0.5).
    """
    q_cls = q_bhnd[:, :, :1].float()
    k = k_bhnd.float()
    att = torch.softmax((q_cls @ k.transpose(-2, -1)) * scale, dim=-1)[:, :, 0, 1:]  # (B, h, N)
    thr = att.mean(dim=(1, 2), keepdim=True)
    q_frac = (att > thr).float().mean(dim=2)  # (B, h)
    beta = torch.log((q_frac + 1e-10).sum(dim=1, keepdim=True) / (q_frac + 1e-10))  # (B, h)
    keys = k[:, :, 1:] * beta[:, :, None, None]  # (B, h, N, hd)
    b, nh, n, hd = keys.shape
    feats = F.normalize(keys.permute(0, 2, 1, 3).reshape(b, n, nh * hd), dim=-1)
    seed = (att * beta[:, :, None]).sum(dim=1).argmin(dim=1)  # (B,)
    sim = (feats @ feats[torch.arange(b), seed].unsqueeze(-1)).squeeze(-1)  # (B, N)
    return (sim <= FOUND_BKG_SIM_THRESHOLD).float()


class FoundSaliency:
    """FOUND (trained 1x1 decoder) or FOUND-bkg saliency on a timm DINO ViT.

    Call with a list of (3, H, W) uint8 RGB images on the model's device; returns one
    (h, w) float32 map in [0, 1] per image at the resolution FOUND ran at (the image
    size, or smaller when capped by ``max_side``; 0 = no cap, as released).
    """

    def __init__(
        self,
        vit: nn.Module,
        decoder: nn.Conv2d | None,
        device: torch.device,
        *,
        mode: str = "found",
        max_side: int = 448,
        autocast_dtype: torch.dtype | None = None,
        name: str = "found",
    ):
        if mode not in ("found", "found-bkg"):
            raise ValueError(f"mode: expected 'found' or 'found-bkg', got {mode!r}")
        if mode == "found" and decoder is None:
            raise ValueError("mode 'found' needs a decoder")
        self.vit: Any = vit.to(device).eval().requires_grad_(False)  # a timm ViT: its attributes are dynamic
        self.decoder = decoder.to(device).eval().requires_grad_(False) if decoder is not None else None
        self.device = device
        self.mode = mode
        self.max_side = max_side
        self.autocast_dtype = autocast_dtype
        self.name = name
        ps = cast(Any, vit).patch_embed.patch_size  # a timm ViT: its attributes are dynamic
        self.patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def working_size(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        """The size FOUND runs at: short side <= max_side, long side <= 4 * max_side (0: as is)."""
        h, w = size_hw
        if not self.max_side:
            return (h, w)
        f = min(1.0, self.max_side / min(h, w), 4 * self.max_side / max(h, w))
        return (max(1, round(h * f)), max(1, round(w * f)))

    def _prepare(self, img_3hw: torch.Tensor) -> torch.Tensor:
        x = img_3hw.unsqueeze(0).float()
        size = self.working_size(_size_hw(x))
        if size != _size_hw(x):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.patch, (-w) % self.patch
        return F.pad(x, (0, pw, 0, ph))[0] if (ph or pw) else x[0]

    @torch.inference_mode()
    def maps_for_batch(self, batch_b3hw: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hp, Wp) normalised padded batch -> (B, Hp, Wp) float32 maps in [0, 1]
        (``found``), or (B, Hp / p, Wp / p) float32 patch-grid masks, 1 = foreground
        (``found-bkg``: :meth:`__call__` resizes each to its image)."""
        hp, wp = batch_b3hw.shape[-2:]
        grid = (hp // self.patch, wp // self.patch)
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else torch.autocast(device_type=self.device.type, enabled=False)
        )
        with ctx:
            q, k = last_block_qk(self.vit, batch_b3hw)
        if self.mode == "found":
            assert self.decoder is not None and self.decoder.bias is not None  # mode 'found' has one (__init__)
            feats = keys_to_features(k, grid).float()
            logits = F.conv2d(feats, self.decoder.weight.float(), self.decoder.bias.float())
            logits = F.interpolate(logits, scale_factor=self.patch, mode="bilinear", align_corners=False)
            return torch.sigmoid(logits[:, 0])
        return found_bkg_foreground(q, k, self.vit.blocks[-1].attn.scale).view(-1, *grid)

    def __call__(self, images: list[torch.Tensor], names: list[str] | None = None) -> list[torch.Tensor]:
        prepared = [self._prepare(img) for img in images]
        out: list[torch.Tensor | None] = [None] * len(images)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(prepared):  # size buckets: one backbone call per padded size
            buckets.setdefault(_size_hw(x), []).append(i)
        for idx in buckets.values():
            maps = self.maps_for_batch(torch.stack([prepared[i] for i in idx]))
            for j, i in enumerate(idx):
                h, w = self.working_size(_size_hw(images[i]))
                if self.mode == "found":
                    out[i] = maps[j, :h, :w]
                else:  # the released evaluation: the grid resized to the image, > 0.5
                    up = F.interpolate(maps[j][None, None], size=(h, w), mode="bilinear", align_corners=False)
                    out[i] = (up[0, 0] > 0.5).float()
        return out  # type: ignore[return-value]


def build_dino_vits8(state_dict: dict | None, seed: int = 0) -> nn.Module:
    """timm ``vit_small_patch8_224`` with DINO weights (random when ``state_dict`` is None)."""
    import timm

    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0)
    if state_dict is not None:
        sd = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm."))}
        missing, unexpected = vit.load_state_dict(sd, strict=True)
        missing = [m for m in missing if not m.startswith(("head.", "fc_norm."))]
        if missing or unexpected:
            raise ValueError(
                "--dino-weights: expected a DINO ViT-S/8 state dict with timm's "
                f"vit_small_patch8_224 keys; missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return vit


def build_tiny_vit(seed: int = 0) -> nn.Module:
    """A small random ViT with DINO ViT-S/8's structure (patch 8, CLS, qkv bias): tests only."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0)


def load_found_decoder(path: str, in_channels: int = 384) -> nn.Conv2d:
    """Read FOUND's ``decoder_weights.pt``: ``{"decoder": {"weight": (1, D, 1, 1), "bias": (1,)}}``."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    try:
        sd = obj["decoder"]
        w, b = sd["weight"], sd["bias"]
    except (KeyError, TypeError):
        keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"--found-weights {path!r}: expected a dict {{'decoder': {{'weight', 'bias'}}}}, got keys {keys}"
        ) from None
    if tuple(w.shape) != (1, in_channels, 1, 1) or tuple(b.shape) != (1,):
        raise ValueError(
            f"--found-weights {path!r}: expected weight (1, {in_channels}, 1, 1) and bias (1,), "
            f"got {tuple(w.shape)} and {tuple(b.shape)}"
        )
    conv = nn.Conv2d(in_channels, 1, kernel_size=1)
    conv.load_state_dict({"weight": w.float(), "bias": b.float()})
    return conv


def _size_hw(x: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a (..., H, W) tensor."""
    return int(x.shape[-2]), int(x.shape[-1])


def save_found_decoder(conv: nn.Conv2d, path: str) -> None:
    """Write a decoder in FOUND's file format (for tests and for converted decoders)."""
    if conv.bias is None:
        raise ValueError("a FOUND decoder is a 1x1 conv with a bias; this one has none")
    torch.save({"decoder": {"weight": conv.weight.detach().cpu(), "bias": conv.bias.detach().cpu()}}, path)
