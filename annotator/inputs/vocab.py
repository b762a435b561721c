"""Vocabulary files: the classes to segment and the prompts that describe them.

Format (UTF-8 text, one class per line)::

    # comments and blank lines are ignored
    cat
    coffee cup: coffee cup; cup of coffee      # name: prompt one; prompt two
    person: person; astronaut

A line is ``name`` or ``name: synonym; synonym; ...``. Each synonym is put into every
prompt template (``"a photo of a {}"`` by default); the class's text embedding is the
mean of the L2-normalised embeddings of all its prompts, renormalised (prompt
ensembling). ``background`` is always class 0: it is added when absent and moved to
index 0 when present. Class index ``c >= 1`` is the COCO ``category_id`` ``c``.

Everything here is validated before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

BACKGROUND = "background"
MAX_LINE_CHARS = 1000
MAX_NAME_CHARS = 200
MAX_CLASSES = 10_000


class VocabularyError(ValueError):
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


def parse_vocabulary(text: str, source: str = "<text>") -> Vocabulary:
    """Parse vocabulary text (see the module docstring); raises :class:`VocabularyError`."""
    text = text.lstrip("\ufeff")
    classes: list[VocabClass] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}, line {lineno}"
        if len(raw) > MAX_LINE_CHARS:
            raise VocabularyError(f"{where}: lines are limited to {MAX_LINE_CHARS} characters, got {len(raw)}")
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cls = _parse_line(line, where)
        key = " ".join(cls.name.casefold().split())
        if key in seen:
            raise VocabularyError(
                f"{where}: duplicate class {cls.name!r} (same as line {seen[key]} after trimming and case-folding)"
            )
        seen[key] = lineno
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
