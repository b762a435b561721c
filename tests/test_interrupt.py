"""Interruption at any moment (issue 21.3; README, "Failure behaviour").

The real commands in a subprocess, signalled by a failpoint at a named phase
(``ANNOTATOR_FAILPOINTS='PHASE=SIGINT[:SECONDS]'``, see :mod:`annotator.failpoints`):
listing, Ray's start-up (the signal lands inside ``ray.init``), the actors' start-up, a
finished shard with others running, the final merge, after the ``done:`` line, the
report and an export. Each: exit 130 (SIGINT) / 143 (SIGTERM), exactly one ``error:``
line, no traceback, no "Exception ignored", no process of the Ray it started left (found
by the run's own ``RAY_TMPDIR``), nothing half-written; then the same command, run again,
completes to the rows of an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / "jobs" / "vocab" / "colours.txt"
EXIT = {"SIGINT": 130, "SIGTERM": 143}


def _ray_processes(marker: str) -> list[str]:
    """Processes of the Ray started under ``RAY_TMPDIR=marker`` (by their command line or
    environment), other than this test's own."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if marker in " ".join(p.cmdline()) or any(marker in v for v in p.environ().values()):
                found.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            continue
    return found


def _command(module: str, args: list[str], spec: str | None, tmp: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` with the failpoints ``spec`` armed (None: off), a Ray
    temp folder of its own (short: Ray's socket paths are limited), no Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ANNOTATOR_FAILPOINTS")}
    ray_tmp = tempfile.mkdtemp(prefix="ri", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    if spec:
        env["ANNOTATOR_FAILPOINTS"] = spec
        env["ANNOTATOR_FAILPOINTS_DIR"] = tempfile.mkdtemp(prefix="fp", dir=tmp)
    try:
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=600)
        deadline = time.monotonic() + 15  # the last of Ray's processes may take a moment to exit
        while (left := _ray_processes(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray processes left running after {module} {spec}: {left}\n{done.stderr[-3000:]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return done


def _assert_interrupted(done: subprocess.CompletedProcess, signal_name: str) -> None:
    err = done.stderr
    assert done.returncode == EXIT[signal_name], err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"interrupted by {signal_name}" in errors[0], err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "Fatal Python error" not in err and "*** SIG" not in err, err[-3000:]  # Ray's C++ stack dump


def _half_written(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".tmp"))


def _rows(output: Path) -> list[dict]:
    return sorted(pq.read_table(output / "annotations.parquet").to_pylist(), key=lambda r: r["image_id"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("interrupt")
    src = root / "src"
    src.mkdir()
    colours = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (220, 220, 20), (220, 20, 220), (20, 220, 220)]
    for i, colour in enumerate(colours):
        im = Image.new("RGB", (48, 40), (128, 128, 128))
        im.paste(colour, (5, 5, 30, 30))
        im.save(src / f"img{i}.png")
    return root


def _run_args(output: str) -> list[str]:
    return ["--source", "src", "--vocab", str(VOCAB), "--model", "toy", "--saliency", "toy", "--device", "cpu",
            "--output", output, "--shard-size", "2", "--num-actors", "1", "--quiet"]


@pytest.fixture(scope="module")
def baseline(dataset):
    """An uninterrupted run: its rows, and its folder for the report and export phases."""
    done = _command("annotator.run", _run_args("baseline"), None, dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    return dataset / "baseline", _rows(dataset / "baseline")


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("spec", "signal_name"), [
    ("listing=SIGINT", "SIGINT"),
    ("ray.start=SIGTERM:1.0", "SIGTERM"),  # inside ray.init: Ray's handlers had made it exit 134
    ("actors.wait=SIGINT:0.5", "SIGINT"),  # while the actors load their engines
    ("shard.done=SIGTERM", "SIGTERM"),  # one shard recorded, others in flight
    ("merge=SIGINT", "SIGINT"),
    ("run.done=SIGINT", "SIGINT"),  # after the done: line, where Ray's atexit shutdown used to be cut
], ids=lambda v: v.split("=")[0] if "=" in str(v) else None)
def test_a_run_interrupted_at_a_phase_exits_cleanly_and_resumes_to_the_same_rows(spec, signal_name, dataset,
                                                                                 baseline):
    output = f"out-{spec.split('=')[0]}"
    _assert_interrupted(_command("annotator.run", _run_args(output), spec, dataset), signal_name)
    assert _half_written(dataset / output) == [] if (dataset / output).exists() else True
    again = _command("annotator.run", _run_args(output), None, dataset)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _rows(dataset / output) == baseline[1]


@pytest.mark.timeout(300)
def test_the_report_interrupted_exits_cleanly_and_runs_again(dataset, baseline):
    folder = baseline[0]
    _assert_interrupted(_command("annotator.report", [str(folder)], "report=SIGTERM", dataset), "SIGTERM")
    assert _half_written(folder) == []
    again = _command("annotator.report", [str(folder)], None, dataset)
    assert again.returncode == 0 and (folder / "report.html").is_file(), again.stderr[-3000:]


@pytest.mark.timeout(300)
def test_an_export_interrupted_leaves_nothing_and_runs_again(dataset, baseline):
    folder, to = baseline[0], dataset / "export-coco"
    args = [str(folder), "--format", "coco", "--to", str(to)]
    _assert_interrupted(_command("annotator.export", args, "export=SIGINT", dataset), "SIGINT")
    assert not to.exists() and _half_written(dataset) == []
    again = _command("annotator.export", args, None, dataset)
    assert again.returncode == 0, again.stderr[-3000:]
    assert any(to.rglob("*.json"))


def test_a_signal_failpoint_sends_the_signal_once_and_a_bad_delay_is_refused(tmp_path):
    import signal

    from annotator import failpoints
    from annotator.config import ConfigError
    from annotator.errors import Interrupted, install_interrupt_handlers

    assert failpoints.parse("ray.start=SIGTERM:0.5")["ray.start"].message == "0.5"
    for bad in ("merge=SIGINT:soon", "merge=SIGINT:-1"):
        with pytest.raises(ConfigError, match="delay in seconds"):
            failpoints.parse(bad)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        install_interrupt_handlers()
        failpoints.configure("merge=SIGTERM", tmp_path / "fp")
        with pytest.raises(Interrupted) as caught:
            failpoints.failpoint("merge")
            time.sleep(5)  # the handler runs at the next bytecode; never reached
        assert caught.value.signal_name == "SIGTERM"
        failpoints.failpoint("merge")  # its one firing is used: nothing now
    finally:
        failpoints.configure(os.environ.get(failpoints.ENV))
        for sig, handler in saved.items():
            signal.signal(sig, handler)
