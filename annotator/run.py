"""``python -m annotator.run``: pre-label a dataset with CLIP-DIY on Ray.

The command-line shim: options, then the :class:`~annotator.request.RunRequest` they
stand for (:meth:`RunRequest.from_args`, the one place), then :func:`annotator.job.run_job`
(validate -> list -> open the output -> annotate the shards -> finish), then the exit
code (2 with one ``error:`` line for anything refused). With no arguments it annotates
the sample photographs shipped with the package. From Python: ``annotator.run_job``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from annotator.cli import (
    HelpFormatter,
    add_engine_arguments,
    report_error,
)
from annotator.config import DEFAULT_SHARD_SIZE
from annotator.distributed.ray_runner import stop_ray
from annotator.errors import (
    install_interrupt_handlers,
    report_interrupt,
    run_command,
)
from annotator.failpoints import failpoint
from annotator.inputs.listing import DEFAULT_MAX_BYTES
from annotator.job import run_job
from annotator.request import DEFAULT_OUTPUT, GT_FORMATS, SAMPLES_DIR, RunRequest
from annotator.storage.redact import install_log_redaction, redact_uri
from annotator.storage.retry import as_storage_error

log = logging.getLogger("annotator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m annotator.run",
        description="Pre-label images with pixel masks for any list of classes (CLIP-DIY), on Ray. "
        "Writes OUTPUT/parts/*.parquet, OUTPUT/annotations.parquet, OUTPUT/coco.json, "
        "OUTPUT/summary.json, OUTPUT/report.html (and OUTPUT/metrics.json with --gt).",
        formatter_class=HelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--vocab", default=str(SAMPLES_DIR / "vocab.txt"),
                    help="vocabulary file: one class per line, optional 'name: prompt; prompt' "
                         "(default: the bundled sample vocabulary)")
    io.add_argument("--source", default=None,
                    help="images: a directory (recursive), a glob, or an fsspec URL (s3://, gs://, "
                         "memory://, http(s)://...). Default: the bundled sample photographs")
    io.add_argument("--hf-dataset", default=None, metavar="NAME_OR_PATH",
                    help="a Hugging Face dataset instead of --source: hub name (streamed), "
                         "save_to_disk folder, or folder of Parquet/imagefolder files (default: none, --source is "
                         "read)")
    io.add_argument("--hf-split", default=None,
                    help="dataset split (default: the only one; required when there are several)")
    io.add_argument("--hf-image-column", default=None,
                    help="image column (default: the only Image column, or among several the one named 'image')")
    io.add_argument("--hf-allow-paths-outside", action="store_true",
                    help="read image cells that name a file outside the dataset's own files (an absolute path, "
                         "'..', a symlink out, a URL); default: such a row is 'unreadable', the file is not read")
    io.add_argument("--storage-options", default=None, metavar="JSON",
                    help="fsspec storage options for source and output as JSON, e.g. "
                         "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}' (never logged; default: none, the "
                         "backends' own configuration)")
    io.add_argument("--output", default=DEFAULT_OUTPUT, help="output folder or fsspec URL")
    io.add_argument("--overwrite", action="store_true",
                    help="replace an existing output made with another configuration or listing")
    io.add_argument("--retry-failed", action="store_true",
                    help="resume an output of this configuration and run its error rows again (unreadable, "
                         "missing, inference-failed, ...); ok rows are kept as they are (default: a resume "
                         "leaves finished shards alone)")
    io.add_argument("--best-effort-lease", action="store_true",
                    help="on a store without an atomic create (a conditional write), accept a best-effort "
                         "lease instead of refusing the output (default: refused; local folders, S3 and GCS "
                         "have one; also $ANNOTATOR_BEST_EFFORT_LEASE=1)")
    io.add_argument("--image-list", default=None, metavar="FILE",
                    help="only these images: one relative path, stem, or id:N (an image id) per line; an entry "
                         "naming two images is refused (e.g. VOC's ImageSets/Segmentation/val.txt; default: every "
                         "image of the source)")
    io.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                    help="refuse image files larger than this before reading them (an 'unreadable' row); "
                         "only regular files are read (default: 1 GiB)")
    io.add_argument("--max-pixels", type=int, default=None, metavar="N",
                    help="refuse images with more pixels than this before decoding them "
                         "(default: Pillow's limit, 178,956,970)")
    ev = p.add_argument_group("scoring against ground truth")
    ev.add_argument("--gt", default=None,
                    help="ground truth: COCO instances JSON, folder of VOC-style PNG label maps, "
                         "or hf-column:NAME for the HF dataset's label column (default: none, no scoring)")
    ev.add_argument("--gt-format", choices=GT_FORMATS, default=None,
                    help="format of --gt (default: from the path: *.json = coco, a folder = voc-png, hf-column:NAME)")
    sch = p.add_argument_group("scheduling")
    sch.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                     help="images per shard (one Parquet part each)")
    sch.add_argument("--num-actors", type=int, default=None, metavar="N",
                     help="actors: default one per GPU, or CPUs/2 CPU actors when there is no GPU")
    sch.add_argument("--address", "--ray-address", dest="address", default=None, metavar="ADDRESS",
                     help="Ray cluster to join: host:port of its GCS, ray://host:port, or 'auto' for "
                          "the cluster that `ray start` recorded on this machine (default: $RAY_ADDRESS "
                          "when set, as under `ray job submit`, else a new local Ray)")
    sch.add_argument("--max-failure-rate", type=float, default=0.05, metavar="F",
                     help="exit non-zero when more than this fraction of images failed")
    sch.add_argument("--no-report", action="store_true", help="skip the HTML report and previews")
    sch.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(p)
    return p


#: Exit codes (README, "Failure behaviour").
EXIT_OK, EXIT_FAILURE_RATE, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def main(argv: Sequence[str] | None = None) -> int:
    """0 done; 1 done, failure rate above --max-failure-rate; 2 refused or failed (one
    ``error:`` line: an :class:`~annotator.errors.AnnotatorError`, or a storage error
    classified as such); 3 internal error (a bug: one ``error:`` line naming the crash
    log that holds the traceback; :func:`annotator.cli.report_error`); 130/143
    interrupted by SIGINT/SIGTERM (finished shards kept: run it again to resume)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()  # log lines and warnings pass through the one redaction, as error lines do
    install_interrupt_handlers()
    request: RunRequest | None = None
    try:
        try:
            request = RunRequest.from_args(args)
            code = run_job(request).exit_code
            failpoint("run.done")  # ANNOTATOR_FAILPOINTS: the interruption tests signal after the done: line
            return code
        finally:  # the Ray this run started ends here (signals deferred), not in Ray's atexit handler
            stop_ray()
    except KeyboardInterrupt as e:  # errors.Interrupted: SIGINT or SIGTERM
        return report_interrupt(e, "the finished shards are recorded, run the same command again to resume")
    except Exception as e:  # noqa: BLE001 - every failure is one line, never a traceback
        # Before the request exists, the output's URL may still hold credentials: no crash log there.
        output = request.write.output if request is not None else None
        options = request.storage_options if request is not None else None
        what = f"annotator.run (output {redact_uri(output)})" if output else "annotator.run"
        return report_error(as_storage_error(e, what), output, options)


if __name__ == "__main__":
    run_command(main, "the finished shards are recorded, run the same command again to resume")
