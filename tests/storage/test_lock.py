"""The fenced single writer, on a local disk and on S3 (moto's server, which honours
``If-None-Match: *``): racing acquirers, take-over of a paused holder and its fence,
staleness from the heartbeat's progress (never from clocks), stores without an atomic
create."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from annotator.storage import lock as lock_mod
from annotator.storage.layout import LOCK_NAME, lease_name
from annotator.storage.lock import (
    LeaseLostError,
    NoAtomicCreateError,
    OutputLock,
    OutputLockedError,
    current_holder,
)


@pytest.fixture(autouse=True)
def fast_lease(monkeypatch):
    """Short heartbeats; tests that need a take-over set STALE_S themselves."""
    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(lock_mod, "POLL_S", 0.02)
    monkeypatch.setattr(lock_mod, "STALE_S", 30.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_options():
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}, "key": "testing", "secret": "testing",
               "skip_instance_cache": True}
    s3fs.S3FileSystem(**options).mkdir("lock-bucket")
    try:
        yield options
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """(output URL, storage options) on a local disk or on S3."""
    if request.param == "local":
        out = tmp_path / "out"
        out.mkdir()
        return str(out), None
    options = request.getfixturevalue("s3_options")
    return f"s3://lock-bucket/{request.node.name.replace('[', '-').rstrip(']')}-{time.monotonic_ns()}", options


def _lease_tokens(output, options) -> list[int]:
    fs, root = fsspec.core.url_to_fs(output, **(options or {}))
    fs.invalidate_cache()
    try:
        return sorted(int(p.rsplit("-", 1)[1].split(".")[0]) for p in fs.ls(f"{root}/{LOCK_NAME}", detail=False))
    except FileNotFoundError:
        return []


def test_two_racing_acquirers_exactly_one_wins(output):
    out, options = output
    n = 4
    barrier = threading.Barrier(n)
    won, refused = [], []

    def contender(i):
        lock = OutputLock(out, options, what=f"writer-{i}")
        barrier.wait()
        try:
            won.append(lock.acquire())
        except OutputLockedError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(refused) == n - 1, (won, refused)
    winner = won[0]
    assert all(f"is in use by another {winner.holder}" in e for e in refused), refused
    winner.check_fence()  # still the holder
    assert winner.token == 1
    winner.release()
    assert _lease_tokens(out, options) == []
    with OutputLock(out, options, what="next") as again:  # free again, at once
        assert again.token == 1


def test_a_paused_holder_loses_to_a_take_over_and_its_fence_names_the_new_holder(output, monkeypatch):
    out, options = output
    monkeypatch.setattr(lock_mod, "STALE_S", 0.5)
    first = OutputLock(out, options, what="annotator.run (first)").acquire()
    first.check_fence()
    first._stop_heartbeat()  # paused: a stopped VM, a long GC, a partition
    second = OutputLock(out, options, what="annotator.run (second)").acquire()
    assert second.token == first.token + 1  # the fencing token grows at every take-over
    with pytest.raises(LeaseLostError) as info:
        first.check_fence()
    message = str(info.value)
    assert "annotator.run (second)" in message and f"token {second.token}" in message
    assert info.value.exit_code == 2
    with pytest.raises(LeaseLostError):  # and it stays lost
        first.check_fence()
    second.check_fence()
    first.release()  # the loser's release never removes the new holder's lease
    assert _lease_tokens(out, options) == [second.token]
    second.check_fence()
    second.release()
    assert _lease_tokens(out, options) == []


def test_a_live_holder_is_not_taken_over_even_past_stale_time(output, monkeypatch):
    out, options = output
    monkeypatch.setattr(lock_mod, "STALE_S", 0.3)
    with OutputLock(out, options, what="annotator.run (alive)") as holder:
        time.sleep(0.5)  # longer than STALE_S: only the heartbeat's progress counts
        with pytest.raises(OutputLockedError) as info:
            OutputLock(out, options, what="annotator.reduce").acquire()
        assert "is in use by another annotator.run (alive)" in str(info.value)
        holder.check_fence()
        assert current_holder(out, options).startswith("annotator.run (alive)")
    assert current_holder(out, options) is None


def test_a_lease_with_a_heartbeat_in_the_future_does_not_lock_the_output_forever(output, monkeypatch):
    out, options = output
    monkeypatch.setattr(lock_mod, "STALE_S", 0.5)
    fs, root = fsspec.core.url_to_fs(out, **(options or {}))
    doc = {"holder": "a run on a machine whose clock is a year ahead", "token": 1, "nonce": "x", "beat": 7,
           "host": "elsewhere", "pid": 1, "wall_time": time.time() + 365 * 86400,
           "heartbeat": time.time() + 365 * 86400}
    fs.makedirs(f"{root}/{LOCK_NAME}", exist_ok=True)
    fs.pipe_file(f"{root}/{LOCK_NAME}/{lease_name(1)}", json.dumps(doc).encode())
    with OutputLock(out, options, what="annotator.run") as lock:
        assert lock.token == 2
        lock.check_fence()
    assert _lease_tokens(out, options) == []


def test_a_holder_that_died_on_this_machine_is_taken_over_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_mod, "STALE_S", 3600.0)  # no waiting: the process is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    doc = {"holder": "a run that was killed", "token": 3, "nonce": "x", "beat": 1, "host": socket.gethostname(),
           "pid": int(dead.stdout)}
    (tmp_path / LOCK_NAME).mkdir()
    (tmp_path / LOCK_NAME / lease_name(3)).write_text(json.dumps(doc))
    with OutputLock(str(tmp_path), what="annotator.run") as lock:
        assert lock.token == 4
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_old_format_lease_file_is_taken_over_when_stale(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"holder": "a run of an older version", "token": "x",
                                                  "heartbeat": time.time() - 3600}))
    with OutputLock(str(tmp_path), what="annotator.reduce") as lock:
        assert lock.token == 1
    assert "taking over a stale lock" in caplog.text and "a run of an older version" in caplog.text


class PlainStore(MemoryFileSystem):
    """A store with no atomic create (fsspec's generic pipe_file checks, then writes)."""

    protocol = "plainstore"
    store: dict = {}
    pseudo_dirs = [""]


def test_a_store_without_atomic_create_is_refused_unless_best_effort(monkeypatch):
    fsspec.register_implementation("plainstore", PlainStore, clobber=True)
    monkeypatch.delenv(lock_mod.BEST_EFFORT_ENV, raising=False)
    with pytest.raises(NoAtomicCreateError) as info:
        OutputLock("plainstore://bucket/out").acquire()
    assert "offers no atomic create" in str(info.value) and "--best-effort-lease" in str(info.value)
    assert info.value.exit_code == 2
    with OutputLock("plainstore://bucket/out", best_effort=True) as lock:
        assert lock.token == 1
        lock.check_fence()
    monkeypatch.setenv(lock_mod.BEST_EFFORT_ENV, "1")
    with OutputLock("plainstore://bucket/out") as lock:
        assert lock.token == 1


def test_an_s3fs_without_create_mode_uses_its_botocore_client(s3_options, monkeypatch):
    monkeypatch.setattr(lock_mod, "_pipe_takes_create", lambda fs: False)  # as an older s3fs
    out = f"s3://lock-bucket/old-s3fs-{time.monotonic_ns()}"
    with OutputLock(out, s3_options, what="first") as lock:
        assert lock.token == 1
        assert lock_mod._create_exclusive(lock.fs, lock.path, b"{}", best_effort=False) is False  # refused
        assert json.loads(lock.fs.cat_file(lock.path))["holder"] == lock.holder  # untouched


def test_memory_store_is_supported():
    with OutputLock("memory://lock-test/out", what="a") as lock:
        with pytest.raises(OutputLockedError):
            OutputLock("memory://lock-test/out", what="b").acquire()
        lock.check_fence()


def test_reducer_refuses_an_output_that_does_not_exist(tmp_path):
    with pytest.raises(lock_mod.RefusedOutputError, match="does not exist"):
        OutputLock(str(tmp_path / "missing"), create=False).acquire()
