"""open_clip's names as data (:mod:`annotator.models.open_clip_names`): the committed
table is the installed open_clip's registry, and resolving a model name or a tag never
imports open_clip nor torch."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from annotator.models import open_clip_names as N
from annotator.models import weights as W

REPO = Path(__file__).resolve().parents[2]


def test_the_table_is_the_installed_open_clips_registry():
    """Regenerate with ``python -m annotator.models.open_clip_names`` when this fails
    after an upgrade of open_clip."""
    assert N.committed_table() == N.table_from_open_clip()


def test_names_and_sources_of_the_table():
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14"} <= set(N.list_models())
    assert {"openai", "laion2b_s34b_b79k"} <= set(N.pretrained_tags("ViT-B-32"))
    assert N.pretrained_source("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"
    assert N.pretrained_source("ViT-B-32", "OpenAI") == N.pretrained_source("ViT-B-32", "openai")  # as open_clip
    assert N.pretrained_source("ViT-B-32", "nonsense") == {} and N.pretrained_tags("ViT-Nope") == []


def test_unknown_names_name_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="--model: unknown open_clip model 'ViT-Nope'"):
        N.check_names("ViT-Nope", "openai")
    with pytest.raises(ValueError, match=r"--pretrained: unknown tag 'nonsense' for ViT-B-32; expected one of \["):
        N.check_names("ViT-B-32", "nonsense")
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"x")
    for ok in ("openai", "random", "", str(ckpt), "missing/dir/file.pt"):
        N.check_names("ViT-B-32", ok)


def test_hub_entries_and_url_checksums_are_read_as_open_clip_reads_them():
    assert N._hub_files("timm/vit_base_patch32_clip_224.openai/") == (
        "timm/vit_base_patch32_clip_224.openai", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
    assert N._hub_files("org/name/weights.bin") == ("org/name", ["weights.safetensors", "weights.bin"])
    assert N._hub_files("org/name") == ("org/name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
    sha = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert N._url_sha256(f"https://openaipublic.azureedge.net/clip/models/{sha}/ViT-B-32.pt") == sha
    assert N._url_sha256("https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
                         "vit_b_32-quickgelu-laion400m_e32-46683a32.pt") == "46683a32"
    assert N._url_sha256("https://example.org/w.pt") == ""


def test_a_url_download_kept_in_the_weights_dir_is_used_offline(tmp_path, monkeypatch):
    """A checkpoint that came from a URL is found again where the download left it,
    when its sha256 matches the one its URL carries."""
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    data = b"checkpoint"
    sha = hashlib.sha256(data).hexdigest()
    source = {"hf_hub": "", "url": f"https://openaipublic.azureedge.net/clip/models/{sha}/X.pt"}
    monkeypatch.setattr(N, "pretrained_source", lambda model, tag: source)
    (tmp_path / "X.pt").write_bytes(b"tampered")
    path, missing = N.resolve_open_clip_weights("ViT-B-32", "openai", str(tmp_path))
    assert path is None and "unreachable" in missing.reason and missing.url == source["url"]
    (tmp_path / "X.pt").write_bytes(data)
    assert N.resolve_open_clip_weights("ViT-B-32", "openai", str(tmp_path)) == (str(tmp_path / "X.pt"), None)


def test_a_download_is_checked_against_a_sha256_prefix(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    assert W.download_verified(src.as_uri(), tmp_path / "a.bin", sha[:8]).read_bytes() == b"weights"
    with pytest.raises(W.WeightsUnavailableError, match="sha256 mismatch"):
        W.download_verified(src.as_uri(), tmp_path / "b.bin", "deadbeef")
    assert not (tmp_path / "b.bin").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "src.bin"]


def test_resolving_open_clip_names_imports_neither_open_clip_nor_torch(tmp_path):
    code = f"""
import os, sys
os.environ["ANNOTATOR_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
from annotator.config import EngineConfig
from annotator.models import describe_weights, resolve_weights
from annotator.models.weights import WeightsUnavailableError
for model, tag in [("ViT-B-32", "openai"), ("ViT-B-16", "laion2b_s34b_b88k"), ("ViT-L-14", "openai")]:
    cfg = EngineConfig(model=model, pretrained=tag, saliency="none", weights_dir={str(tmp_path)!r})
    try:
        resolve_weights(cfg)
    except WeightsUnavailableError as e:
        assert f"{{model}}/{{tag}}" in str(e)
print("IMPORTED", sorted(m for m in ("torch", "open_clip") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "IMPORTED []" in out.stdout, out.stdout + out.stderr[-2000:]
