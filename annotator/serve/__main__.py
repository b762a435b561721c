"""``python -m annotator.serve labelstudio --vocab FILE [model options] [--host H] [--port P]``.

Starts a Label Studio ML backend (:mod:`annotator.serve.labelstudio_backend`): the model loads
once, then Label Studio's project *Settings* -> *Model* -> *Connect model* with the
printed URL. Exit status: 0 stopped (Ctrl-C); 2 refused (a bad option, a missing
vocabulary, the ``serve`` extra not installed: one ``error:`` line with the install
command); 3 internal error (one ``error:`` line naming the crash log with the traceback,
:func:`annotator.cli.report_error`); 130/143 interrupted while the model loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from annotator.cli import HelpFormatter, add_engine_arguments, engine_config_from_args

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090  # the port of Label Studio's own ML backend examples
#: The options (argparse dest) whose value is a URL, a local file or a name: a user:password@ in
#: them is refused (README, "Paths, credentials, untrusted strings").
SERVE_REFUSED = ("label_studio_url", "vocab", "pretrained", "dino_weights", "found_weights", "weights_dir")


def _classes(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m annotator.serve",
                                description="Serve the model to a labeling tool.", formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="tool", required=True, metavar="TOOL")
    ls = sub.add_parser(
        "labelstudio", formatter_class=HelpFormatter,
        help="a Label Studio ML backend (GET /health, POST /setup, POST /predict)",
        description="A Label Studio ML backend answering brush-mask predictions. Connect it in the project's "
                    "Settings -> Model -> Connect model. Task images on Label Studio (uploads, local files, "
                    "cloud storage) are read with $LABEL_STUDIO_URL and $LABEL_STUDIO_API_KEY (else with the "
                    "host and token Label Studio sends to /setup); plain http(s) URLs directly.")
    srv = ls.add_argument_group("server")
    srv.add_argument("--vocab", required=True,
                     help="vocabulary file: one class per line, optional 'name: prompt; prompt' (required); the "
                          "project's <BrushLabels> values are matched to these names")
    srv.add_argument("--host", default=DEFAULT_HOST,
                     help="address to listen on (0.0.0.0 for every interface, e.g. in a container). "
                          "Default: %(default)s")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on. Default: %(default)s")
    srv.add_argument("--label-studio-url", default=None, metavar="URL",
                     help="Label Studio's address for its own image URLs (default: $LABEL_STUDIO_URL, else the "
                          "hostname Label Studio sends to /setup); the token is read from $LABEL_STUDIO_API_KEY (else "
                          "the one Label Studio sends to /setup), never from the command line")
    srv.add_argument("--max-queue", type=int, default=8, metavar="N",
                     help="requests that may wait while one runs; more are answered HTTP 503. Default: %(default)s")
    srv.add_argument("--image-timeout", type=float, default=60.0, metavar="S",
                     help="seconds to read one task image. Default: %(default)s")
    srv.add_argument("--max-image-bytes", type=int, default=256 << 20, metavar="N",
                     help="refuse task images larger than this (that task's error). Default: 268435456 (256 MiB)")
    srv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                     help="uvicorn's and the backend's log level. Default: %(default)s")
    pr = ls.add_argument_group("predictions")
    pr.add_argument("--model-version", default=None,
                    help="the predictions' model_version (default: annotator-<version>:<model>/<weights>+<saliency>)")
    pr.add_argument("--min-area", type=int, default=0, metavar="PIXELS",
                    help="drop masks of fewer pixels. Default: %(default)s")
    pr.add_argument("--min-score", type=float, default=0.0, metavar="S",
                    help="drop masks whose score (mean confidence, 0..1) is below S. Default: %(default)s")
    pr.add_argument("--classes", type=_classes, default=None, metavar="A,B",
                    help="answer only these classes (default: every class the project's <BrushLabels> lists)")
    pr.add_argument("--instances", nargs="?", const="", default=None, metavar="CLASSES",
                    help="one brush region per 8-connected object (of CLASSES, comma-separated; default: of "
                         "every class) instead of one per class (default: off)")
    add_engine_arguments(ls)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))  # one line per image
    from annotator.serve import install_hint

    try:
        import fastapi  # noqa: F401
        import uvicorn
        from label_studio_sdk.converter import brush  # noqa: F401
    except ImportError as exc:
        print(f"error: {install_hint()} (missing: {exc.name})", file=sys.stderr)
        return 2
    from annotator.cli import report_error
    from annotator.errors import install_interrupt_handlers, report_interrupt
    from annotator.storage.retry import as_storage_error

    install_interrupt_handlers()  # while the model loads; uvicorn installs its own while it serves
    try:
        app, url = build_app(args)
    except KeyboardInterrupt as e:  # errors.Interrupted: SIGINT or SIGTERM
        return report_interrupt(e, "the backend was not started")
    except Exception as e:  # noqa: BLE001 - one line; a bug's traceback goes to a crash log (exit 3)
        return report_error(as_storage_error(e, "annotator.serve"))
    print(f"Label Studio ML backend on {url} (model version {app.state.backend.model_version}); connect it in the "
          "project's Settings -> Model -> Connect model", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        app.state.backend.close()
    return 0


def build_app(args: argparse.Namespace):
    """(FastAPI app, the URL it listens on) from parsed options; loads the model."""
    from annotator import __version__
    from annotator.config import ConfigError
    from annotator.engine import Engine
    from annotator.export.common import ExportOptions
    from annotator.inputs.vocab import load_vocabulary
    from annotator.models import resolve_weights
    from annotator.models.registry import describe_weights
    from annotator.serve.labelstudio_backend import BackendOptions, create_app, load_backend
    from annotator.storage.redact import refuse_credentials, take_arg_credentials

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: expected 1..65535, received {args.port}")
    # The one credential rule (annotator.storage.redact): serve reads no storage options, so a
    # user:password@ in a URL or path option is refused (exit 2), as the export's --push is.
    take_arg_credentials(args, refuse=SERVE_REFUSED)
    if (args.saliency or "").startswith("precomputed:"):
        refuse_credentials(args.saliency.split(":", 1)[1], "--saliency precomputed:")
    if args.max_queue < 0 or args.image_timeout <= 0 or args.max_image_bytes < 1:
        raise ConfigError("--max-queue >= 0, --image-timeout > 0 and --max-image-bytes >= 1 expected, received "
                          f"{args.max_queue}, {args.image_timeout}, {args.max_image_bytes}")
    vocabulary = load_vocabulary(args.vocab)
    instance_classes = None if args.instances in (None, "") else _classes(args.instances)
    export = ExportOptions(min_area=args.min_area, min_score=args.min_score, classes=args.classes,
                           instances=args.instances is not None, instance_classes=instance_classes)
    from annotator.export.common import select_class_ids

    select_class_ids(vocabulary.names, args.classes)  # unknown names refused before the model loads
    if instance_classes:
        select_class_ids(vocabulary.names, instance_classes)
    options = BackendOptions(max_queue=args.max_queue, export=export, model_version=args.model_version)
    config = engine_config_from_args(args)

    def engine_factory():
        weights = resolve_weights(config)
        engine = Engine(config, vocabulary, weights=weights)
        described = describe_weights(config, weights)
        return engine, {"version": __version__, "model": config.model, "pretrained": described.get("clip"),
                        "saliency": config.saliency}

    backend = load_backend(engine_factory, options, label_studio_url=args.label_studio_url,
                           timeout_s=args.image_timeout, max_image_bytes=args.max_image_bytes)
    return create_app(backend), f"http://{args.host}:{args.port}"


if __name__ == "__main__":
    sys.exit(main())
