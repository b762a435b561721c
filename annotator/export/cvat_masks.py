"""CVAT's "Segmentation mask 1.1" (``--format cvat-masks``): PNG colour masks and
``labelmap.txt``, which CVAT imports into a task (and datumaro reads as
``voc_segmentation``).

Layout written by :func:`export` (zip the folder's contents to upload it to CVAT)::

    {to}/labelmap.txt                         "name:r,g,b::" per label, background first
    {to}/ImageSets/Segmentation/default.txt   one image per line: its file name without extension
    {to}/SegmentationClass/<stem>.png         RGB: each pixel the colour of its class
    {to}/SegmentationObject/<stem>.png        with --instances: each object (an 8-connected
                                              component) in its own VOC palette colour

Colours are the review report's (VOC palette, then a stable hue walk), made unique.
Annotations removed by ``--classes``/``--min-area``/``--min-score`` become background;
error rows are skipped. CVAT matches masks to the task's images by name, so the stems
are the images' file names without extension (sanitised as for the masks export).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import fsspec
import numpy as np
from PIL import Image

from annotator.export.common import ExportError, ExportOptions, ExportResult, ExportRun
from annotator.export.masks import ExportFolder, safe_relative_path
from annotator.records.encode import decode_mask
from annotator.review.palette import class_colors, voc_palette
from annotator.storage.layout import join_url

__all__ = ["LABELMAP_NAME", "SUBSET_LIST", "export", "label_colours"]

LABELMAP_NAME = "labelmap.txt"
SUBSET_LIST = "ImageSets/Segmentation/default.txt"
#: Objects per image that SegmentationObject's VOC palette can tell apart (0 = none, 255 = void).
#: CVAT and datumaro read the object PNG as 8 bits (``load_image(..., dtype=uint8)`` with
#: VOC's 256-colour palette), so a 16-bit object map is no way out: an image with more
#: objects keeps its largest 254 in SegmentationObject (all stay in SegmentationClass),
#: and the export warns, naming the images.
MAX_OBJECTS = 254
_NAMED = 5


def label_colours(classes: int | Sequence[str]) -> list[tuple[int, int, int]]:
    """One distinct RGB colour per class index (0 = background = black); ``classes``: the
    class names (a class named after a colour gets that colour, as in the report) or
    their number."""
    out, used = [], set()
    for colour in class_colors(classes):
        r, g, b = colour
        while (r, g, b) in used:  # the hue walk may meet a VOC colour: nudge it
            b = (b + 1) % 256
            g = (g + (b == 0)) % 256
        used.add((r, g, b))
        out.append((r, g, b))
    return out


def _png(array: np.ndarray, mode: str) -> bytes:
    """(H, W, 3) uint8 as an RGB PNG, or (H, W) uint8 indices as a VOC-palette PNG ("P")."""
    buf = io.BytesIO()
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if mode == "P":
        h, w = array.shape
        img = Image.frombytes("P", (w, h), array.tobytes())
        img.putpalette(voc_palette(256).reshape(-1).tolist())
    else:
        img = Image.fromarray(array, mode="RGB")
    img.save(buf, format="PNG")
    return buf.getvalue()


def export(output: str, to: str, options: ExportOptions) -> ExportResult:
    """Write a run folder as CVAT "Segmentation mask 1.1" under ``to``."""
    run = ExportRun.open(output, options)
    class_names, keep = run.class_names, run.keep
    bad = [n for n in class_names if ":" in n or "\n" in n]
    if bad:
        raise ExportError(f"labelmap.txt separates fields with ':', so a class name cannot hold one; got {bad[:3]}")
    exported = [0, *sorted(keep.class_ids)]
    colours = label_colours(class_names)
    lut = np.zeros((len(class_names), 3), np.uint8)  # a class left out is background (black)
    for cid in exported:
        lut[cid] = colours[cid]
    split = run.split if options.instances else None
    folder = ExportFolder(to, options.storage_options)
    with fsspec.open(join_url(to, LABELMAP_NAME), "w", encoding="utf-8", **folder.storage_options) as fp:
        fp.write("# label:color_rgb:parts:actions\n")
        for cid in exported:
            r, g, b = lut[cid]
            fp.write(f"{class_names[cid]}:{r},{g},{b}::\n")
    counts = {"images": 0, "annotations": 0, "objects": 0, "skipped_error_rows": 0, "renamed": 0,
              "images_with_too_many_objects": 0, "objects_left_out": 0}
    crowded: list[str] = []

    with folder.fs.open(folder.path(SUBSET_LIST), "wb") as subset:
        for record in run.records():
            if record.status != "ok":
                counts["skipped_error_rows"] += 1
                continue
            wanted = safe_relative_path(record.file_name, "")
            stem = folder.take(wanted, record.image_id)
            counts["renamed"] += stem != wanted
            kept = keep.apply(split(record) if split is not None else record.annotations)
            labels = np.zeros((record.height, record.width), np.int64)
            objects = np.zeros((record.height, record.width), np.uint8)
            for k, a in enumerate(kept, start=1):
                mask = decode_mask(a.segmentation)
                labels[mask] = a.category_id
                if k <= MAX_OBJECTS:
                    objects[mask] = k
            folder.write(f"SegmentationClass/{stem}.png", _png(lut[labels], "RGB"))
            if split is not None:
                if len(kept) > MAX_OBJECTS:
                    counts["images_with_too_many_objects"] += 1
                    counts["objects_left_out"] += len(kept) - MAX_OBJECTS
                    if len(crowded) < _NAMED:
                        crowded.append(f"{record.file_name} ({len(kept)} objects)")
                folder.write(f"SegmentationObject/{stem}.png", _png(objects, "P"))
                counts["objects"] += min(len(kept), MAX_OBJECTS)
            subset.write((stem + "\n").encode("utf-8"))
            counts["images"] += 1
            counts["annotations"] += len(kept)
    counts.update(run.counts())
    files = 2 + counts["images"] * (2 if split is not None else 1)
    warnings = []
    if counts["images_with_too_many_objects"]:
        n = counts["images_with_too_many_objects"]
        warnings.append(
            f"{n} image{'s' if n > 1 else ''} hold more than {MAX_OBJECTS} objects, which the 8-bit SegmentationObject "
            f"of 'Segmentation mask 1.1' cannot tell apart: {counts['objects_left_out']} of the smallest objects were "
            f"left out of SegmentationObject (they stay in SegmentationClass): {', '.join(crowded)}"
            f"{' ...' if n > len(crowded) else ''}; --format coco --instances keeps every object")
    return ExportResult(format="cvat-masks", paths=[join_url(to, LABELMAP_NAME), to], counts=counts,
                        files_written=files, warnings=warnings)
