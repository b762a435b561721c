"""Finding model weights: local files first, then a cache, then a verified download.

Every weight the engine needs is resolved BEFORE any model is built, and all that are
missing are reported together in one :class:`WeightsUnavailableError` naming each file
and the option that takes a local copy. Only tensors are ever loaded
(``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from annotator.errors import MissingWeightsError

if TYPE_CHECKING:  # imported where tensors are loaded: resolving weights needs no torch
    import torch


@dataclass(frozen=True)
class WeightSpec:
    """One weight file the engine may need, as data: where it comes from, the name it has
    in ``--weights-dir`` (so a copy placed there by hand is used offline), its sha256
    when known, and the option that takes an explicit local path."""

    what: str
    file_name: str
    url: str
    option: str
    sha256: str | None = None
    #: other names under which a copy in ``--weights-dir`` is accepted
    also_accepted: tuple[str, ...] = ()


FOUND_DECODER = WeightSpec(
    what="FOUND decoder",
    file_name="decoder_weights.pt",
    url="https://raw.githubusercontent.com/valeoai/FOUND/main/data/weights/decoder_weights.pt",
    option="--found-weights FILE",
    sha256="47ff2a4af3dbc6c80cb832cc81f8ed8ae81809e52576d0de5f9c754cf46ef9b5",
)
DINO_VITS8 = WeightSpec(
    what="DINO ViT-S/8 weights",
    file_name="dino_deitsmall8_pretrain.pth",
    url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    option="--dino-weights FILE",
    also_accepted=("vit_small_patch8_224.dino.safetensors",),  # timm's copy, same tensors
)
# Older names, kept for callers and tests.
FOUND_DECODER_URL, FOUND_DECODER_SHA256 = FOUND_DECODER.url, FOUND_DECODER.sha256
FOUND_DECODER_FILE = FOUND_DECODER.file_name
DINO_URL, DINO_FILE = DINO_VITS8.url, DINO_VITS8.file_name
DINO_TIMM_NAME = "vit_small_patch8_224.dino"
#: Shown with every missing-weights error: the pipeline runs without any weights.
DRY_RUN_HINT = ("To try the pipeline without any weights, use the test models: --model toy --saliency toy "
                "(they segment saturated colours; the repository's jobs/vocab/colours.txt suits them).")


class WeightsUnavailableError(MissingWeightsError, RuntimeError):
    """One or more weight files could not be found locally nor downloaded."""

    def __init__(self, missing: list[MissingWeight]):
        self.missing = missing
        lines = ["model weights are not available (no local copy and no download possible):"]
        for m in missing:
            lines.append(f"  - {m.what}: {m.reason}")
            if m.url:
                lines.append(f"    fetch {m.url}")
            if m.save_as:
                lines.append(f"    and save it as {m.save_as}, or pass it with {m.option}")
            else:
                lines.append(f"    provide it with {m.option}")
        lines.append(DRY_RUN_HINT)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class MissingWeight:
    what: str
    reason: str
    option: str
    url: str | None = None  # where a user gets the file by hand
    save_as: str | None = None  # the path in --weights-dir where it is then found


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


def download_verified(url: str, dest: Path, sha256: str | None, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (standard library only: no torch); check
    ``sha256`` when given (a full hex digest, or the prefix of one that open_clip's
    release URLs carry)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".part-")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        if sha256:
            got = sha256_file(tmp)
            if not got.startswith(sha256.lower()):
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
    import torch

    obj = torch.load(p, map_location="cpu", weights_only=True)
    return obj


def resolve_weight(spec: WeightSpec, explicit: str | None, cache_dir: Path) -> tuple[Path | None, MissingWeight | None]:
    """Find a weight file: the explicit path, then ``cache_dir/spec.file_name`` (or an
    accepted alternative name), then a verified download into ``cache_dir``."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return p, None
        return None, MissingWeight(spec.what, f"file not found: {explicit!r}", spec.option)
    cached = cache_dir / spec.file_name
    missing = dict(what=spec.what, option=spec.option, url=spec.url, save_as=str(cached))
    for name in (spec.file_name, *spec.also_accepted):
        if (cache_dir / name).is_file():
            found = cache_dir / name
            if spec.sha256 is None or sha256_file(found) == spec.sha256:
                return found, None
            return None, MissingWeight(reason=f"{found} fails its sha256 check (expected {spec.sha256})", **missing)
    host = spec.url.split("/")[2]
    if not network_reachable(host):
        return None, MissingWeight(reason=f"{host} is unreachable (offline?) and {cached} does not exist", **missing)
    try:
        return download_verified(spec.url, cached, spec.sha256), None
    except Exception as e:  # network errors of every flavour end up in one report
        return None, MissingWeight(reason=f"download from {spec.url} failed: {e}", **missing)


def describe_file(path: str | os.PathLike) -> str:
    """``name sha256:<hex>``: how run metadata names a weight file that was loaded."""
    return f"{Path(path).name} sha256:{sha256_file(path)}"
