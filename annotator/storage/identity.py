"""What makes two runs the same run: the configuration hash, the listing fingerprint,
and, when they differ, which settings changed (for the refusal message).

The configuration hash covers every weight file the engine loads: the run's identity
holds ``"weights": weights_identity(describe_weights(config, resolved))`` (the CLIP
checkpoint, DINO's and FOUND's files by their sha256), so a swapped file is a changed
configuration, not a silent mix of two models' parts. A file's name and folder do not
count (the same bytes moved elsewhere are the same run)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping

__all__ = ["config_hash", "listing_fingerprint", "setting_differences", "weights_identity"]

_SHA256_RE = re.compile(r"sha256:([0-9a-f]{64})")


def weights_identity(described: Mapping[str, str]) -> dict[str, str]:
    """The part of a run's identity that names its weights, from
    :func:`annotator.models.describe_weights` (``{"clip": ..., "dino": ..., "found": ...}``):
    a file (``name sha256:<hex>``, or ``tag (name sha256:<hex>)``) counts by its sha256
    alone; anything else (an open_clip tag, ``random (seed N)``, ``none``) as written."""
    out = {}
    for key, text in described.items():
        m = _SHA256_RE.search(str(text))
        out[str(key)] = f"sha256:{m.group(1)}" if m else str(text)
    return out


def config_hash(d: dict) -> str:
    """First 16 hex digits of sha256 over canonical JSON (sorted keys, no spaces)."""
    try:
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"config_hash: expected a JSON-serialisable dict, received one that fails: {exc}"
        ) from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def listing_fingerprint(file_names: Iterable[str]) -> str:
    """First 16 hex digits of sha256 over the ordered file names (NUL-separated) and their count.

    Order matters: image ids are positions in the listing.
    """
    h = hashlib.sha256()
    n = 0
    for name in file_names:
        h.update(name.encode("utf-8"))
        h.update(b"\0")
        n += 1
    h.update(f"count={n}".encode("ascii"))
    return h.hexdigest()[:16]


def setting_differences(before: dict, now: dict, prefix: str = "", limit: int = 8) -> list[str]:
    """``key 'old' (now 'new')`` for each setting that differs, nested keys dotted
    (``engine.model``), values cut to 80 characters, at most ``limit`` items."""
    out: list[str] = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_differences(a, b, f"{name}.", limit)
        elif a != b:
            out.append(_list_change(name, a, b) or f"{name} {_cut(a)} (now {_cut(b)})")
    if len(out) > limit:
        out = out[:limit] + [f"{len(out) - limit} more"]
    return out


def _list_change(name: str, before: object, now: object, shown: int = 10) -> str | None:
    """``vocabulary: added "cat"; removed "dog"`` for a list of names (strings, or records
    with a ``"name"`` such as the vocabulary's classes), or None for any other value.

    The two lists cut at the same width would look the same: what differs is said
    instead, the names added and removed (at most ``shown`` of each, then a count), those
    whose record changed (e.g. a class's synonyms), or that only the order changed.
    """
    keys_before, keys_now = _names(before), _names(now)
    if keys_before is None or keys_now is None or not isinstance(before, list) or not isinstance(now, list):
        return None
    items_before = dict(zip(keys_before, before, strict=True))
    items_now = dict(zip(keys_now, now, strict=True))
    added = [k for k in keys_now if k not in items_before]
    removed = [k for k in keys_before if k not in items_now]
    changed = [k for k in keys_now if k in items_before and items_before[k] != items_now[k]]
    out = [f"{label} {_name_list(keys, shown)}" for label, keys in
           (("added", added), ("removed", removed), ("changed", changed)) if keys]
    if not out:
        out = ["the same items in another order"]
    return f"{name}: " + "; ".join(out)


def _names(value: object) -> list[str] | None:
    """The item names of a list of strings or of records with a string ``"name"``."""
    if not isinstance(value, list):
        return None
    if all(isinstance(v, str) for v in value):
        names = list(value)
    elif all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
        names = [v["name"] for v in value]
    else:
        return None
    return names if len(set(names)) == len(names) else None


def _name_list(names: list[str], shown: int) -> str:
    text = ", ".join(_cut(n, 40) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _cut(value: object, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."
