"""Checks of an inference request against its model's configuration, with Triton's messages.

A ``Signature`` is computed once per loaded model version so that the per-request
checks are plain dictionary and tuple comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from .config import wire_datatype
from .datatypes import ELEMENT_SIZES
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
    #: Names of the inputs that are not ``optional``.
    required: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any) -> Signature:
        return cls(
            config.name,
            config.max_batch_size,
            {t.name: _spec(t, t.optional) for t in config.input},
            {t.name: _spec(t, False) for t in config.output},
            tuple(t.name for t in config.input if not t.optional),
        )


def _spec(tensor: Any, optional: bool) -> TensorSpec:
    datatype = wire_datatype(tensor.data_type)
    return TensorSpec(tensor.name, datatype, tuple(tensor.dims), optional)


def request_prefix(request: InferenceRequest) -> str:
    """How Triton names a request at the start of its errors."""
    return f"[request id: {request.id or '<id_unknown>'}] "


def validate_request(request: InferenceRequest, signature: Signature) -> None:
    """Raise ``InvalidArgument`` unless ``request`` fits the model's inputs and outputs."""
    model = signature.model_name
    _check_input_names(request, signature)
    batched = _check_batch_size(request, signature)
    for input_name, tensor in request.inputs.items():
        spec = signature.inputs[input_name]
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"{request_prefix(request)}inference input '{input_name}' data-type is "
                f"'{tensor.datatype}', but model '{model}' expects '{spec.datatype}'"
            )
        _check_shape(request, model, spec, tensor.shape, batched)
    for requested in request.outputs:
        if signature.outputs and requested.name not in signature.outputs:
            raise InvalidArgument(
                f"{request_prefix(request)}unexpected inference output '{requested.name}' "
                f"for model '{model}'"
            )


def _check_input_names(request: InferenceRequest, signature: Signature) -> None:
    """Triton counts inputs before it names unknown ones, and names missing ones after."""
    required = signature.required
    has_optional = len(required) != len(signature.inputs)
    if not has_optional and len(request.inputs) != len(required):
        _raise_input_count(request, signature)
    for input_name in request.inputs:
        if input_name not in signature.inputs:
            raise InvalidArgument(
                f"unexpected inference input '{input_name}' for model '{signature.model_name}'"
            )
    if any(name not in request.inputs for name in required):
        _raise_input_count(request, signature)


def _raise_input_count(request: InferenceRequest, signature: Signature) -> None:
    required = signature.required
    missing = [name for name in required if name not in request.inputs]
    got = ",".join(f"'{name}'" for name in request.inputs)
    want = ",".join(f"'{name}'" for name in missing)
    want = f"[{want}]" if want else "]"
    raise InvalidArgument(
        f"{request_prefix(request)}expected {len(required)} inputs but got "
        f"{len(request.inputs)} inputs for model '{signature.model_name}'. Got input(s) "
        f"[{got}], but missing required input(s) {want}. Please provide all required "
        "input(s)."
    )


def _check_batch_size(request: InferenceRequest, signature: Signature) -> bool:
    """Whether the request carries a batch dimension (checked against max_batch_size)."""
    if signature.max_batch_size <= 0 or not request.inputs:
        return False
    model = signature.model_name
    batch = None
    for name, tensor in request.inputs.items():
        if not tensor.shape:
            return True  # reported as a shape without its batch dimension
        if batch is not None and tensor.shape[0] != batch:
            raise InvalidArgument(
                f"{request_prefix(request)}input '{name}' batch size does not match other inputs "
                f"for '{model}'"
            )
        batch = tensor.shape[0]
    if batch is not None and batch > signature.max_batch_size:
        raise InvalidArgument(
            f"{request_prefix(request)}inference request batch-size must be <= "
            f"{signature.max_batch_size} for '{model}'"
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
        if batched and shape[0] == 0 and spec.datatype in ELEMENT_SIZES:
            expected_bytes = ELEMENT_SIZES[spec.datatype] * max(1, prod(actual))
            raise InvalidArgument(
                f"{request_prefix(request)}input byte size mismatch for input '{spec.name}' "
                f"for model '{model}'. Expected {expected_bytes}, got 0"
            )
        return
    expected = ((-1,) if batched else ()) + dims
    note = _BATCH_NOTE if batched else ""  # Triton adds it whenever max_batch_size > 0
    raise InvalidArgument(
        f"{request_prefix(request)}unexpected shape for input '{spec.name}' for model "
        f"'{model}'. Expected {_fmt(expected)}, got {_fmt(shape)}. {note}"
    )


_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size."
)


def _fmt(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
