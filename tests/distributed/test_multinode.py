"""Several Ray nodes (issue 21.6): a head and a second node on this machine, each
``ray start``-ed with its own ports and token authentication, a run joined with
``--address`` writing to an S3 output (moto's server).

- a node that joins while shards are queued gets an actor, which takes shards: the
  manifest's ``made_by`` names both nodes;
- a node whose raylet is killed mid-run (SIGKILL, with its workers): the run finishes on
  the surviving node, its rows identical to a one-process run, the lost node's shards
  counted as retried.

How the run is held "mid-run", without a sleep: one ground-truth label map per shard is
a FIFO (tests/test_faults.py's FifoBlocker), so every actor blocks scoring its shard
until the test puts the real files back. The nodes are stopped by PID (their process
groups and the raylets' workers), never with ``ray stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator.run import main
from tests.distributed.test_ray_job import RAY, _group_processes, _stop_cluster
from tests.synthetic import write_dataset, write_vocab
from tests.test_faults import FifoBlocker, _blocked_actor_pids, _wait_for

psutil = pytest.importorskip("psutil")
moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420),
              pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")]

N_IMAGES, SHARD_SIZE, SIZE_HW = 12, 3, (48, 64)  # 4 shards
BUCKET = "annotator-multinode"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Node:
    """One ``ray start`` (head or not) with its own ports; ``kill()`` loses it (SIGKILL)."""

    def __init__(self, env: dict, temp_dir: str, head_port: int | None = None, num_cpus: int = 2):
        (self.port, self.node_manager_port, object_port, agent_port, agent_grpc, metrics, runtime_env,
         min_worker) = _free_ports(8)
        cmd = [RAY, "start", f"--num-cpus={num_cpus}", "--disable-usage-stats",
               f"--node-manager-port={self.node_manager_port}", f"--object-manager-port={object_port}",
               f"--dashboard-agent-listen-port={agent_port}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
               f"--min-worker-port={min_worker}", f"--max-worker-port={min_worker + 40}"]
        if head_port is None:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"]
        else:
            cmd += [f"--address=127.0.0.1:{head_port}"]
        start = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
        self.pgid = start.pid
        out, _ = start.communicate(timeout=120)
        if start.returncode != 0:
            _stop_cluster(self.pgid)
            pytest.fail(f"ray start failed ({start.returncode}):\n{out[-3000:]}")

    def raylet(self) -> psutil.Process:
        for p in _group_processes(self.pgid):
            with contextlib.suppress(psutil.Error):
                if f"--node_manager_port={self.node_manager_port}" in " ".join(p.cmdline()):
                    return p
        raise AssertionError(f"no raylet with --node_manager_port={self.node_manager_port}")

    def kill(self) -> None:
        """The node is lost: its raylet, the raylet's workers and the node's daemons, SIGKILL."""
        procs = _group_processes(self.pgid)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)

    def stop(self) -> None:
        _stop_cluster(self.pgid)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_ports(1)[0], verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(BUCKET)
    try:
        yield options
    finally:
        server.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    images, gt, _ = write_dataset(root, N_IMAGES, size_hw=SIZE_HW, nested=False)
    return root, images, gt, write_vocab(root / "v.txt")


def _argv(data, output: str, *extra: str) -> list[str]:
    _, images, gt, vocab = data
    return ["--vocab", str(vocab), "--source", str(images), "--gt", str(gt), "--model", "toy", "--saliency", "toy",
            "--device", "cpu", "--output", output, "--shard-size", str(SHARD_SIZE), "--quiet", "--no-report", *extra]


@pytest.fixture(scope="module")
def reference_rows(data, ray_session, tmp_path_factory) -> list[dict]:
    """A one-process run (the session's local Ray, one actor)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(_argv(data, str(out), "--num-actors", "1")) == 0
    return sorted(pq.read_table(out / "annotations.parquet").to_pylist(), key=lambda r: r["image_id"])


@pytest.fixture
def cluster_env():
    if RAY is None:
        pytest.skip("the `ray` command is not installed")
    temp_dir = tempfile.mkdtemp(prefix="annmn-")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0",
               # a lost node is noticed within seconds instead of half a minute
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               RAY_health_check_initial_delay_ms="1000")
    nodes: list[Node] = []
    try:
        yield env, temp_dir, nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


class Blocked:
    """One label map per shard turned into a FIFO: every actor blocks scoring its shard."""

    def __init__(self, data, scratch: Path):
        _, _, gt, _ = data
        labels = sorted(p for p in gt.iterdir() if p.is_file())
        self.blockers = [FifoBlocker(labels[i], scratch) for i in range(0, len(labels), SHARD_SIZE)]

    def release(self) -> None:
        for b in self.blockers:
            b.release(unblock=True)


def _start_run(env: dict, argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "annotator.run", *argv], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(run: subprocess.Popen, log: Path) -> None:
    try:
        rc = run.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError(f"the run did not finish:\n{log.read_text()[-4000:]}") from None
    assert rc == 0, log.read_text()[-4000:]


def _s3_json(fs, output: str, name: str) -> dict:
    return json.loads(fs.cat(f"{output.removeprefix('s3://')}/{name}"))


def _s3_rows(fs, output: str) -> list[dict]:
    with fs.open(f"{output.removeprefix('s3://')}/annotations.parquet", "rb") as f:
        return sorted(pq.read_table(f).to_pylist(), key=lambda r: r["image_id"])


def test_a_node_that_joins_takes_shards_and_a_lost_node_costs_nothing(cluster_env, data, s3, reference_rows,
                                                                     tmp_path):
    env, temp_dir, nodes = cluster_env
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3)
    head = Node(env, temp_dir)
    nodes.append(head)
    address = ["--address", f"127.0.0.1:{head.port}", "--storage-options", json.dumps(s3)]

    # (b) the head alone (2 CPUs: one actor); a second node joins while shards are queued
    out_b = f"s3://{BUCKET}/joined"
    blocked = Blocked(data, tmp_path)
    log_b = tmp_path / "joined.log"
    run = _start_run(env, _argv(data, out_b, *address), log_b)
    try:
        _wait_for(lambda: _blocked_actor_pids(head.raylet().pid), 180, "the head's actor blocked",
                  alive=lambda: run.poll() is None)
        second = Node(env, temp_dir, head_port=head.port)
        nodes.append(second)
        _wait_for(lambda: _blocked_actor_pids(second.raylet().pid), 180, "an actor on the node that joined",
                  alive=lambda: run.poll() is None)
    finally:
        blocked.release()
    _finish(run, log_b)
    assert _s3_rows(fs, out_b) == reference_rows
    made_by = [e["made_by"] for e in _s3_json(fs, out_b, "manifest.json")["finished"].values()]
    assert len({m["node_id"] for m in made_by}) == 2, made_by  # both nodes made parts
    assert all(m["host"] and m["actor"] and m["attempt"] == 0 for m in made_by), made_by
    assert _s3_json(fs, out_b, "scheduling.json")["actors"] == 2

    # (a) both nodes from the start (one actor each); the second node is lost mid-run
    out_a = f"s3://{BUCKET}/lost"
    blocked = Blocked(data, tmp_path)
    log_a = tmp_path / "lost.log"
    run = _start_run(env, _argv(data, out_a, *address), log_a)
    try:
        _wait_for(lambda: _blocked_actor_pids(second.raylet().pid) and _blocked_actor_pids(head.raylet().pid),
                  180, "an actor blocked on each node", alive=lambda: run.poll() is None)
        second.kill()
    finally:
        blocked.release()
    _finish(run, log_a)
    assert _s3_rows(fs, out_a) == reference_rows  # identical to the one-process run
    made_by = [e["made_by"] for e in _s3_json(fs, out_a, "manifest.json")["finished"].values()]
    assert len({m["node_id"] for m in made_by}) == 1, made_by  # all on the surviving node
    retried = [m for m in made_by if m["attempt"] > 0]  # the lost node's two shards, made again on the head
    scheduling = _s3_json(fs, out_a, "scheduling.json")
    assert len(retried) == 2 and scheduling["shards_retried"] == 2, (made_by, scheduling)
