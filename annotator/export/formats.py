"""What each export format honours: its options, its optional dependencies, whether it
writes a folder; and the checks that refuse an option a format would silently ignore.

A format is one :class:`Exporter` in :data:`annotator.export.EXPORTERS`::

    "coco": Exporter(coco.export, honours=("iscrowd", "images_root", ...)),

``honours`` names :class:`~annotator.export.common.ExportOptions` fields beyond
:data:`COMMON_OPTIONS` (which every format takes); a CLI flag is the field's name with
dashes (``images_root`` -> ``--images-root``). ``needs`` names a field that another one
only means something with, per format (coco's ``--polygon-tolerance`` needs
``--polygons``). ``extras`` names the optional modules the format imports and the
``annotator[extra]`` that installs each: a missing one is
:class:`MissingExtraError` (exit 2 with the install command), checked before any work.
``writes_folder=False``: the format writes no files under ``--to`` (a database, a
server): ``--to`` is refused and the export is not staged.

The checks (:func:`check_options` on an ``ExportOptions``, :func:`check_given` on the
CLI flags the user gave) raise :class:`~annotator.export.common.ExportError` naming the
option and the formats that take it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from annotator.export.common import ExportError, ExportOptions, ExportResult

__all__ = [
    "COMMON_OPTIONS",
    "PUSH_ONLY",
    "Exporter",
    "MissingExtraError",
    "check_given",
    "check_options",
    "flag",
    "install_command",
    "formats_taking",
]

ExportFn = Callable[[str, str, ExportOptions], ExportResult]

#: ExportOptions fields every format honours.
COMMON_OPTIONS = frozenset({"classes", "min_area", "min_score", "storage_options", "image_storage_options",
                            "partial"})
#: Fields that are one option on the command line (``--instances CLASSES``).
_PART_OF = {"instance_classes": "instances"}
#: CLI-only options of the Label Studio push: they mean something only with ``--push``.
PUSH_ONLY = ("project", "create_project", "api_key", "page_size")


class MissingExtraError(ExportError, ImportError):
    """An optional dependency of a format is not installed (the message holds the
    ``pip install`` command). An ExportError (exit 2), and an ImportError for callers
    that catch those."""


def install_command(extra: str) -> str:
    """``pip install 'annotator[EXTRA]'``, and the extra's own requirements as the
    installed package declares them (so that a hint never brings a version outside the
    project's pin): ``(or: pip install 'label-studio-sdk<2.1,>=1.0')``."""
    specs = []
    try:
        from importlib.metadata import requires

        for line in requires("annotator") or []:
            name, _, marker = line.partition(";")
            if f'extra == "{extra}"' in marker.replace("'", '"'):
                specs.append(name.strip().replace(" ", ""))
    except Exception:  # noqa: BLE001 - not installed as a distribution: the extra alone
        pass
    alternative = f" (or: pip install {' '.join(repr(s) for s in specs)})" if specs else ""
    return f"pip install 'annotator[{extra}]'{alternative}"


def flag(name: str) -> str:
    """``images_root`` -> ``--images-root``."""
    return "--" + _PART_OF.get(name, name).replace("_", "-")


@dataclass(frozen=True)
class Exporter:
    """One export format: ``run(output, to, options) -> ExportResult`` and what it honours.

    Attributes:
        run: the exporter; ``to`` is the folder to write (a staging folder beside the
            final ``--to`` when called through :func:`annotator.export.export`).
        honours: ExportOptions fields (beyond :data:`COMMON_OPTIONS`) it reads; ``push``
            for the Label Studio push mode.
        needs: ``{field: other field}``: ``field`` is honoured only with ``other`` given.
        extras: ``(module, extra)`` pairs: optional modules it imports, and the
            ``annotator[extra]`` that installs each.
        writes_folder: False for a format that writes into a database or a server.
    """

    run: ExportFn
    honours: AbstractSet[str] = frozenset()
    needs: Mapping[str, str] = field(default_factory=dict)
    extras: tuple[tuple[str, str], ...] = ()
    writes_folder: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "honours", frozenset(self.honours))
        known = {f.name for f in dataclasses.fields(ExportOptions)} | {"push"}
        unknown = (set(self.honours) | set(self.needs) | set(self.needs.values())) - known
        if unknown:
            raise ValueError(f"Exporter declares options ExportOptions does not have: {sorted(unknown)}")

    def __call__(self, output: str, to: str, options: ExportOptions) -> ExportResult:
        return self.run(output, to, options)

    def takes(self, name: str) -> bool:
        """Whether the field (or ``push``) ``name`` is honoured."""
        name = _PART_OF.get(name, name)
        return name in COMMON_OPTIONS or name in self.honours

    def require_extras(self, format: str) -> None:
        """Import every optional module; a missing one is :class:`MissingExtraError`."""
        for module, extra in self.extras:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MissingExtraError(
                    f"--format {format} needs the {module} package, which is not installed "
                    f"({type(exc).__name__}): {install_command(extra)}"
                ) from None


def formats_taking(name: str, exporters: Mapping[str, Exporter]) -> list[str]:
    """The formats that honour the field ``name``, sorted."""
    return sorted(fmt for fmt, e in exporters.items() if e.takes(name))


def _not_honoured(name: str, format: str, exporters: Mapping[str, Exporter]) -> ExportError:
    takers = formats_taking(name, exporters)
    where = f"formats that take it: {', '.join(takers)}" if takers else "no format takes it"
    return ExportError(f"{flag(name)} is not honoured by --format {format}; {where}")


def check_options(format: str, options: ExportOptions, exporters: Mapping[str, Exporter]) -> None:
    """Refuse an ExportOptions field that differs from its default and that ``format``
    does not honour (the library's form of :func:`check_given`)."""
    defaults = ExportOptions()
    given = [f.name for f in dataclasses.fields(ExportOptions)
             if getattr(options, f.name) != getattr(defaults, f.name)]
    _check(format, given, exporters)


def check_given(format: str, given: Iterable[str], exporters: Mapping[str, Exporter]) -> None:
    """Refuse a CLI option (by its argparse ``dest``) that the user gave and that
    ``format`` does not honour; push options without ``--push``; ``--to`` with a format
    or mode that writes no folder."""
    given = set(given)
    exporter = exporters[format]
    for name in PUSH_ONLY:
        if name in given and "push" not in given:
            raise ExportError(f"{flag(name)} is used only with --push (formats that take it: "
                              f"{', '.join(formats_taking('push', exporters))})")
    if "to" in given and (not exporter.writes_folder or "push" in given):
        mode = "--push" if "push" in given else f"--format {format}"
        raise ExportError(f"--to is not honoured with {mode}: it writes no files")
    fields = {f.name for f in dataclasses.fields(ExportOptions)} | {"push"}
    _check(format, [name for name in given if name in fields], exporters)


def _check(format: str, given: Iterable[str], exporters: Mapping[str, Exporter]) -> None:
    exporter = exporters[format]
    given = list(given)
    for name in sorted(given, key=flag):
        if not exporter.takes(name):
            raise _not_honoured(name, format, exporters)
    for name in sorted(given, key=flag):
        needed = exporter.needs.get(_PART_OF.get(name, name))
        if needed is not None and needed not in given:
            raise ExportError(f"{flag(name)} is honoured by --format {format} only with {flag(needed)}")
