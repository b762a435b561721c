"""Model servers that labeling tools call: ``python -m annotator.serve labelstudio``
(:mod:`annotator.serve.labelstudio_backend`, a Label Studio ML backend).

The web framework is an optional extra: ``pip install 'annotator[serve]'`` (FastAPI,
uvicorn, and the Label Studio SDK for the brush encoding).
"""

from __future__ import annotations

__all__ = ["install_hint"]


def install_hint() -> str:
    """What to pip install for the servers (the ``serve`` extra)."""
    return ("the model server needs FastAPI, uvicorn and the Label Studio SDK: "
            "pip install -c constraints.txt 'annotator[serve]'")
