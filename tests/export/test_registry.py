"""Every registry entry runs; the CLI maps its options and reports errors clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotator.export import (
    EXPORTERS,
    ExportOptions,
    ExportResult,
    UnknownFormatError,
    export,
)
from annotator.export.__main__ import build_parser, main


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_every_exporter_runs(name, synthetic_output, tmp_path):
    if not EXPORTERS[name].writes_folder:
        pytest.skip(f"{name} writes into a database, not files (tests/export/test_{name}.py)")
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
