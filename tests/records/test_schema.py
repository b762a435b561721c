from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from annotator import records
from annotator.records import error_record, ok_record, schema
from annotator.records.schema import (
    PART_ARROW_SCHEMA,
    SchemaValidationError,
    load_schema,
    validate,
    validate_row,
)


@dataclass
class Ref:
    image_id: int
    file_name: str
    uri: str


def _ok_row() -> dict:
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 2:5] = 1
    labels[4:, 6:] = 2
    return ok_record(
        Ref(1, "a.jpg", "/d/a.jpg"), labels, np.full((6, 8), 0.6, np.float32), ["background", "a", "b"]
    ).to_row()


def test_load_schema_by_short_and_file_name():
    part = load_schema("part")
    assert part["title"] == "annotator part row"
    assert load_schema("part.schema.json") == part
    part["title"] = "changed"
    assert load_schema("part")["title"] == "annotator part row"  # callers get copies


def test_load_schema_missing_names_the_folders():
    with pytest.raises(FileNotFoundError, match="nope.schema.json"):
        load_schema("nope")


def test_schema_dirs_cover_repo_and_installed_copy():
    dirs = schema.schema_dirs()
    assert dirs[0].name == "schemas" and dirs[0].parent == dirs[1].parent.parent
    assert dirs[1].parent.name == "annotator"


@pytest.mark.parametrize("name", ["part", "manifest", "metrics"])
def test_schemas_are_valid_json_schema(name):
    import jsonschema

    s = load_schema(name)
    jsonschema.validators.validator_for(s).check_schema(s)


def test_ok_and_error_rows_validate():
    validate_row(_ok_row())
    validate_row(error_record(Ref(2, "b.jpg", "/d/b.jpg"), "decode-failed", "truncated").to_row())


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda r: r.update(status="done"), "status"),
        (lambda r: r.update(image_id=0), "image_id"),
        (lambda r: r.update(extra=1), "<root>"),
        (lambda r: r["annotations"][0].update(category_id=0), "annotations/0/category_id"),
        (lambda r: r["annotations"][0]["segmentation"].update(size=[6]), "annotations/0/segmentation/size"),
        (lambda r: r["annotations"][0].update(bbox=[0, 0, 1]), "annotations/0/bbox"),
        (lambda r: r["annotations"][0].update(score=2.0), "annotations/0/score"),
    ],
)
def test_invalid_rows_name_the_field(mutate, where):
    row = _ok_row()
    mutate(row)
    with pytest.raises(SchemaValidationError, match=where):
        validate_row(row)


def test_binary_png_validated_as_base64_and_row_untouched():
    row = _ok_row()
    png = row["confidence_png"]
    validate_row(row)
    assert row["confidence_png"] is png  # the caller's row is not modified
    as_json = dict(row, confidence_png=base64.b64encode(png).decode("ascii"))
    validate_row(as_json)


def test_error_max_length_matches_schema():
    assert load_schema("part")["properties"]["error"]["maxLength"] == records.ERROR_MAX_LENGTH


def _json_nullable(prop: dict) -> bool:
    t = prop.get("type")
    return isinstance(t, list) and "null" in t


def _check_struct_matches(arrow_fields: list[pa.Field], json_obj: dict, where: str) -> None:
    props = json_obj["properties"]
    assert [f.name for f in arrow_fields] == list(props), f"{where}: columns differ"
    assert set(json_obj["required"]) == set(props), f"{where}: every column is required"
    for f in arrow_fields:
        assert f.nullable == _json_nullable(props[f.name]), f"{where}.{f.name}: nullability differs"


def test_arrow_schema_and_json_schema_name_the_same_fields():
    part = load_schema("part")
    _check_struct_matches(list(PART_ARROW_SCHEMA), part, "row")

    ann_list = PART_ARROW_SCHEMA.field("annotations").type
    assert pa.types.is_list(ann_list) and not ann_list.value_field.nullable
    ann_struct = ann_list.value_type
    ann_json = part["properties"]["annotations"]["items"]
    _check_struct_matches(list(ann_struct), ann_json, "annotation")

    seg_struct = ann_struct.field("segmentation").type
    _check_struct_matches(list(seg_struct), ann_json["properties"]["segmentation"], "segmentation")

    # array-typed JSON fields are Arrow lists, integer/number/string types agree
    kinds = {"integer": pa.types.is_integer, "number": pa.types.is_floating, "string": pa.types.is_string}
    for fields, props in [
        (list(PART_ARROW_SCHEMA), part["properties"]),
        (list(ann_struct), ann_json["properties"]),
        (list(seg_struct), ann_json["properties"]["segmentation"]["properties"]),
    ]:
        for f in fields:
            prop = props[f.name]
            t = prop.get("type")
            t = next(x for x in t if x != "null") if isinstance(t, list) else t
            if t == "array":
                assert pa.types.is_list(f.type), f.name
                item_t = prop["items"].get("type")
                if item_t in kinds:
                    assert kinds[item_t](f.type.value_type), f.name
            elif t in kinds and f.name != "confidence_png":
                assert kinds[t](f.type), f.name
    assert pa.types.is_binary(PART_ARROW_SCHEMA.field("confidence_png").type)


def test_arrow_table_from_rows():
    table = pa.Table.from_pylist([_ok_row()], schema=PART_ARROW_SCHEMA)
    assert table.num_rows == 1
    back = table.to_pylist()[0]
    validate_row(back)
    assert records.ImageRecord.from_row(back).to_row() == _ok_row()


def test_manifest_schema_rejects_bad_sha():
    doc = {
        "version": 1,
        "config_hash": "0123456789abcdef",
        "listing_fingerprint": "0123456789abcdef",
        "num_shards": 1,
        "shard_size": 4,
        "finished": {"0": {"path": "parts/part-00000.parquet", "rows": 4, "sha256": "xyz"}},
        "created": "t",
        "updated": "t",
    }
    with pytest.raises(SchemaValidationError, match="finished/0/sha256"):
        validate(doc, "manifest")
