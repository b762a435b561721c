"""Is a run complete enough to export? "Complete or told": an export of a run that is
still being written, or that stopped before every listed image had its row, is refused
unless the user asks for a partial export, and then the summary says what is missing.

- The listing: ``num_images`` of the run's ``manifest.json`` (read with the manifest's
  public :meth:`~annotator.storage.manifest.Manifest.load`), else of the parts' metadata.
  A run folder with neither (rows written by hand, an old version) cannot be checked and
  counts as complete.
- The rows: the row counts in the Parquet footers of the files the export reads
  (``annotations.parquet``, else the parts); an error row is a row (the image was tried).
- The lease: ``OUTPUT/.annotator.lock`` (:mod:`annotator.storage.lock`) held by a live
  holder (a heartbeat younger than ``STALE_S``, and on this host a living process) means
  a run or reducer is writing right now. Read only: an export never takes the lease, so
  that it can read an output it may not write.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from annotator.export.common import ExportError
from annotator.storage.layout import LOCK_NAME, PARTS_DIR, join_url, url_to_fs
from annotator.storage.redact import redact_text
from annotator.storage.results import read_metadata, resolve_inputs
from annotator.storage.state_schema import refuse_stray_parts

__all__ = ["Completeness", "IncompleteRunError", "check_run", "live_lease"]


class IncompleteRunError(ExportError):
    """The run is incomplete or being written, and ``partial`` was not given."""


@dataclass(frozen=True)
class Completeness:
    """What a run holds, against what it listed.

    Attributes:
        listed: images in the run's listing (None: unknown).
        rows: rows in the files the export reads.
        writer: the lease holder writing the output now ("run by u@h pid 12"), or None.
    """

    listed: int | None
    rows: int
    writer: str | None

    @property
    def missing(self) -> int:
        """Listed images without a row (0 when the listing is unknown)."""
        return max(0, self.listed - self.rows) if self.listed is not None else 0


def live_lease(output: str, storage_options: dict | None = None) -> str | None:
    """Who holds the output's lease now, read only, else None: the lock's own
    ``current_holder`` (the fenced leases under ``OUTPUT/.annotator.lock/``), then a lease
    of an older version (``.annotator.lock`` as one file) when its holder is alive (a
    heartbeat younger than ``STALE_S``, and on this host a living process)."""
    from annotator.storage import lock

    current_holder = getattr(lock, "current_holder", None)
    if current_holder is not None:
        try:
            held = current_holder(output, storage_options)
        except (OSError, ValueError):
            held = None
        if held:
            return held
    fs, root = url_to_fs(output, storage_options)
    path = join_url(root, LOCK_NAME)
    try:
        if not fs.isfile(path):
            return None
        with fs.open(path, "rb") as f:
            doc = json.loads(f.read() or b"null")
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        age_s = time.time() - float(doc.get("heartbeat", 0))
    except (TypeError, ValueError):
        return None
    if not -lock.STALE_S < age_s < lock.STALE_S:  # stale, or from a clock far in the future
        return None
    if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
        try:
            os.kill(doc["pid"], 0)
        except ProcessLookupError:
            return None  # the holder died on this host
        except OSError:
            pass
    return f"{doc.get('holder', 'another writer')} (last heartbeat {max(0.0, age_s):.0f} s ago)"


def _listed(output: str, paths: list[str], storage_options: dict | None) -> int | None:
    from annotator.storage.manifest import Manifest, ManifestError

    try:
        manifest = Manifest.load(output, storage_options)
    except ManifestError as exc:  # told: the listing then comes from the parts
        logging.getLogger(__name__).warning("%s; the listing is taken from the parts", exc)
        manifest = None
    if manifest is not None:  # a part of another run copied in would be read twice (issue 22.6)
        refuse_stray_parts(paths, manifest.num_shards, join_url(output, PARTS_DIR))
    if manifest is not None and isinstance(manifest.num_images, int):
        return manifest.num_images
    listed = read_metadata(paths, storage_options).get("num_images")
    return listed if isinstance(listed, int) and not isinstance(listed, bool) else None


def _rows(paths: list[str], storage_options: dict | None) -> int:
    total = 0
    for path in paths:
        fs, p = url_to_fs(path, storage_options)
        try:
            with fs.open(p, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:  # cut short, not Parquet (issue 22.6): named, not a bug
            raise ExportError(f"{redact_text(path)}: not a readable Parquet file ({exc}); run annotator.run with "
                              "the run's arguments again (it recomputes a damaged part and merges the parts again)"
                              ) from None
    return total


def check_run(output: str, storage_options: Any = None, *, partial: bool = False) -> Completeness:
    """The run's :class:`Completeness`; without ``partial``, an incomplete run or one
    being written is :class:`IncompleteRunError` (one line: how many listed images have
    no row, and the way out)."""
    so = dict(storage_options) if storage_options else None
    paths = resolve_inputs(output, so)
    state = Completeness(listed=_listed(output, paths, so), rows=_rows(paths, so), writer=live_lease(output, so))
    if partial:
        return state
    shown = redact_text(output)
    missing = (f"{state.missing} of {state.listed} listed images have no row yet" if state.missing
               else "its rows may still change")
    if state.writer is not None:
        raise IncompleteRunError(
            f"{shown} is being written by {state.writer}: {missing}; wait for it to finish, or pass --partial "
            "to export what is there")
    if state.missing:
        raise IncompleteRunError(
            f"{shown} is incomplete: {missing} (the run was interrupted, or shards failed); run the same "
            "command again to finish it, or pass --partial to export what is there")
    return state
