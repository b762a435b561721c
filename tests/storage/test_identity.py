"""Which settings changed, as the refusal to reuse an output says it (issue 23: the
vocabulary difference shown as the classes added and removed, not two lists cut at the
same place)."""

from __future__ import annotations

import pytest

from annotator.inputs.vocab import Vocabulary
from annotator.storage.identity import config_hash, setting_differences
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
