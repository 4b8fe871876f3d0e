"""The few CUDA runtime calls that CUDA shared memory needs, through cuda-bindings.

Imported by the kernel always, but cuda-bindings itself only when the first CUDA region
is registered, so that a server without CUDA never loads it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

#: ``sizeof(cudaIpcMemHandle_t)``.
CUDA_IPC_HANDLE_SIZE = 64


class CudaError(Exception):
    """A CUDA call failed, or CUDA is not available to this process."""


class CudaRuntime:
    """CUDA IPC and copies between host and device; each call first makes the region's
    device current on the calling thread (regions of several devices may coexist)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import driver, runtime
        except ImportError as exc:
            raise CudaError(f"CUDA is not available (cuda-bindings: {exc})") from None
        self._runtime, self._driver = runtime, driver
        (count,) = self._call(runtime.cudaGetDeviceCount())
        if count == 0:
            raise CudaError("no CUDA device is visible to this process")

    def _call(self, result: tuple[Any, ...]) -> tuple[Any, ...]:
        error, *values = result
        runtime, driver = self._runtime, self._driver
        if isinstance(error, driver.CUresult):
            if error != driver.CUresult.CUDA_SUCCESS:
                raise CudaError(f"{error.name}: {driver.cuGetErrorString(error)[1]!r}")
        elif error != runtime.cudaError_t.cudaSuccess:
            raise CudaError(f"{error.name}: {runtime.cudaGetErrorString(error)[1]!r}")
        return tuple(values)

    def _device(self, device_id: int) -> None:
        self._call(self._runtime.cudaSetDevice(device_id))

    def open(self, handle: bytes, device_id: int) -> int:
        runtime = self._runtime
        self._device(device_id)
        ipc_handle = runtime.cudaIpcMemHandle_t()
        ctypes.memmove(ipc_handle.getPtr(), handle, CUDA_IPC_HANDLE_SIZE)
        flags = getattr(runtime, "cudaIpcMemLazyEnablePeerAccess", 1)
        (pointer,) = self._call(runtime.cudaIpcOpenMemHandle(ipc_handle, flags))
        return int(pointer)

    def allocation_size(self, pointer: int, device_id: int) -> int:
        self._device(device_id)
        _, size = self._call(self._driver.cuMemGetAddressRange(self._driver.CUdeviceptr(pointer)))
        return int(size)

    def close(self, pointer: int, device_id: int) -> None:
        self._device(device_id)
        self._call(self._runtime.cudaIpcCloseMemHandle(pointer))

    def to_host(self, pointer: int, size: int, device_id: int) -> np.ndarray:
        host = np.empty(size, np.uint8)
        self._device(device_id)
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._runtime.cudaMemcpy(host.ctypes.data, pointer, size, kind))
        return host

    def to_device(self, pointer: int, data: bytes | memoryview, device_id: int) -> None:
        host = np.frombuffer(data, np.uint8)
        self._device(device_id)
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._runtime.cudaMemcpy(pointer, host.ctypes.data, host.size, kind))
