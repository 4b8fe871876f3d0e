"""How configured inputs and outputs meet a TorchScript ``forward``: Triton's naming rules.

Inputs are matched, in this order of preference, by forward argument name (every
configured input names an argument), by index (``INPUT__0``: ``<name>__<index>``), or
by their order in the configuration. A ``forward`` taking one ``Dict[str, Tensor]``
receives the inputs keyed by their configured names. Outputs follow ``<name>__<index>``
or configuration order. Sequence control and state tensors always use
``<name>__<index>``. The checks and texts are those of Triton's pytorch backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from triton_kernel.kernel.config import wire_datatype
from triton_kernel.kernel.errors import Internal, InvalidArgument

log = logging.getLogger(__name__)

__all__ = ["Binding", "bind", "forward_arguments", "strict_binding"]

FORWARD_ARGUMENT = "FORWARD_ARGUMENT"
NAMED_INDEX = "NAMED_INDEX"
STRICT_CONFIG_ORDERING = "STRICT_CONFIG_ORDERING"

#: Wire datatypes a torch tensor can carry (Triton's ``ConvertDataTypeToTorchType``);
#: BYTES travels as ``List[str]``.
TORCH_DATATYPES = frozenset(
    ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")
)


@dataclass(slots=True, frozen=True)
class Binding:
    """Where ``forward`` takes each input and where each output is found in its result."""

    #: ``forward`` takes one ``Dict[str, Tensor]`` keyed by input name.
    dict_input: bool
    #: Input name -> position among ``forward``'s arguments (unused for a dict input).
    inputs: dict[str, int]
    #: How many positional arguments ``forward`` takes.
    arity: int
    #: Output name -> index in the model's result.
    outputs: dict[str, int]
    #: Output name -> the wire datatype its configuration promises.
    datatypes: dict[str, str]


def forward_arguments(module: Any) -> list[tuple[str, str, str]]:
    """``(name, type kind, type)`` of each ``forward`` argument of a scripted module, less self."""
    arguments = list(module.forward.schema.arguments)
    if arguments and arguments[0].type.kind() == "ClassType":
        arguments = arguments[1:]
    return [(a.name, a.type.kind(), str(a.type)) for a in arguments]


def bind(config: Any, arguments: Sequence[tuple[str, str, str]]) -> Binding:
    """Check the configuration against ``forward``'s arguments and bind names to positions."""
    name = config.name
    dict_input = len(arguments) == 1 and arguments[0][1] == "DictType"
    allowed = [] if dict_input else _tensor_arguments(arguments)
    extra_inputs, extra_outputs = _sequence_tensors(config)
    expected = len(config.input) + len(extra_inputs)
    if not dict_input and len(arguments) != expected:
        raise InvalidArgument(
            f"unable to load model '{name}', configuration expects {expected} inputs, "
            f"model provides {len(arguments)}"
        )
    if not config.input:
        raise Internal("model configuration must contain at least one input, none were specified.")
    _check_datatypes(config, "input", config.input)
    input_names = [t.name for t in config.input]
    convention = _convention(name, "input", input_names, allowed)
    _check_states(config, convention)
    inputs = {n: _position(convention, n, i, allowed) for i, n in enumerate(input_names)}
    inputs.update({n: _named_index(n) for n in extra_inputs})
    if not dict_input:
        _check_positions(name, inputs, len(arguments))
    return Binding(
        dict_input, inputs, len(arguments), _bind_outputs(config, extra_outputs), _datatypes(config)
    )


def strict_binding(config: Any) -> Binding:
    """Configuration order for inputs and outputs: the PyTorch 2 (``model.py``) path's rule."""
    _check_datatypes(config, "input", config.input)
    _check_datatypes(config, "output", config.output)
    inputs = {t.name: i for i, t in enumerate(config.input)}
    outputs = {t.name: i for i, t in enumerate(config.output)}
    return Binding(False, inputs, len(inputs), outputs, _datatypes(config))


def _tensor_arguments(arguments: Sequence[tuple[str, str, str]]) -> list[str]:
    for _, kind, _type in arguments[1:]:
        if kind == "DictType":
            raise Internal(
                "Multiple inputs of kind DictType were detected. Only a single input of type "
                "Dict(str, Tensor) is supported."
            )
    for _, kind, type_name in arguments:
        if kind not in ("TensorType", "ListType"):
            raise Internal(
                f"An input of type '{type_name}' was detected in the model. Only a single "
                "input of type Dict(str, Tensor) or input(s) of type Tensor are supported."
            )
    return [argument[0] for argument in arguments]


def _convention(model: str, kind: str, names: list[str], allowed: list[str] | None) -> str:
    """Triton's ``GetNamingConvention`` (``allowed`` is None for outputs)."""
    if allowed is not None and allowed and all(n in allowed for n in names):
        return FORWARD_ARGUMENT
    for io_name in names:
        index = _index_part(io_name)
        if index is None:
            return STRICT_CONFIG_ORDERING
        if not _is_int(index):
            plural = f"previous {kind}(s)"
            if kind == "input":
                detail = (
                    f"are neither an input argument to the model '{model}' nor do they follow "
                    "the <name>__<index> naming convention."
                )
            else:
                detail = (
                    f"of the model '{model}' do not follow the <name>__<index> naming convention."
                )
            log.warning(
                "%s '%s' or %s %s Falling back to enforcing strict ordering from model "
                "configuration.",
                kind,
                io_name,
                plural,
                detail,
            )
            return STRICT_CONFIG_ORDERING
    return NAMED_INDEX


def _index_part(io_name: str) -> str | None:
    position = io_name.find("__")
    return None if position < 0 else io_name[position + 2 :]


def _is_int(text: str) -> bool:
    return all(c in "0123456789" for c in text)


def _named_index(io_name: str) -> int:
    index = _index_part(io_name)
    if index is None or not _is_int(index):
        raise Internal(f"input '{io_name}' does not follow <name>__<index> naming convention.")
    return int(index or 0)


def _position(convention: str, io_name: str, order: int, allowed: list[str]) -> int:
    if convention == FORWARD_ARGUMENT:
        return allowed.index(io_name)
    if convention == NAMED_INDEX:
        return int(_index_part(io_name) or 0)
    return order


def _check_positions(model: str, inputs: dict[str, int], arity: int) -> None:
    """Each input must land on its own argument (Triton would silently misplace them)."""
    seen: dict[int, str] = {}
    for io_name, index in inputs.items():
        if index >= arity:
            raise InvalidArgument(
                f"unable to load model '{model}', input '{io_name}' refers to forward argument "
                f"{index}, but the model takes {arity}"
            )
        if index in seen:
            raise InvalidArgument(
                f"unable to load model '{model}', inputs '{seen[index]}' and '{io_name}' both "
                f"refer to forward argument {index}"
            )
        seen[index] = io_name


def _bind_outputs(config: Any, extra_outputs: list[str]) -> dict[str, int]:
    if not config.output:
        raise Internal("model configuration must contain at least one output, none were specified.")
    _check_datatypes(config, "output", config.output)
    names = [t.name for t in config.output]
    convention = _convention(config.name, "output", names, None)
    outputs = {
        n: int(_index_part(n) or 0) if convention == NAMED_INDEX else i for i, n in enumerate(names)
    }
    outputs.update({n: _named_index(n) for n in extra_outputs})
    return outputs


def _check_datatypes(config: Any, kind: str, tensors: Any) -> None:
    batching = config.max_batch_size > 0
    for tensor in tensors:
        datatype = wire_datatype(tensor.data_type)
        type_name = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
        if datatype != "BYTES" and datatype not in TORCH_DATATYPES:
            raise Internal(
                f"unsupported datatype {type_name} for {kind} '{tensor.name}' for model "
                f"'{config.name}'"
            )
        dims = tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims
        if datatype == "BYTES" and len(dims) + (1 if batching else 0) > 1:
            raise Internal(
                f"Triton only supports 1 dimensional List of String as {kind} for "
                f"'{tensor.name}' for model '{config.name}'"
            )


def _sequence_tensors(config: Any) -> tuple[list[str], list[str]]:
    """The control and state inputs a sequence model takes, and its state outputs."""
    if not config.HasField("sequence_batching"):
        return [], []
    settings = config.sequence_batching
    inputs = [c.name for c in settings.control_input]
    inputs += [s.input_name for s in settings.state]
    return inputs, [s.output_name for s in settings.state]


def _check_states(config: Any, convention: str) -> None:
    if not config.HasField("sequence_batching") or not config.sequence_batching.state:
        return
    if convention != NAMED_INDEX:
        raise InvalidArgument(
            f"PyTorch model '{config.name}' is using sequence batching with state but not all "
            "inputs and outputs follow the <name>__<index> naming convention. "
        )


def _datatypes(config: Any) -> dict[str, str]:
    found = {t.name: wire_datatype(t.data_type) for t in config.output}
    if config.HasField("sequence_batching"):
        for state in config.sequence_batching.state:
            found[state.output_name] = wire_datatype(state.data_type)
    return found
