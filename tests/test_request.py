"""The typed request (:mod:`annotator.request`) and the Python entry point
``annotator.run_job``: a run driven from Python writes what the command line writes; every
command-line option lands in the request; a misspelt field is refused when the request is
built, a wrong value with a message naming what was expected and what was received."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import annotator
from annotator.config import ConfigError, EngineConfig
from annotator.request import ModelSpec, ReadSpec, RunRequest, ScheduleSpec, WriteSpec
from annotator.run import build_parser, main
from tests.synthetic import write_dataset, write_vocab

pytestmark = pytest.mark.timeout(300)

SPECS = (ReadSpec, ModelSpec, WriteSpec, ScheduleSpec, RunRequest)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    images, gt, _ = write_dataset(root, 10, size_hw=(60, 80))
    return {"images": images, "gt": gt, "vocab": write_vocab(root / "colours.txt")}


def test_run_job_from_python_writes_what_the_command_line_writes(dataset, tmp_path, ray_session, capsys):
    request = annotator.RunRequest(
        read=annotator.ReadSpec(source=str(dataset["images"]), gt=str(dataset["gt"])),
        model=annotator.ModelSpec(engine=annotator.EngineConfig(model="toy", saliency="toy", device="cpu"),
                                  vocab=str(dataset["vocab"])),
        write=annotator.WriteSpec(output=str(tmp_path / "py"), report=False),
        schedule=annotator.ScheduleSpec(shard_size=4, num_actors=1, quiet=True),
    )
    result = annotator.run_job(request)
    assert isinstance(result, annotator.RunResult)
    assert result.exit_code == 0 and result.ok and result.output == str(tmp_path / "py")
    assert result.summary == json.loads((tmp_path / "py" / "summary.json").read_text())
    assert result.summary["images"] == 10 and result.summary["failed"] == 0
    assert (tmp_path / "py" / "metrics.json").is_file() and not (tmp_path / "py" / "report.html").exists()

    rc = main(["--source", str(dataset["images"]), "--gt", str(dataset["gt"]), "--model", "toy", "--saliency", "toy",
               "--device", "cpu", "--vocab", str(dataset["vocab"]), "--output", str(tmp_path / "cli"), "--no-report",
               "--shard-size", "4", "--num-actors", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "cli" / "summary.json").read_text()) == result.summary
    rows = [pq.read_table(tmp_path / out / "annotations.parquet").to_pylist() for out in ("py", "cli")]
    assert rows[0] == rows[1] and len(rows[0]) == 10


def test_the_failure_rate_is_the_exit_code_of_the_result(dataset, tmp_path, ray_session):
    (tmp_path / "images").mkdir()
    for name, png in zip(("a.png", "b.png"), sorted(dataset["images"].rglob("*.png"))[:2], strict=True):
        (tmp_path / "images" / name).write_bytes(png.read_bytes())
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    request = RunRequest(read=ReadSpec(source=str(tmp_path / "images")),
                         model=ModelSpec(engine=EngineConfig(model="toy", saliency="toy", device="cpu"),
                                         vocab=str(dataset["vocab"])),
                         write=WriteSpec(output=str(tmp_path / "out"), report=False),
                         schedule=ScheduleSpec(num_actors=1, max_failure_rate=0.1, quiet=True))
    result = annotator.run_job(request)
    assert result.exit_code == 1 and not result.ok
    assert (result.summary["images"], result.summary["failed"]) == (3, 1)


def test_a_store_without_atomic_create_needs_best_effort_lease(dataset, tmp_path, ray_session, monkeypatch, capsys):
    """On a store that offers no atomic create the run is refused before any work (exit 2
    naming --best-effort-lease), and runs with it."""
    from annotator.storage import lock as lock_mod

    monkeypatch.delenv(lock_mod.BEST_EFFORT_ENV, raising=False)
    monkeypatch.setattr(lock_mod, "supports_atomic_create", lambda fs: False)
    argv = ["--source", str(dataset["images"]), "--model", "toy", "--saliency", "toy", "--device", "cpu",
            "--vocab", str(dataset["vocab"]), "--output", str(tmp_path / "out"), "--no-report", "--num-actors", "1",
            "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--best-effort-lease" in err and not (tmp_path / "out" / "parts").exists()
    assert main([*argv, "--best-effort-lease"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"] == 10


# ----------------------------------------------------------------------------- the command line


def _leaves(obj, prefix: str = "") -> dict[str, object]:
    """Every field of the request, nested dataclasses (the EngineConfig too) flattened."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


#: Values that the generic rule below would get wrong, and options that need another.
VALUES = {"--device": "cpu", "--templates": "a {} here", "--storage-options": '{"anon": true}',
          "--patch-sizes": "128,64", "--scale-weights": "1,2,3", "--address": "auto"}
COMPANIONS = {"--hf-split": ["--hf-dataset", "d"], "--hf-image-column": ["--hf-dataset", "d"],
              "--hf-allow-paths-outside": ["--hf-dataset", "d"]}
#: EngineConfig fields that no option sets (the engine's internals and the options'
#: credentials, which come from --storage-options at the top of the request).
NOT_OPTIONS = {"model.engine.crop_chunk", "model.engine.seed", "model.engine.storage_options"}


def _argv(action) -> list[str]:
    """The option with a value other than its default."""
    opt = action.option_strings[-1]
    if action.nargs == 0:
        return [opt]
    if opt in VALUES:
        return [opt, VALUES[opt]]
    if action.choices:
        return [opt, next(c for c in action.choices if c != action.default)]
    if action.type is int:
        return [opt, str((action.default or 13) + 3)]
    if action.type is float:
        return [opt, "0.25"]
    return [opt, f"x-{action.dest}"]


def test_every_option_lands_in_the_request():
    parser = build_parser()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(actions) > 30
    reached: set[str] = set()
    for action in actions:
        companions = COMPANIONS.get(action.option_strings[-1], [])
        base = _leaves(RunRequest.from_args(parser.parse_args(companions)))
        changed = _leaves(RunRequest.from_args(parser.parse_args([*companions, *_argv(action)])))
        moved = {k for k in base if base[k] != changed[k]}
        assert moved, f"{'/'.join(action.option_strings)} changes nothing in the RunRequest"
        reached |= moved
    assert reached == set(_leaves(RunRequest())) - NOT_OPTIONS


def test_the_defaults_of_the_command_line_are_those_of_the_request():
    assert RunRequest.from_args(build_parser().parse_args([])) == RunRequest()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.__name__)
def test_a_misspelt_field_is_a_type_error(spec):
    with pytest.raises(TypeError, match="unexpected keyword argument 'shard_sise'"):
        spec(shard_sise=8)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.__name__)
def test_a_request_is_frozen(spec):
    name = dataclasses.fields(spec)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(spec(), name, None)


@pytest.mark.parametrize("build, message", [
    (lambda: ReadSpec(max_bytes="10"), "ReadSpec.max_bytes: expected int, got str '10'"),
    (lambda: ScheduleSpec(quiet=1), "ScheduleSpec.quiet: expected bool, got int 1"),
    (lambda: ModelSpec(engine={"model": "toy"}), "ModelSpec.engine: expected EngineConfig, got dict"),
    (lambda: RunRequest(read=WriteSpec()), "RunRequest.read: expected ReadSpec, got WriteSpec"),
    (lambda: ReadSpec(source="a", hf_dataset="b"), "--source and --hf-dataset are mutually exclusive"),
    (lambda: ReadSpec(hf_split="train"), "--hf-split/--hf-image-column need --hf-dataset"),
    (lambda: ReadSpec(hf_allow_paths_outside=True),
     "--hf-allow-paths-outside: expected --hf-dataset .*got no --hf-dataset"),
    (lambda: WriteSpec(retry_failed=True, overwrite=True), "--retry-failed: .*got --overwrite too"),
    (lambda: ReadSpec(gt="hf-column:label"), "expected --hf-dataset"),
    (lambda: ReadSpec(gt_format="yolo"),
     r"--gt-format: expected one of \('coco', 'voc-png', 'hf-column'\), got 'yolo'"),
    (lambda: ReadSpec(max_bytes=0), "--max-bytes: expected a positive number of bytes, got 0"),
    (lambda: RunRequest(write=WriteSpec(output="s3://user:secret@bucket/out"), storage_options={"secret": "other"}),
     "--output s3://bucket/out: expected one set of credentials"),
    (lambda: RunRequest(write=WriteSpec(output="gs://user:secret@bucket/out")),
     "--output gs://bucket/out: expected credentials in --storage-options for gs://"),
    (lambda: RunRequest(model=ModelSpec(vocab="https://user:secret@host/v.txt")),
     "--vocab https://host/v.txt: expected no credentials in this value"),
    (lambda: ScheduleSpec(shard_size=0), "--shard-size: expected at least 1 image per shard, got 0"),
    (lambda: ScheduleSpec(num_actors=0), "--num-actors: expected at least 1 actor, got 0"),
    (lambda: ScheduleSpec(max_failure_rate=1.5), r"--max-failure-rate: expected a fraction in \[0, 1\], got 1.5"),
])
def test_wrong_values_name_what_was_expected_and_received(build, message):
    with pytest.raises(ConfigError, match=message) as e:
        build()
    assert "secret" not in str(e.value)


def test_a_float_option_takes_an_int():
    assert ScheduleSpec(max_failure_rate=0).max_failure_rate == 0


def test_the_python_api_is_imported_on_first_use():
    import subprocess
    import sys

    code = "import sys, annotator; print(sorted(m for m in ('ray', 'torch', 'annotator.job') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# ----------------------------------------------------------------------------- identity


def _identity_argv(action, tmp_path: Path) -> list[str]:
    """The option with a value other than its default that the identity can read."""
    opt = action.option_strings[-1]
    if opt == "--image-list":
        (tmp_path / "list.txt").write_text("a.png\n")
        return [opt, str(tmp_path / "list.txt")]
    if opt == "--vocab":  # the same classes elsewhere: not a change of the run
        copy = tmp_path / "same-vocab.txt"
        copy.write_bytes(Path(build_parser().get_default("vocab")).read_bytes())
        return [opt, str(copy)]
    return _argv(action)


def test_every_option_is_in_the_identity_or_listed_as_not_changing_rows(tmp_path):
    """Walks every option of ``annotator.run``: changing it changes the run's identity
    (the configuration hash), or it is in NOT_ROW_AFFECTING and changes nothing there."""
    from annotator.request import NOT_ROW_AFFECTING

    parser = build_parser()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert set(NOT_ROW_AFFECTING) <= {a.dest for a in actions}, "NOT_ROW_AFFECTING names an option that is gone"
    for action in actions:
        companions = COMPANIONS.get(action.option_strings[-1], [])
        base = RunRequest.from_args(parser.parse_args(companions)).identity()
        changed = RunRequest.from_args(parser.parse_args([*companions, *_identity_argv(action, tmp_path)])).identity()
        name = "/".join(action.option_strings)
        if action.dest in NOT_ROW_AFFECTING:
            assert changed == base, f"{name} is listed as not changing rows but changes the identity"
        else:
            assert changed != base, f"{name} changes no setting of the identity and is not in NOT_ROW_AFFECTING"


def test_contents_count_in_the_identity_not_names(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("x.png\ny.png\n")
    second.write_text("x.png\n\n  y.png\n")  # the same entries
    ids = [RunRequest(read=ReadSpec(image_list=str(p))).identity()["image_list"] for p in (first, second)]
    assert ids[0] == ids[1] and ids[0].startswith("sha256:")
    second.write_text("x.png\n")
    assert RunRequest(read=ReadSpec(image_list=str(second))).identity()["image_list"] != ids[0]
    other_vocab = write_vocab(tmp_path / "v.txt")
    assert (RunRequest(model=ModelSpec(vocab=str(other_vocab))).identity()["vocabulary"]
            != RunRequest().identity()["vocabulary"])
    # the device changes rows only through --precision auto (bf16 on CUDA, fp32 on most CPUs)
    def on(device: str, precision: str) -> dict:
        return RunRequest(model=ModelSpec(engine=EngineConfig(device=device, precision=precision))).identity()

    assert on("cpu", "auto") != on("cuda", "auto") and on("cpu", "fp32") == on("cuda", "fp32")
    weights = {"clip": "openai", "dino": f"dino.pth sha256:{'a' * 64}"}
    moved = {"clip": "openai", "dino": f"elsewhere.pth sha256:{'a' * 64}"}
    assert RunRequest().identity(weights=weights) == RunRequest().identity(weights=moved)
    assert RunRequest().identity(weights=weights)["weights"]["dino"] == f"sha256:{'a' * 64}"


def test_a_finished_run_refuses_a_changed_row_setting(dataset, tmp_path, ray_session, capsys):
    """A finished run re-run with any setting of its identity changed is refused (exit 2,
    the setting named), never resumed with its old rows; nothing in it is touched."""
    listing = tmp_path / "list.txt"
    names = sorted(p.relative_to(dataset["images"]).as_posix() for p in Path(dataset["images"]).rglob("*.png"))
    listing.write_text("\n".join(names[:5]) + "\n")
    out = tmp_path / "out"
    argv = ["--source", str(dataset["images"]), "--vocab", str(dataset["vocab"]), "--model", "toy",
            "--saliency", "toy", "--device", "cpu", "--output", str(out), "--shard-size", "4", "--num-actors", "1",
            "--quiet", "--no-report", "--image-list", str(listing)]
    assert main(argv) == 0, capsys.readouterr().err
    manifest = (out / "manifest.json").read_bytes()
    parts = {p.name: p.read_bytes() for p in (out / "parts").iterdir()}
    capsys.readouterr()
    changes = {
        "max_bytes": ["--max-bytes", "1000"],
        "max_pixels": ["--max-pixels", "1000"],
        "engine.templates": ["--templates", "a picture of a {}"],
        "engine.input_size": ["--input-size", "128", "--patch-sizes", "128,64"],
        "gt_format": ["--gt", str(dataset["gt"]), "--gt-format", "voc-png"],
    }
    for key, extra in changes.items():
        rc = main([*argv, *extra])
        err = capsys.readouterr().err
        assert rc == 2, (key, err)
        assert key in err and "error:" in err, (key, err)
    # the image list's entries, the same images named another way
    listing.write_text("\n".join(n.rsplit(".", 1)[0] for n in names[:5]) + "\n")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "image_list" in err, err
    assert (out / "manifest.json").read_bytes() == manifest
    assert {p.name: p.read_bytes() for p in (out / "parts").iterdir()} == parts


@pytest.mark.parametrize("argv, message", [
    (["--hf-allow-paths-outside"], "error: --hf-allow-paths-outside: expected --hf-dataset"),
    (["--retry-failed", "--overwrite"], "error: --retry-failed: expected an output to resume"),
])
def test_an_option_without_its_companion_is_refused_by_the_command(argv, message, tmp_path, capsys):
    """Exit 2 with one error line, before anything is written (like --hf-split without --hf-dataset)."""
    from annotator.run import main

    out = tmp_path / "out"
    assert main([*argv, "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()
