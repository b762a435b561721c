"""Exporters: a run's Parquet output -> files the labeling tools import.

Registry (``EXPORTERS``), name -> ``export(output, to, options) -> ExportResult``:

- ``coco``: COCO instances JSON with compressed-RLE masks (CVAT "COCO 1.0", FiftyOne,
  datumaro, pycocotools), ``{to}/annotations/instances_default.json`` (+ ``coco.zip``).
- ``labelstudio``: Label Studio task JSON with brush-label predictions, plus the
  matching ``labeling_config.xml``.
- ``masks``: one 8-bit VOC-palette PNG label map per image (+ ``labels.txt``).

Every exporter streams the rows (``parts.iter_rows``) and writes its output piece by
piece: memory does not grow with the number of images. ``output`` is the run's OUTPUT
folder (local path or fsspec URL): ``OUTPUT/annotations.parquet`` is read when it
exists (the reducer's merge), else every ``OUTPUT/parts/part-*.parquet``.

The helpers below (input resolution, class selection, annotation filtering, image
score) are shared by the exporters and by :mod:`annotator.report`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from annotator import parts, records
from annotator.sources import redact_uri

__all__ = [
    "DEFAULT_LS_IMAGE_URL_PREFIX",
    "EXPORTERS",
    "AnnotationFilter",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "UnknownClassError",
    "UnknownFormatError",
    "as_record",
    "export",
    "image_score",
    "iter_records",
    "join_path",
    "parse_classes",
    "read_metadata",
    "resolve_inputs",
    "select_class_ids",
    "strip_credentials",
]

DEFAULT_LS_IMAGE_URL_PREFIX = "/data/local-files/?d="


class ExportError(ValueError):
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
        storage_options: fsspec options to read ``output`` and write ``to``.
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
    storage_options: Mapping[str, Any] | None = None

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
    """

    format: str
    paths: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    files_written: int | None = None

    def summary(self) -> str:
        n = len(self.paths) if self.files_written is None else self.files_written
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"{self.format}: wrote {n} file{'' if n == 1 else 's'} ({counts})"


# --------------------------------------------------------------------------- inputs


def join_path(base: str, *parts: str) -> str:
    """Join '/'-separated path pieces onto a local path or URL (no normalisation)."""
    out = base.rstrip("/") if base not in ("/", "") else base
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}" if out and not out.endswith("/") else f"{out}{part}"
    return out


def resolve_inputs(output: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The Parquet files holding a run's rows.

    Returns ``[OUTPUT/annotations.parquet]`` when the reducer has written it, else the
    sorted ``OUTPUT/parts/part-*.parquet``. Raises :class:`ExportError` when neither exists.
    """

    fs, _ = fsspec.core.url_to_fs(output, **dict(storage_options or {}))
    merged = join_path(output, "annotations.parquet")
    if fs.exists(merged):
        return [merged]
    found = parts.list_parts(output, storage_options=dict(storage_options) if storage_options else None)
    if not found:
        raise ExportError(
            f"no annotations found in {strip_credentials(output)!r}: expected "
            "annotations.parquet or parts/part-*.parquet (is this a run OUTPUT folder?)"
        )
    return found


def read_metadata(paths: list[str], storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run metadata (the ``annotator`` Parquet key) of the first input file.

    Validates the vocabulary: a list of strings whose index 0 is ``"background"``.
    """

    meta = parts.read_part_metadata(paths[0], storage_options=dict(storage_options) if storage_options else None)
    vocabulary = meta.get("vocabulary")
    if (
        not isinstance(vocabulary, list)
        or len(vocabulary) < 1
        or not all(isinstance(n, str) for n in vocabulary)
        or vocabulary[0] != "background"
    ):
        raise ExportError(
            "run metadata must hold 'vocabulary': a list of class names with index 0 = "
            f"'background'; got {vocabulary!r:.200} in {strip_credentials(paths[0])!r}"
        )
    return dict(meta)


def iter_records(
    paths: list[str],
    storage_options: Mapping[str, Any] | None = None,
    columns: list[str] | None = None,
) -> Iterator[Any]:
    """Stream :class:`annotator.records.ImageRecord` objects from Parquet files."""

    so = dict(storage_options) if storage_options else None
    for row in parts.iter_rows(paths, storage_options=so, columns=columns):
        yield as_record(row)


def as_record(row: Any) -> Any:
    """A Parquet row dict (or an ImageRecord) -> :class:`annotator.records.ImageRecord`."""

    if isinstance(row, records.ImageRecord):
        return row
    if isinstance(row, Mapping):
        return records.ImageRecord.from_row(dict(row))
    raise ExportError(f"expected a row dict or an ImageRecord, got {type(row).__name__}")


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
    wanted = [c for c in classes]
    unknown = [c for c in wanted if c not in exportable]
    if unknown:
        raise UnknownClassError(
            f"unknown class name(s) {unknown!r}; valid names: {sorted(exportable)!r}"
        )
    if not wanted:
        raise UnknownClassError(f"classes is empty; valid names: {sorted(exportable)!r}")
    return frozenset(exportable[c] for c in wanted)


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``"cat,dog, traffic light"`` -> ``("cat", "dog", "traffic light")``; None/"" -> None."""
    if text is None or not text.strip():
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


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


# ------------------------------------------------------------------------ scoring


def image_score(record: Any) -> float | None:
    """One confidence number per image, in [0, 1], or None for an error row.

    The area-weighted mean of the annotation scores (= the mean confidence over the
    foreground pixels); for an image without annotations, the mean of its confidence
    map (``confidence_png``); None when neither is available.
    """
    if getattr(record, "status", "ok") != "ok":
        return None
    annotations = list(record.annotations or [])
    total_area = sum(int(a.area) for a in annotations)
    if total_area > 0:
        return float(sum(float(a.score) * int(a.area) for a in annotations) / total_area)
    if record.confidence_png:

        conf = records.decode_confidence_png(record.confidence_png)
        return float(conf.mean()) if conf.size else None
    return None


_CREDENTIALS_RE = re.compile(r"(?<=://)[^/@\s?#]+@")
_URL_TOKEN_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def strip_credentials(text: str) -> str:
    """``text`` with ``user:pass@`` removed from every URL in it, and secret query
    values (signatures, tokens) redacted by :func:`annotator.sources.redact_uri`."""
    text = _URL_TOKEN_RE.sub(lambda m: redact_uri(m.group(0)), str(text))
    return _CREDENTIALS_RE.sub("", text)


# ----------------------------------------------------------------------- registry

ExportFn = Callable[[str, str, ExportOptions], ExportResult]

# Imported last: the format modules use the helpers above.
from annotator.export import coco as _coco  # noqa: E402
from annotator.export import labelstudio as _labelstudio  # noqa: E402
from annotator.export import masks as _masks  # noqa: E402

EXPORTERS: dict[str, ExportFn] = {
    "coco": _coco.export,
    "labelstudio": _labelstudio.export,
    "masks": _masks.export,
}


def export(
    output: str, format: str, to: str | None = None, options: ExportOptions | None = None
) -> ExportResult:
    """Run the exporter ``format`` on the run folder ``output``.

    ``to`` defaults to ``OUTPUT/exports/FORMAT``.
    """
    if format not in EXPORTERS:
        raise UnknownFormatError(
            f"unknown export format {format!r}; available formats: {', '.join(sorted(EXPORTERS))}"
        )
    target = to if to else join_path(output, "exports", format)
    return EXPORTERS[format](output, target, options or ExportOptions())
