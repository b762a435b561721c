"""The official protocol's two uint8 resizes equal OpenCV's and PIL's, value for value."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from annotator.core import multiscale
from annotator.core.exact_resize import opencv_linear_resize, pil_bicubic_resize_exact
from annotator.core.geometry import scale_grids


def _pattern(kind: str, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 test images: noise, gradients, hard edges, a checkerboard, flat."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "gradient":
        g = np.stack([xx * 255 / max(1, w - 1), yy * 255 / max(1, h - 1), (xx + yy) * 255 / max(1, h + w - 2)], -1)
        return np.round(g).astype(np.uint8)
    if kind == "edges":
        img = np.zeros((h, w, 3), np.uint8)
        img[:, w // 3 :, 0] = 255
        img[h // 2 :, :, 1] = 255
        img[(xx + 2 * yy) % 17 < 3, 2] = 255
        return img
    if kind == "checker":
        return np.repeat((((yy // 3) + (xx // 3)) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)
    if kind == "flat":
        return np.full((h, w, 3), 255 if seed % 2 else 0, np.uint8)
    raise ValueError(kind)


KINDS = ("noise", "gradient", "edges", "checker", "flat")
# VOC and COCO image sizes (h, w), square and 2x cases, tiny and huge, and odd sizes
INPUT_SIZES_HW = [(375, 500), (500, 375), (333, 500), (500, 333), (281, 500), (480, 640), (427, 640),
                  (640, 480), (612, 612), (256, 256), (512, 512), (128, 128), (257, 129), (7, 5), (2048, 1536)]


@pytest.mark.parametrize("size_hw", INPUT_SIZES_HW)
@pytest.mark.parametrize("kind", KINDS)
def test_opencv_linear_resize_equals_cv2(size_hw, kind):
    img = _pattern(kind, *size_hw, seed=size_hw[0])
    expected = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
    got = opencv_linear_resize(torch.from_numpy(img).permute(2, 0, 1), (256, 256)).permute(1, 2, 0).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("out_hw", [(224, 224), (100, 333), (31, 17), (1024, 768)])
def test_opencv_linear_resize_equals_cv2_other_outputs(out_hw):
    img = _pattern("noise", 375, 500, seed=3)
    expected = cv2.resize(img, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
    got = opencv_linear_resize(torch.from_numpy(img).permute(2, 0, 1), out_hw).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("patch_px", [64, 128, 256, 224, 37, 300])
@pytest.mark.parametrize("kind", KINDS)
def test_pil_bicubic_resize_exact_equals_pil(patch_px, kind):
    batch = np.stack([_pattern(kind, patch_px, patch_px, seed=s) for s in range(3)])
    expected = np.stack([np.asarray(Image.fromarray(a).resize((224, 224), Image.BICUBIC)) for a in batch])
    got = pil_bicubic_resize_exact(torch.from_numpy(batch).permute(0, 3, 1, 2), 224)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected)


def test_the_inexact_path_is_what_the_exact_one_fixes():
    """The float path (``full``) differs from PIL on enlarged patches: the test above has teeth."""
    batch = np.stack([_pattern("noise", 64, 64, seed=s) for s in range(3)])
    expected = np.stack([np.asarray(Image.fromarray(a).resize((224, 224), Image.BICUBIC)) for a in batch])
    approx = multiscale.pil_bicubic_resize(torch.from_numpy(batch).permute(0, 3, 1, 2).float(), 224)
    assert (approx.permute(0, 2, 3, 1).numpy().astype(np.uint8) != expected).mean() > 0.005


@pytest.mark.parametrize("size_hw", [(375, 500), (480, 640)])
def test_exact_crops_equal_per_patch_pil_on_the_cv2_image(size_hw):
    """The whole exact preprocessing: cv2 to 256, each patch through PIL, /255, normalised."""
    img = _pattern("noise", *size_hw, seed=7)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    grids = scale_grids(256, (256, 128, 64), 0.5)
    small = multiscale.resize_input(torch.from_numpy(img).permute(2, 0, 1), 256, exact=True)
    crops = multiscale.cut_crops(small[None], grids, 224, mean, std, exact=True)
    small_np = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
    i = 0
    for g in grids:
        for x0, y0, x1, y1 in g.boxes_xyxy():
            ref = np.asarray(Image.fromarray(small_np[y0:y1, x0:x1]).resize((224, 224), Image.BICUBIC))
            ref = (ref.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
            np.testing.assert_allclose(crops[i].permute(1, 2, 0).numpy(), ref, rtol=0, atol=2e-6)
            i += 1
    assert i == crops.shape[0] == 59
