"""What a shard is, as typed records: the task the driver hands out, the options a
processor needs besides the engine, and the result it hands back (no image data)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from annotator.inputs.decode import DEFAULT_MAX_PIXELS
from annotator.inputs.hf import HFSource
from annotator.inputs.listing import DEFAULT_MAX_BYTES, ImageRef

__all__ = ["SHARDS_AT_ONCE", "DeviceFaultError", "RunOptions", "SchedulingStats", "ShardResult", "ShardTask", "make_shards"]

#: Shards a processor runs at once (a Ray actor's ``max_concurrency``): one holds the
#: device while the other reads, decodes, encodes and writes.
SHARDS_AT_ONCE = 2


class DeviceFaultError(RuntimeError):
    """A shard's attempt failed because of the device, not of its images (out of memory, a
    CUDA/cuDNN/driver error: :func:`annotator.device.is_device_fault`): the scheduler runs
    it again and retires an actor whose device keeps failing, instead of the part getting
    ``inference-failed`` rows. ``out_of_memory`` tells the next attempt to use a smaller
    batch. Defined here, with no torch, because the driver unpickles it."""

    device_fault = True  # how annotator.device recognises it without importing this module

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory

    def __reduce__(self):  # crosses process boundaries (Ray) with its flag
        return (DeviceFaultError, (str(self), self.out_of_memory))


@dataclass
class ShardTask:
    """One shard: its index and the images in it (``hf`` set for Hugging Face rows).

    On the driver ``refs`` is a view of the listing's columns (an
    :class:`~annotator.inputs.catalog.ImageRefs` slice); it reaches a worker as a list."""

    shard_index: int
    refs: Sequence[ImageRef]
    hf: HFSource | None = None
    #: One image at a time, each named in a crash log first (see :mod:`annotator.storage.crashlog`):
    #: the driver sets it for a shard whose actor died.
    careful: bool = False
    #: The previous attempt failed on a device fault (:class:`DeviceFaultError`):
    #: a faulting batch is now run image by image, and an image that faults alone while
    #: others pass becomes its own ``inference-failed`` row (set by the driver).
    after_device_fault: bool = False
    #: Which attempt this is (0: the first), for the part's provenance in the manifest.
    attempt: int = 0
    #: ``--retry-failed``: the shard's part exists; only its images whose row is not ``ok``
    #: run again, the ok rows are copied as they are (:mod:`annotator.shards.retry_failed`).
    retry_failed: bool = False


@dataclass
class ShardResult:
    """What the driver needs to know about a finished shard (no image data)."""

    shard_index: int
    path: str
    rows: int
    errors: int
    sha256: str
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    #: Where the part was made (node id, host, actor, attempt): the actor fills it in,
    #: the manifest records it (``parts[*].made_by``); empty outside Ray.
    made_by: dict = field(default_factory=dict)


@dataclass
class RunOptions:
    """Per-run settings that a shard processor needs besides the engine."""

    output: str
    metadata: dict  # RunMetadata.to_json() (records.metadata); the footer of every part
    storage_options: dict | None = None  # reading the source (and the ground truth)
    output_storage_options: dict | None = None  # writing parts; None: same as storage_options
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES  # larger files are refused unread
    read_threads: int = 8
    encode_threads: int = 4
    prefetch_batches: int = 1
    gt_spec: str | None = None
    gt_format: str | None = None


def make_shards(refs: Sequence[ImageRef], shard_size: int, hf: HFSource | None = None) -> list[ShardTask]:
    """Cut the listing into consecutive shards of ``shard_size`` images (slices of
    ``refs``: views, when it is an :class:`~annotator.inputs.catalog.ImageRefs`)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size: expected >= 1, got {shard_size}")
    return [ShardTask(i // shard_size, refs[i : i + shard_size], hf) for i in range(0, len(refs), shard_size)]


@dataclass
class SchedulingStats:
    """The scheduler's figures of one run (``OUTPUT/scheduling.json``): seconds of wall
    time, counted on the driver (``driver_overhead_s``: handling results, events and
    submissions) and summed over the shards as the actors timed them (``shard_seconds``)."""

    actors: int = 0
    device: str = ""
    #: torch intra-op threads per CPU actor (its Ray CPUs); 0 on a GPU
    threads_per_actor: int = 0
    #: retried attempts, all causes (``device_faults`` among them)
    retries: int = 0
    #: attempts that failed on a device fault (out of memory, a CUDA error) and ran again
    device_faults: int = 0
    #: shards that ran more than once, whatever the cause (a failure, an actor or node lost)
    shards_retried: int = 0
    restarts: int = 0
    shards_done: int = 0
    driver_overhead_s: float = 0.0
    shard_seconds: float = 0.0

    @property
    def overhead_fraction(self) -> float | None:
        """Driver time as a fraction of shard time (None before any shard finished)."""
        return self.driver_overhead_s / self.shard_seconds if self.shard_seconds else None

    @property
    def driver_ms_per_shard(self) -> float | None:
        return 1000 * self.driver_overhead_s / self.shards_done if self.shards_done else None

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        for key in ("overhead_fraction", "driver_ms_per_shard"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return doc
