"""``annotator.reduce``: merging hand-made part files (no engine, no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotator import records
from annotator.evaluation import metrics
from annotator.inputs.listing import ImageRef
from annotator.outputs.merge import ReduceError, reduce_output
from annotator.records.schema import validate, validate_row
from annotator.reduce import main
from annotator.storage import parts

CLASSES = ["background", "cat", "dog"]
SIZE_HW = (6, 8)


def _labels(seed: int) -> np.ndarray:
    """(6, 8) int32 labels: a cat block and, for even seeds, a dog block."""
    lab = np.zeros(SIZE_HW, np.int32)
    lab[1:3, 1 + seed % 3 : 4 + seed % 3] = 1
    if seed % 2 == 0:
        lab[4:6, 5:8] = 2
    return lab


def _ok(image_id: int) -> records.ImageRecord:
    ref = ImageRef(image_id, f"img_{image_id:03d}.png", f"/data/img_{image_id:03d}.png")
    conf = np.full(SIZE_HW, 0.75, np.float32)
    return records.ok_record(ref, _labels(image_id), conf, CLASSES)


def _err(image_id: int, reason: str = "truncated") -> records.ImageRecord:
    ref = ImageRef(image_id, f"img_{image_id:03d}.png", f"/data/img_{image_id:03d}.png")
    return records.error_record(ref, reason, "file ends early")


def _meta(num_images: int, **extra) -> dict:
    return {"vocabulary": CLASSES, "config_hash": "abc123", "num_images": num_images, "model": "toy",
            "protocol": "full", "version": "test", **extra}


def _write(output, shard: int, recs, **meta) -> str:
    path = parts.part_path(str(output), shard)
    parts.write_part(recs, path, {**_meta(meta.pop("num_images", 6)), "shard_index": shard, **meta})
    return path


def test_merge_counts_and_files(tmp_path):
    out = tmp_path / "run"
    # shards written out of order; one error row
    _write(out, 1, [_ok(4), _err(5, "truncated"), _ok(6)])
    _write(out, 0, [_ok(1), _ok(2), _ok(3)])
    summary = reduce_output(str(out), report=False)

    rows = pq.read_table(out / "annotations.parquet").to_pylist()
    assert [r["image_id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        validate_row(r)
    meta = parts.read_part_metadata(str(out / "annotations.parquet"))
    assert meta["vocabulary"] == CLASSES and "shard_index" not in meta and "confusion" not in meta

    assert summary["images"] == summary["expected_images"] == 6
    assert (summary["ok"], summary["failed"]) == (5, 1)
    assert summary["failures_by_reason"] == {"truncated": 1}
    dogs = [i for i in (1, 2, 3, 4, 6) if i % 2 == 0]
    assert summary["per_class"]["cat"]["annotations"] == 5
    assert summary["per_class"]["dog"]["annotations"] == len(dogs)
    assert summary["per_class"]["cat"]["pixels"] == 5 * 6
    assert summary["per_class"]["dog"]["pixels"] == len(dogs) * 6
    assert summary["per_class"]["cat"]["mean_score"] == pytest.approx(0.75, abs=1e-6)
    assert summary["annotations"] == 5 + len(dogs)
    assert summary["classes_never_predicted"] == []
    assert json.loads((out / "summary.json").read_text()) == summary
    assert not (out / "metrics.json").exists()

    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 5  # the error row is not an image of the COCO file
    assert len(coco["annotations"]) == summary["annotations"]
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    assert all(a["iscrowd"] == 0 for a in coco["annotations"])
    assert not list(out.glob("*.tmp"))


def test_metrics_sum_the_confusion_of_every_part(tmp_path):
    out = tmp_path / "run"
    gt = {i: np.roll(_labels(i), 1, axis=1) for i in range(1, 5)}
    cms = {}
    for shard, ids in enumerate(([1, 2], [3, 4])):
        cm = sum(metrics.released_protocol_confusion(_labels(i), gt[i], len(CLASSES)) for i in ids)
        cms[shard] = cm
        _write(out, shard, [_ok(i) for i in ids], num_images=5, confusion=cm.tolist())
    _write(out, 2, [_ok(5)], num_images=5, confusion=None)  # a shard with no ground truth matched

    summary = reduce_output(str(out), report=False)
    got = json.loads((out / "metrics.json").read_text())
    validate(got, "metrics")
    total = cms[0] + cms[1]
    expected = metrics.scores_from_confusion(total, CLASSES)
    assert got["confusion_matrix"] == total.tolist()
    assert got["miou"] == pytest.approx(expected["miou"])
    assert 0 < got["miou"] < 1
    assert summary["miou"] == pytest.approx(expected["miou"])
    assert json.loads((out / "summary.json").read_text())["miou"] == pytest.approx(expected["miou"])


def test_stale_metrics_are_removed(tmp_path):
    out = tmp_path / "run"
    _write(out, 0, [_ok(1)], num_images=1)
    out.joinpath("metrics.json").write_text('{"miou": 0.5}')  # from an earlier run with ground truth
    summary = reduce_output(str(out), report=False)
    assert "miou" not in summary
    assert not (out / "metrics.json").exists()


def test_missing_images_fail_the_reduce(tmp_path):
    """Complete or failed (issue #11): a run with listed images that have no row is not
    merged as if it were done; nothing merged is left behind for a reader to trust."""
    out = tmp_path / "run"
    _write(out, 0, [_ok(1), _ok(2), _ok(3)])
    with pytest.raises(ReduceError, match="3 of 6 listed images have a row"):
        reduce_output(str(out), report=False)
    assert not (out / "annotations.parquet").exists() and not (out / "summary.json").exists()
    assert not list(out.glob("*.tmp*"))


def test_duplicate_image_is_refused(tmp_path):
    out = tmp_path / "run"
    _write(out, 0, [_ok(1), _ok(2)])
    _write(out, 1, [_ok(2), _ok(3)])
    with pytest.raises(ReduceError, match="image_id 2"):
        reduce_output(str(out), report=False)


def test_parts_of_different_configurations_are_refused(tmp_path):
    out = tmp_path / "run"
    _write(out, 0, [_ok(1)])
    _write(out, 1, [_ok(2)], config_hash="other")
    with pytest.raises(ReduceError, match="different configurations"):
        reduce_output(str(out), report=False)


def test_no_parts(tmp_path, capsys):
    with pytest.raises(ReduceError, match="no parts"):
        reduce_output(str(tmp_path), report=False)
    assert main([str(tmp_path), "--no-report"]) == 2
    assert "no parts" in capsys.readouterr().err


def test_cli(tmp_path, capsys):
    out = tmp_path / "run"
    _write(out, 0, [_ok(1), _err(2, "not-an-image")], num_images=2)
    assert main([str(out), "--no-report"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"images": 2, "ok": 1, "failed": 1, "annotations": 1}  # image 1: a cat only
    assert (out / "coco.json").is_file() and not (out / "report.html").exists()


def test_reduce_is_repeatable(tmp_path):
    out = tmp_path / "run"
    _write(out, 0, [_ok(1), _ok(2)], num_images=2)
    reduce_output(str(out), report=False)
    first = {n: (out / n).read_bytes() for n in ("annotations.parquet", "coco.json", "summary.json")}
    reduce_output(str(out), report=False)
    again = pq.read_table(out / "annotations.parquet")
    assert again.equals(pq.read_table(pa.BufferReader(first["annotations.parquet"])))
    assert again.num_rows == 2
    assert (out / "coco.json").read_bytes() == first["coco.json"]
    assert (out / "summary.json").read_bytes() == first["summary.json"]


def test_memory_output(tmp_path):
    import fsspec

    out = f"memory://annotator-reduce-{tmp_path.name}/run"
    try:
        _write(out, 0, [_ok(1), _ok(2)], num_images=2)
        summary = reduce_output(out, report=False)
        assert summary["images"] == 2
        assert [r["image_id"] for r in parts.iter_rows([f"{out}/annotations.parquet"])] == [1, 2]
    finally:
        fsspec.filesystem("memory").rm(f"/annotator-reduce-{tmp_path.name}", recursive=True)


def test_format_summary_table():
    from annotator.outputs.merge import format_summary

    text = format_summary({
        "per_class": {"cat": {"annotations": 3, "pixels": 1200, "mean_score": 0.8123},
                      "dog": {"annotations": 0, "pixels": 0, "mean_score": None}},
        "images": 5, "ok": 4, "failed": 1, "failures_by_reason": {"truncated": 1},
    })
    lines = text.splitlines()
    assert lines[0].split() == ["class", "masks", "pixels", "mean", "score"]
    assert lines[2].split() == ["cat", "3", "1200", "0.812"] and lines[3].split() == ["dog", "0", "0", "-"]
    assert "images: 5 (4 annotated, 1 failed)" in text and "failed, truncated: 1" in text


def test_merge_copies_parts_as_arrow_in_large_row_groups(tmp_path, monkeypatch):
    """The merged file holds the parts' rows unchanged, in row groups of
    MERGED_ROW_GROUP_ROWS (not one per 256 rows: the writer keeps every group's metadata)."""
    from annotator.outputs import merge as merge_module

    monkeypatch.setattr(merge_module, "MERGED_ROW_GROUP_ROWS", 4)
    out = tmp_path / "run"
    recs = [_ok(i) if i % 5 else _err(i) for i in range(1, 31)]
    for shard in range(10):
        _write(out, shard, recs[3 * shard : 3 * shard + 3], num_images=30)
    summary = reduce_output(str(out), report=False)
    assert summary["images"] == 30 and summary["failed"] == 6
    merged = pq.ParquetFile(out / "annotations.parquet")
    assert merged.metadata.num_rows == 30 and merged.metadata.num_row_groups == 5  # 6+6+6+6+6 rows
    assert [r for r in parts.iter_rows([str(out / "annotations.parquet")])] == [r.to_row() for r in recs]
    assert json.loads(merged.schema_arrow.metadata[parts.METADATA_KEY])["num_images"] == 30


def test_id_set_is_a_bitmap_that_finds_repeats():
    from annotator.outputs.merge import IdSet

    ids = IdSet()
    assert ids.add(1) and ids.add(1_000_000) and ids.add(8) and not ids.add(1_000_000)
    assert len(ids) == 3 and len(ids._bits) < 300_000


def test_ground_truth_errors_of_many_parts_keep_the_first_by_name(tmp_path):
    from annotator.outputs.merge import GT_ERRORS_LISTED, Footers

    footers = Footers()
    k = len(CLASSES)
    for shard in range(30):
        footers.add(_meta(90, shard_index=shard, confusion=np.eye(k, dtype=int).tolist(),
                          gt_errors=[{"file_name": f"img_{90 - 3 * shard - j:03d}.png", "error": "bad"}
                                     for j in range(3)]))
    assert footers.scored and footers.gt_error_count == 90
    assert [e["file_name"] for e in footers.gt_errors_first] == [f"img_{i:03d}.png" for i in range(1, 1 + GT_ERRORS_LISTED)]
    assert (footers.confusion == 30 * np.eye(k)).all()


def test_merged_row_groups_are_capped_in_bytes_too(tmp_path, monkeypatch):
    """Rows of large photographs: a row group stops at MERGED_ROW_GROUP_BYTES, so a reader
    of annotations.parquet never holds gigabytes at once."""
    from annotator.outputs import merge as merge_module

    monkeypatch.setattr(merge_module, "MERGED_ROW_GROUP_BYTES", 1)  # every batch closes its group
    out = tmp_path / "run"
    for shard in range(4):
        _write(out, shard, [_ok(3 * shard + k) for k in (1, 2, 3)], num_images=12)
    reduce_output(str(out), report=False)
    merged = pq.ParquetFile(out / "annotations.parquet")
    assert merged.metadata.num_row_groups == 4 and merged.metadata.num_rows == 12


def test_summary_says_what_precision_the_parts_ran_at(tmp_path, caplog):
    out = tmp_path / "run"
    _write(out, 0, [_ok(1), _ok(2)], num_images=4, precision="bf16")
    _write(out, 1, [_ok(3), _ok(4)], num_images=4, precision="bf16")
    assert reduce_output(str(out), report=False)["run"]["precision"] == "bf16"
    _write(out, 1, [_ok(3), _ok(4)], num_images=4, precision="fp32")  # resumed on another CPU kind
    summary = reduce_output(str(out), report=False)
    assert summary["run"]["precision"] == "mixed: bf16 (1 part), fp32 (1 part)"
    assert "different precisions" in caplog.text


def test_a_reducer_that_lost_its_lease_writes_nothing(tmp_path):
    """reduce_output checks the lease's fence before each file it writes."""
    from annotator.storage.lock import LeaseLostError

    out = str(tmp_path / "run")
    _write(out, 0, [_ok(1), _ok(2)], num_images=2)

    def lost() -> None:
        raise LeaseLostError("output run: taken over by another annotator.reduce (token 2)")

    with pytest.raises(LeaseLostError):
        reduce_output(out, report=False, fence=lost)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["parts"]


def test_reduce_takes_a_best_effort_lease_only_when_asked(tmp_path, monkeypatch, capsys):
    """``--best-effort-lease`` (or $ANNOTATOR_BEST_EFFORT_LEASE=1): a store without an atomic
    create is refused by default, exit 2 naming the flag, and reduced with it."""
    from annotator.storage import lock as lock_mod

    monkeypatch.delenv(lock_mod.BEST_EFFORT_ENV, raising=False)
    monkeypatch.setattr(lock_mod, "supports_atomic_create", lambda fs: False)
    out = str(tmp_path / "run")
    _write(out, 0, [_ok(1), _ok(2)], num_images=2)
    assert main([out, "--no-report"]) == 2
    assert "--best-effort-lease" in capsys.readouterr().err
    assert main([out, "--no-report", "--best-effort-lease"]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
