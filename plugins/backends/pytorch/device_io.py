"""CUDA shared memory used where it lies: no round trip through host memory.

A client that placed an input in CUDA shared memory on the device of a ``KIND_GPU``
instance gets it wrapped, not copied: ``torch.as_tensor`` over the region's
``__cuda_array_interface__`` makes a torch tensor that shares the client's memory (as
Triton's input collector hands its PyTorch backend the buffer itself). An output the
client wants in CUDA shared memory on that device is copied device to device into the
region. Anything else (another device, BYTES tensors) takes the host path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triton_kernel.kernel.datatypes import NUMPY_DTYPES
from triton_kernel.kernel.shared_memory import CudaBuffer

__all__ = ["copy_to_region", "device_view"]


class _CudaArray:
    """A device span described by ``__cuda_array_interface__`` (version 3, C order)."""

    def __init__(self, pointer: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (pointer, False),
            "strides": None,
            "version": 3,
        }


def device_view(
    torch: Any, buffer: CudaBuffer, datatype: str, shape: tuple[int, ...], device: Any
) -> Any:
    """A torch tensor over ``buffer`` (no copy): the client's memory, in ``shape``."""
    typestr = np.dtype(NUMPY_DTYPES[datatype]).str
    tensor = torch.as_tensor(_CudaArray(buffer.pointer, tuple(shape), typestr))
    if tensor.device != device:  # as_tensor places it by its pointer: a bug if it differs
        raise RuntimeError(f"CUDA shared memory on {tensor.device}, expected {device}")
    return tensor


def copy_to_region(torch: Any, value: Any, buffer: CudaBuffer, device: Any) -> bool:
    """Queue a device-to-device copy of ``value`` into ``buffer`` on the current stream.

    False when the value is empty or does not fit: the kernel's host path then writes
    nothing, or reports the short region in Triton's words.
    """
    flat = value.contiguous().reshape(-1).view(torch.uint8)
    if flat.numel() == 0 or flat.numel() > buffer.byte_size:
        return False
    destination = device_view(torch, buffer, "UINT8", (flat.numel(),), device)
    destination.copy_(flat, non_blocking=True)
    return True
