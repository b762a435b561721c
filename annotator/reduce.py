"""``python -m annotator.reduce OUTPUT``: merge the parts and write the run's deliverables
(``annotations.parquet``, ``coco.json``, ``summary.json``, ``metrics.json``, the report);
see :mod:`annotator.outputs.merge`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from annotator.cli import parse_storage_options, report_error
from annotator.errors import install_interrupt_handlers, report_interrupt, run_command
from annotator.outputs import merge as _merge
from annotator.outputs.merge import format_summary, reduce_output
from annotator.storage.lock import OutputLock
from annotator.storage.redact import install_log_redaction, redact_uri, take_arg_credentials
from annotator.storage.retry import as_storage_error

__doc__ = _merge.__doc__

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m annotator.reduce", description=(
        "Merge the parts of the run folder OUTPUT into annotations.parquet, coco.json, summary.json, "
        "metrics.json (with ground truth) and report.html with previews/, streaming over the parts."))
    p.add_argument("output", help="the run's output folder or fsspec URL")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec storage options as JSON (default: none, the backends' own configuration)")
    p.add_argument("--no-report", action="store_true", help="skip report.html and previews")
    p.add_argument("--best-effort-lease", action="store_true",
                   help="on a store without an atomic create, accept a best-effort lease instead of refusing "
                        "the output (default: refused; also $ANNOTATOR_BEST_EFFORT_LEASE=1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()  # log lines pass through the one redaction, as error lines do
    install_interrupt_handlers()
    output, opts = None, None  # the output's URL may hold credentials until they are taken
    try:
        take_arg_credentials(args, move=("output",))  # the one credential rule (issue 22.1)
        opts = parse_storage_options(args.storage_options) or None
        output = args.output
        with OutputLock(args.output, opts, what="annotator.reduce", create=False,  # one writer per output
                        best_effort=args.best_effort_lease or None) as lock:
            summary = reduce_output(args.output, opts, report=not args.no_report, fence=lock.check_fence)
    except KeyboardInterrupt as e:  # errors.Interrupted: SIGINT or SIGTERM
        return report_interrupt(e, "nothing half-written is left; run the same command again")
    except Exception as e:  # noqa: BLE001 - one line; a bug's traceback goes to a crash log (exit 3)
        what = f"annotator.reduce (output {redact_uri(output)})" if output else "annotator.reduce"
        return report_error(as_storage_error(e, what), output, opts)
    print(format_summary(summary), file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("images", "ok", "failed", "annotations")}))
    return 0


if __name__ == "__main__":
    run_command(main)
