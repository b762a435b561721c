"""``python -m benchmarks.exports``: every exporter's time and peak memory on a run
of N images (default 4,000), each in a fresh process, side by side.

The run is synthetic but real in form: N VOC-sized (375x500) images as PNG files, each
with 1-4 classes of rectangles and discs (several objects per class, so ``--instances``
has work), written as the parts a run writes (``records.ok_record``) and merged by the
reducer. Each export then runs as ``python -m annotator.export`` would, in its own
process, and reports wall seconds and peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import child_env

#: (name, CLI options) of each measured export.
EXPORTS: list[tuple[str, list[str]]] = [
    ("coco", ["--format", "coco"]),
    ("coco --instances --polygons", ["--format", "coco", "--instances", "--polygons"]),
    ("labelstudio", ["--format", "labelstudio"]),
    ("masks", ["--format", "masks"]),
    ("yolo", ["--format", "yolo", "--val-fraction", "0.2"]),
    ("yolo-semantic", ["--format", "yolo-semantic", "--val-fraction", "0.2"]),
    ("cvat-masks --instances", ["--format", "cvat-masks", "--instances"]),
    ("hf", ["--format", "hf"]),
]
CLASSES = ["background", "cat", "dog", "person", "car", "sky"]


def build_run(root: Path, n: int, size_hw: tuple[int, int] = (375, 500), shard: int = 64) -> str:
    """A merged run folder of ``n`` synthetic images under ``root``; returns OUTPUT."""
    import numpy as np
    from PIL import Image

    from annotator import records
    from annotator.inputs.catalog import ImageRef
    from annotator.outputs.merge import reduce_output
    from annotator.storage import parts

    images, output = root / "images", root / "OUTPUT"
    images.mkdir(parents=True, exist_ok=True)
    h, w = size_hw
    yy, xx = np.mgrid[:h, :w]
    meta = {"vocabulary": CLASSES, "model": "synthetic", "pretrained": "none", "saliency": "none",
            "protocol": "full", "version": "bench", "config_hash": "exportbench", "num_images": n}
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        labels = np.zeros((h, w), np.int32)
        for c in rng.choice(np.arange(1, len(CLASSES)), size=int(rng.integers(1, 5)), replace=False):
            for _ in range(int(rng.integers(1, 4))):
                cy, cx, r = int(rng.integers(40, h - 40)), int(rng.integers(40, w - 40)), int(rng.integers(10, 60))
                if rng.random() < 0.5:
                    labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
                else:
                    labels[max(0, cy - r): cy + r, max(0, cx - r): cx + 2 * r] = c
        conf = np.where(labels > 0, 0.8, 0.6).astype(np.float32)
        path = images / f"img_{i:06d}.png"
        Image.fromarray((labels * 40).astype(np.uint8)).save(path)
        recs.append(records.ok_record(ImageRef(i + 1, path.name, str(path)), labels, conf, CLASSES))
        if len(recs) == shard or i == n - 1:
            parts.write_part(recs, parts.part_path(str(output), i // shard), {**meta, "shard_index": i // shard})
            recs = []
    reduce_output(str(output), report=False)
    return str(output)


def _one(output: str, to: str, argv: list[str]) -> dict:
    """In a fresh process: one export; its seconds and peak RSS."""
    import contextlib
    import io

    from annotator.export.__main__ import main
    from benchmarks.scale import peak_rss_mib

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        code = main([output, "--to", to, *argv])
    return {"exit_code": code, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(),
            "summary": out.getvalue().splitlines()[0] if out.getvalue() else ""}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exports", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4000, metavar="N")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--workdir", default=None, metavar="DIR")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="annotator-export-bench-"))
    try:
        t0 = time.perf_counter()
        output = build_run(work, args.images)
        result = {"images": args.images, "build_s": time.perf_counter() - t0, "exports": {}}
        env = child_env()
        for name, options in EXPORTS:
            to = str(work / "exports" / name.replace(" ", "_"))
            code = ("import json, sys; from benchmarks.exports import _one; "
                    "print('EXPORT ' + json.dumps(_one(sys.argv[1], sys.argv[2], sys.argv[3:])))")
            proc = subprocess.run([sys.executable, "-c", code, output, to, *options], capture_output=True, text=True,
                                  env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("EXPORT ")), None)
            r = json.loads(line[7:]) if line else {"error": proc.stderr[-1500:]}
            result["exports"][name] = r
            if "error" in r:
                print(f"{name:<30} error: {r['error'][-300:]}")
            else:
                print(f"{name:<30} {r['seconds']:7.1f} s  peak {r['peak_rss_mib']:6.0f} MiB  "
                      f"({args.images / r['seconds']:.0f} images/s)  {r['summary'][:160]}")
            shutil.rmtree(to, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
