"""The benchmark suite of ``annotator``: not part of the package, never installed with it.

Run from the repository root: ``python -m benchmarks`` (end-to-end throughput; ``--scale``,
``--compare-levers``, ``--ray-actors``, ``--compare-precision``; ``--scale-only`` for the
scale simulation alone), ``python -m benchmarks.exports`` (every exporter's time and peak
memory) and ``python -m benchmarks.encode`` (the record encoders' time per image).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root: the folder that holds ``benchmarks/`` and ``annotator/``.
REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """``os.environ`` with the repository root first on ``PYTHONPATH``, for the fresh
    processes a probe starts (and the Ray workers they start), which must import
    ``benchmarks`` whatever their working directory."""
    old = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + old if old else "")}
