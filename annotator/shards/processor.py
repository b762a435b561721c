"""Processing one shard: read -> decode -> engine -> records -> one Parquet part.

No Ray here: a Ray actor (:mod:`annotator.distributed.ray_runner`), the benchmark and tests all call
:class:`ShardProcessor` directly. Reading and decoding run in a thread pool ahead of
the engine; encoding masks (RLE, confidence PNG) runs in threads behind it, so the
device is not kept waiting on the CPU work of neighbouring batches.

Two shards may run at once, from two threads (a Ray actor with ``max_concurrency=2``,
:func:`process_shards`): one holds the device for all its batches while the other
reads and decodes its first batch, then encodes and writes its part. So the device
does not wait at every shard boundary for the previous part to be written and the
next images to be read.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from annotator import records
from annotator.device import free_device_cache, is_device_fault, is_out_of_memory
from annotator.inputs.decode import ImageDecodeError
from annotator.inputs.listing import ImageRef, read_image_bytes
from annotator.inputs.loader import DecodedImage, ImageLoader, image_size_hw
from annotator.shards import retry_failed
from annotator.shards.scoring import ImageScore, ShardScorer, ShardScores
from annotator.shards.task import SHARDS_AT_ONCE, DeviceFaultError, RunOptions, ShardResult, ShardTask
from annotator.storage import parts
from annotator.storage.crashlog import CRASHED_REASON, CrashLog

log = logging.getLogger(__name__)


@dataclass
class EncodedImage:
    """What an encoder thread hands back for one image (``seconds`` of its CPU work)."""

    record: records.ImageRecord
    score: ImageScore
    seconds: float


@dataclass
class _Attempt:
    """One attempt at a shard, as the device saw it: ``passed`` images through the engine,
    the device faults of images run ``alone`` (their own only if some image passed)."""

    passed: int = 0
    alone: list = dataclasses.field(default_factory=list)


def _read_hf_labels(task: ShardTask, column: str) -> list:
    """The shard's cells of a Hugging Face label column."""
    hf = task.hf
    if hf is None:
        raise ValueError("a label column needs a Hugging Face source")
    return _read_hf(task, lambda start, stop: hf.read_labels(start, stop, column))


class ShardProcessor:
    """Holds an engine (loaded once) and turns shards into part files."""

    def __init__(self, engine, options: RunOptions):
        self.engine = engine
        self.options = options
        self.class_names = engine.vocabulary.names
        self.scorer = ShardScorer(options, self.class_names) if options.gt_spec else None
        self._io = ThreadPoolExecutor(max_workers=max(1, options.read_threads), thread_name_prefix="read")
        self._enc = ThreadPoolExecutor(max_workers=max(1, options.encode_threads), thread_name_prefix="encode")
        # One shard at a time on the device; the other shard's CPU work goes on meanwhile.
        self._device = threading.Lock()
        #: Images per engine batch: the engine's, halved after each out-of-memory.
        self.batch_size = int(engine.config.batch_size)
        self._batch_lock = threading.Lock()

    # ---------------------------------------------------------------- stages
    def _read(self, item: tuple[ImageRef, bytes | ImageDecodeError | None]) -> bytes | ImageDecodeError:
        """Bytes of one image (pre-read Hugging Face cells pass through); never raises."""
        ref, data = item
        if data is not None:
            return data
        try:
            return read_image_bytes(ref, self.options.storage_options, max_bytes=self.options.max_bytes)
        except ImageDecodeError as e:
            return e
        except Exception as e:  # anything else reading one file must not kill the shard
            return ImageDecodeError("unreadable", f"{type(e).__name__}: {e}")

    def _decoded(self, task: ShardTask, times: dict[str, float],
                 crash_log: CrashLog | None = None) -> Generator[list[tuple[ImageRef, DecodedImage]], None, None]:
        """Batches of decoded images from :class:`~annotator.inputs.loader.ImageLoader`.

        At most ``prefetch_batches`` batches are read and decoded ahead (memory stays
        bounded even for a shard of 4000x3000 photos); on CUDA, plain JPEGs are decoded
        on the GPU (not under ``--protocol official``: the release's CPU decoder) and images
        arrive as device tensors. With a ``crash_log``: one image
        at a time, nothing ahead, each named in the log before it is read; the images
        it lists as crashed are left out.
        """
        refs = task.refs
        raw: list = [None] * len(refs)
        hf = task.hf
        if hf is not None and refs:
            raw = _read_hf(task, lambda start, stop: hf.read_rows(start, stop))
        items = list(zip(refs, raw, strict=True))
        del raw
        read: Callable[[Any], Any] = self._read
        batch_size, prefetch = self.batch_size, self.options.prefetch_batches
        if crash_log is not None:
            crashed = set(crash_log.crashed)
            items = [item for item in items if item[0].file_name not in crashed]
            read, batch_size, prefetch = crash_log.wrap(self._read, lambda item: item[0].file_name), 1, 0
        loader = ImageLoader(
            items, read, batch_size=batch_size, prefetch=prefetch, max_pixels=self.options.max_pixels,
            device=self.engine.device, name_fn=lambda item: item[0].file_name, executor=self._io,
            protocol=getattr(self.engine.config, "protocol", "full"),  # official: the release's CPU decoder
        )
        with loader:
            for batch in loader:
                yield [(items[i][0], img) for i, img in batch]
        times["read"] += loader.stats.read_s
        times["decode"] += loader.stats.decode_s + loader.stats.batch_decode_s

    def _predict(self, batch: list[tuple[ImageRef, Any]], task: ShardTask | None = None,
                 attempt: _Attempt | None = None):
        """Engine on a batch: one prediction or exception per image.

        A batch that fails with an error about one image (anything
        :func:`~annotator.device.is_device_fault` does not call the device's) is run
        image by image, to isolate the culprit: its exception becomes its row.

        A device fault (out of memory, a CUDA/cuDNN/driver error, a lost device) fails the
        whole attempt (:class:`~annotator.shards.task.DeviceFaultError`, after the device's cache
        is freed; an out-of-memory halves this processor's batch size), so the scheduler
        runs the shard again. Only on that retry (``task.after_device_fault``) is a
        faulting batch run image by image, and an image that faults ALONE while others
        of the attempt pass is the image's own (its row says so); when none passes, the
        device is still failing and the attempt fails again.
        """
        images = [img for _, img in batch]
        names = [ref.file_name for ref, _ in batch]
        try:
            out = list(self.engine.predict(images, names=names))
        except Exception as e:
            if is_device_fault(e):
                return self._device_fault(e, batch, task, attempt)
            if len(batch) == 1:
                return [e]
            log.warning("batch failed (%s); retrying its %d images one by one", e, len(batch))
            return [self._predict([item], task, attempt)[0] for item in batch]
        if attempt is not None:
            attempt.passed += len(out)
        return out

    def _device_fault(self, e: Exception, batch: list, task: ShardTask | None, attempt: _Attempt | None) -> list:
        """What a device fault on ``batch`` leads to (see :meth:`_predict`)."""
        free_device_cache(self.engine.device)
        oom = is_out_of_memory(e)
        if oom and len(batch) > 1:
            with self._batch_lock:
                if self.batch_size > 1:
                    self.batch_size = max(1, min(self.batch_size, len(batch)) // 2)
                    log.warning("device out of memory on a batch of %d; this actor now uses batches of %d",
                                len(batch), self.batch_size)
        if task is None or not task.after_device_fault or attempt is None:
            raise DeviceFaultError(f"{type(e).__name__}: {e}", out_of_memory=oom) from e
        if len(batch) > 1:
            log.warning("device fault on a retried batch (%s); running its %d images one by one", e, len(batch))
            out = [self._predict([item], task, attempt)[0] for item in batch]
            if attempt.passed == 0:  # none passed alone either: the device, not the images
                raise DeviceFaultError(f"{type(e).__name__}: {e}", out_of_memory=oom) from e
            return out
        attempt.alone.append(e)
        return [e]

    def _encode(self, ref: ImageRef, pred) -> EncodedImage:
        """Encoder thread: the record and its score against the ground truth.

        The seconds are returned, not added to shared state: encoder threads run at once.
        A bad ground truth (wrong size, unreadable map) leaves the prediction's row
        intact; the image is left out of the scores and reported in ``metrics.json``.
        """
        t0 = time.perf_counter()
        try:
            rec = records.ok_record(ref, pred.labels_hw, pred.confidence_hw, self.class_names,
                                    pred.class_stats)
        except Exception as e:  # noqa: BLE001 - one image's bad prediction must not cost the shard
            log.warning("%s: could not encode the prediction: %s: %s", ref.file_name, type(e).__name__, e)
            rec = records.error_record(ref, "encode-failed", f"{type(e).__name__}: {e}",
                                       size_hw=pred.labels_hw.shape[:2])
            return EncodedImage(rec, ImageScore(), time.perf_counter() - t0)
        score = self.scorer.score(ref.file_name, pred.labels_hw) if self.scorer is not None else ImageScore()
        return EncodedImage(rec, score, time.perf_counter() - t0)

    # ---------------------------------------------------------------- API
    def process(self, task: ShardTask) -> ShardResult:
        """Run one shard and write its part atomically; every image yields exactly one row.

        Thread-safe: two threads may each run a shard (see the module docstring). The
        ``device_wait`` stage is the time this shard waited for the other to free the device.
        """
        t_start = time.perf_counter()
        times: dict[str, float] = defaultdict(float)
        out_opts = self.options.output_storage_options
        out_opts = self.options.storage_options if out_opts is None else out_opts
        kept = None
        if task.retry_failed:  # --retry-failed: only the images whose row is not ok run again
            task, kept = retry_failed.split_task(task, self.options.output, out_opts)
        hf_names = self.scorer.shard_started(task, _read_hf_labels) if self.scorer is not None else []
        crash_log = CrashLog.open(self.options.output, task.shard_index, out_opts) if task.careful else None
        try:
            recs, scores = self._run_images(task, times, crash_log)
        finally:
            if self.scorer is not None:
                self.scorer.shard_finished(hf_names)
        meta = dict(self.options.metadata)  # + SHARD_KEYS (records.metadata)
        meta["shard_index"] = task.shard_index
        precision = getattr(self.engine, "precision", None)
        if precision is not None:
            meta["precision"] = precision
        if self.scorer is not None:
            meta["confusion"] = None if scores.confusion is None else scores.confusion.tolist()
            meta["gt_errors"] = scores.gt_errors
        if kept is not None:  # the old part's ok rows, as they were, beside the retried images' rows
            recs, meta = kept.merge(recs, meta)
        t0 = time.perf_counter()
        path = parts.part_path(self.options.output, task.shard_index)
        sha = parts.write_part(recs, path, meta, out_opts)
        times["write"] += time.perf_counter() - t0
        if crash_log is not None:
            crash_log.remove()
        return ShardResult(
            shard_index=task.shard_index,
            path=path,
            rows=len(recs),
            errors=sum(r.status == "error" for r in recs),
            sha256=sha,
            seconds=time.perf_counter() - t_start,
            stages=dict(times),
        )

    def _run_images(self, task: ShardTask, times: dict[str, float], crash_log: CrashLog | None = None):
        """Decode, predict (holding the device) and encode: (records, the shard's scores
        against the ground truth). With a
        ``crash_log``, one image at a time, encoded before the next is read, and the
        images the worker died on before become ``worker-crashed`` rows."""
        pending: list[Future | records.ImageRecord] = []
        if crash_log is not None:
            crashed = set(crash_log.crashed)
            pending += [records.error_record(ref, CRASHED_REASON, "the worker process died while this image was "
                                             "read, decoded or annotated; it was skipped when its shard was retried")
                        for ref in task.refs if ref.file_name in crashed]
        batches = self._decoded(task, times, crash_log)
        attempt = _Attempt()
        try:
            first = next(batches, None)  # read and decoded while the other shard holds the device
            t0 = time.perf_counter()
            with self._device:
                times["device_wait"] += time.perf_counter() - t0
                engine_before = dict(self.engine.timings)
                try:
                    for batch in itertools.chain([first] if first is not None else [], batches):
                        n_before = len(pending)
                        self._predict_batch(batch, pending, task, attempt)
                        if crash_log is not None:  # the crash window of an image ends with its encoding
                            for p in pending[n_before:]:
                                if isinstance(p, Future):
                                    p.result()
                    if crash_log is not None:
                        crash_log.save(None)  # a death from here on is not the last image's
                except DeviceFaultError:
                    if crash_log is not None:  # the worker lives: not a death on the image in progress
                        crash_log.save(None)
                    raise
                finally:
                    for k, v in self.engine.timings.items():  # only the device holder runs the engine
                        times[k] += v - engine_before.get(k, 0.0)
        finally:
            batches.close()
        if attempt.alone and attempt.passed == 0:  # every image faulted alone: the device is still failing
            e = attempt.alone[-1]
            raise DeviceFaultError(f"{type(e).__name__}: {e}", out_of_memory=is_out_of_memory(e)) from e
        recs: list[records.ImageRecord] = []
        scores = ShardScores()
        for p in pending:
            if isinstance(p, Future):
                encoded = p.result()
                times["encode"] += encoded.seconds
                scores.add(encoded.record.file_name, encoded.score)
                p = encoded.record
            recs.append(p)
        return recs, scores

    def _predict_batch(self, batch: list[tuple[ImageRef, DecodedImage]], pending: list,
                       task: ShardTask | None = None, attempt: _Attempt | None = None) -> None:
        """Error rows for undecodable images; the rest through the engine, encodes submitted."""
        ok = [(ref, img) for ref, img in batch if not isinstance(img, ImageDecodeError)]
        for ref, img in batch:
            if isinstance(img, ImageDecodeError):
                pending.append(records.error_record(ref, img.reason, img.detail))
        if ok:
            for (ref, img), pred in zip(ok, self._predict(ok, task, attempt), strict=True):
                if isinstance(pred, Exception):
                    pending.append(records.error_record(ref, "inference-failed", f"{type(pred).__name__}: {pred}",
                                                        size_hw=image_size_hw(img)))
                else:
                    pending.append(self._enc.submit(self._encode, ref, pred))

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
        self._enc.shutdown(wait=False, cancel_futures=True)


def _row_index(ref: ImageRef) -> int:
    if ref.index is None:
        raise ValueError(f"{ref.file_name}: expected the row index of a Hugging Face image, got none")
    return ref.index


def _read_hf(task: ShardTask, read: Callable[[int, int], list]) -> list:
    """``read(start, stop)`` over the row indices of ``task.refs``, one call per run of
    consecutive indices (an ``--image-list`` leaves gaps); one item per ref, in order."""
    out: list = []
    indices = [_row_index(ref) for ref in task.refs]
    i = 0
    while i < len(indices):
        j = i + 1
        while j < len(indices) and indices[j] == indices[j - 1] + 1:
            j += 1
        got = read(indices[i], indices[j - 1] + 1)
        if len(got) != j - i:
            raise RuntimeError(f"dataset rows [{indices[i]}, {indices[j - 1] + 1}): expected {j - i} rows, "
                               f"received {len(got)} (did the dataset change since it was listed?)")
        out.extend(got)
        i = j
    return out


def process_shards(processor: ShardProcessor, tasks: Sequence[ShardTask], concurrency: int = SHARDS_AT_ONCE) -> Iterator[ShardResult]:
    """Results of ``tasks`` in order, ``concurrency`` shards at a time on ``processor``
    (what a Ray actor with ``max_concurrency`` does; for callers without Ray)."""
    if concurrency < 1:
        raise ValueError(f"concurrency: expected >= 1, got {concurrency}")
    with ThreadPoolExecutor(concurrency, thread_name_prefix="shard") as pool:
        inflight: list[Future] = []
        todo = iter(tasks)
        for task in itertools.islice(todo, concurrency):
            inflight.append(pool.submit(processor.process, task))
        while inflight:
            result = inflight.pop(0).result()
            for task in itertools.islice(todo, 1):
                inflight.append(pool.submit(processor.process, task))
            yield result
