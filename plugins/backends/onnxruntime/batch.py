"""Requests in, one ONNX Runtime run, responses out: the backend's hot path.

A batching model runs the requests of a batch as one: each input is the concatenation
of the requests' arrays (a single request is passed as it came, no copy), and each
output is cut back into per-request views (no copy). Config ``reshape``, scalar graph
tensors and ONNX strings (``str`` in ONNX Runtime, ``bytes`` in the kernel) are
converted here, once per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triton_kernel.kernel.config import wire_datatype
from triton_kernel.kernel.errors import Internal, InvalidArgument
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.tensor import Tensor

from .graph import Graph


@dataclass(frozen=True, slots=True)
class InputPort:
    """How a request's input becomes the graph's input."""

    name: str
    #: The graph's shape for it (without the batch dimension), when the config reshapes.
    shape: tuple[int, ...] | None
    strings: bool

    def prepare(self, array: np.ndarray, batching: bool) -> np.ndarray:
        if self.shape is not None:
            array = array.reshape((array.shape[0], *self.shape) if batching else self.shape)
        return _to_str(array, self.name) if self.strings else array


@dataclass(frozen=True, slots=True)
class OutputPort:
    """How the graph's output becomes a response tensor."""

    name: str
    datatype: str
    #: The shape the client sees (without the batch dimension), when it is not the graph's.
    dims: tuple[int, ...] | None
    strings: bool

    def finish(self, array: np.ndarray, batching: bool) -> np.ndarray:
        if self.dims is not None and sum(d < 0 for d in self.dims) <= 1:
            array = array.reshape((array.shape[0], *self.dims) if batching else self.dims)
        return _to_bytes(array) if self.strings else array


@dataclass(frozen=True, slots=True)
class Plan:
    """A model's inputs and outputs as a run needs them, computed once at load."""

    batching: bool
    inputs: dict[str, InputPort]
    outputs: tuple[OutputPort, ...]
    #: ``outputs``' names, in order: what every run asks ONNX Runtime for.
    output_names: tuple[str, ...]

    @classmethod
    def of(cls, config: Any, graph: Graph, scalars: dict[str, tuple[int, ...]]) -> Plan:
        inputs = {t.name: _input_port(t, graph) for t in config.input}
        for control in config.sequence_batching.control_input:
            inputs.setdefault(control.name, InputPort(control.name, None, False))
        for state in config.sequence_batching.state:
            inputs.setdefault(state.input_name, InputPort(state.input_name, None, False))
        outputs = [_output_port(t, scalars) for t in config.output]
        for state in config.sequence_batching.state:  # the sequence batcher takes them out
            if state.output_name not in {port.name for port in outputs}:
                strings = graph.outputs[state.output_name].data_type == "TYPE_STRING"
                datatype = wire_datatype(state.data_type)
                outputs.append(OutputPort(state.output_name, datatype, None, strings))
        names = tuple(port.name for port in outputs)
        return cls(config.max_batch_size > 0, inputs, tuple(outputs), names)


def _input_port(tensor: Any, graph: Graph) -> InputPort:
    info = graph.inputs.get(tensor.name) or graph.initializers[tensor.name]
    shape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    if not info.dims and shape is None:
        shape = ()  # a scalar of the graph, configured as dims [1]
    return InputPort(tensor.name, shape, info.data_type == "TYPE_STRING")


def _output_port(tensor: Any, scalars: dict[str, tuple[int, ...]]) -> OutputPort:
    dims = tuple(tensor.dims) if tensor.HasField("reshape") else scalars.get(tensor.name)
    datatype = wire_datatype(tensor.data_type)
    return OutputPort(tensor.name, datatype, dims, datatype == "BYTES")


def feeds(plan: Plan, requests: Sequence[InferenceRequest]) -> tuple[dict[str, Any], list[int]]:
    """The run's inputs, and how many rows each request brings (its share of the outputs)."""
    inputs = plan.inputs
    if len(requests) == 1:
        request = requests[0]
        fed = {n: inputs[n].prepare(t.data, plan.batching) for n, t in request.inputs.items()}
        return fed, [rows(request, plan.batching)]
    counts = [rows(request, True) for request in requests]
    fed = {}
    for name in requests[0].inputs:
        arrays = [request.inputs[name].data for request in requests]
        fed[name] = inputs[name].prepare(np.concatenate(arrays), True)
    return fed, counts


def rows(request: InferenceRequest, batching: bool) -> int:
    """The batch rows ``request`` brings: its first dimension (1 for a non-batching model)."""
    if not batching:
        return 1
    first = next(iter(request.inputs.values()), None)
    return first.data.shape[0] if first is not None else 0


def responses(plan: Plan, arrays: Sequence[np.ndarray], counts: list[int]) -> list[list[Tensor]]:
    """Each request's output tensors: views of the batch's outputs, ``counts`` rows each."""
    ports = plan.outputs
    finished = [
        port.finish(array, plan.batching) for port, array in zip(ports, arrays, strict=True)
    ]
    if len(counts) == 1:
        return [[Tensor(p.name, p.datatype, a) for p, a in zip(ports, finished, strict=True)]]
    total = sum(counts)
    for port, array in zip(ports, finished, strict=True):
        if not array.ndim or array.shape[0] != total:
            raise Internal(
                f"output '{port.name}' has shape {list(array.shape)}: its first dimension is "
                f"not the batch of {total} the model was given"
            )
    answers, start = [], 0
    for count in counts:
        end = start + count
        answers.append(
            [Tensor(p.name, p.datatype, a[start:end]) for p, a in zip(ports, finished, strict=True)]
        )
        start = end
    return answers


def _to_str(array: np.ndarray, name: str) -> np.ndarray:
    """ONNX Runtime's Python API takes strings as ``str`` (``bytes`` would be repr'd)."""
    try:
        items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.flat]
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"input '{name}' holds bytes that are not UTF-8: onnxruntime's string tensors "
            "take text only"
        ) from None
    result = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result.reshape(array.shape)


def _to_bytes(array: np.ndarray) -> np.ndarray:
    result = np.empty(array.size, dtype=np.object_)
    result[:] = [x.encode("utf-8") if isinstance(x, str) else x for x in array.flat]
    return result.reshape(array.shape)
