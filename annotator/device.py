"""Where and at what precision the encoders run, and moving images on and results off
that device: no model, no Ray (the engine's helpers, usable on their own).

- :func:`resolve_device`: ``auto`` / ``cpu`` / ``cuda[:N]`` to a ``torch.device``, refused
  with a one-line :class:`~annotator.config.ConfigError` when it cannot be had here;
- :func:`resolve_precision`: the encoders' autocast dtype for a device and protocol
  (:func:`cpu_bf16_supported` detects native CPU bf16), :func:`precision_name` its name;
- :func:`autocast`: the matching ``torch.autocast`` context (disabled for fp32);
- :func:`to_chw_uint8`: an image onto the device as (3, H, W) uint8;
- :func:`class_stats_torch`: per-class pixel counts and confidence sums on the device;
- :class:`StageTimer`: seconds per named stage (synchronising CUDA when profiling);
- :func:`is_device_fault`: whether an engine exception is the device's (out of memory,
  CUDA/cuDNN/cuBLAS/driver errors, a lost device) rather than one image's (the error a
  shard attempt then fails with, ``DeviceFaultError``, is :mod:`annotator.shards.task`'s:
  the driver, which imports no torch, must unpickle it);
  :func:`is_out_of_memory` the out-of-memory part of it; :func:`free_device_cache`
  what is done before the device is used again after one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch

from annotator.config import ConfigError

__all__ = [
    "DEVICE_FAULT_MARKERS",
    "OUT_OF_MEMORY_MARKERS",
    "StageTimer",
    "autocast",
    "class_stats_torch",
    "cpu_bf16_supported",
    "free_device_cache",
    "is_device_fault",
    "is_out_of_memory",
    "precision_name",
    "resolve_device",
    "resolve_precision",
    "to_chw_uint8",
]


def class_stats_torch(labels: torch.Tensor, conf: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) integer labels + (H, W) float confidence on any device -> per class
    (pixel count (K,) int64, confidence sum (K,) float64), like ``records.class_stats_numpy``."""
    flat = labels.reshape(-1).long()
    return (torch.bincount(flat, minlength=num_classes),
            torch.bincount(flat, weights=conf.reshape(-1).double(), minlength=num_classes))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; validates explicit CUDA requests."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), where
    bf16 autocast about doubles the encoders' speed; elsewhere bf16 is emulated and slower."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)  # torch's own detection (private, so guarded)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001, S110 - a probe that fails means "unknown": try the next
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device, protocol: str = "full",
                      test_model: bool = False) -> torch.dtype | None:
    """Autocast dtype for the encoders (None = fp32).

    ``auto``: bf16 on CUDA; on a CPU, bf16 where the CPU has it natively
    (:func:`cpu_bf16_supported`) and fp32 elsewhere, and always fp32 under
    ``--protocol official`` on a CPU (parity with the released fp32 code) and for the
    test models (``test_model``: their outputs must not depend on the machine). ``bf16``
    is honoured on any CPU; ``fp16`` needs CUDA.
    """
    if device.type == "cpu":
        if precision == "fp16":
            raise ConfigError("--precision fp16: expected a CUDA device for fp16, got the CPU "
                              "(use bf16 or fp32 there)")
        if precision == "bf16":
            return torch.bfloat16
        if precision == "auto" and protocol != "official" and not test_model and cpu_bf16_supported():
            return torch.bfloat16
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32``: what the encoders ran at (for metadata and benchmarks)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


def to_chw_uint8(image, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 numpy or (3, H, W) uint8 tensor -> (3, H, W) uint8 on ``device``."""
    if isinstance(image, torch.Tensor):
        t = image
        if t.dim() != 3 or t.shape[0] != 3 or t.dtype != torch.uint8:
            raise ValueError(f"expected a (3, H, W) uint8 tensor, got {tuple(t.shape)} {t.dtype}")
        return t.to(device, non_blocking=True)
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {a.shape} {a.dtype}")
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # torch refuses read-only memory; decoders may hand us one
        a = a.copy()
    return torch.from_numpy(a).to(device).permute(2, 0, 1)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; disabled (fp32) when None."""
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


class StageTimer:
    """Wall-clock seconds per named stage, summed over calls (``timings[name]``).

    With ``profile`` on a CUDA device, the device is synchronised before and after each
    stage, so that its seconds are the stage's own and not the queue's.
    """

    def __init__(self, device: torch.device, profile: bool = False):
        self.device = device
        self.profile = profile
        self.timings: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str):
        sync = self.profile and self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(self.device)
        self.timings[name] += time.perf_counter() - t0


# ---------------------------------------------------------------- device faults

#: Lower-case fragments of the messages torch raises, as a plain ``RuntimeError``, when
#: the DEVICE ran out of memory (the caching allocator's "CUDA out of memory. Tried to
#: allocate ...", cuBLAS/cuDNN's allocation failures, the HIP build's "HIP out of memory").
OUT_OF_MEMORY_MARKERS = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
)
#: Lower-case fragments of the messages torch raises, as a plain ``RuntimeError``, for a
#: fault of the device, its driver or its libraries rather than of the input: the CUDA
#: runtime's "CUDA error: ..." (an illegal memory access, a launch failure, an ECC error,
#: a device that fell off the bus), cuDNN's and cuBLAS's ``*_STATUS_*`` codes, NCCL,
#: "CUDA driver"/"no CUDA GPUs are available" once the device is lost, and the same
#: for ROCm (HIP). Checked after the exception's type (:func:`is_device_fault`).
DEVICE_FAULT_MARKERS = (
    *OUT_OF_MEMORY_MARKERS,
    "cuda error",
    "cuda driver",
    "cuda kernel errors",
    "cudnn_status_",
    "cudnn error",
    "cublas_status_",
    "cusolver_status_",
    "cufft_internal_error",
    "nccl error",
    "illegal memory access",
    "illegal instruction",
    "unspecified launch failure",
    "device-side assert",
    "misaligned address",
    "ecc error",
    "uncorrectable ecc",
    "fallen off the bus",
    "device not ready",
    "no cuda gpus are available",
    "cuda-capable device",
    "hip error",
    "miopen",
)


def _messages(exc: BaseException) -> str:
    """The lower-case messages of ``exc`` and of its causes (torch wraps some)."""
    out: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(str(cur).lower())
        cur = cur.__cause__ or cur.__context__
    return "\n".join(out)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory: ``torch.cuda.OutOfMemoryError``
    (or a :class:`~annotator.shards.task.DeviceFaultError` saying so), or a ``RuntimeError``
    carrying one of :data:`OUT_OF_MEMORY_MARKERS`. A host ``MemoryError`` is not (it is the
    machine's)."""
    if getattr(exc, "device_fault", False):  # a DeviceFaultError (shards.task), without importing it
        return bool(getattr(exc, "out_of_memory", False))
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and any(m in _messages(exc) for m in OUT_OF_MEMORY_MARKERS)


def is_device_fault(exc: BaseException) -> bool:
    """Whether an exception from the engine is about the device rather than one image.

    By type first (``torch.cuda.OutOfMemoryError``, ``torch.AcceleratorError`` where this
    torch has it, a :class:`~annotator.shards.task.DeviceFaultError`), then, since torch raises a plain
    ``RuntimeError`` for most CUDA, cuDNN and cuBLAS failures, by the markers of
    :data:`DEVICE_FAULT_MARKERS` in a ``RuntimeError``'s message (or its causes'). Other
    types (``ValueError``, ``TypeError``, ``IndexError``, ...) are never device faults:
    they are the image's or a bug's."""
    if getattr(exc, "device_fault", False) or is_out_of_memory(exc):
        return True
    for name in ("AcceleratorError",):  # torch >= 2.8 raises this for CUDA runtime errors
        cls = getattr(torch, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return isinstance(exc, RuntimeError) and any(m in _messages(exc) for m in DEVICE_FAULT_MARKERS)


def free_device_cache(device: torch.device | str) -> None:
    """After a device fault: give the caching allocator's free blocks back
    (``torch.cuda.empty_cache()`` on CUDA; nothing on a CPU). Never raises (the device
    may be the thing that is broken)."""
    if torch.device(device).type != "cuda":
        return
    try:
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001, S110 - a lost device: the next attempt will say so
        pass
