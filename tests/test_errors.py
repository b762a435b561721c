"""The error taxonomy: the project's own errors are exit 2 with one line; anything else
is exit 3 with one line naming a crash log that holds the traceback."""

from __future__ import annotations

import errno
import io
import tempfile
from pathlib import Path

import pytest

from annotator import errors
from annotator.cli import report_error
from annotator.config import ConfigError
from annotator.errors import (
    AnnotatorError,
    FailedShardsError,
    MissingWeightsError,
    RefusedOutputError,
    StorageError,
)
from annotator.storage.layout import CRASH_REPORT_PREFIX
from annotator.storage.lock import OutputLockedError
from annotator.storage.ownership import foreign_entries


def _report(exc, *args, **kwargs) -> tuple[int, str]:
    stream = io.StringIO()
    try:  # raised, so that it has a traceback
        raise exc
    except Exception as e:  # noqa: BLE001
        code = report_error(e, *args, stream=stream, **kwargs)
    return code, stream.getvalue()


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("--batch-size: expected >= 1, got 0"),
        OutputLockedError("output o is in use by another annotator.run"),
        RefusedOutputError("output o holds another run"),
        MissingWeightsError("found.pt: not found"),
        FailedShardsError("2 shards failed every attempt"),
        StorageError("writing s3://b/o/manifest.json", OSError(errno.ENOSPC, "No space left on device"), "permanent"),
    ],
)
def test_own_errors_are_exit_2_with_one_line(exc, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err = _report(exc, str(tmp_path))
    assert code == 2 and isinstance(exc, AnnotatorError)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(exc) in err
    assert not list(tmp_path.iterdir())  # no crash log for a refusal


def test_config_error_keeps_its_import_path_and_base():
    assert issubclass(ConfigError, AnnotatorError) and issubclass(ConfigError, ValueError)
    assert issubclass(StorageError, OSError)  # code catching I/O errors still catches it


@pytest.mark.parametrize("exc", [RuntimeError("CUDA error: an illegal memory access"), KeyError("shard"),
                                 ValueError("a bug"), OSError("not classified by the storage layer")])
def test_anything_else_is_exit_3_naming_a_crash_log_next_to_the_output(exc, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code, err = _report(exc, str(out))
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {type(exc).__name__}: ")
    logs = list(out.glob(f"{CRASH_REPORT_PREFIX}*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "test_errors.py" in text and type(exc).__name__ in text
    assert foreign_entries(str(out)) == []  # the output is still a run folder


def test_crash_log_goes_to_the_temp_dir_without_an_output(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for output in (None, str(tmp_path / "not-yet")):
        code, err = _report(RuntimeError("a bug"), output)
        assert code == 3
        path = Path(err.split("the traceback is in ", 1)[1].split(",", 1)[0])
        assert path.parent == tmp_path and path.name.startswith(CRASH_REPORT_PREFIX)
        assert "RuntimeError: a bug" in path.read_text()
    assert not (tmp_path / "not-yet").exists()


def test_crash_log_holds_no_credentials(tmp_path):
    options = {"key": "AKIAEXAMPLEKEY", "secret": "wJalrXUtnFEMI-secret", "client_kwargs": {"endpoint_url": "x"}}
    code, err = _report(RuntimeError("failed on s3://AKIA:PASSWORD@bucket/k with wJalrXUtnFEMI-secret"),
                        str(tmp_path), options)
    text = next(tmp_path.glob(f"{CRASH_REPORT_PREFIX}*.log")).read_text()
    for secret in ("PASSWORD", "wJalrXUtnFEMI-secret"):
        assert secret not in text and secret not in err
    assert "s3://bucket/k" in text


def test_is_own_error_is_by_type_never_message():
    assert not errors.is_own_error(RuntimeError("ConfigError: refused"))
    assert errors.exit_code_for(ConfigError("x")) == 2 and errors.exit_code_for(TypeError("x")) == 3
