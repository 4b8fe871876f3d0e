"""One batch through a torch module, on the instance's own thread: gather, forward, split.

Everything here runs in the instance's executor thread (torch releases the GIL while
it computes) and touches only numpy arrays and torch tensors; answering the requests
is left to the event loop. Requests of a batch are concatenated along dimension 0
and the outputs split back by each request's rows, as Triton's input collector and
output responder do.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from triton_kernel.kernel.errors import Internal, InvalidArgument, KernelError
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.scheduler import request_batch_size
from triton_kernel.kernel.tensor import Tensor

from .binding import Binding
from .params import TorchParameters

__all__ = ["Runner"]

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
            arguments = self._arguments(requests)
            try:
                result = self._forward(arguments)
                values = self._outputs(result)
            except KernelError:
                raise
            except Exception as exc:
                raise Internal(f"PyTorch execute failure: {exc}") from None
            arrays = self._to_host(values, sum(rows))
        if self.cuda and self.params.cache_cleaning:
            self.torch.cuda.empty_cache()
        return [self._response_outputs(arrays, start, count) for start, count in _spans(rows)]

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
        arrays = []
        for request in requests:
            tensor = request.inputs.get(name)
            if tensor is None:
                raise InvalidArgument(
                    f"input '{name}' is missing: the PyTorch backend passes every input of "
                    "the model to forward"
                )
            arrays.append(self._reshaped(name, tensor.data))
        datatype = requests[0].inputs[name].datatype
        if datatype == "BYTES":
            return _strings(name, arrays)
        return self._tensor(arrays, getattr(self.torch, _TORCH_DTYPES[datatype]))

    def _reshaped(self, name: str, data: np.ndarray) -> np.ndarray:
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

    def _to_host(self, values: dict[str, Any], total: int) -> dict[str, np.ndarray]:
        torch = self.torch
        pending = {}
        for name, value in values.items():
            expected = self.binding.datatypes[name]
            if isinstance(value, list):
                if expected != "BYTES":
                    raise InvalidArgument(
                        f"configuration expects datatype TYPE_{expected} for output '{name}', "
                        "model provides List[str]"
                    )
                if self.batching and len(value) != total:
                    raise InvalidArgument(
                        f"output '{name}' has {len(value)} strings, but the batch has {total} "
                        "rows: a batching model's outputs must keep the batch dimension"
                    )
                pending[name] = value
                continue
            self._check_tensor(name, value, expected, total)
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
        self, arrays: dict[str, np.ndarray], start: int, count: int
    ) -> list[Tensor]:
        outputs = []
        for name, array in arrays.items():
            part = array[start : start + count] if self.batching else array
            dims = self.output_dims.get(name)
            if dims is not None:
                part = part.reshape((count, *dims) if self.batching else dims)
            outputs.append(Tensor(name, self.binding.datatypes[name], part))
        return outputs


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
