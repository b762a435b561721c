"""Ground-truth readers: one semantic label map per image, for scoring.

Every reader answers `labels_for(file_name, size_hw)` with an (H, W) integer label map
in the run's class indices (0 = background, c = `class_names[c]`, 255 = ignore) or
None when the image has no ground truth (or is dropped by the protocol).

Formats (`load_gt` picks one from the spec when `gt_format` is None):
- "voc-png": a folder of PNGs, `{gt_dir}/{file_name with .png}` or `{gt_dir}/{stem}.png`.
  The PNG's palette indices (or gray values) ARE the class indices; the image is read
  without converting to RGB. This assumes the vocabulary lists the classes in the
  dataset's order (the VOC vocabulary in `jobs/vocab/` follows VOC's order). 255 is the
  VOC "void" border, ignored in scoring; other values >= len(class_names) are ignored too.
- "coco": a COCO instances JSON. Images are matched by `file_name` (then by base name
  when that is unique). Categories map to vocabulary classes by name (case-insensitive,
  spaces/underscores/hyphens normalised, then ignoring punctuation). Instances are
  painted first-come (a pixel keeps the class of the first instance covering it, in
  annotation order), crowd regions included, as the released CLIP-DIY COCO-Object
  protocol does. Instances of categories with no vocabulary class are not painted: their
  pixels stay background (listed in `unmatched_categories`). Images with fewer than
  `min_foreground_pixels` (1,000) painted pixels are dropped from scoring (None).
- "hf-column": a label column of a Hugging Face dataset (`hf-column:NAME`); the caller
  supplies the column's value per image (`HFColumnGT.set_lookup`).
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from annotator.errors import AnnotatorError

__all__ = [
    "GT_FORMATS",
    "IGNORE_INDEX",
    "COCOInstancesGT",
    "GroundTruth",
    "GroundTruthError",
    "HFColumnGT",
    "VOCPngGT",
    "label_map_from_image",
    "label_map_from_value",
    "load_gt",
]

IGNORE_INDEX = 255
GT_FORMATS = ("voc-png", "coco", "hf-column")
HF_PREFIX = "hf-column:"
MIN_FOREGROUND_PIXELS = 1000


class GroundTruthError(AnnotatorError, ValueError):
    """Ground truth that cannot be read or does not fit the images; the message says why."""


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= IGNORE_INDEX else np.int32


def _check_size(labels: np.ndarray, size_hw: Sequence[int] | None, where: str) -> np.ndarray:
    if size_hw is not None and tuple(labels.shape) != (int(size_hw[0]), int(size_hw[1])):
        raise GroundTruthError(
            f"{where}: expected a label map of the image's size (height, width) = {tuple(size_hw)}, "
            f"received {labels.shape}"
        )
    return labels


def label_map_from_image(img: Image.Image, where: str = "label image") -> np.ndarray:
    """PIL label image -> (H, W) integer array of its raw indices, never via RGB.

    Modes P and L give uint8; I, I;16 give int32. Colour images (RGB, RGBA, ...) are
    refused: their colours would need a palette to be turned back into classes.
    """
    if img.mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        return np.array(img).astype(np.int32)
    raise GroundTruthError(
        f"{where}: expected a single-channel label image (mode P with a palette, L or I), "
        f"received mode {img.mode!r}; colour-coded masks are not supported"
    )


class GroundTruth:
    """Base of the readers: `labels_for(file_name, size_hw) -> np.ndarray | None`."""

    format: str = ""

    def __init__(self, class_names: Sequence[str]) -> None:
        names = list(class_names)
        if not names:
            raise GroundTruthError("class_names: expected at least the background class, received none")
        if len(names) > IGNORE_INDEX:
            raise GroundTruthError(
                f"class_names: scoring supports at most {IGNORE_INDEX} classes (label {IGNORE_INDEX} means ignore), "
                f"received {len(names)}"
            )
        self.class_names = tuple(names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels_for(self, file_name: str, size_hw: Sequence[int] | None = None) -> np.ndarray | None:
        """(H, W) label map (0 background, 255 ignore) for the image, or None (no GT / dropped).

        size_hw: the image's (height, width); when given, a ground truth of another size
        raises GroundTruthError.
        """
        raise NotImplementedError


# ----------------------------------------------------------------------------- VOC PNG


class VOCPngGT(GroundTruth):
    """A folder of palette PNG label maps (VOC `SegmentationClass` style)."""

    format = "voc-png"

    def __init__(self, gt_dir: str, class_names: Sequence[str], storage_options: dict | None = None) -> None:
        super().__init__(class_names)
        self.gt_dir = gt_dir.rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(gt_dir, **(storage_options or {}))
        if not self._fs.isdir(self._root):
            raise GroundTruthError(
                f"ground truth folder: expected an existing folder of PNG label maps, received {gt_dir!r}"
            )

    def candidates(self, file_name: str) -> list[str]:
        """Paths tried, in order: the file name with .png, then its stem at the folder root."""
        rel = file_name.replace("\\", "/").lstrip("/")
        stem, _ = posixpath.splitext(rel)
        base = posixpath.basename(stem)
        paths = [posixpath.join(self._root, f"{stem}.png"), posixpath.join(self._root, f"{base}.png")]
        return list(dict.fromkeys(paths))

    def labels_for(self, file_name: str, size_hw: Sequence[int] | None = None) -> np.ndarray | None:
        for path in self.candidates(file_name):
            try:
                with self._fs.open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    labels = label_map_from_image(img, where=path)
            except GroundTruthError:
                raise
            except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises for bad image data
                raise GroundTruthError(
                    f"{path}: expected a PNG label map, could not read it ({exc})"
                ) from None
            return _check_size(labels, size_hw, path)
        return None


# ----------------------------------------------------------------------------- COCO


def _name_keys(name: str) -> list[str]:
    """Match keys for a class name, strictest first."""
    lower = name.strip().lower()
    return list(dict.fromkeys([lower, re.sub(r"[\s_\-]+", " ", lower), re.sub(r"[^0-9a-z]+", "", lower)]))


class COCOInstancesGT(GroundTruth):
    """COCO instances JSON painted into semantic label maps (COCO-Object protocol).

    synonyms: optional extra names per class index (e.g. the vocabulary's synonyms),
    also tried when matching COCO category names.
    """

    format = "coco"

    def __init__(
        self,
        path: str,
        class_names: Sequence[str],
        *,
        min_foreground_pixels: int = MIN_FOREGROUND_PIXELS,
        synonyms: Sequence[Sequence[str]] | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__(class_names)
        from pycocotools.coco import COCO

        self.path = path
        self.min_foreground_pixels = int(min_foreground_pixels)
        try:
            with fsspec.open(path, "rb", **(storage_options or {})) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise GroundTruthError(
                f"COCO ground truth: expected an instances JSON file, {path!r} does not exist"
            ) from None
        except json.JSONDecodeError as exc:
            raise GroundTruthError(f"COCO ground truth {path!r}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
        ):
            raise GroundTruthError(
                f"COCO ground truth {path!r}: expected an object with 'images', 'annotations' and 'categories' lists"
            )
        self._coco = COCO()
        self._coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self._coco.createIndex()

        self._image_by_name: dict[str, int] = {}
        by_base: dict[str, list[int]] = {}
        for img in data["images"]:
            self._image_by_name[str(img["file_name"])] = img["id"]
            by_base.setdefault(posixpath.basename(str(img["file_name"])), []).append(img["id"])
        self._image_by_base = {b: ids[0] for b, ids in by_base.items() if len(ids) == 1}

        self.category_to_class, self.unmatched_categories = self._match_categories(
            data["categories"], synonyms
        )
        if not self.category_to_class:
            raise GroundTruthError(
                f"COCO ground truth {path!r}: none of its categories "
                f"{[c['name'] for c in data['categories']][:10]} matches a vocabulary class {list(self.class_names)[:10]}"
            )

    def _match_categories(
        self, categories: list[dict], synonyms: Sequence[Sequence[str]] | None
    ) -> tuple[dict[int, int], list[str]]:
        lookup: dict[str, int] = {}
        for level in range(3):  # all strict keys before any looser one
            for idx in range(1, self.num_classes):  # background is never a COCO category
                names = [self.class_names[idx], *(synonyms[idx] if synonyms and idx < len(synonyms) else ())]
                for name in names:
                    keys = _name_keys(name)
                    if level < len(keys):
                        lookup.setdefault(keys[level], idx)
        mapping: dict[int, int] = {}
        unmatched: list[str] = []
        for cat in categories:
            match = next((lookup[k] for k in _name_keys(str(cat["name"])) if k in lookup), None)
            if match is None:
                unmatched.append(str(cat["name"]))
            else:
                mapping[int(cat["id"])] = match
        return mapping, unmatched

    def image_id_for(self, file_name: str) -> int | None:
        """The COCO image id of `file_name` (exact name, else unique base name)."""
        if file_name in self._image_by_name:
            return self._image_by_name[file_name]
        base = posixpath.basename(file_name.replace("\\", "/"))
        return self._image_by_name.get(base, self._image_by_base.get(base))

    def labels_for(self, file_name: str, size_hw: Sequence[int] | None = None) -> np.ndarray | None:
        img_id = self.image_id_for(file_name)
        if img_id is None:
            return None
        info = self._coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        labels: np.ndarray = np.zeros((h, w), dtype=_label_dtype(self.num_classes))
        for ann in self._coco.imgToAnns.get(img_id, []):  # annotation order of the JSON
            cls = self.category_to_class.get(int(ann["category_id"]))
            seg = ann.get("segmentation")
            if cls is None or not seg:
                continue
            mask = self._coco.annToMask(ann).astype(bool)
            labels[mask & (labels == 0)] = cls  # first come: painted pixels keep their class
        if int(np.count_nonzero(labels)) < self.min_foreground_pixels:
            return None
        return _check_size(labels, size_hw, f"{self.path} image {info['file_name']!r}")


# ----------------------------------------------------------------------------- HF column


def label_map_from_value(value: Any, where: str = "label value") -> np.ndarray | None:
    """A dataset cell -> (H, W) label map: a PIL image, an array, PNG bytes, or a
    Hugging Face Image dict `{"bytes": ..., "path": ...}`. None stays None."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return label_map_from_image(value, where)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            with fsspec.open(value["path"], "rb") as f:
                value = f.read()
        else:
            return None
    if isinstance(value, (bytes, bytearray)):
        with Image.open(io.BytesIO(bytes(value))) as img:
            return label_map_from_image(img, where)
    arr = np.asarray(value)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise GroundTruthError(f"{where}: expected a 2-D integer label map, received {arr.dtype} {arr.shape}")
    return arr


class HFColumnGT(GroundTruth):
    """Labels from a Hugging Face dataset column (`hf-column:NAME`).

    The run supplies `lookup(file_name) -> cell value or None` (see `set_lookup`); cell
    values are converted by `label_map_from_value` with the same index semantics as
    voc-png (values are class indices, 255 ignored).
    """

    format = "hf-column"

    def __init__(
        self, column: str, class_names: Sequence[str], lookup: Callable[[str], Any] | None = None
    ) -> None:
        super().__init__(class_names)
        if not column:
            raise GroundTruthError(
                f"ground truth: expected '{HF_PREFIX}COLUMN' with a column name, received an empty name"
            )
        self.column = column
        self._lookup = lookup

    def set_lookup(self, lookup: Callable[[str], Any]) -> None:
        self._lookup = lookup

    def labels_for(self, file_name: str, size_hw: Sequence[int] | None = None) -> np.ndarray | None:
        if self._lookup is None:
            raise GroundTruthError(
                f"ground truth '{HF_PREFIX}{self.column}': the labels come from the column {self.column!r} of the "
                "Hugging Face dataset being annotated, but no dataset rows were supplied; use a Hugging Face source "
                "that has this column"
            )
        labels = label_map_from_value(
            self._lookup(file_name), where=f"column {self.column!r} of {file_name!r}"
        )
        return (
            None
            if labels is None
            else _check_size(labels, size_hw, f"column {self.column!r} of {file_name!r}")
        )


# ----------------------------------------------------------------------------- entry point


def load_gt(
    spec: str,
    gt_format: str | None,
    class_names: Sequence[str],
    *,
    storage_options: dict | None = None,
    min_foreground_pixels: int = MIN_FOREGROUND_PIXELS,
    synonyms: Sequence[Sequence[str]] | None = None,
) -> GroundTruth:
    """A ground-truth reader for `spec`.

    gt_format: one of GT_FORMATS, or None to detect: `hf-column:NAME` -> hf-column,
    a `.json` file -> coco, a folder -> voc-png.
    """
    if not isinstance(spec, str) or not spec:
        raise GroundTruthError(f"ground truth: expected a path, URL or '{HF_PREFIX}NAME', received {spec!r}")
    if gt_format is None:
        gt_format = _detect_format(spec, storage_options)
    if gt_format not in GT_FORMATS:
        raise GroundTruthError(f"ground truth format: expected one of {GT_FORMATS}, received {gt_format!r}")
    if gt_format == "hf-column":
        return HFColumnGT(spec.removeprefix(HF_PREFIX), class_names)
    if gt_format == "coco":
        return COCOInstancesGT(
            spec,
            class_names,
            min_foreground_pixels=min_foreground_pixels,
            synonyms=synonyms,
            storage_options=storage_options,
        )
    return VOCPngGT(spec, class_names, storage_options=storage_options)


def _detect_format(spec: str, storage_options: dict | None) -> str:
    if spec.startswith(HF_PREFIX):
        return "hf-column"
    fs, path = fsspec.core.url_to_fs(spec, **(storage_options or {}))
    if path.lower().endswith(".json") and fs.isfile(path):
        return "coco"
    if fs.isdir(path):
        return "voc-png"
    raise GroundTruthError(
        f"ground truth {spec!r}: expected a COCO instances .json file, a folder of PNG label maps, or "
        f"'{HF_PREFIX}NAME'; it is none of these (does it exist?)"
    )
