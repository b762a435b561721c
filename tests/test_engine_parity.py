"""Parity with a slow, literal re-implementation of the released CLIP-DIY inference.

The reference below does what the released code does, step by step and per patch: the
image resized to 256x256 (bilinear, no antialiasing, uint8), every patch of every scale
turned into a PIL image and resized to 224 with PIL's bicubic, scaled and normalised,
encoded, cosine with the class embeddings, laid on its grid, upsampled to 256 bilinearly
(align_corners=False), the scales averaged, guided by a fixed saliency map, softmax,
argmax. It shares no code with the engine except the model itself.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from annotator.config import EngineConfig
from annotator.engine import Engine
from annotator.inputs.vocab import Vocabulary
from annotator.models import ResolvedWeights

MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


def bilinear_resize_numpy(img: np.ndarray, out: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of (H, W, 3) uint8, rounded to uint8 (cv2 INTER_LINEAR)."""
    h, w = img.shape[:2]

    def axis(n_in):
        src = np.clip((np.arange(out) + 0.5) * n_in / out - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float64)

    y0, y1, wy = axis(h)
    x0, x1, wx = axis(w)
    f = img.astype(np.float64)
    rows = f[y0] * (1 - wy)[:, None, None] + f[y1] * wy[:, None, None]
    out_img = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.round(out_img), 0, 255).astype(np.uint8)


@torch.inference_mode()
def released_inference(model, text_kd, img: np.ndarray, saliency_256: np.ndarray) -> np.ndarray:
    small = bilinear_resize_numpy(img, 256)
    maps = []
    for p in (256, 128, 64):
        s = p // 2
        n = (256 - p) // s + 1
        crops = []
        for r in range(n):
            for c in range(n):
                patch = Image.fromarray(small[r * s : r * s + p, c * s : c * s + p])
                x = np.asarray(patch.resize((224, 224), Image.BICUBIC), np.float32) / 255.0
                crops.append(torch.from_numpy((x - MEAN) / STD).permute(2, 0, 1))
        emb = F.normalize(model.encode_image(torch.stack(crops)).float(), dim=-1)
        scores = emb @ text_kd.T  # (n*n, K)
        grid = scores.T.reshape(1, -1, n, n)
        maps.append(F.interpolate(grid, size=(256, 256), mode="bilinear", align_corners=False)[0])
    m = torch.stack(maps).mean(0)
    s = torch.from_numpy(saliency_256)
    guided = torch.cat([m[:1] * (1 - s), m[1:] * s])
    return torch.softmax(guided, 0).argmax(0).numpy()


@pytest.mark.slow
def test_official_protocol_matches_released_loop(tmp_path):
    vocab = Vocabulary.from_names(["cat", "dog", "car", "tree", "person"])
    rng = np.random.default_rng(0)
    # smooth random images: blobs, like photographs rather than noise
    imgs = []
    for size in [(300, 400), (256, 256)]:
        low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        imgs.append(np.asarray(Image.fromarray(low).resize(size[::-1], Image.BILINEAR)))
    yy, xx = np.mgrid[0:256, 0:256]
    sal = (1 / (1 + np.exp(((yy - 128) ** 2 + (xx - 110) ** 2 - 70**2) / 800.0))).astype(np.float32)
    (tmp_path / "sal").mkdir()
    for i in range(len(imgs)):
        np.save(tmp_path / "sal" / f"img{i}.npy", sal)
    cfg = EngineConfig(model="ViT-B-32", pretrained="random", saliency=f"precomputed:{tmp_path / 'sal'}",
                       protocol="official", device="cpu")
    engine = Engine(cfg, vocab, weights=ResolvedWeights())
    preds = engine.predict(imgs, names=[f"img{i}.jpg" for i in range(len(imgs))])
    model = engine.clip.model
    agree = []
    for img, pred in zip(imgs, preds):
        ref = released_inference(model, engine.text_kd, img, sal)
        ref_full = F.interpolate(torch.from_numpy(ref)[None, None].float(), size=img.shape[:2], mode="nearest")[0, 0]
        assert len(np.unique(ref)) > 1, "a trivial reference would prove nothing"
        agree.append((ref_full.numpy().astype(np.int32) == pred.labels_hw).mean())
    assert min(agree) >= 0.99, agree
