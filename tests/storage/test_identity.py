"""Resume identity: every weight file the engine loads counts by its sha256."""

from __future__ import annotations

import shutil

from annotator.config import EngineConfig
from annotator.models import ResolvedWeights, describe_weights
from annotator.storage.identity import config_hash, setting_differences, weights_identity


def _identity(config: EngineConfig, weights: ResolvedWeights) -> dict:
    return {"engine": config.identity(), "weights": weights_identity(describe_weights(config, weights))}


def test_a_swapped_found_file_is_a_changed_configuration(tmp_path):
    (tmp_path / "dino.pth").write_bytes(b"dino weights")
    (tmp_path / "found.pt").write_bytes(b"found weights, release")
    config = EngineConfig(model="toy", saliency="found", weights_dir=str(tmp_path))
    weights = ResolvedWeights(dino=str(tmp_path / "dino.pth"), found=str(tmp_path / "found.pt"))
    before = _identity(config, weights)
    assert set(before["weights"]) == {"clip", "dino", "found"}
    assert before["weights"]["found"].startswith("sha256:")

    (tmp_path / "found.pt").write_bytes(b"found weights, retrained")  # same path, other bytes
    after = _identity(config, weights)
    assert config_hash(after) != config_hash(before)
    assert any(d.startswith("weights.found ") for d in setting_differences(before, after))

    (tmp_path / "dino.pth").write_bytes(b"dino weights, another checkpoint")
    assert config_hash(_identity(config, weights)) != config_hash(after)


def test_the_same_bytes_elsewhere_are_the_same_configuration(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "dino.pth").write_bytes(b"dino weights")
        (tmp_path / folder / "found.pt").write_bytes(b"found weights")
    shutil.move(tmp_path / "b" / "found.pt", tmp_path / "b" / "found-copy.pt")
    config = EngineConfig(model="toy", saliency="found")
    a = _identity(config, ResolvedWeights(dino=str(tmp_path / "a/dino.pth"), found=str(tmp_path / "a/found.pt")))
    b = _identity(config, ResolvedWeights(dino=str(tmp_path / "b/dino.pth"), found=str(tmp_path / "b/found-copy.pt")))
    assert config_hash(a) == config_hash(b)


def test_weights_identity_keeps_what_is_not_a_file():
    assert weights_identity({"clip": "laion2b_s34b_b79k", "dino": "random (seed 0)",
                             "found": "found.pt sha256:" + "ab" * 32}) == {
        "clip": "laion2b_s34b_b79k", "dino": "random (seed 0)", "found": "sha256:" + "ab" * 32}
    assert weights_identity({"clip": "my tag (ViT.pt sha256:" + "cd" * 32 + ")"}) == {"clip": "sha256:" + "cd" * 32}
