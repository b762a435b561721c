"""``precomputed:`` saliency maps mean one thing (issue 22.7): a map with the image's
aspect ratio (within one pixel of rounding) at any resolution is resized by the engine;
any other shape -- a transposed map above all -- is an error naming both shapes, which
the shard processor turns into that image's error row, never a stretched map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from annotator.config import EngineConfig
from annotator.engine import Engine
from annotator.inputs.listing import list_images
from annotator.inputs.vocab import Vocabulary
from annotator.models.precomputed import PrecomputedSaliency, PrecomputedSaliencyError, same_aspect
from annotator.shards.processor import ShardProcessor
from annotator.shards.task import RunOptions, make_shards
from tests.synthetic import VOCAB, make_image

SIZE_HW = (120, 160)


def _engine(maps: Path) -> Engine:
    return Engine(EngineConfig(model="toy", saliency=f"precomputed:{maps}", pretrained="toy", device="cpu"),
                  Vocabulary.from_names(VOCAB))


def _map_of(lab: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The foreground of ``lab`` resized (nearest) to ``size_hw``, float32 in [0, 1]."""
    fg = Image.fromarray(((lab > 0) * 255).astype(np.uint8))
    return np.asarray(fg.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST), dtype=np.float32) / 255.0


@pytest.mark.parametrize(
    ("map_hw", "image_hw", "same"),
    [
        ((120, 160), (120, 160), True),  # the image's own shape
        ((60, 80), (120, 160), True),  # half resolution
        ((240, 320), (120, 160), True),  # double
        ((34, 45), (101, 134), True),  # a third, rounded (33.67 x 44.67)
        ((448, 597), (3000, 4000), True),  # short side 448, long side rounded
        ((160, 120), (120, 160), False),  # transposed
        ((120, 120), (120, 160), False),  # cropped square
        ((60, 82), (120, 160), False),  # two pixels off
        ((0, 10), (120, 160), False),
    ],
)
def test_same_aspect_within_one_pixel(map_hw, image_hw, same):
    assert same_aspect(map_hw, image_hw) is same


@pytest.mark.parametrize("fmt", ["npy", "png"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 3])
def test_a_map_of_the_same_aspect_at_any_resolution_is_resized(tmp_path, fmt, scale):
    rgb, lab = make_image(7, size_hw=SIZE_HW)
    map_hw = (round(SIZE_HW[0] * scale), round(SIZE_HW[1] * scale))
    sal = _map_of(lab, map_hw)
    if fmt == "npy":
        np.save(tmp_path / "a.npy", sal)
    else:
        Image.fromarray((sal * 255).astype(np.uint8)).save(tmp_path / "a.png")
    (pred,) = _engine(tmp_path).predict([rgb], names=["a.jpg"])
    assert pred.labels_hw.shape == SIZE_HW
    assert ((pred.labels_hw > 0) == (lab > 0)).mean() > 0.95


@pytest.mark.parametrize("fmt", ["npy", "png"])
@pytest.mark.parametrize(("map_hw", "transposed"), [((160, 120), True), ((80, 60), True), ((120, 120), False),
                                                    ((120, 200), False)])
def test_a_map_of_another_aspect_is_refused_naming_both_shapes(tmp_path, fmt, map_hw, transposed):
    rgb, _ = make_image(7, size_hw=SIZE_HW)
    sal = np.full(map_hw, 0.5, np.float32)
    if fmt == "npy":
        np.save(tmp_path / "a.npy", sal)
    else:
        Image.fromarray((sal * 255).astype(np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(PrecomputedSaliencyError) as info:
        _engine(tmp_path).predict([rgb], names=["a.jpg"])
    msg = str(info.value)
    assert f"a.{fmt}: the saliency map is {map_hw[0]}x{map_hw[1]} (HxW) but the image is 120x160" in msg
    assert "another aspect ratio" in msg
    assert ("transposed" in msg) is transposed


def test_the_image_shape_comes_from_the_tensor_the_engine_holds(tmp_path):
    """(3, H, W) tensors, as the engine passes them: H and W are the last two axes."""
    np.save(tmp_path / "a.npy", np.zeros((30, 40), np.float32))
    sal = PrecomputedSaliency(str(tmp_path), torch.device("cpu"))
    (out,) = sal([torch.zeros((3, 120, 160), dtype=torch.uint8)], ["a.jpg"])
    assert tuple(out.shape) == (30, 40)
    with pytest.raises(PrecomputedSaliencyError, match="30x40 .* the image is 160x120"):
        sal([torch.zeros((3, 160, 120), dtype=torch.uint8)], ["a.jpg"])


def test_a_transposed_map_is_an_error_row_and_the_others_are_annotated(tmp_path):
    """Through the shard processor: the image with a transposed map gets an error row
    naming both shapes; its neighbours in the same batch are annotated."""
    images, maps = tmp_path / "images", tmp_path / "maps"
    images.mkdir()
    maps.mkdir()
    for i in range(3):
        rgb, lab = make_image(i, size_hw=SIZE_HW)
        Image.fromarray(rgb).save(images / f"im{i}.png")
        sal = _map_of(lab, (60, 80))
        np.save(maps / f"im{i}.npy", sal.T if i == 1 else sal)
    engine = Engine(EngineConfig(model="toy", saliency=f"precomputed:{maps}", pretrained="toy", device="cpu",
                                 batch_size=3), Vocabulary.from_names(VOCAB))
    (task,) = make_shards(list_images(str(images)), 3)
    proc = ShardProcessor(engine, RunOptions(output=str(tmp_path / "out"),
                                             metadata={"vocabulary": engine.vocabulary.names, "config_hash": "t"}))
    try:
        result = proc.process(task)
    finally:
        proc.close()
    rows = {r["file_name"]: r for r in pq.read_table(result.path).to_pylist()}
    assert [rows[f"im{i}.png"]["status"] for i in range(3)] == ["ok", "error", "ok"]
    error = rows["im1.png"]["error"]
    assert error.startswith("inference-failed: PrecomputedSaliencyError: ")
    assert "the saliency map is 80x60 (HxW) but the image is 120x160" in error and "transposed" in error


@pytest.mark.parametrize("name", ["a.npy", "a.png"])
@pytest.mark.parametrize("content", [b"TOPSECRET-map-marker and more text",
                                     b"\x93NUMPY\x01\x00\x30\x00{'descr': 'TOPSECRET-map-marker', }\n",
                                     b"\x89PNG\r\n\x1a\nTOPSECRET-map-marker"])
def test_a_map_that_cannot_be_read_is_described_not_quoted(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    sal = PrecomputedSaliency(str(tmp_path), torch.device("cpu"))
    with pytest.raises(PrecomputedSaliencyError) as info:
        sal.load("a.jpg")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / name}: expected ") and f"got {len(content)} bytes" in msg, msg
    for k in range(len("TOPSECRET-map-marker") - 5):
        assert "TOPSECRET-map-marker"[k:k + 6] not in msg, msg
