"""One error taxonomy in every command (issue 21.4; README, "Failure behaviour").

Each command (run, reduce, report, export, serve) x three failures, called in-process
through its ``main(argv)``:

- its own refusal (an :class:`~annotator.errors.AnnotatorError`): exit 2, one ``error:`` line;
- a bug injected in its flow (a function it calls raises a plain ``RuntimeError`` or
  ``KeyError``): exit 3, one ``error:`` line naming a crash log that exists and holds
  the traceback;
- a storage error that reaches the command unclassified (botocore's
  ``EndpointConnectionError``, an ``OSError`` EIO): exit 2, one line, classified by
  :func:`annotator.storage.retry.as_storage_error`.

No Ray: every failure happens before it would start.
"""

from __future__ import annotations

import errno
import re
import tempfile
from pathlib import Path

import pytest

from annotator.errors import AnnotatorError, StorageError

CRASH_RE = re.compile(r"the traceback is in (.+?), please report it")
INJECTED = "injected bug 7f3a"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]


def _assert_internal(rc: int, err: str) -> Path:
    assert rc == 3, err
    line = _one_error_line(err)
    m = CRASH_RE.search(line)
    assert m, line
    path = Path(m.group(1))
    assert path.is_file(), line
    text = path.read_text(encoding="utf-8")
    assert "Traceback" in text and INJECTED in text, text
    return path


def _raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _endpoint_error() -> BaseException:
    botocore = pytest.importorskip("botocore.exceptions")
    return botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/out/manifest.json")


@pytest.fixture(autouse=True)
def _crash_logs_in_tmp(tmp_path, monkeypatch):
    """Crash logs that go to the temporary directory go to this test's folder."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))


STORAGE_ERRORS = {
    "botocore-endpoint": _endpoint_error,
    "oserror-eio": lambda: OSError(errno.EIO, "Input/output error", "s3://bucket/out/parts/part-00000.parquet"),
}


def _assert_storage(rc: int, err: str) -> None:
    assert rc == 2, err
    line = _one_error_line(err)
    assert "storage error" in line and "crash" not in line, line


# ----------------------------------------------------------------------------- run


def _run_argv(tmp_path: Path) -> list[str]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(images / "a.png")
    return ["--source", str(images), "--output", str(tmp_path / "out"), "--model", "toy", "--saliency", "toy",
            "--device", "cpu", "--quiet", "--no-report"]


def test_run_own_refusal_is_exit_2(tmp_path, capsys):
    from annotator.run import main

    rc = main([*_run_argv(tmp_path), "--vocab", str(tmp_path / "no-such-vocab.txt")])
    assert rc == 2
    assert "no-such-vocab.txt" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc", [RuntimeError(INJECTED), KeyError(INJECTED)], ids=["RuntimeError", "KeyError"])
def test_run_bug_is_exit_3_with_a_crash_log(exc, tmp_path, capsys, monkeypatch):
    import annotator.job
    from annotator.run import main

    monkeypatch.setattr(annotator.job, "list_images", _raiser(exc))
    rc = main(_run_argv(tmp_path))
    _assert_internal(rc, capsys.readouterr().err)


@pytest.mark.parametrize("make", STORAGE_ERRORS.values(), ids=STORAGE_ERRORS.keys())
def test_run_storage_error_is_exit_2(make, tmp_path, capsys, monkeypatch):
    import annotator.job
    from annotator.run import main

    monkeypatch.setattr(annotator.job, "list_images", _raiser(make()))
    _assert_storage(main(_run_argv(tmp_path)), capsys.readouterr().err)


def test_run_https_source_refuses_options_it_does_not_take(tmp_path, capsys):
    """An S3 key/secret in --storage-options with an https source: exit 2 naming them
    (it was a TypeError from aiohttp, exit 3), before any request."""
    from annotator.run import main

    argv = _run_argv(tmp_path)
    argv[argv.index("--source") + 1] = "https://127.0.0.1:9/images/"
    rc = main([*argv, "--storage-options", '{"key": "AKIAEXAMPLE", "secret": "s3cr3tvalue", "headers": {}}'])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_error_line(err)
    assert "option(s) key, secret (" in line and "s3cr3tvalue" not in line, line


def test_options_not_taken_is_decided_by_the_client_signatures():
    from annotator.inputs.listing import options_not_taken

    assert options_not_taken("https://h/x", {"key": 1, "client_kwargs": {}, "headers": {}, "auth": None}) == ["key"]
    assert options_not_taken("s3://b/x", {"key": 1, "anything": 2}) == []
    assert options_not_taken("/local/path", {"key": 1}) == []


# ----------------------------------------------------------------------------- reduce


def test_reduce_own_refusal_is_exit_2(tmp_path, capsys):
    from annotator.reduce import main

    rc = main([str(tmp_path), "--storage-options", "[1]"])  # not a JSON object: a ConfigError
    assert rc == 2
    assert "--storage-options" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc", [RuntimeError(INJECTED), KeyError(INJECTED)], ids=["RuntimeError", "KeyError"])
def test_reduce_bug_is_exit_3_with_a_crash_log(exc, tmp_path, capsys, monkeypatch):
    import annotator.reduce

    monkeypatch.setattr(annotator.reduce, "OutputLock", _raiser(exc))
    crash = _assert_internal(annotator.reduce.main([str(tmp_path)]), capsys.readouterr().err)
    assert crash.parent == tmp_path  # next to the output, which exists


@pytest.mark.parametrize("make", STORAGE_ERRORS.values(), ids=STORAGE_ERRORS.keys())
def test_reduce_storage_error_is_exit_2(make, tmp_path, capsys, monkeypatch):
    import annotator.reduce

    monkeypatch.setattr(annotator.reduce, "OutputLock", _raiser(make()))
    _assert_storage(annotator.reduce.main([str(tmp_path)]), capsys.readouterr().err)


# ----------------------------------------------------------------------------- report


def test_report_own_refusal_is_exit_2(tmp_path, capsys):
    from annotator.report import main

    rc = main([str(tmp_path), "--samples", "-1"])
    assert rc == 2
    assert "--samples" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc", [RuntimeError(INJECTED), KeyError(INJECTED)], ids=["RuntimeError", "KeyError"])
def test_report_bug_is_exit_3_with_a_crash_log(exc, tmp_path, capsys, monkeypatch):
    import annotator.report

    monkeypatch.setattr(annotator.report, "write_report", _raiser(exc))
    _assert_internal(annotator.report.main([str(tmp_path)]), capsys.readouterr().err)


@pytest.mark.parametrize("make", STORAGE_ERRORS.values(), ids=STORAGE_ERRORS.keys())
def test_report_storage_error_is_exit_2(make, tmp_path, capsys, monkeypatch):
    import annotator.report

    monkeypatch.setattr(annotator.report, "write_report", _raiser(make()))
    _assert_storage(annotator.report.main([str(tmp_path)]), capsys.readouterr().err)


# ----------------------------------------------------------------------------- export


def test_export_own_refusal_is_exit_2(tmp_path, capsys):
    from annotator.export.__main__ import main

    rc = main([str(tmp_path), "--format", "masks", "--iscrowd", "1"])  # an option masks does not honour
    assert rc == 2
    assert "--iscrowd" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc", [RuntimeError(INJECTED), KeyError(INJECTED)], ids=["RuntimeError", "KeyError"])
def test_export_bug_is_exit_3_with_a_crash_log(exc, tmp_path, capsys, monkeypatch):
    import annotator.export.__main__ as cli

    monkeypatch.setattr(cli, "export", _raiser(exc))
    _assert_internal(cli.main([str(tmp_path), "--format", "coco"]), capsys.readouterr().err)


@pytest.mark.parametrize("make", STORAGE_ERRORS.values(), ids=STORAGE_ERRORS.keys())
def test_export_storage_error_is_exit_2(make, tmp_path, capsys, monkeypatch):
    import annotator.export.__main__ as cli

    monkeypatch.setattr(cli, "export", _raiser(make()))
    rc = cli.main([str(tmp_path), "--format", "coco"])
    err = capsys.readouterr().err
    _assert_storage(rc, err)
    assert "was left as it was" in err


def test_export_missing_optional_package_is_exit_2_but_a_broken_own_import_is_a_bug(tmp_path, capsys,
                                                                                     monkeypatch):
    import annotator.export.__main__ as cli

    missing = ModuleNotFoundError("No module named 'fiftyone'", name="fiftyone")
    monkeypatch.setattr(cli, "export", _raiser(missing))
    assert cli.main([str(tmp_path), "--format", "coco"]) == 2
    assert "install the extra" in _one_error_line(capsys.readouterr().err)
    broken = ImportError(f"cannot import name 'x' from 'annotator.export.coco' ({INJECTED})",
                         name="annotator.export.coco")
    monkeypatch.setattr(cli, "export", _raiser(broken))
    _assert_internal(cli.main([str(tmp_path), "--format", "coco"]), capsys.readouterr().err)


# ----------------------------------------------------------------------------- serve


def _serve_argv(tmp_path: Path) -> list[str]:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("background\nred\n", encoding="utf-8")
    return ["labelstudio", "--vocab", str(vocab), "--model", "toy", "--saliency", "toy", "--device", "cpu"]


@pytest.fixture
def serve_main():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("label_studio_sdk")
    from annotator.serve.__main__ import main

    return main


def test_serve_own_refusal_is_exit_2(serve_main, tmp_path, capsys):
    argv = _serve_argv(tmp_path)
    argv[argv.index("--vocab") + 1] = str(tmp_path / "missing-vocab.txt")
    assert serve_main(argv) == 2
    assert "missing-vocab.txt" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc", [RuntimeError(INJECTED), KeyError(INJECTED)], ids=["RuntimeError", "KeyError"])
def test_serve_bug_is_exit_3_with_a_crash_log(serve_main, exc, tmp_path, capsys, monkeypatch):
    import annotator.serve.__main__ as cli

    monkeypatch.setattr(cli, "build_app", _raiser(exc))
    _assert_internal(serve_main(_serve_argv(tmp_path)), capsys.readouterr().err)


@pytest.mark.parametrize("make", STORAGE_ERRORS.values(), ids=STORAGE_ERRORS.keys())
def test_serve_storage_error_is_exit_2(serve_main, make, tmp_path, capsys, monkeypatch):
    import annotator.serve.__main__ as cli

    monkeypatch.setattr(cli, "build_app", _raiser(make()))
    _assert_storage(serve_main(_serve_argv(tmp_path)), capsys.readouterr().err)


# ----------------------------------------------------------------------------- the types


def test_the_projects_refusals_are_annotator_errors():
    """The refusals that reach a command are AnnotatorErrors (exit 2) and keep the
    builtin base that callers catch."""
    from annotator.distributed.address import RayConnectError
    from annotator.distributed.ray_runner import ShardFailedError
    from annotator.inputs.listing import SourceError
    from annotator.models.open_clip_names import HubWeightsMissingError
    from annotator.models.weights import WeightsUnavailableError

    for cls, base in [(RayConnectError, RuntimeError), (ShardFailedError, RuntimeError), (SourceError, ValueError),
                      (WeightsUnavailableError, RuntimeError), (HubWeightsMissingError, FileNotFoundError)]:
        assert issubclass(cls, AnnotatorError) and issubclass(cls, base), cls


def test_a_storage_error_keeps_its_cause_and_a_bug_is_left_alone():
    from annotator.storage.retry import as_storage_error

    cause = OSError(errno.ENOSPC, "No space left on device")
    err = as_storage_error(cause, "writing x")
    assert isinstance(err, StorageError) and err.kind == "permanent" and err.__cause__ is cause
    bug = KeyError("k")
    assert as_storage_error(bug, "x") is bug
    try:  # a bug raised while an OSError was being handled stays a bug
        try:
            raise OSError(errno.EIO, "io")
        except OSError:
            raise KeyError("k") from None
    except KeyError as e:
        assert as_storage_error(e, "x") is e
