"""Overlay previews: grey fallback for unreadable images, sizes, Hugging Face rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from annotator.review.overlay import render_overlay
from annotator.storage import parts
from tests.export.conftest import build_synthetic_output


@pytest.fixture
def synthetic_output(tmp_path):
    """(output_dir, expected_labels, class_names): see tests/export/conftest.py."""
    return build_synthetic_output(tmp_path)


def test_overlay_falls_back_to_grey_when_image_is_unreadable(synthetic_output):
    output, expected, class_names = synthetic_output
    recs = {r.file_name: r for r in parts.iter_records(parts.list_parts(output))}
    img, note = render_overlay(recs["missing.jpg"], class_names)
    assert note and "not readable" in note
    h, w = expected["missing.jpg"].shape
    arr = np.asarray(img)
    scale = 256 / max(h, w)
    assert arr.shape[1] >= round(w * scale)
    # a background pixel of the image part is plain grey
    bg_y, bg_x = 0, int(27 * scale)
    assert tuple(arr[bg_y, bg_x]) == (128, 128, 128)
    img2, note2 = render_overlay(recs["a/cat.jpg"], class_names, max_side=32)
    assert note2 is None and img2.width >= 32  # legend strip is at least as wide as the image
    img3, _ = render_overlay(recs["a/cat.jpg"], class_names)
    assert max(img3.size) <= 512 + 200


def test_overlay_rereads_a_local_hugging_face_dataset_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    from annotator import records
    from annotator.inputs.hf import list_hf_dataset

    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:, :, 1] = 200
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(rgb), Image.fromarray(rgb)]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    source = list_hf_dataset(str(tmp_path / "ds"))
    ref = source.refs()[1]
    labels = np.zeros((10, 12), np.int32)
    labels[2:5, 2:5] = 1
    rec = records.ok_record(ref, labels, np.full(labels.shape, 0.5, np.float32), ["background", "thing"])
    img, note = render_overlay(rec, ["background", "thing"])
    assert note is None
    assert np.asarray(img)[0, 0, 1] == 200  # the image's green, not the grey fallback


def test_legend_text_is_never_clipped(tmp_path):
    """A long class name and a long note are shortened or wrapped to the strip: the
    strip's right margin stays white (text running off the picture would darken it)."""
    from annotator import records
    from annotator.inputs.listing import ImageRef

    names = ["background", "an extraordinarily long class name " * 4, "x" * 120]
    labels = np.zeros((40, 40), np.int32)
    labels[:20] = 1
    labels[20:] = 2
    ref = ImageRef(1, "gone.png", str(tmp_path / ("deep/" * 30) / "gone.png"))  # long "not readable" note
    rec = records.ok_record(ref, labels, np.full(labels.shape, 0.5, np.float32), names)
    img, note = render_overlay(rec, names)
    assert note and len(note) > 100
    arr = np.asarray(img)
    strip = arr[256:]  # the image part is 256 px high (enlarged from 40)
    assert strip.shape[0] >= 4 * 16  # two legend lines and wrapped note lines
    assert (strip[:, -3:] == 255).all()
    assert (strip[:, :40] < 200).any()  # and the strip does hold text
