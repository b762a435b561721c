"""Shared fixtures.

``mem_output``: a throwaway memory:// output URL, removed afterwards.

``ray_session``: one local Ray instance (2 CPUs, no dashboard) for the whole test
session. Tests that run the pipeline on Ray request it; ``annotator.distributed.ray_runner.init_ray``
then reuses it instead of starting a Ray per run (starting Ray costs ~10 s).

It is deliberately not autouse: unit tests that never touch Ray do not pay for it. It
always starts a NEW local instance (``address="local"``), never joining a cluster found
through ``$RAY_ADDRESS`` or a ``ray start`` on this machine (``tests/distributed/test_ray_job.py``
runs such a cluster of its own, with explicit addresses).
"""

from __future__ import annotations

import logging
import os
import uuid

import fsspec
import pytest


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
