"""Infer bodies in and out: JSON tensors and Triton's binary tensor data extension.

Inputs sent as binary become numpy arrays over the received body (no copy). Each
check that guards memory (element counts, byte sizes) runs before anything is allocated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from triton_kernel.kernel.datatypes import (
    DATATYPES,
    ELEMENT_SIZES,
    NUMPY_DTYPES,
    deserialize_bytes,
    serialize_bytes,
)
from triton_kernel.kernel.errors import InvalidArgument
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse, RequestedOutput
from triton_kernel.kernel.tensor import Tensor

#: Request parameters with a meaning to the server; they are not passed to the model.
RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)
_SEQUENCE_START, _SEQUENCE_END = 1, 2


def decode_request(
    model_name: str, model_version: int, body: bytes, header_length: int | None
) -> tuple[InferenceRequest, bool]:
    """The request a body carries, and whether outputs default to binary."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        header, binary = view[:header_length], view[header_length:]
    document = _parse_json(header)
    parameters = _object(document.get("parameters", {}), "parameters")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("Unable to parse 'id': attempt to access JSON non-string as string")
    inputs = _decode_inputs(document, binary)
    outputs = [_decode_output(item) for item in _list(document.get("outputs", []), "outputs")]
    request = InferenceRequest(
        model_name,
        inputs,
        model_version=model_version,
        id=request_id,
        outputs=outputs,
        parameters={k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS},
    )
    _apply_reserved(request, parameters)
    return request, bool(parameters.get("binary_data_output", False))


def _parse_json(header: memoryview) -> dict[str, Any]:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("failed to parse the request JSON buffer: expected a JSON object")
    return document


def _decode_inputs(document: dict[str, Any], binary: memoryview) -> dict[str, Tensor]:
    if "inputs" not in document:
        raise InvalidArgument("Unable to parse 'inputs': missing 'inputs' in the request")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for item in _list(document["inputs"], "inputs"):
        tensor, offset = _decode_input(_object(item, "inputs"), binary, offset)
        if tensor.name in inputs:
            raise InvalidArgument(f"input '{tensor.name}' is specified more than once")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise InvalidArgument(
            f"unexpected additional input data: the request body holds {len(binary)} bytes "
            f"of binary data but its inputs use {offset}"
        )
    return inputs


def _decode_input(item: dict[str, Any], binary: memoryview, offset: int) -> tuple[Tensor, int]:
    name = _string(item, "name", "input")
    datatype = _string(item, "datatype", f"input '{name}'")
    if datatype not in DATATYPES:
        raise InvalidArgument(f"invalid datatype '{datatype}' for input '{name}'")
    shape = _shape(item, name)
    count = _element_count(shape, name)
    parameters = _object(item.get("parameters", {}), f"parameters of input '{name}'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(
                f"input '{name}': 'binary_data_size' must be a non-negative integer"
            )
        if offset + size > len(binary):
            raise InvalidArgument(
                f"unexpected size for input '{name}', expecting {size} bytes but only "
                f"{len(binary) - offset} bytes of binary data remain in the request body"
            )
        array = _from_binary(name, datatype, shape, count, binary[offset : offset + size])
        offset += size
    elif "data" in item:
        array = _from_json(name, datatype, shape, count, item["data"])
    else:
        raise InvalidArgument(f"input '{name}' must have 'data' or a 'binary_data_size' parameter")
    extra = {k: v for k, v in parameters.items() if k != "binary_data_size"}
    return Tensor(name, datatype, array, extra or None), offset


def _shape(item: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidArgument(
            f"Unable to parse 'shape' of input '{name}': expected a list of integers"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"invalid shape {shape} for input '{name}': dimensions must be >= 0")
    return tuple(shape)


def _element_count(shape: tuple[int, ...], name: str) -> int:
    count = 1
    for dim in shape:
        count *= dim
    if count >= 2**63:
        raise InvalidArgument(f"shape {list(shape)} of input '{name}' has too many elements")
    return count


def _from_binary(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: memoryview
) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes(data, count).reshape(shape)
    expected = count * ELEMENT_SIZES[datatype]
    if len(data) != expected:
        raise InvalidArgument(
            f"unexpected size for input '{name}', expecting {expected} bytes for model input "
            f"shape {list(shape)} ({datatype}), got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def _from_json(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any
) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidArgument(
            f"unexpected number of elements for input '{name}': shape {list(shape)} needs "
            f"{count} elements, 'data' holds {len(flat)}"
        )
    checker = _JSON_ELEMENT_CHECKS[datatype]
    for value in flat:
        if not checker(value):
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': value {_short(value)} is not a "
                f"valid {datatype} element"
            )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = [v.encode("utf-8") for v in flat]
        return array.reshape(shape)
    if datatype == "BF16":
        floats = np.asarray(flat, dtype=np.float32)
        return (floats.view(np.uint32) >> 16).astype(np.uint16).reshape(shape)
    try:
        return np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidArgument(f"unable to parse 'data' of input '{name}': {exc}") from None


def _is_int(low: int, high: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_JSON_ELEMENT_CHECKS = {
    "BOOL": lambda v: isinstance(v, bool),
    "UINT8": _is_int(0, 2**8 - 1),
    "UINT16": _is_int(0, 2**16 - 1),
    "UINT32": _is_int(0, 2**32 - 1),
    "UINT64": _is_int(0, 2**64 - 1),
    "INT8": _is_int(-(2**7), 2**7 - 1),
    "INT16": _is_int(-(2**15), 2**15 - 1),
    "INT32": _is_int(-(2**31), 2**31 - 1),
    "INT64": _is_int(-(2**63), 2**63 - 1),
    "FP16": _is_number,
    "FP32": _is_number,
    "FP64": _is_number,
    "BF16": _is_number,
    "BYTES": lambda v: isinstance(v, str),
}


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        if any(isinstance(v, list) for v in data):
            raise InvalidArgument("unable to parse 'data': nested lists must be regular")
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _decode_output(item: Any) -> RequestedOutput:
    item = _object(item, "outputs")
    name = _string(item, "name", "output")
    parameters = _object(item.get("parameters", {}), f"parameters of output '{name}'")
    class_count = parameters.get("classification", 0)
    if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
        raise InvalidArgument(f"output '{name}': 'classification' must be a non-negative integer")
    return RequestedOutput(name, class_count, parameters)


def _apply_reserved(request: InferenceRequest, parameters: dict[str, Any]) -> None:
    sequence_id = parameters.get("sequence_id", 0)
    if not isinstance(sequence_id, (int, str)) or isinstance(sequence_id, bool):
        raise InvalidArgument("'sequence_id' must be an unsigned integer or a string")
    request.correlation_id = sequence_id
    request.flags = (_SEQUENCE_START if parameters.get("sequence_start") else 0) | (
        _SEQUENCE_END if parameters.get("sequence_end") else 0
    )
    for key in ("priority", "timeout"):
        value = parameters.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"'{key}' must be a non-negative integer")
    request.priority = parameters.get("priority", 0)
    request.timeout_us = parameters.get("timeout", 0)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"Unable to parse '{what}': expected a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"Unable to parse '{what}': expected a JSON array")
    return value


def _string(item: dict[str, Any], key: str, what: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"Unable to parse '{key}' of {what}: expected a string")
    return value


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


# --- responses ---------------------------------------------------------------------------


def encode_response(
    response: InferenceResponse, outputs: list[RequestedOutput], binary_default: bool
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    wants_binary = {o.name: bool(o.parameters.get("binary_data", binary_default)) for o in outputs}
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    chunks: list[bytes | memoryview] = []
    encoded = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if wants_binary.get(tensor.name, binary_default):
            data = _tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = _json_data(tensor)
        encoded.append(entry)
    document["outputs"] = encoded
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _tensor_bytes(tensor: Tensor) -> bytes | memoryview:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    data = np.ascontiguousarray(tensor.data)
    return memoryview(data).cast("B")


def _json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [_text(item) for item in flat]
    if tensor.datatype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).tolist()
    return flat.tolist()


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)
