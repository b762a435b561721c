"""``python -m annotator.report OUTPUT``: the review report of a run folder
(``report.html`` + ``previews/``); see :mod:`annotator.review.html_report`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from annotator.cli import parse_storage_options, report_error
from annotator.config import ConfigError
from annotator.errors import install_interrupt_handlers, report_interrupt, run_command
from annotator.failpoints import failpoint
from annotator.review.html_report import write_report
from annotator.storage.redact import install_log_redaction, redact_uri, take_arg_credentials
from annotator.storage.retry import as_storage_error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m annotator.report",
        description="Write OUTPUT/report.html (self-contained) and OUTPUT/previews/*.jpg for a run folder.",
    )
    parser.add_argument("output", help="the run's OUTPUT folder (local path or fsspec URL)")
    parser.add_argument("--samples", type=int, default=8, metavar="N",
                        help="images in the random sample of the others (default 8)")
    parser.add_argument("--lowest", type=int, default=8, metavar="N",
                        help="lowest-confidence images shown, and as many background-only ones (default 8)")
    parser.add_argument("--max-failures", type=int, default=200, metavar="N",
                        help="failed images listed (all are counted; default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec storage options (JSON object) for OUTPUT and the images (default: none, the "
                             "backends' own configuration)")
    args = parser.parse_args(argv)
    install_log_redaction()  # log lines pass through the one redaction, as error lines do
    install_interrupt_handlers()
    output, so = None, None  # the output's URL may hold credentials until they are taken
    try:
        take_arg_credentials(args, move=("output",))  # the one credential rule (issue 22.1)
        so = parse_storage_options(args.storage_options) or None
        bad = {f"--{k.replace('_', '-')}": v for k in ("samples", "lowest", "max_failures")
               if (v := getattr(args, k)) < 0}
        if bad:
            raise ConfigError(f"{', '.join(bad)}: expected >= 0, received {', '.join(map(str, bad.values()))}")
        output = args.output
        failpoint("report")  # ANNOTATOR_FAILPOINTS: the interruption tests signal here
        path = write_report(args.output, samples=args.samples, lowest=args.lowest, storage_options=so,
                            max_failures=args.max_failures, seed=args.seed)
    except KeyboardInterrupt as e:  # errors.Interrupted: SIGINT or SIGTERM
        return report_interrupt(e, "run the same command again to write the report")
    except Exception as e:  # noqa: BLE001 - one line; a bug's traceback goes to a crash log (exit 3)
        what = f"annotator.report (output {redact_uri(output)})" if output else "annotator.report"
        return report_error(as_storage_error(e, what), output, so)
    print(f"wrote {redact_uri(path)}")
    return 0


if __name__ == "__main__":
    run_command(main)
