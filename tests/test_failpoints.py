"""Failpoints: the grammar, a count shared by every process of the run, off = no-op, and
an invalid spec refused with a message naming the entry."""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys

import pytest

from annotator import failpoints
from annotator.config import ConfigError
from annotator.failpoints import Failpoint, configure, failpoint, parse


@pytest.fixture(autouse=True)
def _off_after():
    yield
    configure(os.environ.get(failpoints.ENV))  # back to what the environment says (unset: off)


def test_grammar():
    points = parse(" engine.forward=torch.cuda.OutOfMemoryError:CUDA out of memory*2 ;"
                   "parts.write=OSError(ENOSPC):disk full: a=b*1;actor.start=TimeoutError;listing=ConnectionError*3;")
    assert points == {
        "engine.forward": Failpoint("engine.forward", "torch.cuda.OutOfMemoryError", "CUDA out of memory", 2),
        "parts.write": Failpoint("parts.write", "OSError", "disk full: a=b", 1, errno.ENOSPC),
        "actor.start": Failpoint("actor.start", "TimeoutError", "failpoint actor.start", 1),
        "listing": Failpoint("listing", "ConnectionError", "failpoint listing", 3),
    }
    e = points["parts.write"].make_error()
    assert type(e) is OSError and e.errno == errno.ENOSPC and e.strerror == "disk full: a=b"
    assert isinstance(points["actor.start"].make_error(), TimeoutError)
    assert parse("") == {} and parse(" ; ") == {}


def test_torch_out_of_memory_only_when_torch_is_imported():
    fp = parse("engine.forward=torch.cuda.OutOfMemoryError:CUDA out of memory")["engine.forward"]
    torch = pytest.importorskip("torch")
    e = fp.make_error()
    assert isinstance(e, torch.cuda.OutOfMemoryError) and str(e) == "CUDA out of memory"
    code = ("import sys; from annotator.failpoints import parse; "
            "e = parse('engine.forward=torch.cuda.OutOfMemoryError:oom')['engine.forward'].make_error(); "
            "print(type(e).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["RuntimeError", "False"]  # never imports torch itself


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("engine.forwrd=RuntimeError", "'engine.forwrd'"),
        ("engine.forward=ValueError:x", "'ValueError'"),
        ("engine.forward=RuntimeError:x*0", "*'0'"),
        ("engine.forward=RuntimeError:x*two", "*'two'"),
        ("engine.forward", "POINT=TYPE"),
        ("engine.forward=RuntimeError(ENOSPC)", "for OSError only"),
        ("parts.write=OSError(ENOTANERRNO)", "'ENOTANERRNO'"),
        ("listing=OSError;listing=OSError", "given twice"),
    ],
)
def test_invalid_spec_is_a_config_error_naming_the_entry(spec, named, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse(spec)
    assert named in str(info.value) and str(info.value).startswith("ANNOTATOR_FAILPOINTS: entry")
    configure(spec, tmp_path)  # from the environment: kept, raised at start-up and at every point
    with pytest.raises(ConfigError):
        failpoints.validate()
    with pytest.raises(ConfigError):
        failpoint("listing")


def test_off_is_a_no_op(tmp_path):
    configure(None)
    assert failpoints.state_dir() is None
    failpoints.validate()
    for _ in range(3):
        failpoint("engine.forward")
    configure("listing=RuntimeError*5", tmp_path)
    failpoint("engine.forward")  # a point that is not configured passes too
    assert list(tmp_path.iterdir()) == []


def test_count_within_a_process(tmp_path):
    configure("engine.forward=RuntimeError:CUDA error: an illegal memory access*2", tmp_path)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="illegal memory access") as info:
            failpoint("engine.forward")
        assert info.value.failpoint == "engine.forward"
    failpoint("engine.forward")  # spent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.forward.0", "engine.forward.1"]


def _hit_three_times(queue) -> None:
    from annotator.failpoints import failpoint

    fired = 0
    for _ in range(3):
        try:
            failpoint("parts.write")
        except OSError:
            fired += 1
    queue.put(fired)


def test_count_holds_across_processes(tmp_path, monkeypatch):
    """4 processes hit the point 3 times each: exactly N fire in all."""
    n = 5
    monkeypatch.setenv(failpoints.ENV, f"parts.write=OSError(EIO):flaky disk*{n}")
    monkeypatch.setenv(failpoints.DIR_ENV, str(tmp_path / "state"))
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: they read the environment at import
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hit_three_times, args=(queue,)) for _ in range(4)]
    for p in procs:
        p.start()
    fired = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(fired) == n, fired
    assert len(list((tmp_path / "state").iterdir())) == n


def test_default_state_folder_follows_the_spec(monkeypatch):
    monkeypatch.delenv(failpoints.DIR_ENV, raising=False)
    configure("listing=RuntimeError")
    a = failpoints.state_dir()
    configure("listing=RuntimeError*2")
    assert a != failpoints.state_dir() and a.name.startswith("annotator-failpoints-")
    assert a.parent == failpoints.default_state_dir("x").parent


class _Hitter:
    """A Ray actor that hits a point 3 times and says how many fired."""

    def hit_three_times(self) -> int:
        from annotator.failpoints import failpoint

        fired = 0
        for _ in range(3):
            try:
                failpoint("engine.forward")
            except RuntimeError:
                fired += 1
        return fired


def test_count_holds_across_ray_workers(ray_session, tmp_path):
    """Actors of an already running Ray (started before the spec was set) get the spec
    through ``runtime_env()``; 3 actors x 3 hits, exactly N fire in all."""
    ray = ray_session
    n = 4
    configure(f"engine.forward=torch.cuda.OutOfMemoryError:CUDA out of memory*{n}", tmp_path / "state")
    env = failpoints.runtime_env()
    assert env == {"env_vars": {failpoints.ENV: f"engine.forward=torch.cuda.OutOfMemoryError:CUDA out of memory*{n}",
                                failpoints.DIR_ENV: str(tmp_path / "state")}}
    Hitter = ray.remote(num_cpus=0, runtime_env=env)(_Hitter)
    actors = [Hitter.remote() for _ in range(3)]
    try:
        fired = ray.get([a.hit_three_times.remote() for a in actors], timeout=300)
    finally:
        for a in actors:
            ray.kill(a)
    assert sum(fired) == n, fired
    configure(None)
    assert failpoints.runtime_env() is None
