"""Typed per-image records and their encoding: ``ImageRecord``/``Annotation``
(:mod:`~annotator.records.types`), prediction -> record and back
(:mod:`~annotator.records.encode`), the part schema (:mod:`~annotator.records.schema`)."""

from annotator.core.stats import class_stats_numpy
from annotator.records.encode import (
    annotations_from_labels,
    decode_confidence_png,
    decode_mask,
    encode_confidence_png,
    encode_mask,
    labels_from_annotations,
    ok_record,
)
from annotator.records.types import (
    ERROR_MAX_LENGTH,
    STATUSES,
    Annotation,
    ImageRecord,
    RecordError,
    error_reason,
    error_record,
)

__all__ = [
    "ERROR_MAX_LENGTH",
    "STATUSES",
    "Annotation",
    "ImageRecord",
    "RecordError",
    "annotations_from_labels",
    "class_stats_numpy",
    "decode_confidence_png",
    "decode_mask",
    "encode_confidence_png",
    "encode_mask",
    "error_reason",
    "error_record",
    "labels_from_annotations",
    "ok_record",
]
