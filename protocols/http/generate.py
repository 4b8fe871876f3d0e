"""Triton's generate extension: one flat JSON object in, one flat JSON object per response out.

Mapped as tritonserver 2.51's ``HandleGenerate`` maps it: a top-level key that names a
model input becomes that input (datatype and shape from the model configuration); any
other key, and each key of the ``parameters`` object, becomes a request parameter (an
input name there is an input too). Reserved infer parameters (``sequence_id``,
``timeout``, ...) get no meaning here: they reach the model as plain parameters. A
response is ``model_name``, ``model_version``, ``id`` when set, each response parameter
and each output (its one element when it has one, else a flat list), keys sorted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np
import orjson

from triton_kernel.kernel.datatypes import NUMPY_DTYPES
from triton_kernel.kernel.errors import Internal, InvalidArgument, KernelError
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.kernel.validation import Signature, TensorSpec

from .codec import check_json_elements, flatten_json, json_data

#: Triton's answer when ``generate`` (not ``generate_stream``) gets other than one response.
NOT_ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model "
    "that generates various number of responses"
)
#: The one key with a nested mapping (Triton's generate request schema).
PARAMETERS = "parameters"
_INT64 = range(-(2**63), 2**63)


def decode_generate(
    signature: Signature, model_name: str, model_version: int, body: bytes
) -> InferenceRequest:
    """The request a generate body describes; errors in Triton's words and check order."""
    document = _parse(body)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise Internal("Unable to parse 'id': attempt to access JSON non-string as string")
    request = InferenceRequest(model_name, {}, model_version=model_version, id=request_id)
    _Mapper(signature, request).map(document)
    return request


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise Internal("failed to parse the request JSON buffer: The document is empty. at 0")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Internal(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise Internal("attempt to get members for non-object")
    return document


class _Mapper:
    """Maps the keys of a generate body onto one request's inputs and parameters."""

    def __init__(self, signature: Signature, request: InferenceRequest) -> None:
        self.specs = signature.inputs
        self.batch = (-1,) if signature.max_batch_size > 0 else ()
        self.request = request

    def map(self, document: dict[str, Any]) -> None:
        for key, value in document.items():
            if key == PARAMETERS:
                self.map_nested(value)
            else:
                self.map_key(key, value)

    def map_nested(self, value: Any) -> None:
        if PARAMETERS in self.specs:
            raise InvalidArgument(
                f"Keyword '{PARAMETERS}' for nested schema also given as input tensor name"
            )
        if not isinstance(value, dict):
            raise Internal(
                f"Expected JSON object for keyword: '{PARAMETERS}': attempt to access JSON "
                "non-object as object"
            )
        try:
            for key, item in value.items():
                self.map_key(key, item)
        except KernelError as exc:
            raise type(exc)(f"Converting keyword: '{PARAMETERS}': {exc.message}") from None

    def map_key(self, key: str, value: Any) -> None:
        spec = self.specs.get(key)
        if spec is None:
            self.request.parameters[key] = _parameter(key, value)
            return
        if key in self.request.inputs:
            prefix = f"[request id: {self.request.id or '<id_unknown>'}] "
            raise InvalidArgument(f"{prefix}input '{key}' already exists in request")
        self.request.inputs[key] = _tensor(spec, self.batch + spec.dims, value)


def _parameter(key: str, value: Any) -> str | int | float | bool:
    """A request parameter: string, bool, int64, or a double (as rapidjson reads JSON)."""
    if value is None or isinstance(value, (dict, list)):
        raise InvalidArgument(
            f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'."
        )
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return float(value)
    return value


def _tensor(spec: TensorSpec, dims: tuple[int, ...], value: Any) -> Tensor:
    """One input: a scalar or a list, shaped by the configuration (Triton's two passes)."""
    count = len(value) if isinstance(value, list) else 1
    flat = flatten_json(value) if isinstance(value, list) else [value]
    if spec.datatype == "BYTES" and not all(isinstance(item, str) for item in flat):
        raise Internal(
            "Unable to parse JSON bytes array: attempt to access JSON non-string as string"
        )
    shape = _deduce_shape(spec.name, dims, count)
    if spec.datatype in ("FP16", "BF16"):
        raise InvalidArgument(
            f"receiving {spec.datatype} data via JSON is not supported. Please use the binary "
            f"data format for input {spec.name}"
        )
    check_json_elements(spec.name, spec.datatype, flat[:count])
    if len(flat) != count:
        raise Internal("Unable to parse 'data': Shape does not match true shape of 'data' field")
    if spec.datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = [item.encode("utf-8", "surrogatepass") for item in flat]
    else:
        array = np.asarray(flat, dtype=NUMPY_DTYPES[spec.datatype])
    return Tensor(spec.name, spec.datatype, array.reshape(shape))


def _deduce_shape(name: str, dims: tuple[int, ...], count: int) -> tuple[int, ...]:
    """Fixed dims divide the element count; the innermost -1 takes the rest, others are 1."""
    error = InvalidArgument(
        f"The schema can not convert input '{name}' to tensor with proper shape"
    )
    remaining = count
    for dim in dims:
        if dim != -1:
            if dim <= 0 or remaining % dim:
                raise error
            remaining //= dim
    shape = list(dims)
    for index in reversed(range(len(shape))):
        if shape[index] == -1:
            shape[index], remaining = remaining, 1
    if remaining != 1:
        raise error
    return tuple(shape)


# --- responses -----------------------------------------------------------------------------


def encode_generate(response: InferenceResponse) -> bytes:
    """One response as Triton's flat JSON object (reserved keys win over parameters and
    parameters over outputs of the same name, as Triton's ``std::map::emplace`` does)."""
    document: dict[str, Any] = {}
    if response.id:
        document["id"] = response.id
    document["model_name"] = response.model_name
    document["model_version"] = response.model_version
    for key, value in response.parameters.items():
        document.setdefault(key, value)
    for tensor in response.outputs:
        if tensor.datatype in ("FP16", "BF16"):
            raise InvalidArgument(
                f"sending {tensor.datatype} data via JSON is not supported. Please use the "
                "binary data format for output"
            )
        data = json_data(tensor)
        document.setdefault(tensor.name, data[0] if len(data) == 1 else data)
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def error_document(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def documents(
    responses: AsyncIterator[InferenceResponse],
) -> AsyncIterator[tuple[bytes, bool]]:
    """Each response's JSON document, and whether it is an error (flag-only ones are skipped).

    A failure (an error response, or the request failing) becomes ``{"error": ...}``
    in its place; whether the first document is an error sets the status Triton sends.
    Closing this iterator closes ``responses``, which cancels the request.
    """
    async with aclosing(responses):
        try:
            async for response in responses:
                if not response.flag_only:
                    yield _document(response)
        except KernelError as exc:
            yield error_document(exc.message), True


def _document(response: InferenceResponse) -> tuple[bytes, bool]:
    if response.error is not None:
        return error_document(response.error.message), True
    try:
        return encode_generate(response), False
    except KernelError as exc:
        return error_document(exc.message), True


def sse_event(document: bytes) -> bytes:
    """One server-sent event carrying ``document``, framed as Triton frames it."""
    return b"data: " + document + b"\n\n"
