import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from annotator.core import guidance, multiscale
from annotator.core.geometry import scale_grids


@pytest.mark.parametrize("n_in, n_out", [(1, 256), (3, 256), (7, 256), (7, 375), (3, 5), (5, 3)])
def test_bilinear_matrix_equals_interpolate(n_in, n_out):
    g = torch.randn(4, n_in, n_in + 1)
    ry, rx = multiscale.bilinear_matrix(n_in, n_out), multiscale.bilinear_matrix(n_in + 1, n_out + 7)
    ours = ry @ g @ rx.T
    ref = F.interpolate(g[None], size=(n_out, n_out + 7), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_dense_scores_bands_equal_whole():
    maps = [torch.randn(3, n, n) for n in (1, 3, 7)]
    w = (1 / 3,) * 3
    whole = multiscale.dense_scores(maps, w, (50, 70))
    bands = torch.cat([multiscale.dense_scores(maps, w, (50, 70), rows=r) for r in [(0, 13), (13, 40), (40, 50)]], dim=1)
    torch.testing.assert_close(whole, bands)


def test_crops_match_pil_per_patch():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    grids = scale_grids(256, (256, 128, 64), 0.5)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    crops = multiscale.cut_crops(torch.from_numpy(img).permute(2, 0, 1)[None].float(), grids, 224, mean, std)
    assert crops.shape == (59, 3, 224, 224)
    k = 0
    for g in grids:
        for x0, y0, x1, y1 in g.boxes_xyxy():
            ref = np.asarray(Image.fromarray(img[y0:y1, x0:x1]).resize((224, 224), Image.BICUBIC)).astype(np.float32)
            ours = (crops[k].permute(1, 2, 0).numpy() * 0.25 + 0.5) * 255
            # PIL works in fixed point: allow off-by-one rounding on a few pixels
            diff = np.abs(ours - ref)
            assert diff.max() <= 2.01 and (diff > 1.01).mean() < 0.001, (g.patch_px, diff.max())
            k += 1


def _guide(scores, sal):
    """Reference: background x (1 - s), every other class x s."""
    if sal is None:
        return scores
    out = scores * sal
    out[0] = scores[0] * (1 - sal)
    return out


def _decide(guided, logit_scale):
    """Reference: argmax, and the max of a plain softmax of the scaled scores."""
    probs = torch.softmax(guided * logit_scale, dim=0)
    return guided.argmax(0), probs.max(0).values


def test_guidance_and_confidence():
    scores = torch.tensor([[[0.3]], [[0.2]], [[0.25]]])  # (K=3, 1, 1)
    assert guidance.guided_decision(scores.clone(), torch.tensor([[0.0]]), 100)[0].item() == 0
    lab, conf = guidance.guided_decision(scores.clone(), torch.tensor([[1.0]]), 100)
    assert lab.item() == 2
    expected = torch.softmax(torch.tensor([0.0, 0.2, 0.25]) * 100, 0).max()
    torch.testing.assert_close(conf[0, 0], expected)
    # raw-cosine softmax would be near uniform: the calibrated one is not
    assert conf.item() > 0.9 and torch.softmax(torch.tensor([0.0, 0.2, 0.25]), 0).max() < 0.4


def test_resize_input_is_integer_valued():
    x = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8)
    y = multiscale.resize_input(x, 256)
    assert y.shape == (3, 256, 256) and torch.equal(y, y.round()) and y.min() >= 0 and y.max() <= 255


def test_fused_guided_decision_equals_guide_then_decide():
    scores = torch.rand(6, 17, 23) * 0.3
    sal = torch.rand(17, 23)
    for s in (sal, None):
        lab_a, conf_a = _decide(_guide(scores, s), 100.0)
        lab_b, conf_b = guidance.guided_decision(scores.clone(), s, 100.0)
        assert torch.equal(lab_a, lab_b)
        torch.testing.assert_close(conf_a, conf_b)
