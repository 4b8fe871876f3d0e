"""One batch through a torch module, on the instance's own thread: gather, forward, split.

Everything here runs in the instance's executor thread (torch releases the GIL while
it computes) and touches only numpy arrays and torch tensors; answering the requests
is left to the event loop. Requests of a batch are concatenated along dimension 0
and the outputs split back by each request's rows, as Triton's input collector and
output responder do.

On a GPU, data already on the instance's device stays there (``devices.py``): an
input in CUDA shared memory is used where it lies, and an output requested into CUDA
shared memory is copied device to device into the region.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from triton_kernel.kernel.errors import Internal, InvalidArgument, KernelError
from triton_kernel.kernel.logsettings import VERBOSE
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.scheduler import request_batch_size
from triton_kernel.kernel.shared_memory import cuda_buffer, cuda_output_buffer, written_output
from triton_kernel.kernel.tensor import Tensor

from .binding import Binding
from .device_io import copy_to_region, device_view
from .params import TorchParameters

__all__ = ["Runner"]

log = logging.getLogger(__name__)

_TORCH_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_OUTPUT_FORMS = (
    "output must be of type Tensor, List[str] or Tuple containing one of these two types. "
    "It should not be a List / Dictionary of Tensors or a Scalar"
)


class Runner:
    """Runs batches of one instance: its module, device, stream and switches."""

    def __init__(
        self,
        torch: Any,
        module: Any,
        binding: Binding,
        config: Any,
        params: TorchParameters,
        device: Any,
        *,
        python_runtime: bool = False,
    ) -> None:
        self.torch = torch
        self.module = module
        self.model_name = config.name
        self.binding = binding
        self.params = params
        #: None for ``KIND_MODEL``: inputs stay on the CPU, the model places its tensors.
        self.device = device
        self.cuda = device is not None and device.type == "cuda"
        #: The PyTorch 2 runtime takes a tuple or list of tensors as positional outputs.
        self.python_runtime = python_runtime
        self.batching = config.max_batch_size > 0
        self.pinned_input = config.optimization.input_pinned_memory.enable
        self.pinned_output = config.optimization.output_pinned_memory.enable
        self.reshapes = {
            t.name: tuple(t.reshape.shape) for t in config.input if t.HasField("reshape")
        }
        self.output_dims = {t.name: tuple(t.dims) for t in config.output if t.HasField("reshape")}
        #: One CUDA stream per instance: its copies and kernels never wait on another's.
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    # --- one batch ----------------------------------------------------------------------

    def run(self, requests: Sequence[InferenceRequest]) -> list[list[Tensor]]:
        """The outputs of each request; raises a ``KernelError`` that fails the whole batch."""
        rows = [request_batch_size(r, self.batching) for r in requests]
        with ExitStack() as stack:
            self._enter(stack)
            try:
                result = self._forward(self._arguments(requests))
                values = self._outputs(result)
                self._check_outputs(values, sum(rows))
                written = self._write_device_outputs(requests, values, rows) if self.cuda else []
            except KernelError:
                raise
            except Exception as exc:
                raise Internal(f"PyTorch execute failure: {exc}") from None
            arrays = self._to_host(_still_wanted(values, written))
        if self.cuda and self.params.cache_cleaning:
            self.torch.cuda.empty_cache()
        return [
            self._response_outputs(arrays, start, count, written[i] if written else {})
            for i, (start, count) in enumerate(_spans(rows))
        ]

    def _enter(self, stack: ExitStack) -> None:
        """The switches Triton sets around every execution (thread-local ones each time)."""
        torch = self.torch
        torch._C._set_graph_executor_optimize(self.params.optimized_execution)
        if self.params.jit_profiling is not None:
            torch._C._jit_set_profiling_mode(self.params.jit_profiling)
        if self.params.jit_executor is not None:
            torch._C._jit_set_profiling_executor(self.params.jit_executor)
        if self.params.tensor_fuser is not None:
            torch._C._jit_set_texpr_fuser_enabled(self.params.tensor_fuser)
        torch.backends.cudnn.enabled = self.params.cudnn
        stack.enter_context(torch.inference_mode(self.params.inference_mode))
        stack.enter_context(torch.no_grad())
        if self.cuda:
            stack.enter_context(torch.cuda.device(self.device))
            stack.enter_context(torch.cuda.stream(self.stream))

    def _forward(self, arguments: list[Any]) -> Any:
        if self.binding.dict_input:
            return self.module(dict(zip(self.binding.inputs, arguments, strict=True)))
        return self.module(*arguments)

    # --- inputs -------------------------------------------------------------------------

    def _arguments(self, requests: Sequence[InferenceRequest]) -> list[Any]:
        """The inputs of the batch, in ``forward``'s order (in input order for a dict input)."""
        if self.binding.dict_input:
            return [self._input(name, requests) for name in self.binding.inputs]
        arguments: list[Any] = [None] * self.binding.arity
        for name, position in self.binding.inputs.items():
            arguments[position] = self._input(name, requests)
        return arguments

    def _input(self, name: str, requests: Sequence[InferenceRequest]) -> Any:
        tensors = []
        for request in requests:
            tensor = request.inputs.get(name)
            if tensor is None:
                raise InvalidArgument(
                    f"input '{name}' is missing: the PyTorch backend passes every input of "
                    "the model to forward"
                )
            tensors.append(tensor)
        datatype = tensors[0].datatype
        if datatype == "BYTES":
            return _strings(name, [self._reshaped(name, t.data) for t in tensors])
        dtype = getattr(self.torch, _TORCH_DTYPES[datatype])
        if self.cuda and any(self._in_place(t) for t in tensors):
            return self._device_input(name, tensors, dtype)
        return self._tensor([self._reshaped(name, t.data) for t in tensors], dtype)

    def _in_place(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` lies in CUDA shared memory on this instance's device."""
        buffer = cuda_buffer(tensor)
        return buffer is not None and buffer.device_id == self.device.index

    def _device_input(self, name: str, tensors: list[Tensor], dtype: Any) -> Any:
        """The batch's input from device memory where it lies; the rest uploaded."""
        parts = []
        for tensor in tensors:
            buffer = cuda_buffer(tensor)
            if buffer is not None and buffer.device_id == self.device.index:
                part = device_view(self.torch, buffer, tensor.datatype, tensor.shape, self.device)
                if VERBOSE.level:
                    log.debug(
                        "model '%s': input '%s' used in place in CUDA shared memory '%s' on %s",
                        self.model_name,
                        name,
                        buffer.region,
                        self.device,
                    )
            else:
                part = self._tensor([tensor.data], dtype)
            parts.append(self._reshaped(name, part))
        return parts[0] if len(parts) == 1 else self.torch.cat(parts)

    def _reshaped(self, name: str, data: Any) -> Any:
        shape = self.reshapes.get(name)
        if shape is None:
            return data
        return data.reshape((data.shape[0], *shape) if self.batching else shape)

    def _tensor(self, arrays: list[np.ndarray], dtype: Any) -> Any:
        torch = self.torch
        if self.cuda and self.pinned_input:
            # Straight into pinned memory, then a non-blocking copy on the instance's stream.
            shape = arrays[0].shape
            if len(arrays) > 1:
                shape = (sum(a.shape[0] for a in arrays), *shape[1:])
            host = torch.empty(shape, dtype=dtype, pin_memory=True)
            if len(arrays) > 1:
                np.concatenate(arrays, axis=0, out=host.numpy())
            else:
                host.numpy()[...] = arrays[0]
            return host.to(self.device, non_blocking=True)
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        # No copy: a view over the received request body (the model only reads its inputs).
        tensor = torch.from_numpy(array)
        return tensor.to(self.device) if self.cuda else tensor

    # --- outputs ------------------------------------------------------------------------

    def _outputs(self, result: Any) -> dict[str, Any]:
        """The configured outputs picked from the model's result by index, type-checked."""
        if self.python_runtime:
            values = list(result) if isinstance(result, (tuple, list)) else [result]
        else:
            values = _flatten(self.torch, result)
        for name, index in self.binding.outputs.items():
            if index >= len(values):
                raise InvalidArgument(
                    f"The output {name} in the model configuration refers to an output index "
                    f"which doesn't exist. This model has {len(values)} outputs"
                )
        return {name: values[i] for name, i in self.binding.outputs.items()}

    def _write_device_outputs(
        self, requests: Sequence[InferenceRequest], values: dict[str, Any], rows: list[int]
    ) -> list[dict[str, Tensor]]:
        """Copy device to device each output a request wants in CUDA shared memory on this
        device; per request, the outputs so written (empty list: none was)."""
        written = []
        for request, (start, count) in zip(requests, _spans(rows), strict=True):
            mine: dict[str, Tensor] = {}
            for output in request.outputs:
                buffer, value = cuda_output_buffer(output), values.get(output.name)
                if buffer is None or buffer.device_id != self.device.index:
                    continue
                if value is None or isinstance(value, list):
                    continue
                part = self._part(output.name, value, start, count)
                if copy_to_region(self.torch, part, buffer, self.device):
                    datatype = self.binding.datatypes[output.name]
                    mine[output.name] = written_output(
                        output.name, datatype, tuple(part.shape), output
                    )
                    if VERBOSE.level:
                        log.debug(
                            "model '%s': output '%s' copied on %s into CUDA shared memory '%s'",
                            self.model_name,
                            output.name,
                            self.device,
                            buffer.region,
                        )
            written.append(mine)
        return written if any(written) else []

    def _check_outputs(self, values: dict[str, Any], total: int) -> None:
        for name, value in values.items():
            expected = self.binding.datatypes[name]
            if not isinstance(value, list):
                self._check_tensor(name, value, expected, total)
            elif expected != "BYTES":
                raise InvalidArgument(
                    f"configuration expects datatype TYPE_{expected} for output '{name}', "
                    "model provides List[str]"
                )
            elif self.batching and len(value) != total:
                raise InvalidArgument(
                    f"output '{name}' has {len(value)} strings, but the batch has {total} "
                    "rows: a batching model's outputs must keep the batch dimension"
                )

    def _to_host(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        """The checked outputs in host memory (waits for the instance's stream)."""
        torch = self.torch
        pending = {}
        for name, value in values.items():
            if isinstance(value, list):
                pending[name] = value
                continue
            if value.device.type == "cuda" and self.pinned_output:
                host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                host.copy_(value, non_blocking=True)
                pending[name] = host
            else:
                pending[name] = value.detach().cpu()
        if self.cuda:
            self.stream.synchronize()
        return {name: _host_array(name, value) for name, value in pending.items()}

    def _check_tensor(self, name: str, value: Any, expected: str, total: int) -> None:
        provided = _datatype_of(self.torch, value.dtype)
        if provided != expected:
            expects = "TYPE_STRING" if expected == "BYTES" else f"TYPE_{expected}"
            raise InvalidArgument(
                f"configuration expects datatype {expects} for output '{name}', "
                f"model provides TYPE_{provided}"
            )
        if value.dim() == 0:
            raise InvalidArgument(f"output '{name}' is a scalar which is not supported.")
        if self.batching and value.shape[0] != total:
            raise InvalidArgument(
                f"output '{name}' has {value.shape[0]} rows in its first dimension, but the "
                f"batch has {total}: a batching model's outputs must keep the batch dimension"
            )

    def _response_outputs(
        self, arrays: dict[str, np.ndarray], start: int, count: int, written: dict[str, Tensor]
    ) -> list[Tensor]:
        outputs = []
        for name in self.binding.outputs:
            if name in written:
                outputs.append(written[name])
                continue
            part = self._part(name, arrays[name], start, count)
            outputs.append(Tensor(name, self.binding.datatypes[name], part))
        return outputs

    def _part(self, name: str, value: Any, start: int, count: int) -> Any:
        """One request's rows of an output (array or tensor), in its configured shape."""
        part = value[start : start + count] if self.batching else value
        dims = self.output_dims.get(name)
        if dims is not None:
            part = part.reshape((count, *dims) if self.batching else dims)
        return part


def _still_wanted(values: dict[str, Any], written: list[dict[str, Tensor]]) -> dict[str, Any]:
    """The outputs some request of the batch still needs in host memory."""
    if not written:
        return values
    return {n: v for n, v in values.items() if not all(n in w for w in written)}


def _spans(rows: list[int]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for count in rows:
        spans.append((start, count))
        start += count
    return spans


def _strings(name: str, arrays: list[np.ndarray]) -> list[str]:
    """A BYTES input as the ``List[str]`` TorchScript takes (UTF-8, flattened)."""
    strings = []
    for array in arrays:
        for item in array.reshape(-1):
            try:
                strings.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"input '{name}' holds bytes that are not UTF-8: TorchScript takes strings"
                ) from None
    return strings


def _flatten(torch: Any, result: Any) -> list[Any]:
    """Triton's accepted results: a Tensor, a ``List[str]``, or a tuple of those.

    Anything else is a ``TypeError``: an execute failure, as Triton reports it.
    """
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, tuple):
        return [_element(torch, value, index) for index, value in enumerate(result)]
    if isinstance(result, list):
        return [_string_list(result, "output must be of type Tensor or List[str]")]
    raise TypeError(_OUTPUT_FORMS)


def _element(torch: Any, value: Any, index: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list):
        return _string_list(value, f"output at index {index} must be of type Tensor or List[str]")
    raise TypeError(_OUTPUT_FORMS)


def _string_list(value: list[Any], what: str) -> list[Any]:
    bad = next((item for item in value if not isinstance(item, str)), None)
    if bad is not None:
        kind = "Tensor" if type(bad).__name__ == "Tensor" else type(bad).__name__
        raise TypeError(f"{what}, received List[{kind}]")
    return value


def _datatype_of(torch: Any, dtype: Any) -> str:
    for name, torch_name in _TORCH_DTYPES.items():
        if dtype == getattr(torch, torch_name):
            return name
    return "INVALID"


def _host_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, list):
        return np.array([s.encode("utf-8") for s in value], dtype=np.object_)
    return value.contiguous().numpy()
