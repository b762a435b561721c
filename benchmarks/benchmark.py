"""``python -m benchmarks``: end-to-end throughput, side by side with the released loop.

One run measures, on the same device with the same loaded models:

1. **engine, end to end, without Ray**: read -> decode -> engine -> RLE + confidence PNG
   -> Parquet, through the real shard processor (:class:`annotator.shards.processor.ShardProcessor`),
   after a warm-up shard that is not timed;
2. **naive**: the released CLIP-DIY loop re-created (:func:`benchmarks.released_loop.naive_predict`)
   on ``--naive-images`` images already decoded (so I/O is not charged to it), reported
   without saliency (the released code precomputed it: the published-baseline figure)
   and with it; ``ratio`` = engine images/s / naive images/s without saliency;
3. **Ray pipeline** (``python -m annotator.run``) on the same images, when Ray is
   importable and ``--skip-ray`` is not given (wall clock, so Ray start-up, engine
   loading and the reduce step are included);
4. optionally (``--ray-actors 1,2``) the Ray pass once per actor count, side by side,
   each with its torch threads per actor (``threads_per_actor``);
5. optionally (``--scale 10000,100000,1000000``) the scale simulation of
   :mod:`benchmarks.scale`: the driver's and the reducer's peak memory and the
   driver's overhead per shard at N listed images, with a stand-in engine.

Without ``--source`` it writes ``--images`` synthetic JPEGs of PASCAL VOC sizes (mostly
500x375, some 375x500 and 500x333; smooth colour fields, shapes and grain) to a
temporary folder on local disk (:mod:`benchmarks.data`). Device names, GPU
utilisation sampling and the side probes live in :mod:`benchmarks.probes`.
Examples::

    # CPU, test models (no weights, no downloads)
    python -m benchmarks --model tiny-random --saliency found-tiny-random \\
        --device cpu --images 64 --naive-images 8 --skip-ray --json bench.json
    # GPU, real architectures with random weights (no downloads)
    python -m benchmarks --model ViT-B-32 --pretrained random --saliency found \\
        --protocol official --images 2000 --skip-ray --json bench.json

Importing this module needs neither Ray nor ``datasets`` (both imported lazily).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from annotator.cli import HelpFormatter, add_engine_arguments, engine_config_from_args
from annotator.config import DEFAULT_SHARD_SIZE, EngineConfig
from annotator.shards.task import SHARDS_AT_ONCE
from benchmarks.data import make_synthetic_jpegs
from benchmarks.levers import run_lever_compare
from benchmarks.probes import (
    GpuUtilSampler,
    cpu_name,
    device_name,
    ray_unavailable_reason,
    run_manifest_scale,
    run_precision_compare,
    run_resize_arithmetic,
)
from benchmarks.scale import DEFAULT_MS_PER_IMAGE, run_scale_simulation

__all__ = ["VOC_CLASSES", "build_parser", "main", "parse_args"]

#: PASCAL VOC's 20 object classes (+ background = 21 classes, like the paper's VOC runs).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv/monitor",
)
#: Stage names always present in the JSON ``stages`` dict (seconds).
STAGES = ("read", "decode", "upload", "crops", "clip", "saliency", "guidance", "download", "encode", "write",
          "device_wait")
#: Stages run while a shard holds the device (their sum / wall = ``device_busy_fraction``).
ENGINE_STAGES = ("upload", "crops", "clip", "saliency", "guidance", "download", "stub_device")


# --------------------------------------------------------------------------- parts of a run
class StubDevice:
    """Stands in for :class:`~annotator.engine.Engine` with a device that takes
    ``ms_per_image`` per image (``time.sleep``: the GIL is released, as while a GPU
    works) and returns blob-shaped labels (3 classes of 21) with a smooth confidence map
    and per-class statistics (as a GPU engine does) at each image's size, so that the RLE
    and PNG encoders get realistic work. Measures the host side of the pipeline at a
    device speed this machine does not have.
    """

    def __init__(self, engine, ms_per_image: float):
        self.config, self.device, self.vocabulary = engine.config, engine.device, engine.vocabulary
        self.timings: dict[str, float] = defaultdict(float)
        self.ms_per_image = ms_per_image
        self._cache: dict = {}

    def predict(self, images, names=None):
        import numpy as np

        from annotator.engine import Prediction
        from annotator.inputs.loader import image_size_hw
        from annotator.records import class_stats_numpy

        t0 = time.perf_counter()
        out = []
        for im in images:
            size_hw = image_size_hw(im)
            if size_hw not in self._cache:  # a device would compute these: not charged per image
                h, w = size_hw
                labels = np.zeros((h, w), np.int32)
                labels[h // 6 : h * 4 // 5, w // 5 : w * 3 // 4] = 3
                labels[h // 2 :, : w // 3] = 7
                labels[: h // 5, w * 2 // 3 :] = 12
                conf = np.broadcast_to(np.linspace(0.4, 0.95, w, dtype=np.float32), (h, w)).copy()
                self._cache[size_hw] = Prediction(labels, conf, class_stats_numpy(labels, conf, len(self.vocabulary)))
            out.append(self._cache[size_hw])
        time.sleep(max(0.0, self.ms_per_image * len(images) / 1000.0 - (time.perf_counter() - t0)))
        self.timings["stub_device"] += time.perf_counter() - t0
        return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine_pass(engine, refs, workdir: Path, args, shards_at_once: int | None = None) -> dict:
    """Warm-up shard (untimed), then every ref through the shard processor (timed),
    ``shards_at_once`` shards at a time (default ``args.shards_at_once``) as an actor does."""
    import torch

    from annotator.shards.processor import ShardProcessor, process_shards
    from annotator.shards.task import RunOptions, ShardTask, make_shards

    shards_at_once = shards_at_once or args.shards_at_once

    kw = {}
    if args.read_threads:
        kw["read_threads"] = args.read_threads
    if args.encode_threads:
        kw["encode_threads"] = args.encode_threads
    meta = {"vocabulary": engine.vocabulary.names, "model": engine.config.model, "bench": True}
    warm_opts = RunOptions(output=str(workdir / "warmup-output"), metadata=meta, **kw)
    opts = RunOptions(output=str(workdir / f"engine-output-{shards_at_once}"), metadata=meta, **kw)
    n_warm = min(len(refs), args.warmup_images or engine.config.batch_size)
    warm = ShardProcessor(engine, warm_opts)
    try:
        warm.process(ShardTask(0, list(refs[:n_warm])))
    finally:
        warm.close()
    _sync(engine.device)
    engine.timings.clear()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    proc = ShardProcessor(engine, opts)
    stages: dict[str, float] = defaultdict(float)
    rows = errors = 0
    try:
        with GpuUtilSampler(engine.device) as sampler:
            t0 = time.perf_counter()
            for res in process_shards(proc, make_shards(refs, args.shard_size), shards_at_once):
                rows += res.rows
                errors += res.errors
                for k, v in res.stages.items():
                    stages[k] += v
            _sync(engine.device)
            wall = time.perf_counter() - t0
    finally:
        proc.close()
    for k in STAGES:
        stages.setdefault(k, 0.0)
    forward = stages["clip"] + stages["saliency"] + stages.get("stub_device", 0.0)
    engine_sum = sum(stages.get(k, 0.0) for k in ENGINE_STAGES)
    out = {
        "shards_at_once": shards_at_once,
        "images": rows,
        "errors": errors,
        "warmup_images": n_warm,
        "seconds": wall,
        "images_per_s": rows / wall if wall > 0 else None,
        "stages": dict(stages),
        "engine_overhead_fraction": (wall - forward) / wall if wall > 0 else None,
        "engine_predict_overhead_fraction": (engine_sum - forward) / engine_sum if engine_sum > 0 else None,
        "device_busy_fraction": engine_sum / wall if wall > 0 else None,
        "gpu_utilization": sampler.result(),
        "gpu_max_memory_allocated_bytes": (
            int(torch.cuda.max_memory_allocated(engine.device)) if engine.device.type == "cuda" else None
        ),
    }
    return out


def decode_first(refs, n: int) -> tuple[list, list[str]]:
    """The first ``n`` decodable images of ``refs`` as (H, W, 3) uint8 arrays, and their
    file names (undecodable ones skipped), for the passes that time the engine alone."""
    from annotator.inputs.decode import ImageDecodeError, decode_image
    from annotator.inputs.listing import read_image_bytes

    images, names = [], []
    for ref in refs:
        if len(images) >= n:
            break
        try:
            images.append(decode_image(read_image_bytes(ref), name=ref.file_name))
            names.append(ref.file_name)
        except ImageDecodeError:
            continue
    return images, names


def run_naive_pass(engine, refs, n: int) -> dict:
    """The released loop on the first ``n`` images (decoded beforehand, untimed)."""
    from benchmarks.released_loop import naive_predict

    images, names = decode_first(refs, n)
    if not images:
        return {"images": 0, "skipped": "no decodable image"}
    naive_predict(engine, images[:2], names[:2])  # warm-up
    timings: dict[str, float] = {}
    _sync(engine.device)
    t0 = time.perf_counter()
    naive_predict(engine, images, names, timings=timings)
    _sync(engine.device)
    wall = time.perf_counter() - t0
    without = wall - timings["saliency"]
    return {
        "images": len(images),
        "seconds": wall,
        "saliency_seconds": timings["saliency"],
        "images_per_s": len(images) / without if without > 0 else None,
        "images_per_s_with_saliency": len(images) / wall if wall > 0 else None,
    }


def _engine_argv(cfg: EngineConfig) -> list[str]:
    """Command-line engine options that rebuild ``cfg`` (for ``annotator.run``)."""
    argv = [
        "--model", cfg.model, "--pretrained", cfg.pretrained, "--saliency", cfg.saliency,
        "--protocol", cfg.protocol, "--device", cfg.device, "--batch-size", str(cfg.batch_size),
        "--precision", cfg.precision, "--input-size", str(cfg.input_size),
        "--patch-sizes", ",".join(str(p) for p in cfg.patch_sizes_px),
        "--stride-fraction", str(cfg.stride_fraction), "--saliency-max-side", str(cfg.saliency_max_side),
        "--weights-dir", cfg.weights_dir,
    ]
    for t in cfg.templates:
        argv += ["--templates", t]
    if cfg.scale_weights is not None:
        argv += ["--scale-weights", ",".join(str(w) for w in cfg.scale_weights)]
    if cfg.dino_weights:
        argv += ["--dino-weights", cfg.dino_weights]
    if cfg.found_weights:
        argv += ["--found-weights", cfg.found_weights]
    return argv



def run_ray_pass(cfg: EngineConfig, refs, vocab_path: Path, workdir: Path, args, num_actors: int | None = None) -> dict:
    """``annotator.run.main`` on the same images (wall clock, start-up and reduce included),
    with ``--num-actors num_actors`` when given."""
    why = ray_unavailable_reason()
    if why:
        return {"skipped": why}
    from annotator import run

    source = str(Path(refs[0].uri).parent) if args.source is None else args.source
    image_list = workdir / "ray-image-list.txt"
    image_list.write_text("\n".join(r.file_name for r in refs) + "\n", encoding="utf-8")
    argv = ["--source", source, "--image-list", str(image_list), "--output", str(workdir / "ray-output"),
            "--vocab", str(vocab_path), "--shard-size", str(args.shard_size), "--no-report", "--quiet",
            "--overwrite", *_engine_argv(cfg)]
    if num_actors is not None:
        argv += ["--num-actors", str(num_actors)]
    t0 = time.perf_counter()
    try:
        rc = run.main(argv)
    finally:
        try:
            from annotator.distributed.ray_runner import shutdown_ray

            shutdown_ray()
        except Exception:  # noqa: BLE001 - best effort (Ray may not be installed)
            pass
    wall = time.perf_counter() - t0
    stats_path = workdir / "ray-output" / "scheduling.json"
    scheduling = json.loads(stats_path.read_text()) if stats_path.exists() else None
    return {"exit_code": rc, "images": len(refs), "seconds": wall, "num_actors": (scheduling or {}).get("actors"),
            "threads_per_actor": (scheduling or {}).get("threads_per_actor"),
            "images_per_s": len(refs) / wall if wall > 0 else None,
            "scheduling": scheduling, "shard_size": args.shard_size,
            "scheduling_overhead_fraction": (scheduling or {}).get("overhead_fraction"),
            "driver_ms_per_shard": (scheduling or {}).get("driver_ms_per_shard"),
            # the driver's work per shard does not depend on the device: what it would be
            # against a shard's time on a GPU at the target
            "scheduling_overhead_fraction_at_360_images_per_s": (
                (scheduling or {}).get("driver_ms_per_shard") / 1000 / (args.shard_size / 360.0)
                if (scheduling or {}).get("driver_ms_per_shard") is not None else None),
            "note": "wall clock of python -m annotator.run: Ray start, engine loading and reduce included; "
                    "scheduling_overhead_fraction = driver time handling shard results / shard time"}


# --------------------------------------------------------------------------- CLI
def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="End-to-end throughput of the engine (read -> decode -> engine -> RLE/PNG -> Parquet, "
        "no Ray), the released CLIP-DIY loop on the same device and models, and the Ray pipeline.",
        formatter_class=HelpFormatter,
    )
    b = p.add_argument_group("benchmark")
    b.add_argument("--source", default=None,
                   help="a folder/glob/URL of images (default: synthetic VOC-sized JPEGs in a temp folder)")
    b.add_argument("--images", type=int, default=512, metavar="N",
                   help="images to time (synthetic ones are generated; from --source, the first N listed)")
    b.add_argument("--naive-images", type=int, default=None, metavar="M",
                   help="images for the naive released loop (default: min(N, 16)); 0 skips it")
    b.add_argument("--json", default=None, metavar="PATH", help="write the results here as JSON")
    b.add_argument("--skip-ray", action="store_true", help="do not run the Ray pipeline pass")
    b.add_argument("--vocab", default=None, metavar="FILE",
                   help="vocabulary file (default: the 20 PASCAL VOC classes + background)")
    b.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help="images per shard (Parquet part); default: the run's default")
    b.add_argument("--shards-at-once", type=int, default=SHARDS_AT_ONCE, metavar="N",
                   help="shards a processor runs at once, as a Ray actor does (1: one after the other)")
    b.add_argument("--stub-device-ms-per-image", type=float, default=None, metavar="MS",
                   help="replace the models by a stand-in device that takes MS ms per image (sleeping, "
                   "GIL released, like a GPU) and returns blob-shaped labels: measures whether the host "
                   "side (read, decode, encode, write) keeps up with a device that fast, with 1 and "
                   "--shards-at-once shards at a time. No naive or Ray pass")
    b.add_argument("--warmup-images", type=int, default=None, metavar="N",
                   help="images in the untimed warm-up shard (default: the batch size)")
    b.add_argument("--read-threads", type=int, default=None, metavar="N",
                   help="reader/decoder threads per shard processor")
    b.add_argument("--encode-threads", type=int, default=None, metavar="N", help="RLE/PNG encoder threads")
    b.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads (torch.set_num_threads) for the whole run; default: torch's")
    b.add_argument("--workdir", default=None, metavar="DIR",
                   help="where synthetic images and outputs go (default: a temp folder, removed at the end)")
    b.add_argument("--ray-actors", type=_int_list, default=None, metavar="N,N,...",
                   help="run the Ray pass once per actor count (--num-actors N), side by side")
    b.add_argument("--scale", type=_int_list, default=None, metavar="N,N,...",
                   help="also run the scale simulation at N listed images (empty files, a stand-in engine, the "
                   "real listing, scheduler and reducer): peak memory and overhead per shard")
    b.add_argument("--scale-ms-per-image", type=float, default=DEFAULT_MS_PER_IMAGE, metavar="MS",
                   help="the stand-in engine's simulated device time per image")
    b.add_argument("--scale-actors", type=int, default=4, metavar="N", help="actors of the scale simulation")
    b.add_argument("--scale-only", action="store_true",
                   help="run only the scale simulation: no engine is loaded and no image is made (its simulated "
                   "run takes the engine options below as its configuration, e.g. --model ViT-B-32 with the "
                   "default --pretrained, whose weights the stand-in engine never needs)")
    b.add_argument("--manifest-scale", type=_int_list, default=None, metavar="N,N,...",
                   help="also measure the driver's cost of recording one finished shard in a manifest of N shards")
    b.add_argument("--resize-arithmetic", action="store_true",
                   help="also time the 256 resize and the crop resizes in float (full protocol) and in "
                   "OpenCV's/PIL's exact integer arithmetic (official), side by side on the same images")
    b.add_argument("--compare-levers", type=int, default=0, metavar="N",
                   help="also time the engine levers of benchmarks.levers (crop chunks x4, channels-last, "
                   "DINO without fused attention, torch.compile) against the baseline on the first N images, "
                   "side by side (0: skip)")
    b.add_argument("--compare-precision", type=int, default=0, metavar="N",
                   help="also run the engine at fp32 and at bf16 autocast on the first N images, side "
                   "by side: images/s and label agreement (0: skip)")
    add_engine_arguments(p)
    return p


def _print_scale(scale: dict) -> None:
    if "skipped" in scale:
        print(f"scale: skipped ({scale['skipped']})")
        return
    if "engine_options" in scale:
        print(f"scale simulation: {scale['engine_options']} ({scale['engine']}, {scale['actors']} actors, "
              f"shard size {scale['shard_size']})")
    for run_ in scale.get("runs", []):
        d, red = run_.get("driver", {}), run_.get("reduce", {})
        if "error" in d:
            print(f"scale {run_['images_listed']}: error {d['error'][-300:]}")
            continue
        sch = d["scheduling"]
        print(f"scale {run_['images_listed']:>9} images: driver peak {d['peak_rss_mib']:.0f} MiB (after listing "
              f"{d['peak_rss_mib_after_listing']:.0f}), listing {d['listing_s']:.1f} s, "
              f"{sch.get('driver_ms_per_shard', 0):.2f} ms/shard = "
              f"{100 * (sch.get('overhead_fraction') or 0):.3f}% of shard time; reduce peak "
              f"{red.get('peak_rss_mib', 0):.0f} MiB in {red.get('seconds', 0):.1f} s; driver imported "
              f"torch: {d.get('driver_imported_torch')}, open_clip: {d.get('driver_imported_open_clip')}")


def _print_report(r: dict) -> None:
    e = r["engine"]
    print(f"device: {r['device']}  (torch {r['torch']}, python {r['python']})")
    c = r["config"]
    print(f"config: model={c['model']} pretrained={c['pretrained']} saliency={c['saliency']} "
          f"protocol={c['protocol']} precision={c['precision']} batch={c['batch_size']}")
    print(f"engine end to end: {e['images']} images in {e['seconds']:.2f} s = {e['images_per_s']:.2f} images/s "
          f"({e['errors']} errors; warm-up {e['warmup_images']} images excluded)")
    print("stages (s; read/decode/encode are thread-seconds summed over worker threads):")
    for k in STAGES:
        print(f"  {k:<9} {e['stages'][k]:9.3f}")
    print(f"engine overhead fraction (wall - clip - saliency) / wall: {e['engine_overhead_fraction']:.3f}")
    print(f"device busy fraction (engine stages / wall), {e['shards_at_once']} shard(s) at once: "
          f"{e['device_busy_fraction']:.3f}")
    if r.get("stub_device"):
        st = r["stub_device"]
        print(f"stub device at {st['stub_device_images_per_s']:.0f} images/s: host pipeline "
              f"{st['images_per_s_one_shard_at_a_time']:.1f} images/s one shard at a time "
              f"(device busy {st['device_busy_fraction_one_shard_at_a_time']:.3f}), "
              f"{st['images_per_s']:.1f} with {st['shards_at_once']} at once (busy {st['device_busy_fraction']:.3f})")
    if e["gpu_max_memory_allocated_bytes"] is not None:
        print(f"GPU max memory allocated: {e['gpu_max_memory_allocated_bytes'] / 2**30:.2f} GiB; "
              f"utilisation: {e['gpu_utilization']}")
    n = r["naive"]
    if n.get("images_per_s"):
        print(f"naive released loop: {n['images']} images: {n['images_per_s']:.2f} images/s without saliency "
              f"(precomputed, as released), {n['images_per_s_with_saliency']:.2f} with it")
        print(f"ratio engine / naive: {r['ratio']:.1f}x  "
              f"(vs naive with saliency: {r['ratio_vs_naive_with_saliency']:.1f}x)")
    else:
        print(f"naive: {n.get('skipped')}")
    ray = r["ray"]
    if ray.get("images_per_s"):
        print(f"Ray pipeline: {ray['images']} images in {ray['seconds']:.1f} s = {ray['images_per_s']:.2f} images/s "
              f"(exit code {ray['exit_code']}; {ray['note']})")
        if ray.get("scheduling_overhead_fraction") is not None:
            print(f"Ray scheduling overhead: {100 * ray['scheduling_overhead_fraction']:.3f}% of shard time "
                  f"({ray['scheduling'].get('actors')} actors, shard size {ray.get('shard_size', '?')})")
            if ray.get("driver_ms_per_shard") is not None:
                print(f"driver work per shard: {ray['driver_ms_per_shard']:.2f} ms = "
                      f"{100 * ray['scheduling_overhead_fraction_at_360_images_per_s']:.2f}% of a shard's time "
                      f"at 360 images/s")
    else:
        print(f"Ray pipeline: skipped ({ray.get('skipped')})")
    if r.get("manifest_scale") is not None:
        for run_ in r["manifest_scale"]["runs"]:
            print(f"manifest of {run_['shards_listed']} shards: one save {run_['one_save_ms']:.1f} ms (the old "
                  f"cost per shard), mark_finished amortised {run_['mark_finished_ms_amortised']:.3f} ms")
    for run_ in r.get("ray_actors") or []:
        print(f"Ray pass, {run_.get('num_actors')} actor(s) x {run_.get('threads_per_actor')} thread(s): "
              f"{run_.get('images_per_s') or 0:.3f} images/s (exit {run_.get('exit_code')})")
    if r.get("scale") is not None:
        _print_scale(r["scale"])
    if r.get("lever_compare") is not None:
        lc = r["lever_compare"]
        for name, v in lc["levers"].items():
            print(f"lever {name:<22} {v['images_per_s']:.3f} images/s ({v['speedup']:.2f}x baseline, labels agree on "
                  f"{100 * v['label_agreement']:.2f}%, warm-up {v['warmup_s']:.1f} s; {lc['precision']}, "
                  f"{lc['images']} images)")
    if r.get("precision_compare") is not None:
        pc = r["precision_compare"]
        print(f"precision: fp32 {pc['fp32']['images_per_s']:.3f} images/s, bf16 {pc['bf16']['images_per_s']:.3f} "
              f"images/s ({pc['bf16_speedup']:.2f}x); labels agree on {100 * pc['label_agreement']:.2f}% of "
              f"pixels ({pc['images']} images)")
    if r.get("resize_arithmetic") is not None:
        ra = r["resize_arithmetic"]
        for k in ("float", "exact"):
            print(f"resize arithmetic {k:<5}: 256 resize {ra[k]['resize256_ms']:.2f} ms/image, "
                  f"crops {ra[k]['crops_ms']:.2f} ms/image")
        print(f"exact / float: 256 resize {ra['exact_over_float']['resize256_ms']:.2f}x, "
              f"crops {ra['exact_over_float']['crops_ms']:.2f}x ({ra['images']} images)")


# --------------------------------------------------------------------------- the run, step by step
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with every count checked (``SystemExit`` naming the option)."""
    args = build_parser().parse_args(argv)
    for option, value, least in (("--images", args.images, 1), ("--shard-size", args.shard_size, 1),
                                 ("--shards-at-once", args.shards_at_once, 1)):
        if value < least:
            raise SystemExit(f"{option}: expected >= {least}, got {value}")
    if args.stub_device_ms_per_image is not None and not args.stub_device_ms_per_image > 0:
        raise SystemExit(f"--stub-device-ms-per-image: expected > 0, got {args.stub_device_ms_per_image}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise SystemExit(f"--torch-threads: expected >= 1, got {args.torch_threads}")
    if args.scale_only and not args.scale:
        raise SystemExit("--scale-only: expected --scale N,N,... as well")
    return args


def prepare_data(args: argparse.Namespace, vocab, workdir: Path) -> tuple[list, Path, float]:
    """The images (the first ``--images`` of ``--source``, or that many synthetic JPEGs
    written to ``workdir/images``) and the vocabulary file the Ray passes read.

    Returns:
        ``(refs, vocab_path, seconds)``: the listed images, the vocabulary file, and the
        seconds spent listing (and generating) the images.
    """
    from annotator.inputs.listing import list_images

    t0 = time.perf_counter()
    if args.source:
        refs = list_images(args.source)[: args.images]
    else:
        make_synthetic_jpegs(workdir / "images", args.images)
        refs = list_images(str(workdir / "images"))
    gen_s = time.perf_counter() - t0
    if args.vocab:
        vocab_path = Path(args.vocab)
    else:
        vocab_path = workdir / "vocab.txt"
        vocab_path.write_text("\n".join(vocab.names[1:]) + "\n", encoding="utf-8")
    return refs, vocab_path, gen_s


def measure_engine(args: argparse.Namespace, cfg: EngineConfig, vocab, refs, workdir: Path) -> dict:
    """Load the engine, then the passes that use it in this process: the resize
    arithmetic (``--resize-arithmetic``), the engine end to end, and the naive released
    loop (or, with ``--stub-device-ms-per-image``, the host side against a stand-in
    device, 1 and ``--shards-at-once`` shards at a time). The engine is released on return.

    Returns:
        The result's machine, configuration and engine keys (see :func:`main`).
    """
    import torch

    from annotator.engine import Engine

    t0 = time.perf_counter()
    engine = Engine(cfg, vocab, profile=True)
    load_s = time.perf_counter() - t0
    resize_arithmetic = None
    if args.resize_arithmetic:
        resize_arithmetic = run_resize_arithmetic(engine, decode_first(refs, 32)[0])
    overlap = None
    if args.stub_device_ms_per_image is not None:
        engine = StubDevice(engine, args.stub_device_ms_per_image)
        one = run_engine_pass(engine, refs, workdir, args, shards_at_once=1)
        engine_res = run_engine_pass(engine, refs, workdir, args)
        overlap = {"stub_device_ms_per_image": args.stub_device_ms_per_image,
                   "stub_device_images_per_s": 1000.0 / args.stub_device_ms_per_image,
                   "images_per_s_one_shard_at_a_time": one["images_per_s"],
                   "device_busy_fraction_one_shard_at_a_time": one["device_busy_fraction"],
                   "images_per_s": engine_res["images_per_s"],
                   "device_busy_fraction": engine_res["device_busy_fraction"],
                   "shards_at_once": args.shards_at_once}
        naive_res = {"images": 0, "skipped": "--stub-device-ms-per-image"}
    else:
        engine_res = run_engine_pass(engine, refs, workdir, args)
        n_naive = min(len(refs), 16) if args.naive_images is None else args.naive_images
        naive_res = (run_naive_pass(engine, refs, n_naive) if n_naive > 0
                     else {"images": 0, "skipped": "--naive-images 0"})
    dev = engine.device
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "precision": engine.precision if hasattr(engine, "precision") else "stub",
        "config": cfg.to_json(),
        "vocabulary_size": len(vocab),
        "source": args.source or "synthetic VOC-sized JPEGs",
        "setup_seconds": {"engine_load": load_s},
        "images": engine_res["images"],
        "images_per_s": engine_res["images_per_s"],
        "stages": engine_res["stages"],
        "engine_overhead_fraction": engine_res["engine_overhead_fraction"],
        "engine": engine_res,
        "stub_device": overlap,
        "resize_arithmetic": resize_arithmetic,
        "naive": naive_res,
        "naive_images_per_s": naive_res.get("images_per_s"),
        "naive_images_per_s_with_saliency": naive_res.get("images_per_s_with_saliency"),
    }
    nv, nvs = naive_res.get("images_per_s"), naive_res.get("images_per_s_with_saliency")
    ips = engine_res["images_per_s"]
    result["ratio"] = ips / nv if ips and nv else None
    result["ratio_vs_naive_with_saliency"] = ips / nvs if ips and nvs else None
    del engine
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result


def measure_ray(args: argparse.Namespace, cfg: EngineConfig, refs, vocab_path: Path, workdir: Path) -> dict:
    """The Ray pipeline on the same images (unless skipped), then once per ``--ray-actors``
    count. Returns the result's ``ray``, ``ray_actors`` and ``threads_per_actor`` keys."""
    if args.stub_device_ms_per_image is not None:
        ray = {"skipped": "--stub-device-ms-per-image"}
    elif args.skip_ray:
        ray = {"skipped": "--skip-ray"}
    else:
        ray = run_ray_pass(cfg, refs, vocab_path, workdir, args)
    ray_actors = None
    if args.ray_actors and "skipped" not in ray:
        ray_actors = [run_ray_pass(cfg, refs, vocab_path, workdir, args, num_actors=n) for n in args.ray_actors]
    return {"ray": ray, "ray_actors": ray_actors,
            "threads_per_actor": ray.get("threads_per_actor") if isinstance(ray, dict) else None}


def measure_scale(args: argparse.Namespace, cfg: EngineConfig, vocab_path: Path, workdir: Path) -> dict | None:
    """The scale simulation (``--scale``), its simulated run configured with the
    benchmark's engine options (the stand-in engine loads none of it); None without it."""
    if not args.scale:
        return None
    return run_scale_simulation(args.scale, workdir, vocab_path, shard_size=args.shard_size,
                                actors=args.scale_actors, ms_per_image=args.scale_ms_per_image,
                                engine_argv=_engine_argv(cfg))


def measure_side_probes(args: argparse.Namespace, cfg: EngineConfig, vocab, refs, workdir: Path) -> dict:
    """The probes that load their own engines or need none: the manifest at scale
    (``--manifest-scale``), the engine levers (``--compare-levers``) and fp32 against
    bf16 (``--compare-precision``). Returns those three keys of the result (None when off)."""
    return {
        "manifest_scale": run_manifest_scale(args.manifest_scale, workdir) if args.manifest_scale else None,
        "lever_compare": (run_lever_compare(cfg, vocab, decode_first(refs, args.compare_levers)[0])
                          if args.compare_levers > 0 else None),
        "precision_compare": (run_precision_compare(cfg, vocab, decode_first(refs, args.compare_precision)[0])
                              if args.compare_precision > 0 else None),
    }


def write_json(result: dict, path: str | None) -> None:
    """The result as indented JSON at ``path`` (parents created); nothing when None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main_scale_only(args: argparse.Namespace) -> int:
    """``--scale-only``: the scale simulation alone, with the engine options as the
    simulated run's configuration; nothing here imports torch or loads a model."""
    from annotator.inputs.vocab import Vocabulary

    cfg = engine_config_from_args(args)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="annotator-bench-")) if own_workdir else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.vocab:
            vocab_path = Path(args.vocab)
        else:
            vocab_path = workdir / "vocab.txt"
            vocab_path.write_text("\n".join(Vocabulary.from_names(list(VOC_CLASSES)).names[1:]) + "\n",
                                  encoding="utf-8")
        result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                  "python": platform.python_version(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                  "config": cfg.to_json(), "scale": measure_scale(args, cfg, vocab_path, workdir)}
        print(f"machine: {result['cpu']}, {result['cpu_count']} logical CPUs, python {result['python']}")
        _print_scale(result["scale"])
        write_json(result, args.json)
        return 0
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Every pass, in this order, in one process, so that their figures are comparable:
    the engine and the naive loop, the Ray passes, the scale simulation, the side probes;
    then the printed table and ``--json``."""
    args = parse_args(argv)
    if args.scale_only:
        return main_scale_only(args)
    import torch

    from annotator.inputs.vocab import Vocabulary, load_vocabulary

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    cfg = engine_config_from_args(args)
    vocab = load_vocabulary(args.vocab) if args.vocab else Vocabulary.from_names(list(VOC_CLASSES))
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="annotator-bench-")) if own_workdir else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        refs, vocab_path, gen_s = prepare_data(args, vocab, workdir)
        result = measure_engine(args, cfg, vocab, refs, workdir)
        result["setup_seconds"] = {"images": gen_s, **result["setup_seconds"]}
        result.update(measure_ray(args, cfg, refs, vocab_path, workdir))
        result["scale"] = measure_scale(args, cfg, vocab_path, workdir)
        result.update(measure_side_probes(args, cfg, vocab, refs, workdir))
        _print_report(result)
        write_json(result, args.json)
        return 0
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
