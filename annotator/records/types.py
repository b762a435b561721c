"""Per-image output records, typed and validated: ``ImageRecord`` (one row of a part)
and ``Annotation`` (one class present in it). Building them from a prediction (RLE,
confidence PNG): :mod:`annotator.records.encode`.

One `ImageRecord` is one row of a part file (`schemas/part.schema.json`); one
`Annotation` is one class present in the image (background, index 0, is never
exported), holding the union mask of that class.

Encoding
- Masks are COCO *compressed* RLE, produced by `pycocotools.mask.encode` on a
  Fortran-ordered (column-major) uint8 array: `{"size": [h, w], "counts": str}`, the
  counts bytes decoded to ASCII. This is what CVAT, FiftyOne and pycocotools read.
- `bbox_xywh` is the tight box `[x, y, w, h]` in pixels: x, y = the smallest column and
  row of the mask, w, h = the column and row extents (so `x + w` is one past the last
  column). Computed by `pycocotools.mask.toBbox`, which is tight.
- `area` is the mask's pixel count; `score` the mean calibrated confidence over the
  mask, rounded to 6 decimals so identical inputs give byte-identical rows.
- The confidence map is an 8-bit grayscale PNG at the image's resolution with value
  `round(255 * confidence)`.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "ERROR_MAX_LENGTH",
    "STATUSES",
    "Annotation",
    "ImageRecord",
    "RecordError",
    "error_reason",
    "error_record",
]

#: `maxLength` of the `error` column in `schemas/part.schema.json` (a test keeps them equal).
ERROR_MAX_LENGTH = 2048
STATUSES = ("ok", "error")
SCORE_DECIMALS = 6
PNG_COMPRESS_LEVEL = 1  # speed over size: the PNG is ~10% larger than at level 6, ~4x faster


class RecordError(ValueError):
    """A record or one of its inputs does not have the expected shape, type or range."""


class ImageRefLike(Protocol):
    """What a row needs of an image reference (read-only: ``ImageRef`` is frozen)."""

    @property
    def image_id(self) -> int: ...
    @property
    def file_name(self) -> str: ...
    @property
    def uri(self) -> str: ...


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_segmentation(segmentation: Any) -> dict:
    """Validate a compressed-RLE dict and return it normalised to `{"size": [h, w], "counts": str}`."""
    if not isinstance(segmentation, dict) or set(segmentation) != {"size", "counts"}:
        raise RecordError(
            "segmentation: expected a COCO compressed RLE dict with exactly the keys "
            f"'size' and 'counts', received {type(segmentation).__name__} "
            f"{sorted(segmentation) if isinstance(segmentation, dict) else segmentation!r:.80}"
        )
    size = list(segmentation["size"]) if isinstance(segmentation["size"], (list, tuple, np.ndarray)) else None
    if size is None or len(size) != 2 or not all(_is_int(v) and v >= 1 for v in size):
        raise RecordError(
            f"segmentation.size: expected [height, width] of positive integers, received {segmentation['size']!r}"
        )
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str) or not counts:
        raise RecordError(
            "segmentation.counts: expected a non-empty ASCII string (compressed RLE), "
            f"received {type(counts).__name__}"
        )
    return {"size": [int(size[0]), int(size[1])], "counts": counts}


@dataclass
class Annotation:
    """One class present in one image: its union mask as COCO compressed RLE.

    category_id: vocabulary index, >= 1 (0 is background, never exported).
    segmentation: `{"size": [h, w], "counts": str}` compressed RLE.
    bbox_xywh: tight `[x, y, w, h]` in pixels, floats >= 0.
    area: pixel count of the mask, >= 1.
    score: mean calibrated confidence over the mask, in [0, 1].
    """

    category_id: int
    category_name: str
    segmentation: dict
    bbox_xywh: list[float]
    area: int
    score: float

    def __post_init__(self) -> None:
        if not _is_int(self.category_id) or self.category_id < 1:
            raise RecordError(
                f"category_id: expected an integer >= 1 (0 is background), received {self.category_id!r}"
            )
        self.category_id = int(self.category_id)
        if not isinstance(self.category_name, str) or not self.category_name:
            raise RecordError(f"category_name: expected a non-empty string, received {self.category_name!r}")
        self.segmentation = check_segmentation(self.segmentation)
        bbox = list(self.bbox_xywh) if isinstance(self.bbox_xywh, (list, tuple, np.ndarray)) else None
        if (
            bbox is None
            or len(bbox) != 4
            or not all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in bbox
            )
            or not all(math.isfinite(v) and v >= 0 for v in bbox)
        ):
            raise RecordError(
                f"bbox_xywh: expected 4 finite numbers >= 0 [x, y, w, h], received {self.bbox_xywh!r}"
            )
        self.bbox_xywh = [float(v) for v in bbox]
        if not _is_int(self.area) or self.area < 1:
            raise RecordError(f"area: expected an integer pixel count >= 1, received {self.area!r}")
        self.area = int(self.area)
        if (
            not isinstance(self.score, (int, float, np.integer, np.floating))
            or isinstance(self.score, bool)
            or not (0.0 <= float(self.score) <= 1.0)
        ):
            raise RecordError(f"score: expected a number in [0, 1], received {self.score!r}")
        self.score = float(self.score)

    def to_dict(self) -> dict:
        """The schema's annotation object (`bbox_xywh` is stored as `bbox`)."""
        return {
            "category_id": self.category_id,
            "category_name": self.category_name,
            "segmentation": {"size": list(self.segmentation["size"]), "counts": self.segmentation["counts"]},
            "bbox": list(self.bbox_xywh),
            "area": self.area,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Annotation:
        """Inverse of `to_dict` (accepts `bbox` or `bbox_xywh`)."""
        if not isinstance(d, dict):
            raise RecordError(f"annotation: expected a dict, received {type(d).__name__}")
        bbox: Any = d["bbox"] if "bbox" in d else d.get("bbox_xywh")  # checked by the constructor
        try:
            return cls(
                category_id=d["category_id"],
                category_name=d["category_name"],
                segmentation=d["segmentation"],
                bbox_xywh=bbox,
                area=d["area"],
                score=d["score"],
            )
        except KeyError as exc:
            raise RecordError(f"annotation: missing key {exc.args[0]!r}; received keys {sorted(d)}") from None


@dataclass
class ImageRecord:
    """One input image, annotated (`status="ok"`) or failed (`status="error"`).

    width, height: pixels after EXIF orientation; None when the image was not decoded.
    error: None when ok, otherwise `"<reason-code>: <detail>"`.
    annotations: sorted by category_id; masks are `[height, width]`. Empty on error.
    confidence_png: 8-bit grayscale PNG bytes (see `encode_confidence_png`); None on error.
    """

    image_id: int
    file_name: str
    uri: str
    width: int | None
    height: int | None
    status: str
    error: str | None
    annotations: list[Annotation] = field(default_factory=list)
    confidence_png: bytes | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.image_id) or self.image_id < 1:
            raise RecordError(f"image_id: expected an integer >= 1, received {self.image_id!r}")
        self.image_id = int(self.image_id)
        if not isinstance(self.file_name, str) or not self.file_name:
            raise RecordError(f"file_name: expected a non-empty string, received {self.file_name!r}")
        if not isinstance(self.uri, str):
            raise RecordError(f"uri: expected a string, received {type(self.uri).__name__}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise RecordError(f"{name}: expected None or an integer >= 1, received {value!r}")
            setattr(self, name, None if value is None else int(value))
        if (self.width is None) != (self.height is None):
            raise RecordError(
                f"width and height: expected both or neither, received {self.width!r}, {self.height!r}"
            )
        if self.status not in STATUSES:
            raise RecordError(f"status: expected one of {STATUSES}, received {self.status!r}")
        self.annotations = [
            a if isinstance(a, Annotation) else Annotation.from_dict(a) for a in self.annotations
        ]
        if self.status == "ok":
            self._check_ok()
        else:
            self._check_error()

    def _check_ok(self) -> None:
        if self.error is not None:
            raise RecordError(f"error: expected None when status is 'ok', received {self.error!r}")
        if self.width is None:
            raise RecordError("width/height: expected integers when status is 'ok', received None")
        if not isinstance(self.confidence_png, (bytes, bytearray)) or not self.confidence_png:
            raise RecordError(
                f"confidence_png: expected PNG bytes when status is 'ok', received {type(self.confidence_png).__name__}"
            )
        self.confidence_png = bytes(self.confidence_png)
        ids = [a.category_id for a in self.annotations]
        if ids != sorted(set(ids)):
            raise RecordError(
                f"annotations: expected unique category_ids in increasing order, received {ids}"
            )
        for a in self.annotations:
            if a.segmentation["size"] != [self.height, self.width]:
                raise RecordError(
                    f"annotations[category_id={a.category_id}].segmentation.size: expected "
                    f"[{self.height}, {self.width}] (the image's [height, width]), received {a.segmentation['size']}"
                )

    def _check_error(self) -> None:
        if not isinstance(self.error, str) or not self.error:
            raise RecordError(
                f"error: expected a non-empty '<reason>: <detail>' string when status is 'error', received {self.error!r}"
            )
        if len(self.error) > ERROR_MAX_LENGTH:
            raise RecordError(
                f"error: expected at most {ERROR_MAX_LENGTH} characters, received {len(self.error)}"
            )
        if self.annotations:
            raise RecordError(
                f"annotations: expected none when status is 'error', received {len(self.annotations)}"
            )
        if self.confidence_png is not None:
            raise RecordError("confidence_png: expected None when status is 'error'")

    @property
    def size_hw(self) -> tuple[int, int] | None:
        return None if self.height is None or self.width is None else (self.height, self.width)

    def to_row(self) -> dict:
        """The row as the part schema names it (annotations as dicts, confidence_png bytes)."""
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "uri": self.uri,
            "width": self.width,
            "height": self.height,
            "status": self.status,
            "error": self.error,
            "annotations": [a.to_dict() for a in self.annotations],
            "confidence_png": self.confidence_png,
        }

    @classmethod
    def from_row(cls, row: dict) -> ImageRecord:
        """Inverse of `to_row`; also accepts a base64 string `confidence_png` (the JSON form)."""
        if not isinstance(row, dict):
            raise RecordError(f"row: expected a dict, received {type(row).__name__}")
        png = row.get("confidence_png")
        if isinstance(png, str):
            png = base64.b64decode(png, validate=True)
        try:
            return cls(
                image_id=row["image_id"],
                file_name=row["file_name"],
                uri=row["uri"],
                width=row["width"],
                height=row["height"],
                status=row["status"],
                error=row["error"],
                annotations=[Annotation.from_dict(a) for a in (row.get("annotations") or [])],
                confidence_png=png,
            )
        except KeyError as exc:
            raise RecordError(
                f"row: missing column {exc.args[0]!r}; received columns {sorted(row)}"
            ) from None


def error_record(
    ref: ImageRefLike, reason: str, detail: str, size_hw: tuple[int, int] | None = None
) -> ImageRecord:
    """A failed record with error `"{reason}: {detail}"`, cut to ERROR_MAX_LENGTH characters.

    size_hw: the image's (height, width) when it was decoded before failing, else None.
    """
    if not isinstance(reason, str) or not reason:
        raise RecordError(f"reason: expected a non-empty reason code, received {reason!r}")
    text = f"{reason}: {detail}"
    if len(text) > ERROR_MAX_LENGTH:
        text = text[: ERROR_MAX_LENGTH - 3] + "..."
    height, width = (None, None) if size_hw is None else (int(size_hw[0]), int(size_hw[1]))
    return ImageRecord(
        image_id=ref.image_id,
        file_name=ref.file_name,
        uri=ref.uri,
        width=width,
        height=height,
        status="error",
        error=text,
        annotations=[],
        confidence_png=None,
    )


def error_reason(error: str | None) -> str:
    """The reason code of an error row's ``error`` text (``"truncated: ..."`` -> ``"truncated"``)."""
    return (error or "unknown").split(":", 1)[0]
