"""Checks of an inference request against its model's configuration, with Triton's messages.

A ``Signature`` is computed once per loaded model version so that the per-request
checks are plain dictionary and tuple comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from triton_kernel.protocols.proto.model_config import DATA_TYPE

from .datatypes import config_to_wire
from .errors import InvalidArgument
from .request import InferenceRequest


@dataclass(slots=True, frozen=True)
class TensorSpec:
    name: str
    #: Wire datatype name (``FP32``, ``BYTES``).
    datatype: str
    #: Dims without the batch dimension; -1 is variable.
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(slots=True, frozen=True)
class Signature:
    """A model's inputs and outputs as requests are checked against them."""

    model_name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @classmethod
    def from_config(cls, config: Any) -> Signature:
        return cls(
            config.name,
            config.max_batch_size,
            {t.name: _spec(t, t.optional) for t in config.input},
            {t.name: _spec(t, False) for t in config.output},
        )


def _spec(tensor: Any, optional: bool) -> TensorSpec:
    datatype = config_to_wire(DATA_TYPE.values_by_number[tensor.data_type].name)
    return TensorSpec(tensor.name, datatype, tuple(tensor.dims), optional)


def _prefix(request: InferenceRequest) -> str:
    return f"[request id: {request.id or '<id_unknown>'}] "


def validate_request(request: InferenceRequest, signature: Signature) -> None:
    """Raise ``InvalidArgument`` unless ``request`` fits the model's inputs and outputs."""
    model = signature.model_name
    for input_name in request.inputs:
        if input_name not in signature.inputs:
            raise InvalidArgument(
                f"{_prefix(request)}unexpected inference input '{input_name}' for model '{model}'"
            )
    _check_required_inputs(request, signature)
    batched = _check_batch_size(request, signature)
    for input_name, tensor in request.inputs.items():
        spec = signature.inputs[input_name]
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"{_prefix(request)}inference input '{input_name}' data-type is "
                f"'{tensor.datatype}', but model '{model}' expects '{spec.datatype}'"
            )
        _check_shape(request, model, spec, tensor.shape, batched)
    for requested in request.outputs:
        if signature.outputs and requested.name not in signature.outputs:
            raise InvalidArgument(
                f"{_prefix(request)}unexpected inference output '{requested.name}' "
                f"for model '{model}'"
            )


def _check_required_inputs(request: InferenceRequest, signature: Signature) -> None:
    required = [name for name, spec in signature.inputs.items() if not spec.optional]
    missing = [name for name in required if name not in request.inputs]
    if missing:
        got = ", ".join(f"'{name}'" for name in request.inputs)
        want = ", ".join(f"'{name}'" for name in missing)
        raise InvalidArgument(
            f"{_prefix(request)}expected {len(required)} inputs but got "
            f"{len(request.inputs)} inputs for model '{signature.model_name}'. Got input(s) "
            f"[{got}], but missing required input(s) [{want}]. Please provide all required "
            "input(s)."
        )


def _check_batch_size(request: InferenceRequest, signature: Signature) -> bool:
    """Whether the request carries a batch dimension (checked against max_batch_size)."""
    if signature.max_batch_size <= 0 or not request.inputs:
        return False
    sizes = {tensor.shape[0] if tensor.shape else 0 for tensor in request.inputs.values()}
    batch = max(sizes)
    if len(sizes) > 1 or batch < 1 or batch > signature.max_batch_size:
        raise InvalidArgument(
            f"{_prefix(request)}inference request batch-size must be <= "
            f"{signature.max_batch_size} for '{signature.model_name}'"
        )
    return True


def _check_shape(
    request: InferenceRequest,
    model: str,
    spec: TensorSpec,
    shape: tuple[int, ...],
    batched: bool,
) -> None:
    actual = shape[1:] if batched else shape
    dims = spec.dims
    if len(dims) == len(actual) and all(d in (-1, a) for d, a in zip(dims, actual, strict=True)):
        return
    expected = ((-1,) if batched else ()) + dims
    raise InvalidArgument(
        f"{_prefix(request)}unexpected shape for input '{spec.name}' for model "
        f"'{model}'. Expected {_fmt(expected)}, got {_fmt(shape)}. "
    )


def _fmt(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
