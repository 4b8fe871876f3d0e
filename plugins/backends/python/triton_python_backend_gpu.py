"""GPU tensors of ``pb_utils``: device memory seen through DLPack, in the model's worker.

Triton's Python backend keeps a tensor made by ``Tensor.from_dlpack`` of a CUDA tensor
on the GPU (``is_cpu()`` is False, ``as_numpy()`` raises, ``to_dlpack()`` gives a CUDA
capsule back). Here a :class:`CudaArray` holds such memory: its pointer, shape, dtype
and device, and whatever keeps the memory alive (the producer's DLPack capsule, or a
CUDA IPC mapping of a client's CUDA shared memory). No framework is imported: capsules
are read and made with ``ctypes`` (the DLPack 0.x ABI that every producer accepts), and
the few CUDA calls go through cuda-bindings, imported on first use.

Transfers: a GPU output reaches the server as a host copy made here (one copy, where
Triton would pass a CUDA IPC handle); an input that lies in CUDA shared memory reaches
a model with ``FORCE_CPU_ONLY_INPUT_TENSORS: no`` as a CUDA IPC mapping of the client's
memory (:func:`ipc_input`), never copied.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "CudaArray",
    "GpuTensorError",
    "capsule_device",
    "from_capsule",
    "from_cuda_producer",
    "ipc_input",
    "take",
]

#: ``DLDeviceType`` values this module meets.
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST = 1, 2, 3
#: ``sizeof(cudaIpcMemHandle_t)``.
IPC_HANDLE_SIZE = 64


class GpuTensorError(Exception):
    """A GPU tensor cannot be made or used (``pb_utils`` raises it as TritonModelException)."""


# --- the DLPack ABI (dlpack.h, unversioned) -------------------------------------------------


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _Deleter),
]

#: Capsule names: module constants, since a capsule keeps a pointer to its name.
_DLTENSOR = b"dltensor"
_USED = b"used_dltensor"
_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _api(name: str, restype: Any, *argtypes: Any) -> Any:
    """A C-API function of this interpreter with its own signature (raw pointers or objects)."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ctypes.pythonapi))


_is_valid = _api("PyCapsule_IsValid", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
_is_valid_raw = _api("PyCapsule_IsValid", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)
_get_pointer = _api("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)
_get_pointer_raw = _api("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
_set_name = _api("PyCapsule_SetName", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
_new_capsule = _api(
    "PyCapsule_New", ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, _Destructor
)

#: (DLPack type code, bits) <-> numpy dtype.
_DTYPES = {
    (0, 8): np.int8,
    (0, 16): np.int16,
    (0, 32): np.int32,
    (0, 64): np.int64,
    (1, 8): np.uint8,
    (1, 16): np.uint16,
    (1, 32): np.uint32,
    (1, 64): np.uint64,
    (2, 16): np.float16,
    (2, 32): np.float32,
    (2, 64): np.float64,
    (6, 8): np.bool_,
}
_CODES = {np.dtype(dtype): key for key, dtype in _DTYPES.items()}


def is_capsule(value: Any) -> bool:
    return type(value).__name__ == "PyCapsule"


def capsule_device(capsule: Any) -> tuple[int, int]:
    """``(device type, device id)`` of an unconsumed DLPack capsule (it stays unconsumed)."""
    device = _read(capsule).dl_tensor.device
    return device.device_type, device.device_id


def _read(capsule: Any) -> DLManagedTensor:
    if not _is_valid(capsule, _DLTENSOR):
        raise GpuTensorError(
            "the capsule is not an unconsumed DLPack tensor (named 'dltensor'); a capsule "
            "can be used only once"
        )
    return DLManagedTensor.from_address(_get_pointer(capsule, _DLTENSOR))


# --- device memory ---------------------------------------------------------------------------


class CudaArray:
    """A C-ordered array in device memory, and the object that keeps that memory alive."""

    __slots__ = ("device_id", "dtype", "owner", "pointer", "shape")

    def __init__(
        self, pointer: int, shape: tuple[int, ...], dtype: Any, device_id: int, owner: Any
    ) -> None:
        self.pointer = pointer
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.device_id = device_id
        #: Released when the last array (or exported capsule) over the memory goes.
        self.owner = owner

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def host(self) -> np.ndarray:
        """A copy in host memory (what the worker sends the server for a GPU output)."""
        host = np.empty(self.shape, self.dtype)
        if host.nbytes:
            runtime().to_host(host, self.pointer, self.device_id)
        return host

    def capsule(self) -> Any:
        """A new DLPack capsule over the memory; it keeps this array alive until consumed
        and released (or dropped unconsumed)."""
        return _export(self, KDL_CUDA)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.pointer, False),
            "strides": None,
            "version": 3,
        }

    def __repr__(self) -> str:
        return (
            f"CudaArray(shape={list(self.shape)}, dtype={self.dtype}, device=cuda:{self.device_id})"
        )


class _Imported:
    """Owns a consumed DLPack tensor: calls its producer's deleter when released."""

    __slots__ = ("_address", "_keep")

    def __init__(self, address: int, keep: Any = None) -> None:
        self._address = address
        self._keep = keep

    def __del__(self) -> None:
        managed = DLManagedTensor.from_address(self._address)
        if ctypes.cast(managed.deleter, ctypes.c_void_p).value:
            managed.deleter(ctypes.cast(self._address, ctypes.POINTER(DLManagedTensor)))


def from_capsule(capsule: Any) -> CudaArray:
    """Take a CUDA DLPack capsule (it is consumed, as Triton's ``from_dlpack`` consumes it)."""
    device_type, _ = capsule_device(capsule)
    if device_type != KDL_CUDA:
        raise GpuTensorError(f"DLDevice type {device_type} is not support by Python backend.")
    return take(capsule)


def take(capsule: Any) -> CudaArray:
    """The array a DLPack capsule describes, now owned here (the capsule is marked used)."""
    tensor = _read(capsule).dl_tensor
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    if tensor.strides:
        _check_c_order(shape, [tensor.strides[i] for i in range(tensor.ndim)])
    key = (tensor.dtype.code, tensor.dtype.bits)
    if key not in _DTYPES or tensor.dtype.lanes != 1:
        raise GpuTensorError(
            f"DLPack datatype (code {key[0]}, {key[1]} bits, {tensor.dtype.lanes} lanes) is "
            "not supported for GPU tensors"
        )
    address = _get_pointer(capsule, _DLTENSOR)
    _set_name(capsule, _USED)  # consumed: its own destructor leaves the tensor to us
    pointer = (tensor.data or 0) + tensor.byte_offset
    return CudaArray(pointer, shape, _DTYPES[key], tensor.device.device_id, _Imported(address))


def from_cuda_producer(producer: Any, device_id: int) -> CudaArray:
    """An object with ``__dlpack__`` on CUDA device ``device_id``: its capsule, taken after
    the device finished the work pending on it (Triton synchronizes there too)."""
    capsule = producer.__dlpack__(stream=1)  # 1: the legacy default stream, as the spec says
    runtime().synchronize(device_id)
    return from_capsule(capsule)


def _check_c_order(shape: tuple[int, ...], strides: list[int]) -> None:
    """Triton's check: strides (in elements) of a C-ordered array, ignoring dims of size 1."""
    expected = 1
    for dim, stride in zip(reversed(shape), reversed(strides), strict=True):
        if dim != 1:
            if stride != expected:
                raise GpuTensorError(
                    "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are "
                    "stored in C-Order are supported."
                )
            expected *= dim


# --- exporting: capsules over our arrays --------------------------------------------------------

#: Address of each exported DLManagedTensor -> what it needs alive until its deleter runs.
_exports: dict[int, tuple[Any, ...]] = {}


@_Deleter
def _release_export(managed: Any) -> None:
    _exports.pop(ctypes.cast(managed, ctypes.c_void_p).value or 0, None)


@_Destructor
def _drop_capsule(capsule: int) -> None:
    """A capsule of ours freed: if no consumer took it, release what it held."""
    if _is_valid_raw(capsule, _DLTENSOR):
        _exports.pop(_get_pointer_raw(capsule, _DLTENSOR) or 0, None)


def _export(array: Any, device_type: int) -> Any:
    """A ``dltensor`` capsule over ``array`` (a :class:`CudaArray`, or a numpy array with
    ``device_type`` CPU); the capsule or its consumer keeps ``array`` alive."""
    if array.dtype not in _CODES:
        raise GpuTensorError(f"DLPack has no datatype for {array.dtype}")
    code, bits = _CODES[array.dtype]
    shape = (ctypes.c_int64 * max(len(array.shape), 1))(*array.shape)
    managed = DLManagedTensor()
    managed.dl_tensor.data = array.pointer if device_type == KDL_CUDA else array.ctypes.data
    managed.dl_tensor.device = DLDevice(device_type, getattr(array, "device_id", 0))
    managed.dl_tensor.ndim = len(array.shape)
    managed.dl_tensor.dtype = DLDataType(code, bits, 1)
    managed.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    managed.deleter = _release_export
    address = ctypes.addressof(managed)
    _exports[address] = (managed, shape, array)
    return _new_capsule(address, _DLTENSOR, _drop_capsule)


# --- CUDA IPC: a client's CUDA shared memory in this worker -------------------------------------


class _IpcMapping:
    """One opened CUDA IPC handle of this process; closed when no array uses it any more."""

    __slots__ = ("__weakref__", "device_id", "handle", "pointer")

    def __init__(self, handle: bytes, device_id: int) -> None:
        self.handle = handle
        self.device_id = device_id
        self.pointer = runtime().open_ipc(handle, device_id)

    def __del__(self) -> None:
        try:
            runtime().close_ipc(self.pointer, self.device_id)
        except Exception:  # a finalizer must not raise (the process may be ending)
            pass


#: A handle can be opened once per process: every array over it shares the mapping.
_mappings: weakref.WeakValueDictionary[bytes, _IpcMapping] = weakref.WeakValueDictionary()


def ipc_input(handle: bytes, device_id: int, offset: int, dtype: str, shape: Any) -> CudaArray:
    """An input that lies in a client's CUDA shared memory, mapped here without a copy."""
    mapping = _mappings.get(handle)
    if mapping is None:
        mapping = _IpcMapping(handle, device_id)
        _mappings[handle] = mapping
    return CudaArray(mapping.pointer + offset, tuple(shape), dtype, device_id, mapping)


# --- the CUDA runtime, through cuda-bindings ------------------------------------------------------


class _Runtime:
    """The CUDA calls GPU tensors need; each runs on the tensor's device, then restores
    the thread's current device (the model's framework may rely on it)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime
        except ImportError as exc:
            raise GpuTensorError(
                f"GPU tensors need cuda-bindings in the model's Python environment: {exc}"
            ) from None
        self._runtime = runtime

    def _call(self, result: Any) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self._runtime.cudaError_t.cudaSuccess:
            name = getattr(error, "name", str(error))
            raise GpuTensorError(
                f"CUDA error {name}: {self._runtime.cudaGetErrorString(error)[1]!r}"
            )
        return values[0] if len(values) == 1 else tuple(values)

    @contextmanager
    def on(self, device_id: int) -> Iterator[None]:
        previous = self._call(self._runtime.cudaGetDevice())
        if previous != device_id:
            self._call(self._runtime.cudaSetDevice(device_id))
        try:
            yield
        finally:
            if previous != device_id:
                self._call(self._runtime.cudaSetDevice(previous))

    def synchronize(self, device_id: int) -> None:
        with self.on(device_id):
            self._call(self._runtime.cudaDeviceSynchronize())

    def to_host(self, host: np.ndarray, pointer: int, device_id: int) -> None:
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self.on(device_id):
            self._call(self._runtime.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, kind))

    def open_ipc(self, handle: bytes, device_id: int) -> int:
        ipc_handle = self._runtime.cudaIpcMemHandle_t()
        ctypes.memmove(ipc_handle.getPtr(), handle, IPC_HANDLE_SIZE)
        flags = getattr(self._runtime, "cudaIpcMemLazyEnablePeerAccess", 1)
        with self.on(device_id):
            return int(self._call(self._runtime.cudaIpcOpenMemHandle(ipc_handle, flags)))

    def close_ipc(self, pointer: int, device_id: int) -> None:
        with self.on(device_id):
            self._call(self._runtime.cudaIpcCloseMemHandle(pointer))


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    global _runtime
    if _runtime is None:
        _runtime = _Runtime()
    return _runtime
