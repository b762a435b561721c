"""The threaded loader: order, every input exactly once, errors as entries, the batched
JPEG path (torchvision's CPU decoder stands in for nvJPEG here) and its fallbacks."""

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from annotator.inputs.decode import ImageDecodeError, decode_image
from annotator.inputs.listing import list_images, read_image_bytes
from annotator.inputs.loader import ImageLoader, image_size_hw, jpeg_fast_path_size_hw
from tests.badinputs import make_bad_inputs


def _jpeg(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _smooth(seed, h=48, w=64):
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR))


def _collect(batches):
    out = []
    for b in batches:
        out.extend(b)
    return out


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_bad_inputs_each_once_in_order_with_reasons(tmp_path, gpu_decode):
    expected = make_bad_inputs(tmp_path)
    # a few plain JPEGs, which take the batched path when it is on
    for i in range(4):
        (tmp_path / f"plain_{i}.jpg").write_bytes(_jpeg(_smooth(i), quality=90))
        expected[f"plain_{i}.jpg"] = ("ok", (48, 64))
    refs = list_images(str(tmp_path))
    assert len(refs) == len(expected)
    with ImageLoader(refs, read_image_bytes, batch_size=5, num_threads=3, prefetch=1,
                     gpu_decode=gpu_decode) as loader:
        batches = list(loader)
    assert [len(b) for b in batches[:-1]] == [5] * (len(batches) - 1)
    entries = _collect(batches)
    assert [i for i, _ in entries] == list(range(len(refs)))
    for i, result in entries:
        kind, what = expected[refs[i].file_name]
        if kind == "error":
            assert isinstance(result, ImageDecodeError), refs[i].file_name
            assert result.reason == what, (refs[i].file_name, str(result))
        else:
            assert not isinstance(result, ImageDecodeError), (refs[i].file_name, result)
            assert image_size_hw(result) == what, refs[i].file_name
    s = loader.stats
    assert s.images == len(refs)
    assert s.errors == sum(k == "error" for k, _ in expected.values())
    assert s.bytes_read > 0 and s.read_s > 0 and s.decode_s > 0
    if gpu_decode:
        assert s.batch_decoded == 4  # the plain JPEGs only: cmyk, exif-rotated, truncated go to PIL
        plain = [r for i, r in entries if refs[i].file_name.startswith("plain_")]
        assert all(isinstance(r, torch.Tensor) and r.shape == (3, 48, 64) for r in plain)
    else:
        assert s.batch_decoded == 0
        assert all(isinstance(r, np.ndarray) for _, r in entries if not isinstance(r, ImageDecodeError))


def test_batched_path_matches_pil_and_keeps_exif_orientation(tmp_path):
    arr = _smooth(7, 60, 80)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "plain.jpg": _jpeg(arr, quality=95),
        "gray.jpg": _jpeg(arr[:, :, 0], quality=95),
        "rotated.jpg": _jpeg(arr, quality=95, exif=exif),
        "progressive.jpg": _jpeg(arr, quality=95, progressive=True),
    }
    items = list(files)
    loader = ImageLoader(items, files.__getitem__, batch_size=8, num_threads=2, gpu_decode=True)
    entries = _collect(loader)
    stats = loader.stats
    assert stats.batch_decoded == 2 and stats.cpu_decoded == 2 and stats.images == 4
    for i, result in entries:
        ref = decode_image(files[items[i]])
        got = result.permute(1, 2, 0).numpy() if isinstance(result, torch.Tensor) else result
        assert got.shape == ref.shape, items[i]  # the rotated one is 80 high, 60 wide
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2.0, items[i]


def test_fast_path_eligibility():
    arr = _smooth(1)
    ok = _jpeg(arr)
    assert jpeg_fast_path_size_hw(ok) == (48, 64)
    assert jpeg_fast_path_size_hw(ok + b"\x00\x00") == (48, 64)
    assert jpeg_fast_path_size_hw(ok[:-10]) is None  # may be truncated: PIL decides
    assert jpeg_fast_path_size_hw(ok, max_pixels=100) is None
    assert jpeg_fast_path_size_hw(_jpeg(arr, progressive=True)) is None
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(cmyk, "JPEG")
    assert jpeg_fast_path_size_hw(cmyk.getvalue()) is None
    png = io.BytesIO()
    Image.fromarray(arr).save(png, "PNG")
    assert jpeg_fast_path_size_hw(png.getvalue()) is None
    assert jpeg_fast_path_size_hw(b"") is None


def test_batch_decoder_failure_falls_back_to_pil(monkeypatch):
    files = [_jpeg(_smooth(i)) for i in range(3)]
    monkeypatch.setattr(ImageLoader, "_decode_batch", lambda self, enc: [None] * len(enc))
    with ImageLoader(list(range(3)), files.__getitem__, batch_size=2, gpu_decode=True) as loader:
        entries = _collect(loader)
    assert [i for i, _ in entries] == [0, 1, 2]
    assert all(isinstance(r, np.ndarray) and r.shape == (48, 64, 3) for _, r in entries)
    assert loader.stats.fallbacks == 3 and loader.stats.batch_decoded == 0


def test_corrupt_scan_data_is_decoded_or_an_error_never_an_exception():
    data = bytearray(_jpeg(_smooth(3, 64, 64), quality=90))
    data[400:600] = b"\xff\x00" * 100  # scan data damaged, header and EOI intact
    entries = _collect(ImageLoader([bytes(data)], lambda d: d, gpu_decode=True))
    (_, result), = entries
    assert isinstance(result, (np.ndarray, torch.Tensor, ImageDecodeError))


def test_read_errors_returned_or_raised_become_entries_other_exceptions_propagate():
    def read(item):
        if item == "raise":
            raise ImageDecodeError("missing", "nope")
        if item == "return":
            return ImageDecodeError("unreadable", "denied")
        if item == "bug":
            raise KeyError("a bug")
        return _jpeg(_smooth(0))

    entries = _collect(ImageLoader(["ok", "raise", "return"], read, batch_size=2))
    assert [type(r).__name__ for _, r in entries] == ["ndarray", "ImageDecodeError", "ImageDecodeError"]
    assert [r.reason for _, r in entries[1:]] == ["missing", "unreadable"]
    with pytest.raises(KeyError, match="a bug"):
        _collect(ImageLoader(["ok", "bug"], read, batch_size=1))


def test_prefetch_bounds_read_ahead_and_close_stops_early():
    data = _jpeg(_smooth(0))
    calls = []
    lock = threading.Lock()

    def read(i):
        with lock:
            calls.append(i)
        return data

    with ImageLoader(range(100), read, batch_size=4, num_threads=2, prefetch=0) as loader:
        it = iter(loader)
        first = next(it)
        time.sleep(0.2)
        assert [i for i, _ in first] == [0, 1, 2, 3]
        assert len(calls) == 4  # nothing read ahead with prefetch=0
    calls.clear()
    with ImageLoader(range(100), read, batch_size=4, num_threads=2, prefetch=2) as loader:
        it = iter(loader)
        next(it)
        deadline = time.time() + 5
        while len(calls) < 12 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(calls) == 12  # the batch handed over + 2 ahead, no more
    # closed by the with block: the rest is never read
    time.sleep(0.1)
    assert len(calls) == 12
    with pytest.raises(RuntimeError, match="once"):
        iter(loader)


def test_generator_items_and_argument_checks():
    data = _jpeg(_smooth(0))
    entries = _collect(ImageLoader((i for i in range(5)), lambda i: data, batch_size=2, prefetch=3))
    assert [i for i, _ in entries] == list(range(5))
    for bad in (dict(batch_size=0), dict(prefetch=-1), dict(num_threads=0), dict(max_pixels=0)):
        with pytest.raises(ValueError):
            ImageLoader([], lambda i: b"", **bad)
    assert _collect(ImageLoader([], lambda i: b"")) == []


def test_max_pixels_reaches_the_decoder():
    data = _jpeg(_smooth(0))  # 48 x 64 = 3072 pixels
    for gpu in (False, True):
        (_, r), = _collect(ImageLoader([data], lambda d: d, max_pixels=3000, gpu_decode=gpu))
        assert isinstance(r, ImageDecodeError) and r.reason == "too-many-pixels"


def test_shared_executor_is_used_and_left_running():
    from concurrent.futures import ThreadPoolExecutor

    data = _jpeg(_smooth(0))
    names = []
    with ThreadPoolExecutor(2, thread_name_prefix="shared") as pool:
        def read(i):
            names.append(threading.current_thread().name)
            return data

        for _ in range(2):  # two loaders (two shards) on one pool
            with ImageLoader(range(5), read, batch_size=2, executor=pool) as loader:
                assert len(_collect(loader)) == 5
        assert pool.submit(lambda: 1).result() == 1  # still usable
    assert names and all(n.startswith("shared") for n in names)


# ----------------------------------------------------------------------------- --protocol official (issue 21.9)


def test_official_protocol_never_takes_the_gpu_decoder(monkeypatch):
    """On CUDA with torchvision, the batched (nvJPEG) decoder is the default, except under
    --protocol official, which decodes like the release (PIL on the CPU); forcing it
    there is refused. (The choice is checked without a GPU.)"""
    from annotator.inputs import loader
    from annotator.inputs.loader import use_gpu_decoder

    monkeypatch.setattr(loader, "batched_jpeg_available", lambda: True)
    assert use_gpu_decoder(None, cuda=True, protocol="full") is True
    assert use_gpu_decoder(None, cuda=True, protocol="official") is False
    assert use_gpu_decoder(None, cuda=False, protocol="full") is False
    assert use_gpu_decoder(False, cuda=True, protocol="full") is False
    with pytest.raises(ValueError, match="release's CPU decoder under --protocol official"):
        use_gpu_decoder(True, cuda=True, protocol="official")
    assert ImageLoader([], lambda item: b"", gpu_decode=True).gpu_decode  # torchvision's CPU decoder, for tests
    with pytest.raises(ValueError, match="--protocol official"):
        ImageLoader([], lambda item: b"", gpu_decode=True, protocol="official")


def test_the_shard_processor_hands_the_protocol_to_the_loader(monkeypatch, tmp_path):
    """What ShardProcessor builds its loader with: the engine's protocol."""
    from annotator.config import EngineConfig
    from annotator.engine import Engine
    from annotator.inputs.vocab import Vocabulary
    from annotator.shards import processor as processor_module
    from annotator.shards.processor import ShardProcessor
    from annotator.shards.task import RunOptions, make_shards
    from tests.synthetic import VOCAB, write_dataset

    images, _, _ = write_dataset(tmp_path, 2, size_hw=(32, 48), nested=False)
    seen: list[str] = []

    class SpyLoader(ImageLoader):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("protocol", "full"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(processor_module, "ImageLoader", SpyLoader)
    for protocol in ("official", "full"):
        engine = Engine(EngineConfig(model="toy", saliency="toy", device="cpu", protocol=protocol),
                        Vocabulary.from_names(VOCAB))
        proc = ShardProcessor(engine, RunOptions(output=str(tmp_path / protocol), metadata={}))
        try:
            list(proc._decoded(make_shards(list_images(str(images)), 2)[0], {"read": 0.0, "decode": 0.0}))
        finally:
            proc.close()
    assert seen == ["official", "full"]
