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
"""

__version__ = "0.1.0"
