"""Synthetic benchmark inputs: VOC-sized baseline JPEGs, photo-like, deterministic."""

import numpy as np
from PIL import Image

from annotator.inputs.loader import jpeg_fast_path_size_hw
from benchmarks.data import make_synthetic_jpegs


def test_synthetic_jpegs_are_voc_sized_baseline_jpegs(tmp_path):
    paths = make_synthetic_jpegs(tmp_path, 10, threads=2)
    sizes = [jpeg_fast_path_size_hw(p.read_bytes()) for p in paths]
    assert None not in sizes  # all eligible for the GPU decoder
    assert sizes.count((375, 500)) >= 6 and (500, 375) in sizes
    a = np.asarray(Image.open(paths[0]))
    assert a.std() > 10  # not a flat image
    assert paths == sorted(paths) and len({p.read_bytes() for p in paths}) == 10
