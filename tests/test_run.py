"""End-to-end tests of ``python -m annotator.run`` (``annotator.run.main``) on Ray.

Synthetic images of coloured shapes with exact label maps (``tests/synthetic.py``) and
the toy models (``--model toy --saliency toy``), so that what the run writes can be
checked against the engine run directly and against the known ground truth. Ray is the
session's local instance (``ray_session`` in ``conftest.py``), 2 CPUs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from annotator import records
from annotator.evaluation import metrics
from annotator.records.schema import validate, validate_row
from annotator.run import main
from annotator.storage import parts
from tests.synthetic import VOCAB, write_dataset, write_vocab

pytestmark = pytest.mark.timeout(300)

NUM_IMAGES = 52  # 7 shards of 8 (the last one holds 4)
SHARD_SIZE = 8
SIZE_HW = (120, 160)
CLASS_NAMES = ["background", *VOCAB]


# ----------------------------------------------------------------------------- helpers


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, *argv: str) -> tuple[int, str]:
    """main(argv) -> (exit code, stderr)."""
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _base_args(ds: dict, output: Path) -> list[str]:
    return [
        "--vocab", str(ds["vocab"]), "--source", str(ds["images"]), "--gt", str(ds["gt"]),
        "--model", "toy", "--saliency", "toy", "--output", str(output),
        "--shard-size", str(SHARD_SIZE), "--num-actors", "2", "--device", "cpu", "--quiet",
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    images, gt, labels = write_dataset(root, NUM_IMAGES, size_hw=SIZE_HW)
    vocab = write_vocab(root / "colours.txt")
    return {"root": root, "images": images, "gt": gt, "labels": labels, "vocab": vocab}


@pytest.fixture(scope="module")
def e2e(dataset, tmp_path_factory, ray_session) -> dict:
    """One full run with ground truth; the tests below read its output."""
    out = tmp_path_factory.mktemp("e2e") / "out"
    rc = main(_base_args(dataset, out))
    assert rc == 0
    return {**dataset, "output": out, "args": _base_args(dataset, out)}


@pytest.fixture(scope="module")
def engine(dataset):
    from annotator.config import EngineConfig
    from annotator.engine import Engine
    from annotator.inputs.vocab import load_vocabulary

    return Engine(EngineConfig(model="toy", saliency="toy", device="cpu"), load_vocabulary(dataset["vocab"]))


def _decode(path: Path) -> np.ndarray:
    from annotator.inputs.decode import decode_image

    return decode_image(path.read_bytes(), name=path.name)


# ----------------------------------------------------------------------------- the run


@pytest.mark.slow
def test_every_image_appears_exactly_once(e2e):
    out = e2e["output"]
    rows = _rows(out / "annotations.parquet")
    expected_names = sorted(e2e["labels"])
    assert [r["image_id"] for r in rows] == list(range(1, NUM_IMAGES + 1))
    assert [r["file_name"] for r in rows] == expected_names
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert all((r["height"], r["width"]) == SIZE_HW for r in rows)

    part_files = sorted((out / "parts").glob("part-*.parquet"))
    n_shards = -(-NUM_IMAGES // SHARD_SIZE)
    assert len(part_files) == n_shards
    ids_in_parts = [r["image_id"] for p in part_files for r in _rows(p)]
    assert sorted(ids_in_parts) == list(range(1, NUM_IMAGES + 1))  # no duplicate, none missing
    assert [len(_rows(p)) for p in part_files] == [SHARD_SIZE] * (n_shards - 1) + [NUM_IMAGES % SHARD_SIZE]

    manifest = json.loads((out / "manifest.json").read_text())
    validate(manifest, "manifest")
    assert sorted(int(k) for k in manifest["finished"]) == list(range(n_shards))
    for entry in manifest["finished"].values():
        assert entry["sha256"] == _sha256(out / entry["path"])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == summary["expected_images"] == summary["ok"] == NUM_IMAGES
    assert summary["failed"] == 0
    assert summary["annotations"] == sum(len(r["annotations"]) for r in rows)
    assert summary["classes_never_predicted"] == []
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_rows_valid_against_schema(e2e):
    out = e2e["output"]
    n = 0
    for path in [out / "annotations.parquet", *sorted((out / "parts").glob("part-*.parquet"))]:
        for row in _rows(path):
            validate_row(row)
            records.ImageRecord.from_row(row)
            n += 1
    assert n == 2 * NUM_IMAGES


@pytest.mark.slow
def test_masks_decode_to_the_engine_labels(e2e, engine):
    """The RLE masks in the output are exactly what the engine predicts (run in-process)."""
    by_name = {r["file_name"]: r for r in _rows(e2e["output"] / "annotations.parquet")}
    names = sorted(by_name)[:: NUM_IMAGES // 4][:4]
    preds = engine.predict([_decode(e2e["images"] / n) for n in names], names=names)
    for name, pred in zip(names, preds, strict=True):
        rec = records.ImageRecord.from_row(by_name[name])
        decoded = records.labels_from_annotations(rec.annotations, rec.size_hw)
        assert decoded.shape == pred.labels_hw.shape == SIZE_HW
        np.testing.assert_array_equal(decoded, pred.labels_hw, err_msg=name)
        for a in rec.annotations:
            assert a.category_name == CLASS_NAMES[a.category_id]
            mask = records.decode_mask(a.segmentation)
            assert a.area == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert a.bbox_xywh == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.mark.slow
def test_metrics_equal_a_direct_computation(e2e):
    out = e2e["output"]
    k = len(CLASS_NAMES)
    cm = np.zeros((k, k), np.int64)
    for row in _rows(out / "annotations.parquet"):
        rec = records.ImageRecord.from_row(row)
        pred = records.labels_from_annotations(rec.annotations, rec.size_hw)
        gt = e2e["labels"][rec.file_name]
        cm += metrics.released_protocol_confusion(pred, gt, k)
    expected = metrics.scores_from_confusion(cm, CLASS_NAMES)

    got = json.loads((out / "metrics.json").read_text())
    assert got["confusion_matrix"] == cm.tolist()
    assert got["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert got["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    for c in CLASS_NAMES:
        assert got["per_class_iou"][c] == pytest.approx(expected["per_class_iou"][c], abs=1e-12)
    assert got["miou"] >= 0.9, got["per_class_iou"]
    validate(got, "metrics")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["miou"] == pytest.approx(got["miou"])


@pytest.mark.slow
def test_coco_json_loads_in_pycocotools(e2e):
    from pycocotools.coco import COCO

    out = e2e["output"]
    rows = _rows(out / "annotations.parquet")
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getImgIds()) == NUM_IMAGES
    assert len(coco.getAnnIds()) == sum(len(r["annotations"]) for r in rows)
    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in cats] == list(enumerate(VOCAB, start=1))
    doc = json.loads((out / "coco.json").read_text())
    assert all(a["iscrowd"] == 0 for a in doc["annotations"])
    assert all(a["category_id"] >= 1 for a in doc["annotations"])

    # one image's masks, through pycocotools, equal the Parquet masks
    row = rows[NUM_IMAGES // 2]
    (img,) = [i for i in coco.loadImgs(coco.getImgIds()) if i["file_name"] == row["file_name"]]
    assert (img["height"], img["width"]) == SIZE_HW
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
    assert sorted(a["category_id"] for a in anns) == [a["category_id"] for a in row["annotations"]]
    for a in anns:
        (pa_ann,) = [x for x in row["annotations"] if x["category_id"] == a["category_id"]]
        np.testing.assert_array_equal(coco.annToMask(a), records.decode_mask(pa_ann["segmentation"]))
        assert a["area"] == pa_ann["area"]


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_recomputes_only_the_missing_shard(e2e, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(e2e["output"], out)
    before = {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (out / "parts").glob("part-*.parquet")}
    victim = out / "parts" / "part-00003.parquet"
    victim.unlink()

    args = _base_args(e2e, out)
    rc, err = _run(capsys, *args)
    assert rc == 0, err
    n_shards = len(before)
    assert f"in {n_shards} shards ({n_shards - 1} shards, {NUM_IMAGES - SHARD_SIZE} images, already done)" in err

    after = {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (out / "parts").glob("part-*.parquet")}
    assert set(after) == set(before)
    for name in before:
        if name != victim.name:
            assert after[name] == before[name], f"{name} was rewritten"
    assert after[victim.name][1] != before[victim.name][1]  # recomputed...
    assert _rows(victim) == _rows(e2e["output"] / "parts" / victim.name)  # ...to the same rows
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"]["3"]["sha256"] == after[victim.name][0]

    assert _rows(out / "annotations.parquet") == _rows(e2e["output"] / "annotations.parquet")
    assert json.loads((out / "metrics.json").read_text()) == json.loads((e2e["output"] / "metrics.json").read_text())

    # nothing left to do: a third run recomputes nothing
    rc, err = _run(capsys, *args)
    assert rc == 0 and f"({n_shards} shards, {NUM_IMAGES} images, already done)" in err
    assert {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (out / "parts").glob("part-*.parquet")} == after


@pytest.mark.slow
def test_a_crash_log_from_an_earlier_run_makes_its_shard_careful(e2e, tmp_path, capsys):
    """A shard whose worker died twice on one image in an earlier run (its crash log
    says so) is resumed carefully: that image gets a worker-crashed row, the rest of the
    shard is recomputed as before, and the log is removed."""
    out = tmp_path / "out"
    shutil.copytree(e2e["output"], out)
    victim = out / "parts" / "part-00003.parquet"
    names = [r["file_name"] for r in _rows(victim)]
    victim.unlink()
    (out / "parts" / ".crashlog-00003.json").write_text(
        json.dumps({"shard_index": 3, "deaths": {names[0]: 2}, "current": None}))

    rc, err = _run(capsys, *_base_args(e2e, out), "--max-failure-rate", "1")
    assert rc == 0, err
    rows = {r["file_name"]: r for r in _rows(victim)}
    before = {r["file_name"]: r for r in _rows(e2e["output"] / "parts" / victim.name)}
    assert rows[names[0]]["status"] == "error" and rows[names[0]]["error"].startswith("worker-crashed: ")
    assert all(rows[n] == before[n] for n in names[1:])
    assert not (out / "parts" / ".crashlog-00003.json").exists()


@pytest.mark.slow
def test_parts_missing_from_the_manifest_are_taken_back(e2e, tmp_path, capsys):
    """The driver saves manifest.json at most every few seconds: parts written after its
    last save (driver killed) are taken back on resume, not recomputed."""
    out = tmp_path / "out"
    shutil.copytree(e2e["output"], out)
    before = {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (out / "parts").glob("part-*.parquet")}
    doc = json.loads((out / "manifest.json").read_text())
    listed = doc["finished"]
    doc["finished"] = {k: v for k, v in listed.items() if int(k) < 2}
    (out / "manifest.json").write_text(json.dumps(doc))

    rc, err = _run(capsys, *_base_args(e2e, out))
    assert rc == 0, err
    assert f"in {len(before)} shards ({len(before)} shards, {NUM_IMAGES} images, already done)" in err
    assert {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (out / "parts").glob("part-*.parquet")} == before
    # the same parts, digests and row counts; where a taken-back part was made is not known
    def same(entries: dict) -> dict:
        return {k: {f: v for f, v in e.items() if f != "made_by"} for k, e in entries.items()}

    assert same(json.loads((out / "manifest.json").read_text())["finished"]) == same(listed)
    assert _rows(out / "annotations.parquet") == _rows(e2e["output"] / "annotations.parquet")


@pytest.mark.slow
def test_other_configuration_is_refused_unless_overwrite(e2e, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(e2e["output"], out)
    manifest_before = (out / "manifest.json").read_text()
    parts_before = {p.name: _sha256(p) for p in (out / "parts").glob("*.parquet")}

    rc, err = _run(capsys, *_base_args(e2e, out), "--protocol", "official")
    assert rc == 2
    assert "--overwrite" in err and "settings" in err
    # the message says what changed, not two hashes
    assert 'engine.protocol "full" (now "official")' in err, err
    assert json.loads(manifest_before)["config_hash"] not in err
    assert (out / "manifest.json").read_text() == manifest_before  # untouched
    assert {p.name: _sha256(p) for p in (out / "parts").glob("*.parquet")} == parts_before

    # --overwrite: runs afresh (here over a subset, without ground truth)
    subset = sorted(e2e["labels"])[:5]
    image_list = tmp_path / "subset.txt"
    image_list.write_text("\n".join(subset) + "\n")
    args = [a for a in _base_args(e2e, out)]
    gt_at = args.index("--gt")
    del args[gt_at : gt_at + 2]
    rc, err = _run(capsys, *args, "--protocol", "official", "--overwrite", "--image-list", str(image_list), "--no-report")
    assert rc == 0, err
    rows = _rows(out / "annotations.parquet")
    assert [r["file_name"] for r in rows] == subset
    assert [p.name for p in sorted((out / "parts").glob("*.parquet"))] == ["part-00000.parquet"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["protocol"] == "official" and summary["images"] == 5
    assert json.loads((out / "manifest.json").read_text())["config_hash"] != json.loads(manifest_before)["config_hash"]
    # nothing of the replaced run outlives it (it had metrics and a report; this one has neither)
    assert not (out / "metrics.json").exists(), "metrics.json of the replaced run was left behind"
    assert not (out / "report.html").exists() and not (out / "previews").exists()


# ----------------------------------------------------------------------------- sources


def _png_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _write_hf_dataset(path: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A ``save_to_disk`` dataset with an ``image`` and a ``label`` (VOC-style PNG) column."""
    datasets = pytest.importorskip("datasets")
    from tests.synthetic import make_image

    pairs = [make_image(100 + i, SIZE_HW) for i in range(n)]
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rgb) for rgb, _ in pairs],
         "label": [Image.fromarray(lab, mode="L") for _, lab in pairs]}
    ).cast_column("image", datasets.Image()).cast_column("label", datasets.Image())
    ds.save_to_disk(str(path))
    return pairs


def _hf_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--hf-dataset", str(tmp_path / "hf"), "--vocab", str(write_vocab(tmp_path / "v.txt")),
            "--model", "toy", "--saliency", "toy", "--output", str(tmp_path / "out"), "--shard-size", "4",
            "--device", "cpu", "--quiet", "--no-report", *extra]


@pytest.mark.slow
def test_hugging_face_dataset_source(tmp_path, ray_session, capsys):
    pairs = _write_hf_dataset(tmp_path / "hf", 6)
    rc, err = _run(capsys, *_hf_args(tmp_path))
    assert rc == 0, err
    rows = _rows(tmp_path / "out" / "annotations.parquet")
    assert [r["file_name"] for r in rows] == [f"{i:08d}.png" for i in range(6)]
    assert [r["uri"] for r in rows] == [f"hf://{tmp_path / 'hf'}/train/{i}" for i in range(6)]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for row, (_, lab) in zip(rows, pairs, strict=True):
        rec = records.ImageRecord.from_row(row)
        pred = records.labels_from_annotations(rec.annotations, rec.size_hw)
        assert (pred == lab).mean() > 0.97, row["file_name"]


@pytest.mark.slow
def test_hugging_face_label_column_as_ground_truth(tmp_path, ray_session, capsys):
    _write_hf_dataset(tmp_path / "hf", 4)
    rc, err = _run(capsys, *_hf_args(tmp_path, "--gt", "hf-column:label"))
    assert rc == 0, err
    scores = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert scores["miou"] >= 0.9
    assert scores["num_pixels"] > 0


def test_memory_source_in_process(tmp_path):
    """A ``memory://`` fsspec source, listed and processed WITHOUT Ray.

    fsspec's memory filesystem lives in this process only; Ray actors are other processes
    and cannot see it, so here the run's building blocks are driven in-process:
    ``list_images`` -> ``make_shards`` -> ``ShardProcessor.process`` (what an actor does)
    -> ``reduce_output``, with the output on ``memory://`` as well.
    """
    import fsspec

    from annotator.config import EngineConfig
    from annotator.engine import Engine
    from annotator.inputs.listing import list_images
    from annotator.inputs.vocab import Vocabulary
    from annotator.outputs.merge import reduce_output
    from annotator.shards.processor import ShardProcessor
    from annotator.shards.task import RunOptions, make_shards
    from tests.synthetic import make_image

    fs = fsspec.filesystem("memory")
    root = f"/annotator-test-{tmp_path.name}"
    truth = {}
    for i in range(5):
        rgb, lab = make_image(200 + i, SIZE_HW)
        name = f"{'a/' if i % 2 else ''}m{i}.png"
        fs.pipe(f"{root}/images/{name}", _png_bytes(rgb))
        truth[name] = lab
    fs.pipe(f"{root}/images/notes.txt", b"not an image")
    try:
        refs = list_images(f"memory://{root}/images")
        assert [r.file_name for r in refs] == sorted(truth)
        assert all(r.uri.startswith("memory://") for r in refs)

        vocabulary = Vocabulary.from_names(VOCAB)
        engine = Engine(EngineConfig(model="toy", saliency="toy", device="cpu", batch_size=2), vocabulary)
        output = f"memory://{root}/out"
        meta = {"vocabulary": vocabulary.names, "config_hash": "test", "num_images": len(refs)}
        proc = ShardProcessor(engine, RunOptions(output=output, metadata=meta))
        try:
            results = [proc.process(t) for t in make_shards(refs, 3)]
        finally:
            proc.close()
        assert [r.rows for r in results] == [3, 2] and all(r.errors == 0 for r in results)

        summary = reduce_output(output, report=False)
        assert summary["images"] == 5 and summary["failed"] == 0
        got = list(parts.iter_rows([f"{output}/annotations.parquet"]))
        assert [r["file_name"] for r in got] == sorted(truth)
        for row in got:
            rec = records.ImageRecord.from_row(row)
            pred = records.labels_from_annotations(rec.annotations, rec.size_hw)
            assert (pred == truth[row["file_name"]]).mean() > 0.97
        assert fs.exists(f"{root}/out/coco.json")
    finally:
        fs.rm(root, recursive=True)


@pytest.mark.slow
def test_image_list_selects_images(e2e, tmp_path, capsys):
    names = sorted(e2e["labels"])
    # one entry per accepted form: image_id, relative path, stem with folders, bare stem
    entries = ["id:2", names[10], names[20].rsplit(".", 1)[0], Path(names[30]).stem]
    image_list = tmp_path / "val.txt"
    image_list.write_text("\n".join(entries) + "\n\n")
    out = tmp_path / "out"
    args = [a if a != str(e2e["output"]) else str(out) for a in e2e["args"]]
    rc, err = _run(capsys, *args, "--image-list", str(image_list), "--no-report")
    assert rc == 0, err
    rows = _rows(out / "annotations.parquet")
    assert [r["file_name"] for r in rows] == [names[1], names[10], names[20], names[30]]
    assert [r["image_id"] for r in rows] == [2, 11, 21, 31]  # ids of the full listing are kept


def test_image_list_matching_nothing_is_refused(dataset, tmp_path, capsys):
    image_list = tmp_path / "val.txt"
    image_list.write_text("no_such_image\n")
    rc, err = _run(capsys, *_base_args(dataset, tmp_path / "out"), "--image-list", str(image_list))
    assert rc == 2
    assert "--image-list" in err and "none of its 1 entries" in err


# ----------------------------------------------------------------------------- defaults and CLI


def test_default_model_fails_fast_without_weights(tmp_path, monkeypatch, capsys):
    """No weights can be downloaded here: the default run must stop before any work,
    naming the options that supply the weights."""
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    monkeypatch.setenv("ANNOTATOR_WEIGHTS_DIR", str(tmp_path / "empty-cache"))
    out = tmp_path / "out"
    rc, err = _run(capsys, "--output", str(out))
    assert rc == 2
    for option in ("--pretrained", "--dino-weights", "--found-weights"):
        assert option in err, err
    assert not out.exists(), "the output was created before the configuration was validated"


@pytest.mark.slow
def test_bundled_samples_with_toy_models(tmp_path, ray_session, capsys):
    from annotator.inputs.vocab import load_vocabulary
    from annotator.run import SAMPLES_DIR

    out = tmp_path / "out"
    rc, err = _run(capsys, "--model", "toy", "--saliency", "toy", "--output", str(out))
    assert rc == 0, err
    rows = _rows(out / "annotations.parquet")
    samples = sorted(p.name for p in SAMPLES_DIR.glob("*.jpg"))
    assert [r["file_name"] for r in rows] == samples
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        with Image.open(SAMPLES_DIR / r["file_name"]) as im:
            assert (r["width"], r["height"]) == im.size
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_class"]) == set(load_vocabulary(SAMPLES_DIR / "vocab.txt").names[1:])
    for name in ("coco.json", "summary.json", "report.html", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "metrics.json").exists()
    # the last line points to what a person looks at; one shard, no "1 shards"
    assert err.strip().splitlines()[-1].endswith(f"see {out}/report.html"), err
    assert "5 images in 1 shard from" in err
    # the metadata names what was loaded: the toy model has no weights
    assert summary["run"]["pretrained"] == "none (toy model: no weights)"
    coco = json.loads((out / "coco.json").read_text())
    assert coco["info"]["pretrained"] == "none (toy model: no weights)"
    meta = json.loads(pq.read_schema(next((out / "parts").glob("*.parquet"))).metadata[b"annotator"])
    assert meta["weights"] == {"clip": "none (toy model: no weights)"}


def test_help_lists_every_option(capsys):
    from annotator.run import build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    options = {s for a in build_parser()._actions for s in a.option_strings}
    assert len(options) > 30
    missing = sorted(o for o in options if o not in text)
    assert not missing, missing
    for name in ("--vocab", "--source", "--hf-dataset", "--output", "--overwrite", "--gt", "--shard-size",
                 "--num-actors", "--address", "--ray-address", "--model", "--saliency", "--protocol", "--device",
                 "--dino-weights", "--found-weights", "--image-list", "--storage-options"):
        assert name in text


def test_help_shows_each_default_once():
    from annotator.cli import HelpFormatter
    from annotator.run import build_parser

    parser = build_parser()
    formatter = HelpFormatter(parser.prog)
    for action in parser._actions:
        text = formatter._expand_help(action) if action.help else ""
        assert text.lower().count("default") <= 1, (action.option_strings, text)
        if action.default not in (None, False, "==SUPPRESS==") and action.help:
            assert "default" in text.lower(), (action.option_strings, text)  # ...but shown


def test_device_cuda_without_cuda_exits_2_before_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    for device in ("cuda", "cuda:1"):
        rc, err = _run(capsys, "--model", "toy", "--saliency", "toy", "--device", device, "--output", str(out))
        assert rc == 2, err
        assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip().splitlines()[-1]]
        assert f"--device {device}: expected a CUDA device, got 0" in err
    rc, err = _run(capsys, "--model", "toy", "--saliency", "toy", "--device", "gpu", "--output", str(out))
    assert rc == 2 and "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in err
    assert not out.exists()


def test_bad_arguments_exit_2_before_work(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, "--source", str(tmp_path), "--hf-dataset", "x", "--output", str(out))
    assert rc == 2 and "mutually exclusive" in err
    rc, err = _run(capsys, "--model", "toy", "--saliency", "toy", "--source", str(tmp_path / "missing"),
                   "--output", str(out))
    assert rc == 2 and "missing" in err
    rc, err = _run(capsys, "--model", "toy", "--saliency", "toy", "--storage-options", "[1]", "--output", str(out))
    assert rc == 2 and "--storage-options" in err
    assert not out.exists()
