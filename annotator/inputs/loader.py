"""Fast image input for one device: read and decode ahead of the consumer, in order.

Usage (what a shard worker does)::

    from annotator.inputs.loader import ImageLoader
    from annotator.inputs.listing import read_image_bytes

    with ImageLoader(refs, read_image_bytes, batch_size=32, device=engine.device) as loader:
        for batch in loader:                       # batches in input order
            good = [(i, img) for i, img in batch if not isinstance(img, ImageDecodeError)]
            preds = engine.predict([img for _, img in good], [refs[i].file_name for i, _ in good])
            ...                                    # records for good ones, error rows for the rest
    print(loader.stats)                            # read / decode seconds, counts

Each batch is a list of ``(index, image | ImageDecodeError)``: ``index`` is the
0-based position of the item in ``items``; ``image`` is

- on a CPU ``device`` (the default): an ``(H, W, 3)`` uint8 numpy array from
  :func:`annotator.inputs.decode.decode_image` (EXIF orientation applied), or a ``(3, H, W)``
  uint8 CPU tensor when the batched torchvision path was forced (``gpu_decode=True``);
- on a CUDA ``device``: a ``(3, H, W)`` uint8 tensor ON THAT DEVICE, ready for
  :meth:`annotator.engine.Engine.predict`.

Every image becomes exactly one entry; read failures (an :class:`ImageDecodeError`
raised or returned by ``read_fn``) and decode failures are entries too, never
exceptions. Any other exception from ``read_fn`` (a bug, a missing fsspec backend)
propagates to the consumer.

How it is fast
- A thread pool (``num_threads``) reads bytes and decodes with PIL; both release the
  GIL. Batches are submitted ``prefetch`` batches ahead of the one being consumed, and
  the pool works through images in order.
- On CUDA (when torchvision is importable) JPEGs are decoded on the GPU in one batched
  ``torchvision.io.decode_jpeg(list, device="cuda")`` call per batch (nvJPEG), by a
  separate assembler thread (:mod:`annotator.inputs.jpeg_gpu`). Only files where that
  is certain to give the same picture as :func:`decode_image` take this path: baseline (non-progressive) 8-bit
  YCbCr/grey JPEGs that end with an EOI marker, with no EXIF orientation other than 1,
  within ``max_pixels``. Everything else, and any image the GPU fails to decode (or
  decodes to an unexpected size), is decoded on the CPU, so bad files still become
  ``ImageDecodeError`` with the right reason. Under ``--protocol official`` the GPU
  decoder is never used (:func:`use_gpu_decoder`): nvJPEG's IDCT and chroma upsampling
  are not libjpeg's, so its pixels can differ by a few levels from the release's decoder
  (PIL), and the official protocol decodes like the release.
- CPU-decoded images bound for CUDA are copied into pinned host memory by the decoding
  thread and uploaded with ``non_blocking=True`` on a side stream by the assembler; the
  stream is synchronised before the batch is handed over.

No Ray, no CUDA needed: on a CPU machine only the thread pool is used.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from annotator.inputs.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from annotator.inputs.jpeg_gpu import (
    EncodedJpeg,
    batched_jpeg_available,
    decode_jpeg_batch,
    jpeg_fast_path_size_hw,
)

__all__ = [
    "DecodedImage",
    "ImageLoader",
    "LoaderStats",
    "batched_jpeg_available",
    "image_size_hw",
    "jpeg_fast_path_size_hw",
    "use_gpu_decoder",
]

#: What a batch entry holds: (H, W, 3) uint8 numpy, (3, H, W) uint8 tensor, or the error.
DecodedImage = np.ndarray | torch.Tensor | ImageDecodeError


def use_gpu_decoder(requested: bool | None, cuda: bool, protocol: str = "full") -> bool:
    """Whether the loader decodes JPEGs with the batched torchvision decoder (nvJPEG on CUDA).

    ``requested`` None: on a CUDA device when torchvision is importable, except under
    ``protocol == "official"``, which decodes like the release (PIL/libjpeg on the CPU,
    the decoder the parity tests check): nvJPEG's pixels may differ from it. ``True``
    forces it (a ValueError under ``official``, or without torchvision); ``False``: never.
    """
    if protocol == "official":
        if requested:
            raise ValueError("gpu_decode=True: expected the release's CPU decoder under --protocol official "
                             "(nvJPEG's pixels may differ from it), got a request for the batched decoder")
        return False
    if requested is None:
        return cuda and batched_jpeg_available()
    if requested and not batched_jpeg_available():
        raise ValueError("gpu_decode=True needs torchvision (torchvision.io.decode_jpeg), which is not importable")
    return bool(requested)


@dataclass
class LoaderStats:
    """Counters of one loader. Seconds in worker threads are summed over threads
    (thread-seconds: they overlap each other and the consumer's work).

    images: entries yielded; errors: of which ImageDecodeError.
    bytes_read: total encoded bytes returned by ``read_fn``.
    read_s: thread-seconds in ``read_fn``.
    decode_s: thread-seconds decoding on the CPU (PIL), header probes and pinning included.
    batch_decode_s: seconds in batched torchvision (GPU) decode calls, device sync included.
    upload_s: seconds uploading CPU-decoded images to the device (assembler thread).
    batch_decoded: images decoded by the batched torchvision path.
    cpu_decoded: images decoded by PIL (fallbacks included).
    fallbacks: images the batched path handed back to PIL.
    wait_s: seconds the consumer waited for a batch (input stalls, wall clock).
    """

    images: int = 0
    errors: int = 0
    bytes_read: int = 0
    read_s: float = 0.0
    decode_s: float = 0.0
    batch_decode_s: float = 0.0
    upload_s: float = 0.0
    batch_decoded: int = 0
    cpu_decoded: int = 0
    fallbacks: int = 0
    wait_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def image_size_hw(image: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(height, width) of a yielded image: (H, W, 3) numpy or (3, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[1]), int(image.shape[2])
    return int(image.shape[0]), int(image.shape[1])


def _default_name(item: Any) -> str:
    for attr in ("file_name", "uri"):
        v = getattr(item, attr, None)
        if isinstance(v, str) and v:
            return v
    return item if isinstance(item, str) else ""


class ImageLoader:
    """Reads and decodes ``items`` in a thread pool, yielding ordered batches.

    Args:
        items: anything ``read_fn`` accepts (e.g. :class:`annotator.inputs.listing.ImageRef`);
            any iterable, consumed lazily.
        read_fn: ``item -> bytes``; may raise (or return) :class:`ImageDecodeError`
            (e.g. :func:`annotator.inputs.listing.read_image_bytes`). Called from worker threads.
        batch_size: images per yielded batch (the last one may be smaller).
        num_threads: reader/decoder threads (default: the CPU count).
        prefetch: batches read and decoded ahead of the one being consumed (>= 0).
        max_pixels: decompression-bomb limit passed to :func:`decode_image`.
        device: where yielded images live: None/"cpu" -> numpy on the host; a CUDA
            device -> (3, H, W) uint8 tensors on it.
        gpu_decode: batched torchvision JPEG decode; None = on when ``device`` is CUDA
            and torchvision is importable; True forces it (on a CPU device it runs
            torchvision's CPU decoder: for tests); False = PIL only.
        pin_memory: copy CPU-decoded images to pinned memory before upload (default:
            on when ``device`` is CUDA).
        name_fn: ``item -> str`` shown in error details (default: ``item.file_name``,
            ``item.uri`` or the item itself when it is a string).
        executor: a thread pool to read and decode in (e.g. one kept for many shards);
            ``num_threads`` is then ignored, and the pool is not shut down by :meth:`close`
            (only this loader's pending work is cancelled). Default: a pool of its own.
        protocol: the run's ``--protocol``; ``official`` decodes every image with the
            release's CPU decoder (:func:`use_gpu_decoder`).

    Iterate once; use as a context manager (or call :meth:`close`) to stop the threads
    early. ``stats`` (:class:`LoaderStats`) is updated as batches are produced.
    """

    def __init__(
        self,
        items: Iterable[Any],
        read_fn: Callable[[Any], bytes | ImageDecodeError],
        *,
        batch_size: int = 32,
        num_threads: int | None = None,
        prefetch: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        device: str | torch.device | None = None,
        gpu_decode: bool | None = None,
        pin_memory: bool | None = None,
        name_fn: Callable[[Any], str] | None = None,
        executor: ThreadPoolExecutor | None = None,
        protocol: str = "full",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"prefetch: expected >= 0 batches, got {prefetch}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads: expected >= 1, got {num_threads}")
        if max_pixels < 1:
            raise ValueError(f"max_pixels: expected a positive integer, got {max_pixels}")
        self.items = items
        self.read_fn = read_fn
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads or os.cpu_count() or 2)
        self.prefetch = int(prefetch)
        self.max_pixels = int(max_pixels)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        cuda = self.device.type == "cuda"
        self.gpu_decode = use_gpu_decoder(gpu_decode, cuda, protocol)
        self.pin_memory = bool(cuda if pin_memory is None else pin_memory) and cuda
        self.name_fn = name_fn or _default_name
        self.stats = LoaderStats()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = executor
        self._own_pool = executor is None
        self._inflight: deque = deque()
        self._assembler: ThreadPoolExecutor | None = None
        self._stream: torch.cuda.Stream | None = None
        self._started = False
        self._closed = False

    # ---------------------------------------------------------------- context
    def __enter__(self) -> ImageLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads; pending work is cancelled. Safe to call more than once."""
        self._closed = True
        for _, futures, batch_future in list(self._inflight):
            for f in [*futures, batch_future]:
                if f is not None:
                    f.cancel()
        for ex in (self._assembler, self._pool if self._own_pool else None):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()

    # ---------------------------------------------------------------- worker side
    def _add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _cpu_decode(self, data: bytes, name: str) -> np.ndarray | torch.Tensor | ImageDecodeError:
        t0 = time.perf_counter()
        try:
            rgb = decode_image(data, max_pixels=self.max_pixels, name=name)
        except ImageDecodeError as exc:
            self._add(decode_s=time.perf_counter() - t0)
            return exc
        out: np.ndarray | torch.Tensor = rgb
        if self.pin_memory:
            pinned = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True)
            pinned.numpy()[...] = rgb
            out = pinned
        self._add(decode_s=time.perf_counter() - t0, cpu_decoded=1)
        return out

    def _load_one(self, item: Any) -> np.ndarray | torch.Tensor | ImageDecodeError | EncodedJpeg:
        """Worker thread: read, then decode on the CPU or leave encoded for the batch decoder."""
        if self._closed:
            return ImageDecodeError("unreadable", "loader closed")
        name = self.name_fn(item)
        t0 = time.perf_counter()
        try:
            data = self.read_fn(item)
        except ImageDecodeError as exc:
            self._add(read_s=time.perf_counter() - t0)
            return exc
        self._add(read_s=time.perf_counter() - t0)
        if isinstance(data, ImageDecodeError):
            return data
        self._add(bytes_read=len(data))
        if self.gpu_decode:
            t1 = time.perf_counter()
            size_hw = jpeg_fast_path_size_hw(data, self.max_pixels)
            self._add(decode_s=time.perf_counter() - t1)
            if size_hw is not None:
                return EncodedJpeg(bytes(data), name, size_hw)
        return self._cpu_decode(data, name)

    def _decode_batch(self, encoded: list[EncodedJpeg]) -> list[torch.Tensor | None]:
        """Batched torchvision decode; None where it failed or gave an unexpected shape."""
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        decoded, seconds = decode_jpeg_batch(encoded, dev)
        self._add(batch_decode_s=seconds)
        return decoded

    def _finish(self, start: int, futures: list[Future]) -> list[tuple[int, DecodedImage]]:
        """Assembler: wait for a batch's images, batch-decode JPEGs, upload to the device."""
        results = [f.result() for f in futures]
        enc = [j for j, r in enumerate(results) if isinstance(r, EncodedJpeg)]
        cuda = self.device.type == "cuda"
        stream_ctx = torch.cuda.stream(self._stream) if cuda and self._stream is not None else contextlib.nullcontext()
        with stream_ctx:
            if enc:
                decoded = self._decode_batch([results[j] for j in enc])
                n_ok = 0
                for j, t in zip(enc, decoded, strict=True):
                    if t is not None:
                        results[j] = t
                        n_ok += 1
                    else:
                        e = results[j]
                        results[j] = self._cpu_decode(e.data, e.name)
                self._add(batch_decoded=n_ok, fallbacks=len(enc) - n_ok)
            if cuda:
                t0 = time.perf_counter()
                for j, r in enumerate(results):
                    if isinstance(r, np.ndarray):
                        r = torch.from_numpy(r)
                    if isinstance(r, torch.Tensor) and r.device.type == "cpu":
                        # HWC host (pinned when enabled) -> CHW on the device
                        results[j] = r.to(self.device, non_blocking=r.is_pinned()).permute(2, 0, 1).contiguous()
                if self._stream is not None:
                    self._stream.synchronize()
                    consumer = torch.cuda.default_stream(self.device)
                    for r in results:
                        if isinstance(r, torch.Tensor) and r.is_cuda:
                            r.record_stream(consumer)
                self._add(upload_s=time.perf_counter() - t0)
        n_err = sum(isinstance(r, ImageDecodeError) for r in results)
        self._add(images=len(results), errors=n_err)
        return [(start + j, r) for j, r in enumerate(results)]

    # ---------------------------------------------------------------- consumer side
    def __iter__(self) -> Iterator[list[tuple[int, DecodedImage]]]:
        if self._started:
            raise RuntimeError("an ImageLoader can be iterated only once")
        self._started = True
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="annotator-decode")
        use_assembler = self.gpu_decode or self.device.type == "cuda"
        if use_assembler:
            self._assembler = ThreadPoolExecutor(1, thread_name_prefix="annotator-assemble")
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
        return self._generate(use_assembler)

    def _generate(self, use_assembler: bool) -> Iterator[list[tuple[int, DecodedImage]]]:
        it = iter(self.items)
        inflight = self._inflight
        position = 0

        def submit_next() -> bool:
            nonlocal position
            chunk = list(itertools.islice(it, self.batch_size))
            if not chunk:
                return False
            assert self._pool is not None and (self._assembler is not None or not use_assembler)  # set in __iter__
            futures = [self._pool.submit(self._load_one, x) for x in chunk]
            batch_future = self._assembler.submit(self._finish, position, futures) if self._assembler else None
            inflight.append((position, futures, batch_future))
            position += len(chunk)
            return True

        try:
            while len(inflight) < self.prefetch + 1 and submit_next():
                pass
            while inflight:
                start, futures, batch_future = inflight.popleft()
                t0 = time.perf_counter()
                batch = batch_future.result() if batch_future is not None else self._finish(start, futures)
                self._add(wait_s=time.perf_counter() - t0)
                yield batch
                while len(inflight) < self.prefetch + 1 and submit_next():
                    pass
        finally:
            self.close()
