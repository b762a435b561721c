"""``python -m annotator.export OUTPUT --format FORMAT [--to PATH] [options]``.

Thin CLI over :data:`annotator.export.EXPORTERS`; ``main(argv)`` returns the exit
status (0 ok, 2 bad input or option, 3 missing optional dependency).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from annotator.cli import parse_storage_options
from annotator.export import (
    DEFAULT_LS_IMAGE_URL_PREFIX,
    EXPORTERS,
    ExportError,
    ExportOptions,
    export,
    parse_classes,
)
from annotator.export.common import HF_IMAGE_MODES, YOLO_IMAGE_MODES
from annotator.storage.redact import redact_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m annotator.export",
        description=(
            "Export a run's annotations (OUTPUT/annotations.parquet, else OUTPUT/parts/*.parquet) "
            "for a labeling tool. Formats: coco (CVAT 'COCO 1.0', FiftyOne, datumaro: COCO "
            "instances JSON with RLE masks or polygons), labelstudio (Label Studio tasks with brush "
            "predictions + labeling config), masks (VOC-palette PNG label maps), yolo / yolo-semantic "
            "(Ultralytics segmentation datasets), cvat-masks (CVAT 'Segmentation mask 1.1'), hf (a Hugging "
            "Face dataset saved to disk)."
        ),
    )
    parser.add_argument("output", help="the run's OUTPUT folder (local path or fsspec URL)")
    parser.add_argument(
        "--format", required=True, metavar="FORMAT",
        help=f"export format, one of: {', '.join(sorted(EXPORTERS))}",
    )
    parser.add_argument("--to", default=None, metavar="PATH", help="target folder (default: OUTPUT/exports/FORMAT/)")

    filters = parser.add_argument_group("filters (all formats)")
    filters.add_argument(
        "--classes", default=None, metavar="NAMES",
        help="comma-separated class names to export (default: every class but background)",
    )
    filters.add_argument("--min-area", type=int, default=0, metavar="PIXELS",
                         help="drop masks with fewer pixels than this (default 0)")
    filters.add_argument("--min-score", type=float, default=0.0, metavar="SCORE",
                         help="drop masks whose mean confidence is below this, in [0, 1] (default 0)")
    filters.add_argument("--instances", nargs="?", const="", default=None, metavar="CLASSES",
                         help="one object per 8-connected component of a class mask (its own bbox, area and "
                              "score; --min-area/--min-score apply per object), for every class or for the "
                              "comma-separated CLASSES only ('things'; the others stay one mask per image). "
                              "coco, labelstudio; yolo always splits")
    filters.add_argument("--polygon-tolerance", type=float, default=1.0, metavar="PIXELS",
                         help="polygon simplification in pixels (coco --polygons, yolo; default 1.0, 0 = exact); "
                              "the export reports the polygons' IoU with the masks")

    coco = parser.add_argument_group("coco")
    coco.add_argument("--iscrowd", type=int, choices=(0, 1), default=0,
                      help="iscrowd written on every annotation (default 0; 1 = 'ignore region' "
                           "to COCO evaluation, but some readers such as supervision only decode RLE then)")
    coco.add_argument("--images-root", default="", metavar="PREFIX",
                      help="folder or URL prefix joined before every images[].file_name (default: none)")
    coco.add_argument("--polygons", action="store_true",
                      help="segmentation as polygons (holes joined by keyhole cuts) instead of RLE")
    coco.add_argument("--zip", action="store_true",
                      help="also write TO/coco.zip holding annotations/instances_default.json (CVAT upload)")

    ls = parser.add_argument_group("labelstudio")
    ls.add_argument("--ls-from-name", default="label", metavar="NAME",
                    help="name of the project's <BrushLabels> tag (default 'label')")
    ls.add_argument("--ls-to-name", default="image", metavar="NAME",
                    help="name of the project's <Image> tag (default 'image')")
    ls.add_argument("--image-url-prefix", default=DEFAULT_LS_IMAGE_URL_PREFIX, metavar="PREFIX",
                    help="prefix of data.image before the percent-encoded file name (default "
                         f"'{DEFAULT_LS_IMAGE_URL_PREFIX}': Label Studio local files with "
                         "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT = the source root; e.g. "
                         "'s3://bucket/prefix/' for cloud storage, 'https://host/images/' for a web server)")
    ls.add_argument("--model-version", default=None, metavar="TEXT",
                    help="predictions[].model_version (default: from the run metadata)")
    ls.add_argument("--push", default=None, metavar="URL",
                    help="import the tasks with their predictions into the Label Studio server at URL (instead "
                         "of writing files): idempotent (tasks whose image is already in the project are "
                         "skipped), in pages; the token comes from $LABEL_STUDIO_API_KEY or --api-key")
    ls.add_argument("--project", default=None, metavar="ID|TITLE", help="with --push: the project, by id or title")
    ls.add_argument("--create-project", action="store_true",
                    help="with --push: create the project (with our labeling config) when no project has that title")
    ls.add_argument("--api-key", default=None, metavar="TOKEN",
                    help="with --push: the Label Studio token (default: $LABEL_STUDIO_API_KEY, which other users of the machine cannot read from the process list; never printed)")
    ls.add_argument("--page-size", type=int, default=500, metavar="N", help="with --push: tasks per import request")

    masks = parser.add_argument_group("masks")
    masks.add_argument("--confidence", action="store_true",
                       help="also write <stem>_conf.png, 8-bit grayscale = round(255 * confidence)")

    yolo = parser.add_argument_group("yolo, yolo-semantic")
    yolo.add_argument("--yolo-images", choices=YOLO_IMAGE_MODES, default="link",
                      help="images/: symlinks to local source images (copies from object storage), copies, or "
                           "none (default link)")
    yolo.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                      help="put a seeded, per-image-stable fraction F of the images in val (default 0: val = train)")
    yolo.add_argument("--split-seed", type=int, default=0, metavar="N", help="seed of the train/val split")

    hf = parser.add_argument_group("hf")
    hf.add_argument("--hf-images", choices=HF_IMAGE_MODES, default="bytes",
                    help="the image column: the image's bytes as an Image feature (default; self-contained, "
                         "what push_to_hub uploads) or the source image's path as a string")

    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec storage options as a JSON object, for reading OUTPUT and writing TO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        storage_options = parse_storage_options(args.storage_options) or None
        options = ExportOptions(
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
            storage_options=storage_options,
        )
        if args.push is not None:
            if args.format != "labelstudio":
                raise ExportError(f"--push: expected --format labelstudio, got --format {args.format}")
            if not args.project:
                raise ExportError("--push: expected --project ID or TITLE, got none")
            from annotator.export.ls_push import push

            result = push(args.output, args.push, args.project, options, api_key=args.api_key,
                          create=args.create_project, page_size=args.page_size)
        else:
            result = export(args.output, args.format, args.to, options)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ExportError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    for path in result.paths:
        print(f"  {redact_text(path)}")
    if not result.counts.get("annotations"):
        print(
            f"warning: the {args.format} export holds no annotations "
            f"(counts: {result.counts}); check the filters and the run's summary",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
