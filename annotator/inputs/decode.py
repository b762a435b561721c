"""Image bytes -> RGB uint8 HWC array, with every bad-input case mapped to one error type.

Output contract of :func:`decode_image`: ``np.ndarray`` of shape ``(H, W, 3)``, dtype
``uint8``, values in [0, 255], C-contiguous, row 0 at the top of the *displayed* image:
the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so ``H`` and ``W``
are the height and width a viewer (CVAT, FiftyOne, Label Studio, a browser) shows.

Mode conversions (PIL mode -> RGB), chosen so that the pixels match what
``PIL.Image.convert("RGB")`` -- i.e. what most training pipelines -- would feed a model:

- ``RGB``: unchanged. ``L``, ``1``, ``P``, ``YCbCr``: ``convert("RGB")``.
- ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La`` and palette images with a ``transparency``
  entry: the alpha channel is DROPPED, the stored colour values are kept (no compositing
  on a background). Palette images go through ``RGBA`` first so that PIL's transparency
  handling (and its warning about byte transparency) is not involved.
- ``CMYK``: ``convert("RGB")`` (PIL's naive conversion; Adobe inverted CMYK JPEGs are
  already un-inverted by PIL's JPEG plugin). ICC profiles are ignored.
- ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N`` (16-bit grayscale, e.g. 16-bit PNG): the
  full 16-bit range is scaled to 8 bit, ``round(v * 255 / 65535)``; no clipping.
- ``I`` (32-bit signed integer): values already in [0, 255] are kept; values in
  [0, 65535] are scaled as 16-bit; anything else is min-max stretched to [0, 255].
- ``F`` (32-bit float): NaN/inf become 0; values in [0, 1] are multiplied by 255; values in
  [0, 255] are kept; anything else is min-max stretched. A constant image maps to 0.
- Multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame only.

Bad inputs raise :class:`ImageDecodeError` whose ``reason`` is one of
:data:`ERROR_REASONS`; ``str(err)`` is ``"<reason>: <detail>"``, the format of the
``error`` column of a part row. A detail describes the file's content (``"23 bytes of
text"``, ``"HTML"``, ``"PDF"``, ``"ZIP archive"``: :func:`describe_content`) and never
quotes it: a decoder message that repeats some of the file's bytes (PIL's PPM plugin
quotes header tokens) is replaced by its type and that description, so a secret in a
non-image file reaches neither the ``error`` column nor the report.

The decompression-bomb guard reads only the header (``Image.open`` is lazy) and refuses
images with more than ``max_pixels`` pixels before any pixel data is decoded. PIL's own
process-global guard is left untouched: PIL warns above ``Image.MAX_IMAGE_PIXELS``
(89,478,485 as shipped) and raises ``DecompressionBombError`` above twice that
(178,956,970 = :data:`DEFAULT_MAX_PIXELS`); that error is reported as ``too-many-pixels``
too. So the effective limit is ``min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)``; raising it
past PIL's is the application's decision (set ``Image.MAX_IMAGE_PIXELS``), never this
module's. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed: truncated files are errors.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ERROR_REASONS",
    "ImageDecodeError",
    "content_safe_message",
    "decode_image",
    "describe_content",
    "probe_size_hw",
    "sniff_format",
]

#: PIL's default hard limit (``2 * Image.MAX_IMAGE_PIXELS`` as shipped), ~179 megapixels.
DEFAULT_MAX_PIXELS: int = 178_956_970

#: Stable reason codes an :class:`ImageDecodeError` may carry.
ERROR_REASONS: tuple[str, ...] = (
    "empty-file",  # zero bytes
    "truncated",  # a known image header, but the data ends early
    "not-an-image",  # bytes no image plugin recognises (e.g. HTML saved as .jpg)
    "corrupt",  # recognised header, pixel data that fails to decode for another reason
    "too-many-pixels",  # header claims more than max_pixels pixels (decompression bomb)
    "unsupported-mode",  # a pixel mode with no RGB conversion
    "missing",  # file does not exist / broken symlink / dataset cell is empty
    "unreadable",  # exists but cannot be read (permission, directory, I/O after retries)
)

_MAX_DETAIL_CHARS = 1500  # the error column allows 2048 characters in all

# Leading bytes of the formats we list (see sources.IMAGE_EXTENSIONS) -> PIL format name.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)


#: Leading bytes (at an offset) of non-image content -> what :func:`describe_content` calls it.
_CONTENT_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "PDF"),
    (0, b"PK\x03\x04", "ZIP archive"),
    (0, b"PK\x05\x06", "ZIP archive"),
    (0, b"\x1f\x8b", "gzip data"),
    (0, b"BZh", "bzip2 data"),
    (0, b"\xfd7zXZ\x00", "xz data"),
    (0, b"\x28\xb5\x2f\xfd", "zstd data"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (0, b"Rar!\x1a\x07", "RAR archive"),
    (257, b"ustar", "tar archive"),
    (0, b"\x7fELF", "ELF executable"),
    (0, b"MZ", "Windows executable"),
    (0, b"SQLite format 3\x00", "SQLite database"),
    (0, b"PAR1", "Parquet file"),
    (0, b"\x93NUMPY", "NumPy array"),
    (0, b"8BPS", "Photoshop document"),
    (0, b"\x00\x00\x01\x00", "ICO icon"),
    (0, b"\xff\x0a", "JPEG XL image"),
    (4, b"ftypheic", "HEIF image"),
    (4, b"ftypheix", "HEIF image"),
    (4, b"ftypmif1", "HEIF image"),
    (4, b"ftypavif", "AVIF image"),
    (4, b"ftyp", "MP4/QuickTime media"),
    (0, b"\x1aE\xdf\xa3", "Matroska/WebM media"),
    (0, b"OggS", "Ogg media"),
    (0, b"ID3", "MP3 audio"),
    (0, b"RIFF", "RIFF media (WAV/AVI)"),
)

#: Leading text (lower-cased, after whitespace and a BOM) -> the kind of text.
_TEXT_KINDS: tuple[tuple[str, str], ...] = (
    ("<!doctype html", "HTML"),
    ("<html", "HTML"),
    ("<head", "HTML"),
    ("<body", "HTML"),
    ("<svg", "SVG"),
    ("<?xml", "XML"),
    ("{", "JSON or other text"),
    ("[", "JSON or other text"),
    ("-----begin", "PEM text (a key or certificate)"),
)


def describe_content(data: bytes | bytearray | memoryview) -> str:
    """What ``data`` is, in words, without quoting any of it: ``"0 bytes"``,
    ``"23 bytes of text"``, ``"1024 bytes, HTML"``, ``"PDF"`` with its size, ``"binary
    data"``. Reads at most the first 4 KiB. For error texts: an untrusted file's content
    (a secret, a script) must never be repeated into the ``error`` column or a report."""
    n = len(data)
    if n == 0:
        return "0 bytes"
    head = bytes(data[:4096])
    fmt = sniff_format(head)
    if fmt is not None:
        return f"{n} bytes, a {fmt} header"
    for offset, magic, kind in _CONTENT_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return f"{n} bytes, {kind}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at 4 KiB is still text
        text = head[:exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    if text and printable >= 0.95 * len(text):
        lead = text.lstrip("\ufeff \t\r\n").lower()
        kind = next((k for prefix, k in _TEXT_KINDS if lead.startswith(prefix)), "text")
        return f"{n} bytes of {kind}" if kind == "text" else f"{n} bytes, {kind}"
    return f"{n} bytes of binary data"


def _quotes(message: str, data: bytes | bytearray | memoryview, window: int = 6) -> bool:
    """Whether ``message`` repeats a run of ``window`` characters of ``data`` (as text or
    as the escapes of a bytes repr)."""
    if len(message) < window or not data:
        return False
    hay = bytes(data[:1 << 18])
    texts = (hay.decode("latin-1"), repr(hay)[2:-1])
    return any(message[i:i + window] in t for t in texts for i in range(len(message) - window + 1))


def content_safe_message(exc: BaseException, data: bytes | bytearray | memoryview) -> str:
    """A reader's exception (PIL, numpy) as text for an error detail, unless it repeats
    six or more characters of ``data`` (the file it read): then its type and
    :func:`describe_content` instead. For every error text made from a file's decoder."""
    message = " ".join(str(exc).split())
    if not message:
        return type(exc).__name__
    if _quotes(message, data):
        return (f"{type(exc).__name__} (its message repeats the file's bytes and is not shown) "
                f"on {describe_content(data)}")
    return message


class ImageDecodeError(Exception):
    """An image that could not be read or decoded.

    Attributes:
        reason: short stable code, one of :data:`ERROR_REASONS`.
        detail: human-readable explanation (no credentials: callers pass redacted URIs).

    ``str(err) == f"{reason}: {detail}"``. Picklable (crosses Ray process boundaries).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        detail = str(detail)
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """PIL format name ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF") from the leading
    bytes, or None when they match none of these. Reads at most 12 bytes."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _label(name: str) -> str:
    return f"{name}: " if name else ""


def _open_lazy(data: bytes | bytearray | memoryview, max_pixels: int, name: str) -> Image.Image:
    """``Image.open`` (header only) with every failure mapped to ImageDecodeError and the
    pixel-count guard applied. The returned image has not decoded its pixels yet."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty-file", f"{_label(name)}0 bytes")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's global guard (an error above 2 * MAX_IMAGE_PIXELS; the warning only
        # arrives here when warnings are turned into errors).
        raise ImageDecodeError("too-many-pixels", f"{_label(name)}{content_safe_message(exc, data)}") from None
    except UnidentifiedImageError:
        fmt = sniff_format(data)
        if fmt is not None:
            raise ImageDecodeError(
                "truncated", f"{_label(name)}{fmt} header found but the file ends early "
                f"or the header is damaged ({len(data)} bytes)"
            ) from None
        raise ImageDecodeError(
            "not-an-image", f"{_label(name)}{describe_content(data)}, which no image decoder recognises"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError("truncated" if _looks_truncated(exc) else "corrupt",
                               f"{_label(name)}{content_safe_message(exc, data)}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError("corrupt", f"{_label(name)}header gives size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too-many-pixels",
            f"{_label(name)}{width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} (possible decompression bomb)",
        )
    return img


def _looks_truncated(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or any(
        s in text for s in ("truncated", "broken data stream", "end of file", "premature end")
    )


_EXIF_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90 or 270 degrees


def probe_size_hw(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  name: str = "") -> tuple[int, int]:
    """(height, width) of the displayed image (EXIF orientation applied) from the header
    only; no pixel data is decoded. Raises ImageDecodeError like :func:`decode_image`
    for what the header alone reveals (empty, not an image, too many pixels)."""
    img = _open_lazy(data, max_pixels, name)
    with img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        except (OSError, ValueError, SyntaxError, KeyError, TypeError):
            orientation = 1
    return (width, height) if orientation in _SWAPS_AXES else (height, width)


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str = "") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, GIF, WebP, BMP, TIFF, ...) to RGB.

    Args:
        data: the encoded file content.
        max_pixels: refuse images whose header claims more than this many pixels
            (width * height, before decoding any pixel data).
        name: shown in error details (e.g. the redacted URI or file name).

    Returns:
        ``np.ndarray`` (H, W, 3) uint8, C-contiguous, EXIF orientation applied.

    Raises:
        ImageDecodeError: reason in :data:`ERROR_REASONS` (see module docstring).
        ValueError: ``max_pixels`` < 1 (a caller bug, not a bad input).
    """
    img = _open_lazy(data, max_pixels, name)
    with img:
        try:
            img.load()  # first frame only for multi-frame formats
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError("too-many-pixels", f"{_label(name)}{content_safe_message(exc, data)}") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
            reason = "truncated" if _looks_truncated(exc) else "corrupt"
            detail = f"{_label(name)}{img.format} data: {content_safe_message(exc, data)}"
            raise ImageDecodeError(reason, detail) from None
        oriented = _exif_transpose_or_keep(img)
        rgb = _to_rgb_array(oriented, name, data)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    return rgb


def _exif_transpose_or_keep(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block must not lose a decodable image."""
    try:
        out = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError):
        return img
    return img if out is None else out


_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_DIRECT_TO_RGB_MODES = {"L", "1", "P", "CMYK", "YCbCr", "HSV", "RGBX"}


def _to_rgb_array(img: Image.Image, name: str, data: bytes | bytearray | memoryview = b"") -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        rgb = np.asarray(img, dtype=np.uint8)
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgb = np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3]
    elif mode in _DIRECT_TO_RGB_MODES:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    elif mode in _SIXTEEN_BIT_MODES:
        gray = _scale_16bit(np.asarray(img).astype(np.uint32))
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "I":
        gray = _scale_int32(np.asarray(img, dtype=np.int64))
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "F":
        gray = _scale_float(np.asarray(img, dtype=np.float64))
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        try:
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as exc:
            raise ImageDecodeError(
                "unsupported-mode",
                f"{_label(name)}PIL mode {mode!r} has no RGB conversion ({content_safe_message(exc, data)})",
            ) from None
    return np.ascontiguousarray(rgb)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """[0, 65535] integers -> uint8 with round-to-nearest (65535 -> 255, 257 -> 1)."""
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _scale_int32(values: np.ndarray) -> np.ndarray:
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return _scale_16bit(values)
    return _stretch(values)


def _scale_float(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(values).astype(np.uint8)
    return _stretch(values)
