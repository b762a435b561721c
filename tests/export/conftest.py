"""Fixtures for the exporter and report tests: a run OUTPUT folder built without a model.

Synthetic label maps (rectangles and discs, several classes) -> ``records.ok_record`` ->
``parts.write_part`` into ``OUTPUT/parts/`` (two parts, with run metadata), plus one
error row. The images themselves are written too (the report re-reads them), except
``missing.jpg``, whose uri points nowhere (the report must draw its mask on grey).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator import records
from annotator.inputs.listing import ImageRef
from annotator.storage import parts

CLASS_NAMES = ["background", "cat", "dog", "<script>alert(1)</script>", "traffic light"]
XSS_FILE_NAME = 'sub/"><img src=x onerror=alert(1)>.png'
METADATA = {
    "vocabulary": CLASS_NAMES,
    "model": "toy",
    "pretrained": "none",
    "saliency": "toy",
    "protocol": "clip-diy",
    "version": "0.1.0",
    "config_hash": "0123456789abcdef",
    "source": "s3://AKIAUSER:topsecret@bucket/images/",
}


def _disc(size_hw, cy, cx, r):
    yy, xx = np.mgrid[0 : size_hw[0], 0 : size_hw[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _image_specs():
    """(file_name, labels (H, W) int32, {class: confidence}) per ok image."""
    a = np.zeros((48, 64), np.int32)
    a[5:20, 10:40] = 1  # cat rectangle
    a[_disc(a.shape, 32, 45, 10)] = 2  # dog disc
    b = np.zeros((40, 30), np.int32)
    b[0:15, 0:30] = 3  # <script> class, touches the top and side edges
    b[25:40, 5:12] = 4
    c = np.zeros((32, 32), np.int32)  # background only
    d = np.zeros((20, 50), np.int32)
    d[:, :25] = 1
    d[10:, 30:] = 4
    e = np.zeros((24, 24), np.int32)
    e[_disc(e.shape, 12, 12, 6)] = 2
    e[0, 0] = 1  # a one-pixel mask
    return [
        ("a/cat.jpg", a, {0: 0.7, 1: 0.9, 2: 0.8}),
        (XSS_FILE_NAME, b, {0: 0.6, 3: 0.55, 4: 0.5}),
        ("c.png", c, {0: 0.95}),
        ("missing.jpg", d, {0: 0.4, 1: 0.3, 4: 0.35}),
        ("e.png", e, {0: 0.8, 1: 0.2, 2: 0.65}),
    ]


def _confidence(labels, by_class):
    conf = np.zeros(labels.shape, np.float32)
    for c, v in by_class.items():
        conf[labels == c] = v
    return conf


def _palette_colours(labels):
    colours = np.array([(90, 90, 90), (200, 120, 40), (60, 160, 60), (40, 60, 200), (220, 200, 30)], np.uint8)
    return colours[labels]


@pytest.fixture
def synthetic_output(tmp_path: Path):
    """Returns (output_dir: str, expected_labels: {file_name: int32 (H, W)}, class_names)."""
    return build_synthetic_output(tmp_path)


def build_synthetic_output(tmp_path: Path) -> tuple[str, dict[str, np.ndarray], list[str]]:
    """The synthetic run folder under ``tmp_path`` (see the module docstring)."""
    images_dir = tmp_path / "images"
    output = tmp_path / "OUTPUT"
    expected: dict[str, np.ndarray] = {}
    recs = []
    specs = _image_specs()
    for image_id, (file_name, labels, by_class) in enumerate(specs, start=1):
        path = images_dir / file_name
        if file_name != "missing.jpg":
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_palette_colours(labels)).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
        ref = ImageRef(image_id=image_id, file_name=file_name, uri=str(path))
        recs.append(records.ok_record(ref, labels, _confidence(labels, by_class), CLASS_NAMES))
        expected[file_name] = labels
    broken = ImageRef(image_id=len(specs) + 1, file_name="broken.jpg", uri=str(images_dir / "broken.jpg"))
    recs.append(records.error_record(broken, "corrupt", 'JPEG data: <b>bad</b> "huffman" table'))
    parts.write_part(recs[:2], str(output / "parts" / "part-00000.parquet"), METADATA)
    parts.write_part(recs[2:], str(output / "parts" / "part-00001.parquet"), METADATA)
    return str(output), expected, list(CLASS_NAMES)


def build_toy_run_output(tmp_path: Path) -> tuple[str, dict[str, np.ndarray], list[str]]:
    """A REAL run folder: the toy model over synthetic shapes, shard processor + reducer.

    Runs in-process (no Ray: the pipeline tests cover Ray); expected labels are the
    engine's own predictions, which the exports must carry into each tool unchanged.
    """
    from annotator.config import EngineConfig
    from annotator.engine import Engine
    from annotator.inputs.listing import list_images
    from annotator.inputs.vocab import load_vocabulary
    from annotator.outputs.merge import reduce_output
    from annotator.shards.processor import ShardProcessor
    from annotator.shards.task import RunOptions, make_shards
    from tests.synthetic import write_dataset, write_vocab

    images, _, _ = write_dataset(tmp_path / "data", 6, size_hw=(120, 160))
    vocab = load_vocabulary(write_vocab(tmp_path / "vocab.txt"))
    engine = Engine(EngineConfig(model="toy", saliency="toy", pretrained="toy", device="cpu"), vocab)
    output = str(tmp_path / "OUTPUT")
    refs = list_images(str(images))
    meta = {"vocabulary": vocab.names, "model": "toy", "pretrained": "toy", "saliency": "toy",
            "protocol": "full", "version": "test", "config_hash": "toyrun", "num_images": len(refs)}
    proc = ShardProcessor(engine, RunOptions(output=output, metadata=meta))
    for task in make_shards(refs, 4):
        proc.process(task)
    proc.close()
    reduce_output(output, report=False)
    preds = engine.predict([np.asarray(Image.open(r.uri).convert("RGB")) for r in refs])
    expected = {r.file_name: p.labels_hw for r, p in zip(refs, preds, strict=True)}
    return output, expected, vocab.names
