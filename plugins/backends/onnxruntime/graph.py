"""What an ONNX graph declares, and Triton's auto-complete and checks of a config against it.

The texts of every error are those of Triton's onnxruntime backend (``onnxruntime.cc``,
``onnxruntime_utils.cc``) and its backend library (``CheckAllowedModelInput``), so that
a configuration Triton refuses is refused here with the same words.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from triton_kernel.kernel.errors import Internal, InvalidArgument, Unsupported
from triton_kernel.protocols.proto.model_config import DATA_TYPE

log = logging.getLogger(__name__)

#: ONNX Runtime's element type names (``tensor(<name>)``) -> the config's ``DataType``.
CONFIG_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bfloat16": "TYPE_BF16",
    "float16": "TYPE_FP16",
    "float": "TYPE_FP32",
    "double": "TYPE_FP64",
    "string": "TYPE_STRING",
}
#: ONNX type kinds as Triton names them in its "Unsupported ONNX Type" error.
_ONNX_KINDS = {
    "seq": "ONNX_TYPE_SEQUENCE",
    "map": "ONNX_TYPE_MAP",
    "opaque": "ONNX_TYPE_OPAQUE",
    "sparse_tensor": "ONNX_TYPE_SPARSETENSOR",
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of the graph: its config data type and its dims (-1: free)."""

    name: str
    #: ``TYPE_FP32`` ... or ``TYPE_INVALID`` for element types Triton cannot serve.
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Graph:
    """The inputs, outputs and overridable initializers of a loaded ONNX model."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    #: Initializers a request may override: Triton accepts them as inputs.
    initializers: dict[str, TensorInfo]

    @classmethod
    def of(cls, session: Any) -> Graph:
        """Read a session's signature (graph order: stable, unlike Triton's hash map)."""
        return cls(
            _infos(session.get_inputs()),
            _infos(session.get_outputs()),
            _infos(session.get_overridable_initializers()),
        )


def _infos(args: Iterable[Any]) -> dict[str, TensorInfo]:
    infos = {}
    for arg in args:
        kind, _, element = arg.type.partition("(")
        if kind != "tensor":
            raise Unsupported(
                f"Unsupported ONNX Type '{_ONNX_KINDS.get(kind, 'ONNX_TYPE_UNKNOWN')}' for I/O "
                f"'{arg.name}', expected 'ONNX_TYPE_TENSOR'."
            )
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
        infos[arg.name] = TensorInfo(arg.name, CONFIG_TYPES.get(element[:-1], "TYPE_INVALID"), dims)
    return infos


# --- auto-complete ------------------------------------------------------------------------


def auto_complete(config: Any, graph: Graph, default_max_batch_size: int) -> None:
    """Triton's ``AutoCompleteConfig``: fill what the config leaves out from the graph.

    Nothing is done when the config already lists inputs and outputs.
    """
    input_count = len(config.input) + len(config.batch_input)
    if input_count and config.output:
        log.info(
            "skipping model configuration auto-complete for '%s': inputs and outputs "
            "already specified",
            config.name,
        )
        return
    _complete_max_batch_size(config, graph, default_max_batch_size)
    if not input_count:
        _complete_tensors(config, config.input, graph.inputs.values())
    if not config.output:
        _complete_tensors(config, config.output, graph.outputs.values())


def _complete_max_batch_size(config: Any, graph: Graph, default: int) -> None:
    """Batching is possible when every input and output has a free first dimension."""
    tensors = [*graph.inputs.values(), *graph.outputs.values()]
    can_batch = all(t.dims and t.dims[0] == -1 for t in tensors)
    if not can_batch:
        if config.max_batch_size != 0:
            raise InvalidArgument(
                f"autofill failed for model '{config.name}': model does not support batching "
                "while non-zero max_batch_size is specified"
            )
        return
    if config.max_batch_size == 0:
        config.max_batch_size = max(default, 0)
        log.warning(
            "autofilled max_batch_size to %d for model '%s' since batching is supporrted but "
            "no max_batch_size is specified in model configuration. Must specify "
            "max_batch_size to utilize autofill with a larger max batch size",
            config.max_batch_size,
            config.name,
        )
    if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
        config.dynamic_batching.SetInParent()
        # What Triton's core normalization then adds to an empty dynamic_batching.
        config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)


def _complete_tensors(config: Any, field: Any, infos: Iterable[TensorInfo]) -> None:
    """Triton's ``AutoCompleteIO``: a scalar becomes dims [1] (reshaped to [] when batching)."""
    batching = config.max_batch_size > 0
    for info in infos:
        if info.data_type == "TYPE_INVALID":
            raise Unsupported(
                f"unable to auto-complete model '{config.name}': '{info.name}' has an ONNX "
                "element type that Triton has no data type for"
            )
        tensor = field.add(name=info.name, data_type=info.data_type)
        dims = list(info.dims[1:] if batching else info.dims)
        tensor.dims.extend(dims or [1])
        if not dims and batching:
            tensor.reshape.SetInParent()


# --- checks of the configuration against the graph ---------------------------------------


def validate(config: Any, graph: Graph) -> dict[str, tuple[int, ...]]:
    """Triton's ``ValidateInputs`` / ``ValidateOutputs``; returns the scalar outputs' dims.

    A scalar output of the graph is answered with the dims its configuration gives it.
    """
    _validate_input_count(config, graph)
    allowed = {**graph.inputs, **graph.initializers}
    for tensor in config.input:
        _validate_input(config, tensor, allowed)
    batch_outputs = {name for output in config.batch_output for name in output.target_name}
    scalars = {}
    for tensor in config.output:
        info = _find(tensor.name, graph.outputs, "output")
        _check_data_type(config, tensor, info, "output")
        if tensor.name in batch_outputs:
            continue
        dims = _config_dims(tensor)
        if info.dims:
            compare_dims(config, tensor.name, info.dims, dims, exact=True)
        else:
            _check_scalar(config, tensor.name, dims)
            scalars[tensor.name] = dims
    for state in config.sequence_batching.state:
        info = _find(state.output_name, graph.outputs, "output")
        if info.data_type != _type_name(state.data_type):
            raise InvalidArgument(
                f"unable to load model '{config.name}', configuration expects datatype "
                f"{_type_name(state.data_type)} for output state '{state.output_name}', model "
                f"provides {_server_type(info.data_type)}"
            )
    return scalars


def _validate_input_count(config: Any, graph: Graph) -> None:
    expected = sum(1 for tensor in config.input if not tensor.optional)
    expected += len(config.batch_input)
    if config.HasField("sequence_batching"):
        expected += sum(len(c.control) for c in config.sequence_batching.control_input)
        expected += len(config.sequence_batching.state)
        _validate_controls(config, graph)
    if len(graph.inputs) != expected:
        raise InvalidArgument(
            f"unable to load model '{config.name}', configuration expects {expected} inputs, "
            f"model provides {len(graph.inputs)}"
        )


def _validate_controls(config: Any, graph: Graph) -> None:
    """Sequence control inputs must be model inputs of dims [1] and the right data type."""
    batching = config.max_batch_size > 0
    for control_input in config.sequence_batching.control_input:
        info = graph.inputs.get(control_input.name)
        if info is None:
            raise Internal(
                f"configuration specified sequence control '{control_input.name}', but model "
                "does not provide that input"
            )
        dims = info.dims[1:] if batching else info.dims
        if dims != (1,):
            raise InvalidArgument(
                f"unable to load model '{config.name}', sequence control '{info.name}' in "
                f"model has dims {shape_text(dims)} but dims [1] is expected"
            )
        for control in control_input.control:
            wanted = _control_type(control)
            if wanted != info.data_type:
                raise InvalidArgument(
                    f"unable to load model '{config.name}', sequence control '{info.name}', the "
                    f"model expects data-type {_onnx_name(info.data_type)} but the model "
                    f"configuration specifies data-type {wanted}"
                )


def _control_type(control: Any) -> str:
    if control.fp32_false_true:
        return "TYPE_FP32"
    if control.bool_false_true:
        return "TYPE_BOOL"
    if control.int32_false_true:
        return "TYPE_INT32"
    return _type_name(control.data_type)


def _validate_input(config: Any, tensor: Any, allowed: Mapping[str, TensorInfo]) -> None:
    name = config.name
    if tensor.optional and config.max_batch_size != 0:
        raise InvalidArgument(
            f"unable to load model '{name}', optional input '{tensor.name}' is not supported "
            "for models that support batching"
        )
    info = _find(tensor.name, allowed, "input")
    _check_data_type(config, tensor, info, "input")
    dims = _config_dims(tensor)
    if tensor.allow_ragged_batch:
        if tensor.optional:
            raise InvalidArgument(
                f"unable to load model '{name}', configuration expects model provides input "
                f"with shape [-1] for ragged input '{tensor.name}', which is not supported for "
                "optional input"
            )
        if info.dims != (-1,):
            raise InvalidArgument(
                f"unable to load model '{name}', configuration expects model provides input "
                f"with shape [-1]  for ragged input '{tensor.name}', model provides "
                f"{shape_text(info.dims)}"
            )
    elif info.dims:
        compare_dims(config, tensor.name, info.dims, dims, exact=False)
    else:
        _check_scalar(config, tensor.name, dims)


def _find(name: str, infos: Mapping[str, TensorInfo], kind: str) -> TensorInfo:
    info = infos.get(name)
    if info is None:
        allowed = ", ".join(sorted(infos))  # Triton lists a std::set: sorted
        raise InvalidArgument(
            f"unexpected inference {kind} '{name}', allowed {kind}s are: {allowed}"
        )
    return info


def _check_data_type(config: Any, tensor: Any, info: TensorInfo, kind: str) -> None:
    wanted = _type_name(tensor.data_type)
    if wanted not in CONFIG_TYPES.values():
        raise Internal(
            f"unsupported datatype {wanted} for {kind} '{tensor.name}' for model '{config.name}'"
        )
    if wanted != info.data_type:
        raise InvalidArgument(
            f"unable to load model '{config.name}', configuration expects datatype {wanted} "
            f"for {kind} '{tensor.name}', model provides {_server_type(info.data_type)}"
        )


def _check_scalar(config: Any, name: str, dims: tuple[int, ...]) -> None:
    if any(dim != 1 for dim in dims):
        raise InvalidArgument(
            f"unable to load model '{config.name}', scalar tensor '{name}', should only provide "
            "1 in the model configuration when the model doesn't support batching. Model "
            f"configuration provided: {shape_text(dims)}."
        )


def compare_dims(
    config: Any, name: str, model: tuple[int, ...], dims: tuple[int, ...], *, exact: bool
) -> None:
    """Triton's ``CompareDimsSupported``: the graph's shape against the configured dims.

    A free model dimension accepts any configured one, except for outputs (``exact``).
    """
    where = f"model '{config.name}', tensor '{name}': "
    if config.max_batch_size > 0:
        if not model or model[0] != -1:
            raise InvalidArgument(
                f"{where}for the model to support batching the shape should have at least 1 "
                "dimension and the first dimension must be -1; but shape expected by the model "
                f"is {shape_text(model)}"
            )
        full = (-1, *dims)
        if not _dims_fit(model, full, exact):
            raise InvalidArgument(
                f"{where}the model expects {len(model)} dimensions (shape {shape_text(model)}) "
                f"but the model configuration specifies {len(full)} dimensions (an initial batch "
                "dimension because max_batch_size > 0 followed by the explicit tensor shape, "
                f"making complete shape {shape_text(full)})"
            )
    elif not _dims_fit(model, dims, exact):
        raise InvalidArgument(
            f"{where}the model expects {len(model)} dimensions (shape {shape_text(model)}) but "
            f"the model configuration specifies {len(dims)} dimensions (shape {shape_text(dims)})"
        )


def _dims_fit(model: tuple[int, ...], dims: tuple[int, ...], exact: bool) -> bool:
    if len(model) != len(dims):
        return False
    return all(m == d for m, d in zip(model, dims, strict=True) if exact or m != -1)


def _config_dims(tensor: Any) -> tuple[int, ...]:
    """The dims the graph must match: the reshape when there is one."""
    return tuple(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)


def shape_text(dims: Iterable[int]) -> str:
    """Triton's ``ShapeToString``: ``[-1,16]``."""
    return "[" + ",".join(str(d) for d in dims) + "]"


def _type_name(data_type: int) -> str:
    return DATA_TYPE.values_by_number[data_type].name


def _server_type(config_type: str) -> str:
    """``TYPE_`` + ``TRITONSERVER_DataTypeString``: a string tensor is ``TYPE_BYTES``."""
    return "TYPE_BYTES" if config_type == "TYPE_STRING" else config_type


def _onnx_name(config_type: str) -> str:
    """Triton's ``OnnxDataTypeName`` (``FLOAT``, ``INT32``) for a config data type."""
    for onnx, mapped in CONFIG_TYPES.items():
        if mapped == config_type:
            return {"float": "FLOAT", "float16": "FLOAT16", "double": "DOUBLE"}.get(
                onnx, onnx.upper()
            )
    return "UNDEFINED"
