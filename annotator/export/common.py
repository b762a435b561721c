"""Helpers shared by the exporters: options and results, class selection, annotation
filtering, row -> record. Pure: reading a run's files is :mod:`annotator.storage.results`."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from annotator import records
from annotator.export.shapes import InstanceSplitter
from annotator.storage.results import RunOutputError

__all__ = [
    "DEFAULT_LS_IMAGE_URL_PREFIX",
    "AnnotationFilter",
    "ExportError",
    "ExportRun",
    "instance_class_ids",
    "ExportOptions",
    "ExportResult",
    "UnknownClassError",
    "UnknownFormatError",
    "as_record",
    "parse_classes",
    "select_class_ids",
]

DEFAULT_LS_IMAGE_URL_PREFIX = "/data/local-files/?d="
#: ``yolo_images``: symlinks to a local source (copies otherwise), copies, or no images.
YOLO_IMAGE_MODES = ("link", "copy", "none")
#: ``hf_images``: the image column as bytes (an ``Image()``), or the source's path.
HF_IMAGE_MODES = ("bytes", "path")


class ExportError(RunOutputError):
    """Bad export input or option (the message says what was expected and received)."""


class UnknownFormatError(ExportError):
    """An export format name that is not in :data:`EXPORTERS`."""


class UnknownClassError(ExportError):
    """A ``--classes`` name that is not in the run's vocabulary."""


@dataclass(frozen=True)
class ExportOptions:
    """Options of every exporter (each exporter reads the ones it uses).

    Attributes:
        iscrowd: COCO ``iscrowd`` value written on every annotation, 0 or 1.
        min_area: drop annotations whose mask has fewer pixels than this.
        min_score: drop annotations whose score (mean confidence, [0, 1]) is below this.
        classes: keep only these class names (None = all); background is never exported.
        images_root: COCO: prefix joined before every ``file_name`` ("" = none).
        zip: COCO: also write ``{to}/coco.zip`` (``annotations/instances_default.json``).
        ls_from_name: Label Studio: the ``<BrushLabels name=...>`` of the project.
        ls_to_name: Label Studio: the ``<Image name=...>`` of the project.
        image_url_prefix: Label Studio: prefix of ``data.image`` before the file name.
        model_version: Label Studio: ``predictions[].model_version`` (None = from metadata).
        confidence: masks: also write ``{stem}_conf.png`` (8-bit, 255 * confidence).
        instances: split class masks into 8-connected instances (each with its own bbox,
            area and score); ``min_area``/``min_score`` then apply per instance.
        instance_classes: with ``instances``, only these classes ("things"; None = every
            exported class); the others stay one union mask per image ("stuff").
        polygons: COCO: ``segmentation`` as polygons instead of RLE.
        polygon_tolerance: pixels of simplification for polygons (COCO, YOLO); 0 = none.
        yolo_images: YOLO: ``link`` (symlinks to local source images, copies otherwise),
            ``copy`` or ``none`` (labels and data.yaml only).
        val_fraction: YOLO: the seeded fraction of images put in ``val``, in [0, 1).
        split_seed: YOLO: the seed of that split.
        hf_images: hf: the ``image`` column as ``bytes`` (an ``Image()``) or the source's ``path``.
        image_storage_options: fsspec options to read the source images (None: ``storage_options``).
        storage_options: fsspec options to read ``output`` and write ``to``.
        partial: export a run that is not complete (a listed image without a row, a
            run still writing); the summary says how many images are missing.
        dataset: fiftyone: the name of the FiftyOne dataset to create.
        overwrite_dataset: fiftyone: replace an existing dataset of that name.
        semantic: fiftyone: one label map per image instead of one detection per mask.

    Which formats honour which field is declared in :data:`annotator.export.EXPORTERS`
    (:mod:`annotator.export.formats`).
    """

    iscrowd: int = 0
    min_area: int = 0
    min_score: float = 0.0
    classes: tuple[str, ...] | None = None
    images_root: str = ""
    zip: bool = False
    ls_from_name: str = "label"
    ls_to_name: str = "image"
    image_url_prefix: str = DEFAULT_LS_IMAGE_URL_PREFIX
    model_version: str | None = None
    confidence: bool = False
    instances: bool = False
    instance_classes: tuple[str, ...] | None = None
    polygons: bool = False
    polygon_tolerance: float = 1.0
    yolo_images: str = "link"
    val_fraction: float = 0.0
    split_seed: int = 0
    hf_images: str = "bytes"
    image_storage_options: Mapping[str, Any] | None = None
    storage_options: Mapping[str, Any] | None = None
    partial: bool = False
    dataset: str | None = None
    overwrite_dataset: bool = False
    semantic: bool = False

    def __post_init__(self) -> None:
        if self.iscrowd not in (0, 1):
            raise ExportError(f"iscrowd must be 0 or 1, got {self.iscrowd!r}")
        if self.min_area < 0:
            raise ExportError(f"min_area must be >= 0 pixels, got {self.min_area!r}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ExportError(f"min_score must lie in [0, 1], got {self.min_score!r}")
        if isinstance(self.classes, str):
            raise ExportError("classes must be a sequence of class names, got a single string")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if isinstance(self.instance_classes, str):
            raise ExportError("instance_classes must be a sequence of class names, got a single string")
        if self.instance_classes is not None:
            object.__setattr__(self, "instance_classes", tuple(self.instance_classes))
            if not self.instances:
                raise ExportError("instance_classes needs instances=True (--instances CLASSES)")
        if not (isinstance(self.polygon_tolerance, (int, float)) and self.polygon_tolerance >= 0):
            raise ExportError(f"polygon_tolerance must be a number of pixels >= 0, got {self.polygon_tolerance!r}")
        if self.yolo_images not in YOLO_IMAGE_MODES:
            raise ExportError(f"yolo_images: expected one of {', '.join(YOLO_IMAGE_MODES)}, got {self.yolo_images!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ExportError(f"val_fraction: expected a fraction in [0, 1), got {self.val_fraction!r}")
        if self.hf_images not in HF_IMAGE_MODES:
            raise ExportError(f"hf_images: expected one of {', '.join(HF_IMAGE_MODES)}, got {self.hf_images!r}")
        for name in ("ls_from_name", "ls_to_name"):
            if not getattr(self, name):
                raise ExportError(f"{name} must be a non-empty string")

    def replace(self, **changes: Any) -> ExportOptions:
        return dataclasses.replace(self, **changes)


@dataclass
class ExportResult:
    """What an exporter wrote.

    Attributes:
        format: the registry name.
        paths: the main files written (URLs or local paths), main file first; for
            per-image formats the folder they were written to (not every file).
        counts: e.g. ``images``, ``annotations``, ``skipped_error_rows``, ``filtered_*``.
        files_written: how many files the export wrote in all (None: ``len(paths)``).
        warnings: one line each, for the user (printed as ``warning: ...``).
        missing_rows: with ``partial``: how many listed images had no row (None: complete).
        listed_images: how many images the run listed (None: unknown).
    """

    format: str
    paths: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    files_written: int | None = None
    warnings: list[str] = field(default_factory=list)
    missing_rows: int | None = None
    listed_images: int | None = None

    def headline(self) -> str:
        """What was written, with the counts (the summary line without its partial note)."""
        n = len(self.paths) if self.files_written is None else self.files_written
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"{self.format}: wrote {n} file{'' if n == 1 else 's'} ({counts})"

    def summary(self) -> str:
        line = self.headline()
        if self.missing_rows:
            of = f" of {self.listed_images}" if self.listed_images is not None else ""
            line += f"; partial: {self.missing_rows}{of} listed images have no row"
        return line


# ------------------------------------------------------------------ class selection


def select_class_ids(class_names: list[str], classes: Iterable[str] | None) -> frozenset[int]:
    """Vocabulary indices (>= 1) to export.

    Args:
        class_names: the vocabulary, index 0 = background.
        classes: names to keep, or None for every class but background.

    Raises:
        UnknownClassError: a name is not in the vocabulary (the message lists valid ones).
    """
    exportable = {name: i for i, name in enumerate(class_names) if i >= 1}
    if classes is None:
        return frozenset(exportable.values())
    wanted = _rejoin(list(classes), exportable)
    unknown = [c for c in wanted if c not in exportable]
    if unknown:
        raise UnknownClassError(
            f"unknown class name(s) {unknown!r}; valid names: {sorted(exportable)!r}"
        )
    if not wanted:
        raise UnknownClassError(f"classes is empty; valid names: {sorted(exportable)!r}")
    return frozenset(exportable[c] for c in wanted)


def _rejoin(pieces: list[str], exportable: dict[str, int]) -> list[str]:
    """Names split at commas that belong to a class name with a comma (``salt, pepper``)
    are joined again: the longest run of pieces that forms a class name wins."""
    out, i = [], 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):
            for sep in (", ", ","):
                joined = sep.join(pieces[i:j])
                if joined in exportable:
                    out.append(joined)
                    i = j
                    break
            else:
                continue
            break
        else:
            out.append(pieces[i])
            i += 1
    return out


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``"cat,dog, traffic light"`` -> ``("cat", "dog", "traffic light")``; None/"" -> None.

    A class whose name holds a comma is given in double quotes (``cat,"salt, pepper"``,
    CSV rules) or as it is: :func:`select_class_ids` joins the pieces of a known name.
    """
    if text is None or not text.strip():
        return None
    (row,) = list(csv.reader([text], skipinitialspace=True)) or [[]]
    return tuple(name.strip() for name in row if name.strip())


@dataclass
class AnnotationFilter:
    """Keeps annotations by class, area and score, and counts what it dropped.

    Attributes:
        class_ids: vocabulary indices kept.
        min_area: minimum mask pixel count kept.
        min_score: minimum score kept, in [0, 1].
    """

    class_ids: frozenset[int]
    min_area: int = 0
    min_score: float = 0.0
    filtered_class: int = 0
    filtered_area: int = 0
    filtered_score: int = 0

    @classmethod
    def from_options(cls, class_names: list[str], options: ExportOptions) -> AnnotationFilter:
        return cls(
            class_ids=select_class_ids(class_names, options.classes),
            min_area=options.min_area,
            min_score=options.min_score,
        )

    def keep(self, annotation: Any) -> bool:
        if annotation.category_id not in self.class_ids:
            self.filtered_class += 1
            return False
        if annotation.area < self.min_area:
            self.filtered_area += 1
            return False
        if annotation.score < self.min_score:
            self.filtered_score += 1
            return False
        return True

    def apply(self, annotations: Iterable[Any]) -> list[Any]:
        return [a for a in annotations if self.keep(a)]

    def counts(self) -> dict[str, int]:
        return {
            "filtered_class": self.filtered_class,
            "filtered_area": self.filtered_area,
            "filtered_score": self.filtered_score,
        }


def instance_class_ids(class_names: list[str], options: ExportOptions, exported_ids: frozenset[int]) -> frozenset[int]:
    """The classes ``--instances`` splits into objects: ``instance_classes`` (None: every
    class), among the ``exported_ids`` (a class left out by ``--classes`` is never split);
    none without ``options.instances``."""
    if not options.instances:
        return frozenset()
    return select_class_ids(class_names, options.instance_classes) & exported_ids


@dataclass
class ExportRun:
    """A run folder opened for an exporter: its parts (or merged file), metadata and
    vocabulary, and the options' annotation filter and instance splitter."""

    paths: list[str]
    metadata: dict
    class_names: list[str]
    keep: AnnotationFilter
    split: InstanceSplitter
    storage_options: dict | None

    @classmethod
    def open(cls, output: str, options: ExportOptions, *, split_every_class: bool = False) -> ExportRun:
        """``split_every_class``: every exported class is split into objects (YOLO),
        whatever ``options.instances`` says."""
        from annotator.storage.results import read_metadata, resolve_inputs

        paths = resolve_inputs(output, options.storage_options)
        metadata = read_metadata(paths, options.storage_options)
        class_names = list(metadata["vocabulary"])
        keep = AnnotationFilter.from_options(class_names, options)
        split = InstanceSplitter(keep.class_ids if split_every_class
                                 else instance_class_ids(class_names, options, keep.class_ids))
        so = dict(options.storage_options) if options.storage_options else None
        return cls(paths, metadata, class_names, keep, split, so)

    def records(self):
        """The run's records, streamed (``parts.iter_records``)."""
        from annotator.storage import parts

        return parts.iter_records(self.paths, self.storage_options)

    def counts(self) -> dict[str, int]:
        """The filter's and the splitter's counts, for the export's summary."""
        return {**self.keep.counts(), **self.split.counts()}


def as_record(row: Any) -> Any:
    """A Parquet row dict (or an ImageRecord) -> :class:`annotator.records.types.ImageRecord`."""

    if isinstance(row, records.ImageRecord):
        return row
    if isinstance(row, Mapping):
        return records.ImageRecord.from_row(dict(row))
    raise ExportError(f"expected a row dict or an ImageRecord, got {type(row).__name__}")
