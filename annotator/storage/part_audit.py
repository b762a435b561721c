"""Checking part files against what a manifest recorded, for resuming (no manifest here:
paths and expectations in, verdicts out; :class:`~annotator.storage.manifest.Manifest`
acts on them and logs).

- :func:`digest_parts`: the sha256 of each listed part, read in threads, so that a part
  that changed since it was written (a flipped byte, cut short, replaced) is run again;
- :func:`audit_unlisted_parts`: part files that exist but are not listed (written after
  the last save of a driver that died), each with the reason it may not be taken back,
  or none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from annotator.storage.layout import url_to_fs
from annotator.storage.parts import list_parts, part_file_metadata, part_index, part_sha256
from annotator.storage.state_schema import StateFileError, check_part_footer

__all__ = ["UnlistedPart", "audit_unlisted_parts", "digest_parts"]


def digest_parts(paths: list[tuple[int, str]], storage_options: dict | None,
                 threads: int = 8, config_hash: str | None = None) -> Iterator[tuple[int, str | None, str]]:
    """For each ``(shard_index, path)`` in order: ``(shard_index, sha256 hex, path)``, or
    ``(shard_index, None, why)`` when the file cannot be read, or its footer is not an
    annotator part's (``part-footer.schema.json``), names another shard or (when given)
    another ``config_hash``: a part that verifies but is not this shard's is redone too,
    else the reducer would refuse it on every run."""

    def digest(item: tuple[int, str]) -> tuple[int, str | None, str]:
        index, path = item
        try:
            got = part_sha256(path, storage_options)
        except OSError as e:
            return index, None, f"unreadable ({e})"
        why = footer_problem(path, storage_options, index, config_hash)
        return (index, None, why) if why else (index, got, path)

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="verify") as pool:
        yield from pool.map(digest, paths)


def footer_problem(path: str, storage_options: dict | None, index: int, config_hash: str | None) -> str | None:
    """Why the footer of part ``path`` is not shard ``index``'s of this run, or None."""
    import pyarrow.parquet as pq

    fs, p = url_to_fs(path, storage_options)
    try:
        with fs.open(p, "rb") as f:
            meta = check_part_footer(part_file_metadata(pq.ParquetFile(f), path), path, "")
    except StateFileError:
        return "its footer is not an annotator part's"
    except Exception as exc:  # noqa: BLE001 - not Parquet, cut short: the shard is redone
        return f"unreadable ({type(exc).__name__}: {exc})"
    if meta["shard_index"] != index:
        return f"its footer says shard {meta['shard_index']}"
    if config_hash is not None and meta["config_hash"] != config_hash:
        return f"written by another configuration ({meta['config_hash']})"
    return None


@dataclass(frozen=True)
class UnlistedPart:
    """A part file the manifest does not list: ``why_not`` is None when it may be taken
    back (then ``rows`` and ``sha256`` are what the manifest records), else the reason."""

    path: str
    shard_index: int
    rows: int = 0
    sha256: str = ""
    why_not: str | None = None


def audit_unlisted_parts(
    output: str,
    storage_options: dict | None,
    listed: set[str],
    *,
    num_shards: int,
    config_hash: str,
    expected_rows: Callable[[int], int],
) -> list[UnlistedPart]:
    """Every part file under ``output`` whose filesystem path is not in ``listed``.

    One is fit to take back only when its footer metadata carries ``config_hash`` and its
    own shard index, the index is one of the run's ``num_shards``, and it holds
    ``expected_rows(index)`` rows (parts are written whole, by a temporary file and a
    move). Each file is read once, for the footer and the digest.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = []
    for path in list_parts(output, storage_options):
        fs, p = url_to_fs(path, storage_options)
        if p in listed:
            continue
        index = part_index(p)
        if index is None:  # list_parts lists part names only
            continue
        why = None
        try:
            with fs.open(p, "rb") as f:
                data = f.read()  # once: for the footer and the digest
            footer = pq.ParquetFile(pa.BufferReader(data))
            meta = check_part_footer(part_file_metadata(footer, path), path, "its shard runs again")
            rows = footer.metadata.num_rows
        except StateFileError:  # a footer that is not ours (a list, keys missing): redone
            why = "its footer is not an annotator part's"
        except Exception as exc:  # noqa: BLE001 - an unreadable stray part is simply redone
            why = f"unreadable ({type(exc).__name__}: {exc})"
        else:
            if not 0 <= index < num_shards:
                why = f"shard {index} is outside this run's {num_shards} shards"
            elif meta.get("config_hash") != config_hash or meta.get("shard_index") != index:
                why = "written by another configuration"
            elif rows != expected_rows(index):
                why = f"{rows} rows, expected {expected_rows(index)}"
        if why:
            out.append(UnlistedPart(path, index, why_not=why))
        else:
            out.append(UnlistedPart(path, index, int(rows), hashlib.sha256(data).hexdigest()))
    return out
