"""``python -m benchmarks.encode``: the record encoders' time per image, on one core.

What a shard processor's encoder threads do for each image, on a PASCAL VOC-sized
(375x500) prediction: :func:`annotator.records.annotations_from_labels` (per-class COCO
RLE, boxes, areas and scores from the label map; 3 classes present) and
:func:`annotator.records.encode_confidence_png`. The best of ``--rounds`` rounds of
``--repeats`` calls each, after one untimed call. This timing was an assertion of
``tests/records/test_types.py`` (under 50 ms per call); the test now counts the work
instead (one pycocotools call on one stack of the classes present).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["main", "prediction", "run_encode_bench"]


def prediction(size_hw: tuple[int, int] = (375, 500), num_classes: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """A label map with three rectangles of classes 1..3 on background, and a random
    confidence map: ``((H, W) int32, (H, W) float32 in [0, 1))``."""
    h, w = size_hw
    labels = np.zeros((h, w), np.int32)
    labels[h * 2 // 15 : h * 8 // 15, w // 5 : w * 3 // 5] = 1
    labels[h * 44 // 75 : h * 74 // 75, w // 50 : w * 4 // 25] = 2
    labels[h * 2 // 75 : h * 8 // 75, w * 4 // 5 : w - 1] = min(3, num_classes - 1)
    conf = np.random.default_rng(0).random((h, w), dtype=np.float32)
    return labels, conf


def _best_ms(call: Callable[[], object], repeats: int, rounds: int) -> float:
    call()  # untimed: first-call costs
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 1000.0 * best


def run_encode_bench(size_hw: tuple[int, int] = (375, 500), num_classes: int = 21, repeats: int = 10,
                     rounds: int = 3) -> dict:
    """Milliseconds per call of each encoder (the best round), and what was encoded."""
    from annotator.records import annotations_from_labels, encode_confidence_png

    labels, conf = prediction(size_hw, num_classes)
    names = ["background", *(f"class {i}" for i in range(1, num_classes))]
    return {
        "size_hw": list(size_hw), "vocabulary_size": num_classes,
        "classes_present": int(np.count_nonzero(np.bincount(labels.ravel())[1:])),
        "repeats": repeats, "rounds": rounds,
        "annotations_from_labels_ms": _best_ms(lambda: annotations_from_labels(labels, conf, names), repeats, rounds),
        "encode_confidence_png_ms": _best_ms(lambda: encode_confidence_png(conf), repeats, rounds),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="375,500", metavar="H,W", help="prediction size (default: VOC's 375,500)")
    p.add_argument("--classes", type=int, default=21, metavar="K", help="vocabulary size, background included")
    p.add_argument("--repeats", type=int, default=10, metavar="N", help="calls per timed round")
    p.add_argument("--rounds", type=int, default=3, metavar="N", help="timed rounds (the best is reported)")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.split(","))
    except ValueError:
        p.error(f"--size: expected H,W (two integers), got {args.size!r}")
    for option, value in (("--classes", args.classes), ("--repeats", args.repeats), ("--rounds", args.rounds)):
        if value < (2 if option == "--classes" else 1):
            p.error(f"{option}: expected a positive count, got {value}")
    r = run_encode_bench((h, w), args.classes, args.repeats, args.rounds)
    print(f"{h}x{w}, {r['classes_present']} of {args.classes} classes present, best of {args.rounds} x "
          f"{args.repeats} calls: annotations_from_labels {r['annotations_from_labels_ms']:.2f} ms, "
          f"encode_confidence_png {r['encode_confidence_png_ms']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
