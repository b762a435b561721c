"""A real ``ray job submit`` of an annotation run to a separate local Ray cluster.

The cluster is started with ``ray start --head`` (dashboard on 127.0.0.1, free ports, its
own temp dir) and is independent of the session's in-process Ray (``conftest.py``):
every subprocess gets explicit addresses and no ``RAY_ADDRESS``. It is stopped by
signalling the process group that ``ray start`` created (and the worker processes of its
raylet): ``ray stop`` is not used, as it would stop every Ray on the machine.

The working directory uploaded with the job is a tiny temporary folder holding the
vocabulary; the ``annotator`` package comes from the environment (``pip install -e .``).
The cluster runs with token authentication and a throwaway token, so neither the
cluster nor the client depends on a token in ``~/.ray``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.synthetic import write_dataset, write_vocab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

RAY = shutil.which("ray")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_processes(pgid: int) -> list:
    """Processes of the cluster: its process group and every descendant of those."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                found[p.pid] = p
                for c in p.children(recursive=True):  # raylet's workers start their own sessions
                    found[c.pid] = c
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _stop_cluster(pgid: int, grace_s: float = 5.0) -> None:
    import psutil

    procs = _group_processes(pgid)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture
def ray_cluster():
    """(dashboard URL, env for clients) of a fresh `ray start --head` cluster."""
    if RAY is None:
        pytest.skip("the `ray` command is not installed")
    pytest.importorskip("psutil")
    temp_dir = tempfile.mkdtemp(prefix="annrj-")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    gcs_port, dash_port, client_port, agent_port = (_free_port() for _ in range(4))
    cmd = [
        RAY, "start", "--head", f"--port={gcs_port}", "--num-cpus=2", "--disable-usage-stats",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_port}", f"--temp-dir={temp_dir}", "--include-dashboard=true",
    ]
    start = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    pgid = start.pid  # its own session: the daemons it forks keep this process group
    try:
        out, _ = start.communicate(timeout=120)
        if start.returncode != 0:
            pytest.fail(f"ray start failed ({start.returncode}):\n{out[-3000:]}")
        url = f"http://127.0.0.1:{dash_port}"
        _wait_for_jobs_api(url, env)
        yield url, env
    finally:
        if start.poll() is None:
            start.kill()
        _stop_cluster(pgid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(url: str, env: dict, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        r = subprocess.run([RAY, "job", "list", "--address", url], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            return
        last = r.stdout + r.stderr
        time.sleep(2)
    pytest.fail(f"the job server at {url} did not come up:\n{last[-2000:]}")


def test_ray_job_submit_runs_an_annotation(ray_cluster, tmp_path):
    url, env = ray_cluster
    data = tmp_path / "data"
    images, _, labels = write_dataset(data, 6, size_hw=(96, 128))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    write_vocab(workdir / "colours.txt")
    out = tmp_path / "out"
    sid = f"annotator-test-{secrets.token_hex(4)}"

    submit = [
        RAY, "job", "submit", "--address", url, "--working-dir", str(workdir), "--submission-id", sid,
        "--log-color", "false",
        "--", sys.executable, "-m", "annotator.run", "--vocab", "colours.txt", "--model", "toy", "--saliency",
        "toy", "--source", str(images.resolve()), "--output", str(out.resolve()), "--shard-size", "4",
        "--device", "cpu", "--quiet", "--no-report",
    ]
    r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert f"Job '{sid}' succeeded" in log, log[-4000:]

    status = subprocess.run([RAY, "job", "status", "--address", url, "--log-color", "false", sid], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "succeeded" in (status.stdout + status.stderr).lower(), status.stdout + status.stderr

    rows = pq.read_table(out / "annotations.parquet").to_pylist()
    assert sorted(r["file_name"] for r in rows) == sorted(labels)
    assert all(r["status"] == "ok" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and summary["failed"] == 0
    assert (out / "coco.json").is_file()
    assert "6 images" in log  # the driver's log came back through the job


def readme_cluster_lines() -> list[str]:
    """The command lines of the README's local-cluster block (under "Running on a Ray
    cluster", the block that starts the cluster)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running on a Ray cluster", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        if "ray start --head" in block:
            return [ln for ln in block.splitlines() if ln.strip()]
    raise AssertionError("README: no ```bash block with `ray start --head` under 'Running on a Ray cluster'")


def test_readme_cluster_lines_run_verbatim(tmp_path):
    """The README's `ray start` / `ray job submit` lines, exactly as written, on loopback,
    with token authentication. Isolated: a throwaway HOME (so ~/.ray/auth_token is the
    test's own) and Ray temp dir, no RAY_* variable inherited; the cluster is stopped by
    its process group, not by `ray stop` (which stops every Ray on the machine)."""
    if RAY is None:
        pytest.skip("the `ray` command is not installed")
    pytest.importorskip("psutil")
    lines = readme_cluster_lines()
    assert any(ln.startswith("ray job submit ") for ln in lines), lines
    import ray

    restart = ray.is_initialized()  # the session's in-process Ray holds Ray's fixed agent port
    if restart:
        ray.shutdown()
    try:
        _run_readme_lines(tmp_path, lines)
    finally:
        if restart:
            from tests.conftest import start_session_ray

            start_session_ray()


def _run_readme_lines(tmp_path: Path, lines: list[str]) -> None:
    # 6379 (GCS), 8265 (dashboard) are fixed in the README; 52365 is the dashboard agent's
    # default port, held by any other Ray on the machine (`ray job submit` then answers
    # "No available agent" for ever)
    for port in (6379, 8265, 52365):
        deadline = time.monotonic() + 20  # a Ray just shut down frees its ports in a moment
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break
            if time.monotonic() > deadline:
                pytest.skip(f"port {port} (fixed in the README, or Ray's default agent port) is in use here")
            time.sleep(0.5)
    output = re.search(r"--output (\S+)", lines[-1]).group(1)
    shutil.rmtree(output, ignore_errors=True)
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="annrj-")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    # Line by line in one shell, as a user types them. Right after `ray start` the job
    # server may answer "No available agent to submit job, please try again later": like
    # a user, the test runs that same line again (the README says so).
    log = tmp_path / "submit.log"
    retry = ("for i in $(seq 30); do {line} > {log} 2>&1 && break; grep -q 'try again later' {log} "
             "|| {{ cat {log}; exit 1; }}; sleep 3; done; cat {log}")
    script = "set -euo pipefail\n" + "\n".join(
        retry.format(line=ln, log=log) if ln.startswith("ray job submit ") else ln for ln in lines) + "\n"
    run = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        try:
            out, _ = run.communicate(timeout=360)
        except subprocess.TimeoutExpired:
            run.kill()
            out, _ = run.communicate()
            pytest.fail("the README lines did not finish in 360 s:\n" + out[-3000:]
                        + (log.read_text()[-3000:] if log.exists() else ""))
        assert run.returncode == 0, out[-4000:]
        assert "succeeded" in out, out[-4000:]
        assert (home / ".ray" / "auth_token").is_file()  # the cluster really used a token
        rows = pq.read_table(os.path.join(output, "annotations.parquet")).to_pylist()
        assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    finally:
        if run.poll() is None:
            run.kill()
        _stop_cluster(run.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)


def test_cleanup_leaves_no_process_of_the_cluster():
    """The fixture above stops what it started (checked by its temp-dir prefix)."""
    psutil = pytest.importorskip("psutil")
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any("annrj-" in a for a in (p.info["cmdline"] or [])):
                left.append((p.pid, " ".join(p.info["cmdline"])[:120]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert not left, left
