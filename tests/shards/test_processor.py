"""The shard processor: two shards at once, the device held by one at a time; a bad
ground truth leaves the image's row intact and is reported, not a failed shard."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator.config import EngineConfig
from annotator.engine import Engine
from annotator.evaluation.metrics import resize_gt_short_side
from annotator.inputs.listing import list_images
from annotator.inputs.vocab import Vocabulary
from annotator.outputs.merge import reduce_output
from annotator.shards.processor import ShardProcessor, process_shards
from annotator.shards.task import RunOptions, make_shards
from annotator.storage import parts
from tests.synthetic import VOCAB, write_dataset

SIZE_HW = (48, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    images, gt, truth = write_dataset(root, 10, size_hw=SIZE_HW, nested=False)
    return images, gt, truth


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineConfig(model="toy", saliency="toy", device="cpu", batch_size=2), Vocabulary.from_names(VOCAB))


class DeviceSpy:
    """Wraps an engine: records which shard called ``predict`` when, and fails the test
    if two calls overlap (the device must be held by one shard at a time)."""

    def __init__(self, engine, delay_s: float = 0.01):
        self.engine, self.delay_s = engine, delay_s
        self.config, self.device, self.vocabulary, self.timings = engine.config, engine.device, engine.vocabulary, engine.timings
        self.precision = engine.precision
        self.calls: list[str] = []
        self.active = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def predict(self, images, names=None):
        with self._lock:
            self.active += 1
            self.overlaps += self.active > 1
            self.calls.append(names[0].split("_")[0] if names else "?")
        try:
            time.sleep(self.delay_s)  # a device call: releases the GIL, like a GPU kernel wait
            return self.engine.predict(images, names=names)
        finally:
            with self._lock:
                self.active -= 1


def _parts_by_shard(output: str) -> dict[int, list[dict]]:
    return {int(Path(p).stem.split("-")[1]): list(parts.iter_rows([p])) for p in parts.list_parts(output)}


def test_two_shards_at_once_give_the_same_parts_and_never_share_the_device(dataset, engine, tmp_path):
    images, _, _ = dataset
    refs = list_images(str(images))
    tasks = make_shards(refs, 3)  # 4 shards: 3, 3, 3, 1 images
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}

    serial_out = str(tmp_path / "serial")
    proc = ShardProcessor(engine, RunOptions(output=serial_out, metadata=meta))
    try:
        serial = [proc.process(t) for t in tasks]
    finally:
        proc.close()

    spy = DeviceSpy(engine)
    both_out = str(tmp_path / "both")
    proc = ShardProcessor(spy, RunOptions(output=both_out, metadata=meta))
    try:
        results = list(process_shards(proc, tasks, concurrency=2))
    finally:
        proc.close()

    assert [r.shard_index for r in results] == [0, 1, 2, 3]  # in order
    assert [r.sha256 for r in results] == [r.sha256 for r in serial]  # byte-identical parts
    assert _parts_by_shard(both_out) == _parts_by_shard(serial_out)
    assert spy.overlaps == 0
    for r in results:
        assert r.rows == len(tasks[r.shard_index].refs) and r.errors == 0
        assert r.stages["clip"] > 0 and "device_wait" in r.stages  # engine stages per shard
    # every engine call was counted in exactly one shard's stages
    assert sum(r.stages["clip"] for r in results) == pytest.approx(engine.timings["clip"] - sum(
        r.stages["clip"] for r in serial), rel=1e-6)


def test_process_shards_validates_concurrency(engine, tmp_path):
    proc = ShardProcessor(engine, RunOptions(output=str(tmp_path), metadata={}))
    try:
        with pytest.raises(ValueError, match="concurrency: expected >= 1, got 0"):
            list(process_shards(proc, [], concurrency=0))
    finally:
        proc.close()


def test_wrong_size_ground_truth_is_left_out_of_the_scores_not_the_output(dataset, engine, tmp_path):
    images, gt, truth = dataset
    bad_gt = tmp_path / "gt"
    bad_gt.mkdir()
    names = sorted(truth)
    for name in names:
        (bad_gt / Path(name).with_suffix(".png").name).write_bytes((gt / Path(name).with_suffix(".png")).read_bytes())
    victim = names[4]
    Image.fromarray(np.zeros((SIZE_HW[0] + 1, SIZE_HW[1]), np.uint8), mode="L").save(
        bad_gt / Path(victim).with_suffix(".png").name)

    refs = list_images(str(images))
    output = str(tmp_path / "out")
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test", "num_images": len(refs)}
    proc = ShardProcessor(engine, RunOptions(output=output, metadata=meta, gt_spec=str(bad_gt)))
    try:
        results = list(process_shards(proc, make_shards(refs, 4)))
    finally:
        proc.close()
    assert [r.rows for r in results] == [4, 4, 2] and all(r.errors == 0 for r in results)
    shard_meta = parts.read_part_metadata(results[1].path)
    assert [e["file_name"] for e in shard_meta["gt_errors"]] == [victim]
    assert "(48, 64)" in shard_meta["gt_errors"][0]["error"] and "(49, 64)" in shard_meta["gt_errors"][0]["error"]

    summary = reduce_output(output, report=False)
    assert summary["images"] == 10 and summary["failed"] == 0  # the victim's prediction is kept
    scores = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert scores["ground_truth_errors"]["count"] == 1
    assert scores["ground_truth_errors"]["first"][0]["file_name"] == victim
    # the scores count the other 9 images' pixels only (ground truth resized as the released protocol does)
    assert scores["num_pixels"] == sum(int(np.count_nonzero(resize_gt_short_side(lab) != 255))
                                       for name, lab in truth.items() if name != victim)
    merged_meta = parts.read_part_metadata(f"{output}/annotations.parquet")
    assert "gt_errors" not in merged_meta and "confusion" not in merged_meta


def _rows_by_name(path: str) -> dict[str, dict]:
    return {r["file_name"]: r for r in parts.iter_rows([path])}


def test_careful_mode_names_each_image_before_reading_it_and_matches_normal_rows(dataset, engine, tmp_path,
                                                                                   monkeypatch):
    from annotator.shards import processor as worker
    from annotator.storage.crashlog import CrashLog

    images, _, _ = dataset
    refs = list_images(str(images))
    task = make_shards(refs, 5)[1]  # images 5..9
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    normal_out, careful_out = str(tmp_path / "normal"), str(tmp_path / "careful")
    proc = ShardProcessor(engine, RunOptions(output=normal_out, metadata=meta))
    try:
        normal = proc.process(task)
    finally:
        proc.close()

    log_path = tmp_path / "careful" / "parts" / f".crashlog-{task.shard_index:05d}.json"
    seen = []
    real_read = worker.read_image_bytes

    def spy(ref, storage_options=None, **kwargs):
        seen.append((ref.file_name, json.loads(log_path.read_text())["current"]))
        return real_read(ref, storage_options, **kwargs)

    monkeypatch.setattr(worker, "read_image_bytes", spy)
    task.careful = True
    proc = ShardProcessor(engine, RunOptions(output=careful_out, metadata=meta))
    try:
        careful = proc.process(task)
    finally:
        proc.close()
    assert seen == [(r.file_name, r.file_name) for r in task.refs]  # one at a time, each logged first
    assert careful.sha256 == normal.sha256  # the same part, byte for byte
    assert not log_path.exists()  # removed once the part is written
    assert CrashLog(careful_out, task.shard_index).crashed == []


def test_an_image_the_worker_died_on_twice_becomes_one_error_row(dataset, engine, tmp_path):
    images, _, _ = dataset
    refs = list_images(str(images))
    task = make_shards(refs, 5)[0]
    victim, once = task.refs[2].file_name, task.refs[3].file_name
    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    log_path = out / "parts" / ".crashlog-00000.json"
    # an earlier careful attempt died on `victim` once before, and again now; `once` only once
    log_path.write_text(json.dumps({"shard_index": 0, "deaths": {victim: 1, once: 1}, "current": victim}))
    task.careful = True
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    proc = ShardProcessor(engine, RunOptions(output=str(out), metadata=meta))
    try:
        res = proc.process(task)
    finally:
        proc.close()
    assert res.rows == 5 and res.errors == 1
    rows = _rows_by_name(res.path)
    assert rows[victim]["status"] == "error" and rows[victim]["error"].startswith("worker-crashed: ")
    assert all(rows[r.file_name]["status"] == "ok" for r in task.refs if r.file_name != victim)
    assert not log_path.exists()


# ----------------------------------------------------------------------------- device faults (issue 21.1)


class FaultyDevice:
    """Wraps an engine: ``predict`` raises ``make_error()`` while ``faults`` calls are left,
    and on every call whose batch holds an image named in ``poison`` (that image breaks
    the device by itself)."""

    def __init__(self, engine, make_error, faults: int = 0, poison: tuple[str, ...] = ()):
        self.engine, self.make_error, self.faults, self.poison = engine, make_error, faults, poison
        self.config, self.device, self.vocabulary, self.timings = engine.config, engine.device, engine.vocabulary, engine.timings
        self.precision = engine.precision
        self.batches: list[int] = []

    def predict(self, images, names=None):
        self.batches.append(len(images))
        if self.faults > 0 or any(n in self.poison for n in names or ()):
            self.faults -= 1
            raise self.make_error()
        return self.engine.predict(images, names=names)


def _process(engine, tmp_path, task, name="out"):
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    proc = ShardProcessor(engine, RunOptions(output=str(tmp_path / name), metadata=meta))
    try:
        return proc, proc.process(task), _parts_by_shard(str(tmp_path / name))
    finally:
        proc.close()


def test_a_device_fault_fails_the_attempt_and_the_retry_gives_the_same_part(dataset, engine, tmp_path):
    """A CUDA out-of-memory on the first batch: no part, no error row, a DeviceFaultError
    (the scheduler runs the shard again); the processor's batch is halved, and the retry's
    part holds the same rows as a run without the fault."""
    from annotator.shards.task import DeviceFaultError

    images, _, _ = dataset
    task = make_shards(list_images(str(images)), 4)[0]
    _, clean, clean_rows = _process(engine, tmp_path, task, "clean")
    oom = FaultyDevice(engine, lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), faults=1)
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    proc = ShardProcessor(oom, RunOptions(output=str(tmp_path / "out"), metadata=meta))
    try:
        with pytest.raises(DeviceFaultError, match="out of memory") as info:
            proc.process(task)
        assert info.value.out_of_memory
        assert parts.list_parts(str(tmp_path / "out")) == []  # nothing written: the attempt failed
        assert proc.batch_size == 1  # 2 -> 1 for the next attempts on this actor
        task.after_device_fault = True
        result = proc.process(task)
    finally:
        proc.close()
    assert result.errors == 0 and result.rows == clean.rows
    assert _parts_by_shard(str(tmp_path / "out")) == clean_rows
    assert oom.batches[-1] == 1


def test_an_image_that_breaks_the_device_alone_is_its_own_row_on_the_retry(dataset, engine, tmp_path):
    """Every batch holding one image raises 'CUDA error: an illegal memory access': the
    first attempt fails (the device's fault, as far as it can tell); the retry runs that
    batch image by image, the image faults alone while the others pass: one
    ``inference-failed`` row, the others ok."""
    from annotator.shards.task import DeviceFaultError

    images, _, _ = dataset
    task = make_shards(list_images(str(images)), 4)[0]
    bad = task.refs[1].file_name
    poison = FaultyDevice(engine, lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
                          poison=(bad,))
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    proc = ShardProcessor(poison, RunOptions(output=str(tmp_path / "out"), metadata=meta))
    try:
        with pytest.raises(DeviceFaultError, match="illegal memory access"):
            proc.process(task)
        task.after_device_fault = True
        result = proc.process(task)
    finally:
        proc.close()
    rows = _parts_by_shard(str(tmp_path / "out"))[0]
    assert result.errors == 1
    assert [(r["file_name"], r["status"]) for r in rows if r["status"] != "ok"] == [(bad, "error")]
    (row,) = [r for r in rows if r["status"] != "ok"]
    assert row["error"].startswith("inference-failed: ") and "illegal memory access" in row["error"]


def test_a_device_that_still_fails_on_the_retry_fails_the_attempt_again(dataset, engine, tmp_path):
    """On the retry every image faults alone too: the device, not the images: the attempt
    fails again (no part of error rows)."""
    from annotator.shards.task import DeviceFaultError

    images, _, _ = dataset
    task = make_shards(list_images(str(images)), 4)[0]
    task.after_device_fault = True
    lost = FaultyDevice(engine, lambda: RuntimeError("CUDA error: device not ready"), faults=100)
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    proc = ShardProcessor(lost, RunOptions(output=str(tmp_path / "out"), metadata=meta))
    try:
        with pytest.raises(DeviceFaultError, match="device not ready"):
            proc.process(task)
    finally:
        proc.close()
    assert parts.list_parts(str(tmp_path / "out")) == []


def test_an_error_about_one_image_is_still_its_row_at_once(dataset, engine, tmp_path):
    """A ValueError (not a device fault) on one image: its row, on the first attempt."""
    images, _, _ = dataset
    task = make_shards(list_images(str(images)), 4)[0]
    bad = task.refs[2].file_name
    faulty = FaultyDevice(engine, lambda: ValueError("bad pixels"), poison=(bad,))
    _, result, rows = _process(faulty, tmp_path, task)
    assert result.errors == 1
    assert [r["file_name"] for r in rows[0] if r["status"] != "ok"] == [bad]


def test_a_device_fault_in_careful_mode_is_not_a_death_on_the_image(dataset, engine, tmp_path):
    """A shard retried carefully (its actor died before) whose attempt fails on the device:
    the crash log does not count a death on the image in progress (two such faults would
    otherwise make it a worker-crashed row)."""
    from annotator.shards.task import DeviceFaultError
    from annotator.storage.crashlog import CrashLog

    images, _, _ = dataset
    task = make_shards(list_images(str(images)), 4)[0]
    task.careful = True
    faulty = FaultyDevice(engine, lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
                          faults=1)
    meta = {"vocabulary": engine.vocabulary.names, "config_hash": "test"}
    proc = ShardProcessor(faulty, RunOptions(output=str(tmp_path / "out"), metadata=meta))
    try:
        with pytest.raises(DeviceFaultError):
            proc.process(task)
    finally:
        proc.close()
    log = CrashLog.open(str(tmp_path / "out"), task.shard_index)
    assert log.deaths == {} and log.crashed == []
