"""Command-line pieces shared by every command (``run``, ``reduce``, ``report``,
``export``, ``serve``): the help formatter, the engine options that map onto
:class:`~annotator.config.EngineConfig`, the ``--storage-options`` parser, and
:func:`report_error`, how a command ends on an error (it writes crash logs, so it lives
here, above ``storage``, and not in :mod:`annotator.errors`, which ``storage`` imports).
One definition, here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from annotator.config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_TEMPLATES,
    PRECISIONS,
    PROTOCOLS,
    ConfigError,
    EngineConfig,
    default_weights_dir,
)
from annotator.errors import EXIT_ERROR, EXIT_INTERNAL, describe_error, is_own_error
from annotator.storage.crashlog import scrub_options_secrets, write_crash_report

__all__ = ["HelpFormatter", "add_engine_arguments", "engine_config_from_args", "parse_storage_options", "report_error"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each default shown once: appended as ``(default: X)`` only when
    the option's own help does not already say its default, and never for an unset
    (``None``) or off (``False``) one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action) or ""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the engine options (shared by every command) to ``parser``."""
    g = parser.add_argument_group("model and method")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="open_clip model name (e.g. ViT-B-32, ViT-B-16), or the test models "
                        "'tiny-random' / 'toy' (not real models). Default: %(default)s")
    g.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip pretrained tag, a local checkpoint file, or 'random' for "
                        "random weights (benchmarks only). Default: %(default)s")
    g.add_argument("--templates", action="append", default=None, metavar="TEMPLATE",
                   help="prompt template with one '{}' (repeat for an ensemble), or a file with "
                        "one template per line. Default: 'a photo of a {}'")
    g.add_argument("--saliency", default="found",
                   help="foreground saliency: found (default), found-bkg (training-free), none, "
                        "precomputed:<dir or URI> (.npy/.png per image stem), or the test "
                        "saliencies found-tiny-random / toy")
    g.add_argument("--dino-weights", default=None, metavar="FILE",
                   help="local DINO ViT-S/8 state dict (dino_deitsmall8_pretrain.pth, or timm's "
                        "vit_small_patch8_224.dino safetensors) instead of downloading it (default: downloaded once "
                        "into --weights-dir)")
    g.add_argument("--found-weights", default=None, metavar="FILE",
                   help="local FOUND decoder file (decoder_weights.pt) instead of downloading it (default: "
                        "downloaded once into --weights-dir)")
    g.add_argument("--weights-dir", default=None, metavar="DIR",
                   help="where weights are cached and looked up offline "
                        "(default: $ANNOTATOR_WEIGHTS_DIR or ~/.cache/annotator)")
    g.add_argument("--saliency-max-side", type=int, default=None, metavar="PX",
                   help="FOUND runs on the original image, shrunk so that its SHORT side is at "
                        "most this many pixels (and its long side at most 4x that); 0 = no cap. "
                        "Default: 448 under --protocol full, 0 (full size, as released) under official")
    g.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="full (default): class maps and saliency brought to the original "
                        "resolution before softmax/argmax; official: everything at 256x256, "
                        "labels resized with nearest (reproduces the paper)")
    g.add_argument("--input-size", type=int, default=256, metavar="PX",
                   help="side of the square image the patches are cut from. Default: %(default)s")
    g.add_argument("--patch-sizes", type=_int_list, default=(256, 128, 64), metavar="P,P,...",
                   help="patch sizes in pixels of the resized image. Default: 256,128,64")
    g.add_argument("--stride-fraction", type=float, default=0.5, metavar="F",
                   help="patch stride as a fraction of the patch size. Default: %(default)s")
    g.add_argument("--scale-weights", type=_float_list, default=None, metavar="W,W,...",
                   help="weight per patch size in the multi-scale mean. Default: equal")
    h = parser.add_argument_group("device")
    h.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda or cuda:N. Default: %(default)s")
    h.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="images per engine step. Default: %(default)s")
    h.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="encoder precision; auto = bf16 on CUDA and on CPUs with native bf16, else fp32 (fp32 for "
                        "the test models and for --protocol official on a CPU). Default: %(default)s")


def parse_storage_options(text: str | None) -> dict:
    """``--storage-options`` JSON -> fsspec options dict (``{}`` when not given).

    Shared by every command that takes the option; raises :class:`ConfigError`.
    """
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--storage-options: expected a JSON object, got invalid JSON ({e.msg})") from None
    if not isinstance(opts, dict):
        raise ConfigError(f"--storage-options: expected a JSON object, got {type(opts).__name__}")
    return opts


def _read_templates(values: list[str] | None) -> tuple[str, ...]:
    if not values:
        return DEFAULT_TEMPLATES
    out: list[str] = []
    for v in values:
        p = Path(v)
        if "{}" not in v and p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            out.extend(ln for ln in lines if ln and not ln.startswith("#"))
        else:
            out.append(v)
    return tuple(out)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build (and validate) an :class:`EngineConfig` from parsed engine options."""
    return EngineConfig(
        model=args.model,
        pretrained=args.pretrained,
        templates=_read_templates(args.templates),
        saliency=args.saliency,
        dino_weights=args.dino_weights,
        found_weights=args.found_weights,
        weights_dir=args.weights_dir or default_weights_dir(),
        saliency_max_side=args.saliency_max_side,
        protocol=args.protocol,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        input_size=args.input_size,
        patch_sizes_px=args.patch_sizes,
        stride_fraction=args.stride_fraction,
        scale_weights=args.scale_weights,
    )


def report_error(
    exc: BaseException,
    output: str | None = None,
    storage_options: dict | None = None,
    *,
    stream: TextIO | None = None,
) -> int:
    """The end of every command's ``except Exception``: print one ``error:`` line and
    return the exit code.

    - an :class:`AnnotatorError`: its message; returns 2.
    - anything else: the type and message, and the path of a crash log holding the
      traceback (written next to ``output`` when given and reachable, else in the
      temporary directory; see :func:`annotator.storage.crashlog.write_crash_report`);
      returns 3.
    """
    stream = stream if stream is not None else sys.stderr
    line = scrub_options_secrets(describe_error(exc), storage_options)
    if is_own_error(exc):
        print(f"error: {line}", file=stream)
        return EXIT_ERROR

    if not line.startswith(f"{type(exc).__name__}:"):
        line = f"{type(exc).__name__}: {line}"
    where = write_crash_report(exc, output, storage_options)
    tail = (f"; an internal error (a bug): the traceback is in {where}, please report it" if where else
            "; an internal error (a bug), and no crash log could be written; please report it")
    print(f"error: {line}{tail}", file=stream)
    return EXIT_INTERNAL
