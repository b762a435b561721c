"""The project's own state files, read back defensively: each is checked against its JSON
Schema (``annotator/schemas/``) and for contradictions before anything acts on it.

Anything wrong is either one :class:`StateFileError` (exit 2, one ``error:`` line naming
the file and what to do) or repaired with a warning (the shard concerned runs again);
never an ``AttributeError`` deep in the code, never a re-run that cannot finish.

- :func:`validate_lock_doc`: a lease ``OUTPUT/.annotator.lock/lease-N.json``
  (``lease.schema.json``; its ``token`` must be the ``N`` of its name);
- :func:`check_manifest_doc`: ``OUTPUT/manifest.json`` (``manifest.schema.json``; a
  version newer than this one's is told as such); :func:`misplaced_entries`: finished
  entries that point anywhere but their own shard's part (two shards at one part, a
  part outside the output), which the manifest forgets so that those shards run again;
  :func:`warn_future_times`: its times lying in the future (a wrong clock: told, harmless);
- :func:`check_crashlog_doc`: a shard's crash log (``crashlog.schema.json``), started
  anew when it is not one of ours;
- :func:`check_export_marker`: an earlier export's ``.annotator-export.json``, before
  the folder it marks is replaced;
- :func:`check_metrics_doc`: ``metrics.json`` as the report reads it back (left out,
  told, when it is not ours);
- :func:`check_part_footer`: the run metadata of a part file (``part-footer.schema.json``).
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from annotator.errors import AnnotatorError
from annotator.records.schema import SchemaValidationError, validate
from annotator.storage.layout import PART_NAME_RE
from annotator.storage.redact import redact_uri

__all__ = [
    "MANIFEST_VERSION_READ",
    "StateFileError",
    "check_crashlog_doc",
    "check_export_marker",
    "check_metrics_doc",
    "check_manifest_doc",
    "check_part_footer",
    "misplaced_entries",
    "refuse_stray_parts",
    "validate_lock_doc",
    "warn_future_times",
]

log = logging.getLogger(__name__)

#: The manifest version this code reads (``manifest.schema.json``'s ``version`` const).
MANIFEST_VERSION_READ = 1
#: A recorded time this far ahead of this machine's clock is said to be in the future.
FUTURE_SLACK = timedelta(minutes=5)


class StateFileError(AnnotatorError, ValueError):
    """One of the project's own state files is invalid, contradictory, foreign or from a
    newer version; the message names the file and the way out."""


def _kind(doc: Any) -> str:
    """What a JSON document is, in words (never its content: it may hold anything)."""
    if doc is None:
        return "null"
    if isinstance(doc, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(doc), type(doc).__name__)


def _schema_problem(doc: Any, schema: str) -> str | None:
    """None when ``doc`` matches ``schema``, else the first problem in words."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, received {_kind(doc)}"
    try:
        validate(doc, schema)
    except SchemaValidationError as exc:
        return str(exc)
    return None


def _parsed(raw: bytes, schema: str) -> tuple[Any, str | None]:
    """(the JSON document of ``raw``, None) when it matches ``schema``, else (what was
    parsed or None, the first problem in words)."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    return doc, _schema_problem(doc, schema)


# ----------------------------------------------------------------------------- lease


def validate_lock_doc(doc: Any, path: str, token: int | None = None) -> dict:
    """``doc`` (a parsed lease ``path``) when it is a lease this annotator wrote, else
    :class:`StateFileError`: its holder could never refresh it, so no one would ever
    remove it. ``token``: the ``N`` of its file name, which the document must repeat."""
    # {}: what the lock's reader makes of a file that is not JSON (or could not be read just now)
    problem = "empty, not JSON, or not readable just now" if doc == {} else _schema_problem(doc, "lease")
    if problem is None and token is not None and doc["token"] != token:
        problem = f"it says token {doc['token']} but its name says {token}"
    if problem is not None:
        raise StateFileError(
            f"{path}: not a lease this annotator wrote ({problem}); if no annotator command is writing to this "
            "output, delete that file and run the command again")
    return doc


# ----------------------------------------------------------------------------- manifest


def check_manifest_doc(doc: Any, path: str) -> dict:
    """``doc`` (a parsed ``manifest.json``) when valid, else :class:`StateFileError`
    saying whether it is from a newer version or not a manifest of ours."""
    if isinstance(doc, dict) and isinstance(doc.get("version"), int) and not isinstance(doc["version"], bool) \
            and doc["version"] > MANIFEST_VERSION_READ:
        raise StateFileError(
            f"{path}: written by a newer annotator (manifest version {doc['version']}, this one reads version "
            f"{MANIFEST_VERSION_READ}); resume it with that version, or pass --overwrite to annotator.run to "
            "start this output afresh")
    problem = _schema_problem(doc, "manifest")
    if problem is not None:
        raise StateFileError(
            f"{path}: not a valid annotator manifest ({problem}); pass --overwrite to annotator.run to start this "
            "output afresh, or choose another output")
    return doc


def misplaced_entries(finished: dict[str, dict], num_shards: int, own_part: Callable[[int], str],
                      resolve: Callable[[str], str],
                      expected_rows: Callable[[int], int] | None = None) -> dict[str, str]:
    """The ``finished`` entries (by key) that cannot be trusted, each with why: a shard
    outside ``num_shards``, or a ``path`` that is not the shard's own part (``own_part``:
    the index's part as a filesystem path; ``resolve``: an entry's path to one). Two
    shards pointing at one part are both misplaced at least once (only one is its own).
    ``expected_rows``: the images of a shard, when known; an entry recording another
    number of rows contradicts the listing."""
    bad = {}
    for key, entry in finished.items():
        index = int(key)
        if index >= num_shards:
            bad[key] = f"shard {index} is outside the run's {num_shards} shards"
            continue
        got = resolve(entry["path"])
        if got != own_part(index):
            owner = [k for k, e in finished.items() if k != key and resolve(e["path"]) == got]
            bad[key] = (f"it points at {entry['path']}, " + (f"the part of shard {owner[0]}" if owner
                                                               else "not its own part"))
        elif expected_rows is not None and entry["rows"] != expected_rows(index):
            bad[key] = f"it records {entry['rows']} rows, the shard has {expected_rows(index)} images"
    return bad


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def warn_future_times(doc: dict, path: str, keys: tuple[str, ...] = ("created", "updated")) -> list[str]:
    """Warn about (and return) the ``keys`` of ``doc`` whose ISO 8601 time lies in the
    future: a clock set wrong, or a folder copied from one. Harmless here (no decision is
    taken on these times), so only told."""
    now = datetime.now(UTC)
    ahead = [k for k in keys if (t := _parse_time(doc.get(k))) is not None and t - now > FUTURE_SLACK]
    if ahead:
        log.warning("%s: %s lies in the future (%s); a clock is set wrong somewhere. Resuming anyway: no "
                    "decision depends on it", path, " and ".join(ahead), doc[ahead[0]])
    return ahead


# ----------------------------------------------------------------------------- crash log


def check_crashlog_doc(doc: Any, path: str) -> dict:
    """``doc`` (a parsed shard crash log) when it matches ``crashlog.schema.json``, else
    ``{}`` with a warning naming ``path``: the log is started anew (repaired), instead of
    failing the shard on every attempt of every re-run."""
    problem = _schema_problem(doc, "crashlog")
    if problem is None:
        return doc
    log.warning("%s: not a crash log this annotator wrote (%s); starting a new one", path, problem)
    return {}


# ----------------------------------------------------------------------------- export marker


def check_export_marker(raw: bytes, path: str) -> dict:
    """The marker ``path`` of an earlier export (``export-marker.schema.json``), else
    :class:`StateFileError`: a folder whose marker is not ours may hold the user's own
    files, and an export replaces its folder as a whole."""
    doc, problem = _parsed(raw, "export-marker")
    if problem is not None:
        raise StateFileError(f"{path}: not an export marker this annotator wrote ({problem}), so its folder may not "
                             "be an earlier export that this one may replace; choose a new or empty folder for --to")
    return doc


# ----------------------------------------------------------------------------- metrics.json


def check_metrics_doc(raw: bytes, path: str) -> dict | None:
    """A run's ``metrics.json`` read back (the report shows it) when it matches
    ``metrics.schema.json``, else None with a warning naming it and the way out (the
    reducer rewrites it from the parts)."""
    doc, problem = _parsed(raw, "metrics")
    if problem is None:
        return doc
    log.warning("%s: not a metrics.json this annotator wrote (%s); left out of the report. Run annotator.reduce "
                "on the run folder to write it again", redact_uri(path), problem)
    return None


# ----------------------------------------------------------------------------- part footer


def refuse_stray_parts(paths: list[str], num_shards: int, parts_dir: str) -> None:
    """:class:`StateFileError` naming the first of ``paths`` that is a part file of a
    shard outside the run's ``num_shards`` (another run's, copied in): nothing would ever
    recompute or remove it, and its rows would be read twice."""
    def index(p: str) -> int:
        m = PART_NAME_RE.match(posixpath.basename(p))
        return int(m.group(1)) if m else -1

    strays = [p for p in paths if index(p) >= num_shards]
    if strays:
        more = f" and {len(strays) - 1} more" if len(strays) > 1 else ""
        raise StateFileError(f"{strays[0]}{more}: not a part of this run (shard {index(strays[0])}; the run has "
                             f"{num_shards} shards, 0..{num_shards - 1}); move it out of {parts_dir} and run the "
                             "same command again")



def check_part_footer(meta: Any, path: str, way_out: str) -> dict:
    """``meta`` (a part's run metadata) when it matches ``part-footer.schema.json``, else
    :class:`StateFileError` naming the part and ``way_out``."""
    problem = _schema_problem(meta, "part-footer")
    if problem is not None:
        raise StateFileError(f"{path}: not a part this annotator wrote (its footer: {problem}); {way_out}")
    return meta
