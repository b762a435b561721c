"""``python -m annotator.run``: pre-label a dataset with CLIP-DIY on Ray.

Stages: validate everything (vocabulary, engine options, weights, source, output) ->
list images -> open or resume the output -> shards to Ray actors -> reduce (merged
Parquet, COCO JSON, summary, metrics, report).

With no arguments it annotates the sample photographs shipped with the package.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import (
    DEFAULT_SHARD_SIZE,
    ConfigError,
    HelpFormatter,
    add_engine_arguments,
    engine_config_from_args,
    parse_storage_options,
)

log = logging.getLogger("annotator")

SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"
DEFAULT_OUTPUT = "annotator-output"
#: The driver rewrites manifest.json at most this often (its size grows with the shard
#: count); parts written in between are taken back on resume (``adopt_unlisted_parts``).
MANIFEST_FLUSH_INTERVAL_S = 2.0


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
                         "save_to_disk folder, or folder of Parquet/imagefolder files")
    io.add_argument("--hf-split", default=None, help="dataset split (required when there are several)")
    io.add_argument("--hf-image-column", default=None, help="image column (auto-detected when unique)")
    io.add_argument("--storage-options", default=None, metavar="JSON",
                    help="fsspec storage options for source and output as JSON, e.g. "
                         "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}' (never logged)")
    io.add_argument("--output", default=DEFAULT_OUTPUT, help="output folder or fsspec URL")
    io.add_argument("--overwrite", action="store_true",
                    help="replace an existing output made with another configuration or listing")
    io.add_argument("--image-list", default=None, metavar="FILE",
                    help="only these images: one image_id, relative path or stem per line "
                         "(e.g. VOC's ImageSets/Segmentation/val.txt)")
    io.add_argument("--max-pixels", type=int, default=None, metavar="N",
                    help="refuse images with more pixels than this before decoding them "
                         "(default: Pillow's limit, 178,956,970)")
    ev = p.add_argument_group("scoring against ground truth")
    ev.add_argument("--gt", default=None,
                    help="ground truth: COCO instances JSON, folder of VOC-style PNG label maps, "
                         "or hf-column:NAME for the HF dataset's label column")
    ev.add_argument("--gt-format", choices=("coco", "voc-png", "hf-column"), default=None,
                    help="format of --gt where the path does not make it clear")
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


def _check_output_writable(output: str, storage_options: dict) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    probe = f"{root.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as e:
        from .sources import redact_uri

        raise ConfigError(f"--output {redact_uri(output)}: not writable ({type(e).__name__}: {e})") from None


#: What a finished run leaves beside parts/ and manifest.json (which manifest.clear removes).
PREVIOUS_RESULTS = ("annotations.parquet", "coco.json", "summary.json", "metrics.json", "scheduling.json",
                    "report.html", "previews")


def _remove_previous_results(output: str, storage_options: dict) -> None:
    """--overwrite: remove the replaced run's merged results, so that none of them (e.g. a
    report.html under --no-report, metrics.json without --gt) outlives it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    for name in PREVIOUS_RESULTS:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _write_scheduling(output: str, storage_options: dict, stats: dict) -> None:
    """``OUTPUT/scheduling.json``: the scheduler's figures of the latest run (actors,
    retries, driver overhead as a fraction of shard time)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    with fs.open(f"{root.rstrip('/')}/scheduling.json", "w") as f:
        json.dump({k: v for k, v in stats.items() if isinstance(v, (int, float, str))}, f, indent=2, sort_keys=True)


def _filter_image_list(refs: list, path: str) -> list:
    wanted = {ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()}
    if not wanted:
        raise ConfigError(f"--image-list {path}: expected one id or path per line, got an empty file")

    def keys(r):
        stem = r.file_name.rsplit(".", 1)[0]
        return {str(r.image_id), r.file_name, stem, stem.rsplit("/", 1)[-1]}

    out = [r for r in refs if keys(r) & wanted]
    if not out:
        raise ConfigError(f"--image-list {path}: none of its {len(wanted)} entries matches an image of the source")
    return out


def _check_local_cuda(device: str) -> None:
    """``--device cuda[:N]`` on a machine (the local Ray's) without that CUDA device."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(f"--device {device}: expected a CUDA device, got {count} on this machine "
                          f"(torch {torch.__version__}); use --device cpu, or --device auto to use CUDA when present")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _listing_line(num_images: int, num_shards: int, tasks: list, pending: list) -> str:
    """'40 images in 10 shards (3 shards, 12 images, already done)'."""
    line = f"{_plural(num_images, 'image')} in {_plural(num_shards, 'shard')}"
    done = num_shards - len(pending)
    if done:
        done_images = num_images - sum(len(t.refs) for t in pending)
        line += f" ({_plural(done, 'shard')}, {_plural(done_images, 'image')}, already done)"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        from .manifest import OutputConflictError
        from .models.weights import WeightsUnavailableError
        from .pipeline import RayConnectError, ShardFailedError

        known = (ConfigError, WeightsUnavailableError, OutputConflictError, ShardFailedError, RayConnectError,
                 ValueError, FileNotFoundError)
        if isinstance(e, known):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


def _run(args: argparse.Namespace) -> int:
    from . import pipeline
    from .crashlog import shards_with_logs
    from .decode import DEFAULT_MAX_PIXELS
    from .hf_source import list_hf_dataset
    from .manifest import config_hash, listing_fingerprint, open_output
    from .models import describe_weights, resolve_weights
    from .sources import (
        list_images,
        redact_uri,
        resolve_source,
        split_credentials,
    )
    from .vocab import load_vocabulary
    from .worker import RunOptions, make_shards

    # Stage: validate configuration (before any model or worker starts)
    if args.source and args.hf_dataset:
        raise ConfigError("--source and --hf-dataset are mutually exclusive; got both")
    if (args.hf_split or args.hf_image_column) and not args.hf_dataset:
        raise ConfigError("--hf-split/--hf-image-column need --hf-dataset")
    if (args.gt_format == "hf-column" or (args.gt or "").startswith("hf-column:")) and not args.hf_dataset:
        raise ConfigError("--gt hf-column:NAME / --gt-format hf-column: expected --hf-dataset (the labels are "
                          "a column of that dataset), got no --hf-dataset")
    if not 0.0 <= args.max_failure_rate <= 1.0:
        raise ConfigError(f"--max-failure-rate: expected a fraction in [0, 1], got {args.max_failure_rate}")
    vocabulary = load_vocabulary(args.vocab)
    engine_config = engine_config_from_args(args)
    storage_options = parse_storage_options(args.storage_options)
    if split_credentials(args.output)[1]:  # never echo them (in messages, the manifest, parts' paths)
        raise ConfigError(f"--output {redact_uri(args.output)}: expected credentials in --storage-options, "
                          "got them in the URL (user:password@)")
    weights = resolve_weights(engine_config)  # unknown model/tag, missing weights: one clear error now
    ray_target = pipeline.resolve_ray_address(args.address)  # None: a local Ray, started when needed
    if ray_target is not None:
        pipeline.check_reachable(ray_target)
    elif engine_config.device.startswith("cuda"):
        _check_local_cuda(engine_config.device)  # the local Ray's actors run on this machine

    # Stage: list the source (names only; no pixels on the driver)
    hf = None
    if args.hf_dataset:
        hf = list_hf_dataset(args.hf_dataset, args.hf_split, args.hf_image_column)
        refs, source_desc = hf.refs(), f"hf:{args.hf_dataset}:{hf.split}"
        source_opts = storage_options
    else:
        source = args.source or str(SAMPLES_DIR)
        source, source_opts = resolve_source(source, storage_options)
        refs, source_desc = list_images(source, source_opts), redact_uri(source)
    if args.image_list:
        refs = _filter_image_list(refs, args.image_list)
    if args.gt and not (args.gt_format == "hf-column" or args.gt.startswith("hf-column:")):
        from .gt import load_gt

        load_gt(args.gt, args.gt_format, vocabulary.names, storage_options=source_opts)  # bad --gt: fail now
    _check_output_writable(args.output, storage_options)
    if ray_target is not None:  # join now: a cluster without the GPUs asked for is refused before any write
        log.info(pipeline.init_ray(ray_target))
        pipeline.check_cluster_device(engine_config.device)

    # Stage: open or resume the output
    identity = {
        "engine": engine_config.identity(),
        "vocabulary": vocabulary.to_json(),
        "source": source_desc,
        "max_pixels": args.max_pixels or DEFAULT_MAX_PIXELS,
        "gt": args.gt,
    }
    chash = config_hash(identity)
    tasks = make_shards(refs, args.shard_size, hf)
    manifest = open_output(
        args.output, config_hash=chash, listing_fingerprint=listing_fingerprint(r.file_name for r in refs),
        num_shards=len(tasks), shard_size=args.shard_size, overwrite=args.overwrite, storage_options=storage_options,
        settings=identity, num_images=len(refs),
    )
    if args.overwrite:
        _remove_previous_results(args.output, storage_options)
    manifest.flush_interval_s = MANIFEST_FLUSH_INTERVAL_S
    manifest.adopt_unlisted_parts(lambda i: len(tasks[i].refs))
    done_before = manifest.finished_shards()  # one listing, not a request per shard
    pending = [t for t in tasks if t.shard_index not in done_before]
    for i in sorted(shards_with_logs(args.output, storage_options) - done_before):
        if i < len(tasks):
            tasks[i].careful = True  # its worker died in an earlier run: one image at a time
    described_weights = describe_weights(engine_config, weights)
    metadata = {
        "vocabulary": vocabulary.names,
        "vocabulary_prompts": vocabulary.to_json(),
        "model": engine_config.model,
        "pretrained": described_weights["clip"],
        "weights": described_weights,
        "saliency": engine_config.saliency,
        "protocol": engine_config.protocol,
        "templates": list(engine_config.templates),
        "version": __version__,
        "config_hash": chash,
        "source": source_desc,
        "num_images": len(refs),
        "num_shards": len(tasks),
    }
    options = RunOptions(output=args.output, metadata=metadata, storage_options=source_opts or None,
                         output_storage_options=storage_options,
                         max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, gt_spec=args.gt, gt_format=args.gt_format)
    print(f"annotator {__version__}: {_listing_line(len(refs), len(tasks), tasks, pending)} from {source_desc}; "
          f"output {redact_uri(args.output)}", file=sys.stderr)

    # Stage: shards -> Ray actors -> parts
    t0 = time.perf_counter()
    stats = None
    if pending:
        log.info(pipeline.init_ray(ray_target))
        bar = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=sum(len(t.refs) for t in pending), unit="img", desc="annotating", file=sys.stderr)

        def on_done(result: dict) -> None:
            manifest.mark_finished(result["shard_index"], result["path"], result["rows"], result["sha256"])
            if bar is not None:
                bar.update(result["rows"])

        try:
            stats = pipeline.run_shards(pending, engine_config, vocabulary, options,
                                        num_actors=args.num_actors, on_done=on_done)
        finally:
            manifest.flush()  # also when shards failed or the run was interrupted
            if bar is not None:
                bar.close()
        if stats.get("shard_seconds"):
            stats["overhead_fraction"] = stats["driver_overhead_s"] / stats["shard_seconds"]
            stats["driver_ms_per_shard"] = 1000 * stats["driver_overhead_s"] / max(1, stats["shards_done"])
            log.info("scheduling overhead: %.3f%% of shard time (%d actors, %d retries)",
                     100 * stats["overhead_fraction"], stats["actors"], stats["retries"])
    elapsed = time.perf_counter() - t0

    # Stage: reduce (merge, COCO, summary, metrics, report)
    from .reduce import reduce_output

    summary = reduce_output(args.output, storage_options=storage_options or None, report=not args.no_report,
                            image_storage_options=source_opts or None)
    if stats:  # timings vary between runs: kept out of summary.json, which must be reproducible
        _write_scheduling(args.output, storage_options, stats)
    from .reduce import format_summary

    print(format_summary(summary), file=sys.stderr)
    done = summary["images"]
    failed = summary["failed"]
    look_at = "summary.json" if args.no_report else "report.html"
    print(f"done: {done} images ({failed} failed) in {elapsed:.1f} s; "
          f"{summary['annotations']} annotations; see {redact_uri(args.output)}/{look_at}", file=sys.stderr)
    rate = failed / done if done else 0.0
    if rate > args.max_failure_rate:
        print(f"error: {failed}/{done} images failed ({rate:.1%}), above --max-failure-rate "
              f"{args.max_failure_rate:.1%}; reasons in summary.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
