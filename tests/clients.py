"""Real-client tests run, or CI fails: never a silent skip there.

:func:`require_client` skips a test whose labeling-tool client (a library, a bundled
server binary) is missing on a developer's machine, and fails it instead when
``ANNOTATOR_REQUIRE_CLIENTS=1`` is set (``.ci/run`` sets it), so that a CI image that
lost a client shows as a failure, not as a skipped test nobody reads.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

__all__ = ["REQUIRE_ENV", "import_client", "require_client"]

REQUIRE_ENV = "ANNOTATOR_REQUIRE_CLIENTS"


def require_client(name: str, reason: str) -> None:
    """Skip the calling test (``name``: the client, ``reason``: what is missing), or
    fail it when ``ANNOTATOR_REQUIRE_CLIENTS=1``."""
    message = f"{name}: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: the real-client tests must run)", pytrace=False)
    pytest.skip(message)


def import_client(module: str, install: str) -> ModuleType:
    """``module`` imported, or :func:`require_client` with the ``install`` command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require_client(module, f"not installed ({exc}); {install}")
        raise  # unreachable: require_client raises
