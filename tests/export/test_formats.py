"""Every registry entry runs; the CLI maps its options and reports errors clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from annotator.export import (
    EXPORTERS,
    ExportError,
    ExportOptions,
    ExportResult,
    UnknownFormatError,
    export,
)
from annotator.export.__main__ import build_parser, main

# a format that writes into a database, not files, has its own smoke test against that
# database (tests/export/test_fiftyone.py); the registry test below checks that every
# format is covered by one or the other
FOLDER_FORMATS = sorted(name for name, exporter in EXPORTERS.items() if exporter.writes_folder)
DATABASE_FORMAT_TESTS = {"fiftyone": "tests/export/test_fiftyone.py"}


def test_every_format_has_a_smoke_test():
    assert set(EXPORTERS) == set(FOLDER_FORMATS) | set(DATABASE_FORMAT_TESTS)
    root = Path(__file__).resolve().parents[2]
    assert all((root / path).is_file() for path in DATABASE_FORMAT_TESTS.values())


@pytest.mark.parametrize("name", FOLDER_FORMATS)
def test_every_exporter_runs(name, synthetic_output, tmp_path):
    for module, _ in EXPORTERS[name].extras:
        pytest.importorskip(module)
    output, _, _ = synthetic_output
    result = EXPORTERS[name](output, str(tmp_path / name), ExportOptions())
    assert isinstance(result, ExportResult) and result.format == name
    assert result.paths and all(Path(p).exists() for p in result.paths)
    assert result.counts["annotations"] == 8 and result.counts["skipped_error_rows"] == 1


def test_unknown_format_lists_the_formats(synthetic_output):
    output, _, _ = synthetic_output
    with pytest.raises(UnknownFormatError, match=", ".join(sorted(EXPORTERS))):
        export(output, "nonesuch")


def test_cli_unknown_format(synthetic_output, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--format", "nonesuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown export format 'nonesuch'" in err and ", ".join(sorted(EXPORTERS)) in err


def test_cli_coco_with_options(synthetic_output, tmp_path, capsys):
    output, _, _ = synthetic_output
    to = tmp_path / "out"
    rc = main([output, "--format", "coco", "--to", str(to), "--classes", "cat, traffic light",
               "--min-area", "2", "--iscrowd", "1", "--zip", "--images-root", "imgs"])
    assert rc == 0
    doc = json.loads((to / "annotations" / "instances_default.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["cat", "traffic light"]
    assert {a["iscrowd"] for a in doc["annotations"]} == {1}
    assert min(a["area"] for a in doc["annotations"]) >= 2
    assert doc["images"][0]["file_name"] == "imgs/a/cat.jpg"
    assert (to / "coco.zip").exists()
    out = capsys.readouterr().out
    assert "coco: wrote 3 files" in out and "annotations=" in out


def test_cli_default_target(synthetic_output):
    output, _, _ = synthetic_output
    assert main([output, "--format", "masks", "--confidence"]) == 0
    assert (Path(output) / "exports" / "masks" / "a" / "cat_conf.png").exists()


def test_cli_unknown_class(synthetic_output, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--format", "coco", "--classes", "horse"]) == 2
    err = capsys.readouterr().err
    assert "'horse'" in err and "valid names" in err and "'traffic light'" in err


def test_cli_warns_when_nothing_is_exported(synthetic_output, tmp_path, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--format", "coco", "--to", str(tmp_path / "x"), "--min-score", "1.0"]) == 0
    assert "warning" in capsys.readouterr().err


def test_cli_bad_storage_options(synthetic_output, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--format", "coco", "--storage-options", "{nope"]) == 2
    assert "--storage-options" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.dest != "help":
            assert action.help, action.dest


def test_exports_and_report_on_an_fsspec_url(synthetic_output, tmp_path):
    """Everything goes through fsspec: a memory:// run folder works like a local one."""
    import uuid

    import fsspec

    from annotator.review.html_report import write_report

    output, expected, _ = synthetic_output
    url = f"memory://run-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for part in sorted((Path(output) / "parts").iterdir()):
        fs.pipe(f"{url}/parts/{part.name}", part.read_bytes())
    try:
        result = export(url, "coco", options=ExportOptions(zip=True))
        assert result.paths[0] == f"{url}/exports/coco/annotations/instances_default.json"
        doc = json.loads(fs.cat(result.paths[0]))
        assert len(doc["images"]) == len(expected)
        export(url, "masks")
        assert fs.exists(f"{url}/exports/masks/a/cat.png")
        report = write_report(url, samples=2, lowest=1)
        assert b"Annotation report" in fs.cat(report)
        assert fs.ls(f"{url}/previews")
    finally:
        fs.rm(url, recursive=True)


def test_cli_instances_polygons_and_labelstudio_objects(synthetic_output, tmp_path, capsys):
    pytest.importorskip("label_studio_sdk")
    output, _, _ = synthetic_output
    to = tmp_path / "coco"
    assert main([output, "--format", "coco", "--to", str(to), "--instances", "--polygons",
                 "--polygon-tolerance", "0"]) == 0
    doc = json.loads((to / "annotations" / "instances_default.json").read_text())
    assert all(isinstance(a["segmentation"], list) for a in doc["annotations"])
    printed = capsys.readouterr().out
    assert "instances=" in printed and "polygon_iou_mean=1.0" in printed
    ls = tmp_path / "ls"
    assert main([output, "--format", "labelstudio", "--to", str(ls), "--instances", "cat"]) == 0
    tasks = json.loads((ls / "tasks.json").read_text())
    ids = [r["id"] for t in tasks for r in t["predictions"][0]["result"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------- options a format honours (issue 20.4)

#: A valid value for every option of the CLI (a new option must be added here).
OPTION_VALUES = {
    "--classes": ["cat"], "--min-area": ["1"], "--min-score": ["0.1"], "--partial": [],
    "--storage-options": ["{}"], "--to": None,  # --to: the test's own folder
    "--instances": [], "--polygon-tolerance": ["0.5"],
    "--iscrowd": ["0"], "--images-root": ["imgs"], "--polygons": [], "--zip": [],
    "--ls-from-name": ["tag"], "--ls-to-name": ["pic"], "--image-url-prefix": ["https://h/"],
    "--model-version": ["v1"], "--push": ["http://127.0.0.1:9"],
    "--project": ["p"], "--create-project": [], "--api-key": ["k"], "--page-size": ["10"],
    "--confidence": [], "--yolo-images": ["copy"], "--val-fraction": ["0.5"], "--split-seed": ["3"],
    "--hf-images": ["path"], "--dataset": ["d"], "--overwrite-dataset": [], "--semantic": [],
}
_PARSER_FLAGS = sorted(f for a in build_parser()._actions for f in a.option_strings
                       if f.startswith("--") and f not in ("--help", "--format"))


def test_the_walk_knows_every_option():
    assert sorted(OPTION_VALUES) == _PARSER_FLAGS


def _expected_refusal(fmt: str, flag: str) -> str | None:
    """What the registry says about ``flag`` alone with ``--format fmt`` (None: taken)."""
    from annotator.export.formats import PUSH_ONLY
    from annotator.export.formats import flag as flag_of

    entry = EXPORTERS[fmt]
    dest = flag[2:].replace("-", "_")
    if dest in PUSH_ONLY:
        return "only with --push"
    if dest == "to":
        return None if entry.writes_folder else "--to is not honoured"
    if not entry.takes(dest):
        return f"{flag} is not honoured by --format {fmt}"
    needed = entry.needs.get(dest)
    if needed:
        return f"only with {flag_of(needed)}"
    return None


@pytest.mark.parametrize("flag", sorted(OPTION_VALUES))
@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_every_format_against_every_option(fmt, flag, tmp_path, monkeypatch, capsys):
    """Honoured: the CLI goes on to export (stubbed here); not honoured: exit 2, one
    ``error:`` line naming the option and the formats that take it."""
    import annotator.export.__main__ as cli
    from annotator.export.formats import formats_taking

    calls = []
    stub = ExportResult(format=fmt, counts={"annotations": 1})
    monkeypatch.setattr(cli, "export", lambda *a, **k: calls.append("export") or stub)
    monkeypatch.setattr(cli, "prepare", lambda *a, **k: calls.append("prepare") or _Complete())
    monkeypatch.setattr("annotator.export.ls_push.push", lambda *a, **k: calls.append("push") or stub)
    value = [str(tmp_path / "to")] if flag == "--to" else OPTION_VALUES[flag]
    argv = [str(tmp_path / "OUTPUT"), "--format", fmt, flag, *value]
    if flag == "--push":
        argv += ["--project", "p"]  # --push needs a project (and --project counts only with --push)
    refusal = _expected_refusal(fmt, flag)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    if refusal is None:
        assert rc == 0, err
        assert calls and "error" not in err
        return
    assert rc == 2 and not calls
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0] and refusal in lines[0], err
    takers = formats_taking(flag[2:].replace("-", "_"), EXPORTERS)
    if "not honoured by --format" in refusal:
        assert (", ".join(takers) if takers else "no format takes it") in lines[0]


class _Complete:
    missing, listed, writer = 0, None, None


def test_the_issue_example_masks_with_polygons(synthetic_output, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--format", "masks", "--polygons"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --polygons is not honoured by --format masks; formats that take it: coco")
    assert not (Path(output) / "exports").exists()


def test_an_option_given_at_its_default_value_counts(synthetic_output, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--format", "masks", "--iscrowd", "0"]) == 2
    assert "--iscrowd" in capsys.readouterr().err


def test_the_library_refuses_options_the_format_ignores(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    with pytest.raises(ExportError, match="--zip is not honoured by --format masks; formats that take it: coco"):
        export(output, "masks", str(tmp_path / "m"), ExportOptions(zip=True))
    with pytest.raises(ExportError, match="--polygon-tolerance is honoured by --format coco only with --polygons"):
        export(output, "coco", str(tmp_path / "c"), ExportOptions(polygon_tolerance=0.0))
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def test_every_option_help_names_its_default_and_its_formats():
    from annotator.export.formats import COMMON_OPTIONS, formats_taking

    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert "default" in action.help, action.option_strings
        if action.dest in COMMON_OPTIONS or not formats_taking(action.dest, EXPORTERS):
            continue
        assert f"[{', '.join(formats_taking(action.dest, EXPORTERS))}]" in action.help, action.option_strings


def test_instances_help_names_the_formats_that_split():
    (action,) = [a for a in build_parser()._actions if "--instances" in a.option_strings]
    takers = sorted(f for f, e in EXPORTERS.items() if e.takes("instances"))
    assert "masks" not in takers and "yolo-semantic" not in takers and "coco" in takers
    assert f"[{', '.join(takers)}]" in action.help


# ------------------------------------------------ missing optional extras (issue 23.4)

_EXTRAS = [(fmt, module, extra) for fmt, e in sorted(EXPORTERS.items()) for module, extra in e.extras]


@pytest.mark.parametrize("fmt,module,extra", _EXTRAS, ids=[f"{f}-{m}" for f, m, _ in _EXTRAS])
def test_a_missing_extra_is_exit_2_with_the_install_command(fmt, module, extra, synthetic_output, tmp_path,
                                                            monkeypatch, capsys):
    output, _, _ = synthetic_output
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails: "halted; None in sys.modules"
    argv = [output, "--format", fmt]
    if EXPORTERS[fmt].writes_folder:
        argv += ["--to", str(tmp_path / "to")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"pip install 'annotator[{extra}]'" in err, err
    assert not (tmp_path / "to").exists()


def test_the_labelstudio_format_declares_its_sdk():
    assert ("label_studio_sdk", "labelstudio") in EXPORTERS["labelstudio"].extras


def test_every_format_colours_a_colour_named_class_as_the_report_does():
    """A class named "red" is red in CVAT's labels, Label Studio's config and the
    cvat-masks label map, as in the report (not VOC's colour for its index)."""
    from annotator.export.coco import cvat_labels
    from annotator.export.cvat_masks import label_colours
    from annotator.export.labelstudio import labeling_config
    from annotator.review.palette import class_colors, hex_color

    names = ["background", "red", "cat", "blue"]
    expected = class_colors(names)
    assert expected[1] == (255, 0, 0) and expected[3] == (0, 0, 255)
    assert [c["color"] for c in cvat_labels(names)] == [hex_color(c) for c in expected[1:]]
    assert label_colours(names) == expected
    config = labeling_config(names)
    for name, colour in zip(names[1:], expected[1:], strict=True):
        assert f'value="{name}" background="{hex_color(colour)}"' in config
