"""Faults during a run: an actor killed mid-shard, the driver killed mid-run; determinism.

How a shard is caught "in the middle", deterministically and without test hooks in the
package: one image's ground-truth label PNG is replaced by a FIFO (named pipe; a FIFO
as the image itself is refused unread, an ``unreadable`` row). The actor that scores
that image blocks inside ``open()`` -- in ``ShardProcessor.process``, with the shard's
images read and predicted and nothing written -- and the kernel shows that thread
waiting in ``wait_for_partner``. The test finds that actor process among the descendants of the
process that started its Ray (``/proc/PID/task/*/wchan``), puts the real image back
(an atomic rename; the blocked ``open()`` keeps the FIFO), and SIGKILLs the actor or the
driver. Retries then read the real file.

Reference output: one uninterrupted run with 1 actor (module fixture); every other run
here (2 actors, actor killed, driver killed and re-run) must produce the same rows,
byte for byte (masks, scores, confidence PNGs), and the same run metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator.run import main
from annotator.storage import parts
from tests.synthetic import write_dataset, write_vocab

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

N_IMAGES = 12
SHARD_SIZE = 3  # 4 shards
SIZE_HW = (48, 64)


# ----------------------------------------------------------------------------- helpers


@dataclass
class Dataset:
    root: Path
    images: Path
    gt: Path
    vocab: Path

    def argv(self, output: Path, *extra: str) -> list[str]:
        return ["--vocab", str(self.vocab), "--source", str(self.images), "--gt", str(self.gt),
                "--model", "toy", "--saliency", "toy", "--device", "cpu", "--output", str(output),
                "--shard-size", str(SHARD_SIZE), "--quiet", "--no-report", *extra]


class FifoBlocker:
    """Replace ``path`` by a FIFO; ``release()`` puts the original bytes back atomically.

    A reader that opens the FIFO blocks in ``open()`` until a writer appears. With
    ``unblock=True``, ``release`` also opens the FIFO's write end (when a reader waits)
    so that reader wakes up, reads nothing, and its retry reads the restored file.
    """

    def __init__(self, path: Path, scratch: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.scratch = scratch / f".restore-{path.name}.tmp"  # outside the source folder
        path.unlink()
        os.mkfifo(path)
        self.released = False

    def release(self, unblock: bool = False) -> None:
        if self.released:
            return
        fd = None
        if unblock:
            with contextlib.suppress(OSError):  # ENXIO: nobody is waiting
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self.scratch.write_bytes(self.data)
        os.replace(self.scratch, self.path)
        self.released = True
        if fd is not None:
            os.close(fd)


def _blocked_actor_pids(ancestor: int) -> list[int]:
    """PIDs of Ray ``_ShardActor`` processes descending from ``ancestor`` with a thread
    blocked opening a FIFO."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if not cmd or not cmd[0].startswith("ray::_ShardActor"):
                continue
            if ancestor not in {q.pid for q in p.parents()}:
                continue
            for tid in os.listdir(f"/proc/{p.pid}/task"):
                if Path(f"/proc/{p.pid}/task/{tid}/wchan").read_text().strip() == "wait_for_partner":
                    found.append(p.pid)
                    break
        except (psutil.Error, OSError):
            continue
    return found


def _wait_for(predicate, timeout_s: float, what: str, alive=lambda: True):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if not alive():
            raise AssertionError(f"gave up waiting for {what}: the run ended first")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout=30)


def read_output(output: Path) -> tuple[list[dict], dict]:
    """(rows of annotations.parquet sorted by image_id, its 'annotator' metadata)."""
    table = pq.read_table(output / "annotations.parquet")
    meta = json.loads(table.schema.metadata[parts.METADATA_KEY])
    return sorted(table.to_pylist(), key=lambda r: r["image_id"]), meta


def assert_same_output(output: Path, reference: Path) -> None:
    rows, meta = read_output(output)
    ref_rows, ref_meta = read_output(reference)
    assert [r["image_id"] for r in rows] == list(range(1, N_IMAGES + 1))  # each image exactly once
    assert meta == ref_meta
    for row, ref in zip(rows, ref_rows, strict=True):
        assert row == ref, f"row {row['image_id']} ({row['file_name']}) differs from the reference run"
    for name in ("summary.json", "metrics.json"):
        assert json.loads((output / name).read_text()) == json.loads((reference / name).read_text()), name
    coco, ref_coco = (json.loads((p / "coco.json").read_text()) for p in (output, reference))
    for doc in (coco, ref_coco):
        doc.get("info", {}).pop("date_created", None)  # the only timestamp of the outputs
    assert coco == ref_coco


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["rc"] = main(argv)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            result["error"] = e

    th = threading.Thread(target=target, name="annotator-run", daemon=True)
    th.start()
    return th, result


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    root = tmp_path_factory.mktemp("faults")
    images, gt, _ = write_dataset(root, N_IMAGES, size_hw=SIZE_HW, nested=False)
    return Dataset(root, images, gt, write_vocab(root / "v.txt"))


@pytest.fixture(scope="module")
def reference(dataset, ray_session, tmp_path_factory) -> Path:
    """An uninterrupted run with ONE actor."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(dataset.argv(out, "--num-actors", "1")) == 0
    return out


# ----------------------------------------------------------------------------- determinism


def test_two_actors_give_the_same_output_as_one(dataset, reference, tmp_path):
    """Same configuration, 1 vs 2 actors (shards land on other processes in another
    order): identical masks, scores, confidence PNGs, rows, metadata, COCO and summary."""
    out = tmp_path / "out"
    assert main(dataset.argv(out, "--num-actors", "2")) == 0
    assert_same_output(out, reference)
    rows, _ = read_output(out)
    assert all(r["status"] == "ok" and r["annotations"] for r in rows)  # the comparison is not vacuous
    # threads fit the actors: 1 actor x 2 threads, 2 actors x 1 thread on the session's 2 CPUs
    # (never 2 x 2, which would oversubscribe the cores); as each actor's torch reports it
    one = json.loads((reference / "scheduling.json").read_text())
    two = json.loads((out / "scheduling.json").read_text())
    assert (one["actors"], one["threads_per_actor"]) == (1, 2), one
    assert (two["actors"], two["threads_per_actor"]) == (2, 1), two


def test_threads_for_cpus():
    from annotator.distributed.ray_runner import threads_for_cpus

    assert [threads_for_cpus(c, 4) for c in (1.0, 2.0, 3.9999999999, 0.5, None, 0)] == [1, 2, 4, 1, 4, 4]


# ----------------------------------------------------------------------------- actor killed


def test_actor_killed_mid_shard_is_retried(dataset, reference, tmp_path, caplog):
    """SIGKILL the actor while it is inside shard 1; the shard is retried on a live or
    restarted actor and the output holds every image exactly once, equal to the reference."""
    out = tmp_path / "out"
    target = dataset.gt / "img_0004.png"  # its ground truth; shard 1 = images 3, 4, 5
    blocker = FifoBlocker(target, dataset.root)
    caplog.set_level(logging.INFO, logger="annotator")
    th, result = _run_in_thread(dataset.argv(out, "--num-actors", "2"))
    try:
        pids = _wait_for(lambda: _blocked_actor_pids(os.getpid()), 180, "an actor blocked in shard 1",
                         alive=th.is_alive)
        assert len(pids) == 1
        manifest = json.loads((out / "manifest.json").read_text())
        assert "1" not in manifest["finished"]  # the shard really is unfinished
        blocker.release()  # the retry will read the real label map
        _kill_and_reap(pids[0])
    finally:
        blocker.release(unblock=True)
        th.join(timeout=300)
    assert not th.is_alive(), "the run did not finish after the actor was killed"
    assert result.get("rc") == 0, result
    text = caplog.text
    # alone on its actor, the shard used up an attempt; beside shard 0 (actors run two
    # shards at once), both were requeued to run alone, without using one up
    from annotator.distributed.policy import MAX_SHARD_ATTEMPTS

    assert (f"shard 1 failed (attempt 1 of {MAX_SHARD_ATTEMPTS}" in text
            or "shard 1 requeued to run alone (its actor died while it ran beside another shard" in text), text
    assert "giving up" not in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["finished"], key=int) == ["0", "1", "2", "3"]
    assert_same_output(out, reference)


def test_poison_image_costs_its_row_not_its_shard(dataset, reference, tmp_path, caplog, capsys):
    """A "poison" image kills its actor each time it is reached (SIGKILL whenever an actor
    blocks on it). Its shard is retried carefully, one image at a time with a crash log;
    after the worker died on the image twice, the next attempt skips it: one
    ``worker-crashed`` row, every other row equal to the uninterrupted run, no shard lost.
    The shard that ran beside it when the actor first died is not blamed."""
    from annotator.storage.crashlog import DEATHS_TO_SKIP

    out = tmp_path / "out"
    argv = dataset.argv(out, "--num-actors", "1", "--max-failure-rate", "0.1")
    poison = "img_0001.png"  # shard 0 = images 0, 1, 2
    blocker = FifoBlocker(dataset.gt / poison, dataset.root)  # reached while the image is scored
    caplog.set_level(logging.INFO, logger="annotator")
    th, result = _run_in_thread(argv)
    killed: list[int] = []
    try:
        while True:  # kill whichever actor reaches the poison image, until the run ends
            try:
                pid = _wait_for(lambda: [p for p in _blocked_actor_pids(os.getpid()) if p not in killed], 180,
                                f"death {len(killed) + 1} on the poison image", alive=th.is_alive)[0]
            except AssertionError:
                if th.is_alive():
                    raise
                break
            killed.append(pid)
            _kill_and_reap(pid)
    finally:
        blocker.release(unblock=True)
        th.join(timeout=300)
    assert not th.is_alive()
    assert len(killed) == 1 + DEATHS_TO_SKIP, killed  # the first attempt, then two careful ones
    assert result.get("rc") == 0, result
    text = caplog.text  # the driver's log (the crash log's warnings are the actor's)
    assert "shard 1 failed" not in text and "giving up" not in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["finished"], key=int) == ["0", "1", "2", "3"]
    assert list((out / "parts").glob(".crashlog-*")) == []

    rows, meta = read_output(out)
    ref_rows, ref_meta = read_output(reference)
    assert meta == ref_meta and [r["image_id"] for r in rows] == list(range(1, N_IMAGES + 1))
    for row, ref in zip(rows, ref_rows, strict=True):
        if row["file_name"] == poison:
            assert row["status"] == "error" and row["error"].startswith("worker-crashed: "), row
        else:
            assert row == ref, row["file_name"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["failures_by_reason"] == {"worker-crashed": 1}


def _toy_engine_config(vocab_path: Path):
    from annotator.cli import engine_config_from_args
    from annotator.inputs.vocab import load_vocabulary
    from annotator.run import build_parser

    args = build_parser().parse_args(["--model", "toy", "--saliency", "toy", "--device", "cpu"])
    return engine_config_from_args(args), load_vocabulary(str(vocab_path))


def test_actors_that_cannot_start_fail_fast_with_the_cause(dataset, ray_session, tmp_path):
    """An actor whose set-up raises (here: its ground truth is missing) is not restarted
    in a loop: the run stops at once with ShardFailedError carrying the actor's error."""
    from annotator.distributed.ray_runner import ShardFailedError, run_shards
    from annotator.inputs.listing import list_images
    from annotator.shards.task import RunOptions, make_shards

    cfg, vocab = _toy_engine_config(dataset.vocab)
    options = RunOptions(output=str(tmp_path / "out"), metadata={}, gt_spec=str(tmp_path / "no-such-gt"))
    tasks = make_shards(list_images(str(dataset.images)), SHARD_SIZE)
    done: list = []
    t0 = time.monotonic()
    with pytest.raises(ShardFailedError, match=r"could not load the engine, no shard ran: .*GroundTruthError: "
                                               r"ground truth .*no-such-gt"):
        run_shards(tasks, cfg, vocab, options, num_actors=2, on_done=done.append)
    assert done == [] and not (tmp_path / "out").exists()
    assert time.monotonic() - t0 < 120


def test_more_actors_than_cpus_share_them(ray_session):
    """--num-actors above the CPU count gives each actor a fraction of a CPU (whole CPUs
    would leave some actors unschedulable and the run waiting forever)."""
    from annotator.config import EngineConfig
    from annotator.distributed.ray_runner import plan_actors

    cpus = ray_session.cluster_resources()["CPU"]
    cfg = EngineConfig(model="toy", saliency="toy", device="cpu")
    n, res, device = plan_actors(cfg, int(cpus) + 1)
    assert (n, device) == (int(cpus) + 1, "cpu")
    assert 0 < res["num_cpus"] < 1 and n * res["num_cpus"] <= cpus
    assert plan_actors(cfg, 1)[1] == {"num_cpus": int(cpus)}
    with pytest.raises(ValueError, match="--num-actors: expected >= 1, got 0"):
        plan_actors(cfg, 0)


# ----------------------------------------------------------------------------- driver killed


def _clean_env(ray_tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS: a fresh Ray
    env["RAY_TMPDIR"] = ray_tmp  # this run's Ray keeps its sockets and logs here (and is found by it)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    return env


def _processes_of(ray_tmp: str) -> list[int]:
    """PIDs of processes started with RAY_TMPDIR=ray_tmp (the subprocess run's Ray)."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for p in psutil.process_iter(["pid"]):
        try:
            if marker in Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0"):
                pids.append(p.pid)
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid()]


def _cleanup_ray(ray_tmp: str) -> list[str]:
    """SIGKILL every process left by the subprocess runs' Ray; returns their command lines."""
    left = []
    for pid in _processes_of(ray_tmp):
        with contextlib.suppress(OSError):
            left.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80].strip())
        _kill_and_reap(pid)
    return left


def test_driver_killed_mid_run_then_rerun_finishes(dataset, reference, tmp_path):
    """``python -m annotator.run`` SIGKILLed (whole process group) while shard 3 is being
    processed and other shards' parts are written (the manifest, saved at most every 2 s,
    may list only some of them); the same command again finishes only what is missing,
    taking back the unlisted parts, and the result equals the uninterrupted run."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotator.run", *dataset.argv(out, "--num-actors", "1")]
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = _clean_env(ray_tmp)
    blocker = FifoBlocker(dataset.gt / "img_0010.png", dataset.root)  # last shard: 9, 10, 11
    log1 = tmp_path / "run1.log"
    try:
        with open(log1, "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                def finished_and_blocked():
                    done = sorted(p.name for p in (out / "parts").glob("part-*.parquet"))
                    return done if done and _blocked_actor_pids(proc.pid) else None

                done = _wait_for(finished_and_blocked, 240, "a finished shard and a blocked actor",
                                 alive=lambda: proc.poll() is None)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert 1 <= len(done) <= 3 and "part-00003.parquet" not in done
        # first stop what outlived the driver, so that no actor reads the FIFO's EOF and
        # writes a part scored without that image; then restore the label map
        survivors = _cleanup_ray(ray_tmp)  # Ray's own fate-sharing usually leaves none; never leak any
        blocker.release(unblock=True)
        print("processes of the killed run's Ray that outlived it:", survivors)
        assert not _processes_of(ray_tmp), "processes of the killed run's Ray survived"
        assert not (out / "annotations.parquet").exists()
        listed = json.loads((out / "manifest.json").read_text())["finished"]
        before = {p.name: _sha256(p) for p in (out / "parts").glob("part-*.parquet")}
        assert {Path(e["path"]).name for e in listed.values()} <= set(before)

        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, start_new_session=True,
                               check=False)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"({len(before)} shards, " in rerun.stderr and "already done)" in rerun.stderr
        assert (f"took back {len(before) - len(listed)} finished part(s)" in rerun.stderr) == (len(before) > len(listed))
    finally:
        blocker.release(unblock=True)
        _cleanup_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    after = json.loads((out / "manifest.json").read_text())["finished"]
    assert sorted(after, key=int) == ["0", "1", "2", "3"]
    for name, sha in before.items():  # finished shards were not redone
        assert after[str(int(name[5:10]))]["sha256"] == sha
    assert_same_output(out, reference)


def test_fifo_helper_detects_only_blocked_readers(tmp_path):
    """The detection the fault tests rely on: a thread blocked opening a FIFO shows
    ``wait_for_partner``; restoring the file with unblock=True frees it."""
    src = tmp_path / "x.png"
    src.write_bytes(b"data")
    blocker = FifoBlocker(src, tmp_path)
    got: dict = {}

    def reader():
        for _ in range(2):  # the first open of the FIFO sees EOF, the second the restored file
            with open(src, "rb") as f:
                got["data"] = f.read()
            if got["data"]:
                return

    th = threading.Thread(target=reader, daemon=True)
    th.start()

    def my_thread_blocked():
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/self/task/{tid}/wchan").read_text().strip() == "wait_for_partner":
                    return True
        return False

    _wait_for(my_thread_blocked, 10, "the reader to block")
    blocker.release(unblock=True)
    th.join(timeout=10)
    assert got["data"] == b"data"
    assert stat.S_ISREG(src.stat().st_mode)
