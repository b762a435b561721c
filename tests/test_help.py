"""Every command's ``--help``: each option names its default (or is a flag, or required),
and no description shows raw reST markup (issue 23: "defaults are missing", "reduce
--help shows raw reST").

The parsers are taken from each command's own ``main`` (its ``parse_args`` is stopped
before anything runs), so a command that builds its parser inside ``main`` is covered
too, and a new option is checked the day it is added.
"""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

#: Every command of the package (a module with main(), or a package with __main__.main()).
COMMANDS = ["annotator.run", "annotator.reduce", "annotator.report", "annotator.export", "annotator.serve"]

#: Actions that take no value: their default is "not given".
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                 argparse._CountAction, argparse._HelpAction, argparse._VersionAction,
                 argparse.BooleanOptionalAction)
_REST = re.compile(r":(?:mod|func|class|meth|data|attr):`|``")


class _Stop(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    def stop(self, *args, **kwargs):
        raise _Stop(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    mod = importlib.import_module(module)
    entry = getattr(mod, "main", None) or importlib.import_module(f"{module}.__main__").main
    with pytest.raises(_Stop) as stopped:
        entry([])
    return stopped.value.parser


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _all(monkeypatch):
    for module in COMMANDS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # a command not in this tree (yet)
                continue
            raise
        yield from _parsers(_parser(module, monkeypatch), module)


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def test_every_option_names_its_default(monkeypatch):
    missing = []
    checked = 0
    for name, parser in _all(monkeypatch):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue  # positionals are required by definition
            if isinstance(action, _FLAG_ACTIONS) or action.required:
                continue
            checked += 1
            text = _expanded_help(parser, action)
            if not re.search(r"(?i)\bdefault\b", text):
                missing.append(f"{name} {'/'.join(action.option_strings)}: {text!r}")
    assert checked > 40, checked  # the parsers were found
    assert not missing, "options whose help does not name their default:\n" + "\n".join(missing)


def test_no_help_says_default_none(monkeypatch):
    """``Default: None`` is Python, not an answer: say what happens when it is not given."""
    bad = [f"{name} {'/'.join(a.option_strings)}" for name, parser in _all(monkeypatch) for a in parser._actions
           if a.option_strings and re.search(r"(?i:default):? None\b", _expanded_help(parser, a))]
    assert not bad, bad


def test_descriptions_are_plain_text(monkeypatch):
    for name, parser in _all(monkeypatch):
        text = parser.format_help()
        assert not _REST.search(text), f"{name} --help shows reST markup:\n{text[:800]}"
