"""Crash logs: which image a shard was on when its worker process died, so that a retry
skips it (:class:`CrashLog`); and the crash report of an internal error, the traceback a
user can send (:func:`write_crash_report`).

Crash report: ``OUTPUT/annotator-crash-<UTC stamp>-<pid>.log`` (``layout.crash_report_name``)
when the output exists and can be written, else the same name in the temporary
directory; the command's one ``error:`` line names it (:func:`annotator.cli.report_error`).
It holds the version, the command line, the time and the full traceback, with
credentials removed (URLs' userinfo and signed queries, and the values of the secret
keys of the storage options). Written atomically, like every file of a run.

Shard crash logs:

A shard whose actor died (segfault in a decoder, out of memory on one huge image, ...)
is retried *carefully* (``ShardTask.careful``, set by the driver): one image at a time,
each named in ``OUTPUT/parts/.crashlog-{shard:05d}.json`` before it is read. Each
time the process dies, the next attempt finds the log naming the image it died on; an
image the worker died on ``DEATHS_TO_SKIP`` times (twice: a single death may be bad luck,
e.g. a preempted node) is recorded as an error row (``worker-crashed``) and the rest of
the shard is processed. So a poison image costs one row, not its whole shard. The log
is removed once the shard's part is written; part listings ignore it (a dot-file, not
``part-*.parquet``).

The file: ``{"shard_index": int, "deaths": {file_name: count}, "current": file_name | null}``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from annotator.storage.layout import (
    CRASHLOG_NAME_RE,
    PARTS_DIR,
    crash_report_name,
    crashlog_name,
    join_url,
    url_to_fs,
)
from annotator.storage.parts import atomic_write_bytes, parts_dir_names
from annotator.storage.redact import SECRET_KEYS, redact_text
from annotator.storage.state_schema import check_crashlog_doc

log = logging.getLogger(__name__)

__all__ = ["CRASHED_REASON", "DEATHS_TO_SKIP", "CrashLog", "crash_report_text", "scrub_options_secrets",
           "shards_with_logs", "write_crash_report"]

#: The error reason of an image skipped because the worker died on it.
CRASHED_REASON = "worker-crashed"
#: Deaths of the worker on one image after which a retry skips it.
DEATHS_TO_SKIP = 2


def _secret_values(options: Any) -> list[str]:
    """String values under secret-named keys of (nested) storage options."""
    out: list[str] = []
    if isinstance(options, dict):
        for key, value in options.items():
            if isinstance(value, str) and len(value) >= 4 and any(k in str(key).lower() for k in SECRET_KEYS):
                out.append(value)
            else:
                out += _secret_values(value)
    elif isinstance(options, (list, tuple)):
        for value in options:
            out += _secret_values(value)
    return out


def crash_report_text(exc: BaseException, storage_options: dict | None = None) -> str:
    """The crash report of ``exc``: who, when, the command line, the traceback; with
    credentials removed."""
    from annotator import __version__

    lines = [
        f"annotator {__version__} internal error: {type(exc).__name__}",
        f"time: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"command: {' '.join(sys.argv)}",
        f"python {platform.python_version()} on {platform.platform()}, host {socket.gethostname()}, "
        f"pid {os.getpid()}",
        "",
        *traceback.format_exception(type(exc), exc, exc.__traceback__),
    ]
    return scrub_options_secrets(redact_text("\n".join(line.rstrip("\n") for line in lines) + "\n"),
                                 storage_options)


def scrub_options_secrets(text: str, storage_options: dict | None) -> str:
    """``text`` with the values of the storage options' secret keys replaced by REDACTED."""
    for secret in _secret_values(storage_options):
        text = text.replace(secret, "REDACTED")
    return text


def write_crash_report(exc: BaseException, output: str | None = None,
                       storage_options: dict | None = None) -> str | None:
    """Write :func:`crash_report_text` of ``exc`` next to ``output`` (when it exists and
    can be written) or in the temporary directory; its path or URL (credentials
    removed), or None when neither could be written."""
    now = datetime.now(UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"
    name = crash_report_name(stamp, os.getpid())
    data = crash_report_text(exc, storage_options).encode("utf-8")
    if output:
        try:
            fs, root = url_to_fs(output, storage_options)
            if fs.isdir(root):
                path = join_url(output, name)
                atomic_write_bytes(path, data, storage_options, retries=0)
                return redact_text(path)
        except Exception as e:  # noqa: BLE001 - the output may be what failed: the temp dir then
            log.debug("could not write the crash report under %s: %s", redact_text(output), e)
    try:
        path = os.path.join(tempfile.gettempdir(), name)
        atomic_write_bytes(path, data, None, retries=0)
        return path
    except Exception as e:  # noqa: BLE001 - the error line says so
        log.debug("could not write the crash report in %s: %s", tempfile.gettempdir(), e)
        return None


def shards_with_logs(output: str, storage_options: dict | None = None) -> set[int]:
    """Shards with a crash log left by an earlier run (one listing of ``parts/``): the
    run that resumes them runs them carefully from the start."""
    return {int(m.group(1)) for m in map(CRASHLOG_NAME_RE.match, parts_dir_names(output, storage_options)) if m}


class CrashLog:
    """The crash log of one shard (see the module docstring).

    ``deaths``: image name -> how many earlier attempts died on it; ``crashed``: the
    names to skip (``DEATHS_TO_SKIP`` deaths or more).
    """

    def __init__(self, output: str, shard_index: int, storage_options: dict | None = None):
        self.path = join_url(output, PARTS_DIR, crashlog_name(shard_index))
        self.shard_index = shard_index
        self.storage_options = storage_options
        self.deaths: dict[str, int] = {}

    @classmethod
    def open(cls, output: str, shard_index: int, storage_options: dict | None = None) -> CrashLog:
        """Load the log of an earlier attempt and count a death on the image it was on
        when the process died. The result is saved with no current image."""
        self = cls(output, shard_index, storage_options)
        fs, p = url_to_fs(self.path, storage_options)
        try:
            with fs.open(p, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            doc = {}
        except ValueError as exc:  # written atomically, so only a foreign file can be bad
            log.warning("%s: unreadable crash log (%s); starting a new one", self.path, exc)
            doc = {}
        doc = check_crashlog_doc(doc, self.path)  # a list, mistyped deaths: started anew, told (issue 22.6)
        deaths = doc.get("deaths")
        self.deaths = {str(k): int(v) for k, v in deaths.items()} if isinstance(deaths, dict) else {}
        current = doc.get("current")
        if current:
            n = self.deaths[str(current)] = self.deaths.get(str(current), 0) + 1
            log.warning("shard %d: the worker died on %s (%d time(s))%s", shard_index, current, n,
                        "; skipping it" if n >= DEATHS_TO_SKIP else "")
        self.save(None)
        return self

    @property
    def crashed(self) -> list[str]:
        """The images to skip, sorted."""
        return sorted(name for name, n in self.deaths.items() if n >= DEATHS_TO_SKIP)

    def save(self, current: str | None) -> None:
        """Record ``current`` as the image being worked on (None: between images)."""
        doc = {"shard_index": self.shard_index, "deaths": self.deaths, "current": current}
        atomic_write_bytes(self.path, json.dumps(doc).encode("utf-8"), self.storage_options, retries=3)

    def wrap(self, read: Callable[[Any], Any], name_of: Callable[[Any], str]) -> Callable[[Any], Any]:
        """``read`` that first records ``name_of(item)`` as the current image."""

        def logged_read(item: Any) -> Any:
            self.save(name_of(item))
            return read(item)

        return logged_read

    def remove(self) -> None:
        """Delete the log (the shard's part is written)."""
        fs, p = url_to_fs(self.path, self.storage_options)
        try:
            fs.rm(p)
        except FileNotFoundError:
            pass
