#!/usr/bin/env bash
# GPU benchmark, one command (issue "Performance: >= 360 images/s per GPU end to end,
# >= 25x the released code"). Run from the repository root on a CUDA machine with
# Python 3.12 + torch, torchvision, timm, pyarrow, pillow, fsspec, numpy installed, and
# the wheels below carried in .whl/ (the device tool: carry [".whl"]):
#
#   open_clip_torch-3.3.0-py3-none-any.whl
#   ftfy-6.3.1-py3-none-any.whl
#   wcwidth-0.7.0-py3-none-any.whl
#   pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl
#   timm-1.0.31-py3-none-any.whl          (open_clip 3.3 needs timm >= 1.0.17; the version tested on CPU)
#
# Fetch them here (not on the GPU machine, which has no network):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 pycocotools==2.0.11 timm==1.0.31
#
# Not needed (and not imported): ray, datasets, jsonschema (--skip-ray path only).
# Results go to $OUT (bench.json, bench_stub.json, bench.log, loader.json, env.txt, tests.log, bench_full.json).
# Expected wall time: ~3-5 minutes (2000 synthetic images; random weights, no downloads).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$(date +%s)

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed (carry .whl?)"; exit 3; }
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  python3 - <<'PY'
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "torchvision", "timm", "open_clip", "pycocotools", "pyarrow", "PIL", "fsspec", "numpy"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:
        print(m, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
} 2>&1 | tee "$OUT/env.txt"

# 1. The benchmark the issue asks for (engine end to end vs the naive released loop).
WORK=/tmp/bench-work
rm -rf "$WORK"
timeout 360 python3 -m benchmarks --model ViT-B-32 --pretrained random --saliency found --protocol official \
  --images 2000 --skip-ray --workdir "$WORK" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
echo "bench exit: $? after $(( $(date +%s) - START )) s"

# 1b. The host side alone (read, nvJPEG decode, RLE/PNG encode, Parquet) against a stand-in
#     device at 1,000 images/s: can this machine's CPUs feed the stretch target (600/s)?
timeout 120 python3 -m benchmarks --model tiny-random --pretrained random --saliency found-tiny-random \
  --device cuda --images 2000 --stub-device-ms-per-image 1.0 --workdir "$WORK" --json "$OUT/bench_stub.json" 2>&1 \
  | grep -E "stub device|stages|read|decode|encode|write|device_wait" | tee -a "$OUT/bench.log"

# 2. The loader alone on the same files: GPU (nvJPEG) batch decode vs PIL threads, and agreement.
timeout 120 python3 - "$WORK/images" "$OUT/loader.json" <<'PY' 2>&1 | tee -a "$OUT/bench.log"
import json, sys, time
import numpy as np, torch
from annotator.inputs.decode import decode_image
from annotator.inputs.loader import ImageLoader
from annotator.inputs.listing import list_images, read_image_bytes
refs = list_images(sys.argv[1])
res = {}
for label, gpu in (("gpu_decode", True), ("pil_threads", False)):
    for threads in (8, 16):
        t0 = time.perf_counter()
        with ImageLoader(refs, read_image_bytes, batch_size=32, num_threads=threads, prefetch=2,
                         device="cuda", gpu_decode=gpu) as loader:
            n = sum(len(b) for b in loader)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        res[f"{label}_{threads}threads"] = {"images": n, "seconds": dt, "images_per_s": n / dt, **loader.stats.to_json()}
        print(label, threads, "threads:", round(n / dt, 1), "images/s", loader.stats)
diffs = []
with ImageLoader(refs[:64], read_image_bytes, device="cuda") as loader:
    for batch in loader:
        for i, img in batch:
            ref = decode_image(read_image_bytes(refs[i]))
            diffs.append(float(np.abs(img.permute(1, 2, 0).cpu().numpy().astype(int) - ref.astype(int)).mean()))
res["gpu_vs_pil_mean_abs_diff"] = {"max_over_images": max(diffs), "mean": float(np.mean(diffs))}
print("GPU vs PIL decode, mean |diff| per image: max", max(diffs), "mean", np.mean(diffs))
json.dump(res, open(sys.argv[2], "w"), indent=2)
PY

# 3. Unit tests of the benchmark's own modules, on this machine (CPU paths + torchvision).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/inputs/test_loader.py tests/benchmarks/test_released_loop.py tests/shards/test_processor.py \
  "tests/test_engine.py::test_cuda_matches_cpu_on_tiny_model" "tests/test_engine.py::test_device_class_stats_give_the_same_records" \
  "tests/test_engine.py::test_exact_resizes_on_cuda_equal_the_cpu" \
  2>&1 | tail -5 | tee "$OUT/tests.log"

# 4. If time is left: the product default (masks at full resolution), fewer images.
if [ $(( $(date +%s) - START )) -lt 330 ]; then
  timeout 200 python3 -m benchmarks --model ViT-B-32 --pretrained random --saliency found --protocol full \
    --images 1000 --naive-images 8 --skip-ray --workdir /tmp/bench-work-full --json "$OUT/bench_full.json" 2>&1 \
    | tail -25 | tee -a "$OUT/bench.log"
fi
echo "total $(( $(date +%s) - START )) s"
