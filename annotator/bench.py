"""``python -m annotator.bench``: end-to-end throughput, side by side with the released loop.

One run measures, on the same device with the same loaded models:

1. **engine, end to end, without Ray**: read -> decode -> engine -> RLE + confidence PNG
   -> Parquet, through the real shard processor (:class:`annotator.worker.ShardProcessor`),
   after a warm-up shard that is not timed;
2. **naive**: the released CLIP-DIY loop re-created (:func:`annotator.naive.naive_predict`)
   on ``--naive-images`` images already decoded (so I/O is not charged to it), reported
   without saliency (the released code precomputed it: the published-baseline figure)
   and with it; ``ratio`` = engine images/s / naive images/s without saliency;
3. **Ray pipeline** (``python -m annotator.run``) on the same images, when Ray is
   importable and ``--skip-ray`` is not given (wall clock, so Ray start-up, engine
   loading and the reduce step are included);
4. optionally (``--driver-memory-scale 1000,10000``) the driver's peak RSS while listing
   and scheduling N tiny images through the Ray pipeline.

Without ``--source`` it writes ``--images`` synthetic JPEGs of PASCAL VOC sizes (mostly
500x375, some 375x500 and 500x333; smooth colour fields, shapes and grain) to a
temporary folder on local disk (:mod:`annotator.bench_data`). Device names, GPU
utilisation sampling and the driver-memory probe live in :mod:`annotator.bench_probes`.
Examples::

    # CPU, test models (no weights, no downloads)
    python -m annotator.bench --model tiny-random --saliency found-tiny-random \\
        --device cpu --images 64 --naive-images 8 --skip-ray --json bench.json
    # GPU, real architectures with random weights (no downloads)
    python -m annotator.bench --model ViT-B-32 --pretrained random --saliency found \\
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .bench_data import make_synthetic_jpegs
from .bench_probes import (
    GpuUtilSampler,
    _ray_available,
    cpu_name,
    device_name,
    run_driver_memory_scale,
)
from .config import (
    DEFAULT_SHARD_SIZE,
    EngineConfig,
    add_engine_arguments,
    engine_config_from_args,
)

__all__ = ["VOC_CLASSES", "build_parser", "main"]

#: PASCAL VOC's 20 object classes (+ background = 21 classes, like the paper's VOC runs).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv/monitor",
)
#: Stage names always present in the JSON ``stages`` dict (seconds).
STAGES = ("read", "decode", "upload", "crops", "clip", "saliency", "guidance", "download", "encode", "write")


# --------------------------------------------------------------------------- parts of a run
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine_pass(engine, refs, workdir: Path, args) -> dict:
    """Warm-up shard (untimed), then every ref through the shard processor (timed)."""
    import torch

    from .worker import RunOptions, ShardProcessor, ShardTask, make_shards

    kw = {}
    if args.read_threads:
        kw["read_threads"] = args.read_threads
    if args.encode_threads:
        kw["encode_threads"] = args.encode_threads
    meta = {"vocabulary": engine.vocabulary.names, "model": engine.config.model, "bench": True}
    warm_opts = RunOptions(output=str(workdir / "warmup-output"), metadata=meta, **kw)
    opts = RunOptions(output=str(workdir / "engine-output"), metadata=meta, **kw)
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
            for task in make_shards(refs, args.shard_size):
                res = proc.process(task)
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
    forward = stages["clip"] + stages["saliency"]
    engine_sum = sum(stages[k] for k in ("upload", "crops", "clip", "saliency", "guidance", "download"))
    out = {
        "images": rows,
        "errors": errors,
        "warmup_images": n_warm,
        "seconds": wall,
        "images_per_s": rows / wall if wall > 0 else None,
        "stages": dict(stages),
        "engine_overhead_fraction": (wall - forward) / wall if wall > 0 else None,
        "engine_predict_overhead_fraction": (engine_sum - forward) / engine_sum if engine_sum > 0 else None,
        "gpu_utilization": sampler.result(),
        "gpu_max_memory_allocated_bytes": (
            int(torch.cuda.max_memory_allocated(engine.device)) if engine.device.type == "cuda" else None
        ),
    }
    return out


def run_naive_pass(engine, refs, n: int) -> dict:
    """The released loop on the first ``n`` images (decoded beforehand, untimed)."""
    from .decode import ImageDecodeError, decode_image
    from .naive import naive_predict
    from .sources import read_image_bytes

    images, names = [], []
    for ref in refs:
        if len(images) >= n:
            break
        try:
            images.append(decode_image(read_image_bytes(ref), name=ref.file_name))
            names.append(ref.file_name)
        except ImageDecodeError:
            continue
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



def run_ray_pass(cfg: EngineConfig, refs, vocab_path: Path, workdir: Path, args) -> dict:
    """``annotator.run.main`` on the same images (wall clock, start-up and reduce included)."""
    why = _ray_available()
    if why:
        return {"skipped": why}
    from . import run

    source = str(Path(refs[0].uri).parent) if args.source is None else args.source
    image_list = workdir / "ray-image-list.txt"
    image_list.write_text("\n".join(r.file_name for r in refs) + "\n", encoding="utf-8")
    argv = ["--source", source, "--image-list", str(image_list), "--output", str(workdir / "ray-output"),
            "--vocab", str(vocab_path), "--shard-size", str(args.shard_size), "--no-report", "--quiet",
            "--overwrite", *_engine_argv(cfg)]
    t0 = time.perf_counter()
    try:
        rc = run.main(argv)
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:
            pass
    wall = time.perf_counter() - t0
    stats_path = workdir / "ray-output" / "scheduling.json"
    scheduling = json.loads(stats_path.read_text()) if stats_path.exists() else None
    return {"exit_code": rc, "images": len(refs), "seconds": wall,
            "images_per_s": len(refs) / wall if wall > 0 else None,
            "scheduling": scheduling, "shard_size": args.shard_size,
            "scheduling_overhead_fraction": (scheduling or {}).get("overhead_fraction"),
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
        prog="python -m annotator.bench",
        description="End-to-end throughput of the engine (read -> decode -> engine -> RLE/PNG -> Parquet, "
        "no Ray), the released CLIP-DIY loop on the same device and models, and the Ray pipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    b.add_argument("--warmup-images", type=int, default=None, metavar="N",
                   help="images in the untimed warm-up shard (default: the batch size)")
    b.add_argument("--read-threads", type=int, default=None, metavar="N", help="reader/decoder threads per shard processor")
    b.add_argument("--encode-threads", type=int, default=None, metavar="N", help="RLE/PNG encoder threads")
    b.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads (torch.set_num_threads) for the whole run; default: torch's")
    b.add_argument("--workdir", default=None, metavar="DIR",
                   help="where synthetic images and outputs go (default: a temp folder, removed at the end)")
    b.add_argument("--driver-memory-scale", type=_int_list, default=None, metavar="N,N,...",
                   help="also measure the driver's peak RSS listing + scheduling N tiny images via Ray")
    add_engine_arguments(p)
    return p


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
    if e["gpu_max_memory_allocated_bytes"] is not None:
        print(f"GPU max memory allocated: {e['gpu_max_memory_allocated_bytes'] / 2**30:.2f} GiB; "
              f"utilisation: {e['gpu_utilization']}")
    n = r["naive"]
    if n.get("images_per_s"):
        print(f"naive released loop: {n['images']} images: {n['images_per_s']:.2f} images/s without saliency "
              f"(precomputed, as released), {n['images_per_s_with_saliency']:.2f} with it")
        print(f"ratio engine / naive: {r['ratio']:.1f}x  (vs naive with saliency: {r['ratio_vs_naive_with_saliency']:.1f}x)")
    else:
        print(f"naive: {n.get('skipped')}")
    ray = r["ray"]
    if ray.get("images_per_s"):
        print(f"Ray pipeline: {ray['images']} images in {ray['seconds']:.1f} s = {ray['images_per_s']:.2f} images/s "
              f"(exit code {ray['exit_code']}; {ray['note']})")
        if ray.get("scheduling_overhead_fraction") is not None:
            print(f"Ray scheduling overhead: {100 * ray['scheduling_overhead_fraction']:.3f}% of shard time "
                  f"({ray['scheduling'].get('actors')} actors, shard size {ray.get('shard_size', '?')})")
    else:
        print(f"Ray pipeline: skipped ({ray.get('skipped')})")
    if r.get("driver_memory_scale") is not None:
        print(f"driver memory scale: {json.dumps(r['driver_memory_scale'])}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images < 1:
        raise SystemExit(f"--images: expected >= 1, got {args.images}")
    if args.shard_size < 1:
        raise SystemExit(f"--shard-size: expected >= 1, got {args.shard_size}")
    import torch

    from .engine import Engine
    from .sources import list_images
    from .vocab import Vocabulary, load_vocabulary

    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise SystemExit(f"--torch-threads: expected >= 1, got {args.torch_threads}")
        torch.set_num_threads(args.torch_threads)
    cfg = engine_config_from_args(args)
    vocab = load_vocabulary(args.vocab) if args.vocab else Vocabulary.from_names(list(VOC_CLASSES))
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="annotator-bench-")) if own_workdir else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
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

        t0 = time.perf_counter()
        engine = Engine(cfg, vocab, profile=True)
        load_s = time.perf_counter() - t0
        engine_res = run_engine_pass(engine, refs, workdir, args)
        n_naive = min(len(refs), 16) if args.naive_images is None else args.naive_images
        naive_res = run_naive_pass(engine, refs, n_naive) if n_naive > 0 else {"images": 0, "skipped": "--naive-images 0"}
        dev = engine.device
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(dev),
            "device_type": dev.type,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "config": cfg.to_json(),
            "vocabulary_size": len(vocab),
            "source": args.source or "synthetic VOC-sized JPEGs",
            "setup_seconds": {"images": gen_s, "engine_load": load_s},
            "images": engine_res["images"],
            "images_per_s": engine_res["images_per_s"],
            "stages": engine_res["stages"],
            "engine_overhead_fraction": engine_res["engine_overhead_fraction"],
            "engine": engine_res,
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
        result["ray"] = {"skipped": "--skip-ray"} if args.skip_ray else run_ray_pass(cfg, refs, vocab_path, workdir, args)
        result["driver_memory_scale"] = (
            run_driver_memory_scale(args.driver_memory_scale, workdir, vocab_path, 64)
            if args.driver_memory_scale else None
        )
        _print_report(result)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return 0
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
