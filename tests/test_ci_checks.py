"""The checks of ``.ci/run`` cannot pass by not running.

Under ``ANNOTATOR_REQUIRE_CLIENTS=1`` (``.ci/run`` sets it) a skipped test fails, except
GPU tests and the machine facts of ``tests/conftest.py``'s ``MACHINE_SKIPS``; and
``.ci/run`` itself runs the linter, the type checker and the suite under that flag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''
import pytest

def test_client_missing():
    pytest.importorskip("no_such_client_module_xyz")

def test_server_missing():
    pytest.skip("no label-studio server installed")

def test_machine_fact():
    pytest.skip("this machine has CUDA")

@pytest.mark.gpu
def test_gpu():
    pytest.skip("no CUDA device")
'''


def _run_probe(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "ANNOTATOR_REQUIRE_CLIENTS"}
    if require is not None:
        env["ANNOTATOR_REQUIRE_CLIENTS"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_client_fails_under_the_ci_flag(tmp_path):
    done = _run_probe(tmp_path, "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed, 2 skipped" in done.stdout, done.stdout
    assert "FAILED test_probe.py::test_client_missing" in done.stdout
    assert "FAILED test_probe.py::test_server_missing" in done.stdout


def test_without_the_flag_a_missing_client_skips(tmp_path):
    done = _run_probe(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 skipped" in done.stdout, done.stdout


def test_ci_runs_the_linter_the_type_checker_and_the_suite_under_the_flag():
    script = (ROOT / ".ci" / "run").read_text()
    assert "ANNOTATOR_REQUIRE_CLIENTS=1" in script
    assert "ruff check" in script
    assert "mypy" in script
    assert "|| echo" not in script, "an install that may fail silently lets its tests skip"
