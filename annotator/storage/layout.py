"""Every name under a run's OUTPUT folder, in one place, and the one path joiner.

::

    OUTPUT/
      manifest.json                 MANIFEST_NAME      finished shards (storage.manifest)
      parts/part-NNNNN.parquet      PARTS_DIR, part_name(i)   one per shard (storage.parts)
      parts/.crashlog-NNNNN.json    crashlog_name(i)   images read by a careful attempt
      annotations.parquet           ANNOTATIONS_NAME   all parts merged (outputs.merge)
      coco.json                     COCO_NAME
      summary.json                  SUMMARY_NAME
      metrics.json                  METRICS_NAME       with ground truth
      scheduling.json               SCHEDULING_NAME    the latest run's scheduler figures
      report.html, previews/        REPORT_NAME, PREVIEWS_DIR   (review.html_report)
      exports/FORMAT/               EXPORTS_DIR        (export)
      .annotator.lock/lease-N.json  LOCK_NAME, lease_name(n)   the fenced lease of the one writer (storage.lock)
      annotator-crash-*.log         crash_report_name(...)     an internal error's traceback (storage.crashlog)
"""

from __future__ import annotations

import re

import fsspec

MANIFEST_NAME = "manifest.json"
PARTS_DIR = "parts"
ANNOTATIONS_NAME = "annotations.parquet"
COCO_NAME = "coco.json"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.json"
SCHEDULING_NAME = "scheduling.json"
REPORT_NAME = "report.html"
PREVIEWS_DIR = "previews"
EXPORTS_DIR = "exports"
LOCK_NAME = ".annotator.lock"
#: What a finished run leaves beside parts/ and manifest.json (``--overwrite`` removes them).
MERGED_RESULTS = (ANNOTATIONS_NAME, COCO_NAME, SUMMARY_NAME, METRICS_NAME, SCHEDULING_NAME, REPORT_NAME,
                  PREVIEWS_DIR)
PART_NAME_RE = re.compile(r"^part-(\d{5,})\.parquet$")
CRASHLOG_NAME_RE = re.compile(r"^\.crashlog-(\d{5,})\.json$")
LEASE_NAME_RE = re.compile(r"^lease-(\d{8,})\.json$")
CRASH_REPORT_PREFIX = "annotator-crash-"


def lease_name(token: int) -> str:
    """``lease-NNNNNNNN.json`` (at least eight digits): the lease with fencing token ``token``."""
    return f"lease-{token:08d}.json"


def crash_report_name(stamp: str, pid: int) -> str:
    """``annotator-crash-<UTC stamp>-<pid>.log``: an internal error's traceback."""
    return f"{CRASH_REPORT_PREFIX}{stamp}-{pid}.log"


def part_name(shard_index: int) -> str:
    """``part-NNNNN.parquet`` (at least five digits)."""
    return f"part-{shard_index:05d}.parquet"


def crashlog_name(shard_index: int) -> str:
    """``.crashlog-NNNNN.json`` (at least five digits)."""
    return f".crashlog-{shard_index:05d}.json"


def join_url(base: str, *names: str) -> str:
    """Join '/'-separated pieces onto a local path or URL, keeping its form
    (``s3://b/x`` + ``n`` -> ``s3://b/x/n``); no normalisation."""
    out = base.rstrip("/") if base not in ("/", "") else base
    for name in names:
        name = name.strip("/")
        if name:
            out = f"{out}/{name}" if out and not out.endswith("/") else f"{out}{name}"
    return out


def url_to_fs(url: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path within it) for a local path or any fsspec URL."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))
