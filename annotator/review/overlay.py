"""Overlay previews for review: an image with its masks in translucent class colours.

:func:`render_overlay` re-reads a record's image (local path, fsspec URL, or a row of a
LOCAL Hugging Face dataset), applies EXIF orientation, scales it so its longest side is
<= ``max_side`` pixels (tiny images are enlarged to ``PREVIEW_MIN_SIDE``), blends the
class colours of :mod:`annotator.review.palette` over the non-background pixels and adds a
legend strip below (class name and score per annotation, largest area first). When the
image cannot be read, the masks are drawn on grey and a note says why.
:func:`annotator.report.write_report` encodes these previews as JPEG (:func:`encode_jpeg`).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from annotator.review.palette import class_colors, colorize_labels
from annotator.storage.redact import redact_text

__all__ = ["encode_jpeg", "render_overlay"]

PREVIEW_MAX_SIDE = 512
PREVIEW_MIN_SIDE = 256


def _font(size: int = 12) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _read_image(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[np.ndarray | None, str | None]:
    """(RGB uint8 (H, W, 3) with EXIF orientation applied, None) or (None, why not)."""
    from annotator.inputs.decode import decode_image
    from annotator.inputs.listing import read_image_bytes, redact_uri

    try:
        if uri.startswith("hf://"):
            data = _read_hf_row(uri)
        else:
            data = read_image_bytes(uri, dict(storage_options or {}) or None, retries=0)
        return decode_image(data, name=redact_uri(uri)), None
    except ImportError as exc:
        return None, f"image not readable (missing fsspec backend: {exc})"
    except Exception as exc:  # noqa: BLE001 - any failure: draw the mask alone, and say why
        return None, f"image not readable: {redact_text(str(exc))[:160]}"


def _read_hf_row(uri: str) -> bytes:
    """Bytes of row ``index`` of a LOCAL Hugging Face dataset, ``hf://{path}/{split}/{index}``.

    Hub datasets are streamed (no random access, network): not re-read for a preview.
    """
    name, split, index = uri[len("hf://"):].rsplit("/", 2)
    if not name.startswith("/"):
        raise ValueError(f"{uri!r} is a streamed hub dataset row; previews re-read local datasets only")
    row = _hf_source(name, split).read_rows(int(index), int(index) + 1)
    if not row:
        raise ValueError(f"{uri!r}: no such row")
    if isinstance(row[0], Exception):
        raise row[0]
    return row[0]


@functools.lru_cache(maxsize=4)
def _hf_source(name: str, split: str) -> Any:
    from annotator.inputs.hf import list_hf_dataset

    return list_hf_dataset(name, split)


def render_overlay(
    record: Any,
    class_names: Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_side: int = PREVIEW_MAX_SIDE,
    alpha: float = 0.5,
) -> tuple[Image.Image, str | None]:
    """Overlay of an ok record's masks on its image, with a legend strip below.

    The image is re-read from ``record.uri``; when that fails, the masks are drawn on
    grey and the returned note says so. Returns (RGB PIL image whose image part has its
    longest side <= ``max_side`` (tiny images are enlarged to 256 px), note or None).
    """
    from annotator.records import labels_from_annotations

    h, w = int(record.height), int(record.width)
    # Downscale large images to max_side; enlarge tiny ones (up to PREVIEW_MIN_SIDE) to stay legible.
    scale = min(max_side, max(PREVIEW_MIN_SIDE, max(h, w))) / max(h, w)
    size_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
    labels = labels_from_annotations(record.annotations, (h, w))
    small = np.asarray(Image.fromarray(labels).resize(size_wh, resample=Image.Resampling.NEAREST))
    rgb, note = _read_image(record.uri, storage_options)
    if rgb is None:
        base = np.full((size_wh[1], size_wh[0], 3), 128, dtype=np.uint8)
        weight = 0.85
    else:
        if rgb.shape[:2] != (h, w):
            note = f"image is {rgb.shape[1]}x{rgb.shape[0]}, annotations are {w}x{h}"
        resample = Image.Resampling.BILINEAR if scale < 1.0 else Image.Resampling.NEAREST
        base = np.asarray(Image.fromarray(rgb).resize(size_wh, resample=resample))
        weight = alpha
    colors = class_colors(class_names)
    painted = colorize_labels(small, colors).astype(np.float32)
    fg = (small > 0)[:, :, None]
    blended = np.where(fg, base * (1.0 - weight) + painted * weight, base).round().astype(np.uint8)
    return _add_legend(Image.fromarray(blended), record, class_names, colors, note), note


def _add_legend(img: Image.Image, record: Any, class_names: Sequence[str], colors: list,
                note: str | None) -> Image.Image:
    font = _font(12)
    entries = sorted(record.annotations, key=lambda a: -a.area)
    line_h, pad = 16, 4
    width = max(img.width, 256)
    # Lay the entries out left to right, wrapping; at most 6 lines, then "+N more".
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[list[tuple[str, tuple]]] = [[]]
    x = pad
    shown = 0
    for a in entries:
        name = class_names[a.category_id] if a.category_id < len(class_names) else "?"
        (name,) = _wrap(name[:200], font, width - 2 * pad - 24 - int(measure.textlength(" 0.00", font=font)),
                        measure, max_lines=1) or ["?"]  # one item never wider than the strip
        label = f"{name} {a.score:.2f}"
        item_w = 14 + int(measure.textlength(_printable(label), font=font)) + 10
        if x + item_w > width and lines[-1]:
            if len(lines) == 6:
                break
            lines.append([])
            x = pad
        lines[-1].append((label, colors[a.category_id]))
        x += item_w
        shown += 1
    texts = [f"+{len(entries) - shown} more classes"] if shown < len(entries) else []
    if not entries:
        texts.append("no class other than background")
    note_lines = _wrap(note, font, width - 2 * pad, measure) if note else []
    texts += note_lines
    lines = [line for line in lines if line]
    strip_h = pad + line_h * (len(lines) + len(texts)) + pad
    out = Image.new("RGB", (width, img.height + strip_h), (255, 255, 255))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    y = img.height + pad
    for line in lines:
        x = pad
        for label, color in line:
            draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(color), outline=(0, 0, 0))
            _text(draw, (x + 14, y), label, font, (0, 0, 0))
            x += 14 + int(draw.textlength(_printable(label), font=font)) + 10
        y += line_h
    for text in texts:
        _text(draw, (pad, y), text, font, (160, 0, 0) if text in note_lines else (60, 60, 60))
        y += line_h
    return out


def _wrap(text: str, font: Any, width: int, measure: ImageDraw.ImageDraw, max_lines: int = 3) -> list[str]:
    """``text`` broken into at most ``max_lines`` lines of at most ``width`` pixels (at
    spaces, else anywhere), the last one ending in an ellipsis when text is left over."""
    def fits(line: str) -> bool:
        return measure.textlength(_printable(line), font=font) <= width

    lines: list[str] = []
    rest = " ".join(text.split())
    while rest and len(lines) < max_lines:
        cut = len(rest)
        while cut > 1 and not fits(rest[:cut]):
            cut -= 1
        if cut < len(rest) and " " in rest[1:cut]:
            cut = rest.rindex(" ", 1, cut)
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest and lines:
        last = lines[-1]
        while last and not fits(last + "\u2026"):
            last = last[:-1]
        lines[-1] = last + "\u2026"
    return lines


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, fill: tuple) -> None:
    try:
        draw.text(xy, _printable(text), font=font, fill=fill)
    except (UnicodeError, ValueError, OSError):  # a glyph the font cannot encode
        draw.text(xy, _printable(text).encode("ascii", "replace").decode("ascii"), font=font, fill=fill)


def encode_jpeg(img: Image.Image) -> bytes:
    """An RGB preview as JPEG bytes (quality 85)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
