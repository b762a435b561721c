"""What makes two runs the same run. Which settings changed, as the refusal to reuse an
output says it (issue 23: the vocabulary difference shown as the classes added and
removed, not two lists cut at the same place); every weight file the engine loads counts
by its sha256 (issue 21.8)."""

from __future__ import annotations

import shutil

import pytest

from annotator.config import EngineConfig
from annotator.inputs.vocab import Vocabulary
from annotator.models import ResolvedWeights, describe_weights
from annotator.storage.identity import config_hash, setting_differences, weights_identity
from annotator.storage.manifest import Manifest, OutputConflictError

# Long shared prefix: cut at 80 characters, both lists used to read the same.
COMMON = [f"a long class name number {i}" for i in range(12)]


def _identity(names: list[str]) -> dict:
    return {"engine": {"model": "toy"}, "vocabulary": Vocabulary.from_names(names).to_json(), "source": "/data"}


def test_vocabulary_difference_is_the_classes_added_and_removed():
    before = _identity([*COMMON, "dog", "bird"])
    now = _identity([*COMMON, "dog", "cat", "person: person; astronaut"])
    assert setting_differences(before, now) == ['vocabulary: added "cat", "person"; removed "bird"']


def test_vocabulary_synonyms_and_order():
    before, now = _identity(["cat", "person"]), _identity(["cat", "person: person; astronaut"])
    assert setting_differences(before, now) == ['vocabulary: changed "person"']
    before, now = _identity(["cat", "dog"]), _identity(["dog", "cat"])
    assert setting_differences(before, now) == ["vocabulary: the same items in another order"]


def test_many_changes_are_counted():
    before, now = _identity(["x"]), _identity(["x", *COMMON])
    (line,) = setting_differences(before, now)
    assert line.startswith('vocabulary: added "a long class name number 0"') and line.endswith(" and 2 more")


def test_lists_of_strings_and_other_values():
    assert setting_differences({"templates": ["a photo of a {}"]}, {"templates": ["a photo of a {}", "{}"]}) == [
        'templates: added "{}"']
    assert setting_differences({"size": [1, 2]}, {"size": [1, 3]}) == ["size [1, 2] (now [1, 3])"]
    assert setting_differences({"engine": {"model": "a"}}, {"engine": {"model": "b"}}) == [
        'engine.model "a" (now "b")']


def test_refusal_message_shows_the_vocabulary_difference(tmp_path):
    before, now = _identity([*COMMON, "dog", "bird"]), _identity([*COMMON, "dog", "cat"])
    m = Manifest.create(str(tmp_path), config_hash(before), "f" * 16, 1, 10, settings=before)
    with pytest.raises(OutputConflictError) as err:
        m.check_compatible(config_hash(now), "f" * 16, settings=now)
    assert 'vocabulary: added "cat"; removed "bird"' in str(err.value)


def _weights_run_identity(config: EngineConfig, weights: ResolvedWeights) -> dict:
    return {"engine": config.identity(), "weights": weights_identity(describe_weights(config, weights))}


def test_a_swapped_found_file_is_a_changed_configuration(tmp_path):
    (tmp_path / "dino.pth").write_bytes(b"dino weights")
    (tmp_path / "found.pt").write_bytes(b"found weights, release")
    config = EngineConfig(model="toy", saliency="found", weights_dir=str(tmp_path))
    weights = ResolvedWeights(dino=str(tmp_path / "dino.pth"), found=str(tmp_path / "found.pt"))
    before = _weights_run_identity(config, weights)
    assert set(before["weights"]) == {"clip", "dino", "found"}
    assert before["weights"]["found"].startswith("sha256:")

    (tmp_path / "found.pt").write_bytes(b"found weights, retrained")  # same path, other bytes
    after = _weights_run_identity(config, weights)
    assert config_hash(after) != config_hash(before)
    assert any(d.startswith("weights.found ") for d in setting_differences(before, after))

    (tmp_path / "dino.pth").write_bytes(b"dino weights, another checkpoint")
    assert config_hash(_weights_run_identity(config, weights)) != config_hash(after)


def test_the_same_bytes_elsewhere_are_the_same_configuration(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "dino.pth").write_bytes(b"dino weights")
        (tmp_path / folder / "found.pt").write_bytes(b"found weights")
    shutil.move(tmp_path / "b" / "found.pt", tmp_path / "b" / "found-copy.pt")
    config = EngineConfig(model="toy", saliency="found")
    a = _weights_run_identity(config, ResolvedWeights(dino=str(tmp_path / "a/dino.pth"),
                                                      found=str(tmp_path / "a/found.pt")))
    b = _weights_run_identity(config, ResolvedWeights(dino=str(tmp_path / "b/dino.pth"),
                                                      found=str(tmp_path / "b/found-copy.pt")))
    assert config_hash(a) == config_hash(b)


def test_weights_identity_keeps_what_is_not_a_file():
    assert weights_identity({"clip": "laion2b_s34b_b79k", "dino": "random (seed 0)",
                             "found": "found.pt sha256:" + "ab" * 32}) == {
        "clip": "laion2b_s34b_b79k", "dino": "random (seed 0)", "found": "sha256:" + "ab" * 32}
    assert weights_identity({"clip": "my tag (ViT.pt sha256:" + "cd" * 32 + ")"}) == {"clip": "sha256:" + "cd" * 32}
