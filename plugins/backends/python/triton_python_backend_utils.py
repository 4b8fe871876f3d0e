"""``triton_python_backend_utils`` as Triton's Python models import it (``pb_utils``).

Keeps Triton's shape exactly (accessor methods such as ``tensor.as_numpy()`` and
``request.inputs()``, ``TritonError(message, code)``, ``request.parameters()`` as a
JSON string) so that models written for Triton run unchanged in our workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any, Protocol

import numpy as np

# --- constants ------------------------------------------------------------------

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_GPU = 0
TRITONSERVER_MEMORY_CPU = 1

_TYPES: dict[str, tuple[int, Any]] = {
    "TYPE_BOOL": (1, np.bool_),
    "TYPE_UINT8": (2, np.uint8),
    "TYPE_UINT16": (3, np.uint16),
    "TYPE_UINT32": (4, np.uint32),
    "TYPE_UINT64": (5, np.uint64),
    "TYPE_INT8": (6, np.int8),
    "TYPE_INT16": (7, np.int16),
    "TYPE_INT32": (8, np.int32),
    "TYPE_INT64": (9, np.int64),
    "TYPE_FP16": (10, np.float16),
    "TYPE_FP32": (11, np.float32),
    "TYPE_FP64": (12, np.float64),
    "TYPE_STRING": (13, np.object_),
}
_NUMPY_BY_NUMBER = {number: dtype for number, dtype in _TYPES.values()}
_WIRE_NAMES = {
    "TYPE_STRING": "BYTES",
    **{name: name.removeprefix("TYPE_") for name in _TYPES if name != "TYPE_STRING"},
}


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """``"TYPE_FP32"`` -> ``np.float32`` (``TYPE_STRING`` -> ``np.object_``)."""
    return _TYPES[triton_type_string][1]


def triton_to_numpy_type(data_type: int) -> Any:
    """Triton's ``DataType`` number -> numpy type."""
    return _NUMPY_BY_NUMBER[data_type]


def numpy_to_triton_type(data_type: Any) -> int | None:
    """numpy type -> Triton's ``DataType`` number (None when Triton has no such type)."""
    dtype = np.dtype(data_type)
    if dtype.kind in "OSU":
        return 13
    for number, candidate in _NUMPY_BY_NUMBER.items():
        if candidate is not np.object_ and np.dtype(candidate) == dtype:
            return number
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray:
    """Triton's length-prefixed encoding of a BYTES array, as a flat uint8 array."""
    chunks = []
    for item in np.asarray(input_tensor, dtype=np.object_).reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        chunks.append(struct.pack("<I", len(data)) + data)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The inverse of ``serialize_byte_tensor``: a flat object array of ``bytes``."""
    items, offset, view = [], 0, memoryview(encoded_tensor)
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        items.append(bytes(view[offset : offset + length]))
        offset += length
    result = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result


# --- errors ----------------------------------------------------------------------


class TritonError(Exception):
    """An error a model reports for a request (``InferenceResponse(error=...)``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    #: Code number -> the kernel's error code name.
    CODE_NAMES = {
        0: "UNKNOWN",
        1: "INTERNAL",
        2: "NOT_FOUND",
        3: "INVALID_ARG",
        4: "UNAVAILABLE",
        5: "UNSUPPORTED",
        6: "ALREADY_EXISTS",
        7: "CANCELLED",
    }

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    """Raised by pb_utils calls that fail (Triton's name for it)."""


# --- tensors ---------------------------------------------------------------------


class Tensor:
    """A named numpy array (inputs the model reads, outputs it returns), or a GPU tensor.

    ``from_dlpack`` of a CUDA tensor keeps it on the GPU, as Triton's does: ``is_cpu()``
    is False, ``as_numpy()`` raises, ``to_dlpack()`` gives a CUDA capsule back (see
    ``triton_python_backend_gpu``, imported only when a GPU tensor appears).
    """

    __slots__ = ("_array", "_cuda", "_name")

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(data, np.ndarray):
            raise TritonModelException(
                f"Tensor '{name}': data must be a numpy array, got {type(data).__name__}"
            )
        if data.dtype.kind in "SU":
            data = data.astype(np.object_)
        self._name = name
        self._array = data
        self._cuda: Any = None

    @classmethod
    def _on_gpu(cls, name: str, array: Any) -> Tensor:
        """A tensor over device memory (a ``triton_python_backend_gpu.CudaArray``)."""
        tensor = cls.__new__(cls)
        tensor._name, tensor._array, tensor._cuda = name, None, array
        return tensor

    @classmethod
    def _from_cuda_ipc(cls, name: str, descriptor: tuple[Any, ...]) -> Tensor:
        """An input in a client's CUDA shared memory: ``("cuda_ipc", handle, device,
        offset, dtype, shape)`` from the server, mapped here without a copy."""
        _kind, handle, device_id, offset, dtype, shape = descriptor
        with _gpu_errors():
            return cls._on_gpu(name, _gpu().ipc_input(handle, device_id, offset, dtype, shape))

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._cuda is not None:
            raise TritonModelException("Tensor is stored in GPU and cannot be converted to NumPy.")
        return self._array

    def shape(self) -> list[int]:
        return list(self._data().shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._data().dtype)

    def is_cpu(self) -> bool:
        return self._cuda is None

    def to_dlpack(self) -> Any:
        if self._cuda is not None:
            with _gpu_errors():
                return self._cuda.capsule()
        if self._array.dtype == np.object_:
            raise TritonModelException("DLPack does not have support for string tensors.")
        return self._array.__dlpack__()

    def __dlpack__(self, **kwargs: Any) -> Any:
        if self._cuda is not None:  # its device finished its work when it was made (Triton)
            return self.to_dlpack()
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        if self._cuda is not None:
            return (2, self._cuda.device_id)  # kDLCUDA
        return self._array.__dlpack_device__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """From a DLPack capsule (``to_dlpack()``) or any object with ``__dlpack__``;
        a CUDA tensor stays on its device."""
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        if _is_capsule(capsule):
            if _capsule_device(capsule) == 2:
                with _gpu_errors():
                    return Tensor._on_gpu(name, _gpu().from_capsule(capsule))
            return Tensor(name, np.from_dlpack(_Capsule(capsule)))
        if not hasattr(capsule, "__dlpack__") or not hasattr(capsule, "__dlpack_device__"):
            raise TritonModelException(
                "Provided tensor is not supported. Tensor must be a DLPack capsule         or "
                "have `__dlpack__` and `__dlpack_device__` attributes"
            )
        device_type, device_id = capsule.__dlpack_device__()
        if device_type == 2:
            with _gpu_errors():
                return Tensor._on_gpu(name, _gpu().from_cuda_producer(capsule, int(device_id)))
        if device_type not in (1, 3):  # kDLCPU, kDLCUDAHost
            raise TritonModelException(
                f"DLDevice type {int(device_type)} is not support by Python backend."
            )
        return Tensor(name, np.from_dlpack(capsule))

    def _data(self) -> Any:
        return self._array if self._cuda is None else self._cuda

    def _host_array(self) -> np.ndarray:
        """The data in host memory, C-ordered: what the worker sends (a GPU tensor is
        copied here, once; Triton would hand the server a CUDA IPC handle instead)."""
        if self._cuda is not None:
            with _gpu_errors():
                return self._cuda.host()
        return np.ascontiguousarray(self._array)

    def __repr__(self) -> str:
        data = self._data()
        where = "" if self._cuda is None else f", device=cuda:{self._cuda.device_id}"
        return f"Tensor(name={self._name!r}, shape={list(data.shape)}, dtype={data.dtype}{where})"


class _Capsule:
    """Lets numpy import a bare DLPack capsule (it only takes ``__dlpack__`` objects)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: the capsule was checked to be in host memory


def _is_capsule(value: Any) -> bool:
    return type(value).__name__ == "PyCapsule"


def _capsule_device(capsule: Any) -> int:
    """The DLPack device type of an unconsumed capsule (CPU when it cannot be read here)."""
    try:
        return _gpu().capsule_device(capsule)[0]
    except Exception:  # not a DLPack capsule: numpy reports it in its own words
        return 1


_gpu_module: Any = None


def _gpu() -> Any:
    """``triton_python_backend_gpu``, imported when the first GPU tensor needs it."""
    global _gpu_module
    if _gpu_module is None:
        if __package__:
            from . import triton_python_backend_gpu as module
        else:  # the worker imports this module from its own folder, as a top-level one
            import triton_python_backend_gpu as module  # type: ignore[no-redef]
        _gpu_module = module
    return _gpu_module


@contextmanager
def _gpu_errors() -> Iterator[None]:
    """Raises the GPU module's errors as ``TritonModelException`` (Triton's type)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, _gpu().GpuTensorError):
            raise TritonModelException(str(exc)) from None
        raise


# --- requests and responses --------------------------------------------------------


class InferenceResponse:
    """What ``execute`` returns per request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | str | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        if isinstance(error, str):
            error = TritonError(error)
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Sends responses of a decoupled model, zero or many, then the FINAL flag."""

    def __init__(
        self,
        send: Callable[[InferenceResponse | None, int], None],
        is_cancelled: Callable[[], bool],
    ) -> None:
        self._send = send
        self._is_cancelled = is_cancelled
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Triton's checks, in its order; after FINAL every send raises (Triton's text)."""
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        self._send(response, flags)

    def is_cancelled(self) -> bool:
        return self._is_cancelled()


class PreferredMemory:
    """Where a BLS request wants its outputs; every tensor of this backend is in host memory."""

    def __init__(
        self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0
    ) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceRequest:
    """A request as ``execute`` receives it (and, for BLS, as a model builds one)."""

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        parameters: dict[str, Any] | str | None = None,
        preferred_memory: PreferredMemory | None = None,
        **_ignored: Any,
    ) -> None:
        if not isinstance(correlation_id, (int, str)):
            raise TritonModelException("Correlation ID must be integer or string")
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs or [])
        self._requested_output_names = list(requested_output_names or [])
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._parameters = (
            parameters
            if isinstance(parameters, str)
            else json.dumps(parameters or {}, separators=(",", ":"))
        )
        self._cancelled = False
        self._sender: InferenceResponseSender | None = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def get_input_tensor_by_name(self, name: str) -> Tensor | None:
        for tensor in self._inputs:
            if tensor.name() == name:
                return tensor
        return None

    def requested_output_names(self) -> list[str]:
        return self._requested_output_names

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def is_cancelled(self) -> bool:
        return self._cancelled

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException(
                "get_response_sender is only available for requests of decoupled models"
            )
        return self._sender

    def exec(self, decoupled: bool = False) -> InferenceResponse | ResponseIterator:
        """Run this request on another model of the server and wait (BLS).

        Failures come back as ``response.has_error()``, as in Triton; with
        ``decoupled=True`` the result is an iterator of every response.
        """
        call = _bls_submit(self, decoupled)
        response, last = call.get()
        return ResponseIterator(call, response, last) if decoupled else response

    def async_exec(self, decoupled: bool = False) -> asyncio.Future[Any]:
        """``exec`` as an awaitable (an ``asyncio.Future``, as Triton returns); the event
        loop keeps running while the request is in flight."""
        return asyncio.get_running_loop().create_task(self._async_exec(decoupled))

    async def _async_exec(self, decoupled: bool) -> InferenceResponse | ResponseIterator:
        call = _bls_submit(self, decoupled)
        response, last = await call.get_async()
        return ResponseIterator(call, response, last) if decoupled else response

    def _bls_payload(self) -> dict[str, Any]:
        """What the server needs to run this request (the worker sends it)."""
        for tensor in self._inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"BLS request inputs must be pb_utils.Tensor objects, got "
                    f"{type(tensor).__name__}"
                )
        return {
            "model_name": self._model_name,
            "model_version": self._model_version,
            "inputs": [(t.name(), t._host_array()) for t in self._inputs],
            "outputs": self._requested_output_names,
            "id": self._request_id,
            "correlation_id": self._correlation_id,
            "flags": self._flags,
            "timeout": self._timeout,
            "parameters": self._parameters,
        }


# --- BLS: requests to other models of the server --------------------------------------


class BlsChannel(Protocol):
    """How a worker sends a BLS request to the server (installed by the worker)."""

    def submit(self, payload: dict[str, Any], decoupled: bool) -> BlsCall: ...


_channel: BlsChannel | None = None


def _set_bls_channel(channel: BlsChannel | None) -> None:
    global _channel
    _channel = channel


def _bls_submit(request: InferenceRequest, decoupled: bool) -> BlsCall:
    if _channel is None:
        raise TritonModelException("BLS is only supported during the 'execute' function.")
    return _channel.submit(request._bls_payload(), bool(decoupled))


class BlsCall:
    """One BLS request in flight: the responses the worker's reader thread hands over.

    A blocked ``exec`` waits on a condition; an awaiting ``async_exec`` on a future of
    its own event loop, so that loop keeps running meanwhile.
    """

    def __init__(self, cancel: Callable[[], None]) -> None:
        self.cancel = cancel
        self._condition = threading.Condition()
        self._items: deque[tuple[InferenceResponse, bool]] = deque()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def put(self, response: InferenceResponse, last: bool) -> None:
        with self._condition:
            self._items.append((response, last))
            self._condition.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop is closed: nobody is waiting there
                pass

    def get(self) -> tuple[InferenceResponse, bool]:
        with self._condition:
            while not self._items:
                self._condition.wait()
            return self._items.popleft()

    async def get_async(self) -> tuple[InferenceResponse, bool]:
        loop = asyncio.get_running_loop()
        while True:
            with self._condition:
                if self._items:
                    return self._items.popleft()
                future = loop.create_future()
                self._waiters.append((loop, future))
            await future


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ResponseIterator:
    """The responses of ``exec(decoupled=True)``, the last one included, as Triton's.

    A model that sent its FINAL flag alone ends the iteration with an empty response.
    Iterating again after the end replays every response. ``async for`` waits without
    blocking the event loop (Triton's iterator only blocks).
    """

    def __init__(self, call: BlsCall, first: InferenceResponse, last: bool) -> None:
        self._call = call
        self._first: tuple[InferenceResponse, bool] | None = (first, last)
        self._responses: list[InferenceResponse] = []
        self._index = 0
        self._finished = False

    def __iter__(self) -> ResponseIterator:
        if self._finished and self._index >= len(self._responses):
            self._index = 0
        return self

    def __next__(self) -> InferenceResponse:
        if self._finished:
            return self._replay()
        item, self._first = self._first or self._call.get(), None
        return self._take(*item)

    def __aiter__(self) -> ResponseIterator:
        return self.__iter__()

    async def __anext__(self) -> InferenceResponse:
        if self._finished:
            try:
                return self._replay()
            except StopIteration:
                raise StopAsyncIteration from None
        item, self._first = self._first or await self._call.get_async(), None
        return self._take(*item)

    def cancel(self) -> None:
        """Ask the server to cancel the request; the model decides how it ends."""
        if not self._finished:
            self._call.cancel()

    def _take(self, response: InferenceResponse, last: bool) -> InferenceResponse:
        self._responses.append(response)
        if last:
            self._finished = True
            self._index = len(self._responses)
        return response

    def _replay(self) -> InferenceResponse:
        if self._index < len(self._responses):
            self._index += 1
            return self._responses[self._index - 1]
        raise StopIteration("Iteration is done for the responses.")


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request.get_input_tensor_by_name(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


# --- auto-complete ------------------------------------------------------------------


class ModelConfig:
    """The configuration ``auto_complete_config`` receives and completes (a JSON dict)."""

    def __init__(self, model_config: dict[str, Any] | str) -> None:
        if isinstance(model_config, str):
            model_config = json.loads(model_config)
        self._config = model_config

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def max_batch_size(self) -> int:
        return int(self._config.get("max_batch_size", 0))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = self.max_batch_size()
        if current not in (0, max_batch_size) and self._has_config_file():
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._config.get('name')}' specified max_batch_size "
                f"{max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        self._config.setdefault("model_transaction_policy", {}).update(transaction_policy_dict)

    def add_input(self, input: dict[str, Any]) -> None:
        self._add_tensor("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add_tensor("output", output)

    def _add_tensor(self, kind: str, tensor: dict[str, Any]) -> None:
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"{kind} '{tensor.get('name', '')}' in auto-complete-config function for "
                    f"model '{self._config.get('name')}' is missing '{key}' property."
                )
        tensors = self._config.setdefault(kind, [])
        for existing in tensors:
            if existing.get("name") == tensor["name"]:
                self._merge(kind, existing, tensor)
                return
        tensors.append({**tensor, "dims": list(tensor["dims"])})

    def _merge(self, kind: str, existing: dict[str, Any], tensor: dict[str, Any]) -> None:
        for key in ("data_type", "dims"):
            if existing.get(key) in ("TYPE_INVALID", []):  # unset in the configuration
                existing[key] = tensor[key]
            elif existing.get(key) and [*map(str, np.atleast_1d(existing[key]))] != [
                *map(str, np.atleast_1d(tensor[key]))
            ]:
                raise ValueError(
                    f"model '{self._config.get('name')}', tensor '{tensor['name']}': the model "
                    f"expects {key} {tensor[key]} but the model configuration specifies "
                    f"{key} {existing[key]}"
                )
        existing.update({k: v for k, v in tensor.items() if k not in existing})

    def _has_config_file(self) -> bool:
        return bool(self._config.get("input") or self._config.get("output"))


# --- custom metrics (pb_utils.MetricFamily) ----------------------------------------------


class MetricKind(Enum):
    """The kind of a ``MetricFamily`` (``MetricFamily.COUNTER``, ...)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class MetricsChannel(Protocol):
    """How a worker reaches the server's metric registry (installed by the worker)."""

    #: The model instance's name, as Triton's error texts give it.
    label: str

    def call(self, op: str, *args: Any) -> tuple[str, Any]:
        """Run ``op`` in the server: ``("ok", result)`` or ``("error", message)``."""

    def post(self, op: str, *args: Any) -> None:
        """Send ``op`` to the server without waiting (updates whose checks ran here)."""


_metrics_channel: MetricsChannel | None = None


def _set_metrics_channel(channel: MetricsChannel | None) -> None:
    global _metrics_channel
    _metrics_channel = channel


def _metrics_call(what: str, op: str, *args: Any) -> Any:
    """A round trip to the server's registry; its error as the stub reports one."""
    if _metrics_channel is None:
        raise TritonModelException(f"{what}: the server's metric registry is not reachable")
    status, result = _metrics_channel.call(op, *args)
    if status != "ok":
        raise TritonModelException(f"{what}: {_metric_failure(result)}")
    return result


def _metric_failure(message: str) -> str:
    label = _metrics_channel.label if _metrics_channel is not None else ""
    return f"Failed to process the request for model '{label}', message: {message}"


def _incompatible(call: str, signature: str, args: tuple[Any, ...]) -> TypeError:
    """pybind11's error for arguments of the wrong type, as Triton's stub raises it."""
    invoked = ", ".join(repr(arg) for arg in args)
    return TypeError(
        f"{call}: incompatible function arguments. The following argument types are "
        f"supported:\n    1. {signature}\n\nInvoked with: {invoked}"
    )


class MetricFamily:
    """A family of metrics a model reports on the server's ``/metrics``.

    Families of the same name and kind are one family (across models and instances);
    metrics of a family with the same labels are one metric.
    """

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        if not (isinstance(name, str) and isinstance(description, str)) or not isinstance(
            kind, MetricKind
        ):
            given = f"name={name!r}, description={description!r}, kind={kind!r}"
            raise TypeError(
                "__init__(): incompatible constructor arguments. The following argument types "
                "are supported:\n    1. c_python_backend_utils.MetricFamily(name: str, "
                "description: str, kind: c_python_backend_utils.MetricKind)\n\n"
                f"Invoked with: kwargs: {given}"
            )
        _metrics_call("Error when creating MetricFamily", "family", name, description, kind.name)
        self._name = name
        self._kind = kind
        self._metrics: weakref.WeakSet[Metric] = weakref.WeakSet()

    def Metric(  # Triton's name
        self, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> Metric:
        """The family's metric with these ``labels`` (a histogram needs its ``buckets``)."""
        if labels is not None and not isinstance(labels, dict):
            raise TritonModelException("Failed to create metric. Labels must be a dictionary.")
        labels_json = json.dumps(labels)
        if buckets is not None:
            if not isinstance(buckets, list):
                raise TritonModelException("Failed to create metric. Buckets must be a list.")
            if self._kind is not MetricKind.HISTOGRAM:
                raise TritonModelException("Failed to create metric. Unexpected buckets found.")
            buckets = [float(bound) for bound in buckets]
        elif self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        handle = _metrics_call(
            "Error when creating Metric", "metric", self._name, labels_json, buckets
        )
        metric = Metric(handle, self._kind)
        self._metrics.add(metric)
        return metric

    def __del__(self) -> None:
        # Triton: a family's metrics die with it; using one later is an error
        for metric in list(getattr(self, "_metrics", ())):
            metric._clear()


class Metric:
    """One labelled metric of a ``MetricFamily`` (made by ``MetricFamily.Metric``)."""

    def __init__(self, handle: int, kind: MetricKind) -> None:
        self._handle = handle
        self._kind = kind
        self._cleared = False

    def increment(self, value: float) -> None:
        value = self._number("increment", value)
        if self._kind is MetricKind.HISTOGRAM:
            self._refuse(
                "increment", "TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Increment"
            )
        if self._kind is MetricKind.COUNTER and value < 0.0:
            self._refuse(
                "increment",
                "TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by "
                "non-negative values.",
            )
        self._post("increment", value)

    def set(self, value: float) -> None:
        value = self._number("set", value)
        if self._kind is not MetricKind.GAUGE:
            self._refuse("set", f"TRITONSERVER_METRIC_KIND_{self._kind.name} does not support Set")
        self._post("set", value)

    def observe(self, value: float) -> None:
        value = self._number("observe", value)
        if self._kind is not MetricKind.HISTOGRAM:
            kind = self._kind.name
            self._refuse("observe", f"TRITONSERVER_METRIC_KIND_{kind} does not support Observe")
        self._post("observe", value)

    def value(self) -> float:
        self._check_cleared("Failed to get metric value")
        return float(_metrics_call("Failed to get metric value", "value", self._handle))

    def _number(self, method: str, value: Any) -> float:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
            signature = "(self: c_python_backend_utils.Metric, arg0: float) -> None"
            raise _incompatible(f"{method}()", signature, (self, value))
        return float(value)

    def _refuse(self, method: str, message: str) -> None:
        raise TritonModelException(f"Failed to {method} metric value: {_metric_failure(message)}")

    def _post(self, op: str, value: float) -> None:
        self._check_cleared(f"Failed to {op} metric value")
        if _metrics_channel is not None:
            _metrics_channel.post(op, self._handle, value)

    def _check_cleared(self, what: str) -> None:
        if self._cleared:
            raise TritonModelException(
                f"{what}: Invalid metric operation as the corresponding 'MetricFamily' has been "
                "deleted. The 'MetricFamily' object should be deleted AFTER its corresponding "
                "'Metric' objects have been deleted."
            )

    def _clear(self) -> None:
        if not self._cleared:
            self._cleared = True
            if _metrics_channel is not None:
                try:
                    _metrics_channel.post("release", self._handle)
                except Exception:  # the server (or the interpreter) is going: so is the metric
                    pass

    def __del__(self) -> None:
        self._clear()


# --- logging ---------------------------------------------------------------------------


class LogLevel:
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_log = logging.getLogger("triton_python_backend")


class Logger:
    """Log lines from a model, shown in the server's log with the model's ``file:line``."""

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        _emit(message, level)

    @staticmethod
    def log_info(message: str) -> None:
        _emit(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        _emit(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        _emit(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        _emit(message, LogLevel.VERBOSE)


_LEVELS = {
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.VERBOSE: logging.DEBUG,
}


def _emit(message: str, level: int) -> None:
    # stacklevel 3: the record names the model's line that called a Logger method.
    _log.log(_LEVELS.get(level, logging.INFO), "%s", message, stacklevel=3)


if "triton_python_backend_utils" not in sys.modules:  # reachable by Triton's import name
    sys.modules["triton_python_backend_utils"] = sys.modules[__name__]
