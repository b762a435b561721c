"""``python -m annotator.export OUTPUT --format FORMAT [--to PATH] [options]``.

Thin CLI over :data:`annotator.export.EXPORTERS`; ``main(argv)`` returns the exit
status: 0 ok; 2 bad input or option (an option the format does not honour, a missing
optional dependency, an incomplete run without ``--partial``, a failed write classified
as a storage error: the previous export is left as it was); 3 an internal error (a bug:
one ``error:`` line naming the crash log, :func:`annotator.cli.report_error`);
130/143 interrupted by SIGINT/SIGTERM (the previous export too).
Each option's help names the formats that honour it (from the registry) and its default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from annotator.cli import parse_storage_options, report_error
from annotator.errors import install_interrupt_handlers, report_interrupt, run_command
from annotator.export import (
    DEFAULT_LS_IMAGE_URL_PREFIX,
    EXPORTERS,
    ExportError,
    ExportOptions,
    export,
    exporter,
    parse_classes,
    prepare,
)
from annotator.export.common import HF_IMAGE_MODES, YOLO_IMAGE_MODES
from annotator.export.formats import COMMON_OPTIONS, MissingExtraError, check_given, formats_taking
from annotator.failpoints import failpoint
from annotator.storage.redact import install_log_redaction, redact_text, take_arg_credentials
from annotator.storage.retry import as_storage_error


def _scoped(dest: str, text: str) -> str:
    """``text`` followed by the formats that honour the option ``dest`` (from the registry)."""
    if dest in COMMON_OPTIONS:
        return text
    takers = formats_taking(dest, EXPORTERS)
    return f"{text} [{', '.join(takers) if takers else 'no format yet'}]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m annotator.export",
        description=(
            "Export a run's annotations (OUTPUT/annotations.parquet, else OUTPUT/parts/*.parquet) "
            "for a labeling tool. Formats: coco (CVAT 'COCO 1.0', FiftyOne, datumaro: COCO "
            "instances JSON with RLE masks or polygons), labelstudio (Label Studio tasks with brush "
            "predictions + labeling config), masks (VOC-palette PNG label maps), yolo / yolo-semantic "
            "(Ultralytics segmentation datasets), cvat-masks (CVAT 'Segmentation mask 1.1'), hf (a Hugging "
            "Face dataset saved to disk). An option that the chosen format does not honour is refused; the "
            "formats that honour an option are listed in [brackets] after its help."
        ),
    )
    parser.add_argument("output", help="the run's OUTPUT folder (local path or fsspec URL)")
    parser.add_argument(
        "--format", required=True, metavar="FORMAT",
        help=f"export format, one of: {', '.join(sorted(EXPORTERS))} (required, no default)",
    )
    parser.add_argument("--to", default=None, metavar="PATH",
                        help="target folder, replaced as a whole when the export is complete (default: "
                             "OUTPUT/exports/FORMAT/; an existing folder must be empty or an earlier export)")
    parser.add_argument("--partial", action="store_true",
                        help="export a run that is incomplete or still running; the summary says how many listed "
                             "images have no row (default: off, such a run is refused)")

    def add(group, *flags, **kw):
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        kw["help"] = _scoped(dest, kw["help"])
        return group.add_argument(*flags, **kw)

    filters = parser.add_argument_group("filters (all formats)")
    add(filters, "--classes", default=None, metavar="NAMES",
        help="comma-separated class names to export (default: every class but background)")
    add(filters, "--min-area", type=int, default=0, metavar="PIXELS",
        help="drop masks with fewer pixels than this (default 0)")
    add(filters, "--min-score", type=float, default=0.0, metavar="SCORE",
        help="drop masks whose mean confidence is below this, in [0, 1] (default 0)")

    shapes = parser.add_argument_group("objects and polygons")
    add(shapes, "--instances", nargs="?", const="", default=None, metavar="CLASSES",
        help="one object per 8-connected component of a class mask (its own bbox, area and score; "
             "--min-area/--min-score apply per object), for every class or for the comma-separated CLASSES only "
             "('things'; the others stay one mask per image); yolo always splits (default: off, one mask per "
             "class and image)")
    add(shapes, "--polygon-tolerance", type=float, default=1.0, metavar="PIXELS",
        help="polygon simplification in pixels, 0 = exact (coco with --polygons, yolo); the export reports the "
             "polygons' IoU with the masks (default 1.0)")

    coco = parser.add_argument_group("coco")
    add(coco, "--iscrowd", type=int, choices=(0, 1), default=0,
        help="iscrowd written on every annotation (default 0; 1 = 'ignore region' to COCO evaluation, but some "
             "readers such as supervision only decode RLE then)")
    add(coco, "--images-root", default="", metavar="PREFIX",
        help="folder or URL prefix joined before every image's file name: coco's images[].file_name; fiftyone's "
             "filepath, a local copy or mount of a source in a bucket (default: none)")
    add(coco, "--polygons", action="store_true",
        help="segmentation as polygons (holes joined by keyhole cuts) instead of RLE (default: off, RLE)")
    add(coco, "--zip", action="store_true",
        help="also write TO/coco.zip holding annotations/instances_default.json (CVAT upload; default: off)")

    ls = parser.add_argument_group("labelstudio")
    add(ls, "--ls-from-name", default="label", metavar="NAME",
        help="name of the project's <BrushLabels> tag (default 'label')")
    add(ls, "--ls-to-name", default="image", metavar="NAME",
        help="name of the project's <Image> tag (default 'image')")
    add(ls, "--image-url-prefix", default=DEFAULT_LS_IMAGE_URL_PREFIX, metavar="PREFIX",
        help="prefix of data.image before the percent-encoded file name (default "
             f"'{DEFAULT_LS_IMAGE_URL_PREFIX}': Label Studio local files; e.g. "
             "'s3://bucket/prefix/' for cloud storage, 'https://host/images/' for a web server)")
    add(ls, "--model-version", default=None, metavar="TEXT",
        help="predictions[].model_version (default: from the run metadata)")
    add(ls, "--push", default=None, metavar="URL",
        help="import the tasks with their predictions into the Label Studio server at URL instead of writing "
             "files: idempotent (tasks whose image is already in the project are skipped), in pages; the token "
             "comes from $LABEL_STUDIO_API_KEY or --api-key (default: off, write files)")
    push_help = " (with --push)"
    ls.add_argument("--project", default=None, metavar="ID|TITLE",
                    help="the project, by id or title; required" + push_help + " (default: none)")
    ls.add_argument("--create-project", action="store_true",
                    help="create the project (with our labeling config) when no project has that title"
                         + push_help + " (default: off)")
    ls.add_argument("--api-key", default=None, metavar="TOKEN",
                    help="the Label Studio token; $LABEL_STUDIO_API_KEY, which other users of the machine cannot "
                         "read from the process list, is safer; never printed" + push_help
                         + " (default: $LABEL_STUDIO_API_KEY)")
    ls.add_argument("--page-size", type=int, default=500, metavar="N",
                    help="tasks per import request" + push_help + " (default 500)")

    masks = parser.add_argument_group("masks")
    add(masks, "--confidence", action="store_true",
        help="also write <stem>_conf.png, 8-bit grayscale = round(255 * confidence) (default: off)")

    yolo = parser.add_argument_group("yolo, yolo-semantic")
    add(yolo, "--yolo-images", choices=YOLO_IMAGE_MODES, default="link",
        help="images/: symlinks to local source images (copies from object storage), copies, or none (default link)")
    add(yolo, "--val-fraction", type=float, default=0.0, metavar="F",
        help="put a seeded, per-image-stable fraction F of the images in val (default 0: val = train)")
    add(yolo, "--split-seed", type=int, default=0, metavar="N",
        help="seed of the train/val split, with --val-fraction (default 0)")

    hf = parser.add_argument_group("hf")
    add(hf, "--hf-images", choices=HF_IMAGE_MODES, default="bytes",
        help="the image column: the image's bytes as an Image feature (self-contained, what push_to_hub uploads) "
             "or the source image's path as a string (default bytes)")

    fo = parser.add_argument_group("fiftyone")
    add(fo, "--dataset", default=None, metavar="NAME",
        help="the persistent FiftyOne dataset to create (default: none)")
    add(fo, "--overwrite-dataset", action="store_true",
        help="replace an existing FiftyOne dataset of that name (default: off, refused)")
    add(fo, "--semantic", action="store_true",
        help="one label map per image (fo.Segmentation) instead of one detection per mask (default: off)")

    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec storage options as a JSON object, for reading OUTPUT and writing TO "
                             "(default: none)")
    return parser


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The ``dest`` of every option the user gave on the command line (whatever its value:
    ``--iscrowd 0`` counts although 0 is the default)."""
    probe = build_parser()
    for action in probe._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
            action.required = False
    namespace, _ = probe.parse_known_args(argv)
    return set(vars(namespace)) - {"output"}


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        iscrowd=args.iscrowd,
        min_area=args.min_area,
        min_score=args.min_score,
        classes=parse_classes(args.classes),
        images_root=args.images_root,
        zip=args.zip,
        ls_from_name=args.ls_from_name,
        ls_to_name=args.ls_to_name,
        image_url_prefix=args.image_url_prefix,
        model_version=args.model_version,
        confidence=args.confidence,
        instances=args.instances is not None,
        instance_classes=parse_classes(args.instances) if args.instances else None,
        polygons=args.polygons,
        polygon_tolerance=args.polygon_tolerance,
        yolo_images=args.yolo_images,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        hf_images=args.hf_images,
        storage_options=parse_storage_options(args.storage_options) or None,
        partial=args.partial,
        dataset=args.dataset,
        overwrite_dataset=args.overwrite_dataset,
        semantic=args.semantic,
    )


def _run(args: argparse.Namespace, given: set[str]):
    exporter(args.format)  # an unknown format first
    check_given(args.format, given, EXPORTERS)
    options = options_from_args(args)
    if args.push is None:
        return export(args.output, args.format, args.to, options)
    if not args.project:
        raise ExportError("--push: expected --project ID or TITLE, got none")
    from annotator.export.ls_push import push

    state = prepare(args.output, args.format, options)
    result = push(args.output, args.push, args.project, options, api_key=args.api_key,
                  create=args.create_project, page_size=args.page_size)
    if state.missing or state.writer:
        result.missing_rows, result.listed_images = state.missing, state.listed
    return result


def _is_optional_dependency(exc: ImportError) -> bool:
    """An optional package that a format needs is not installed (a refusal, exit 2), as
    opposed to an import that fails inside the project (a bug, exit 3)."""
    name = exc.name or ""
    return bool(name) and name.split(".")[0] != "annotator" and isinstance(exc, ModuleNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    target = args.to or f"{args.output.rstrip('/')}/exports/{args.format}"
    kept = ("the tasks imported so far stay in the project (pushing again imports the rest)" if args.push
            else f"{redact_text(target)} was left as it was")
    install_log_redaction()  # a client's log lines (botocore's DEBUG request headers) pass the one redaction
    install_interrupt_handlers()
    options: dict | None = None
    try:
        take_arg_credentials(args, move=("output", "to", "images_root"), refuse=("image_url_prefix", "push"),
                             secrets=("api_key",))  # issue 22.1: the one credential rule (annotator.storage.redact)
        options = parse_storage_options(args.storage_options) or None
        try:
            failpoint("export")  # ANNOTATOR_FAILPOINTS: the interruption tests signal here
            result = _run(args, given_options(parser, argv))
        except ImportError as exc:
            if isinstance(exc, ExportError) or not _is_optional_dependency(exc):
                raise
            raise MissingExtraError(f"{exc}; install the extra of this format (see the README, 'Use the "
                                    "output')") from exc
    except KeyboardInterrupt as e:  # errors.Interrupted: SIGINT or SIGTERM
        return report_interrupt(e, kept)
    except Exception as e:  # noqa: BLE001 - one line; a bug's traceback goes to a crash log (exit 3)
        # The crash log goes to the temporary directory: the run folder is the export's input.
        return report_error(as_storage_error(e, f"the {args.format} export ({kept})"), None, options)
    print(result.summary())
    for path in result.paths:
        print(f"  {redact_text(path)}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.counts.get("annotations") == 0:  # a push counts the run's annotations, imported or not
        print(
            f"warning: the {args.format} export holds no annotations "
            f"(counts: {result.counts}); check the filters and the run's summary",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    run_command(main)
