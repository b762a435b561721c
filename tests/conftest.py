"""Shared fixtures.

``mem_output``: a throwaway memory:// output URL, removed afterwards.

``ray_session``: one local Ray instance (2 CPUs, no dashboard) for the whole test
session. Tests that run the pipeline on Ray request it; ``annotator.distributed.ray_runner.init_ray``
then reuses it instead of starting a Ray per run (starting Ray costs ~10 s).

It is deliberately not autouse: unit tests that never touch Ray do not pay for it. It
always starts a NEW local instance (``address="local"``), never joining a cluster found
through ``$RAY_ADDRESS`` or a ``ray start`` on this machine (``tests/distributed/test_ray_job.py``
runs such a cluster of its own, with explicit addresses).

``ANNOTATOR_REQUIRE_CLIENTS=1`` (set by ``.ci/run``): a test that skips fails instead,
so a real-client test (datumaro, FiftyOne's database, the Label Studio server, moto,
Ultralytics, a second Ray node, Chromium) whose client is missing cannot pass by not
running. Only the skips that say something true of the machine stay skips: tests marked
``gpu``, and the reasons in :data:`MACHINE_SKIPS`.
"""

from __future__ import annotations

import logging
import os
import uuid

import fsspec
import pytest

#: Skip reasons that describe the machine, not a missing install: allowed under
#: ``ANNOTATOR_REQUIRE_CLIENTS=1``. Matched as substrings of the skip's reason.
MACHINE_SKIPS = (
    "this machine has CUDA",  # a CPU-only check on a CUDA machine
    "root reads mode-000 files",  # permission tests run as root in CI
    "needs a CUDA device",
)


def _require_clients() -> bool:
    return os.environ.get("ANNOTATOR_REQUIRE_CLIENTS", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``ANNOTATOR_REQUIRE_CLIENTS=1``, turn a skip into a failure (see the module doc)."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _require_clients()) or item.get_closest_marker("gpu") is not None:
        return
    if hasattr(report, "wasxfail"):  # an expected failure is not a skip
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(allowed in reason for allowed in MACHINE_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under ANNOTATOR_REQUIRE_CLIENTS=1, which requires every client: {reason} "
                       "(install it as .ci/run does, or unset ANNOTATOR_REQUIRE_CLIENTS for a partial local run)")


def start_session_ray():
    """A NEW local Ray in this process (2 CPUs, no dashboard); see :func:`ray_session`."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """The session's Ray (the ``ray`` module, initialised); shut down at the end."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # someone already started one in this process: share it
        yield ray
        return
    saved_address = os.environ.pop("RAY_ADDRESS", None)
    start_session_ray()
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved_address is not None:
            os.environ["RAY_ADDRESS"] = saved_address

@pytest.fixture
def mem_output():
    url = f"memory://test-{uuid.uuid4().hex}/out"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
