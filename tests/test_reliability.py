"""Bad inputs and bad configuration, end to end through ``annotator.run.main``.

- Every file of ``tests/badinputs.make_bad_inputs`` gets exactly one row: annotated at
  its displayed size, or an error row whose reason is the expected one; the run goes on;
  summary.json counts failures by reason; the exit code follows --max-failure-rate.
- A Hugging Face row with no image is an error row ``missing``; rows picked with gaps
  (``--image-list``) get their own pixels.
- Bad configuration: one ``error: ...`` line naming what was expected and what was
  received, exit code 2, before anything is written.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from annotator import records
from annotator.run import main
from annotator.storage.manifest import open_output
from tests.badinputs import EXIF_STORED_WH, make_bad_inputs
from tests.synthetic import make_image, write_vocab

MAX_PIXELS = 1_000_000  # admits strip_10000x20.png (200,000 px), refuses big_1250x1000.png
BIG_WH = (1250, 1000)


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _rows(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["image_id"])


def _toy(vocab: Path, output: Path, *extra: str) -> list[str]:
    return ["--vocab", str(vocab), "--model", "toy", "--saliency", "toy", "--device", "cpu",
            "--output", str(output), "--quiet", "--no-report", *extra]


# ----------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, ray_session):
    """One run over the bad-input folder; returns (expected outcomes, output, stderr, rc)."""
    root = tmp_path_factory.mktemp("bad")
    expected = make_bad_inputs(root / "images")
    Image.new("RGB", BIG_WH, (9, 9, 9)).save(root / "images" / "big_1250x1000.png")  # ~4 kB on disk
    expected["big_1250x1000.png"] = ("error", "too-many-pixels")  # over --max-pixels, under Pillow's limit
    vocab = write_vocab(root / "v.txt")
    out = root / "out"
    argv = _toy(vocab, out, "--source", str(root / "images"), "--shard-size", "5", "--num-actors", "2",
                "--max-pixels", str(MAX_PIXELS), "--max-failure-rate", "1")
    buf = io.StringIO()
    with redirect_stderr(buf):
        rc = main(argv)
    return expected, out, buf.getvalue(), rc, argv


def test_every_bad_input_is_accounted_for(bad_run):
    expected, out, err, rc, _ = bad_run
    assert rc == 0, err
    rows = _rows(out / "annotations.parquet")
    assert sorted(r["file_name"] for r in rows) == sorted(expected)
    assert [r["image_id"] for r in rows] == list(range(1, len(expected) + 1))
    for row in rows:
        kind, what = expected[row["file_name"]]
        if kind == "ok":
            assert row["status"] == "ok", (row["file_name"], row["error"])
            assert (row["height"], row["width"]) == what, row["file_name"]
            rec = records.ImageRecord.from_row(row)
            assert all(tuple(a.segmentation["size"]) == what for a in rec.annotations)
        else:
            assert row["status"] == "error", row["file_name"]
            assert row["error"].startswith(f"{what}: "), (row["file_name"], row["error"])
            assert row["confidence_png"] is None and row["annotations"] == []


def test_summary_counts_failures_by_reason(bad_run):
    expected, out, _, _, _ = bad_run
    summary = json.loads((out / "summary.json").read_text())
    want = Counter(what for kind, what in expected.values() if kind == "error")
    assert summary["failures_by_reason"] == dict(want)
    assert summary["failed"] == sum(want.values())
    assert summary["ok"] == len(expected) - sum(want.values())
    assert summary["images"] == summary["expected_images"] == len(expected)


def test_exif_rotated_jpeg_has_displayed_size(bad_run):
    _, out, _, _, _ = bad_run
    (row,) = [r for r in _rows(out / "annotations.parquet") if r["file_name"] == "exif_rotated.jpg"]
    stored_w, stored_h = EXIF_STORED_WH
    assert (row["width"], row["height"]) == (stored_h, stored_w)  # 90 degrees: axes swapped
    png = records.ImageRecord.from_row(row).confidence_png
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (stored_h, stored_w)  # the confidence map is in the displayed frame too


def test_pixel_limit_refuses_before_decoding(bad_run):
    """The pixel count is checked on the header, before any pixel is decoded: the 900-Mpx
    bomb (about 100 bytes on disk; over Pillow's own hard limit, which fires first, inside
    ``Image.open``) and, under --max-pixels, a 1.25-Mpx image are refused with their sizes
    in the message; neither gets a size in the output. The 10000x20 strip is annotated."""
    _, out, _, _, _ = bad_run
    rows = {r["file_name"]: r for r in _rows(out / "annotations.parquet")}
    bomb = rows["bomb_30000x30000.png"]["error"]
    assert bomb.startswith("too-many-pixels: ") and "900000000 pixels" in bomb
    w, h = BIG_WH
    assert (f"too-many-pixels: big_1250x1000.png: {w}x{h} = {w * h} pixels exceeds the limit of {MAX_PIXELS}"
            in rows["big_1250x1000.png"]["error"])
    assert rows["bomb_30000x30000.png"]["width"] is None and rows["big_1250x1000.png"]["width"] is None
    assert rows["strip_10000x20.png"]["status"] == "ok" and rows["strip_10000x20.png"]["width"] == 10_000


def test_exit_code_follows_max_failure_rate(bad_run, capsys):
    """Same command, only --max-failure-rate changes (not part of the run's identity, so
    the finished run is reused): non-zero exactly when the failure rate exceeds it."""
    expected, _, _, _, argv = bad_run
    failed = sum(kind == "error" for kind, _ in expected.values())
    rate = failed / len(expected)
    base = argv[:argv.index("--max-failure-rate")]
    for threshold, want in ((rate + 0.005, 0), (1.0, 0), (rate - 0.005, 1), (0.0, 1)):
        rc, err = _run(capsys, [*base, "--max-failure-rate", f"{threshold:.4f}"])
        assert rc == want, (threshold, rate, err)
        assert "already done" in err
        if want:
            assert f"{failed}/{len(expected)} images failed" in err and "--max-failure-rate" in err


# ----------------------------------------------------------------------------- Hugging Face


def test_hf_row_without_image_and_rows_with_gaps(tmp_path, ray_session, capsys):
    """Row 2 has no image (None): error row 'missing'. ``--image-list`` picks rows 0, 2, 3, 5
    (gaps): each annotated row gets ITS OWN image (masks match that row's truth)."""
    datasets = pytest.importorskip("datasets")
    pairs = [make_image(500 + i, (48, 64)) for i in range(6)]
    images = [Image.fromarray(rgb) for rgb, _ in pairs]
    images[2] = None
    ds = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "list.txt").write_text("00000000\n00000002\n00000003\n00000005\n")
    rc, err = _run(capsys, _toy(write_vocab(tmp_path / "v.txt"), tmp_path / "out",
                                "--hf-dataset", str(tmp_path / "hf"), "--image-list", str(tmp_path / "list.txt"),
                                "--shard-size", "4", "--num-actors", "1", "--max-failure-rate", "0.5"))
    assert rc == 0, err
    rows = _rows(tmp_path / "out" / "annotations.parquet")
    assert [r["image_id"] for r in rows] == [1, 3, 4, 6]
    by_index = {int(r["file_name"].split(".")[0]): r for r in rows}
    assert by_index[2]["status"] == "error" and by_index[2]["error"].startswith("missing: ")
    assert "cell is empty" in by_index[2]["error"]
    for i in (0, 3, 5):
        row = by_index[i]
        assert row["status"] == "ok", row["error"]
        rec = records.ImageRecord.from_row(row)
        pred = records.labels_from_annotations(rec.annotations, rec.size_hw)
        assert (pred == pairs[i][1]).mean() > 0.97, i
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failures_by_reason"] == {"missing": 1}


# ----------------------------------------------------------------------------- configuration


@pytest.fixture()
def cfg(tmp_path):
    """A valid base configuration on a tiny folder."""
    img = tmp_path / "images"
    img.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img / "a.png")
    return {"vocab": write_vocab(tmp_path / "v.txt"), "images": img, "out": tmp_path / "out"}


def _cfg_argv(cfg, **over) -> list[str]:
    opts = {"--vocab": str(cfg["vocab"]), "--source": str(cfg["images"]), "--model": "toy",
            "--saliency": "toy", "--output": str(cfg["out"])}
    opts.update(over)
    argv = ["--device", "cpu", "--quiet", "--no-report"]
    for k, v in opts.items():
        if v is not None:
            argv += [k, v]
    return argv


def _bad_dir(tmp_path: Path) -> Path:
    d = tmp_path / "texts"
    d.mkdir()
    (d / "notes.txt").write_text("no images here")
    return d


@pytest.mark.parametrize(
    "case, over, fragments",
    [
        ("unknown model", {"--model": "no-such-model"}, ["--model", "'no-such-model'", "expected one of"]),
        ("unknown tag", {"--model": "ViT-B-16", "--pretrained": "no-such-tag"},
         ["--pretrained", "unknown tag 'no-such-tag'", "expected one of"]),
        ("pretrained for toy", {"--pretrained": "laion2b"}, ["--model toy takes no --pretrained", "'laion2b'"]),
        ("unknown saliency", {"--saliency": "nope"}, ["--saliency", "expected one of", "'nope'"]),
        ("missing vocabulary", {"--vocab": "/nonexistent/v.txt"}, ["vocabulary file not found", "/nonexistent/v.txt"]),
        ("vocabulary is a folder", {"--vocab": "@dir"}, ["expected a vocabulary file, got a directory"]),
        ("vocabulary not UTF-8", {"--vocab": "@latin1"}, ["expected UTF-8 text"]),
        ("no images in source", {"--source": "@texts"}, ["no images in source", "expected files ending in",
                                                         "notes.txt"]),
        ("glob matching nothing", {"--source": "@glob"}, ["no images in source", "found no files"]),
        ("missing source", {"--source": "/nonexistent/images"}, ["/nonexistent/images", "does not exist"]),
        ("output under a file", {"--output": "@under-file"}, ["--output", "not writable", "NotADirectoryError"]),
        ("source and hf dataset", {"--hf-dataset": "x"}, ["--source and --hf-dataset are mutually exclusive"]),
        ("missing ground truth", {"--gt": "/nonexistent/gt"}, ["ground truth '/nonexistent/gt'", "expected"]),
        ("hf-column gt without hf", {"--gt": "hf-column:label"}, ["expected --hf-dataset"]),
        ("bad failure rate", {"--max-failure-rate": "1.5"}, ["--max-failure-rate", "expected a fraction", "1.5"]),
        ("bad storage options", {"--storage-options": "{nope"}, ["--storage-options", "expected a JSON object"]),
    ],
)
def test_bad_configuration_is_one_clear_error_before_any_work(cfg, tmp_path, capsys, case, over, fragments):
    special = {
        "@dir": str(tmp_path),
        "@latin1": str(tmp_path / "latin1.txt"),
        "@texts": str(_bad_dir(tmp_path)),
        "@glob": str(cfg["images"] / "*.webp"),
        "@under-file": str(tmp_path / "a-file" / "out"),
    }
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "a-file").write_text("a regular file")
    over = {k: special.get(v, v) for k, v in over.items()}
    rc, err = _run(capsys, _cfg_argv(cfg, **over))
    assert rc == 2, (case, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (case, lines[0])
    assert "Traceback" not in err
    assert not cfg["out"].exists() and not (tmp_path / "a-file" / "out").exists()  # nothing written


def test_other_runs_output_is_refused_without_overwrite(cfg, capsys):
    """An output holding another configuration's run: exit 2 naming the difference;
    nothing in it is touched."""
    manifest = open_output(str(cfg["out"]), config_hash="0123456789abcdef", listing_fingerprint="f" * 16,
                           num_shards=1, shard_size=64)
    before = (cfg["out"] / "manifest.json").read_bytes()
    rc, err = _run(capsys, _cfg_argv(cfg))
    assert rc == 2, err
    assert "already holds results" in err and f"created {manifest.created}" in err
    assert "--overwrite" in err and "0123456789abcdef" in err
    assert (cfg["out"] / "manifest.json").read_bytes() == before
    assert not (cfg["out"] / "parts").exists()


def test_parts_without_manifest_are_refused(cfg, capsys):
    (cfg["out"] / "parts").mkdir(parents=True)
    (cfg["out"] / "parts" / "part-00000.parquet").write_bytes(b"PAR1")
    rc, err = _run(capsys, _cfg_argv(cfg))
    assert rc == 2 and "no manifest.json" in err and "--overwrite" in err
