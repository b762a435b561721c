"""The output schemas: JSON Schema files under `schemas/` and the Arrow schema of a part.

The JSON Schemas are the language-neutral contract (`schemas/part.schema.json` for a
Parquet row, `manifest.schema.json`, `metrics.schema.json`). They are looked up in the
repository's top-level `schemas/` folder and, for an installed package, in
`annotator/schemas/`. `PART_ARROW_SCHEMA` is the same row layout as an Arrow schema; a
test checks that both name the same columns and nested fields with the same
nullability, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
from pathlib import Path

import pyarrow as pa

from annotator.errors import AnnotatorError

__all__ = [
    "ANNOTATION_ARROW_TYPE",
    "PART_ARROW_SCHEMA",
    "SchemaValidationError",
    "load_schema",
    "schema_dirs",
    "validate",
    "validate_row",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # annotator/


class SchemaValidationError(AnnotatorError, ValueError):
    """A document does not match its JSON Schema; the message names the field and the problem."""


def schema_dirs() -> list[Path]:
    """Folders searched for `*.schema.json`, in order: repository `schemas/`, then `annotator/schemas/`."""
    return [_PACKAGE_DIR.parent / "schemas", _PACKAGE_DIR / "schemas"]


@functools.cache
def _load_schema_cached(name: str) -> dict:
    file_name = name if name.endswith(".json") else f"{name}.schema.json"
    tried = []
    for folder in schema_dirs():
        path = folder / file_name
        tried.append(str(path))
        if path.is_file():
            with path.open("r", encoding="utf-8") as f:
                return json.load(f)
    raise FileNotFoundError(
        f"JSON Schema {name!r}: expected the file {file_name} in one of {tried}; none exists"
    )


def load_schema(name: str) -> dict:
    """Load a JSON Schema by short name (`"part"` -> `part.schema.json`) or file name.

    Returns a fresh copy each call (callers may modify it).
    """
    return copy.deepcopy(_load_schema_cached(name))


@functools.cache
def _validator(name: str):
    import jsonschema

    schema = _load_schema_cached(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(document: object, schema_name: str) -> None:
    """Validate a JSON-like document against `schemas/{schema_name}.schema.json`.

    Raises SchemaValidationError naming the first failing field (the deepest, most
    relevant error, as `jsonschema.exceptions.best_match` picks it).
    """
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema_name).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "<root>"
        raise SchemaValidationError(f"{schema_name} schema, at {where}: {error.message}")


def validate_row(row: dict) -> None:
    """Validate one part row (as `ImageRecord.to_row()` gives it) against the part schema.

    `confidence_png` is binary in Parquet and base64 text in JSON: bytes are validated
    as their base64 text.
    """
    if not isinstance(row, dict):
        raise SchemaValidationError(f"part schema: expected a row dict, received {type(row).__name__}")
    doc = dict(row)
    png = doc.get("confidence_png")
    if isinstance(png, (bytes, bytearray, memoryview)):
        doc["confidence_png"] = base64.b64encode(bytes(png)).decode("ascii")
    validate(doc, "part")


# Arrow layout of a part row. Non-nullable fields are the ones the JSON Schema does not
# allow to be null. List children are named "element", as Parquet writes them, so a
# schema read back from a file compares equal.
SEGMENTATION_ARROW_TYPE = pa.struct(
    [
        pa.field("size", pa.list_(pa.field("element", pa.int32(), nullable=False)), nullable=False),
        pa.field("counts", pa.string(), nullable=False),
    ]
)
ANNOTATION_ARROW_TYPE = pa.struct(
    [
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("category_name", pa.string(), nullable=False),
        pa.field("segmentation", SEGMENTATION_ARROW_TYPE, nullable=False),
        pa.field("bbox", pa.list_(pa.field("element", pa.float64(), nullable=False)), nullable=False),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)
PART_ARROW_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field(
            "annotations",
            pa.list_(pa.field("element", ANNOTATION_ARROW_TYPE, nullable=False)),
            nullable=False,
        ),
        pa.field("confidence_png", pa.binary(), nullable=True),
    ]
)
