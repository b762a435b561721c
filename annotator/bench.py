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
temporary folder on local disk. Examples::

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
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import DEFAULT_SHARD_SIZE, EngineConfig, add_engine_arguments, engine_config_from_args

__all__ = ["VOC_CLASSES", "build_parser", "main", "make_synthetic_jpegs", "synthetic_image"]

#: PASCAL VOC's 20 object classes (+ background = 21 classes, like the paper's VOC runs).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv/monitor",
)
#: Stage names always present in the JSON ``stages`` dict (seconds).
STAGES = ("read", "decode", "upload", "crops", "clip", "saliency", "guidance", "download", "encode", "write")
#: (height, width) of the synthetic images, cycled: VOC's common sizes.
VOC_SIZES_HW = ((375, 500),) * 6 + ((500, 375), (333, 500), (375, 500), (500, 375))


# --------------------------------------------------------------------------- synthetic data
def synthetic_image(seed: int, size_hw: tuple[int, int]) -> np.ndarray:
    """A photo-like (H, W, 3) uint8 RGB image: a smooth colour field, 1-5 shapes, grain."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    h, w = size_hw
    low = rng.integers(0, 256, size=(int(rng.integers(2, 5)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = int(rng.integers(x0 + 10, w)), int(rng.integers(y0 + 10, h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pts = [(int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.normal(0.0, 5.0, size=(h, w, 1)).astype(np.int16)  # sensor-like grain
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_synthetic_jpegs(directory: str | os.PathLike, n: int, *, seed: int = 0, quality: int = 90,
                         sizes_hw: Sequence[tuple[int, int]] = VOC_SIZES_HW, threads: int | None = None) -> list[Path]:
    """Write ``n`` baseline JPEGs ``img_000000.jpg`` ... into ``directory``; returns their paths.

    Sizes cycle through ``sizes_hw`` ((height, width) pixels); content from
    :func:`synthetic_image` with seed ``seed + i``.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"--images: expected >= 1 image, got {n}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> Path:
        p = root / f"img_{i:06d}.jpg"
        Image.fromarray(synthetic_image(seed + i, sizes_hw[i % len(sizes_hw)])).save(p, "JPEG", quality=quality)
        return p

    with ThreadPoolExecutor(threads or os.cpu_count() or 2) as ex:
        return list(ex.map(one, range(n)))


# --------------------------------------------------------------------------- environment
def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs)"


class GpuUtilSampler:
    """Polls ``nvidia-smi`` for GPU utilisation (%) in a thread; ``result()`` -> dict or None."""

    def __init__(self, device, interval_s: float = 0.5):
        self.index = None
        if device.type == "cuda":
            import torch

            self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None
        if self.index is not None and shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)

    def _query(self) -> float | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(self.index)],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return float(out.splitlines()[0])
        except Exception:
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            v = self._query()
            if v is not None:
                self.samples.append(v)

    def __enter__(self):
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_percent": float(np.mean(self.samples)), "max_percent": float(np.max(self.samples)),
                "samples": len(self.samples)}


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


def _ray_available() -> str | None:
    """None when the Ray pipeline can run, else why not."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "ray is not installed"
    if importlib.util.find_spec("annotator.run") is None or importlib.util.find_spec("annotator.pipeline") is None:
        return "annotator.run / annotator.pipeline not present"
    return None


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
    summary_path = workdir / "ray-output" / "summary.json"
    scheduling = json.loads(summary_path.read_text()).get("scheduling") if summary_path.exists() else None
    return {"exit_code": rc, "images": len(refs), "seconds": wall,
            "images_per_s": len(refs) / wall if wall > 0 else None,
            "scheduling": scheduling, "shard_size": args.shard_size,
            "scheduling_overhead_fraction": (scheduling or {}).get("overhead_fraction"),
            "note": "wall clock of python -m annotator.run: Ray start, engine loading and reduce included; "
                    "scheduling_overhead_fraction = driver time handling shard results / shard time"}


# --------------------------------------------------------------------------- driver memory scale
#: Engine options of the driver-memory probe: the tiny test model, as cheap per image as possible.
PROBE_ENGINE_ARGV = ["--model", "tiny-random", "--pretrained", "random", "--saliency", "none",
                     "--patch-sizes", "256", "--protocol", "official", "--device", "cpu", "--batch-size", "64"]


def _driver_probe(source: str, output: str, vocab_path: str, shard_size: int) -> dict:
    """In a fresh process: list ``source`` and schedule it through the Ray pipeline the way
    ``annotator.run`` does (manifest included, no reduce); returns the peak RSS."""
    from . import parts, pipeline
    from .config import engine_config_from_args
    from .run import build_parser as run_parser
    from .sources import list_images
    from .vocab import load_vocabulary
    from .worker import RunOptions, make_shards

    def rss_mb() -> float:
        """Peak resident set size of this process so far, MiB: VmHWM (ru_maxrss keeps the
        parent's peak across fork + exec on Linux, so it is only the fallback)."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        except (OSError, ValueError, IndexError):
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    imported = rss_mb()
    args = run_parser().parse_args(["--source", source, "--output", output, "--vocab", vocab_path, *PROBE_ENGINE_ARGV])
    cfg = engine_config_from_args(args)
    vocab = load_vocabulary(vocab_path)
    pipeline.init_ray(None)
    before = rss_mb()
    t0 = time.perf_counter()
    refs = list_images(source)
    tasks = make_shards(refs, shard_size)
    manifest = parts.open_output(output, config_hash=parts.config_hash({"bench": "driver-probe"}), listing_fingerprint=parts.listing_fingerprint(
        r.file_name for r in refs), num_shards=len(tasks), shard_size=shard_size, overwrite=True)
    listed = rss_mb()
    opts = RunOptions(output=output, metadata={"vocabulary": vocab.names, "bench": True})
    pipeline.run_shards(tasks, cfg, vocab, opts, num_actors=None,
                        on_done=lambda r: manifest.mark_finished(r["shard_index"], r["path"], r["rows"], r["sha256"]))
    wall = time.perf_counter() - t0
    import ray

    ray.shutdown()
    return {"images": len(refs), "shards": len(tasks), "seconds": wall, "peak_rss_mb_after_imports": imported,
            "peak_rss_mb_after_ray_init": before, "peak_rss_mb_after_listing": listed, "peak_rss_mb": rss_mb(),
            "peak_rss_mb_listing_and_scheduling": rss_mb() - before}


def run_driver_memory_scale(counts: Sequence[int], workdir: Path, vocab_path: Path, shard_size: int) -> dict:
    """Peak driver RSS for each N in ``counts`` (tiny 32x32 JPEGs, one fresh process each)."""
    why = _ray_available()
    if why:
        return {"skipped": why}
    out = {"engine": " ".join(PROBE_ENGINE_ARGV), "runs": []}
    for n in counts:
        src = workdir / f"scale-{n}"
        make_synthetic_jpegs(src, n, sizes_hw=((32, 32),), quality=80)
        code = ("import json, sys; from annotator.bench import _driver_probe; "
                "print('DRIVER-PROBE ' + json.dumps(_driver_probe(*sys.argv[1:4], int(sys.argv[4]))))")
        proc = subprocess.run(
            [sys.executable, "-c", code, str(src), str(workdir / f"scale-{n}-output"), str(vocab_path), str(shard_size)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()},
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("DRIVER-PROBE ")), None)
        if proc.returncode != 0 or line is None:
            out["runs"].append({"images": n, "error": (proc.stderr or proc.stdout)[-1500:]})
        else:
            out["runs"].append(json.loads(line[len("DRIVER-PROBE "):]))
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(workdir / f"scale-{n}-output", ignore_errors=True)
    return out


def _pythonpath() -> str:
    here = str(Path(__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + old if old else "")


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
