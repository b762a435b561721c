"""``--retry-failed``: give a finished (or partial) run's error rows a second chance.

A shard whose part holds error rows (``status == "error"``, whatever the reason:
``unreadable``, ``missing``, ``inference-failed``, ``worker-crashed``, ...) runs again,
but only its failed images: the part's ``ok`` rows are copied from the old part as they
are (never recomputed, so they stay byte-identical), the retried images' new rows join
them, and the shard's part is replaced atomically (:func:`annotator.storage.parts.write_part`);
the driver records the new part's sha256 in the manifest, so there is never a second part
for one shard and the reducer's checks pass.

Three steps, each a function here:

- driver, before the run: :func:`scan_failed` reads the ``image_id``, ``status`` and
  ``error`` columns of the finished parts and says which shards have error rows, and why;
- actor, per shard: :func:`split_task` reads the old part, keeps its ok rows
  (:class:`KeptRows`) and returns the task of the failed images only;
  :meth:`KeptRows.merge` joins the new rows and the shard's footer scores;
- driver, after the run: :func:`tally` compares the error rows before and after
  (recovered, still failing, by reason), for the ``done:`` line and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from annotator.records import ImageRecord, error_reason
from annotator.shards.task import ShardTask
from annotator.storage import parts

__all__ = ["KeptRows", "scan_failed", "split_task", "tally", "describe_tally"]

#: The columns read to find the error rows of a part.
_SCAN_COLUMNS = ["image_id", "status", "error"]


def _failed_rows(path: str, storage_options: dict | None) -> dict[int, str]:
    """``{image_id: reason}`` of the error rows of one part."""
    fs, p = parts.url_to_fs(path, storage_options)
    with fs.open(p, "rb") as f:
        table = pq.read_table(f, columns=_SCAN_COLUMNS)
    return {int(row["image_id"]): error_reason(row["error"])
            for row in table.to_pylist() if row["status"] != "ok"}


def scan_failed(output: str, shard_indices: Iterable[int], storage_options: dict | None,
                threads: int = 8) -> dict[int, dict[int, str]]:
    """The error rows of the finished shards ``shard_indices`` of ``output``:
    ``{shard_index: {image_id: reason}}``, only shards with at least one (reads three
    columns of each part, ``threads`` parts at a time)."""
    indices = sorted(shard_indices)
    paths = [parts.part_path(output, i) for i in indices]
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="retry-scan") as pool:
        found = list(pool.map(lambda path: _failed_rows(path, storage_options), paths))
    return {i: failed for i, failed in zip(indices, found, strict=True) if failed}


@dataclass
class KeptRows:
    """The ``ok`` rows of a shard's old part, kept as they are, and its footer (its
    scores against the ground truth cover exactly those rows' images)."""

    records: list[ImageRecord]
    footer: dict

    def merge(self, new_records: list[ImageRecord], meta: dict) -> tuple[list[ImageRecord], dict]:
        """The shard's rows (the kept ones and ``new_records``, the retried images') and its
        footer ``meta`` (the new attempt's) with the ground-truth scores of both summed:
        ``confusion`` added, ``gt_errors`` of the kept images first."""
        merged = dict(meta)
        if "confusion" in meta or "confusion" in self.footer:
            old, new = self.footer.get("confusion"), meta.get("confusion")
            if old is None or new is None:
                merged["confusion"] = new if old is None else old
            else:
                merged["confusion"] = (np.asarray(old, dtype=np.int64) + np.asarray(new, dtype=np.int64)).tolist()
            kept_names = {r.file_name for r in self.records}
            merged["gt_errors"] = ([e for e in self.footer.get("gt_errors") or [] if e.get("file_name") in kept_names]
                                   + list(meta.get("gt_errors") or []))
        return [*self.records, *new_records], merged


def split_task(task: ShardTask, output: str, storage_options: dict | None) -> tuple[ShardTask, KeptRows]:
    """The task of ``task``'s images whose row in the shard's current part is not ``ok``
    (or that have no row there), and the part's ok rows to keep. An ok row is kept only
    when its image id and file name are those of one of the task's images."""
    path = parts.part_path(output, task.shard_index)
    fs, p = parts.url_to_fs(path, storage_options)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        footer = parts.part_file_metadata(pf, path)
        rows = pf.read().to_pylist()
    wanted = {(int(ref.image_id), ref.file_name) for ref in task.refs}
    kept = [ImageRecord.from_row(row) for row in rows
            if row["status"] == "ok" and (int(row["image_id"]), row["file_name"]) in wanted]
    done = {(r.image_id, r.file_name) for r in kept}
    again = [ref for ref in task.refs if (int(ref.image_id), ref.file_name) not in done]
    return dataclasses.replace(task, refs=again, retry_failed=False), KeptRows(kept, footer)


def tally(before: dict[int, dict[int, str]], after: dict[int, dict[int, str]]) -> dict:
    """What ``--retry-failed`` did: ``before`` the error rows of the retried shards when
    the run started, ``after`` those shards' error rows at its end (both as
    :func:`scan_failed` gives them). Recovered rows are counted by their old reason,
    rows still failing by their new one."""
    recovered: Counter = Counter()
    still: Counter = Counter()
    for shard, failed in before.items():
        now = after.get(shard, {})
        for image_id, reason in failed.items():
            if image_id in now:
                still[now[image_id]] += 1
            else:
                recovered[reason] += 1
    return {
        "retried": sum(len(f) for f in before.values()),
        "recovered": sum(recovered.values()),
        "recovered_by_reason": dict(sorted(recovered.items())),
        "still_failing": sum(still.values()),
        "still_failing_by_reason": dict(sorted(still.items())),
    }


def describe_tally(counts: dict) -> str:
    """'retried 3 failed rows: 2 recovered, 1 still failing (unreadable: 1)'."""
    n = counts["retried"]
    text = f"retried {n} failed row{'s' if n != 1 else ''}: {counts['recovered']} recovered, " \
           f"{counts['still_failing']} still failing"
    if counts["still_failing_by_reason"]:
        text += " (" + ", ".join(f"{r}: {k}" for r, k in counts["still_failing_by_reason"].items()) + ")"
    return text
