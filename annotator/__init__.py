"""annotator: training-free dataset pre-labeling with CLIP-DIY.

The flow (one package per stage; ``docs/design.md`` says what each owns)::

    inputs/       vocabulary file, source listing (names only), HF datasets, decode, loader
      -> job.py   validate -> list -> open the output -> annotate shards -> finish
      -> shards/  ShardTask -> processor: read -> engine -> encode -> one Parquet part
           engine.py + core/ + models/   crops -> CLIP scores -> multi-scale -> guidance
           records/                      Prediction -> ImageRecord (COCO RLE, PNG)
           storage/                      parts, manifest, crash log (every OUTPUT/ name)
      -> distributed/  the policy (pure) and the Ray runner (the only Ray code)
      -> outputs/  merge + summary (+ evaluation/ metrics against ground truth)
      -> review/ (report), export/ (COCO, Label Studio, PNG masks)

Glossary of shapes and frames (names carry them):

- ``*_hw``: (height, width) order, e.g. ``size_hw``, ``labels_hw`` (H, W) int32 in the
  ORIGINAL image's displayed frame (EXIF orientation applied).
- ``confidence_hw``: (H, W) float32 in [0, 1]; stored as 8-bit PNG ``round(255 * c)``.
- ``bbox_xywh``: ``[x, y, w, h]`` in pixels, x/y the smallest column/row (COCO).
- ``*_px``: sizes in pixels (``patch_sizes_px``); ``*_s``: seconds.
- class index 0 is ``background``; index c >= 1 is COCO ``category_id`` c.
- ``image_id``: 1-based position in the sorted listing; shard ``i`` holds ids
  ``i * shard_size + 1 ..``.

The Python entry point (what ``python -m annotator.run`` does, without a command line)::

    from annotator import EngineConfig, ModelSpec, ReadSpec, RunRequest, WriteSpec, run_job

    result = run_job(RunRequest(read=ReadSpec(source="photos/"), write=WriteSpec(output="out/"),
                                model=ModelSpec(engine=EngineConfig(model="ViT-B-16"), vocab="classes.txt")))
    result.exit_code, result.summary  # 0 or 1 (failure rate); OUTPUT/summary.json's content

These names are imported on first use, so ``import annotator`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The public Python API: name -> the module that defines it (imported on first use).
_API = {
    "run_job": "annotator.job",
    "RunResult": "annotator.job",
    "RunRequest": "annotator.request",
    "ReadSpec": "annotator.request",
    "ModelSpec": "annotator.request",
    "WriteSpec": "annotator.request",
    "ScheduleSpec": "annotator.request",
    "EngineConfig": "annotator.config",
    "ConfigError": "annotator.config",
}
__all__ = ["ConfigError", "EngineConfig", "ModelSpec", "ReadSpec", "RunRequest", "RunResult", "ScheduleSpec",
           "WriteSpec", "__version__", "run_job"]

if TYPE_CHECKING:
    from annotator.config import ConfigError, EngineConfig
    from annotator.job import RunResult, run_job
    from annotator.request import ModelSpec, ReadSpec, RunRequest, ScheduleSpec, WriteSpec


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'annotator' has no attribute {name!r}")
