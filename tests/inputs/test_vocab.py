import pytest

from annotator.inputs.vocab import (
    MAX_LINE_CHARS,
    Vocabulary,
    VocabularyError,
    load_vocabulary,
    parse_vocabulary,
)


@pytest.mark.parametrize(
    "text, names, synonyms_of_1",
    [
        ("cat\ndog\n", ["background", "cat", "dog"], ("cat",)),
        ("# c\n\n  cat  # pet\n\ndog", ["background", "cat", "dog"], ("cat",)),
        ("cat: cat; kitten ;\ndog", ["background", "cat", "dog"], ("cat", "kitten")),
        ("cat\nbackground\ndog", ["background", "cat", "dog"], ("cat",)),
        ("Background: sky; wall\ncat", ["background", "cat"], ("cat",)),
        ("\ufeffcat\n", ["background", "cat"], ("cat",)),
        ("potted plant\ntv/monitor", ["background", "potted plant", "tv/monitor"], ("potted plant",)),
    ],
)
def test_parse_table(text, names, synonyms_of_1):
    v = parse_vocabulary(text)
    assert v.names == names
    assert v.classes[1].synonyms == synonyms_of_1


def test_background_synonyms_kept_when_given():
    v = parse_vocabulary("cat\nbackground: sky; wall")
    assert v.classes[0].synonyms == ("sky", "wall")


def test_prompts_every_synonym_in_every_template():
    v = parse_vocabulary("cat: cat; kitten")
    assert v.prompts(["a photo of a {}", "a {}"])[1] == ["a photo of a cat", "a cat", "a photo of a kitten", "a kitten"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty vocabulary"),
        ("# only comments\n\n", "empty vocabulary"),
        ("background\n", "only background"),
        ("cat\nCat \n", "duplicate class 'Cat'.*line 1"),
        ("cat\n  CAT", "duplicate"),
        ("cat:\n", "no prompt after ':'"),
        (": kitten", "empty name"),
        ("x" * (MAX_LINE_CHARS + 1), f"limited to {MAX_LINE_CHARS} characters"),
        ("a\tb\x01", "control characters"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(VocabularyError, match=match):
        parse_vocabulary(text)


def test_file_errors(tmp_path):
    with pytest.raises(VocabularyError, match="not found"):
        load_vocabulary(tmp_path / "missing.txt")
    with pytest.raises(VocabularyError, match="directory"):
        load_vocabulary(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(VocabularyError, match="expected UTF-8.*offset 3"):
        load_vocabulary(bad)


def test_file_roundtrip(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("cat\ncoffee cup: coffee cup; cup of coffee\n", encoding="utf-8")
    v = load_vocabulary(p)
    assert v.names == ["background", "cat", "coffee cup"]
    assert v.to_json()[2] == {"name": "coffee cup", "synonyms": ["coffee cup", "cup of coffee"]}
    assert Vocabulary.from_names(["cat", "coffee cup: coffee cup; cup of coffee"]).names == v.names
