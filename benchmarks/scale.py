"""The scale simulation: the driver and the reducer at 10^4..10^6 listed images, with no
real image and no model (``python -m benchmarks --scale 10000,100000,1000000``).

For each N, a tree of N empty ``.jpg`` files (1,000 per folder) is listed and scheduled
by the run's own stages (:func:`annotator.job.validate` .. :func:`annotator.job.annotate_shards`:
the real listing, manifest and Ray scheduler) in a fresh process, with a stand-in in
place of the engine on the actors (:class:`StandInProcessor`: no read, a real row and
a real part per shard after ``ms_per_image`` of simulated device time). Then
``python -m annotator.reduce OUTPUT --no-report`` merges the parts in another fresh
process. Reported per N: the driver's peak RSS at each stage, its overhead per shard
as a fraction of shard time, whether it imported torch or open_clip, and the reducer's
peak RSS and seconds.

The simulated run is configured by engine options (``engine_argv``: the benchmark's own,
e.g. ``--model ViT-B-32`` with its default ``--pretrained``), built into a
:class:`~annotator.request.RunRequest` by the run's own parser (:func:`run_request`).
Model and tag names are checked as in a run; weight files missing on this machine are
recorded, not refused, since the stand-in loads no model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import child_env

__all__ = ["DEFAULT_MS_PER_IMAGE", "StandInProcessor", "make_empty_tree", "peak_rss_mib", "run_request",
           "run_scale_simulation"]

#: Simulated device time per image: ~330 images/s, the H200 ceiling of the official
#: protocol (shared/reference/performance.md), so the overhead fraction is the one of
#: the fastest engine we have figures for.
DEFAULT_MS_PER_IMAGE = 3.0
#: Engine options of the simulated run by default (the engine itself never loads: see
#: StandInProcessor); ``python -m benchmarks --scale`` passes its own engine options instead.
SCALE_ENGINE_ARGV = ["--model", "tiny-random", "--pretrained", "random", "--saliency", "none",
                     "--device", "cpu"]
FILES_PER_FOLDER = 1000


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (VmHWM; ru_maxrss keeps the
    parent's peak across fork + exec on Linux, so it is only the fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_empty_tree(root: Path, n: int) -> Path:
    """``root/dNNNN/img_NNNNNNN.jpg``: ``n`` empty files, ``FILES_PER_FOLDER`` per folder."""
    for start in range(0, n, FILES_PER_FOLDER):
        folder = root / f"d{start // FILES_PER_FOLDER:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(n, start + FILES_PER_FOLDER)):
            os.close(os.open(folder / f"img_{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


class StandInProcessor:
    """In place of :class:`~annotator.shards.processor.ShardProcessor` on an actor: reads
    nothing, sleeps ``ms_per_image`` per image (the device time of a fast engine), gives
    every image a real ``ok`` row (a 4x4 map of the first class) and writes one real part,
    so that the scheduler, the manifest and the reducer do all of their work."""

    def __init__(self, engine_config, vocabulary, options, ms_per_image: float = DEFAULT_MS_PER_IMAGE):
        import numpy as np

        from annotator import records
        from annotator.inputs.catalog import ImageRef

        self.options = options
        self.ms_per_image = ms_per_image
        labels = np.ones((4, 4), np.uint8)
        self._template = records.ok_record(ImageRef(1, "x.jpg", "x.jpg"), labels, np.full((4, 4), 0.9, np.float32),
                                           vocabulary.names)

    def process(self, task):
        from annotator.shards.task import ShardResult
        from annotator.storage import parts

        t0 = time.perf_counter()
        time.sleep(self.ms_per_image * len(task.refs) / 1000.0)
        recs = [dataclasses.replace(self._template, image_id=r.image_id, file_name=r.file_name, uri=r.uri)
                for r in task.refs]
        meta = {**self.options.metadata, "shard_index": task.shard_index}
        path = parts.part_path(self.options.output, task.shard_index)
        sha = parts.write_part(recs, path, meta, self.options.output_storage_options)
        return ShardResult(task.shard_index, path, len(recs), 0, sha, time.perf_counter() - t0)


def run_request(argv: Sequence[str]):
    """The request that ``python -m annotator.run ARGV`` stands for, built by the run's
    own parser and :meth:`annotator.request.RunRequest.from_args` (the simulation's one
    call into the command line)."""
    from annotator.request import RunRequest
    from annotator.run import build_parser

    return RunRequest.from_args(build_parser().parse_args(list(argv)))


def _validate_without_weight_files(job, request) -> tuple[object, list[str]]:
    """``job.validate``, except that weight files missing on this machine are recorded
    rather than refused: the stand-in engine loads no weights, and a real configuration
    (``--model ViT-B-32`` with its default ``--pretrained``) must be simulated offline.
    The model, tag and saliency names are still checked by the run's own resolution,
    which runs (and imports what it imports) exactly as in a run.

    Returns:
        ``(validated, missing)``: the stage's result and what each missing file is.
    """
    from annotator.models import ResolvedWeights
    from annotator.models.weights import WeightsUnavailableError

    missing: list[str] = []
    real = job.resolve_weights

    def names_checked(config):
        try:
            return real(config)
        except WeightsUnavailableError as e:
            missing.extend(m.what for m in e.missing)
            return ResolvedWeights()

    job.resolve_weights = names_checked
    try:
        return job.validate(request), missing
    finally:
        job.resolve_weights = real


def _driver(source: str, output: str, vocab: str, shard_size: int, actors: int, ms_per_image: float,
            engine_argv: Sequence[str]) -> dict:
    """In a fresh process: the run's stages 1-4 with the stand-in; peak RSS per stage, and
    whether the driver imported torch or open_clip (it needs neither: it runs no model)."""
    from annotator import job

    imported = peak_rss_mib()
    request = run_request(["--source", source, "--output", output, "--vocab", vocab, *engine_argv,
                           "--shard-size", str(shard_size), "--num-actors", str(actors), "--quiet"])
    checked, missing = _validate_without_weight_files(job, request)
    t0 = time.perf_counter()
    inputs = job.list_inputs(request, checked)
    listed_s, listed = time.perf_counter() - t0, peak_rss_mib()
    opened = job.open_run_output(request, checked, inputs)
    opened_rss = peak_rss_mib()
    t0 = time.perf_counter()
    stats = job.annotate_shards(request, checked, opened,
                                make_processor=functools.partial(StandInProcessor, ms_per_image=ms_per_image))
    annotate_s = time.perf_counter() - t0
    from annotator.distributed.ray_runner import shutdown_ray

    shutdown_ray()
    return {"images": len(inputs.refs), "shards": len(opened.tasks), "listing_nbytes": inputs.refs.nbytes,
            "listing_s": listed_s, "annotate_s": annotate_s,
            "peak_rss_mib_after_imports": imported, "peak_rss_mib_after_listing": listed,
            "peak_rss_mib_after_manifest": opened_rss, "peak_rss_mib": peak_rss_mib(),
            "scheduling": stats.to_json(), "weight_files_missing": missing,
            "driver_imported_torch": "torch" in sys.modules, "driver_imported_open_clip": "open_clip" in sys.modules}


def _reduce(output: str) -> dict:
    """In a fresh process: ``python -m annotator.reduce OUTPUT --no-report``; peak RSS."""
    import contextlib
    import io

    from annotator.reduce import main

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = main([output, "--no-report"])
    return {"exit_code": code, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def _in_fresh_process(call: str, *argv: str) -> dict:
    code = ("import json, sys; from benchmarks import scale; "
            f"print('SCALE-PROBE ' + json.dumps(scale.{call}(*sys.argv[1:])))")
    env = child_env()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SCALE-PROBE ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(line[len("SCALE-PROBE "):])


def _driver_entry(source: str, output: str, vocab: str, shard_size: str, actors: str, ms: str,
                  engine_argv_json: str) -> dict:
    return _driver(source, output, vocab, int(shard_size), int(actors), float(ms), json.loads(engine_argv_json))


def run_scale_simulation(counts: Sequence[int], workdir: Path, vocab_path: Path, *, shard_size: int,
                         actors: int = 4, ms_per_image: float = DEFAULT_MS_PER_IMAGE,
                         engine_argv: Sequence[str] = SCALE_ENGINE_ARGV) -> dict:
    """The simulation for each N in ``counts`` (see the module docstring); the JSON the
    benchmark reports under ``scale``. ``engine_argv``: the engine options of the
    simulated run (its configuration, checked names and driver imports; the stand-in
    loads no model, so weight files missing here are only recorded)."""
    from benchmarks.probes import ray_unavailable_reason

    why = ray_unavailable_reason()
    if why:
        return {"skipped": why}
    out = {"shard_size": shard_size, "actors": actors, "ms_per_image": ms_per_image,
           "engine": "stand-in (benchmarks.scale.StandInProcessor)", "engine_options": " ".join(engine_argv),
           "runs": []}
    for n in counts:
        src, dst = workdir / f"scale-{n}", workdir / f"scale-{n}-output"
        shutil.rmtree(dst, ignore_errors=True)
        t0 = time.perf_counter()
        make_empty_tree(src, n)
        run = {"images_listed": n, "tree_s": time.perf_counter() - t0}
        run["driver"] = _in_fresh_process("_driver_entry", str(src), str(dst), str(vocab_path), str(shard_size),
                                          str(actors), str(ms_per_image), json.dumps(list(engine_argv)))
        if "error" not in run["driver"]:
            run["reduce"] = _in_fresh_process("_reduce", str(dst))
        out["runs"].append(run)
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
    driver = [r["driver"] for r in out["runs"] if "peak_rss_mib" in r.get("driver", {})]
    if len(driver) >= 2:
        out["driver_rss_growth"] = driver[-1]["peak_rss_mib"] / driver[-2]["peak_rss_mib"]
    return out
