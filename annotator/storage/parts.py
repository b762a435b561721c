"""Part files, on a local folder or any fsspec URL: paths, atomic writing, streaming reads.

Layout of an output folder
    OUTPUT/parts/part-00000.parquet   one per shard, rows = `ImageRecord.to_row()`,
                                      sorted by image_id, Arrow schema PART_ARROW_SCHEMA,
                                      run metadata as JSON under the key b"annotator"
    OUTPUT/manifest.json              written by the driver only (schemas/manifest.schema.json);
                                      see `annotator.storage.manifest`

Atomicity: a file is written to `{path}.tmp-{uuid}` and then moved to its final name.
On a local or POSIX file system the move is a rename, so readers see either the old
file or the complete new one, never a partial file. On object stores (s3, gcs, azure)
`mv` is copy + delete, and the final object appears atomically because a single
upload/copy of an object is itself atomic; the temporary object is only a leftover if
the process dies between the two steps (`list_parts` ignores such names).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import posixpath
import uuid
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from annotator.failpoints import failpoint
from annotator.records import ImageRecord
from annotator.records.schema import PART_ARROW_SCHEMA
from annotator.storage.layout import (
    PART_NAME_RE,
    PARTS_DIR,
    join_url,
    part_name,
    url_to_fs,
)
from annotator.storage.retry import retry

__all__ = [
    "METADATA_KEY",
    "PARTS_DIR",
    "atomic_write_bytes",
    "iter_records",
    "iter_rows",
    "join_url",
    "list_parts",
    "part_file_metadata",
    "part_index",
    "part_path",
    "parts_dir_names",
    "read_part_metadata",
    "url_to_fs",
    "write_part",
]

METADATA_KEY = b"annotator"
ROW_GROUP_ROWS = 64  # small row groups keep streaming reads at a bounded memory


# ----------------------------------------------------------------------------- paths


def part_path(output: str, shard_index: int) -> str:
    """`{output}/parts/part-{shard_index:05d}.parquet` (same URL form as `output`)."""
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or shard_index < 0:
        raise ValueError(f"shard_index: expected an integer >= 0, received {shard_index!r}")
    return join_url(output, PARTS_DIR, part_name(shard_index))


def parts_dir_names(output: str, storage_options: dict | None = None) -> list[str]:
    """Names of the files under `{output}/parts/` (parts, temporaries, crash logs); [] without it."""
    fs, root = url_to_fs(output, storage_options)
    parts_dir = posixpath.join(root, PARTS_DIR)
    # Workers write parts through their own file system objects: drop any cached
    # listing (s3fs, gcsfs keep one) so new parts are seen.
    fs.invalidate_cache(parts_dir)
    if not fs.exists(parts_dir):
        return []
    return [posixpath.basename(name.rstrip("/")) for name in fs.ls(parts_dir, detail=False)]


def part_index(name: str) -> int | None:
    """The shard index of a part file name (`part-00003.parquet` -> 3), or None if it is not one."""
    m = PART_NAME_RE.match(posixpath.basename(name))
    return int(m.group(1)) if m else None


def list_parts(output: str, storage_options: dict | None = None) -> list[str]:
    """Part files under `{output}/parts/`, sorted by shard index; temporary files ignored."""
    found = sorted((i, base) for base in parts_dir_names(output, storage_options) if (i := part_index(base)) is not None)
    return [join_url(output, PARTS_DIR, base) for _, base in found]


# ----------------------------------------------------------------------------- atomic write


def atomic_write_bytes(path: str, data: bytes, storage_options: dict | None, retries: int,
                       *, point: str | None = None) -> None:
    """Write `data` to `path` via a temporary sibling and a move (see module docstring).

    Transient storage errors are retried `retries` times; what still fails is raised as
    a :class:`~annotator.errors.StorageError` (transient or permanent) naming the path,
    the client's error as its cause. ``point``: the failpoint each attempt passes
    (:mod:`annotator.failpoints`)."""
    fs, target = url_to_fs(path, storage_options)

    def attempt() -> None:
        if point is not None:
            failpoint(point)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):  # best effort: the original error matters more
                if fs.exists(tmp):
                    fs.rm(tmp)
            raise

    retry(attempt, retries=retries, what=f"writing {path}", wrap=True)


def part_sha256(path: str, storage_options: dict | None = None, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a part file's bytes, streamed (what the manifest records and resume
    and the reducer check)."""
    fs, p = url_to_fs(path, storage_options)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_part(
    records: Sequence[ImageRecord],
    path: str,
    metadata: dict,
    storage_options: dict | None = None,
    *,
    retries: int = 3,
) -> str:
    """Write records as one Parquet part, atomically; returns the file's sha256 (hex).

    Rows are sorted by image_id (duplicates raise ValueError). `metadata` (run settings:
    vocabulary, model, config hash, ...) must be JSON-serialisable; it is stored under
    the Parquet key-value metadata key b"annotator". Transient storage errors are
    retried `retries` times with exponential backoff; a write that still fails raises
    :class:`~annotator.errors.StorageError`. Failpoint ``parts.write``: each attempt.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata: expected a JSON-serialisable dict, received {type(metadata).__name__}")
    ordered = sorted(records, key=lambda r: r.image_id)
    ids = [r.image_id for r in ordered]
    dupes = sorted({i for i, j in itertools.pairwise(ids) if i == j})
    if dupes:
        raise ValueError(f"records: expected unique image_ids, received duplicates {dupes[:10]}")
    meta_json = json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)
    schema = PART_ARROW_SCHEMA.with_metadata({METADATA_KEY: meta_json.encode("utf-8")})
    table = pa.Table.from_pylist([r.to_row() for r in ordered], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS)
    data = sink.getvalue().to_pybytes()
    atomic_write_bytes(path, data, storage_options, retries, point="parts.write")
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- reading


def read_part_metadata(path: str, storage_options: dict | None = None) -> dict:
    """The run metadata dict stored in a part's Parquet key-value metadata."""
    fs, p = url_to_fs(path, storage_options)
    with fs.open(p, "rb") as f:
        return part_file_metadata(pq.ParquetFile(f), path)


def part_file_metadata(parquet_file: pq.ParquetFile, where: str) -> dict:
    """The run metadata dict of an open part file (``where`` names it in errors)."""
    meta = parquet_file.schema_arrow.metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(
            f"{where}: expected Parquet key-value metadata under {METADATA_KEY!r} (an annotator part file), "
            f"received keys {sorted(k.decode('utf-8', 'replace') for k in meta)}"
        )
    return json.loads(meta[METADATA_KEY])


def iter_rows(
    paths: Sequence[str],
    storage_options: dict | None = None,
    columns: Sequence[str] | None = None,
    batch_size: int = 64,
) -> Iterator[dict]:
    """Stream rows (dicts, as `ImageRecord.to_row()` gives them) from part files, in order.

    Reads `batch_size` rows at a time, so memory does not grow with the dataset.
    `columns` selects a subset of PART_ARROW_SCHEMA's columns.
    """
    if columns is not None:
        unknown = [c for c in columns if c not in PART_ARROW_SCHEMA.names]
        if unknown:
            raise ValueError(
                f"columns: expected names from {PART_ARROW_SCHEMA.names}, received unknown {unknown}"
            )
        columns = list(columns)
    for path in paths:
        fs, p = url_to_fs(path, storage_options)
        with fs.open(p, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
                yield from batch.to_pylist()


def iter_batches(
    paths: Sequence[str],
    storage_options: dict | None = None,
    batch_size: int = 1024,
) -> Iterator[pa.RecordBatch]:
    """Stream the parts' rows as Arrow record batches of at most ``batch_size`` rows (all
    of PART_ARROW_SCHEMA's columns), in order: what the merge copies without making rows."""
    for path in paths:
        fs, p = url_to_fs(path, storage_options)
        with fs.open(p, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)


def iter_records(
    paths: Sequence[str],
    storage_options: dict | None = None,
    batch_size: int = 64,
    columns: Sequence[str] | None = None,
) -> Iterator[ImageRecord]:
    """Like `iter_rows`, as validated `ImageRecord`s (the one record reader: exports,
    the report and the reducer stream through it)."""
    for row in iter_rows(paths, storage_options, columns=columns, batch_size=batch_size):
        yield ImageRecord.from_row(row)
