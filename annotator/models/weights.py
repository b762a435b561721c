"""Finding model weights: local files first, then a cache, then a verified download.

Every weight the engine needs is resolved BEFORE any model is built, and all that are
missing are reported together in one :class:`WeightsUnavailableError` naming each file
and the option that takes a local copy. Only tensors are ever loaded
(``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

FOUND_DECODER_URL = "https://raw.githubusercontent.com/valeoai/FOUND/main/data/weights/decoder_weights.pt"
FOUND_DECODER_SHA256 = "47ff2a4af3dbc6c80cb832cc81f8ed8ae81809e52576d0de5f9c754cf46ef9b5"
FOUND_DECODER_FILE = "decoder_weights.pt"
DINO_TIMM_NAME = "vit_small_patch8_224.dino"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
DINO_FILE = "dino_deitsmall8_pretrain.pth"


class WeightsUnavailableError(RuntimeError):
    """One or more weight files could not be found locally nor downloaded."""

    def __init__(self, missing: list["MissingWeight"]):
        self.missing = missing
        lines = ["model weights are not available (no local copy and no download possible):"]
        for m in missing:
            lines.append(f"  - {m.what}: {m.reason}\n    provide it with {m.option}")
        lines.append(
            "Weights are cached in --weights-dir (default $ANNOTATOR_WEIGHTS_DIR or "
            "~/.cache/annotator); copy them there or pass the local files above."
        )
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class MissingWeight:
    what: str
    reason: str
    option: str


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def network_reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    """Quick check before trying a download, so offline machines fail fast."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("ANNOTATOR_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def download_verified(url: str, dest: Path, sha256: str | None) -> Path:
    """Download ``url`` to ``dest`` atomically; check ``sha256`` when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".part-")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, progress=False)
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise WeightsUnavailableError(
                    [MissingWeight(url, f"sha256 mismatch: expected {sha256}, got {got}", "a verified local copy")]
                )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load tensors only: safetensors, or ``torch.load(weights_only=True)``."""
    p = str(path)
    if p.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(p, device="cpu")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    return obj


def resolve_file(
    what: str,
    option: str,
    explicit: str | None,
    cache_dir: Path,
    file_name: str,
    url: str | None,
    sha256: str | None,
) -> tuple[Path | None, MissingWeight | None]:
    """Find a weight file: explicit path, then ``cache_dir/file_name``, then download."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return p, None
        return None, MissingWeight(what, f"file not found: {explicit!r}", option)
    cached = cache_dir / file_name
    if cached.is_file():
        if sha256 is None or sha256_file(cached) == sha256:
            return cached, None
        return None, MissingWeight(what, f"cached file {cached} fails its sha256 check", option)
    if url is None:
        return None, MissingWeight(what, "no download address is known", option)
    host = url.split("/")[2]
    if not network_reachable(host):
        return None, MissingWeight(what, f"{host} is unreachable (offline?) and {cached} does not exist", option)
    try:
        return download_verified(url, cached, sha256), None
    except Exception as e:  # network errors of every flavour end up in one report
        return None, MissingWeight(what, f"download from {url} failed: {e}", option)
