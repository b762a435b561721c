"""The run manifest, ``OUTPUT/manifest.json``: which shards are finished, for resuming.

Written by the driver only (schemas/manifest.schema.json), atomically, through
:mod:`annotator.storage.parts`'s temporary-file-and-move writer. It holds the configuration hash
and the input listing fingerprint of the run, so that an output folder is only resumed
by the same configuration on the same listing (:func:`open_output`; otherwise
OutputConflictError, or a fresh start with ``overwrite=True``).

Resuming: a shard counts as finished when the manifest lists it AND its part file
exists, so deleting a part file re-runs that shard.

Cost per finished shard: the driver rewrites the whole file, which grows with the number
of shards, so a run saves at most once every ``flush_interval_s`` seconds (plus a final
:meth:`Manifest.flush`), keeping the driver's work per shard constant on runs of
millions of images. A part written after the last save is not lost if the driver dies:
:meth:`Manifest.adopt_unlisted_parts` takes it back on resume when its footer says it
belongs to this configuration and holds the shard's expected number of rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from annotator.records.schema import SchemaValidationError, validate
from annotator.storage.compatibility import OutputConflictError, RunIdentity, differences
from annotator.storage.identity import (
    config_hash,
    listing_fingerprint,
)
from annotator.storage.layout import (
    MANIFEST_NAME,
    join_url,
    url_to_fs,
)
from annotator.storage.ownership import clear, foreign_entries
from annotator.storage.part_audit import audit_unlisted_parts, digest_parts
from annotator.storage.parts import (
    atomic_write_bytes,
    list_parts,
    part_path,
    part_sha256,
)
from annotator.storage.redact import redact_uri
from annotator.storage.state_schema import StateFileError, check_manifest_doc, misplaced_entries, warn_future_times

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestError",
    "OutputConflictError",
    "clear",
    "config_hash",
    "listing_fingerprint",
    "open_output",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class ManifestError(StateFileError):
    """manifest.json exists but is not a valid manifest (exit 2: the message names it and what to do)."""


# ----------------------------------------------------------------------------- manifest


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """State of a run in `{output}/manifest.json`. Only the driver writes it.

    finished: {str(shard_index): {"path": relative to output, "rows": int, "sha256": hex,
    "made_by": {"node_id", "host", "actor", "pid", "attempt"}}}; ``made_by`` (where the part
    was made, for an operator) is absent in older manifests and for parts taken back.
    """

    output: str
    config_hash: str
    listing_fingerprint: str
    num_shards: int
    shard_size: int
    finished: dict[str, dict] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    storage_options: dict | None = field(default=None, repr=False, compare=False)
    #: The settings behind ``config_hash`` and the listing's image count, kept so that a
    #: refused run is told what changed (absent in manifests of older versions).
    settings: dict | None = None
    num_images: int | None = None
    #: Seconds between rewrites by :meth:`mark_finished` (0: every call); see :meth:`flush`.
    flush_interval_s: float = field(default=0.0, repr=False, compare=False)
    #: Called before every write of manifest.json: the output lease's fence
    #: (:meth:`~annotator.storage.lock.OutputLock.check_fence`), which raises when this
    #: writer lost the output to another, so that its late parts are never recorded.
    fence: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    _dirty: bool = field(default=False, repr=False, compare=False)
    _saved_at: float = field(default=0.0, repr=False, compare=False)
    _save_s: float = field(default=0.0, repr=False, compare=False)

    # -- persistence

    @staticmethod
    def path_for(output: str) -> str:
        return join_url(output, MANIFEST_NAME)

    def to_dict(self, header_only: bool = False) -> dict:
        """The manifest.json document (``header_only``: with ``finished`` empty)."""
        return {
            "version": MANIFEST_VERSION,
            "config_hash": self.config_hash,
            "listing_fingerprint": self.listing_fingerprint,
            "num_shards": self.num_shards,
            "shard_size": self.shard_size,
            "finished": {} if header_only else {
                k: dict(v) for k, v in sorted(self.finished.items(), key=lambda kv: int(kv[0]))},
            "created": self.created,
            "updated": self.updated,
            **({"settings": self.settings} if self.settings is not None else {}),
            **({"num_images": self.num_images} if self.num_images is not None else {}),
        }

    def save(self, retries: int = 3) -> None:
        """Rewrite manifest.json atomically, after checking :attr:`fence` (the lease)."""
        if self.fence is not None:
            self.fence()
        t0 = time.monotonic()
        self.updated = _now()
        doc = self.to_dict()
        # The header is validated on every save; entries when they are added (validating
        # 20,000 entries again on each save took over a second).
        validate({**doc, "finished": {}}, "manifest")
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
        atomic_write_bytes(self.path_for(self.output), data, self.storage_options, retries)
        self._dirty = False
        self._saved_at = time.monotonic()
        self._save_s = self._saved_at - t0

    def flush(self) -> None:
        """Save now if :meth:`mark_finished` recorded shards since the last save."""
        if self._dirty:
            self.save()

    @classmethod
    def load(cls, output: str, storage_options: dict | None = None) -> Manifest | None:
        """The manifest of `output`, or None when there is none."""
        fs, p = url_to_fs(cls.path_for(output), storage_options)
        try:
            with fs.open(p, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        shown = redact_uri(cls.path_for(output))
        try:  # validated (state_schema): never an AttributeError on a list, never a version it cannot read
            doc = check_manifest_doc(json.loads(raw), shown)
        except ValueError as exc:
            text = str(exc) if isinstance(exc, StateFileError) else (
                f"{shown}: not a valid annotator manifest (not JSON: {exc}); pass --overwrite to annotator.run to "
                "start this output afresh, or choose another output")
            raise ManifestError(text) from None
        warn_future_times(doc, shown)
        manifest = cls(
            output=output,
            config_hash=doc["config_hash"],
            listing_fingerprint=doc["listing_fingerprint"],
            num_shards=doc["num_shards"],
            shard_size=doc["shard_size"],
            finished=doc["finished"],
            created=doc["created"],
            updated=doc["updated"],
            storage_options=storage_options,
            settings=doc.get("settings"),
            num_images=doc.get("num_images"),
        )
        manifest._forget_misplaced(shown)
        return manifest

    def _forget_misplaced(self, shown: str) -> None:
        """Forget (with a warning) finished entries that point anywhere but their own
        shard's part (two shards at one part, a part outside the output, a shard outside
        the run), so that those shards run again instead of being missing forever."""
        def fs_path(url: str) -> str:
            return url_to_fs(url, self.storage_options)[1]

        rows = None if self.num_images is None else (
            lambda i: max(0, min(self.shard_size, self.num_images - i * self.shard_size)))
        bad = misplaced_entries(self.finished, self.num_shards, lambda i: fs_path(part_path(self.output, i)),
                                lambda p: fs_path(self.resolve(p)), rows)
        for key, why in sorted(bad.items(), key=lambda kv: int(kv[0])):
            log.warning("%s: shard %s is not taken as finished (%s); it runs again", shown, key, why)
            del self.finished[key]
            self._dirty = True

    @classmethod
    def create(
        cls,
        output: str,
        config_hash: str,
        listing_fingerprint: str,
        num_shards: int,
        shard_size: int,
        storage_options: dict | None = None,
        *,
        settings: dict | None = None,
        num_images: int | None = None,
    ) -> Manifest:
        """A new manifest with no finished shards, written to `output` right away."""
        now = _now()
        m = cls(
            output,
            config_hash,
            listing_fingerprint,
            int(num_shards),
            int(shard_size),
            {},
            now,
            now,
            storage_options,
            settings=settings,
            num_images=num_images,
        )
        m.save()
        return m

    # -- state

    def _check_index(self, shard_index: int) -> None:
        if (
            isinstance(shard_index, bool)
            or not isinstance(shard_index, int)
            or not 0 <= shard_index < self.num_shards
        ):
            raise ValueError(
                f"shard_index: expected an integer in [0, {self.num_shards - 1}], received {shard_index!r}"
            )

    def _relative(self, path: str) -> str:
        prefix = self.output.rstrip("/") + "/"
        return path.removeprefix(prefix)

    def resolve(self, relative_or_full: str) -> str:
        """A path stored in the manifest -> a full path/URL under output."""
        if "://" in relative_or_full or relative_or_full.startswith("/"):
            return relative_or_full
        return join_url(self.output, relative_or_full)

    def mark_finished(self, shard_index: int, path: str, rows: int, sha256: str | None = None,
                      made_by: dict | None = None) -> None:
        """Record a written part; rewrite the manifest atomically unless the last rewrite
        is less than ``flush_interval_s`` old (then :meth:`flush` or a later call saves it).

        sha256: the part's digest as `write_part` returned it; computed by reading the
        file when not given.
        made_by: where the part was made (``ShardResult.made_by``: node id, host, actor,
        pid, attempt); recorded as the entry's ``made_by`` when given.
        """
        self._check_index(shard_index)
        if sha256 is None:
            sha256 = part_sha256(path, self.storage_options)
        entry: dict = {"path": self._relative(path), "rows": rows, "sha256": sha256}
        if made_by:
            entry["made_by"] = dict(made_by)
        self._add_entry(shard_index, entry)
        # A save costs time proportional to the shard count: at most ~5% of the driver's time.
        interval = max(self.flush_interval_s, 20 * self._save_s) if self.flush_interval_s > 0 else 0.0
        if time.monotonic() - self._saved_at >= interval:
            self.save()

    def _add_entry(self, shard_index: int, entry: dict) -> None:
        """Validate one ``finished`` entry against the schema and record it (unsaved)."""
        try:
            validate({**self.to_dict(header_only=True), "finished": {str(shard_index): entry}}, "manifest")
        except SchemaValidationError as exc:
            raise ValueError(f"shard {shard_index}: not a valid manifest entry {entry!r}: {exc}") from None
        self.finished[str(shard_index)] = entry
        self._dirty = True

    def adopt_unlisted_parts(self, expected_rows: Callable[[int], int]) -> list[int]:
        """Record part files that exist but are not listed (written after the last save of
        a driver that died); returns the shard indices taken back, and saves if any.

        A part is taken back only when its footer metadata carries this manifest's
        ``config_hash`` and its own shard index, and it holds ``expected_rows(index)``
        rows (parts are written whole, by a temporary file and a move). Any other
        unlisted part is left alone: its shard runs again and overwrites it.
        """
        listed = {url_to_fs(self.resolve(v["path"]), self.storage_options)[1] for v in self.finished.values()}
        adopted = []
        for part in audit_unlisted_parts(self.output, self.storage_options, listed, num_shards=self.num_shards,
                                         config_hash=self.config_hash, expected_rows=expected_rows):
            if part.why_not:
                log.info("%s: not taken back (%s); its shard runs again", part.path, part.why_not)
                continue
            self._add_entry(part.shard_index, {"path": self._relative(part.path), "rows": part.rows,
                                               "sha256": part.sha256})
            adopted.append(part.shard_index)
        if adopted:
            self.save()
            log.info("took back %d finished part(s) missing from %s", len(adopted), MANIFEST_NAME)
        return adopted

    def is_finished(self, shard_index: int) -> bool:
        """Listed as finished AND its part file exists."""
        self._check_index(shard_index)
        entry = self.finished.get(str(shard_index))
        if entry is None:
            return False
        fs, p = url_to_fs(self.resolve(entry["path"]), self.storage_options)
        fs.invalidate_cache(p)  # written by a worker: a cached listing may predate it
        return bool(fs.exists(p))

    def finished_shards(self) -> set[int]:
        """Indices of finished shards whose part file exists (one directory listing)."""
        existing = {url_to_fs(p, self.storage_options)[1] for p in list_parts(self.output, self.storage_options)}
        return {
            int(k)
            for k, v in self.finished.items()
            if url_to_fs(self.resolve(v["path"]), self.storage_options)[1] in existing
        }

    def verified_finished_shards(self, threads: int = 8) -> set[int]:
        """:meth:`finished_shards` whose part still has the sha256 recorded when it was
        written. A part that does not verify (a flipped byte, cut short, replaced by
        another run's or another shard's part) is forgotten, with a warning naming the
        file, so that its shard runs again and overwrites it."""
        listed = [(i, self.resolve(self.finished[str(i)]["path"])) for i in sorted(self.finished_shards())]
        ok = set()
        for index, got, where in digest_parts(listed, self.storage_options, threads, self.config_hash):
            expected = self.finished[str(index)]["sha256"]
            if got == expected:
                ok.add(index)
                continue
            path = self.resolve(self.finished[str(index)]["path"])
            why = where if got is None else f"sha256 {got[:12]}..., the manifest recorded {expected[:12]}..."
            log.warning("%s does not match what was written (%s): its shard %d runs again",
                        path, why, index)
            del self.finished[str(index)]
            self._dirty = True
        return ok

    def pending_shards(self) -> list[int]:
        """Shard indices still to run, in order."""
        done = self.finished_shards()
        return [i for i in range(self.num_shards) if i not in done]

    def check_compatible(
        self,
        config_hash: str,
        listing_fingerprint: str,
        overwrite: bool = False,
        *,
        num_shards: int | None = None,
        shard_size: int | None = None,
        settings: dict | None = None,
        num_images: int | None = None,
    ) -> bool:
        """True when this run may resume the existing output.

        When the configuration hash, the listing fingerprint (or, if given, the shard
        layout) differ: returns False if `overwrite` (the caller then `clear`s the
        output), else raises OutputConflictError saying what differs
        (:func:`annotator.storage.compatibility.differences`).
        """
        diffs = differences(
            RunIdentity(self.config_hash, self.listing_fingerprint, self.num_shards, self.shard_size, self.settings,
                        self.num_images),
            RunIdentity(config_hash, listing_fingerprint, num_shards, shard_size, settings, num_images),
        )
        if not diffs:
            return True
        if overwrite:
            return False
        raise OutputConflictError(
            f"output {self.output} already holds results (created {self.created}) made with "
            + "; ".join(diffs)
            + ". Pass --overwrite to replace it, or choose another output."
        )


def open_output(
    output: str,
    *,
    config_hash: str,
    listing_fingerprint: str,
    num_shards: int,
    shard_size: int,
    overwrite: bool = False,
    storage_options: dict | None = None,
    settings: dict | None = None,
    num_images: int | None = None,
) -> Manifest:
    """The driver's entry point: the manifest to resume, or a fresh one.

    overwrite=True always starts afresh (parts and manifest removed). Without it, an
    existing manifest must be compatible (else OutputConflictError), and part files
    without a manifest are refused (their origin is unknown).
    """
    replaced = False  # an unreadable manifest.json replaced: the folder was a run's (only its files go)
    try:
        existing = Manifest.load(output, storage_options)
    except ManifestError:
        if not overwrite:
            raise
        existing, replaced = None, True
        clear(output, storage_options)  # an unreadable manifest of ours: --overwrite replaces it
    if existing is None:
        stray = list_parts(output, storage_options)
        if stray:
            raise OutputConflictError(
                f"output {output} holds {len(stray)} part file(s) but no {MANIFEST_NAME}, so they cannot be "
                "resumed safely, and --overwrite replaces only a run's own output: move them away, or choose "
                "another output."
            )
        foreign = [] if replaced else foreign_entries(output, storage_options)
        if foreign:
            raise OutputConflictError(
                f"output {output} is not empty and holds no {MANIFEST_NAME}: it is not an annotator run folder "
                f"(found {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); --overwrite replaces only "
                "a run's own files: choose an empty or new output."
            )
    elif overwrite:
        clear(output, storage_options)
    else:
        existing.check_compatible(
            config_hash, listing_fingerprint, False, num_shards=num_shards, shard_size=shard_size,
            settings=settings, num_images=num_images,
        )
        return existing
    return Manifest.create(output, config_hash, listing_fingerprint, num_shards, shard_size, storage_options,
                           settings=settings, num_images=num_images)
