"""One TensorRT instance at work: execution contexts per profile, a stream, named tensor I/O.

Runs in the instance's own thread. A batch's inputs are concatenated along dimension
0 into pinned host memory, copied to the GPU on the instance's stream, bound by name
(``set_input_shape`` / ``set_tensor_address``), run with ``execute_async_v3``, and the
outputs copied back and split by each request's rows. Written against the TensorRT
10/11 Python API (named tensors, enqueueV3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from triton_kernel.kernel.errors import Internal, InvalidArgument, Unsupported
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.scheduler import request_batch_size
from triton_kernel.kernel.tensor import Tensor

from .engine_io import TensorInfo

__all__ = ["EngineRunner"]

_TORCH_DTYPES = {
    "FP32": "float32",
    "FP16": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


class EngineRunner:
    """An instance's execution contexts (one per selected profile) and its CUDA stream."""

    def __init__(
        self,
        torch: Any,
        engine: Any,
        config: Any,
        tensors: Sequence[TensorInfo],
        profiles: list[int],
        device_id: int,
        instance: str,
    ) -> None:
        self.torch = torch
        self.engine = engine
        self.instance = instance
        self.device = torch.device("cuda", device_id)
        self.batching = config.max_batch_size > 0
        self.inputs = [t for t in tensors if t.is_input]
        self.outputs = [t for t in tensors if not t.is_input]
        self.datatypes = {t.name: t.datatype for t in tensors}
        self.reshapes = {
            t.name: tuple(t.reshape.shape) for t in config.input if t.HasField("reshape")
        }
        self.output_dims = {t.name: tuple(t.dims) for t in config.output if t.HasField("reshape")}
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            self.contexts = [(p, self._context(p)) for p in profiles]

    def _context(self, profile: int) -> Any:
        context = self.engine.create_execution_context()
        if context is None:
            raise Internal(f"unable to create TensorRT context for {self.instance}")
        if profile != 0:
            if not context.set_optimization_profile_async(profile, self.stream.cuda_stream):
                raise InvalidArgument(
                    f"Can not set the specified optimization profile {profile}[{profile}] for "
                    f"{self.instance}. Expected optimization profile index range 0-"
                    f"{self.engine.num_optimization_profiles - 1}"
                )
            self.stream.synchronize()
        return context

    def run(self, requests: Sequence[InferenceRequest]) -> list[list[Tensor]]:
        rows = [request_batch_size(r, self.batching) for r in requests]
        torch = self.torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inputs = {t.name: self._input(t, requests) for t in self.inputs}
            context = self._select_context(inputs)
            for name, tensor in inputs.items():
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            outputs = {t.name: self._output(context, t) for t in self.outputs}
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise Internal(f"unable to enqueue for inference {self.instance}")
            host = {name: _to_host(torch, tensor) for name, tensor in outputs.items()}
            self.stream.synchronize()
        arrays = {
            name: _numpy(torch, tensor, self.datatypes[name]) for name, tensor in host.items()
        }
        return [self._response(arrays, start, count) for start, count in _spans(rows)]

    def _input(self, info: TensorInfo, requests: Sequence[InferenceRequest]) -> Any:
        arrays = []
        for request in requests:
            tensor = request.inputs.get(info.name)
            if tensor is None:
                raise InvalidArgument(f"input '{info.name}' not found for {self.instance}")
            data = tensor.data
            shape = self.reshapes.get(info.name)
            if shape is not None:
                data = data.reshape((data.shape[0], *shape) if self.batching else shape)
            arrays.append(data)
        shape = arrays[0].shape
        if len(arrays) > 1:
            shape = (sum(a.shape[0] for a in arrays), *shape[1:])
        torch = self.torch
        dtype = getattr(torch, _TORCH_DTYPES[info.datatype])
        host = torch.empty(shape, dtype=dtype, pin_memory=True)
        target = _numpy_view(torch, host, info.datatype)
        if len(arrays) > 1:
            np.concatenate([a.view(target.dtype) for a in arrays], axis=0, out=target)
        else:
            target[...] = arrays[0].view(target.dtype)
        return host.to(self.device, non_blocking=True)

    def _select_context(self, inputs: dict[str, Any]) -> Any:
        """The first selected profile whose [min, max] holds every input shape."""
        for profile, context in self.contexts:
            if all(_fits(info, profile, tuple(inputs[info.name].shape)) for info in self.inputs):
                return context
        names = " ".join(f"{p}[{p}]" for p, _ in self.contexts)
        raise InvalidArgument(
            f"failed to find any Optimization Profile among [ {names}] to support the requested "
            "dimensions (or shape values), proceeding with first profile."
        )

    def _output(self, context: Any, info: TensorInfo) -> Any:
        shape = tuple(context.get_tensor_shape(info.name))
        if any(d < 0 for d in shape):
            raise Unsupported(
                f"output '{info.name}' of {self.instance} has a data-dependent shape "
                f"{list(shape)}, which this TensorRT backend does not support"
            )
        dtype = getattr(self.torch, _TORCH_DTYPES[info.datatype])
        tensor = self.torch.empty(shape, dtype=dtype, device=self.device)
        context.set_tensor_address(info.name, tensor.data_ptr())
        return tensor

    def _response(self, arrays: dict[str, np.ndarray], start: int, count: int) -> list[Tensor]:
        outputs = []
        for name, array in arrays.items():
            part = array[start : start + count] if self.batching else array
            dims = self.output_dims.get(name)
            if dims is not None:
                part = part.reshape((count, *dims) if self.batching else dims)
            outputs.append(Tensor(name, self.datatypes[name], part))
        return outputs

    def close(self) -> None:
        self.contexts = []


def _fits(info: TensorInfo, profile: int, shape: tuple[int, ...]) -> bool:
    if not info.profiles:
        return True
    low, _, high = info.profiles[profile]
    return len(shape) == len(high) and all(
        lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)
    )


def _spans(rows: list[int]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for count in rows:
        spans.append((start, count))
        start += count
    return spans


def _numpy_view(torch: Any, tensor: Any, datatype: str) -> np.ndarray:
    """A numpy view of a host tensor; BF16 (no numpy type) as its raw 16-bit words."""
    if datatype == "BF16":
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


def _to_host(torch: Any, tensor: Any) -> Any:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def _numpy(torch: Any, host: Any, datatype: str) -> np.ndarray:
    array = _numpy_view(torch, host, datatype)
    return array.view(np.uint16) if datatype == "BF16" else array
