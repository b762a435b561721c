"""Exports are atomic (issue 22.3): built in a staging folder beside ``--to`` and swapped
in when complete, so that ``--to`` holds exactly one export; a failed or interrupted
export leaves the previous one as it was. Walks every format that writes files."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from annotator.export import EXPORTERS
from annotator.export.__main__ import main
from annotator.export.staging import MARKER_NAME

#: Per format: options of a first export that write files a default export does not.
RICH = {
    "coco": ["--zip", "--polygons"],
    "cvat-masks": ["--instances"],
    "hf": ["--hf-images", "path"],
    "labelstudio": ["--instances"],
    "masks": ["--confidence"],
    "yolo": ["--val-fraction", "0.5", "--yolo-images", "copy"],
    "yolo-semantic": ["--val-fraction", "0.5"],
}
FORMATS = sorted(f for f, e in EXPORTERS.items() if e.writes_folder)


def test_every_format_that_writes_files_is_walked():
    assert sorted(RICH) == FORMATS


def _files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file (links: their target) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "link:" + str(p.readlink())
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def _skip_without_extras(fmt: str) -> None:
    for module, _ in EXPORTERS[fmt].extras:
        pytest.importorskip(module)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_re_export_leaves_exactly_its_own_files(fmt, synthetic_output, tmp_path, capsys):
    _skip_without_extras(fmt)
    output, _, _ = synthetic_output
    to, fresh = tmp_path / "exports" / fmt, tmp_path / "fresh" / fmt
    assert main([output, "--format", fmt, "--to", str(to), *RICH[fmt]]) == 0
    rich = set(_files(to))
    assert main([output, "--format", fmt, "--to", str(to)]) == 0
    assert main([output, "--format", fmt, "--to", str(fresh)]) == 0
    again = set(_files(to))
    assert again == set(_files(fresh)), again ^ set(_files(fresh))
    if fmt in ("hf", "labelstudio"):  # the same files, other contents
        assert _files(to)[fmt == "hf" and "state.json" or "tasks.json"] != "" and rich == again
        if fmt == "labelstudio":
            assert _files(to)["tasks.json"] == _files(fresh)["tasks.json"]
    else:
        assert rich != again, "the first export's options must write files a default export does not"
    assert MARKER_NAME in again and _leftovers(to.parent) == []
    printed = capsys.readouterr().out
    assert str(to) in printed and ".partial-" not in printed  # the summary names the target, not the staging


class _Fail:
    """``install()``: the ``after``-th write to a local file raises ``exc``."""

    def __init__(self, exc: BaseException, after: int = 3):
        self.exc, self.after, self.count = exc, after, 0

    def install(self, monkeypatch) -> None:
        from fsspec.implementations.local import LocalFileOpener

        def write(opener, data, *args):
            self.count += 1
            if self.count >= self.after:
                raise self.exc
            return opener.f.write(data, *args)

        monkeypatch.setattr(LocalFileOpener, "write", write, raising=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("failure,rc,said", [
    (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted"),
], ids=["full-disk", "sigint"])
def test_a_failed_export_leaves_the_previous_one(fmt, failure, rc, said, synthetic_output, tmp_path, monkeypatch,
                                                 capsys):
    _skip_without_extras(fmt)
    output, _, _ = synthetic_output
    to = tmp_path / "exports" / fmt
    assert main([output, "--format", fmt, "--to", str(to), *RICH[fmt]]) == 0
    before = _files(to)
    capsys.readouterr()
    fail = _Fail(failure)
    fail.install(monkeypatch)
    assert main([output, "--format", fmt, "--to", str(to)]) == rc
    assert fail.count >= fail.after, "the failure was not injected"
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and said in err[0] and "left as it was" in err[0], err
    assert _files(to) == before
    assert _leftovers(to.parent) == []


def test_to_a_file_is_refused_before_any_work(synthetic_output, tmp_path, capsys):
    output, _, _ = synthetic_output
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main([output, "--format", "coco", "--to", str(target)]) == 2
    assert "expected a folder" in capsys.readouterr().err
    assert target.read_text() == "mine" and _leftovers(tmp_path) == []


def test_an_unwritable_to_is_refused_before_any_work(synthetic_output, tmp_path, capsys):
    output, _, _ = synthetic_output
    (tmp_path / "a-file").write_text("mine")
    assert main([output, "--format", "masks", "--to", str(tmp_path / "a-file" / "masks")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --to ") and "cannot write there" in err and len(err.strip().splitlines()) == 1


def test_a_folder_of_other_files_is_not_replaced(synthetic_output, tmp_path, capsys):
    output, _, _ = synthetic_output
    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main([output, "--format", "masks", "--to", str(mine)]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and _leftovers(tmp_path) == []


def test_the_default_target_replaces_an_export_of_an_older_version(synthetic_output, capsys):
    """OUTPUT/exports/FORMAT is ours by construction: replaced without the marker."""
    output, _, _ = synthetic_output
    stale = Path(output) / "exports" / "masks" / "stale_conf.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    assert main([output, "--format", "masks"]) == 0
    assert not stale.exists() and (stale.parent / "labels.txt").exists()


_SIGINT_SCRIPT = """
import os, signal, sys
from fsspec.implementations.local import LocalFileOpener
from annotator.export.__main__ import main

writes = 0

def write(opener, data, *args):
    global writes
    writes += 1
    if writes == 3:
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of the export
    return opener.f.write(data, *args)

LocalFileOpener.write = write
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_sigint_is_exit_130_with_the_previous_export_intact(synthetic_output, tmp_path):
    import subprocess
    import sys

    output, _, _ = synthetic_output
    to = tmp_path / "exports" / "masks"
    assert main([output, "--format", "masks", "--to", str(to), "--confidence"]) == 0
    before = _files(to)
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _SIGINT_SCRIPT, output, "--format", "masks", "--to", str(to)],
                         capture_output=True, text=True, cwd=repo, timeout=300)
    assert run.returncode == 130, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [f"error: interrupted by SIGINT; {to} was left as it was"]
    assert _files(to) == before and _leftovers(to.parent) == []
