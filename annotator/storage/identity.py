"""What makes two runs the same run: the configuration hash, the listing fingerprint,
and, when they differ, which settings changed (for the refusal message)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

__all__ = ["config_hash", "listing_fingerprint", "setting_differences"]


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
            out.append(f"{name} {_cut(a)} (now {_cut(b)})")
    if len(out) > limit:
        out = out[:limit] + [f"{len(out) - limit} more"]
    return out


def _cut(value: object, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."
