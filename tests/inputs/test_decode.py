from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from annotator.inputs.decode import (
    DEFAULT_MAX_PIXELS,
    ERROR_REASONS,
    ImageDecodeError,
    decode_image,
    describe_content,
    probe_size_hw,
    sniff_format,
)
from annotator.inputs.listing import read_image_bytes
from tests.badinputs import (
    EXIF_STORED_WH,
    GRAY16_EXPECTED,
    make_bad_inputs,
    png_with_header_size,
)


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_inputs(root)


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return sorted(make_bad_inputs(Path(tmp)))


def _read_and_decode(path: Path, **kwargs) -> np.ndarray:
    return decode_image(read_image_bytes(str(path), retries=0), name=path.name, **kwargs)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("name", _case_names())
def test_bad_inputs_table(bad_dir, name):
    root, expected = bad_dir
    kind, value = expected[name]
    if kind == "ok":
        rgb = _read_and_decode(root / name)
        assert rgb.shape == (*value, 3)
        assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    else:
        with pytest.raises(ImageDecodeError) as info:
            _read_and_decode(root / name)
        assert info.value.reason == value
        assert value in ERROR_REASONS
        assert str(info.value).startswith(f"{value}: ")


def test_global_pil_state_untouched(bad_dir):
    root, expected = bad_dir
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for name in expected:
        try:
            _read_and_decode(root / name)
        except ImageDecodeError:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_own_pixel_limit_refuses_before_decoding():
    # A real, small image and a lower limit: the header check alone must refuse it.
    data = _encode(Image.new("RGB", (30, 20)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=599)
    assert info.value.reason == "too-many-pixels" and "30x20" in info.value.detail
    assert decode_image(data, max_pixels=600).shape == (20, 30, 3)
    # The crafted bomb: header says 1000x1000, the IDAT holds 64 bytes; decoding it would
    # fail as truncated, so "too-many-pixels" proves the header check ran first.
    bomb = png_with_header_size(1000, 1000)
    assert len(bomb) < 200
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bomb, max_pixels=999_999)
    assert info.value.reason == "too-many-pixels"
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bomb, max_pixels=1_000_000)
    assert info.value.reason == "truncated"
    assert DEFAULT_MAX_PIXELS == 178_956_970


def test_max_pixels_must_be_positive():
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(b"x", max_pixels=0)


def test_gray16_scaled_not_clipped(bad_dir):
    root, _ = bad_dir
    rgb = _read_and_decode(root / "gray16.png")
    assert Image.open(root / "gray16.png").mode.startswith("I;16")
    np.testing.assert_array_equal(rgb[0, :, 0], GRAY16_EXPECTED)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_exif_orientation_applied(bad_dir):
    root, _ = bad_dir
    rgb = _read_and_decode(root / "exif_rotated.jpg")
    w, h = EXIF_STORED_WH
    assert rgb.shape == (w, h, 3)
    # Orientation 6 = rotate 90 degrees clockwise to display: the stored top-left red
    # marker ends up in the displayed top-RIGHT corner.
    assert rgb[1, -2, 0] > 200 and rgb[1, -2, 1] < 60
    assert rgb[1, 1].max() < 60
    assert probe_size_hw((root / "exif_rotated.jpg").read_bytes()) == (w, h)


def test_cmyk_to_rgb(bad_dir):
    root, _ = bad_dir
    rgb = _read_and_decode(root / "cmyk.jpg")  # C=0, M=Y=255, K=0 is red
    r, g, b = rgb[10, 15].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_alpha_dropped_colour_kept(bad_dir):
    root, _ = bad_dir
    np.testing.assert_array_equal(_read_and_decode(root / "rgba.png")[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(_read_and_decode(root / "la.png")[0, 0], [200, 200, 200])
    pal = _read_and_decode(root / "palette_transparency.png")
    np.testing.assert_array_equal(pal[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(pal[0, 7], [0, 255, 0])


def test_palette_transparency_index_visible_as_its_colour():
    img = Image.new("P", (2, 1), 0)
    img.putpalette([9, 8, 7, 1, 2, 3] + [0] * 762)
    img.putpixel((1, 0), 1)
    rgb = decode_image(_encode(img, "PNG", transparency=0))
    np.testing.assert_array_equal(rgb[0], [[9, 8, 7], [1, 2, 3]])


def test_animated_gif_first_frame(bad_dir):
    root, _ = bad_dir
    rgb = _read_and_decode(root / "animated.gif")
    assert tuple(rgb[5, 5]) == (255, 0, 0)


def test_int_and_float_modes_scaled(bad_dir):
    root, _ = bad_dir
    # [0, 1000, 70000, -5] is outside [0, 65535]: min-max stretch.
    i = _read_and_decode(root / "mode_i.tif")[0, :, 0]
    assert i[3] == 0 and i[2] == 255 and 0 < i[1] < 10
    f = _read_and_decode(root / "mode_f.tif")[0, :, 0]
    np.testing.assert_array_equal(f, [0, 128, 255])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 100, 255], [0, 100, 255]),  # already 8-bit
        ([0, 257, 65535], [0, 1, 255]),  # 16-bit range
        ([7, 7, 7], [7, 7, 7]),
    ],
)
def test_int32_ranges(values, expected):
    img = Image.fromarray(np.array([values], dtype=np.int32), "I")
    np.testing.assert_array_equal(decode_image(_encode(img, "TIFF"))[0, :, 1], expected)


def test_float_nan_and_wide_range():
    img = Image.fromarray(np.array([[np.nan, -10.0, 10.0]], dtype=np.float32), "F")
    np.testing.assert_array_equal(decode_image(_encode(img, "TIFF"))[0, :, 0], [128, 0, 255])


def test_grayscale_and_one_bit():
    gray = decode_image(_encode(Image.new("L", (2, 2), 77), "PNG"))
    assert gray.shape == (2, 2, 3) and (gray == 77).all()
    bw = Image.new("1", (3, 1), 0)
    bw.putpixel((1, 0), 1)
    np.testing.assert_array_equal(decode_image(_encode(bw, "PNG"))[0, :, 0], [0, 255, 0])


def test_webp_if_supported():
    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    data = _encode(Image.new("RGB", (5, 4), (0, 0, 255)), "WEBP", lossless=True)
    assert sniff_format(data) == "WEBP"
    assert decode_image(data)[0, 0].tolist() == [0, 0, 255]


def test_sniff_format():
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert sniff_format(b"\x89PNG\r\n\x1a\nxxxx") == "PNG"
    assert sniff_format(b"GIF89a") == "GIF"
    assert sniff_format(b"<html>") is None
    assert sniff_format(b"") is None


def test_probe_size_reads_header_only():
    assert probe_size_hw(png_with_header_size(300, 200)) == (200, 300)
    with pytest.raises(ImageDecodeError) as info:
        probe_size_hw(png_with_header_size(300, 200), max_pixels=100)
    assert info.value.reason == "too-many-pixels"


def test_error_pickles_and_formats():
    err = ImageDecodeError("truncated", "a.jpg: ends early")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail, str(back)) == ("truncated", "a.jpg: ends early", "truncated: a.jpg: ends early")
    assert len(str(ImageDecodeError("corrupt", "x" * 5000))) < 2048


def test_accepts_bytearray_and_memoryview():
    data = _encode(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG")
    assert decode_image(bytearray(data)).shape == (2, 3, 3)
    assert decode_image(memoryview(data)).shape == (2, 3, 3)


SECRET = b"TOPSECRET-h10-marker"

# Non-image content a dataset or a misnamed file may hold, each carrying a secret, and the
# words the error must use instead of quoting it.
CONTENT_KINDS = [
    (SECRET + b" and more words", "bytes of text"),
    (b"<!DOCTYPE html><html><body>" + SECRET + b"</body></html>", "HTML"),
    (b"  <html>" + SECRET, "HTML"),
    (b"<?xml version='1.0'?><a>" + SECRET + b"</a>", "XML"),
    (b'{"token": "' + SECRET + b'"}', "JSON"),
    (b"-----BEGIN PRIVATE KEY-----\n" + SECRET, "PEM"),
    (b"%PDF-1.7\n" + SECRET, "PDF"),
    (b"PK\x03\x04" + SECRET, "ZIP"),
    (b"\x1f\x8b\x08\x00" + SECRET, "gzip"),
    (b"\x7fELF\x02\x01" + SECRET, "ELF"),
    (b"SQLite format 3\x00" + SECRET, "SQLite"),
    (b"\x00\x01\x02\x03\xfe\xff" * 4 + SECRET, "binary data"),
    (b"P6\n" + SECRET + b" 1\n255\n", "text"),  # PIL's PPM plugin quotes header tokens
    (b"\x89PNG\r\n\x1a\n" + SECRET, "PNG"),  # a known header, then the secret
    (b"\xff\xd8\xff\xe0" + SECRET, "JPEG"),
    (b"GIF89a" + SECRET, "GIF"),
]


@pytest.mark.parametrize(("data", "words"), CONTENT_KINDS, ids=[w for _, w in CONTENT_KINDS])
def test_errors_describe_content_never_quote_it(data, words):
    """Every decode error (decode and header probe alike) says what the file is, with its
    size, and none of its bytes: not in str(err), not in the detail."""
    for call in (decode_image, probe_size_hw):
        with pytest.raises(ImageDecodeError) as info:
            call(data, name="row.jpg")
        text = str(info.value)
        assert info.value.reason in ERROR_REASONS
        assert text.startswith(f"{info.value.reason}: row.jpg: ")
        for k in range(len(SECRET) - 5):  # no 6-byte run of the secret, raw or escaped
            assert SECRET[k:k + 6].decode() not in text, text
    assert words in describe_content(data) or words in str(info.value)
    assert str(len(data)) in str(info.value) or str(len(data)) in describe_content(data)


def test_describe_content_table():
    assert describe_content(b"") == "0 bytes"
    assert describe_content(b"hello world, 23 bytes.\n") == "23 bytes of text"
    assert describe_content("caf\u00e9 \u2013 \u00fcber".encode()).endswith("bytes of text")
    assert describe_content(b"<!doctype HTML>") == "15 bytes, HTML"
    assert describe_content(b"%PDF-1.4") == "8 bytes, PDF"
    assert describe_content(b"PK\x05\x06" + bytes(18)) == "22 bytes, ZIP archive"
    assert describe_content(bytes(range(256))) == "256 bytes of binary data"
    assert describe_content(b"\x89PNG\r\n\x1a\n") == "8 bytes, a PNG header"
    assert describe_content(b"....ftypavif") == "12 bytes, AVIF image"


def test_not_an_image_file_read_from_disk_is_described(tmp_path: Path):
    (tmp_path / "secret.jpg").write_bytes(SECRET)
    with pytest.raises(ImageDecodeError) as info:
        _read_and_decode(tmp_path / "secret.jpg")
    assert str(info.value) == (f"not-an-image: secret.jpg: {len(SECRET)} bytes of text, "
                               "which no image decoder recognises")
