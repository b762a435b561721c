"""``python -m annotator.reduce OUTPUT``: merge the parts and write the run's deliverables.

Writes, streaming over the parts (memory does not grow with the dataset):

- ``OUTPUT/annotations.parquet``: every input image exactly once (same columns as parts);
- ``OUTPUT/coco.json``: the CVAT/FiftyOne COCO profile (category ids from 1, ``iscrowd``);
- ``OUTPUT/summary.json``: images done, failures by reason, annotations/pixels per class;
- ``OUTPUT/metrics.json``: with ground truth, the summed confusion matrix, per-class IoU,
  mIoU (top-level ``miou`` in 0..1), pixel accuracy;
- ``OUTPUT/report.html`` and ``OUTPUT/previews/`` (unless ``report=False``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from typing import Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import metrics, parts
from .config import parse_storage_options
from .schema import PART_ARROW_SCHEMA

log = logging.getLogger(__name__)

#: Images named in metrics.json's ``ground_truth_errors`` (the count covers them all).
GT_ERRORS_LISTED = 20


class ReduceError(RuntimeError):
    """The parts do not add up to a complete, consistent run."""


def _write_json(fs, path: str, obj) -> None:
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def reduce_output(output: str, storage_options: dict | None = None, *, report: bool = True,
                  image_storage_options: dict | None = None) -> dict:
    """Merge ``OUTPUT/parts`` into the final files; returns the summary dict.

    image_storage_options: fsspec options to re-read the source images for the report's
    previews (default: ``storage_options``), e.g. credentials that were in the source URL.
    """
    paths = parts.list_parts(output, storage_options)
    if not paths:
        raise ReduceError(f"{output}: no parts to reduce (expected {output}/parts/part-*.parquet)")
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    metas = [parts.read_part_metadata(p, storage_options) for p in paths]
    meta = dict(metas[0])
    hashes = {m.get("config_hash") for m in metas}
    if len(hashes) > 1:
        raise ReduceError(f"{output}: parts come from different configurations {sorted(map(str, hashes))}")
    class_names: list[str] = meta["vocabulary"]
    expected = meta.get("num_images")

    # Stage: merge rows (streamed) and count
    seen: set[int] = set()
    status, reasons = Counter(), Counter()
    ann_per_class, px_per_class, score_sum = Counter(), Counter(), Counter()
    meta.pop("shard_index", None)
    meta.pop("confusion", None)
    meta.pop("gt_errors", None)
    schema = PART_ARROW_SCHEMA.with_metadata({parts.METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    merged_tmp = f"{root}/annotations.parquet.tmp"
    with fs.open(merged_tmp, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        for path in paths:
            buf = []
            for row in parts.iter_rows([path], storage_options):
                if row["image_id"] in seen:
                    raise ReduceError(f"image_id {row['image_id']} ({row['file_name']}) appears in more than one part")
                seen.add(row["image_id"])
                status[row["status"]] += 1
                if row["status"] == "error":
                    reasons[(row["error"] or "unknown").split(":", 1)[0]] += 1
                for a in row["annotations"]:
                    ann_per_class[a["category_name"]] += 1
                    px_per_class[a["category_name"]] += a["area"]
                    score_sum[a["category_name"]] += a["score"] * a["area"]
                buf.append(row)
                if len(buf) >= 256:
                    writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                    buf = []
            if buf:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
    fs.mv(merged_tmp, f"{root}/annotations.parquet")
    if expected is not None and len(seen) != expected:
        log.warning("%d of %d images have output (run the same command again to finish)", len(seen), expected)

    # Stage: COCO JSON
    from .export.coco import write_coco_json

    with fs.open(f"{root}/coco.json.tmp", "w") as f:
        coco_counts = write_coco_json(parts.iter_rows([f"{output}/annotations.parquet"], storage_options),
                                      class_names, f, metadata=meta)
    fs.mv(f"{root}/coco.json.tmp", f"{root}/coco.json")

    # Stage: summary
    never = [c for c in class_names[1:] if ann_per_class[c] == 0]
    summary = {
        "images": len(seen),
        "expected_images": expected,
        "ok": status["ok"],
        "failed": status["error"],
        "failures_by_reason": dict(sorted(reasons.items())),
        "annotations": sum(ann_per_class.values()),
        "per_class": {
            c: {"annotations": ann_per_class[c], "pixels": px_per_class[c],
                "mean_score": round(score_sum[c] / px_per_class[c], 6) if px_per_class[c] else None}
            for c in class_names[1:]
        },
        "classes_never_predicted": never,
        "coco": coco_counts,
        "run": {k: meta.get(k) for k in ("model", "pretrained", "saliency", "protocol", "version", "config_hash", "source")},
    }
    if summary["annotations"] == 0 and status["ok"]:
        log.warning("no annotation at all in %d images: check the vocabulary and the saliency", status["ok"])
    if never:
        log.warning("classes never predicted: %s", ", ".join(never))

    # Stage: metrics from the confusion matrices computed in the actors
    cms = [m.get("confusion") for m in metas if m.get("confusion") is not None]
    metrics_path = f"{root}/metrics.json"
    if any("confusion" in m for m in metas):
        k = len(class_names)
        cm = np.zeros((k, k), dtype=np.int64)
        for c in cms:
            cm += np.asarray(c, dtype=np.int64)
        scores = metrics.scores_from_confusion(cm, class_names)
        scores["confusion_matrix"] = cm.tolist()
        gt_errors = sorted((e for m in metas for e in m.get("gt_errors") or []), key=lambda e: e["file_name"])
        scores["ground_truth_errors"] = {"count": len(gt_errors), "first": gt_errors[:GT_ERRORS_LISTED]}
        if gt_errors:
            log.warning("%d image(s) left out of the scores, their ground truth could not be used; "
                        "e.g. %s: %s (see metrics.json)", len(gt_errors), gt_errors[0]["file_name"], gt_errors[0]["error"])
        _write_json(fs, metrics_path, scores)
        summary["miou"] = scores["miou"]
        print(metrics.format_table(scores), file=sys.stderr)
    elif fs.exists(metrics_path):  # left by an earlier run (e.g. one replaced with --overwrite)
        fs.rm(metrics_path)
    _write_json(fs, f"{root}/summary.json", summary)

    # Stage: review report
    if report:
        try:
            from .report import write_report

            write_report(output, storage_options=storage_options, image_storage_options=image_storage_options)
        except Exception as e:  # the report is a review aid: never lose the run over it
            log.warning("report not written: %s: %s", type(e).__name__, e)
    return summary


def format_summary(summary: dict) -> str:
    """The end-of-run table: per class annotations, pixels, mean score; failures by reason."""
    rows = [(name, str(c["annotations"]), str(c["pixels"]),
             "-" if c["mean_score"] is None else f"{c['mean_score']:.3f}")
            for name, c in summary["per_class"].items()]
    header = ("class", "masks", "pixels", "mean score")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % widths[i] for i in range(4))
    out = [line.format(*header), "-" * (sum(widths) + 6)]
    out += [line.format(*r) for r in rows]
    out.append(f"images: {summary['images']} ({summary['ok']} annotated, {summary['failed']} failed)")
    for reason, n in summary["failures_by_reason"].items():
        out.append(f"  failed, {reason}: {n}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m annotator.reduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="the run's output folder or fsspec URL")
    p.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec storage options as JSON")
    p.add_argument("--no-report", action="store_true", help="skip report.html and previews")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = parse_storage_options(args.storage_options) or None
        summary = reduce_output(args.output, opts, report=not args.no_report)
    except (ReduceError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary), file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("images", "ok", "failed", "annotations")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
