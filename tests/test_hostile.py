"""The promises of "Failure behaviour" under hostile conditions (issue #11), driving the
real command (``annotator.run.main`` / ``annotator.reduce.main``, and subprocesses for
signals) on synthetic images with the toy models.

- resume verifies before it trusts: a flipped byte or a cut-short finished part is
  recomputed with a warning naming the file, to the same rows;
- complete or failed: a deleted part makes the reducer exit 2 naming the shard;
- one writer per output: a held lease refuses a second run and a second reducer;
- SIGINT / SIGTERM mid-run: exit 130 / 143, then a resume gives the rows of an
  uninterrupted run;
- bounded reads: a FIFO and a symlink to /dev/zero are `unreadable` rows;
- `--overwrite` never deletes what a run did not write; the output inside the source is
  not listed; a class name with a comma can be selected with `--classes`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator.reduce import main as reduce_main
from annotator.run import main
from annotator.storage.lock import OutputLock
from annotator.storage.retry import is_transient_storage_error
from tests.synthetic import write_dataset, write_vocab

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parent.parent


def _rows(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["image_id"])


def _argv(ds: dict, output: Path, *extra: str) -> list[str]:
    return ["--vocab", str(ds["vocab"]), "--source", str(ds["images"]), "--model", "toy", "--saliency", "toy",
            "--device", "cpu", "--output", str(output), "--shard-size", "4", "--num-actors", "1", "--quiet",
            "--no-report", *extra]


def _run(capsys, argv: list[str], cli=main) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(argv)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    images, _, _ = write_dataset(root / "data", 12, size_hw=(48, 64))
    return {"root": root, "images": images, "vocab": write_vocab(root / "v.txt")}


@pytest.fixture(scope="module")
def reference(ds, ray_session, tmp_path_factory) -> Path:
    """An uninterrupted run: what every damaged, interrupted or resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(_argv(ds, out)) == 0
    return out


def _copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    return out


@pytest.mark.parametrize("damage", ["flip-a-byte", "cut-in-half", "another-shard"])
def test_resume_recomputes_a_part_that_does_not_verify(damage, ds, reference, tmp_path, capsys, caplog):
    out = _copy(reference, tmp_path)
    victim = out / "parts" / "part-00001.parquet"
    data = bytearray(victim.read_bytes())
    if damage == "flip-a-byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "cut-in-half":
        data = data[: len(data) // 2]
    else:
        data = bytearray((out / "parts" / "part-00002.parquet").read_bytes())
    victim.write_bytes(bytes(data))

    rc, err = _run(capsys, _argv(ds, out))
    assert rc == 0, err
    assert f"{victim} does not match what was written" in caplog.text, caplog.text
    assert "(2 shards, 8 images, already done)" in err  # the damaged one was not trusted
    assert _rows(out / "annotations.parquet") == _rows(reference / "annotations.parquet")
    coco = json.loads((out / "coco.json").read_text())
    assert coco["annotations"] == json.loads((reference / "coco.json").read_text())["annotations"]


def test_reduce_refuses_a_damaged_part_naming_it(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    victim = out / "parts" / "part-00000.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    rc, err = _run(capsys, [str(out), "--no-report"], cli=reduce_main)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: ") and str(victim) in err and "does not match what was written" in err


def test_reduce_after_a_deleted_part_fails_naming_the_shard(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    (out / "parts" / "part-00001.parquet").unlink()
    rc, err = _run(capsys, [str(out), "--no-report"], cli=reduce_main)
    assert rc == 2, err
    assert "1 of 3 shards have no part: shard 1 (images 5..8)" in err
    assert "run annotator.run with this run's arguments again" in err  # the reducer again would not finish it


def test_a_held_output_refuses_a_second_run_and_a_second_reducer(ds, reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    with OutputLock(str(out), what="annotator.run (test)") as lock:
        rc, err = _run(capsys, _argv(ds, out))
        assert rc == 2 and "is in use by another annotator.run (test)" in err and str(os.getpid()) in err
        rc, err = _run(capsys, [str(out), "--no-report"], cli=reduce_main)
        assert rc == 2 and "is in use by another" in err
        assert json.loads(Path(lock.path).read_text())["token"] == lock.token  # the holder's own lease
    assert not (out / ".annotator.lock").exists()  # released
    rc, err = _run(capsys, [str(out), "--no-report"], cli=reduce_main)  # free again
    assert rc == 0, err


def test_a_stale_lock_is_taken_over(reference, tmp_path, capsys, caplog):
    out = _copy(reference, tmp_path)
    (out / ".annotator.lock").write_text(json.dumps({"holder": "a run that died", "token": "x",
                                                     "acquired": "2026-01-01T00:00:00+00:00",
                                                     "heartbeat": time.time() - 3600}))
    rc, err = _run(capsys, [str(out), "--no-report"], cli=reduce_main)
    assert rc == 0, err
    assert "taking over a stale lock" in caplog.text and "a run that died" in caplog.text


def _subprocess_run(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "annotator.run", *argv], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_exits_with_its_code_and_resumes_to_the_same_rows(sig, code, ds, reference, tmp_path):
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="annhs-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    # one image per shard, so that the run is still going when the first part lands
    argv = [a if a != "4" else "1" for a in _argv(ds, out)]
    try:
        run = _subprocess_run(argv, env)
        deadline = time.monotonic() + 180
        while not list((out / "parts").glob("part-*.parquet")) and time.monotonic() < deadline:
            if run.poll() is not None:
                break
            time.sleep(0.1)
        run.send_signal(sig)
        _, err = run.communicate(timeout=120)
        assert run.returncode == code, err[-3000:]
        assert f"interrupted by {sig.name}" in err and "Traceback" not in err
        assert not (out / "annotations.parquet").exists()
        assert not list(out.rglob("*.tmp*"))  # nothing half-written left for a later run to trust
        rerun = subprocess.run([sys.executable, "-m", "annotator.run", *argv], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=240)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        got = [{k: v for k, v in r.items()} for r in _rows(out / "annotations.parquet")]
        assert got == _rows(reference / "annotations.parquet")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_fifo_and_device_are_unreadable_rows_not_a_hang(ds, tmp_path, capsys, ray_session):
    src = tmp_path / "src"
    shutil.copytree(ds["images"], src)
    os.mkfifo(src / "pipe.jpg")
    (src / "zeros.jpg").symlink_to("/dev/zero")
    (src / "big.jpg").write_bytes(b"\xff\xd8" + b"\0" * 5000)
    out = tmp_path / "out"
    argv = _argv({**ds, "images": src}, out, "--max-failure-rate", "1", "--max-bytes", "4096")
    rc, err = _run(capsys, argv)
    assert rc == 0, err
    rows = {r["file_name"]: r for r in _rows(out / "annotations.parquet")}
    assert rows["pipe.jpg"]["error"].startswith("unreadable: ") and "a FIFO, not a regular file" in rows["pipe.jpg"]["error"]
    assert "a device, not a regular file" in rows["zeros.jpg"]["error"]
    assert "5002 bytes, more than --max-bytes 4096" in rows["big.jpg"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 12


def test_overwrite_never_deletes_what_a_run_did_not_write(ds, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "parts").mkdir(parents=True)
    (out / "coco.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        rc, err = _run(capsys, _argv(ds, out, *extra))
        assert rc == 2, err
        assert "not an annotator run folder" in err and "coco.json" in err
    assert (out / "coco.json").read_text() == '{"mine": true}' and (out / "notes.txt").exists()


def test_overwrite_keeps_a_users_file_inside_parts(ds, reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    (out / "parts" / "README.txt").write_text("a note of mine")
    rc, err = _run(capsys, _argv(ds, out, "--overwrite", "--protocol", "official"))
    assert rc == 0, err
    assert (out / "parts" / "README.txt").read_text() == "a note of mine"


def test_output_inside_the_source_is_not_listed(ds, tmp_path, capsys, ray_session):
    src = tmp_path / "src"
    shutil.copytree(ds["images"], src)
    out = src / "labels"
    argv = [a for a in _argv({**ds, "images": src}, out) if a != "--no-report"]
    for _ in range(2):  # the second run resumes: its own previews are not new images
        rc, err = _run(capsys, argv)
        assert rc == 0, err
        rows = _rows(out / "annotations.parquet")
        assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    assert "(3 shards, 12 images, already done)" in err


def test_full_disk_is_not_retried():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert not is_transient_storage_error(full)
    assert not is_transient_storage_error(RuntimeError("ClientError: QuotaExceeded: quota exceeded"))
    assert not is_transient_storage_error(PermissionError(errno.EACCES, "denied"))
    assert is_transient_storage_error(TimeoutError("read timed out"))


def test_classes_with_a_comma_can_be_selected(ds, tmp_path, capsys):
    from annotator.export import export
    from annotator.export.common import ExportOptions, parse_classes

    vocab = tmp_path / "v.txt"
    vocab.write_text("red: red\nsalt, pepper: blue\n")
    out = tmp_path / "out"
    rc, err = _run(capsys, _argv({**ds, "vocab": vocab}, out))
    assert rc == 0, err
    for text in ('"salt, pepper"', "salt, pepper", 'red,"salt, pepper"'):
        result = export(str(out), "coco", str(tmp_path / "x"), ExportOptions(classes=parse_classes(text)))
        names = {c["name"] for c in json.loads(Path(result.paths[0]).read_text())["categories"]}
        assert "salt, pepper" in names, (text, names)


def _coco_gt(ds_root: Path, labels: dict, class_names: list[str]) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for i, (rel, lab) in enumerate(sorted(labels.items()), start=1):
        h, w = lab.shape
        images.append({"id": i, "file_name": rel, "width": w, "height": h})
        for c in sorted(set(np.unique(lab).tolist()) - {0, 255}):
            rle = mask_utils.encode(np.asfortranarray((lab == c).astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                                "area": int((lab == c).sum()), "bbox": [0, 0, w, h]})
    cats = [{"id": k, "name": n} for k, n in enumerate(class_names) if k]
    return {"images": images, "annotations": annotations, "categories": cats}


def test_bad_coco_ground_truth_stays_per_image(tmp_path, capsys, ray_session):
    """A wrong width, a missing height, a two-point polygon, an RLE of another size:
    each leaves its image out of the scores (named in metrics.json), the run goes on."""
    from tests.synthetic import VOCAB

    images, _, labels = write_dataset(tmp_path / "data", 8, size_hw=(48, 64))
    doc = _coco_gt(tmp_path, labels, ["background", *VOCAB])
    doc["images"][0]["width"] = 999
    del doc["images"][1]["height"]
    by_image = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], a)
    by_image[3]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]
    by_image[4]["segmentation"] = {"size": [10, 10], "counts": by_image[4]["segmentation"]["counts"]}
    gt = tmp_path / "instances.json"
    gt.write_text(json.dumps(doc))
    out = tmp_path / "out"
    ds = {"images": images, "vocab": write_vocab(tmp_path / "v.txt")}
    rc, err = _run(capsys, _argv(ds, out, "--gt", str(gt)))
    assert rc == 0, err
    rows = _rows(out / "annotations.parquet")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    errors = json.loads((out / "metrics.json").read_text())["ground_truth_errors"]
    named = {e["file_name"] for e in errors["first"]}
    bad = {sorted(labels)[k] for k in (0, 1, 2, 3)}
    assert bad <= named, errors
    assert all("object at 0x" not in e["error"] for e in errors["first"])


def test_paths_keep_their_meaning(tmp_path, capsys, ray_session):
    """A local file named x::y.jpg is read (no fsspec chaining); a real folder named with
    glob characters is listed literally; DIR/ and DIR are one source; a symlinked
    subfolder is listed (a loop is not followed twice)."""
    from PIL import Image

    from tests.synthetic import make_image

    src = tmp_path / "we[ir]d?"
    (src / "sub").mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    for i, path in enumerate([src / "x::y.png", src / "sub" / "a.png", other / "linked.png"]):
        Image.fromarray(make_image(i, (48, 64))[0]).save(path)
    (src / "link").symlink_to(other)
    (src / "sub" / "loop").symlink_to(src)
    vocab = write_vocab(tmp_path / "v.txt")
    out = tmp_path / "out"
    ds = {"images": str(src) + "/", "vocab": vocab}
    rc, err = _run(capsys, _argv(ds, out))
    assert rc == 0, err
    rows = {r["file_name"]: r for r in _rows(out / "annotations.parquet")}
    assert set(rows) == {"x::y.png", "sub/a.png", "link/linked.png"}, set(rows)
    assert all(r["status"] == "ok" for r in rows.values())
    rc, err = _run(capsys, _argv({**ds, "images": str(src)}, out))  # no trailing slash: the same run
    assert rc == 0 and "(1 shard, 3 images, already done)" in err, err


def test_every_image_list_entry_gets_a_row(ds, tmp_path, capsys, ray_session):
    listing = tmp_path / "val.txt"
    names = sorted(p.relative_to(ds["images"]).as_posix() for p in Path(ds["images"]).rglob("*.png"))
    listing.write_text("\n".join([names[0], names[1], "not_there", "sub9/also_missing"]) + "\n")
    out = tmp_path / "out"
    rc, err = _run(capsys, _argv(ds, out, "--image-list", str(listing), "--max-failure-rate", "1"))
    assert rc == 0, err
    rows = {r["file_name"]: r for r in _rows(out / "annotations.parquet")}
    assert set(rows) == {names[0], names[1], "not_there", "sub9/also_missing"}
    assert rows["not_there"]["error"].startswith("missing: ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["failed"] == 2


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs mount of its own (skipped where mounting is not allowed); yields a function
    that mounts it with a size in bytes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size_bytes: int) -> Path:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


@pytest.mark.parametrize("command", ["run", "reduce"])
def test_a_full_disk_while_merging_is_one_line_and_leaves_nothing(command, ds, reference, small_tmpfs, capsys):
    """The parts fit, the merged file does not: exit 2, one `error:` line naming the
    file system's complaint, no temporary file left, and the finished parts untouched."""
    used = sum(p.stat().st_size for p in (reference / "parts").iterdir()) + (reference / "manifest.json").stat().st_size
    mnt = small_tmpfs(used + 3 * 4096 + 4096)
    out = mnt / "out"
    out.mkdir()
    shutil.copytree(reference / "parts", out / "parts")
    shutil.copy(reference / "manifest.json", out / "manifest.json")
    before = sorted(p.name for p in (out / "parts").iterdir())
    if command == "run":
        rc, err = _run(capsys, _argv(ds, out))
    else:
        rc, err = _run(capsys, [str(out), "--no-report"], cli=reduce_main)
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert "Traceback" not in err
    assert not list(out.rglob("*.tmp*")), list(out.rglob("*"))
    assert sorted(p.name for p in (out / "parts").iterdir()) == before


@pytest.mark.slow
def test_two_concurrent_runs_and_two_concurrent_reducers(ds, reference, tmp_path):
    """Real processes at once on one output: exactly one run writes it, the other is
    refused naming the holder; two reducers never share a temporary file, and whatever
    the interleaving the merged result is the reference's."""
    ray_tmp = tempfile.mkdtemp(prefix="annhc-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "out"
    try:
        runs = [_subprocess_run(_argv(ds, out), env) for _ in range(2)]
        results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is in use by another annotator.run" in refused and "Traceback" not in refused
    assert _rows(out / "annotations.parquet") == _rows(reference / "annotations.parquet")

    reducers = [subprocess.Popen([sys.executable, "-m", "annotator.reduce", str(out)], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(r.wait(timeout=300), r.stderr.read()) for r in reducers]
    assert 0 in {rc for rc, _ in outcomes}, outcomes
    for rc, err in outcomes:
        assert rc == 0 or (rc == 2 and "is in use by another annotator.reduce" in err), (rc, err)
        assert "Traceback" not in err
    assert not list(out.rglob("*.tmp*"))
    assert _rows(out / "annotations.parquet") == _rows(reference / "annotations.parquet")
