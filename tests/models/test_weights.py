import hashlib

import pytest
import torch

from annotator.config import EngineConfig
from annotator.models import resolve_weights
from annotator.models import weights as W


def test_offline_error_names_every_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = EngineConfig(weights_dir=str(tmp_path), device="cpu")  # ViT-B-32 + found
    with pytest.raises(W.WeightsUnavailableError) as e:
        resolve_weights(cfg)
    msg = str(e.value)
    assert len(e.value.missing) == 3
    for option in ("--pretrained", "--dino-weights", "--found-weights"):
        assert option in msg
    assert "ViT-B-32/laion2b_s34b_b79k" in msg and "decoder" in msg.lower() and "DINO" in msg


def test_local_files_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    dec = tmp_path / "decoder_weights.pt"
    torch.save({"decoder": {"weight": torch.zeros(1, 384, 1, 1), "bias": torch.zeros(1)}}, dec)
    dino = tmp_path / "dino.pth"
    torch.save({}, dino)
    cfg = EngineConfig(model="tiny-random", found_weights=str(dec), dino_weights=str(dino),
                       weights_dir=str(tmp_path / "cache"), device="cpu")
    r = resolve_weights(cfg)
    assert r.found == str(dec) and r.dino == str(dino) and r.clip is None


def test_missing_explicit_file_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    cfg = EngineConfig(model="toy", saliency="found", found_weights=str(tmp_path / "nope.pt"),
                       dino_weights=str(tmp_path / "nope2.pth"), device="cpu")
    with pytest.raises(W.WeightsUnavailableError, match="file not found"):
        resolve_weights(cfg)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'"):
        resolve_weights(EngineConfig(model="ViT-Nope", saliency="none", device="cpu"))
    with pytest.raises(ValueError, match="unknown tag 'nonsense'"):
        resolve_weights(EngineConfig(model="ViT-B-32", pretrained="nonsense", saliency="none", device="cpu"))
    with pytest.raises(ValueError, match="--saliency: expected one of"):
        resolve_weights(EngineConfig(model="toy", saliency="sam", device="cpu"))


def test_cached_file_checked_against_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    (tmp_path / W.FOUND_DECODER_FILE).write_bytes(b"tampered")
    path, missing = W.resolve_file("FOUND decoder", "--found-weights X", None, tmp_path, W.FOUND_DECODER_FILE,
                                   W.FOUND_DECODER_URL, W.FOUND_DECODER_SHA256)
    assert path is None and "sha256" in missing.reason
    good = b"weights"
    (tmp_path / "ok.bin").write_bytes(good)
    path, missing = W.resolve_file("x", "--x", None, tmp_path, "ok.bin", None, hashlib.sha256(good).hexdigest())
    assert path == tmp_path / "ok.bin" and missing is None
