"""What a run owns in its output folder, and so what ``--overwrite`` may remove: its
manifest, its part files, crash logs and their temporary leftovers in ``parts/``, and
its merged results (:data:`~annotator.storage.layout.MERGED_RESULTS`). Anything else
stays; a folder that holds other files and no manifest is not a run folder."""

from __future__ import annotations

import contextlib
import posixpath

from annotator.storage.layout import (
    CRASH_REPORT_PREFIX,
    CRASHLOG_NAME_RE,
    LOCK_NAME,
    MANIFEST_NAME,
    MERGED_RESULTS,
    PART_NAME_RE,
    PARTS_DIR,
    join_url,
    url_to_fs,
)

__all__ = ["clear", "foreign_entries", "remove_previous_results"]


def clear(output: str, storage_options: dict | None = None) -> None:
    """Remove a run's own files for --overwrite: ``manifest.json`` and, in ``parts/``,
    only its part files, crash logs and their temporary leftovers (anything else a user
    put there stays; ``parts/`` goes when it is empty). Merged results: see the job."""
    fs, root = url_to_fs(output, storage_options)
    parts_dir = posixpath.join(root, PARTS_DIR)
    manifest = posixpath.join(root, MANIFEST_NAME)
    if fs.exists(manifest):
        fs.rm(manifest)
    if not fs.exists(parts_dir):
        return
    for path in fs.ls(parts_dir, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        base = name.split(".tmp-", 1)[0]
        if PART_NAME_RE.match(base) or CRASHLOG_NAME_RE.match(base):
            fs.rm(path)
    with contextlib.suppress(OSError):
        if not fs.ls(parts_dir, detail=False):
            fs.rm(parts_dir, recursive=True)


def foreign_entries(output: str, storage_options: dict | None = None) -> list[str]:
    """Top-level names in ``output`` that a run folder without a manifest should not
    hold (everything but the lock and a write probe); [] when it does not exist."""
    fs, root = url_to_fs(output, storage_options)
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n != LOCK_NAME and not n.startswith((".write-probe-", CRASH_REPORT_PREFIX)))


def remove_previous_results(output: str, storage_options: dict) -> None:
    """--overwrite: remove the replaced run's merged results, so that none of them (e.g. a
    report.html under --no-report, metrics.json without --gt) outlives it."""
    fs, root = url_to_fs(output, storage_options)
    for name in MERGED_RESULTS:
        path = join_url(root, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)
