"""Joining or starting Ray (``annotator.distributed.ray_runner.init_ray`` and the run's ``--address``).

Each run here is a subprocess with its own Ray temp dir (``RAY_TMPDIR``, short: Ray's
socket paths must fit 107 bytes) and no inherited ``RAY_*`` variable, so the machine's
real ``/tmp/ray`` record is neither read nor changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator.distributed import ray_runner
from tests.synthetic import write_dataset, write_vocab

pytestmark = pytest.mark.timeout(300)


def _dead_address() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def ray_tmp():
    """A Ray temp dir whose ``ray/ray_current_cluster`` records a dead cluster."""
    d = tempfile.mkdtemp(prefix="annrt-")
    (Path(d) / "ray").mkdir()
    (Path(d) / "ray" / "ray_current_cluster").write_text(_dead_address())
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run(args: list[str], ray_tmp: str, timeout_s: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "annotator.run", *args], env=env, capture_output=True, text=True,
                       timeout=timeout_s)
    return r, time.monotonic() - t0


def _toy_args(tmp_path: Path) -> list[str]:
    images, _, _ = write_dataset(tmp_path / "data", 3, size_hw=(48, 64))
    return ["--source", str(images), "--vocab", str(write_vocab(tmp_path / "v.txt")), "--model", "toy",
            "--saliency", "toy", "--device", "cpu", "--quiet", "--no-report", "--num-actors", "1"]


@pytest.mark.slow
def test_a_stale_cluster_record_does_not_stop_a_run(tmp_path, ray_tmp):
    """No --address: a new local Ray, whatever /tmp/ray/ray_current_cluster says."""
    out = tmp_path / "out"
    r, _ = _run([*_toy_args(tmp_path), "--output", str(out)], ray_tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "started a local Ray" in r.stderr
    assert len(pq.read_table(out / "annotations.parquet")) == 3


def test_address_auto_with_a_dead_record_is_one_line(tmp_path, ray_tmp):
    out = tmp_path / "out"
    record = (Path(ray_tmp) / "ray" / "ray_current_cluster").read_text()
    r, seconds = _run([*_toy_args(tmp_path), "--output", str(out), "--address", "auto"], ray_tmp)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and record in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert seconds < 60
    assert not out.exists()  # refused before anything was written


def test_resolve_ray_address(monkeypatch, ray_tmp):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    assert ray_runner.resolve_ray_address(None) is None  # a new local Ray, never the record
    recorded = (Path(ray_tmp) / "ray" / "ray_current_cluster").read_text()
    assert ray_runner.resolve_ray_address("auto") == recorded
    assert ray_runner.resolve_ray_address("10.1.2.3:6379") == "10.1.2.3:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:7000")  # as under `ray job submit`
    assert ray_runner.resolve_ray_address(None) == "127.0.0.1:7000"
    (Path(ray_tmp) / "ray" / "ray_current_cluster").unlink()
    with pytest.raises(ray_runner.RayConnectError, match="ray start --head"):
        ray_runner.resolve_ray_address("auto")


def test_unreachable_or_malformed_address(tmp_path):
    dead = _dead_address()
    with pytest.raises(ray_runner.RayConnectError, match=f"cannot reach the Ray cluster at {dead}"):
        ray_runner.check_reachable(dead, timeout_s=2)
    with pytest.raises(ray_runner.RayConnectError, match="expected host:port"):
        ray_runner.check_reachable("just-a-name", timeout_s=2)
