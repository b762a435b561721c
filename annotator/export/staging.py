"""Atomic exports: each export is built in a staging folder beside ``--to`` and replaces
``--to`` only when it is complete, so that ``--to`` holds exactly one export, whole.

- Before any work, :func:`open_staging` checks the target: a regular file, or a folder
  that is neither empty, nor an earlier export (it holds :data:`MARKER_NAME`), nor the
  default ``OUTPUT/exports/FORMAT`` is refused (replacing it would delete files the
  user did not make with us); the staging folder is created there and then, so that an
  unwritable location fails at once.
- :meth:`Staging.publish` writes the marker and swaps the folders: on a local disk two
  renames (the old export is moved aside, the new one moved in, the old one removed);
  on object storage, where a folder cannot be renamed, the old objects are removed and
  the staged ones moved (a copy).
- :meth:`Staging.discard` removes the staging folder: a failed or interrupted export
  leaves the previous export as it was.

:func:`final_location` maps a path inside a staging folder to where it will be once
published, for a file that records its own location (YOLO's ``data.yaml`` ``path``).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import fsspec

from annotator.export.common import ExportError
from annotator.storage.redact import redact_text
from annotator.storage.state_schema import check_export_marker

__all__ = ["MARKER_NAME", "Staging", "final_location", "open_staging"]

#: Written into every export folder: what made it (format, time); an existing ``--to``
#: holding it may be replaced by a new export.
MARKER_NAME = ".annotator-export.json"
_STAGING_TAG = ".partial-"
_PUBLISHED: dict[str, str] = {}


def final_location(path: str) -> str:
    """``path`` with a staging folder's prefix replaced by the target it will become."""
    for staging, target in _PUBLISHED.items():
        if path == staging or path.startswith(staging.rstrip("/") + "/"):
            return target + path[len(staging):]
    return path


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


class Staging:
    """A staging folder for one export to ``target`` (see the module docstring)."""

    def __init__(self, target: str, path: str, fs: Any, fs_target: str, fs_path: str, format: str):
        self.target, self.path, self.fs = target, path, fs
        self._fs_target, self._fs_path, self._format = fs_target, fs_path, format
        _PUBLISHED[path] = target

    def rewrite(self, path: str) -> str:
        """A path inside the staging folder -> the same path in the target."""
        if path == self.path or path.startswith(self.path.rstrip("/") + "/"):
            return self.target + path[len(self.path):]
        return path

    def publish(self) -> None:
        """Replace the target by the staging folder (the marker written first)."""
        marker = posixpath.join(self._fs_path, MARKER_NAME)
        with self.fs.open(marker, "w", encoding="utf-8") as f:
            json.dump({"format": self._format,
                       "written": datetime.now(UTC).isoformat(timespec="seconds")}, f)
            f.write("\n")
        try:
            if _is_local(self.fs):
                self._swap_local()
            else:
                if self.fs.exists(self._fs_target):
                    self.fs.rm(self._fs_target, recursive=True)
                self.fs.mv(self._fs_path, self._fs_target, recursive=True)
        finally:
            _PUBLISHED.pop(self.path, None)

    def _swap_local(self) -> None:
        target = self._fs_target
        if not os.path.lexists(target):
            os.rename(self._fs_path, target)
            return
        old = f"{target}{_STAGING_TAG}old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        try:
            os.rename(self._fs_path, target)
        except BaseException:
            os.rename(old, target)  # put the previous export back
            raise
        if os.path.islink(old):  # --to was a link to a folder: the link goes, what it pointed at stays
            os.unlink(old)
        else:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staging folder (best effort: the error being reported matters more)."""
        _PUBLISHED.pop(self.path, None)
        try:
            if _is_local(self.fs):
                shutil.rmtree(self._fs_path, ignore_errors=True)
            elif self.fs.exists(self._fs_path):
                self.fs.rm(self._fs_path, recursive=True)
        except Exception:  # noqa: BLE001 - a leftover staging folder is named by its prefix
            pass


def open_staging(target: str, format: str, storage_options: Mapping[str, Any] | None = None, *,
                 replaceable: bool = False) -> Staging:
    """Check ``target`` and create a staging folder beside it (before any work).

    Args:
        replaceable: the target is the default ``OUTPUT/exports/FORMAT`` (ours by
            construction): replaced even without the marker of an earlier export.

    Raises:
        ExportError: ``target`` is a file, a folder of other files, or not writable.
    """
    so = dict(storage_options or {})
    shown = redact_text(target)
    try:
        fs, fs_target = fsspec.core.url_to_fs(target, **so)
    except (ValueError, ImportError) as exc:
        raise ExportError(f"--to {shown}: not a usable location ({exc})") from None
    fs_target = fs_target.rstrip("/") or fs_target
    try:
        if fs.isfile(fs_target):
            raise ExportError(f"--to {shown}: expected a folder (or a new path), got a file")
        if fs.isdir(fs_target) and not replaceable:
            entries = fs.ls(fs_target, detail=False)
            names = {posixpath.basename(str(e).rstrip("/")) for e in entries}
            if MARKER_NAME in names:  # read back: a marker that is not ours marks nothing (issue 22.6)
                check_export_marker(fs.cat_file(posixpath.join(fs_target, MARKER_NAME)), f"{shown}/{MARKER_NAME}")
            if names and MARKER_NAME not in names:
                raise ExportError(
                    f"--to {shown}: the folder holds {len(names)} entries and no {MARKER_NAME}, so it is not an "
                    "earlier export that this one may replace; choose a new or empty folder")
        parent = posixpath.dirname(fs_target) or "."
        name = posixpath.basename(fs_target) or "export"
        fs_path = posixpath.join(parent, f".{name}{_STAGING_TAG}{uuid.uuid4().hex[:8]}")
        if _is_local(fs):
            os.makedirs(parent, exist_ok=True)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ExportError(f"--to {shown}: its folder {redact_text(parent)} is not writable")
            os.mkdir(fs_path)
        else:
            fs.makedirs(fs_path, exist_ok=True)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"--to {shown}: cannot write there ({exc.strerror or exc})") from None
    # The staging folder as the exporters see it: a URL keeps its protocol.
    path = fs_path if _is_local(fs) else fs.unstrip_protocol(fs_path)
    return Staging(target, path, fs, fs_target, fs_path, format)
