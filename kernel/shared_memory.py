"""Client shared memory: the regions clients register, and the requests that use them.

Triton's system and CUDA shared-memory extensions. A client creates a POSIX shared
memory object (``/dev/shm/<key>``, as ``tritonclient.utils.shared_memory`` does) or a
CUDA allocation (``tritonclient.utils.cuda_shared_memory``), registers it under a name,
then names it in an input's parameters (``shared_memory_region``,
``shared_memory_byte_size``, optional ``shared_memory_offset``) so that the server reads
the tensor from it, or in a requested output's so that the server writes the result
there and answers with the output's metadata only.

A system region stays mapped while it is registered; an input read from it is a
read-only numpy view over the mapping (no copy). A CUDA region is opened from the
client's ``cudaIpcMemHandle_t`` with cuda-bindings, imported on first use; CPU backends
get a host copy of its inputs, and its outputs are copied to the device.

Lifetime: :meth:`SharedMemoryRegistry.attach` resolves a request's references before it
runs and leases each region until the response is written; unregistering a leased
region fails, as tritonserver 2.51 does (later versions defer it). Even so a mapping is
never unmapped under a view: ``mmap.close`` refuses while numpy views exist, and the
mapping then goes when the last view does.

GPU backends: an input read from a CUDA region is a :class:`CudaTensor`, whose host copy
is made only when something reads its ``data`` (a CPU model, the response cache, a
trace); its :class:`CudaBuffer` (device, pointer, byte size), which :func:`cuda_buffer`
returns, lets a backend on that device use the data where it lies, so the tensor never
visits host memory. A requested output that goes to a CUDA region carries its
destination the same way (:func:`cuda_output_buffer`); a backend that writes the result
there itself answers with :func:`written_output` (a ``CudaTensor`` over the region,
marked with the region's name) and the kernel copies nothing. Every copy between a
CUDA region and host memory is logged at verbose level 1, so tests can tell that none
happened. Pointers are valid only while the request runs: the lease ends with the
response, or when the caller stops waiting (a cancelled request), so a backend must
not touch them after it answered or saw the request cancelled.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from types import TracebackType
from typing import Any

import numpy as np

from .cuda_ipc import CUDA_IPC_HANDLE_SIZE, CudaError, CudaRuntime
from .datatypes import ELEMENT_SIZES, NUMPY_DTYPES, decode_bytes_input
from .errors import AlreadyExists, Internal, InvalidArgument, NotFound, Unsupported
from .logsettings import VERBOSE
from .request import InferenceRequest, InferenceResponse, RequestedOutput
from .tensor import Tensor
from .validation import Signature, request_prefix, validate_request

log = logging.getLogger(__name__)

#: The tensor parameters that name a region, and the span of it a tensor occupies.
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
_REFERENCE_KEYS = (REGION, BYTE_SIZE, OFFSET)
#: The tensor parameter holding a :class:`CudaBuffer` (not a wire parameter).
CUDA_BUFFER = "cuda_buffer"

#: Where POSIX shared memory objects live (``shm_open`` opens ``/dev/shm/<key>``).
SHM_DIRECTORY = "/dev/shm"
#: Keys reserved for the shared memory of Triton's Python backend (Triton refuses them).
RESERVED_KEY_PREFIX = "triton_python_backend_shm_region_"

DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
)


@dataclass(frozen=True, slots=True)
class CudaBuffer:
    """Where a tensor lies in a registered CUDA region."""

    device_id: int
    #: Device address of the tensor's first byte (the region's base plus the offset).
    pointer: int
    byte_size: int
    #: The region's name (what a written output's ``shared_memory_region`` says).
    region: str = ""
    #: The region's raw ``cudaIpcMemHandle_t`` and the tensor's offset in it: what
    #: another process (a Python model's worker) needs to map the same memory.
    handle: bytes = b""
    offset: int = 0
    #: Copies the span to host memory while the request holds the region (kernel use).
    read: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)


def cuda_buffer(tensor: Tensor) -> CudaBuffer | None:
    """The device span an input was read from, when it came from CUDA shared memory."""
    return (tensor.parameters or {}).get(CUDA_BUFFER)


def cuda_output_buffer(output: RequestedOutput) -> CudaBuffer | None:
    """The device span a requested output goes to, when it goes to CUDA shared memory."""
    return output.parameters.get(CUDA_BUFFER)


#: The storage of ``Tensor.data`` under :class:`CudaTensor`'s lazy property.
_DATA: Any = Tensor.__dict__["data"]


class CudaTensor(Tensor):
    """A tensor that lies in a CUDA region: copied to host memory the first time ``data``
    is read, never when only its shape, datatype or device span are used."""

    __slots__ = ("_buffer", "_shape")

    def __init__(
        self,
        name: str,
        datatype: str,
        shape: tuple[int, ...],
        buffer: CudaBuffer,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.datatype, self.parameters = name, datatype, parameters
        _DATA.__set__(self, None)
        self._buffer = buffer
        self._shape = tuple(shape)

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        array = _DATA.__get__(self)
        if array is None:
            if self._buffer.read is None:
                raise Internal(f"tensor '{self.name}' in CUDA shared memory cannot be read")
            array = self._buffer.read().view(NUMPY_DTYPES[self.datatype]).reshape(self._shape)
            array.flags.writeable = False  # the client's data: models read it, never write it
            _DATA.__set__(self, array)
        return array

    @data.setter
    def data(self, value: np.ndarray) -> None:
        _DATA.__set__(self, value)

    @property
    def shape(self) -> tuple[int, ...]:
        array = _DATA.__get__(self)
        return self._shape if array is None else array.shape

    @property
    def copied(self) -> bool:
        """Whether the host copy was made."""
        return _DATA.__get__(self) is not None

    def __repr__(self) -> str:
        return f"CudaTensor({self.name!r}, {self.datatype!r}, {self._shape}, {self._buffer})"


def written_output(
    name: str, datatype: str, shape: tuple[int, ...], output: RequestedOutput
) -> CudaTensor:
    """The output tensor of a backend that wrote ``output`` into its CUDA region itself."""
    buffer = cuda_output_buffer(output)
    if buffer is None:
        raise Internal(f"output '{name}' does not go to CUDA shared memory")
    return CudaTensor(name, datatype, shape, buffer, {REGION: buffer.region})


# --- regions -----------------------------------------------------------------------------


class Region:
    """A registered region: its size, and how many requests hold it now."""

    kind = ""
    __slots__ = ("byte_size", "name", "users")

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size
        self.users = 0

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, offset: int, size: int) -> np.ndarray:
        """``size`` bytes at ``offset`` as a uint8 array."""
        raise NotImplementedError

    def write(self, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def device_buffer(
        self, offset: int, size: int, read: Callable[[], np.ndarray] | None = None
    ) -> CudaBuffer | None:
        return None

    def close(self) -> None:
        raise NotImplementedError


class SystemRegion(Region):
    """A window of a POSIX shared memory object, mapped for as long as it is registered."""

    kind = "system"
    __slots__ = ("_mapping", "_start", "key", "offset")

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        super().__init__(name, byte_size)
        self.key = key
        self.offset = offset
        fd = _open_object(name, key)
        try:
            self._mapping, self._start = _map(fd, name, key, offset, byte_size)
        finally:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def read(self, offset: int, size: int) -> np.ndarray:
        # A view over the mapping: no copy; it keeps the mapping alive while it lives.
        return np.frombuffer(self._mapping, np.uint8, size, self._start + offset)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        start = self._start + offset
        self._mapping[start : start + len(data)] = data

    def close(self) -> None:
        try:
            self._mapping.close()
        except BufferError:  # a view outlived its request: unmapped when the last one goes
            log.debug("shared memory region '%s' is still viewed; unmapped later", self.name)


def _open_object(name: str, key: str) -> int:
    """The file descriptor of POSIX shared memory object ``key``, as ``shm_open`` finds it."""
    base = key.lstrip("/")
    if not base:
        raise InvalidArgument(
            f"cannot register shared memory region '{name}' - invalid shm key '{key}'"
        )
    if base.startswith(RESERVED_KEY_PREFIX):
        raise InvalidArgument(
            f"cannot register shared memory region '{name}' with key '{key}' as the key "
            f"contains the reserved prefix '{RESERVED_KEY_PREFIX}'"
        )
    if "/" in base or base in (".", ".."):  # shm_open refuses these too: no path escapes
        raise Internal(f"Unable to open shared memory region: '{key}'")
    try:
        fd = os.open(os.path.join(SHM_DIRECTORY, base), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise Internal(f"Unable to open shared memory region: '{key}'") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Internal(f"Invalid shared memory region: '{key}'")
    return fd


def _map(fd: int, name: str, key: str, offset: int, byte_size: int) -> tuple[mmap.mmap, int]:
    """Map ``byte_size`` bytes at ``offset``; the start of the window within the mapping.

    mmap wants a page-aligned offset: the mapping starts at the page holding ``offset``
    (tritonserver refuses unaligned offsets; this server takes any).
    """
    if offset < 0 or byte_size < 0 or offset + byte_size > os.fstat(fd).st_size:
        raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args")
    if byte_size == 0:  # mmap refuses an empty mapping; Triton passes on its EINVAL
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': unable to process address "
            "spaceInvalid argument"
        )
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(fd, offset - start + byte_size, offset=start)
    except OSError as exc:
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': unable to process address "
            f"space{exc.strerror}"
        ) from None
    return mapping, offset - start


class CudaRegion(Region):
    """A CUDA allocation of another process, opened from its IPC handle."""

    kind = "cuda"
    __slots__ = ("_cuda", "device_id", "handle", "pointer")

    def __init__(
        self, name: str, cuda: CudaRuntime, handle: bytes, device_id: int, byte_size: int
    ) -> None:
        super().__init__(name, byte_size)
        self.device_id = device_id
        self.handle = bytes(handle)
        self._cuda = cuda
        self.pointer = cuda.open(handle, device_id)
        try:
            allocated = cuda.allocation_size(self.pointer, device_id)
        except CudaError as exc:
            log.error("failed to get the size of CUDA region '%s': %s", name, exc)
            allocated = -1
        if byte_size > allocated:
            cuda.close(self.pointer, device_id)
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args")

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def read(self, offset: int, size: int) -> np.ndarray:
        if VERBOSE.level:
            log.debug("CUDA shared memory '%s': %d bytes copied to host memory", self.name, size)
        return self._cuda.to_host(self.pointer + offset, size, self.device_id)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if VERBOSE.level:
            log.debug(
                "CUDA shared memory '%s': %d bytes copied from host memory", self.name, len(data)
            )
        self._cuda.to_device(self.pointer + offset, data, self.device_id)

    def device_buffer(
        self, offset: int, size: int, read: Callable[[], np.ndarray] | None = None
    ) -> CudaBuffer | None:
        return CudaBuffer(
            self.device_id,
            self.pointer + offset,
            size,
            region=self.name,
            handle=self.handle,
            offset=offset,
            read=read,
        )

    def close(self) -> None:
        try:
            self._cuda.close(self.pointer, self.device_id)
        except CudaError as exc:
            log.error("failed to close the CUDA IPC handle of region '%s': %s", self.name, exc)


# --- the registry ------------------------------------------------------------------------


class SharedMemoryRegistry:
    """The regions registered with one server, by name (system and CUDA share the names)."""

    def __init__(self, allowed: bool) -> None:
        #: ``--allow-client-shm``: without it registering and unregistering are refused.
        self.allowed = allowed
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        self._cuda: CudaRuntime | None = None

    def check_allowed(self) -> None:
        if not self.allowed:
            raise Unsupported(DISABLED)

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.check_allowed()
        with self._lock:
            self._check_free(name)
            self._regions[name] = SystemRegion(name, key, offset, byte_size)

    def register_cuda(self, name: str, handle: bytes, device_id: int, byte_size: int) -> None:
        self.check_allowed()
        with self._lock:
            self._check_free(name)
            try:
                if len(handle) != CUDA_IPC_HANDLE_SIZE:
                    raise CudaError(f"the IPC handle has {len(handle)} bytes, not 64")
                cuda = self._cuda_runtime()
                region = CudaRegion(name, cuda, handle, device_id, byte_size)
            except CudaError as exc:  # Triton logs the reason and answers "invalid args"
                log.error("failed to open CUDA IPC handle: %s", exc)
                raise InvalidArgument(
                    "failed to register shared memory region: invalid args"
                ) from None
            self._regions[name] = region

    def _check_free(self, name: str) -> None:
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager")

    def _cuda_runtime(self) -> CudaRuntime:
        if self._cuda is None:
            self._cuda = CudaRuntime()
        return self._cuda

    def status(self, kind: str, name: str = "") -> list[dict[str, Any]]:
        """Triton's status: every region of ``kind`` by name, or the one named."""
        with self._lock:
            if not name:
                regions = sorted(self._regions.items())
                return [region.status() for _, region in regions if region.kind == kind]
            region = self._regions.get(name)
            if region is None or region.kind != kind:
                raise NotFound(f"Unable to find {kind} shared memory region: '{name}'")
            return [region.status()]

    def unregister(self, kind: str, name: str = "") -> None:
        """Unregister ``name`` (every region of ``kind`` when empty); unknown names are fine."""
        self.check_allowed()
        with self._lock:
            if name:
                self._unregister_one(kind, name)
            else:
                self._unregister_all(kind)

    def _unregister_one(self, kind: str, name: str) -> None:
        region = self._regions.get(name)
        if region is None or region.kind != kind:
            return
        if region.users:
            raise Internal(
                f"Cannot unregister shared memory region '{name}', it is currently in use."
            )
        del self._regions[name]
        region.close()

    def _unregister_all(self, kind: str) -> None:
        busy = []
        for name, region in sorted(self._regions.items()):
            if region.kind != kind:
                continue
            if region.users:
                busy.append(name)
            else:
                del self._regions[name]
                region.close()
        if busy:
            raise Internal(
                f"Failed to unregister the following {kind} shared memory regions: "
                + "".join(f"{name} ," for name in busy)
            )

    def close(self) -> None:
        """Unregister everything (the server stops): views still alive keep their mapping."""
        with self._lock:
            regions, self._regions = list(self._regions.values()), {}
        for region in regions:
            region.close()

    # --- requests ------------------------------------------------------------------------

    def attach(self, request: InferenceRequest, signature: Signature | None = None) -> Attachment:
        """Resolve the request's shared-memory inputs and outputs; lease their regions.

        Inputs named by region become arrays over the region's bytes. Triton's order of
        checks: every input's region and bounds, then every output's, then (after the
        model's shape checks, when ``signature`` is given) the byte size of each input.
        Use the result as a context manager: leaving it ends the leases.
        """
        if not uses_shared_memory(request):
            return _NOTHING
        attachment = Attachment(self)
        try:
            inputs = [
                (tensor, attachment.lease(reference))
                for tensor in request.inputs.values()
                if (reference := _reference(tensor.parameters, tensor.name)) is not None
            ]
            for output in request.outputs:
                reference = _reference(output.parameters, output.name)
                if reference is not None:
                    attachment.add_output(output, attachment.lease(reference))
            for tensor, span in inputs:
                request.inputs[tensor.name] = _input_tensor(
                    request, tensor, span, signature, attachment.reader(span)
                )
        except BaseException:
            attachment.release()
            raise
        return attachment

    def _lease(self, name: str, offset: int, size: int) -> Region:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"Unable to find shared memory region: '{name}'")
            if not 0 <= offset < region.byte_size:
                raise InvalidArgument(f"Invalid offset for shared memory region: '{name}'")
            if size <= 0 or offset + size > region.byte_size:  # 2.51 refuses an empty span too
                raise InvalidArgument(
                    f"Invalid offset + byte size for shared memory region: '{name}'"
                )
            region.users += 1
            return region

    def _release(self, regions: list[Region]) -> None:
        with self._lock:
            for region in regions:
                region.users -= 1


@dataclass(frozen=True, slots=True)
class _Span:
    """The part of a region one tensor occupies."""

    region: Region
    offset: int
    byte_size: int


def uses_shared_memory(request: InferenceRequest) -> bool:
    """Whether an input or an output of ``request`` names a shared-memory region."""
    for tensor in request.inputs.values():
        if tensor.parameters and REGION in tensor.parameters:
            return True
    return any(REGION in output.parameters for output in request.outputs)


def _reference(parameters: dict[str, Any] | None, tensor: str) -> tuple[str, int, int] | None:
    """``(region, offset, byte size)`` when the parameters name a region (types checked)."""
    if not parameters or REGION not in parameters:
        return None
    region = parameters[REGION]
    offset = parameters.get(OFFSET, 0)
    size = parameters.get(BYTE_SIZE, 0)
    if not isinstance(region, str):
        raise InvalidArgument(f"'{REGION}' of tensor '{tensor}' must be a string")
    for key, value in ((OFFSET, offset), (BYTE_SIZE, size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"'{key}' of tensor '{tensor}' must be an integer")
    return region, offset, size


def _input_tensor(
    request: InferenceRequest,
    tensor: Tensor,
    span: _Span,
    signature: Signature | None,
    read: Callable[[], np.ndarray],
) -> Tensor:
    """The input as the model sees it: the region's bytes in the tensor's shape and type
    (a :class:`CudaTensor`, copied to host only on demand, for a fixed-size type in a
    CUDA region)."""
    name, datatype, shape = tensor.name, tensor.datatype, tensor.shape
    parameters = {k: v for k, v in (tensor.parameters or {}).items() if k not in _REFERENCE_KEYS}
    device = span.region.device_buffer(span.offset, span.byte_size, read)
    if device is not None:
        parameters[CUDA_BUFFER] = device
    count = prod(shape)
    prefix = request_prefix(request)
    if datatype == "BYTES":
        array = decode_bytes_input(
            memoryview(read()), shape, count, name=name, model=request.model_name, prefix=prefix
        )
    elif datatype in ELEMENT_SIZES:
        expected = count * ELEMENT_SIZES[datatype]
        if span.byte_size != expected:
            if signature is not None:  # Triton reports a wrong shape before a wrong size
                validate_request(request, signature)
            raise InvalidArgument(
                f"{prefix}input byte size mismatch for input '{name}' for model "
                f"'{request.model_name}'. Expected {expected}, got {span.byte_size}"
            )
        if device is not None:
            return CudaTensor(name, datatype, shape, device, parameters)
        array = read().view(NUMPY_DTYPES[datatype]).reshape(shape)
        array.flags.writeable = False  # the client's memory: models read it, never write it
    else:
        raise InvalidArgument(f"invalid datatype for input {name}")
    return Tensor(name, datatype, array, parameters or None)


class Attachment:
    """The regions one request uses, leased from resolution until its response is written."""

    __slots__ = ("_leases", "_outputs", "_registry")

    def __init__(self, registry: SharedMemoryRegistry | None) -> None:
        self._registry = registry
        self._leases: list[Region] = []
        self._outputs: dict[str, _Span] = {}

    def __enter__(self) -> Attachment:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def lease(self, reference: tuple[str, int, int]) -> _Span:
        assert self._registry is not None
        name, offset, size = reference
        region = self._registry._lease(name, offset, size)
        self._leases.append(region)
        return _Span(region, offset, size)

    def reader(self, span: _Span) -> Callable[[], np.ndarray]:
        """Reads ``span`` to host memory while this attachment holds its region."""

        def read() -> np.ndarray:
            if self._registry is not None and not self._leases:
                raise Internal(
                    f"shared memory region '{span.region.name}' was read after its request ended"
                )
            return span.region.read(span.offset, span.byte_size)

        return read

    def add_output(self, output: RequestedOutput, span: _Span) -> None:
        self._outputs[output.name] = span
        device = span.region.device_buffer(span.offset, span.byte_size, self.reader(span))
        if device is not None:
            output.parameters[CUDA_BUFFER] = device

    def write_outputs(self, response: InferenceResponse) -> None:
        """Write each output that goes to shared memory there; its tensor says so."""
        if not self._outputs:
            return
        for index, tensor in enumerate(response.outputs):
            span = self._outputs.get(tensor.name)
            if span is None:
                continue
            written = tensor.parameters and tensor.parameters.get(REGION) == span.region.name
            marker = {REGION: span.region.name, BYTE_SIZE: span.byte_size, OFFSET: span.offset}
            if written:  # the backend's own tensor (reading its data would copy it back)
                tensor.parameters = marker
                continue
            _write(tensor, span)
            response.outputs[index] = Tensor(tensor.name, tensor.datatype, tensor.data, marker)

    def release(self) -> None:
        """End the leases (idempotent)."""
        if self._leases and self._registry is not None:
            leases, self._leases = self._leases, []
            self._registry._release(leases)

    def release_with(self, owner: object) -> None:
        """Also end the leases when ``owner`` is collected (a stream nobody iterated)."""
        if self._leases:
            weakref.finalize(owner, self.release)


def _write(tensor: Tensor, span: _Span) -> None:
    data = tensor.to_bytes()
    if len(data) > span.byte_size:
        raise Internal(
            f"shared memory size specified with the request for output '{tensor.name}' "
            f"({span.byte_size} bytes) should be at least {len(data)} bytes to hold the results"
        )
    if len(data):
        span.region.write(span.offset, data)


#: The attachment of a request that uses no shared memory.
_NOTHING = Attachment(None)
