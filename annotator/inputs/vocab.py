"""Vocabulary files: the classes to segment and the prompts that describe them.

Format (UTF-8 text, one class per line)::

    # comments and blank lines are ignored
    cat
    coffee cup: coffee cup; cup of coffee      # name: prompt one; prompt two
    person: person; astronaut
    c# code                                    # '#' inside a word is part of the name

A line is ``name`` or ``name: synonym; synonym; ...``: the first ``:`` ends the name
and starts the prompt list, ``;`` separates prompts. ``#`` starts a comment only at
the start of a line or after whitespace (space or tab), so ``c# code`` is the class
``c# code`` and ``cat  # a pet`` the class ``cat``. Lines are NFC-normalised. Two names
that differ only by case, Unicode compatibility forms (NFKC: full-width letters,
ligatures), invisible characters (category Cf, e.g. a zero-width space, and the other
default-ignorable code points) or Cyrillic/Greek letters that look like Latin ones are
refused as duplicates, naming both lines; a name holding an invisible character other
than the zero-width (non-)joiner some scripts need is refused. Each synonym is put into every
prompt template (``"a photo of a {}"`` by default); the class's text embedding is the
mean of the L2-normalised embeddings of all its prompts, renormalised (prompt
ensembling). ``background`` is always class 0: it is added when absent and moved to
index 0 when present. Class index ``c >= 1`` is the COCO ``category_id`` ``c``.

Everything here is validated before any model is loaded.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from annotator.errors import AnnotatorError

BACKGROUND = "background"
MAX_LINE_CHARS = 1000
MAX_NAME_CHARS = 200
MAX_CLASSES = 10_000


#: ``#`` at the start of a line or after whitespace starts a comment (``c# code`` keeps its ``#``).
_COMMENT = re.compile(r"(?:^|[ \t])#")

#: Invisible code points a name may hold: the zero-width non-joiner and joiner, which
#: Persian, Indic scripts and emoji sequences need. Any other format character (Cf) is refused.
_ALLOWED_INVISIBLE = frozenset("\u200c\u200d")

#: Default-ignorable code points outside category Cf (fillers, variation selectors, the
#: combining grapheme joiner): invisible too, left out of the duplicate comparison.
_IGNORABLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0)))
)

#: Cyrillic and Greek letters (lower case: names are compared case-folded) whose upper or
#: lower case looks like a Latin letter, mapped to it for the duplicate comparison (a
#: subset of Unicode's confusables; NFKC already folds full-width and mathematical forms).
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ӏ": "l", "һ": "h",
    "ԛ": "q", "ԝ": "w", "ү": "y",
    "α": "a", "β": "b", "ε": "e", "η": "h", "ι": "i", "κ": "k", "μ": "m", "ν": "n", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "y", "χ": "x", "ζ": "z",
})


def name_skeleton(name: str) -> str:
    """The form two class names are compared in: NFKC, case-folded, without invisible
    characters (category Cf and the other default-ignorable code points), Cyrillic/Greek
    look-alikes mapped to Latin, whitespace runs as one space. Equal skeletons are duplicates."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf" and ch not in _IGNORABLE)
    return " ".join(unicodedata.normalize("NFKC", visible).translate(_LOOKALIKES).split())


class VocabularyError(AnnotatorError, ValueError):
    """A vocabulary file or list that cannot be used; the message says why and where."""


@dataclass(frozen=True)
class VocabClass:
    """One class: its display name and the phrases put into the prompt templates."""

    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """Ordered classes; index 0 is always ``background``."""

    classes: tuple[VocabClass, ...]
    source: str = field(default="<list>", compare=False)

    def __post_init__(self) -> None:
        if not self.classes or self.classes[0].name != BACKGROUND:
            raise VocabularyError(
                f"class 0 must be {BACKGROUND!r}, got "
                f"{self.classes[0].name if self.classes else 'no classes'!r}"
            )

    @property
    def names(self) -> list[str]:
        """Class names in index order (``names[0] == "background"``)."""
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def prompts(self, templates: list[str] | tuple[str, ...]) -> list[list[str]]:
        """Prompt strings per class: every synonym in every template.

        Returns a list (one entry per class) of lists of prompt strings.
        """
        return [[t.format(s) for s in c.synonyms for t in templates] for c in self.classes]

    def to_json(self) -> list[dict]:
        """JSON-ready description (written into run metadata)."""
        return [{"name": c.name, "synonyms": list(c.synonyms)} for c in self.classes]

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...], source: str = "<list>") -> Vocabulary:
        """Build from lines in the file syntax (``name`` or ``name: a; b``)."""
        return parse_vocabulary("\n".join(names), source=source)


def _parse_line(line: str, where: str) -> VocabClass:
    if ":" in line:
        name, _, rest = line.partition(":")
        synonyms = [s.strip() for s in rest.split(";")]
        synonyms = [s for s in synonyms if s]
        name = name.strip()
        if not synonyms:
            raise VocabularyError(f"{where}: expected 'name: prompt; prompt', got no prompt after ':' in {line!r}")
    else:
        name = line.strip()
        synonyms = [name]
    if not name:
        raise VocabularyError(f"{where}: expected a class name, got an empty name in {line!r}")
    if len(name) > MAX_NAME_CHARS:
        raise VocabularyError(f"{where}: class names are limited to {MAX_NAME_CHARS} characters, got {len(name)}")
    if any(ord(ch) < 32 for ch in name):
        raise VocabularyError(f"{where}: control characters are not allowed in class names, got {name!r}")
    return VocabClass(name=name, synonyms=tuple(synonyms))


def _refuse_invisible(name: str, where: str) -> None:
    hidden = [ch for ch in name if ch not in _ALLOWED_INVISIBLE
              and (unicodedata.category(ch) in ("Cf", "Cc", "Cs") or ch in _IGNORABLE)]
    if hidden:
        what = ", ".join(dict.fromkeys(f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')}" for ch in hidden))
        raise VocabularyError(f"{where}: class name {name!r} holds an invisible or control character ({what}); "
                              "remove it (names must look like what they are)")


def parse_vocabulary(text: str, source: str = "<text>") -> Vocabulary:
    """Parse vocabulary text (see the module docstring); raises :class:`VocabularyError`."""
    text = text.lstrip("\ufeff")
    classes: list[VocabClass] = []
    seen: dict[str, tuple[int, str]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}, line {lineno}"
        if len(raw) > MAX_LINE_CHARS:
            raise VocabularyError(f"{where}: lines are limited to {MAX_LINE_CHARS} characters, got {len(raw)}")
        line = _COMMENT.split(unicodedata.normalize("NFC", raw), maxsplit=1)[0].strip()
        if not line:
            continue
        cls = _parse_line(line, where)
        key = name_skeleton(cls.name)
        if key in seen:
            first_line, first = seen[key]
            shown = ("" if first.casefold() == cls.name.casefold()
                     else f"; as code points {ascii(cls.name)} and {ascii(first)}")
            raise VocabularyError(
                f"{where}: duplicate class {cls.name!r}: the same as {first!r} on line {first_line} once case, "
                f"compatibility forms (NFKC), invisible characters and look-alike letters are set aside{shown}"
            )
        if key == BACKGROUND and cls.name.casefold() != BACKGROUND:
            raise VocabularyError(f"{where}: class {cls.name!r} looks like {BACKGROUND!r} (class 0) but is not it"
                                  f"; as code points {ascii(cls.name)}")
        _refuse_invisible(cls.name, where)
        seen[key] = (lineno, cls.name)
        classes.append(cls)
        if len(classes) > MAX_CLASSES:
            raise VocabularyError(f"{source}: at most {MAX_CLASSES} classes are supported")
    foreground = [c for c in classes if c.name.casefold() != BACKGROUND]
    if not foreground:
        raise VocabularyError(
            f"{source}: expected at least one class besides {BACKGROUND!r}, got "
            f"{'an empty vocabulary' if not classes else 'only background'}"
        )
    given_bg = [c for c in classes if c.name.casefold() == BACKGROUND]
    bg = VocabClass(BACKGROUND, given_bg[0].synonyms if given_bg else (BACKGROUND,))
    return Vocabulary(classes=(bg, *foreground), source=source)


def load_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """Read a UTF-8 vocabulary file; every problem is a :class:`VocabularyError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise VocabularyError(f"vocabulary file not found: {str(p)!r}") from None
    except IsADirectoryError:
        raise VocabularyError(f"expected a vocabulary file, got a directory: {str(p)!r}") from None
    except OSError as e:
        raise VocabularyError(f"cannot read vocabulary file {str(p)!r}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VocabularyError(
            f"{p}: expected UTF-8 text, got an invalid byte at offset {e.start} (save the file as UTF-8)"
        ) from None
    return parse_vocabulary(text, source=str(p))
