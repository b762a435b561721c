"""Bad-input fixture files: one file per hard case of reading + decoding an image.

``make_bad_inputs(dir)`` writes the files flat into ``dir`` and returns the expected
outcome of ``decode_image(read_image_bytes(path))`` with the DEFAULT ``max_pixels``:

    {file_name: ("ok", (height, width))}   decodes, to this displayed size
    {file_name: ("error", reason)}         ImageDecodeError with this ``reason``

Every returned name is also listed by ``annotator.inputs.listing.list_images(dir)`` (broken
symlinks and unreadable entries included), so a pipeline test can check one output row
per entry. Tests run as root, where ``chmod 000`` does not deny reads: there
``unreadable.jpg`` is a symlink that points at itself (ELOOP, unreadable for root too);
as a normal user it is a regular file with mode 000.

The other constants describe the ok cases precisely, for value checks.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_bad_inputs", "png_with_header_size", "GRAY16_VALUES", "EXIF_STORED_WH"]

#: Pixel values of gray16.png (one row, 16 bit) and their expected 8-bit results.
GRAY16_VALUES = np.array([0, 257, 32896, 65535, 1000], dtype=np.uint16)
GRAY16_EXPECTED = np.array([0, 1, 128, 255, 4], dtype=np.uint8)

#: exif_rotated.jpg is stored 40 wide x 20 high with orientation 6 (rotate 90 CW to show).
EXIF_STORED_WH = (40, 20)


def png_with_header_size(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims ``width`` x ``height`` (8-bit gray) but
    whose IDAT holds a few bytes only: tiny on disk, huge if decoded (decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise_rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _exif_rotated_jpeg() -> bytes:
    w, h = EXIF_STORED_WH
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:5, :5] = (255, 0, 0)  # red marker in the STORED top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (8, 6), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.paste(1, (0, 0, 4, 6))
    img.paste(2, (4, 0, 8, 6))
    img.info["transparency"] = 0
    return _encode(img, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def make_bad_inputs(dir: Path) -> dict[str, tuple[str, object]]:  # noqa: A002 (name from the brief)
    """Write the fixture files into ``dir`` (created if needed); return expected outcomes."""
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, tuple[str, object]] = {}

    def write(name: str, data: bytes, outcome: tuple[str, object]) -> None:
        (root / name).write_bytes(data)
        expected[name] = outcome

    good_jpeg = _encode(_noise_rgb(48, 64), "JPEG", quality=90)
    write("empty.jpg", b"", ("error", "empty-file"))
    write("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], ("error", "truncated"))
    write("truncated_header.png", _encode(_noise_rgb(8, 8), "PNG")[:20], ("error", "truncated"))
    write("garbage.jpg", b"<html><body>404 Not Found</body></html>\n", ("error", "not-an-image"))
    # 900 Mpx claimed, ~100 bytes on disk. Over the default max_pixels, which equals PIL's
    # hard limit, so PIL's DecompressionBombError fires first; test_decode checks the
    # module's own header check with a lower max_pixels.
    write("bomb_30000x30000.png", png_with_header_size(30_000, 30_000), ("error", "too-many-pixels"))

    gray16 = Image.fromarray(GRAY16_VALUES.reshape(1, -1))  # mode I;16
    write("gray16.png", _encode(gray16, "PNG"), ("ok", (1, GRAY16_VALUES.size)))
    write("cmyk.jpg", _encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG", quality=95),
          ("ok", (20, 30)))
    write("palette_transparency.png", _palette_with_transparency(), ("ok", (6, 8)))
    write("la.png", _encode(Image.new("LA", (7, 5), (200, 10)), "PNG"), ("ok", (5, 7)))
    write("rgba.png", _encode(Image.new("RGBA", (9, 4), (10, 20, 30, 0)), "PNG"), ("ok", (4, 9)))
    write("exif_rotated.jpg", _exif_rotated_jpeg(), ("ok", (EXIF_STORED_WH[0], EXIF_STORED_WH[1])))
    write("one_pixel.png", _encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), ("ok", (1, 1)))
    write("strip_10000x20.png", _encode(Image.new("RGB", (10_000, 20), (5, 6, 7)), "PNG"),
          ("ok", (20, 10_000)))
    write("animated.gif", _animated_gif(), ("ok", (12, 16)))
    mode_i = Image.fromarray(np.array([[0, 1000, 70000, -5]], dtype=np.int32), "I")
    write("mode_i.tif", _encode(mode_i, "TIFF"), ("ok", (1, 4)))
    mode_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    write("mode_f.tif", _encode(mode_f, "TIFF"), ("ok", (1, 3)))
    write("gray.bmp", _encode(Image.new("L", (3, 2), 77), "BMP"), ("ok", (2, 3)))

    os.symlink("does-not-exist.jpg", root / "broken_symlink.jpg")
    expected["broken_symlink.jpg"] = ("error", "missing")

    unreadable = root / "unreadable.jpg"
    if os.geteuid() == 0:  # root reads mode-000 files; a self-loop symlink fails for all
        os.symlink("unreadable.jpg", unreadable)
    else:
        unreadable.write_bytes(good_jpeg)
        unreadable.chmod(0)
    expected["unreadable.jpg"] = ("error", "unreadable")
    return expected
