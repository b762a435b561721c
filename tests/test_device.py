"""annotator.device: which engine exceptions are the device's (issue 21.1)."""

from __future__ import annotations

import pickle

import pytest
import torch

from annotator.device import free_device_cache, is_device_fault, is_out_of_memory
from annotator.shards.task import DeviceFaultError


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total)"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("HIP out of memory. Tried to allocate 1.00 GiB"),
])
def test_out_of_memory(exc):
    assert is_out_of_memory(exc) and is_device_fault(exc)


@pytest.mark.parametrize("message", [
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported",
    "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
    "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`",
    "CUDA error: unspecified launch failure",
    "CUDA error: uncorrectable ECC error encountered",
    "CUDA driver error: unknown error",
    "No CUDA GPUs are available",
    "CUDA error: device-side assert triggered",
])
def test_device_errors_torch_raises_as_runtime_error(message):
    exc = RuntimeError(message)
    assert is_device_fault(exc) and not is_out_of_memory(exc)


def test_a_wrapped_device_error_is_found_in_its_cause():
    try:
        try:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as inner:
            raise RuntimeError("forward failed") from inner
    except RuntimeError as outer:
        assert is_device_fault(outer)


@pytest.mark.parametrize("exc", [
    ValueError("CUDA out of memory"),  # only RuntimeErrors are read for markers: a ValueError is the input's
    RuntimeError("stack expects each tensor to be equal size, but got [3, 4] at entry 0 and [3, 5] at entry 1"),
    RuntimeError("shape '[1, 3]' is invalid for input of size 4"),
    MemoryError("host memory"),  # the machine's, not the device's
    KeyError("x"),
    OSError(5, "Input/output error"),
])
def test_errors_about_the_input_or_the_host_are_not_device_faults(exc):
    assert not is_device_fault(exc)


def test_device_fault_error_crosses_processes_with_its_flag():
    e = pickle.loads(pickle.dumps(DeviceFaultError("OutOfMemoryError: CUDA out of memory", out_of_memory=True)))
    assert isinstance(e, DeviceFaultError) and e.out_of_memory and is_device_fault(e)
    assert str(e) == "OutOfMemoryError: CUDA out of memory"


def test_free_device_cache_on_a_cpu_is_a_no_op():
    free_device_cache("cpu")
    free_device_cache(torch.device("cpu"))
