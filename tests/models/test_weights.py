import hashlib
import shutil
from pathlib import Path

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
    path, missing = W.resolve_weight(W.FOUND_DECODER, None, tmp_path)
    assert path is None and "sha256" in missing.reason
    good = b"weights"
    (tmp_path / "ok.bin").write_bytes(good)
    spec = W.WeightSpec("x", "ok.bin", "https://example.invalid/ok.bin", "--x", hashlib.sha256(good).hexdigest())
    path, missing = W.resolve_weight(spec, None, tmp_path)
    assert path == tmp_path / "ok.bin" and missing is None


def test_offline_error_says_what_to_fetch_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsUnavailableError) as e:
        resolve_weights(EngineConfig(weights_dir=str(tmp_path), device="cpu"))
    msg = str(e.value)
    for url, name in [
        ("https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors",
         "open_clip_ViT-B-32_laion2b_s34b_b79k.safetensors"),
        (W.DINO_VITS8.url, "dino_deitsmall8_pretrain.pth"),
        (W.FOUND_DECODER.url, "decoder_weights.pt"),
    ]:
        assert f"fetch {url}" in msg, msg
        assert f"save it as {tmp_path / name}" in msg, msg
    assert "--model toy --saliency toy" in msg  # a dry run without weights


SHARED_FOUND = Path(__file__).resolve().parents[3] / "shared" / "weights" / "found_decoder_weights.pt"


def test_found_decoder_placed_in_weights_dir_is_used(tmp_path, monkeypatch):
    """The released decoder file (shared/weights, for tests only), copied by hand under
    the name the error gives: found, sha256-checked, loaded, and named in the metadata."""
    if not SHARED_FOUND.is_file():
        pytest.skip(f"{SHARED_FOUND} not present")
    from annotator.models import describe_weights
    from annotator.models.found import load_found_decoder

    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    shutil.copy(SHARED_FOUND, tmp_path / "decoder_weights.pt")
    torch.save({}, tmp_path / "dino_deitsmall8_pretrain.pth")  # resolved only, not loaded here
    cfg = EngineConfig(model="toy", saliency="found", weights_dir=str(tmp_path), device="cpu")
    r = resolve_weights(cfg)
    assert r.found == str(tmp_path / "decoder_weights.pt")
    dec = load_found_decoder(r.found)
    assert tuple(dec.weight.shape) == (1, 384, 1, 1)
    assert describe_weights(cfg, r)["found"] == f"decoder_weights.pt sha256:{W.FOUND_DECODER.sha256}"


def test_dino_placed_in_weights_dir_is_used(tmp_path, monkeypatch):
    from annotator.models.found import build_dino_vits8

    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    reference = build_dino_vits8(None, seed=3)
    torch.save(reference.state_dict(), tmp_path / "dino_deitsmall8_pretrain.pth")
    cfg = EngineConfig(model="toy", saliency="found-bkg", weights_dir=str(tmp_path), device="cpu")
    r = resolve_weights(cfg)
    assert r.dino == str(tmp_path / "dino_deitsmall8_pretrain.pth")
    loaded = build_dino_vits8(W.load_state_dict(r.dino), seed=0)
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_clip_checkpoint_placed_in_weights_dir_is_used(tmp_path, monkeypatch, suffix):
    from annotator.models import describe_weights

    monkeypatch.setenv("ANNOTATOR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    placed = tmp_path / f"open_clip_ViT-B-32_laion2b_s34b_b79k{suffix}"
    placed.write_bytes(b"checkpoint")
    cfg = EngineConfig(model="ViT-B-32", saliency="none", weights_dir=str(tmp_path), device="cpu")
    r = resolve_weights(cfg)
    assert r.clip == str(placed)
    described = describe_weights(cfg, r)["clip"]
    assert described.startswith("laion2b_s34b_b79k (") and hashlib.sha256(b"checkpoint").hexdigest() in described


def test_metadata_names_random_and_explicit_files(tmp_path):
    from annotator.models import ResolvedWeights, describe_weights

    assert describe_weights(EngineConfig(model="tiny-random", saliency="found-tiny-random", device="cpu"),
                            ResolvedWeights()) == {"clip": "random (seed 0)", "dino": "random (seed 0)",
                                                   "found": "random (seed 0)"}
    ckpt = tmp_path / "my.bin"
    ckpt.write_bytes(b"x")
    cfg = EngineConfig(model="ViT-B-32", pretrained=str(ckpt), saliency="none", device="cpu")
    assert describe_weights(cfg, ResolvedWeights(clip=str(ckpt))) == {
        "clip": f"my.bin sha256:{hashlib.sha256(b'x').hexdigest()}"}
    assert describe_weights(EngineConfig(model="ViT-B-32", pretrained="random", saliency="found", device="cpu"),
                            ResolvedWeights())["clip"] == "random (seed 0)"
