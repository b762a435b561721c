"""What :mod:`benchmarks` measures about the machine, besides throughput.

- :func:`cpu_name`, :func:`device_name`: the hardware a result was measured on;
- :class:`GpuUtilSampler`: GPU utilisation (%) polled from ``nvidia-smi`` in a thread;
- :func:`run_manifest_scale` (``--manifest-scale``): the driver's cost of recording one
  finished shard in a manifest of N shards;
- :func:`run_resize_arithmetic` (``--resize-arithmetic``): the 256 resize and the crop
  resizes timed side by side in float (the ``full`` protocol) and in OpenCV's/PIL's
  exact integer arithmetic (``official``), on the same images and device;
- :func:`run_precision_compare` (``--compare-precision``): the engine at fp32 and at
  bf16 autocast on the same images, side by side: images/s and label agreement;
- :func:`ray_unavailable_reason`: whether the Ray pipeline can run at all.

The driver's and the reducer's memory at scale: :mod:`benchmarks.scale`
(``--scale``); the engine levers: :mod:`benchmarks.levers` (``--compare-levers``).

Importing this module needs neither Ray nor ``datasets`` (both imported lazily).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["GpuUtilSampler", "cpu_name", "device_name", "run_manifest_scale", "run_precision_compare",
           "run_resize_arithmetic"]


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


def ray_unavailable_reason() -> str | None:
    """None when the Ray pipeline can run, else why not."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "ray is not installed"
    if any(importlib.util.find_spec(m) is None for m in ("annotator.run", "annotator.distributed.ray_runner")):
        return "annotator.run / annotator.distributed.ray_runner not present"
    return None


# --------------------------------------------------------------------------- manifest scale
def run_manifest_scale(counts: Sequence[int], workdir: Path) -> dict:
    """The driver's cost of recording one finished shard in a manifest that already
    lists N shards: one full save (what every shard cost when the manifest was saved
    after each one) against the amortised cost of ``mark_finished`` as a run uses it
    (saves at most every ``MANIFEST_FLUSH_INTERVAL_S``), side by side for each N."""
    from annotator.job import MANIFEST_FLUSH_INTERVAL_S
    from annotator.storage.manifest import Manifest
    from annotator.storage.parts import part_path

    out = {"flush_interval_s": MANIFEST_FLUSH_INTERVAL_S, "runs": []}
    for n in counts:
        root = workdir / f"manifest-{n}"
        extra = 500
        m = Manifest.create(str(root), "0" * 16, "0" * 16, n + extra, 64)
        for i in range(n):
            m.finished[str(i)] = {"path": f"parts/part-{i:05d}.parquet", "rows": 64, "sha256": "a" * 64}
        t0 = time.perf_counter()
        m.save()
        save_s = time.perf_counter() - t0
        m.flush_interval_s = MANIFEST_FLUSH_INTERVAL_S
        t0 = time.perf_counter()
        for i in range(n, n + extra):
            m.mark_finished(i, part_path(str(root), i), 64, "a" * 64)
        per_shard_s = (time.perf_counter() - t0) / extra
        out["runs"].append({"shards_listed": n, "one_save_ms": 1000 * save_s,
                            "mark_finished_ms_amortised": 1000 * per_shard_s})
        shutil.rmtree(root, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- resize arithmetic
def run_resize_arithmetic(engine, images: list, repeats: int = 3) -> dict:
    """Seconds per image of the two uint8 resizes, float vs exact, measured alternately.

    Args:
        engine: a loaded :class:`annotator.engine.Engine` (its device, grids, encoder size).
        images: (H, W, 3) uint8 arrays, e.g. the benchmark's decoded synthetic JPEGs.
    Returns:
        ``{"float": {"resize256_ms", "crops_ms"}, "exact": {...}, "exact_over_float": {...}}``
        (milliseconds per image, the best of ``repeats`` alternated rounds).
    """
    import torch

    from annotator.core import multiscale
    from annotator.engine import to_chw_uint8

    dev = engine.device
    tensors = [to_chw_uint8(im, dev) for im in images]
    per_chunk = max(1, engine.config.crop_chunk // engine.patches_per_image)
    clip = engine.clip

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def one_round(exact: bool) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        small = torch.stack([multiscale.resize_input(t, engine.config.input_size, exact) for t in tensors])
        sync()
        t1 = time.perf_counter()
        for i in range(0, len(small), per_chunk):
            multiscale.cut_crops(small[i : i + per_chunk], engine.grids, clip.input_size, clip.mean, clip.std,
                                 exact=exact)
        sync()
        return t1 - t0, time.perf_counter() - t1

    best: dict[str, list[float]] = {"float": [float("inf")] * 2, "exact": [float("inf")] * 2}
    with torch.inference_mode():
        one_round(False), one_round(True)  # warm-up: coefficient tables, allocator
        for _ in range(repeats):
            for name, exact in (("float", False), ("exact", True)):
                r, c = one_round(exact)
                best[name] = [min(best[name][0], r), min(best[name][1], c)]
    n = len(tensors)
    out = {k: {"resize256_ms": 1000 * v[0] / n, "crops_ms": 1000 * v[1] / n} for k, v in best.items()}
    out["exact_over_float"] = {k: out["exact"][k] / out["float"][k] for k in ("resize256_ms", "crops_ms")}
    out["images"] = n
    return out


# --------------------------------------------------------------------------- precision
def run_precision_compare(config, vocabulary, images: list, rounds: int = 2) -> dict:
    """The engine at fp32 and at bf16 autocast on the same images, alternately.

    Args:
        config: the benchmark's :class:`~annotator.config.EngineConfig` (its precision is
            replaced by ``fp32`` and ``bf16``; the models are the same seeded weights).
        images: (H, W, 3) uint8 arrays.
    Returns:
        ``{"fp32": {"images_per_s"}, "bf16": {...}, "bf16_speedup", "label_agreement",
        "images"}``: the best of ``rounds`` timed passes each (one untimed image first),
        and the fraction of pixels whose label is the same at both precisions.
    """
    import dataclasses

    from annotator.engine import Engine
    from benchmarks.levers import label_agreement, time_alternately

    engines = {p: Engine(dataclasses.replace(config, precision=p), vocabulary) for p in ("fp32", "bf16")}
    best, labels, _ = time_alternately(engines, images, rounds, warmup_images=images[:1])
    out = {p: {"images_per_s": len(images) / best[p], "seconds": best[p]} for p in engines}
    out["bf16_speedup"] = best["fp32"] / best["bf16"]
    out["label_agreement"] = label_agreement(labels["fp32"], labels["bf16"])
    out["images"] = len(images)
    return out
