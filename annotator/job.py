"""The annotation job, stage by stage: ``run_job`` = validate -> list -> open the output
-> annotate the shards -> finish. Each stage is one call below and takes the run's
:class:`~annotator.request.RunRequest`; ``annotator.run`` is the command-line shim that
builds the request and calls :func:`run_job`.

Everything that can be refused is refused in :func:`validate` and :func:`list_inputs`,
before Ray starts or anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from annotator import __version__
from annotator.config import ConfigError, EngineConfig
from annotator.distributed import ray_runner
from annotator.errors import install_interrupt_handlers
from annotator.failpoints import failpoint
from annotator.inputs.catalog import ImageRef, ImageRefs, ImageRefsBuilder
from annotator.inputs.decode import DEFAULT_MAX_PIXELS
from annotator.inputs.hf import HFSource, list_hf_dataset
from annotator.inputs.listing import list_images, resolve_source
from annotator.inputs.vocab import Vocabulary, load_vocabulary
from annotator.models import ResolvedWeights, describe_weights, resolve_weights
from annotator.records.metadata import RunMetadata
from annotator.request import SAMPLES_DIR, RunRequest, image_list_entries
from annotator.shards.retry_failed import describe_tally, scan_failed, tally
from annotator.shards.task import (
    RunOptions,
    SchedulingStats,
    ShardResult,
    ShardTask,
    make_shards,
)
from annotator.storage import layout
from annotator.storage.crashlog import shards_with_logs
from annotator.storage.identity import config_hash, listing_fingerprint
from annotator.storage.lock import OutputLock
from annotator.storage.manifest import Manifest, open_output
from annotator.storage.ownership import remove_previous_results
from annotator.storage.parts import atomic_write_bytes
from annotator.storage.redact import redact_uri

log = logging.getLogger("annotator")

__all__ = ["RunResult", "SAMPLES_DIR", "annotate_shards", "finish", "list_inputs", "open_run_output", "run_job",
           "validate"]
#: Output URL schemes whose first path component is a bucket (checked, never created).
BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "r2", "oci"}
#: The driver rewrites manifest.json at most this often (its size grows with the shard
#: count); parts written in between are taken back on resume (``adopt_unlisted_parts``).
MANIFEST_FLUSH_INTERVAL_S = 2.0


@dataclass
class Validated:
    """A configuration that passed every check (stage 1)."""

    vocabulary: Vocabulary
    engine: EngineConfig
    weights: ResolvedWeights
    storage_options: dict
    ray_target: str | None  # None: a local Ray, started when there is work


@dataclass
class Inputs:
    """The listing (stage 2): names only, never pixels."""

    refs: ImageRefs  # columns, not objects: a million names in tens of MiB
    description: str  # the source as shown and recorded (credentials removed)
    storage_options: dict  # for reading the source and the ground truth
    hf: HFSource | None = None


@dataclass
class OpenedOutput:
    """The output folder opened or resumed (stage 3)."""

    manifest: Manifest
    tasks: list[ShardTask]
    pending: list[ShardTask]
    options: RunOptions
    #: ``--retry-failed``: the error rows of the finished shards that run again, as the run
    #: found them, ``{shard_index: {image_id: reason}}`` (:func:`annotator.shards.retry_failed.scan_failed`)
    retried: dict[int, dict[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """What a finished run returns: its exit code (0; 1 when more than
    ``ScheduleSpec.max_failure_rate`` of the images failed), the content of
    ``OUTPUT/summary.json`` and the output it was written to."""

    exit_code: int
    summary: dict
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_job(request: RunRequest) -> RunResult:
    """The whole run of ``request``: validate -> list -> open the output -> annotate the
    shards -> finish. Returns a :class:`RunResult`; raises for anything refused
    (:class:`~annotator.config.ConfigError` and the other errors ``annotator.run`` turns
    into exit code 2) and :class:`~annotator.errors.Interrupted` on SIGINT/SIGTERM when
    their handlers are installed (finished shards are kept: run it again to resume)."""
    checked = validate(request)
    inputs = list_inputs(request, checked)
    with OutputLock(request.write.output, checked.storage_options, what="annotator.run",  # one writer
                    best_effort=request.write.best_effort_lease or None) as lock:
        opened = open_run_output(request, checked, inputs)
        opened.manifest.fence = lock.check_fence  # a writer that lost the output records nothing more
        t0 = time.perf_counter()
        stats = annotate_shards(request, checked, opened)
        return finish(request, checked, inputs, stats, time.perf_counter() - t0,
                      retried=opened.retried if request.write.retry_failed else None)


# ----------------------------------------------------------------------------- stages


def validate(request: RunRequest) -> Validated:
    """Stage 1: the vocabulary, the weights and the Ray address (the request's own
    values were checked when it was built)."""
    vocabulary = load_vocabulary(request.model.vocab)
    engine_config = request.model.engine
    storage_options = dict(request.storage_options)
    weights = resolve_weights(engine_config)  # unknown model/tag, missing weights: one clear error now
    if engine_config.saliency.startswith("precomputed:"):
        check_precomputed_saliency(engine_config.saliency.split(":", 1)[1], storage_options)
        engine_config = dataclasses.replace(engine_config, storage_options=storage_options or None)
    ray_target = ray_runner.resolve_ray_address(request.schedule.address)
    if ray_target is not None:
        ray_runner.check_reachable(ray_target)
    elif engine_config.device.startswith("cuda"):
        check_local_cuda(engine_config.device)  # the local Ray's actors run on this machine
    return Validated(vocabulary, engine_config, weights, storage_options, ray_target)


def list_inputs(request: RunRequest, checked: Validated) -> Inputs:
    """Stage 2: list the source, check the ground truth and the output, join the cluster."""
    read, output = request.read, request.write.output
    if read.hf_dataset:
        hf = list_hf_dataset(read.hf_dataset, read.hf_split, read.hf_image_column,
                             allow_paths_outside=read.hf_allow_paths_outside)
        inputs = Inputs(hf.refs(), request.source_description(hf.split), checked.storage_options, hf)
    else:
        source, source_opts = resolve_source(read.source or str(SAMPLES_DIR), checked.storage_options)
        inputs = Inputs(list_images(source, source_opts), redact_uri(source), source_opts)
    inputs.refs = exclude_output(inputs.refs, output)
    if read.image_list:
        inputs.refs = filter_image_list(inputs.refs, read.image_list,
                                        None if read.hf_dataset else inputs.description)
    if read.gt and not read.gt_is_hf_column:
        from annotator.evaluation.gt import load_gt

        load_gt(read.gt, read.gt_format, checked.vocabulary.names, storage_options=inputs.storage_options)
    check_output_writable(output, checked.storage_options)
    if checked.ray_target is not None:  # join now: a cluster without the GPUs asked for is refused before any write
        log.info(ray_runner.init_ray(checked.ray_target))
        install_interrupt_handlers()  # ray.init installs its own
        ray_runner.check_cluster_device(checked.engine.device)
    return inputs


def open_run_output(request: RunRequest, checked: Validated, inputs: Inputs) -> OpenedOutput:
    """Stage 3: open or resume ``--output``; decide which shards are left to run."""
    read, write, shard_size = request.read, request.write, request.schedule.shard_size
    max_pixels = read.max_pixels or DEFAULT_MAX_PIXELS
    described = describe_weights(checked.engine, checked.weights)  # hashes weight files given by hand: once
    identity = request.identity(vocabulary=checked.vocabulary.to_json(), source=inputs.description,
                                weights=described)
    chash = config_hash(identity)
    tasks = make_shards(inputs.refs, shard_size, inputs.hf)
    if write.retry_failed and Manifest.load(write.output, checked.storage_options) is None:
        raise ConfigError(f"--retry-failed: expected an existing run output at {redact_uri(write.output)} (its "
                          "error rows run again), got none; run without --retry-failed to start it")
    manifest = open_output(
        write.output, config_hash=chash, listing_fingerprint=listing_fingerprint(inputs.refs.file_names()),
        num_shards=len(tasks), shard_size=shard_size, overwrite=write.overwrite,
        storage_options=checked.storage_options, settings=identity, num_images=len(inputs.refs),
    )
    if write.overwrite:
        remove_previous_results(write.output, checked.storage_options)
    manifest.flush_interval_s = MANIFEST_FLUSH_INTERVAL_S
    manifest.adopt_unlisted_parts(lambda i: len(tasks[i].refs))
    done_before = manifest.verified_finished_shards()  # resume trusts only parts that verify
    retried = scan_failed(write.output, done_before, checked.storage_options) if write.retry_failed else {}
    for i in retried:  # only the error rows' images run again; the part is replaced, ok rows copied as they are
        tasks[i].retry_failed = True
    pending = [t for t in tasks if t.shard_index not in done_before or t.shard_index in retried]
    for i in sorted(shards_with_logs(write.output, checked.storage_options) - done_before):
        if i < len(tasks):
            tasks[i].careful = True  # its worker died in an earlier run: one image at a time
    metadata = run_metadata(checked, inputs, chash, len(tasks), described)
    options = RunOptions(output=write.output, metadata=metadata.to_json(),
                         storage_options=inputs.storage_options or None,
                         output_storage_options=checked.storage_options,
                         max_pixels=max_pixels, max_bytes=read.max_bytes,
                         gt_spec=read.gt, gt_format=read.gt_format)
    line = listing_line(len(inputs.refs), len(tasks), [t for t in pending if not t.retry_failed])
    if write.retry_failed:
        failed = sum(len(f) for f in retried.values())
        line += f"; --retry-failed: {_plural(failed, 'failed row')} in {_plural(len(retried), 'shard')} run again"
    print(f"annotator {__version__}: {line} from {inputs.description}; output {redact_uri(write.output)}",
          file=sys.stderr)
    return OpenedOutput(manifest, tasks, pending, options, retried)


def annotate_shards(request: RunRequest, checked: Validated, opened: OpenedOutput, *,
                    make_processor=None) -> SchedulingStats | None:
    """Stage 4: the pending shards on Ray actors; each finished one is recorded at once.
    Returns the scheduler's figures (None when nothing was left to do).
    ``make_processor``: a stand-in for the engine's shard processor (the benchmark's
    scale simulation; see :func:`annotator.distributed.ray_runner.run_shards`)."""
    if not opened.pending:
        return None
    log.info(ray_runner.init_ray(checked.ray_target))
    install_interrupt_handlers()  # ray.init installs its own
    bar = None
    if not request.schedule.quiet:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(t.refs) for t in opened.pending), unit="img", desc="annotating", file=sys.stderr)

    def on_done(result: ShardResult) -> None:
        opened.manifest.mark_finished(result.shard_index, result.path, result.rows, result.sha256, result.made_by)
        if bar is not None:
            bar.update(result.rows)

    try:
        stats = ray_runner.run_shards(opened.pending, checked.engine, checked.vocabulary, opened.options,
                                      num_actors=request.schedule.num_actors, on_done=on_done,
                                      make_processor=make_processor)
    finally:
        opened.manifest.flush()  # also when shards failed or the run was interrupted
        if bar is not None:
            bar.close()
    if stats.overhead_fraction is not None:
        log.info("scheduling overhead: %.3f%% of shard time (%d actors, %d retries)",
                 100 * stats.overhead_fraction, stats.actors, stats.retries)
    return stats


def finish(request: RunRequest, checked: Validated, inputs: Inputs, stats: SchedulingStats | None,
           elapsed_s: float, *, retried: dict[int, dict[int, str]] | None = None) -> RunResult:
    """Stage 5: merge, COCO, summary, metrics, report; the verdict as the exit code.

    ``retried`` (``--retry-failed``): the error rows that ran again, as the run found them;
    what became of them (recovered, still failing, by reason) is added to ``summary.json``
    under ``retry_failed`` and to the ``done:`` line."""
    from annotator.outputs.merge import format_summary, reduce_output

    output, report = request.write.output, request.write.report
    max_failure_rate = request.schedule.max_failure_rate
    failpoint("merge")  # ANNOTATOR_FAILPOINTS: the interruption tests signal here
    summary = reduce_output(output, storage_options=checked.storage_options or None, report=report,
                            image_storage_options=inputs.storage_options or None, verify=False)
    if stats:  # timings vary between runs: kept out of summary.json, which must be reproducible
        write_scheduling(output, checked.storage_options, stats)
    retry_clause = ""
    if retried is not None:
        summary["retry_failed"] = tally(retried, scan_failed(output, retried, checked.storage_options))
        data = json.dumps(summary, indent=2, sort_keys=True).encode("utf-8")
        atomic_write_bytes(layout.join_url(output, layout.SUMMARY_NAME), data, checked.storage_options, retries=3)
        retry_clause = f"; {describe_tally(summary['retry_failed'])}"
    print(format_summary(summary), file=sys.stderr)
    done, failed = summary["expected_images"] or summary["images"], summary["failed"]  # over listed images
    look_at = layout.REPORT_NAME if report else layout.SUMMARY_NAME
    print(f"done: {done} images ({failed} failed) in {elapsed_s:.1f} s; "
          f"{summary['annotations']} annotations{retry_clause}; see {redact_uri(output)}/{look_at}",
          file=sys.stderr)
    rate = failed / done if done else 0.0
    if rate > max_failure_rate:
        print(f"error: {failed}/{done} images failed ({rate:.1%}), above --max-failure-rate "
              f"{max_failure_rate:.1%}; reasons in summary.json", file=sys.stderr)
        return RunResult(1, summary, output)
    return RunResult(0, summary, output)


# ----------------------------------------------------------------------------- helpers


def run_metadata(checked: Validated, inputs: Inputs, chash: str, num_shards: int,
                 described: dict[str, str] | None = None) -> RunMetadata:
    """The run metadata stored in every part's footer (and shown by the report);
    ``described``: :func:`annotator.models.describe_weights` when already computed."""
    if described is None:
        described = describe_weights(checked.engine, checked.weights)
    return RunMetadata(
        vocabulary=checked.vocabulary.names,
        vocabulary_prompts=checked.vocabulary.to_json(),
        model=checked.engine.model,
        pretrained=described["clip"],
        weights=described,
        saliency=checked.engine.saliency,
        protocol=checked.engine.protocol,
        templates=list(checked.engine.templates),
        version=__version__,
        config_hash=chash,
        source=inputs.description,
        num_images=len(inputs.refs),
        num_shards=num_shards,
    )


def check_precomputed_saliency(location: str, storage_options: dict) -> None:
    """``--saliency precomputed:<dir>`` must name an existing folder (before any write)."""
    try:
        fs, path = layout.url_to_fs(location, storage_options)
        ok = bool(location) and fs.isdir(path)
    except Exception as e:  # noqa: BLE001 - unreachable store, bad URL
        raise ConfigError(f"--saliency precomputed:{redact_uri(location)}: cannot be read "
                          f"({type(e).__name__}: {e})") from None
    if not ok:
        raise ConfigError(f"--saliency precomputed:{redact_uri(location)}: expected a folder of saliency maps "
                          "(.npy or .png per image stem), got no such folder")


def check_local_cuda(device: str) -> None:
    """``--device cuda[:N]`` on a machine (the local Ray's) without that CUDA device."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(f"--device {device}: expected a CUDA device, got {count} on this machine "
                          f"(torch {torch.__version__}); use --device cpu, or --device auto to use CUDA when present")


def check_output_writable(output: str, storage_options: dict) -> None:
    """A probe file written and removed under ``output``; ConfigError naming the cause."""
    fs, root = layout.url_to_fs(output, storage_options)
    probe = layout.join_url(root, f".write-probe-{uuid.uuid4().hex}")
    scheme = output.split("://", 1)[0].lower() if "://" in output else ""
    if scheme in BUCKET_SCHEMES:  # a typo must not create a bucket
        bucket = root.split("/", 1)[0]
        try:  # info, not exists: exists() says False for a denied or unreachable store too
            fs.info(bucket)
            exists = True
        except FileNotFoundError:
            exists = False
        except Exception as e:  # noqa: BLE001 - denied, unreachable: the message says which
            raise ConfigError(f"--output {redact_uri(output)}: cannot check bucket {bucket!r} "
                              f"({type(e).__name__}: {e})") from None
        if not exists:
            raise ConfigError(f"--output {redact_uri(output)}: expected an existing bucket, got {bucket!r}, "
                              "which does not exist (it is not created for you)")
    try:
        fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as e:
        raise ConfigError(f"--output {redact_uri(output)}: not writable ({type(e).__name__}: {e})") from None


def write_scheduling(output: str, storage_options: dict, stats: SchedulingStats) -> None:
    """``OUTPUT/scheduling.json``: the scheduler's figures of the latest run (actors,
    retries, driver overhead as a fraction of shard time)."""
    data = json.dumps(stats.to_json(), indent=2, sort_keys=True).encode("utf-8")
    atomic_write_bytes(layout.join_url(output, layout.SCHEDULING_NAME), data, storage_options, retries=3)


def exclude_output(refs: ImageRefs, output: str) -> ImageRefs:
    """The listing without the run's own output (previews, exports) when ``--output``
    lies inside ``--source``: a run never reads what it writes. The other images keep
    their ids (those of the source's listing order). Streams: one ref at a time, each
    folder resolved once."""
    out_url = redact_uri(output).rstrip("/")
    local = "://" not in out_url
    out_dir = os.path.realpath(out_url) if local else ""
    resolved: dict[str, bool] = {}  # folder -> inside the output

    def inside(ref: ImageRef) -> bool:
        if local and "://" not in ref.uri:  # realpath never raises (a symlink loop stays as it is)
            folder = os.path.dirname(ref.uri)
            if folder not in resolved:
                if len(resolved) > 65536:
                    resolved.clear()
                resolved[folder] = (os.path.realpath(folder) + os.sep).startswith(out_dir + os.sep)
            return resolved[folder]
        return ref.uri.startswith(out_url + "/")

    kept, left_out = ImageRefsBuilder(), 0
    for ref in refs:
        if inside(ref):
            left_out += 1
        else:
            kept.add(ref.file_name, ref.uri, image_id=ref.image_id, index=ref.index)
    if not left_out:
        return refs
    log.info("left out %d file(s) under the output %s, which is inside the source", left_out, out_url)
    return kept.build()


#: How an ``--image-list`` entry names an image by its id (a bare number is a name).
IMAGE_LIST_ID_PREFIX = "id:"


def image_list_keys(file_name: str) -> set[str]:
    """The entries that name the image ``file_name`` (its path relative to the source):
    the path itself, the path without its extension, and the file's stem (VOC's
    ``ImageSets/*.txt`` lists bare stems)."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.rsplit("/", 1)[-1] else file_name
    return {file_name, stem, stem.rsplit("/", 1)[-1]}


def filter_image_list(refs: ImageRefs, path: str, source_root: str | None = None) -> ImageRefs:
    """The images named in ``--image-list``: one entry per line, a relative path
    (``JPEGImages/a.jpg``), a path without its extension, or a bare stem (``a``); an
    image id only in the explicit form ``id:N`` (a bare ``2`` is the file ``2``, never
    the image whose id is 2).

    Each entry means one image: an entry that names two images of the source (``a``
    for ``a.jpg`` and ``a.png``, or for ``x/a.jpg`` and ``y/a.jpg``) is a ConfigError
    naming both; an entry that is the relative path of a file names that file alone.
    A path or stem entry that matches no listed file still gets its row: a
    ``missing`` error (so that a VOC ``val.txt`` never shrinks the evaluation set
    unnoticed); an ``id:N`` that is no image's id is a ConfigError. No entry matching
    any file is a ConfigError (the wrong list or the wrong source)."""
    wanted = image_list_entries(path)
    by_id: dict[int, str] = {}
    names: set[str] = set()
    for w in wanted:
        if w.startswith(IMAGE_LIST_ID_PREFIX):
            number = w[len(IMAGE_LIST_ID_PREFIX):].strip()
            if not number.isdigit():
                raise ConfigError(f"--image-list {path}: expected id:N with N a whole number, got {w!r}")
            by_id[int(number)] = w
        else:
            names.add(w)

    matches: dict[str, list[ImageRef]] = {}  # entry -> the images it names
    exact: dict[str, ImageRef] = {}  # entry -> the image whose relative path it is
    max_id = 0
    for r in refs:
        max_id = max(max_id, r.image_id)
        hit = image_list_keys(r.file_name) & names
        if r.image_id in by_id:
            hit.add(by_id[r.image_id])
        for entry in hit:
            seen = matches.setdefault(entry, [])
            if len(seen) < 2:
                seen.append(r)
        if r.file_name in names:  # a path means that file, whatever stems resemble it
            exact[r.file_name] = r
    chosen: dict[int, ImageRef] = {}
    ambiguous = []
    for entry, found in matches.items():
        if entry in exact:
            found = [exact[entry]]
        if len(found) > 1:
            ambiguous.append((entry, found))
        chosen[found[0].image_id] = found[0]
    if ambiguous:
        entry, found = ambiguous[0]
        more = f" ({len(ambiguous) - 1} more entries like it)" if len(ambiguous) > 1 else ""
        raise ConfigError(f"--image-list {path}: expected each entry to name one image, got {entry!r} naming "
                          f"both {found[0].file_name!r} and {found[1].file_name!r}{more}; write the relative "
                          f"path (with its extension) or id:N")
    out = ImageRefsBuilder()
    for image_id in sorted(chosen):  # listing order, the full listing's ids kept
        r = chosen[image_id]
        out.add(r.file_name, r.uri, image_id=r.image_id, index=r.index)
    if not len(out):
        raise ConfigError(f"--image-list {path}: none of its {len(wanted)} entries matches an image of the source")
    lost_ids = [w for w in by_id.values() if w not in matches]
    if lost_ids:
        raise ConfigError(f"--image-list {path}: {lost_ids[0]} is no image's id (ids go from 1 to {max_id})"
                          + (f", nor are {len(lost_ids) - 1} more" if len(lost_ids) > 1 else ""))
    unmatched = [w for w in wanted if w in names and w not in matches]
    if unmatched and source_root is None:  # a Hugging Face dataset: its rows are read by index
        log.warning("--image-list %s: %d of its entries match no row of the dataset (e.g. %s)", path,
                    len(unmatched), unmatched[0])
    elif unmatched:
        log.warning("--image-list %s: %d of its entries match no file of the source (e.g. %s); each gets a "
                    "'missing' row", path, len(unmatched), unmatched[0])
        base = (source_root or "").rstrip("/")
        for k, name in enumerate(unmatched):
            out.add(name, f"{base}/{name}" if base else name, image_id=max_id + 1 + k)
    return out.build()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def listing_line(num_images: int, num_shards: int, pending: list[ShardTask]) -> str:
    """'40 images in 10 shards (3 shards, 12 images, already done)'."""
    line = f"{_plural(num_images, 'image')} in {_plural(num_shards, 'shard')}"
    done = num_shards - len(pending)
    if done:
        done_images = num_images - sum(len(t.refs) for t in pending)
        line += f" ({_plural(done, 'shard')}, {_plural(done_images, 'image')}, already done)"
    return line
