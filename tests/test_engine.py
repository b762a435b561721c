from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from annotator.config import ConfigError, EngineConfig
from annotator.engine import Engine
from annotator.evaluation import metrics
from annotator.inputs.vocab import Vocabulary
from annotator.models import ResolvedWeights
from tests.synthetic import VOCAB, make_image


def toy_engine(**kw):
    cfg = EngineConfig(model="toy", saliency=kw.pop("saliency", "toy"), pretrained="toy", device="cpu", **kw)
    return Engine(cfg, Vocabulary.from_names(VOCAB))


@pytest.mark.parametrize("protocol", ["full", "official"])
def test_toy_model_recovers_known_masks(protocol):
    engine = toy_engine(protocol=protocol, batch_size=4)
    data = [make_image(seed, size_hw=(200 + 20 * (seed % 3), 300)) for seed in range(12)]
    preds = engine.predict([rgb for rgb, _ in data])
    cm = sum(metrics.confusion_matrix(p.labels_hw, lab, len(VOCAB) + 1) for p, (_, lab) in zip(preds, data, strict=True))
    scores = metrics.scores_from_confusion(cm, ["background", *VOCAB])
    assert scores["miou"] >= 0.9, scores
    for p, (rgb, _) in zip(preds, data, strict=True):
        assert p.labels_hw.shape == rgb.shape[:2] and p.labels_hw.dtype == np.int32
        assert p.confidence_hw.dtype == np.float32 and 0 <= p.confidence_hw.min() and p.confidence_hw.max() <= 1


def test_without_saliency_the_toy_model_is_much_worse():
    """The guidance matters: with saliency 'none', background floods or vanishes."""
    data = [make_image(seed) for seed in range(6)]
    res = {}
    for sal in ("toy", "none"):
        preds = toy_engine(saliency=sal).predict([rgb for rgb, _ in data])
        cm = sum(metrics.confusion_matrix(p.labels_hw, lab, 5) for p, (_, lab) in zip(preds, data, strict=True))
        res[sal] = metrics.scores_from_confusion(cm, ["background", *VOCAB])["miou"]
    assert res["toy"] > res["none"] + 0.2, res


def test_cpu_is_deterministic():
    """Two engines built alike give the same outputs for the same batches."""
    data = [make_image(seed)[0] for seed in range(5)]
    cfg = EngineConfig(model="tiny-random", saliency="found-tiny-random", pretrained="random", device="cpu", batch_size=2)
    e1 = Engine(cfg, Vocabulary.from_names(["cat", "dog"]), weights=ResolvedWeights())
    e2 = Engine(cfg, Vocabulary.from_names(["cat", "dog"]), weights=ResolvedWeights())
    a, b = e1.predict(data), e2.predict(data)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.labels_hw, y.labels_hw)
        np.testing.assert_array_equal(x.confidence_hw, y.confidence_hw)


def spread_class_embeddings(engine, images):
    """Random text towers give near-identical embeddings to prompts of equal token
    length (every pixel would be background): set the class embeddings from the images'
    own patch embeddings instead, their mean plus one principal direction per class."""
    import torch.nn.functional as F

    from annotator.core import multiscale
    from annotator.engine import to_chw_uint8

    with torch.inference_mode():
        small = torch.stack([multiscale.resize_input(to_chw_uint8(im, engine.device), engine.config.input_size)
                             for im in images])
        crops = multiscale.cut_crops(small, engine.grids, engine.clip.input_size, engine.clip.mean, engine.clip.std)
        emb = F.normalize(engine.clip.encode_image(crops).float(), dim=-1)
        mean = emb.mean(0)
        _, _, v = torch.linalg.svd(emb - mean, full_matrices=False)
        spread = (emb - mean).norm(dim=1).mean()
        engine.text_kd = F.normalize(mean + 1.5 * spread * v[: len(engine.text_kd)], dim=-1)


@pytest.mark.parametrize("protocol", ["full", "official"])
def test_batch_independence(protocol):
    """An image's outputs do not depend on what it is batched with. Alone, and in a
    batch of images of other sizes at any position, its labels are byte-identical and its
    confidence equal. Batched with an image of its own size, FOUND runs both in one
    backbone call, whose float sums may differ in the last bit: the labels are still
    byte-identical, the confidence equal to float32 rounding amplified by the logit
    scale (measured: 1.4e-6 relative on 1.4% of pixels)."""
    cfg = EngineConfig(model="tiny-random", saliency="found-tiny-random", pretrained="random", device="cpu",
                       batch_size=8, protocol=protocol)
    engine = Engine(cfg, Vocabulary.from_names(["cat", "dog", "car"]), weights=ResolvedWeights())
    target = make_image(11, size_hw=(150, 210))[0]
    others = [make_image(20, size_hw=(97, 301))[0], make_image(22, size_hw=(256, 256))[0],
              make_image(23, size_hw=(333, 120))[0]]
    same_size = make_image(21, size_hw=(150, 210))[0]
    spread_class_embeddings(engine, [target, others[0]])
    (alone,) = engine.predict([target], names=["t.jpg"])
    assert len(np.unique(alone.labels_hw)) >= 3, "a near-constant label map would prove nothing"
    cases = [(others[:p] + [target] + others[p:], p, True) for p in (0, 1, 3)]
    cases.append(([others[0], same_size, target, others[2]], 2, False))
    for batch, position, exact in cases:
        mixed = engine.predict(batch, names=[f"{i}.jpg" for i in range(len(batch))])[position]
        assert mixed.labels_hw.dtype == alone.labels_hw.dtype and mixed.labels_hw.shape == alone.labels_hw.shape
        assert mixed.labels_hw.tobytes() == alone.labels_hw.tobytes(), f"labels differ at batch position {position}"
        if exact:
            np.testing.assert_array_equal(mixed.confidence_hw, alone.confidence_hw)
        else:
            np.testing.assert_allclose(mixed.confidence_hw, alone.confidence_hw, rtol=1e-5, atol=0)


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_precomputed_saliency(tmp_path, fmt):
    rgb, lab = make_image(3)
    sal = (lab > 0).astype(np.float32)
    if fmt == "npy":
        np.save(tmp_path / "img_0003.npy", sal)
    else:
        Image.fromarray((sal * 255).astype(np.uint8)).save(tmp_path / "img_0003.png")
    engine = toy_engine(saliency=f"precomputed:{tmp_path}")
    (pred,) = engine.predict([rgb], names=["sub0/img_0003.jpg"])
    assert ((pred.labels_hw > 0) == (lab > 0)).mean() > 0.99
    with pytest.raises(Exception, match="no precomputed saliency map for 'other.jpg'"):
        engine.predict([rgb], names=["other.jpg"])


def test_precomputed_saliency_rejects_out_of_range(tmp_path):
    np.save(tmp_path / "a.npy", np.full((4, 4), 3.0, np.float32))
    engine = toy_engine(saliency=f"precomputed:{tmp_path}")
    with pytest.raises(ValueError, match=r"expected values in \[0, 1\]"):
        engine.predict([make_image(0)[0]], names=["a.png"])


def test_large_image_is_done_in_several_bands_equal_to_one():
    """The full protocol decides a large image in row bands: forced to 10 bands of 97
    rows (the last one shorter), it gives exactly the labels and confidence of one band
    over the whole image, and both recover the known masks."""
    from annotator.core import guidance

    rgb, lab = make_image(5, size_hw=(900, 1400))
    engine = toy_engine()
    real_band_rows = guidance.band_rows
    seen: list[list[tuple[int, int]]] = []

    def bands_of(rows):
        def band_rows(num_classes, size_hw, max_elements=None):
            bands = real_band_rows(num_classes, size_hw, max_elements=num_classes * size_hw[1] * rows)
            seen.append(bands)
            return bands
        return band_rows

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guidance, "band_rows", bands_of(900))
        whole = engine.predict([rgb])[0]
        mp.setattr(guidance, "band_rows", bands_of(97))
        banded = engine.predict([rgb])[0]
    assert seen[0] == [(0, 900)]
    assert len(seen[1]) == 10 and seen[1][0] == (0, 97) and seen[1][-1] == (873, 900)
    assert all(a[1] == b[0] for a, b in pairwise(seen[1]))  # contiguous, no row twice
    assert banded.labels_hw.shape == (900, 1400)
    np.testing.assert_array_equal(banded.labels_hw, whole.labels_hw)
    np.testing.assert_array_equal(banded.confidence_hw, whole.confidence_hw)
    assert (banded.labels_hw == lab).mean() > 0.97
    # every band holds some of the image's classes: the bands are not all background
    assert sum(len(np.unique(banded.labels_hw[y0:y1])) > 1 for y0, y1 in seen[1]) >= 5


def test_default_bands_bound_the_class_tensor():
    """Without forcing: a (K, band, W) float32 tensor stays under 2**24 elements, so a
    large photograph is decided in several bands."""
    from annotator.core import guidance

    bands = guidance.band_rows(81, (3000, 4000))
    assert len(bands) > 1 and bands[0][0] == 0 and bands[-1][1] == 3000
    assert all(81 * (y1 - y0) * 4000 <= 1 << 24 for y0, y1 in bands)
    assert all(a[1] == b[0] for a, b in pairwise(bands))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"protocol": "paper"}, "--protocol"),
        ({"templates": ("a photo",)}, "exactly one '{}'"),
        ({"patch_sizes_px": (300,)}, "--patch-sizes"),
        ({"scale_weights": (1.0,)}, "--scale-weights: expected 3 weights"),
        ({"batch_size": 0}, "--batch-size"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        EngineConfig(**kw)


def test_device_and_precision_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            Engine(EngineConfig(model="toy", saliency="toy", device="cuda"), Vocabulary.from_names(VOCAB))
    with pytest.raises(ConfigError, match="expected a CUDA device for fp16, got the CPU"):
        Engine(EngineConfig(model="toy", saliency="toy", device="cpu", precision="fp16"), Vocabulary.from_names(VOCAB))


@pytest.mark.parametrize("supported", [True, False])
def test_cpu_precision_auto_follows_the_cpu(monkeypatch, supported):
    """auto = bf16 on a CPU with native bf16 (AVX-512 BF16/AMX), fp32 elsewhere; fp32 under
    the official protocol and for the test models; bf16 asked for is honoured."""
    import annotator.device as E

    monkeypatch.setattr(E, "cpu_bf16_supported", lambda: supported)
    cpu = torch.device("cpu")
    assert E.resolve_precision("auto", cpu, "full") == (torch.bfloat16 if supported else None)
    assert E.resolve_precision("auto", cpu, "official") is None
    assert E.resolve_precision("auto", cpu, "full", test_model=True) is None
    assert E.resolve_precision("bf16", cpu, "official") == torch.bfloat16
    assert E.resolve_precision("fp32", cpu, "full") is None
    assert E.resolve_precision("auto", torch.device("cuda"), "full") == torch.bfloat16  # unchanged on CUDA
    engine = Engine(EngineConfig(model="toy", saliency="toy", device="cpu"), Vocabulary.from_names(VOCAB))
    assert engine.precision == "fp32"


@pytest.mark.parametrize(
    "torch_says, cpuinfo, expected",
    [
        (True, "flags\t: fpu avx2", True),  # torch's own probe decides first
        (False, "flags\t: fpu avx512_bf16 avx2", True),  # then /proc/cpuinfo's flags
        (False, "flags\t: fpu amx_bf16", True),
        (False, "flags\t: fpu avx2 avx512f", False),
        ("raises", "flags\t: fpu avx512_bf16", True),  # a failing probe means "unknown"
        ("raises", "flags\t: fpu", False),
        (False, None, False),  # no /proc/cpuinfo: not native
    ],
)
def test_cpu_bf16_detection(monkeypatch, torch_says, cpuinfo, expected):
    """torch's probes first (True wins), then the CPU flags avx512_bf16 / amx_bf16."""
    import io

    import annotator.device as D

    def probe():
        if torch_says == "raises":
            raise RuntimeError("probe failed")
        return torch_says

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, probe, raising=False)

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/cpuinfo", path
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(D, "open", fake_open, raising=False)
    assert D.cpu_bf16_supported() is expected


def test_bf16_on_the_cpu_runs_and_mostly_agrees_with_fp32():
    """Both encoders under CPU bf16 autocast: tiny random CLIP + FOUND structure."""
    data = [make_image(seed)[0] for seed in range(3)]
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = EngineConfig(model="tiny-random", saliency="found-tiny-random", pretrained="random", device="cpu",
                           precision=precision)
        engine = Engine(cfg, Vocabulary.from_names(["cat", "dog", "car"]), weights=ResolvedWeights())
        assert engine.precision == precision
        out[precision] = engine.predict(data)
    agree = np.mean([(a.labels_hw == b.labels_hw).mean() for a, b in zip(out["fp32"], out["bf16"], strict=True)])
    assert agree > 0.5, agree


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_on_tiny_model():
    data = [make_image(seed)[0] for seed in range(4)]
    out = {}
    for dev in ("cpu", "cuda"):
        cfg = EngineConfig(model="tiny-random", saliency="found-tiny-random", pretrained="random", device=dev,
                           precision="fp32")
        out[dev] = Engine(cfg, Vocabulary.from_names(["cat", "dog"]), weights=ResolvedWeights()).predict(data)
    agree = np.mean([(a.labels_hw == b.labels_hw).mean() for a, b in zip(out["cpu"], out["cuda"], strict=True)])
    assert agree > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_exact_resizes_on_cuda_equal_the_cpu():
    """The official protocol's integer resizes give the same values on the GPU (the CPU's
    are tested against cv2 and PIL in tests/core/test_exact_resize.py)."""
    from annotator.core.exact_resize import opencv_linear_resize, pil_bicubic_resize_exact

    g = torch.Generator().manual_seed(0)
    for h, w in ((375, 500), (480, 640), (512, 512)):
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        assert torch.equal(opencv_linear_resize(img.cuda(), (256, 256)).cpu(), opencv_linear_resize(img, (256, 256)))
    for p in (64, 128, 256):
        batch = torch.randint(0, 256, (8, 3, p, p), dtype=torch.uint8, generator=g)
        assert torch.equal(pil_bicubic_resize_exact(batch.cuda(), 224).cpu(), pil_bicubic_resize_exact(batch, 224))


def test_device_class_stats_give_the_same_records():
    """On a GPU the engine computes per-class pixel counts and confidence sums on the
    device; forced on here (CPU torch), the records must equal those computed by numpy."""
    from annotator.records import ok_record

    engine = toy_engine(batch_size=3)
    data = [make_image(seed, size_hw=(90 + 10 * seed, 120))[0] for seed in range(4)]
    plain = engine.predict(data)
    assert all(p.class_stats is None for p in plain)  # CPU default: numpy in the encoders
    engine.device_class_stats = True
    stats = engine.predict(data)
    names = ["background", *VOCAB]
    for i, (p, q) in enumerate(zip(plain, stats, strict=True)):
        pixels, sums = q.class_stats
        assert pixels.dtype == np.int64 and sums.dtype == np.float64 and pixels.shape == (len(names),)
        np.testing.assert_array_equal(pixels, np.bincount(p.labels_hw.ravel(), minlength=len(names)))
        ref = type("Ref", (), {"image_id": i + 1, "file_name": f"{i}.png", "uri": f"/{i}.png"})()
        assert ok_record(ref, q.labels_hw, q.confidence_hw, names, q.class_stats) == ok_record(
            ref, p.labels_hw, p.confidence_hw, names)
