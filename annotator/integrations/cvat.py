"""A CVAT auto-annotation function: the model run by ``cvat-cli`` on a CVAT task.

::

    pip install 'annotator[cvat]'
    cvat-cli --server-host URL --auth USER task auto-annotate TASK_ID \\
        --function-module annotator.integrations.cvat \\
        -p vocab=str:vocab.txt -p device=str:cuda [--conf-threshold 0.5] [--clear-existing]

cvat-cli imports this module and calls :func:`create` with the ``-p NAME=TYPE:VALUE``
parameters (``str:``, ``int:``, ``float:``, ``bool:``); the object it returns has the
``spec`` (one ``mask`` label per class of the vocabulary, background excepted: the task's
labels are matched by name) and ``detect(context, image)``, which cvat-cli calls once per
frame and whose shapes it uploads. The model loads once, in :func:`create`.

Parameters (every one a string is fine; names as the ``python -m annotator.run``
options, with underscores):

- ``vocab`` (required): a vocabulary file, or the class names separated by commas
  (``vocab=str:cat,dog,traffic light``);
- the engine options: ``model``, ``pretrained``, ``templates``, ``saliency``,
  ``dino_weights``, ``found_weights``, ``weights_dir``, ``saliency_max_side``,
  ``protocol``, ``input_size``, ``patch_sizes``, ``stride_fraction``, ``scale_weights``,
  ``device``, ``precision`` (defaults as in ``annotator.run``);
- the export filters: ``classes``, ``min_area``, ``min_score``, ``instances`` (``bool:true``
  for one shape per 8-connected object of every class, or the comma-separated classes
  to split), and ``polygon_tolerance`` (pixels, when CVAT asks for polygons).

What ``detect`` returns for one image: one mask shape per class present (its union
mask; one per object with ``instances``), with ``score`` = the mask's mean confidence,
after the filters; only shapes whose score is at least ``context.conf_threshold``
(cvat-cli's ``--conf-threshold``); polygons (``cv2`` contours, holes joined by keyhole
cuts) instead of masks when ``context.conv_mask_to_poly`` (``--conv-mask-to-poly``).
These are the masks that ``python -m annotator.run`` + ``--format coco`` would give for
the same image.

Each frame is downloaded and run one at a time by cvat-cli, on the machine that runs it:
fine for a task of modest size. For anything large, run the batch job (resumable,
multi-GPU) and import its ``coco`` export into CVAT instead.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

__all__ = ["INSTALL_HINT", "AnnotatorFunction", "create"]

INSTALL_HINT = "pip install 'annotator[cvat]'"


def _cvataa():
    try:
        import cvat_sdk.auto_annotation as cvataa
    except ImportError as e:
        raise ImportError(f"the CVAT function needs cvat-sdk ({e}): {INSTALL_HINT}") from None
    return cvataa


def _parser() -> argparse.ArgumentParser:
    from annotator.cli import add_engine_arguments

    parser = argparse.ArgumentParser(prog="annotator.integrations.cvat", add_help=False, exit_on_error=False)
    parser.add_argument("--vocab", required=True)
    add_engine_arguments(parser)
    parser.add_argument("--classes", default=None)
    parser.add_argument("--min-area", type=int, default=0)
    parser.add_argument("--min-score", type=float, default=0.0)
    parser.add_argument("--instances", default=None)
    parser.add_argument("--polygon-tolerance", type=float, default=1.0)
    return parser


def _argv(params: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    """``{"min_area": 10, "instances": True}`` -> ``["--min-area", "10", "--instances", ""]``."""
    known = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for name, value in params.items():
        action = known.get(name)
        if action is None or name in ("batch_size",):
            valid = sorted(d for d in known if d != "batch_size")
            raise ValueError(f"unknown parameter {name!r}; valid parameters: {', '.join(valid)}")
        flag = action.option_strings[0]
        if name == "instances":
            if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "")):
                continue
            argv += [flag, "" if value is True or str(value).strip().lower() in ("true", "yes", "1") else str(value)]
        elif name == "templates":
            for t in str(value).split("|"):
                argv += [flag, t]
        else:
            argv += [flag, str(value)]
    return argv


def _vocabulary(value: str):
    from annotator.export.common import parse_classes
    from annotator.inputs.vocab import Vocabulary, load_vocabulary

    if os.path.isfile(value):
        return load_vocabulary(value)
    names = parse_classes(value)
    if not names:
        raise ValueError(f"vocab: expected a vocabulary file or comma-separated class names, got {value!r}")
    return Vocabulary.from_names(list(names), source="vocab parameter")


class AnnotatorFunction:
    """A CVAT detection function over one loaded :class:`~annotator.engine.Engine`.

    Attributes:
        spec: ``DetectionFunctionSpec``: label id = class index (>= 1), type ``mask``.
        class_names: the vocabulary, index 0 = background.
    """

    def __init__(self, **params: Any):
        from annotator.cli import engine_config_from_args
        from annotator.engine import Engine
        from annotator.export.common import AnnotationFilter, ExportOptions, instance_class_ids, parse_classes
        from annotator.export.shapes import InstanceSplitter

        cvataa = _cvataa()
        if not params.get("vocab"):
            raise ValueError("expected the parameter vocab (-p vocab=str:FILE or -p vocab=str:cat,dog), got none")
        parser = _parser()
        try:
            args = parser.parse_args(_argv(params, parser))
        except argparse.ArgumentError as e:
            raise ValueError(f"parameter {e.argument_name or ''}: {e.message}".replace("--", "")) from None
        vocabulary = _vocabulary(args.vocab)
        self.class_names = vocabulary.names
        self._polygon_tolerance = args.polygon_tolerance
        if self._polygon_tolerance < 0:
            raise ValueError(f"polygon_tolerance: expected >= 0 pixels, got {self._polygon_tolerance}")
        options = ExportOptions(min_area=args.min_area, min_score=args.min_score, classes=parse_classes(args.classes),
                                instances=args.instances is not None,
                                instance_classes=parse_classes(args.instances) if args.instances else None)
        self._keep = AnnotationFilter.from_options(self.class_names, options)
        self._split = InstanceSplitter(instance_class_ids(self.class_names, options, self._keep.class_ids))
        self.spec = cvataa.DetectionFunctionSpec(labels=[
            cvataa.label_spec(self.class_names[c], c, type="mask") for c in sorted(self._keep.class_ids)])
        config = engine_config_from_args(args)
        self.engine = Engine(config, vocabulary)  # loaded once, here

    def annotations(self, image, frame_name: str = "frame") -> list:
        """The :class:`~annotator.records.Annotation` list of one PIL image, after the
        filters (and the instance split), as the exporters would write it."""
        from types import SimpleNamespace

        from annotator.records import ok_record

        rgb = np.asarray(image.convert("RGB"))
        (pred,) = self.engine.predict([rgb], names=[frame_name])
        record = ok_record(SimpleNamespace(image_id=1, file_name=frame_name, uri=frame_name), pred.labels_hw,
                           pred.confidence_hw, self.class_names, pred.class_stats)
        return self._keep.apply(self._split(record))

    def detect(self, context, image) -> list:
        """CVAT's ``detect``: mask shapes (polygons with ``context.conv_mask_to_poly``)
        of the annotations scoring at least ``context.conf_threshold``."""
        from cvat_sdk.masks import encode_mask

        from annotator.export.shapes import mask_polygons
        from annotator.records import decode_mask

        cvataa = _cvataa()
        threshold = context.conf_threshold
        shapes = []
        for a in self.annotations(image, getattr(context, "frame_name", "frame")):
            if threshold is not None and a.score < threshold:
                continue
            mask = decode_mask(a.segmentation)
            score = float(a.score)
            if context.conv_mask_to_poly:
                shapes += [cvataa.polygon(a.category_id, points, score=score)
                           for points in mask_polygons(mask, self._polygon_tolerance)]
            else:
                x, y, w, h = (int(round(v)) for v in a.bbox_xywh)
                shapes.append(cvataa.mask(a.category_id, encode_mask(mask, bbox=[x, y, x + w, y + h]), score=score))
        return shapes


def create(**params: Any) -> AnnotatorFunction:
    """cvat-cli's entry point (``-p NAME=TYPE:VALUE`` become ``params``); loads the model."""
    return AnnotatorFunction(**params)
