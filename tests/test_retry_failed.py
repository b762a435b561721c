"""``--retry-failed`` (issue 21.2), end to end on a real local Ray with the toy model:
a run's error rows get a second chance, its ok rows stay byte-identical, only the parts
that change are rewritten, and summary.json and the ``done:`` line say what came of it.

Images are made to fail in the first run by corrupting their bytes (the listing only
lists existing files, so a file "missing at listing time" is played by one that cannot
be read), or with the ``image.read`` failpoint (a storage read refused); then the files
are fixed (or the failpoint exhausted) and the same command runs with ``--retry-failed``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator import failpoints
from annotator.outputs.merge import reduce_output
from annotator.run import main
from tests.synthetic import write_dataset, write_vocab

N_IMAGES = 12
SHARD_SIZE = 3  # 4 shards: img_0000..0002 in shard 0, ..., img_0009..0011 in shard 3
SIZE_HW = (48, 64)
#: One image of shard 0 and one of shard 2: shards 1 and 3 hold only ok rows.
BROKEN = ("img_0001.png", "img_0007.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("retry-failed")
    images, gt, _ = write_dataset(root, N_IMAGES, size_hw=SIZE_HW, nested=False)
    return root, images, gt, write_vocab(root / "v.txt")


def _argv(dataset, images: Path, output: Path, *extra: str) -> list[str]:
    _, _, gt, vocab = dataset
    return ["--vocab", str(vocab), "--source", str(images), "--gt", str(gt), "--model", "toy", "--saliency", "toy",
            "--device", "cpu", "--output", str(output), "--shard-size", str(SHARD_SIZE), "--num-actors", "1",
            "--max-failure-rate", "1", "--quiet", "--no-report", *extra]


@pytest.fixture(scope="module")
def reference(dataset, ray_session, tmp_path_factory) -> Path:
    """A run where every image reads."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(_argv(dataset, dataset[1], out)) == 0
    return out


@pytest.fixture
def images(dataset, tmp_path) -> Path:
    """A copy of the dataset's images this test may break and fix."""
    copy = tmp_path / "images"
    copy.mkdir()
    for p in sorted(dataset[1].iterdir()):
        (copy / p.name).write_bytes(p.read_bytes())
    return copy


def _break(images: Path, names) -> dict[str, bytes]:
    saved = {}
    for name in names:
        saved[name] = (images / name).read_bytes()
        (images / name).write_bytes(b"not an image at all")
    return saved


def _parts(output: Path) -> dict[str, tuple[str, int]]:
    """part name -> (sha256, mtime_ns)."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted((output / "parts").glob("part-*.parquet"))}


def _rows(path: Path) -> dict[str, dict]:
    return {r["file_name"]: r for r in pq.read_table(path).to_pylist()}


def _content(path: Path) -> dict[str, dict]:
    """The rows without their ``uri`` (each test reads a copy of the images, elsewhere)."""
    return {name: {k: v for k, v in row.items() if k != "uri"} for name, row in _rows(path).items()}


def _run(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def test_fixed_files_are_recovered_and_nothing_else_changes(dataset, reference, images, tmp_path, capsys):
    out = tmp_path / "out"
    saved = _break(images, BROKEN)
    rc, _ = _run(capsys, _argv(dataset, images, out))
    assert rc == 0 and _summary(out)["failures_by_reason"] == {"not-an-image": 2}
    before_parts = _parts(out)
    before_rows = {name: _rows(out / "parts" / name) for name in before_parts}

    for name, data in saved.items():  # the files are fixed
        (images / name).write_bytes(data)
    rc, err = _run(capsys, _argv(dataset, images, out, "--retry-failed"))
    assert rc == 0, err
    assert "--retry-failed: 2 failed rows in 2 shards run again" in err
    done = [ln for ln in err.splitlines() if ln.startswith("done:")]
    assert len(done) == 1 and "retried 2 failed rows: 2 recovered, 0 still failing" in done[0], err

    summary = _summary(out)
    assert summary["failed"] == 0 and summary["ok"] == N_IMAGES
    assert summary["retry_failed"] == {"retried": 2, "recovered": 2, "recovered_by_reason": {"not-an-image": 2},
                                       "still_failing": 0, "still_failing_by_reason": {}}

    after_parts = _parts(out)
    assert sorted(after_parts) == sorted(before_parts)  # one part per shard, never two
    changed = {name for name in after_parts if after_parts[name] != before_parts[name]}
    assert changed == {"part-00000.parquet", "part-00002.parquet"}  # only the parts with error rows
    for name in changed:  # the ok rows of the rewritten parts are the very rows they held
        old, new = before_rows[name], _rows(out / "parts" / name)
        assert sorted(old) == sorted(new)
        for file_name, row in old.items():
            if file_name not in BROKEN:
                assert new[file_name] == row, file_name
            else:
                assert row["status"] == "error" and new[file_name]["status"] == "ok"

    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["finished"].values():  # the new parts' sha256 are recorded
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    reduce_output(str(out), report=False, verify=True)  # the reducer's checks pass

    # every row, and the scores against the ground truth, as a run where every image read
    assert _content(out / "annotations.parquet") == _content(reference / "annotations.parquet")
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())


def test_an_image_still_broken_stays_failing_and_is_counted_by_reason(dataset, reference, images, tmp_path,
                                                                     capsys):
    out = tmp_path / "out"
    saved = _break(images, BROKEN)
    assert main(_argv(dataset, images, out)) == 0
    (images / BROKEN[0]).write_bytes(saved[BROKEN[0]])  # one fixed; the other now cut short: 'truncated'
    (images / BROKEN[1]).write_bytes(saved[BROKEN[1]][: len(saved[BROKEN[1]]) // 2])
    rc, err = _run(capsys, _argv(dataset, images, out, "--retry-failed"))
    assert rc == 0, err
    counts = _summary(out)["retry_failed"]
    assert counts == {"retried": 2, "recovered": 1, "recovered_by_reason": {"not-an-image": 1},
                      "still_failing": 1, "still_failing_by_reason": {"truncated": 1}}
    assert "1 recovered, 1 still failing (truncated: 1)" in err
    rows = _content(out / "annotations.parquet")
    assert rows[BROKEN[0]] == _content(reference / "annotations.parquet")[BROKEN[0]]
    assert rows[BROKEN[1]]["error"].startswith("truncated: ")


def test_without_the_flag_nothing_is_retried(dataset, images, tmp_path, capsys):
    out = tmp_path / "out"
    saved = _break(images, BROKEN)
    assert main(_argv(dataset, images, out)) == 0
    before = _parts(out)
    for name, data in saved.items():
        (images / name).write_bytes(data)
    rc, err = _run(capsys, _argv(dataset, images, out))
    assert rc == 0, err
    assert "(4 shards, 12 images, already done)" in err and "retried" not in err
    assert _parts(out) == before
    summary = _summary(out)
    assert summary["failed"] == 2 and "retry_failed" not in summary


@pytest.fixture
def arm(tmp_path):
    def _arm(spec: str | None) -> None:
        failpoints.configure(spec, tmp_path / "failpoint-state" if spec else None)

    yield _arm
    failpoints.configure(None)


def test_a_storage_outage_in_the_first_run_is_recovered(dataset, reference, images, tmp_path, arm, capsys):
    """The image.read failpoint refuses two image reads in the whole run (a permanent
    storage error: no retry): two 'unreadable' rows; the storage is back for the
    --retry-failed run (the failpoint has fired its two times) and the output is the
    one of a run that never failed."""
    arm("image.read=OSError(EACCES):Access Denied*2")
    out = tmp_path / "out"
    assert main(_argv(dataset, images, out)) == 0
    assert sorted(p.name for p in (tmp_path / "failpoint-state").iterdir()) == ["image.read.0", "image.read.1"]
    assert _summary(out)["failures_by_reason"] == {"unreadable": 2}
    rc, err = _run(capsys, _argv(dataset, images, out, "--retry-failed"))
    assert rc == 0, err
    assert _summary(out)["retry_failed"]["recovered_by_reason"] == {"unreadable": 2}
    assert _summary(out)["retry_failed"]["still_failing"] == 0
    assert _content(out / "annotations.parquet") == _content(reference / "annotations.parquet")


def test_retry_failed_is_refused_without_an_output_or_with_another_configuration(dataset, images, tmp_path,
                                                                                 capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, _argv(dataset, images, out, "--retry-failed"))
    assert rc == 2 and err.startswith("error: --retry-failed: expected an existing run output"), err
    assert not (out / "manifest.json").exists()
    _break(images, BROKEN[:1])
    assert main(_argv(dataset, images, out)) == 0
    before = _parts(out)
    rc, err = _run(capsys, _argv(dataset, images, out, "--retry-failed", "--max-bytes", "1000000"))
    assert rc == 2 and "error: " in err and "--overwrite" in err, err  # refused like any resume
    assert _parts(out) == before


# ----------------------------------------------------------------------------- the module's parts


def test_tally_counts_recovered_rows_by_their_old_reason_and_the_others_by_their_new_one():
    from annotator.shards.retry_failed import describe_tally, tally

    before = {0: {1: "missing", 2: "unreadable"}, 3: {10: "worker-crashed"}}
    after = {0: {2: "truncated"}}  # shard 3 has no error row left
    counts = tally(before, after)
    assert counts == {"retried": 3, "recovered": 2, "recovered_by_reason": {"missing": 1, "worker-crashed": 1},
                      "still_failing": 1, "still_failing_by_reason": {"truncated": 1}}
    assert describe_tally(counts) == "retried 3 failed rows: 2 recovered, 1 still failing (truncated: 1)"


def test_kept_rows_add_their_scores_to_the_retried_images():
    from annotator.shards.retry_failed import KeptRows

    kept_record = type("R", (), {"file_name": "a.png"})()
    kept = KeptRows([kept_record], {"confusion": [[3, 1], [0, 2]],
                                    "gt_errors": [{"file_name": "a.png", "error": "x"},
                                                  {"file_name": "b.png", "error": "y"}]})
    recs, meta = kept.merge(["new"], {"shard_index": 0, "confusion": [[1, 0], [1, 1]], "gt_errors": []})
    assert recs == [kept_record, "new"]
    assert meta["confusion"] == [[4, 1], [1, 3]]
    assert meta["gt_errors"] == [{"file_name": "a.png", "error": "x"}]  # b.png ran again: its old entry goes
    _, meta = kept.merge([], {"confusion": None, "gt_errors": []})  # no retried image scored
    assert meta["confusion"] == [[3, 1], [0, 2]]
    _, meta = KeptRows([], {}).merge([], {"shard_index": 1})  # no ground truth: the footer as the attempt made it
    assert meta == {"shard_index": 1}
