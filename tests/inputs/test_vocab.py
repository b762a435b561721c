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


# ------------------------------------------------ one meaning per line (issue 22.7)


@pytest.mark.parametrize(
    "text, names",
    [
        ("c# code: blue", ["background", "c# code"]),  # '#' inside a word is part of the name
        ("c#\nf#: f sharp", ["background", "c#", "f#"]),
        ("cat # a pet\ndog\t# another", ["background", "cat", "dog"]),  # after whitespace: a comment
        ("#cat\n   # dog\nbird", ["background", "bird"]),  # at the line start: a comment
        ("cat: cat; kitten # small ones", ["background", "cat"]),
        ("tv/monitor: tv; monitor#2", ["background", "tv/monitor"]),
    ],
)
def test_hash_starts_a_comment_only_at_line_start_or_after_whitespace(text, names):
    v = parse_vocabulary(text)
    assert v.names == names
    if text.startswith("c# code"):
        assert v.classes[1].synonyms == ("blue",)
    if text.startswith("tv/monitor"):
        assert v.classes[1].synonyms == ("tv", "monitor#2")


def test_lines_are_nfc_normalised():
    decomposed = "cafe\u0301"  # e + combining acute
    v = parse_vocabulary(f"{decomposed}: {decomposed} table")
    assert v.names[1] == "caf\u00e9" and v.classes[1].synonyms == ("caf\u00e9 table",)


INVISIBLE_OR_CONFUSABLE = [
    ("red\u200b", "U+200B"),  # zero-width space
    ("r\u200ded", None),  # zero-width joiner (allowed alone, a duplicate here)
    ("\ufeffred", "U+FEFF"),  # a BOM inside the file
    ("red\u2060", "U+2060"),  # word joiner
    ("r\u00aded", "U+00AD"),  # soft hyphen
    ("red\u034f", "U+034F"),  # combining grapheme joiner (default-ignorable, not Cf)
    ("red\ufe0f", "U+FE0F"),  # variation selector
    ("\u202ered", "U+202E"),  # right-to-left override
    ("RED", None),  # case
    ("\uff52\uff45\uff44", None),  # full-width (NFKC)
    ("r\u0435d", None),  # Cyrillic e
    ("r\u0435\u0501", None),  # Cyrillic e and d
    ("\U0001d42b\U0001d41e\U0001d41d", None),  # mathematical bold (NFKC)
    ("red\u00a0", None),  # no-break space, trimmed
]


@pytest.mark.parametrize("other, code", INVISIBLE_OR_CONFUSABLE, ids=[ascii(o) for o, _ in INVISIBLE_OR_CONFUSABLE])
def test_names_differing_only_by_invisible_or_confusable_characters_are_refused(other, code):
    """`red` and `red` + a zero-width space (and every other invisible or look-alike
    variant) are one class: refused, naming both lines and showing the code points."""
    with pytest.raises(VocabularyError) as info:
        parse_vocabulary(f"red\n{other}\n", source="v.txt")
    msg = str(info.value)
    assert msg.startswith("v.txt, line 2: duplicate class ") and "'red' on line 1" in msg, msg
    if other.strip().casefold() != "red":
        assert f"as code points {ascii(other.strip())}" in msg, msg


@pytest.mark.parametrize("name, code", [(o, c) for o, c in INVISIBLE_OR_CONFUSABLE if c])
def test_a_name_holding_an_invisible_character_is_refused(name, code):
    with pytest.raises(VocabularyError) as info:
        parse_vocabulary(f"cat\n{name}\n")
    assert "line 2: class name " in str(info.value)
    assert f"holds an invisible or control character ({code} " in str(info.value)


def test_joiners_some_scripts_need_are_kept():
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ inside a Persian word
    emoji = "\U0001f469\u200d\U0001f4bb"  # woman technologist (ZWJ sequence)
    assert parse_vocabulary(f"{persian}\n{emoji}").names[1:] == [persian, emoji]


def test_look_alike_background_is_refused():
    with pytest.raises(VocabularyError, match=r"line 2: class 'b\u0430ckground' looks like 'background'"):
        parse_vocabulary("cat\nb\u0430ckground")
    assert parse_vocabulary("cat\nBACKGROUND: sky").classes[0].synonyms == ("sky",)


def test_from_names_follows_the_same_rules():
    assert Vocabulary.from_names(["c# code", "cat"]).names == ["background", "c# code", "cat"]
    with pytest.raises(VocabularyError, match="duplicate"):
        Vocabulary.from_names(["red", "red\u200b"])
