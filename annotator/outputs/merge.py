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

import contextlib
import json
import logging
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from annotator.core.stats import ClassTally
from annotator.errors import AnnotatorError
from annotator.evaluation import metrics
from annotator.records import error_reason
from annotator.records.metadata import SHARD_KEYS, RunMetadata
from annotator.records.schema import PART_ARROW_SCHEMA
from annotator.storage import parts
from annotator.storage.layout import (
    ANNOTATIONS_NAME,
    COCO_NAME,
    METRICS_NAME,
    PARTS_DIR,
    SUMMARY_NAME,
    join_url,
)
from annotator.storage.state_schema import check_part_footer, refuse_stray_parts

log = logging.getLogger(__name__)

#: Images named in metrics.json's ``ground_truth_errors`` (the count covers them all).
GT_ERRORS_LISTED = 20


class ReduceError(AnnotatorError, RuntimeError):
    """The parts do not add up to a complete, consistent run."""


def _write_json(fs, path: str, obj) -> None:
    """Atomically (a temporary name, then a move): a reader never sees half a file."""
    data = json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
    with _temporary(fs, path) as tmp:
        with fs.open(tmp, "wb") as f:
            f.write(data)


@contextlib.contextmanager
def _temporary(fs, path: str):
    """A unique temporary sibling of ``path``, moved onto it on success and removed on
    failure (two reducers never share one; a failed one leaves nothing a later run reads)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        yield tmp
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


@dataclass
class IdSet:
    """Image ids seen, one bit each (ids are listing positions, so dense from 1): a
    million ids cost 125 KB, not the ~70 MB of a ``set`` of ints."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self._count = 0

    def add(self, image_id: int) -> bool:
        """Record ``image_id``; False when it was recorded already."""
        byte, bit = divmod(int(image_id), 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        if self._bits[byte] >> bit & 1:
            return False
        self._bits[byte] |= 1 << bit
        self._count += 1
        return True

    def __len__(self) -> int:
        return self._count


@dataclass
class Footers:
    """What the reducer keeps of the parts' footers, read one at a time: the first
    footer, the configuration hashes, the summed confusion matrix and the first ground
    truth errors (by file name) with their count. Memory does not grow with the parts."""

    first: dict | None = None
    hashes: set = field(default_factory=set)
    #: the first part read of each configuration hash (to name a foreign part)
    first_path: dict = field(default_factory=dict)
    #: a part was scored against ground truth (its footer has a ``confusion`` key)
    scored: bool = False
    confusion: np.ndarray | None = None
    gt_error_count: int = 0
    gt_errors_first: list = field(default_factory=list)
    #: parts per precision their encoders ran at (footers that say)
    precisions: Counter = field(default_factory=Counter)

    def add(self, meta: dict) -> None:
        if self.first is None:
            self.first = meta
        self.hashes.add(meta.get("config_hash"))
        self.scored |= "confusion" in meta
        if meta.get("precision"):
            self.precisions[meta["precision"]] += 1
        if meta.get("confusion") is not None:
            cm = np.asarray(meta["confusion"], dtype=np.int64)
            self.confusion = cm if self.confusion is None else self.confusion + cm
        errors = meta.get("gt_errors") or []
        if errors:
            self.gt_error_count += len(errors)
            merged = sorted([*self.gt_errors_first, *errors], key=lambda e: e["file_name"])
            self.gt_errors_first = merged[:GT_ERRORS_LISTED]


def read_footers(paths: list[str], storage_options: dict | None, config_hash: str | None = None) -> Footers:
    """The parts' footers, each checked against ``part-footer.schema.json``, its
    ``shard_index`` against its file name and, when given (from the manifest), its
    ``config_hash``: a part that fails is named, with the way out."""
    footers = Footers()
    for p in paths:
        meta = _footer(p, storage_options)
        index = parts.part_index(p)
        if meta["shard_index"] != index:
            raise ReduceError(f"{p}: its footer says shard {meta['shard_index']}, its name shard {index} (a part "
                              f"copied or renamed); {_REDO}")
        if config_hash is not None and meta["config_hash"] != config_hash:
            raise ReduceError(f"{p}: written by another configuration (config hash {meta['config_hash']}, this "
                              f"run's is {config_hash}); {_REDO}")
        footers.first_path.setdefault(meta["config_hash"], p)
        footers.add(meta)
    return footers


@dataclass
class MergeCounts:
    """What the merge saw: image ids, statuses, failure reasons, per-class totals."""

    class_names: list[str]
    seen: IdSet = field(default_factory=IdSet)
    status: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    tally: ClassTally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = ClassTally(len(self.class_names))


def reduce_output(output: str, storage_options: dict | None = None, *, report: bool = True,
                  image_storage_options: dict | None = None, verify: bool = True,
                  fence: Callable[[], None] | None = None) -> dict:
    """Merge ``OUTPUT/parts`` into the final files; returns the summary dict.

    fence: called before each file is written (the output lease's
    :meth:`~annotator.storage.lock.OutputLock.check_fence`): raises when this reducer
    lost the output to another writer, so that it writes nothing more.

    verify: check each recorded part's sha256 against the manifest first (the run passes
    False: it verified the parts it resumed and wrote the others itself, moments ago).

    image_storage_options: fsspec options to re-read the source images for the report's
    previews (default: ``storage_options``), e.g. credentials that were in the source URL.
    """
    paths = parts.list_parts(output, storage_options)
    if not paths:
        raise ReduceError(f"{output}: no parts to reduce (expected {output}/parts/part-*.parquet)")
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    manifest = _manifest(output, storage_options)
    if manifest is not None:
        refuse_stray_parts(paths, manifest.num_shards, join_url(output, PARTS_DIR))
    if manifest is not None and verify:
        verify_parts(paths, manifest, storage_options)
    footers = read_footers(paths, storage_options, manifest.config_hash if manifest is not None else None)
    meta = run_metadata(output, footers)
    expected = meta.get("num_images")
    if manifest is not None and expected is not None:
        check_complete(paths, manifest, expected)
    check_fence = fence or (lambda: None)
    check_fence()
    counts = merge_parts(fs, root, paths, meta, storage_options)
    if expected is not None and len(counts.seen) != expected:
        fs.rm(join_url(root, ANNOTATIONS_NAME))
        raise ReduceError(f"{output}: {len(counts.seen)} of {expected} listed images have a row (a part holds "
                          "fewer rows than its shard has images); run annotator.run with this run's arguments again: "
                          "it recomputes such shards")
    check_fence()
    coco_counts = write_coco(fs, root, output, meta, storage_options)
    summary = build_summary(counts, meta, coco_counts)
    summary["run"]["precision"] = describe_precisions(footers.precisions)
    scores = write_metrics(fs, root, footers, counts.class_names)
    if scores is not None:
        summary["miou"] = scores["miou"]
    check_fence()
    _write_json(fs, join_url(root, SUMMARY_NAME), summary)
    if report:
        try:
            from annotator.review.html_report import write_report

            write_report(output, storage_options=storage_options, image_storage_options=image_storage_options)
        except Exception as e:  # the report is a review aid: never lose the run over it
            log.warning("report not written: %s: %s", type(e).__name__, e)
    return summary


def _manifest(output: str, storage_options: dict | None):
    from annotator.storage.manifest import Manifest

    return Manifest.load(output, storage_options)


#: The way out for a part of this run's shards that is damaged or not this run's: the
#: run, resumed, recomputes every shard whose part does not verify or does not belong.
_REDO = ("run annotator.run with this run's arguments again: it recomputes that shard (or move the file out of "
         f"the {PARTS_DIR} folder)")


def _footer(path: str, storage_options: dict | None) -> dict:
    try:
        meta = parts.read_part_metadata(path, storage_options)
    except Exception as e:  # noqa: BLE001 - cut short, not Parquet, another file: name it
        raise ReduceError(f"{path}: not a readable part ({type(e).__name__}: {e}); {_REDO}") from None
    return check_part_footer(meta, path, _REDO)


def verify_parts(paths: list[str], manifest, storage_options: dict | None) -> None:
    """Every part listed in the manifest has the sha256 recorded when it was written."""
    by_path = {parts.url_to_fs(manifest.resolve(v["path"]), storage_options)[1]: v for v in manifest.finished.values()}
    for path in paths:
        entry = by_path.get(parts.url_to_fs(path, storage_options)[1])
        if entry is None:
            continue  # written after the manifest's last save: its footer is checked below
        got = parts.part_sha256(path, storage_options)
        if got != entry["sha256"]:
            raise ReduceError(f"{path}: does not match what was written (sha256 {got[:12]}..., the manifest "
                              f"recorded {entry['sha256'][:12]}...); {_REDO}")


def check_complete(paths: list[str], manifest, num_images: int) -> None:
    """Every shard of the listing has its part (else: the missing shards, by index and
    images, and how to finish)."""
    present = {parts.part_index(p) for p in paths}
    missing = [i for i in range(manifest.num_shards) if i not in present]
    if missing:
        size = manifest.shard_size
        spans = [f"shard {i} (images {i * size + 1}..{min(num_images, (i + 1) * size)})" for i in missing[:10]]
        raise ReduceError(f"{manifest.output}: {len(missing)} of {manifest.num_shards} shards have no part: "
                          + ", ".join(spans) + (" ..." if len(missing) > 10 else "")
                          + "; run annotator.run with this run's arguments again to finish the run")


def run_metadata(output: str, footers: Footers) -> dict:
    """The run's metadata from the parts' footers (all of one configuration), without
    the per-shard keys."""
    if len(footers.hashes) > 1:
        named = ", ".join(f"{h} ({footers.first_path.get(h, '?')})" for h in sorted(map(str, footers.hashes)))
        raise ReduceError(f"{output}: parts come from different configurations: {named}; move the parts that are "
                          f"not this run's out of {join_url(output, PARTS_DIR)}, or run annotator.run with "
                          "--overwrite to recompute the whole run")
    meta = dict(footers.first or {})
    for key in SHARD_KEYS:
        meta.pop(key, None)
    RunMetadata.from_json(meta)  # validated: a vocabulary with background first
    return meta


#: Rows per row group of ``annotations.parquet``: large groups keep the writer's
#: per-group metadata (which it holds until the file is closed) small at 10^6 rows...
MERGED_ROW_GROUP_ROWS = 8192
#: ...and bytes per row group: a reader holds a whole group at once, and rows of large
#: photographs (confidence PNGs of megabytes) must not make that gigabytes.
MERGED_ROW_GROUP_BYTES = 32 << 20
#: The columns the merge counts from (the rest is copied as Arrow data, never as rows).
_COUNTED_COLUMNS = ["image_id", "file_name", "status", "error", "annotations"]


def merge_parts(fs, root: str, paths: list[str], meta: dict, storage_options: dict | None) -> MergeCounts:
    """Stream every part into ``annotations.parquet`` (written by a temporary name and a
    move) as Arrow data, in row groups of ``MERGED_ROW_GROUP_ROWS`` rows or
    ``MERGED_ROW_GROUP_BYTES``, whichever comes first, counting as it goes;
    each image id must appear once. Memory holds one row group, not the run."""
    counts = MergeCounts(meta["vocabulary"])
    schema = PART_ARROW_SCHEMA.with_metadata({parts.METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    with _temporary(fs, join_url(root, ANNOTATIONS_NAME)) as merged_tmp:
        with fs.open(merged_tmp, "wb") as f, pq.ParquetWriter(f, schema) as writer:
            pending, rows, size = [], 0, 0
            for path in paths:
                for batch in parts.iter_batches([path], storage_options, batch_size=256):
                    for row in batch.select(_COUNTED_COLUMNS).to_pylist():
                        _count_row(counts, row)
                    pending.append(batch)
                    rows += batch.num_rows
                    size += batch.nbytes
                    if rows >= MERGED_ROW_GROUP_ROWS or size >= MERGED_ROW_GROUP_BYTES:
                        writer.write_table(_as_table(pending, schema), row_group_size=rows)
                        pending, rows, size = [], 0, 0
            if pending:
                writer.write_table(_as_table(pending, schema), row_group_size=rows)
    return counts


def _as_table(batches: list, schema: pa.Schema) -> pa.Table:
    """One table of ``schema`` (the merged file's metadata) from parts' batches (each
    with its own part's footer)."""
    tables = [pa.Table.from_batches([b]).select(schema.names).replace_schema_metadata(None) for b in batches]
    return pa.concat_tables(tables).cast(schema)


def _count_row(counts: MergeCounts, row: dict) -> None:
    if not counts.seen.add(row["image_id"]):
        raise ReduceError(f"image_id {row['image_id']} ({row['file_name']}) appears in more than one part")
    counts.status[row["status"]] += 1
    if row["status"] == "error":
        counts.reasons[error_reason(row["error"])] += 1
    for a in row["annotations"]:
        counts.tally.add(a["category_id"], a["area"], a["score"])


def write_coco(fs, root: str, output: str, meta: dict, storage_options: dict | None) -> dict:
    """``coco.json`` from the merged file (streamed); returns the COCO writer's counts."""
    from annotator.export.coco import write_coco_json

    with _temporary(fs, join_url(root, COCO_NAME)) as tmp:
        with fs.open(tmp, "w") as f:
            coco_counts = write_coco_json(parts.iter_rows([join_url(output, ANNOTATIONS_NAME)], storage_options),
                                          meta["vocabulary"], f, metadata=meta)
    return coco_counts


def describe_precisions(precisions: Counter) -> str | None:
    """``bf16``; or ``mixed: bf16 (3 parts), fp32 (1 part)``, with a warning, when a
    resumed run's parts ran at different precisions (``--precision auto`` on two CPU
    kinds); None when the parts do not say."""
    if not precisions:
        return None
    if len(precisions) == 1:
        return next(iter(precisions))
    text = "mixed: " + ", ".join(f"{p} ({n} part{'s' if n != 1 else ''})" for p, n in sorted(precisions.items()))
    log.warning("the parts ran at different precisions (%s): --precision auto resolves per machine; pass "
                "--precision fp32 (or bf16) to fix it, and --overwrite to recompute", text)
    return text


def build_summary(counts: MergeCounts, meta: dict, coco_counts: dict) -> dict:
    """The ``summary.json`` document (identical between runs of the same configuration)."""
    names, tally = counts.class_names, counts.tally
    never = [c for k, c in enumerate(names) if k and tally.images[k] == 0]
    summary = {
        "images": len(counts.seen),
        "expected_images": meta.get("num_images"),
        "ok": counts.status["ok"],
        "failed": counts.status["error"],
        "failures_by_reason": dict(sorted(counts.reasons.items())),
        "annotations": int(tally.images[1:].sum()),
        "per_class": {
            c: {"annotations": int(tally.images[k]), "pixels": int(tally.pixels[k]),
                "mean_score": tally.mean_score(k, decimals=6)}
            for k, c in enumerate(names) if k
        },
        "classes_never_predicted": never,
        "coco": coco_counts,
        "run": {k: meta.get(k) for k in ("model", "pretrained", "saliency", "protocol", "version", "config_hash", "source")},
    }
    if summary["annotations"] == 0 and counts.status["ok"]:
        log.warning("no annotation at all in %d images: check the vocabulary and the saliency", counts.status["ok"])
    if never:
        log.warning("classes never predicted: %s", ", ".join(never))
    return summary


def write_metrics(fs, root: str, footers: Footers, class_names: list[str]) -> dict | None:
    """``metrics.json`` from the confusion matrices the actors computed (None without
    ground truth; a metrics.json left by an earlier run is then removed)."""
    metrics_path = join_url(root, METRICS_NAME)
    if not footers.scored:
        if fs.exists(metrics_path):  # left by an earlier run (e.g. one replaced with --overwrite)
            fs.rm(metrics_path)
        return None
    k = len(class_names)
    cm = footers.confusion if footers.confusion is not None else np.zeros((k, k), dtype=np.int64)
    scores = metrics.scores_from_confusion(cm, class_names)
    scores["confusion_matrix"] = cm.tolist()
    first = footers.gt_errors_first
    scores["ground_truth_errors"] = {"count": footers.gt_error_count, "first": first}
    if first:
        log.warning("%d image(s) left out of the scores, their ground truth could not be used; "
                    "e.g. %s: %s (see metrics.json)", footers.gt_error_count, first[0]["file_name"], first[0]["error"])
    _write_json(fs, metrics_path, scores)
    print(metrics.format_table(scores), file=sys.stderr)
    return scores


def format_summary(summary: dict) -> str:
    """The end-of-run table: per class annotations, pixels, mean score; failures by reason."""
    rows = [(name, str(c["annotations"]), str(c["pixels"]),
             "-" if c["mean_score"] is None else f"{c['mean_score']:.3f}")
            for name, c in summary["per_class"].items()]
    header = ("class", "masks", "pixels", "mean score")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{widths[i]}}}" for i in range(4))
    out = [line.format(*header), "-" * (sum(widths) + 6)]
    out += [line.format(*r) for r in rows]
    out.append(f"images: {summary['images']} ({summary['ok']} annotated, {summary['failed']} failed)")
    for reason, n in summary["failures_by_reason"].items():
        out.append(f"  failed, {reason}: {n}")
    return "\n".join(out)
