"""The lock (``constraints.txt``): it agrees with ``pyproject.toml``, its checker notices
when it does not, and the README's install commands and ``.ci/run`` all go through it."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "jobs" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_satisfies_pyproject():
    assert _checker().disagreements(REPO) == []
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "check_lock.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_checker_fails_loudly_on_disagreement(tmp_path):
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "jobs").mkdir()
    shutil.copy(REPO / "jobs" / "lock.in", tmp_path / "jobs" / "lock.in")
    checker = _checker()
    pyproject = (tmp_path / "pyproject.toml").read_text()
    # a bumped range the lock no longer satisfies, and a new dependency it lacks
    bumped = pyproject.replace('"pyarrow>=14",', '"pyarrow>=999",\n    "a-new-dependency>=1",')
    (tmp_path / "pyproject.toml").write_text(bumped)
    problems = checker.disagreements(tmp_path)
    assert any(p.startswith("pyarrow>=999") and "pins pyarrow==" in p for p in problems), problems
    assert any(p.startswith("a-new-dependency>=1") and "not in constraints.txt" in p for p in problems), problems


def test_every_pin_is_exact():
    pins = _checker().read_lock(REPO / "constraints.txt")
    assert {"torch", "ray", "open-clip-torch", "pycocotools", "datasets", "pyarrow", "moto", "s3fs"} <= set(pins)
    assert pins["torch"] == "2.14.1"


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_install_commands_use_the_lock_and_ci_runs_the_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip() for b in _bash_blocks(quick)]
    main_cmd, test_cmd = blocks[0], blocks[1]
    assert main_cmd == "pip install -c constraints.txt -e . && python -m annotator.run"
    assert test_cmd == 'pip install -c constraints.txt -e ".[test,clients]" && python -m pytest -q'
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().splitlines()[-1] == test_cmd  # exactly what a new user copies
    assert "python jobs/check_lock.py" in ci
    for line in ci.splitlines():  # every other install is locked too (datumaro: one exact pin)
        if "pip install" in line and "--no-deps" not in line:
            # the Label Studio server's venv has a lock of its own (jobs/label-studio.in)
            assert "-c constraints.txt" in line or "-c jobs/label-studio-constraints.txt" in line, line
