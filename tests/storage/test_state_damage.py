"""Issue 22.6: the project's own state files, damaged every way, through the real commands.

Every kind of state file a command reads back (``manifest.json``, a lease under
``.annotator.lock/``, a lock file of the older format, a part's footer, a stray part)
times every kind of damage (not JSON, JSON of the wrong type, missing keys, mistyped
values, contradictory, foreign, from the future) is handed to ``annotator.run``,
``annotator.reduce`` or ``annotator.export`` (their ``main``, as the console scripts call
it). Each either

- **refuses**: exit 2, exactly one ``error:`` line naming the damaged file, no
  traceback; then the way out that line gives is taken and the same command finishes
  (never a re-run that cannot finish); or
- **repairs**: exit 0 with a warning naming the file, and the rows equal an undamaged run's.

Never exit 3.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator.export.__main__ import main as export_main
from annotator.reduce import main as reduce_main
from annotator.report import main as report_main
from annotator.run import main as run_main
from annotator.storage import lock
from annotator.storage.parts import METADATA_KEY, part_sha256
from tests.synthetic import write_dataset, write_vocab

pytestmark = pytest.mark.timeout(900)

LEASE = ".annotator.lock/lease-00000001.json"
CRASHLOG = ".crashlog-00001.json"


def _argv(ds: dict, output: Path, *extra: str) -> list[str]:
    return ["--vocab", str(ds["vocab"]), "--source", str(ds["images"]), "--model", "toy", "--saliency", "toy",
            "--device", "cpu", "--output", str(output), "--shard-size", "4", "--num-actors", "1", "--quiet",
            "--no-report", *extra]


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("state-damage")
    images, _, _ = write_dataset(root / "data", 12, size_hw=(48, 64))
    return {"images": images, "vocab": write_vocab(root / "v.txt")}


@pytest.fixture(scope="module")
def reference(ds, ray_session, tmp_path_factory) -> Path:
    """An undamaged, finished run (3 shards of 4 images)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run_main(_argv(ds, out)) == 0
    return out


def _rows(out: Path) -> list[tuple]:
    table = pq.read_table(out / "annotations.parquet", columns=["image_id", "file_name", "status"])
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


# ----------------------------------------------------------------------------- the damages


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _write_manifest(out: Path, change: Callable[[dict], object]) -> None:
    doc = _manifest(out)
    replaced = change(doc)
    (out / "manifest.json").write_text(json.dumps(doc if replaced is None else replaced))


def _raw(rel: str, text: str) -> Callable[[Path], None]:
    def damage(out: Path) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return damage


def _edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda out: _write_manifest(out, change)


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _lease_doc(**change) -> dict:
    doc = {"holder": "run by someone@elsewhere pid 7", "token": 1, "nonce": "ab" * 16,
           "acquired": "2026-01-01T00:00:00+00:00", "host": "elsewhere", "pid": 7, "beat": 3,
           "heartbeat_s": 2.0, "wall_time": 1.7e9}
    doc.update(change)
    return doc


def _lease(doc: object) -> Callable[[Path], None]:
    return _raw(LEASE, json.dumps(doc))


def _set_footer(out: Path, rel: str, change: Callable[[dict], object]) -> None:
    """Rewrite part ``rel`` with its footer changed, and record the new file's sha256 in
    the manifest: a consistent tamper that only the footer check can catch."""
    path = out / rel
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    replaced = change(meta)
    footer = json.dumps(meta if replaced is None else replaced).encode()
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: footer}), path)
    index = str(int(path.stem.split("-")[1]))
    _write_manifest(out, lambda d: d["finished"][index].update(sha256=part_sha256(str(path))))


def _footer(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda out: _set_footer(out, "parts/part-00001.parquet", change)


def _crashlog(text: str) -> Callable[[Path], None]:
    """Shard 1 unfinished (its part and entry gone) with a damaged crash log."""
    def damage(out: Path) -> None:
        (out / "parts" / "part-00001.parquet").unlink()
        _write_manifest(out, lambda d: d["finished"].pop("1") and None)
        (out / "parts" / CRASHLOG).write_text(text)
    return damage


def _marker(text: str) -> Callable[[Path], None]:
    """An earlier export in the export's --to (tmp_path/export, beside ``out``) with its marker damaged."""
    def damage(out: Path) -> None:
        folder = out.parent / "export"
        folder.mkdir()
        (folder / "mine.txt").write_text("a file the user keeps")
        (folder / ".annotator-export.json").write_text(text)
    return damage


def _copy_part(src: str, dst: str) -> Callable[[Path], None]:
    return lambda out: shutil.copyfile(out / "parts" / src, out / "parts" / dst)


# ----------------------------------------------------------------------------- the ways out


def _overwrite(ds: dict, out: Path) -> list[str]:
    return _argv(ds, out, "--overwrite")


def _delete(rel: str) -> Callable[[Path, dict], None]:
    return lambda out, ds: (out / rel).unlink()


def _move_out(rel: str) -> Callable[[Path, dict], None]:
    return lambda out, ds: shutil.move(out / rel, out.parent / Path(rel).name)


def _run_again(out: Path, ds: dict) -> None:
    assert run_main(_argv(ds, out)) == 0


def _without_merged(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """``damage`` on a run folder whose annotations.parquet is gone (an export then reads the parts)."""
    def both(out: Path) -> None:
        (out / "annotations.parquet").unlink()
        damage(out)
    return both


@dataclass(frozen=True)
class Case:
    damage: Callable[[Path], None]
    names: str  # the file the error line or the warning must name
    command: str = "run"  # run, reduce, export, report
    refused: bool = True
    #: refused: a change to the folder (or another command), then the same command; "overwrite": the
    #: run with --overwrite
    way_out: Callable[[Path, dict], None] | str | None = None
    #: repaired: the warning is logged by the driver (False: by a Ray actor, whose log lines reach the
    #: console asynchronously; the test checks the file's fate instead)
    told_by_driver: bool = True


M, P1 = "manifest.json", "part-00001.parquet"

CASES = {
    # manifest.json: invalid -> refused, the way out is --overwrite
    "manifest-not-json": Case(_raw(M, "{not json"), M, way_out="overwrite"),
    "manifest-list": Case(_raw(M, "[]"), M, way_out="overwrite"),
    "manifest-string": Case(_raw(M, '"manifest"'), M, way_out="overwrite"),
    "manifest-null": Case(_raw(M, "null"), M, way_out="overwrite"),
    "manifest-missing-key": Case(_edit_manifest(lambda d: d.pop("num_shards") and None), M, way_out="overwrite"),
    "manifest-wrong-type": Case(_edit_manifest(lambda d: d.update(num_shards="3")), M, way_out="overwrite"),
    "manifest-entry-wrong-type": Case(_edit_manifest(lambda d: d["finished"]["0"].update(rows="4")), M,
                                      way_out="overwrite"),
    "manifest-foreign": Case(_raw(M, json.dumps({"name": "pkg", "version": "1.0.0"})), M, way_out="overwrite"),
    "manifest-future-version": Case(_edit_manifest(lambda d: d.update(version=2)), M, way_out="overwrite"),
    "manifest-another-run": Case(_edit_manifest(lambda d: d.update(config_hash="0123456789abcdef")), "out",
                                 way_out="overwrite"),
    # manifest.json: contradictory -> the shards concerned run again, with a warning
    "manifest-two-shards-one-part": Case(
        _edit_manifest(lambda d: d["finished"]["1"].update(path=d["finished"]["0"]["path"])), M, refused=False),
    "manifest-part-outside-output": Case(
        _edit_manifest(lambda d: d["finished"]["0"].update(path="/tmp/elsewhere/parts/part-00000.parquet")), M,
        refused=False),
    "manifest-rows-contradict-listing": Case(_edit_manifest(lambda d: d["finished"]["2"].update(rows=99)), M,
                                             refused=False),
    "manifest-shard-outside-run": Case(
        _edit_manifest(lambda d: d["finished"].update(
            {"7": {**d["finished"]["0"], "path": "parts/part-00007.parquet"}})), M, refused=False),
    "manifest-future-times": Case(
        _edit_manifest(lambda d: d.update(created="2999-01-01T00:00:00+00:00", updated="2999-01-01T00:00:00+00:00")),
        M, refused=False),
    # the reducer reads the manifest too
    "reduce-manifest-list": Case(_raw(M, "[]"), M, command="reduce"),
    "reduce-manifest-two-shards-one-part": Case(
        _edit_manifest(lambda d: d["finished"]["1"].update(path=d["finished"]["0"]["path"])), M, command="reduce",
        refused=False),
    # a lease: not one of ours -> refused naming it, the way out is deleting it
    "lease-not-json": Case(_raw(LEASE, "{not json"), "lease-00000001.json", way_out=_delete(LEASE)),
    "lease-list": Case(_lease([]), "lease-00000001.json", way_out=_delete(LEASE)),
    "lease-string": Case(_lease("held"), "lease-00000001.json", way_out=_delete(LEASE)),
    "lease-null": Case(_lease(None), "lease-00000001.json", way_out=_delete(LEASE)),
    "lease-missing-keys": Case(_lease({"holder": "someone"}), "lease-00000001.json", way_out=_delete(LEASE)),
    "lease-heartbeat-not-a-number": Case(_lease(_lease_doc(beat="soon")), "lease-00000001.json",
                                         way_out=_delete(LEASE)),
    "lease-token-contradicts-name": Case(_lease(_lease_doc(token=5)), "lease-00000001.json",
                                         way_out=_delete(LEASE)),
    "lease-foreign": Case(_lease({"Version": "2012-10-17", "Statement": []}), "lease-00000001.json",
                          way_out=_delete(LEASE)),
    # a lease from the future, of a holder gone from this host: taken over, with a warning
    "lease-future-times": Case(
        lambda out: _lease(_lease_doc(host=socket.gethostname(), pid=_dead_pid(), wall_time=4.0e10,
                                      acquired="2999-01-01T00:00:00+00:00"))(out),
        "lease", refused=False),
    # the older lock format (.annotator.lock as one file): damaged -> taken over, with a warning
    "old-lock-list": Case(_raw(".annotator.lock", "[]"), "lock", refused=False),
    "old-lock-heartbeat-not-a-number": Case(_raw(".annotator.lock", json.dumps({"holder": "x", "heartbeat": "soon"})),
                                            "lock", refused=False),
    "old-lock-heartbeat-in-the-future": Case(
        _raw(".annotator.lock", json.dumps({"holder": "x", "host": "elsewhere", "pid": 7, "heartbeat": 4.0e10})),
        "lock", refused=False),
    # part footers (recorded with a matching sha256): the run redoes the shard...
    "footer-list": Case(_footer(lambda m: []), P1, refused=False),
    "footer-missing-keys": Case(_footer(lambda m: m.pop("config_hash") and None), P1, refused=False),
    "footer-wrong-type": Case(_footer(lambda m: m.update(shard_index="1")), P1, refused=False),
    "footer-another-shard": Case(_footer(lambda m: m.update(shard_index=0)), P1, refused=False),
    "footer-another-configuration": Case(_footer(lambda m: m.update(config_hash="0123456789abcdef")), P1,
                                         refused=False),
    # ...and the reducer alone names it, with the way out (the run redoes it)
    "reduce-footer-list": Case(_footer(lambda m: []), P1, command="reduce"),
    "reduce-footer-another-configuration": Case(_footer(lambda m: m.update(config_hash="0123456789abcdef")), P1,
                                                command="reduce"),
    # a stray part of another run, beyond this run's shards: named, the way out is moving it
    "stray-foreign-part": Case(_copy_part("part-00000.parquet", "part-00007.parquet"), "part-00007.parquet",
                               way_out=_move_out("parts/part-00007.parquet")),
    "reduce-stray-foreign-part": Case(_copy_part("part-00000.parquet", "part-00007.parquet"), "part-00007.parquet",
                                      command="reduce", way_out=_move_out("parts/part-00007.parquet")),
    # a shard's crash log (read by the actor that runs the shard again): started anew
    "crashlog-not-json": Case(_crashlog("{not json"), CRASHLOG, refused=False, told_by_driver=False),
    "crashlog-list": Case(_crashlog("[]"), CRASHLOG, refused=False, told_by_driver=False),
    "crashlog-null": Case(_crashlog("null"), CRASHLOG, refused=False, told_by_driver=False),
    "crashlog-wrong-type": Case(_crashlog(json.dumps({"deaths": {"img.png": "many"}, "current": None})), CRASHLOG,
                                refused=False, told_by_driver=False),
    "crashlog-foreign": Case(_crashlog(json.dumps({"deaths": ["x"], "current": {"a": 1}})), CRASHLOG,
                             refused=False, told_by_driver=False),
    # metrics.json, read back by the report: left out of it, told
    "report-metrics-not-json": Case(_raw("metrics.json", "{not json"), "metrics.json", command="report",
                                    refused=False),
    "report-metrics-list": Case(_raw("metrics.json", "[]"), "metrics.json", command="report", refused=False),
    "report-metrics-missing-keys": Case(_raw("metrics.json", json.dumps({"miou": 0.5})), "metrics.json",
                                        command="report", refused=False),
    # the export reads the lease, the manifest, annotations.parquet or the parts
    "export-lease-list": Case(_lease([]), "lease-00000001.json", command="export", refused=False),
    "export-lease-foreign": Case(_lease({"Version": "2012-10-17"}), "lease-00000001.json", command="export",
                                 refused=False),
    "export-manifest-list": Case(_raw(M, "[]"), M, command="export", refused=False),
    "export-manifest-future-version": Case(_edit_manifest(lambda d: d.update(version=2)), M, command="export",
                                           refused=False),
    "export-merged-not-parquet": Case(_raw("annotations.parquet", "garbage"), "annotations.parquet",
                                      command="export", way_out=_run_again),
    "export-part-not-parquet": Case(_without_merged(_raw("parts/" + P1, "garbage")), P1, command="export",
                                    way_out=_run_again),
    # an earlier export's marker in --to: not ours -> the folder is not replaced (the user's files stay)
    "export-marker-not-json": Case(_marker("{not json"), ".annotator-export.json", command="export",
                                   way_out=lambda out, ds: shutil.rmtree(out.parent / "export")),
    "export-marker-list": Case(_marker("[]"), ".annotator-export.json", command="export",
                               way_out=lambda out, ds: shutil.rmtree(out.parent / "export")),
    "export-marker-null": Case(_marker("null"), ".annotator-export.json", command="export",
                               way_out=lambda out, ds: shutil.rmtree(out.parent / "export")),
    "export-marker-foreign": Case(_marker(json.dumps({"name": "site", "files": []})), ".annotator-export.json",
                                  command="export", way_out=lambda out, ds: shutil.rmtree(out.parent / "export")),
    "export-marker-wrong-type": Case(_marker(json.dumps({"format": 3})), ".annotator-export.json",
                                     command="export", way_out=lambda out, ds: shutil.rmtree(out.parent / "export")),
    "export-stray-foreign-part": Case(_without_merged(_copy_part("part-00000.parquet", "part-00007.parquet")),
                                      "part-00007.parquet", command="export",
                                      way_out=_move_out("parts/part-00007.parquet")),
}


def _command(case: Case, ds: dict, out: Path, tmp_path: Path) -> tuple[Callable, list[str]]:
    if case.command == "reduce":
        return reduce_main, [str(out), "--no-report"]
    if case.command == "report":
        return report_main, [str(out)]
    if case.command == "export":
        return export_main, [str(out), "--format", "coco", "--to", str(tmp_path / "export")]
    return run_main, _argv(ds, out)


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_state_is_refused_with_a_way_out_or_repaired(name, ds, reference, tmp_path, capsys, caplog,
                                                              monkeypatch):
    case = CASES[name]
    if name == "old-lock-heartbeat-in-the-future":  # watched for STALE_S before the take-over: keep it short
        monkeypatch.setattr(lock, "STALE_S", 3.0)
        monkeypatch.setattr(lock, "HEARTBEAT_S", 0.2)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    case.damage(out)
    cli, argv = _command(case, ds, out, tmp_path)
    capsys.readouterr()
    caplog.clear()
    rc = cli(argv)
    err = capsys.readouterr().err
    told = err + caplog.text
    assert "Traceback" not in told and rc != 3, told
    if case.refused:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(errors) == 1, err
        assert case.names in errors[0], errors[0]
        if (out.parent / "export" / "mine.txt").exists():  # a refused export replaced nothing
            assert (out.parent / "export" / "mine.txt").read_text() == "a file the user keeps"
        if case.way_out is None:
            return
        if case.way_out == "overwrite":
            argv = _overwrite(ds, out)
        else:
            case.way_out(out, ds)
        caplog.clear()
        rc = cli(argv)
        told = capsys.readouterr().err + caplog.text
        assert rc == 0, told
    else:
        assert rc == 0, told
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(case.names in w for w in warnings) or not case.told_by_driver, warnings
        assert not (out / "parts" / CRASHLOG).exists()  # a shard's crash log goes with its part
    if case.command == "export":  # every listed image once, whatever the export read
        coco = json.loads((tmp_path / "export" / "annotations" / "instances_default.json").read_text())
        assert sorted(i["file_name"] for i in coco["images"]) == sorted(r[1] for r in _rows(reference))
    else:
        assert _rows(out) == _rows(reference)


def test_the_lease_schema_refuses_each_damage_by_name():
    """The lease check alone: each damage is a StateFileError naming the file."""
    from annotator.storage.state_schema import StateFileError, validate_lock_doc

    assert validate_lock_doc(_lease_doc(), "o/.annotator.lock/lease-00000001.json", 1)["token"] == 1
    for doc in ([], "x", None, {}, _lease_doc(beat="1"), _lease_doc(pid="7"), _lease_doc(token=2)):
        with pytest.raises(StateFileError, match=r"lease-00000001\.json: not a lease this annotator wrote"):
            validate_lock_doc(doc, "o/.annotator.lock/lease-00000001.json", 1)


def test_a_manifest_of_a_newer_version_says_so(tmp_path):
    from annotator.storage.manifest import Manifest, ManifestError

    (tmp_path / "manifest.json").write_text(json.dumps({"version": 9, "finished": {}}))
    with pytest.raises(ManifestError, match="newer annotator .manifest version 9, this one reads version 1"):
        Manifest.load(str(tmp_path))


def test_footer_schema_accepts_a_real_part(reference):
    from annotator.storage.parts import read_part_metadata
    from annotator.storage.state_schema import check_part_footer

    for part in sorted((reference / "parts").glob("part-*.parquet")):
        check_part_footer(read_part_metadata(str(part)), str(part), "")


@pytest.mark.parametrize("name", ["lease", "part-footer", "crashlog", "export-marker", "manifest"])
def test_state_schemas_are_valid_json_schema(name):
    import jsonschema

    from annotator.records.schema import load_schema

    schema = load_schema(name)
    jsonschema.validators.validator_for(schema).check_schema(schema)
