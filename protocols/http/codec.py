"""Infer bodies in and out: JSON tensors and Triton's binary tensor data extension.

Inputs sent as binary become numpy arrays over the received body (no copy). Each
check that guards memory (element counts, byte sizes) runs before anything is allocated.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np
import orjson

from triton_kernel.kernel.datatypes import (
    DATATYPES,
    ELEMENT_SIZES,
    NUMPY_DTYPES,
    check_string_count,
    decode_bytes_input,
)
from triton_kernel.kernel.errors import Internal, InvalidArgument
from triton_kernel.kernel.request import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    sequence_flags,
)
from triton_kernel.kernel.shared_memory import BYTE_SIZE, OFFSET, REGION
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.kernel.validation import Signature

#: Request parameters with a meaning to the server; they are not passed to the model.
RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)
_DATA_FIELDS = (
    "Input must set only one of the following fields: 'data', 'binary_data_size' in "
    "'parameters', 'shared_memory_region' in 'parameters'. "
)
_UNSIGNED = "JSON non-unsigned-integer as unsigned-integer"
_SIGNED = "JSON non-signed-integer as signed-integer"
_DOUBLE = "JSON non-number as double"


def _unparsable(what: str, problem: str) -> Internal:
    """Triton answers a JSON member of the wrong kind with 500 and this wording."""
    return Internal(f"Unable to parse '{what}': attempt to access {problem}")


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
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise _unparsable("id", "JSON non-string as string")
    parameters = _request_parameters(document.get("parameters", {}))
    decoder = _InputDecoder(model_name, request_id, binary)
    inputs = decoder.decode_all(document)
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
        raise Internal(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise _unparsable("inputs", "non-existing object member 'inputs'")
    return document


def _request_parameters(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Internal("failed to get request params.: attempt to get members for non-object")
    for key, item in value.items():
        if item is None or isinstance(item, (dict, list)):
            raise InvalidArgument(
                f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or "
                "'string'."
            )
    for key in ("binary_data_output", "sequence_start", "sequence_end"):
        if key in value and not isinstance(value[key], bool):
            raise _unparsable(key, "JSON non-boolean as boolean")
    return value


class _InputDecoder:
    """Decodes the ``inputs`` of one request, consuming its binary section in order."""

    def __init__(self, model: str, request_id: str, binary: memoryview) -> None:
        self.model = model
        self.prefix = f"[request id: {request_id or '<id_unknown>'}] "
        self.binary = binary
        self.offset = 0
        #: A size error that Triton reports only after the whole body parsed.
        self.deferred: InvalidArgument | None = None

    def decode_all(self, document: dict[str, Any]) -> dict[str, Tensor]:
        if "inputs" not in document:
            raise _unparsable("inputs", "non-existing object member 'inputs'")
        inputs: dict[str, Tensor] = {}
        for item in _list(document["inputs"], "inputs"):
            tensor = self.decode(item)
            if tensor.name in inputs:
                raise InvalidArgument(
                    f"{self.prefix}input '{tensor.name}' already exists in request"
                )
            inputs[tensor.name] = tensor
        if self.offset != len(self.binary):
            raise InvalidArgument(f"unexpected additional input data for model '{self.model}'")
        if self.deferred is not None:
            raise self.deferred
        return inputs

    def decode(self, item: Any) -> Tensor:
        """One input; the checks run in Triton's order so that the first error matches."""
        if not isinstance(item, dict):
            raise InvalidArgument(_DATA_FIELDS + "But no field is set")
        name = _string(item, "name")
        datatype = _string(item, "datatype")
        shape = _shape(item)
        if datatype not in DATATYPES:
            raise InvalidArgument(f"invalid datatype for input {name}")
        parameters = item.get("parameters", {})
        parameters = parameters if isinstance(parameters, dict) else {}
        size = parameters.get("binary_data_size")
        _check_one_source(item, parameters)
        count = _element_count(shape)
        if size is not None:
            array = self.from_binary(name, datatype, shape, count, size)
        elif "data" in item:
            array = self.from_json(name, datatype, shape, count, item["data"])
        else:  # the kernel reads it from the region (``shared_memory_*`` parameters)
            _shared_memory_reference(parameters)
            array = np.broadcast_to(np.zeros((), NUMPY_DTYPES[datatype]), shape)
        extra = {k: v for k, v in parameters.items() if k != "binary_data_size"}
        return Tensor(name, datatype, array, extra or None)

    def from_binary(
        self, name: str, datatype: str, shape: tuple[int, ...], count: int, size: Any
    ) -> np.ndarray:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _unparsable("binary_data_size", _UNSIGNED)
        if self.offset + size > len(self.binary):
            raise InvalidArgument(
                f"unexpected size for input '{name}', expecting {size} additional bytes for "
                f"model '{self.model}'"
            )
        data = self.binary[self.offset : self.offset + size]
        self.offset += size
        if datatype == "BYTES":
            return decode_bytes_input(
                data, shape, count, name=name, model=self.model, prefix=self.prefix
            )
        expected = count * ELEMENT_SIZES[datatype]
        if len(data) != expected:
            self.deferred = self.deferred or InvalidArgument(
                f"{self.prefix}input byte size mismatch for input '{name}' for model "
                f"'{self.model}'. Expected {expected}, got {len(data)}"
            )
            return np.empty(0, dtype=NUMPY_DTYPES[datatype])
        return np.frombuffer(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)

    def check_string_count(self, name: str, count: int, found: int) -> None:
        check_string_count(count, found, name=name, model=self.model, prefix=self.prefix)

    def from_json(
        self, name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any
    ) -> np.ndarray:
        if datatype in ("FP16", "BF16"):
            raise InvalidArgument(
                f"receiving {datatype} data via JSON is not supported. Please use the binary "
                f"data format for input {name}"
            )
        if not isinstance(data, list):
            raise _unparsable("data", "JSON non-array as array")
        flat = flatten_json(data)
        check_json_elements(name, datatype, flat)
        if datatype == "BYTES":
            self.check_string_count(name, count, len(flat))
            array = np.empty(count, dtype=np.object_)
            array[:] = [value.encode("utf-8", "surrogatepass") for value in flat]
            return array.reshape(shape)
        if len(flat) != count:
            raise Internal(
                "Unable to parse 'data': Shape does not match true shape of 'data' field"
            )
        return np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def _check_one_source(item: dict[str, Any], parameters: dict[str, Any]) -> None:
    """An input's data comes from exactly one place: JSON, the binary section or a region."""
    sources = [
        name
        for name, present in (
            ("data", "data" in item),
            ("binary_data_size", parameters.get("binary_data_size") is not None),
            ("shared_memory_region", REGION in parameters),
        )
        if present
    ]
    if len(sources) != 1:
        found = " ".join(f"'{name}'" for name in sources)
        raise InvalidArgument(
            _DATA_FIELDS + (f"But set {found}" if sources else "But no field is set")
        )


def _shared_memory_reference(parameters: dict[str, Any]) -> None:
    """Triton's type checks of a tensor's ``shared_memory_*`` parameters (the kernel
    resolves the region); the offset and byte size are ignored without a region."""
    if REGION not in parameters:
        return
    if not isinstance(parameters[REGION], str):
        raise _unparsable(REGION, "JSON non-string as string")
    for key in (OFFSET, BYTE_SIZE):
        value = parameters.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            raise _unparsable(key, _UNSIGNED)


def _shape(item: dict[str, Any]) -> tuple[int, ...]:
    if "shape" not in item:
        raise _unparsable("shape", "non-existing object member 'shape'")
    shape = item["shape"]
    if not isinstance(shape, list):
        raise _unparsable("shape", "JSON non-array as array")
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim < 2**63:
            raise _unparsable("shape", _UNSIGNED)
    return tuple(shape)


def _element_count(shape: tuple[int, ...]) -> int:
    """Python integers: a shape like [2**62, 2**62] is refused, never allocated."""
    count, extent = 1, 1
    for dim in shape:
        count *= dim
        extent *= max(dim, 1)  # numpy refuses [0, 2**62] too: count the non-zero dims
    if extent * 8 >= 2**63:  # numpy's limit on bytes, for the widest (8-byte) elements
        raise InvalidArgument(f"the element count of shape {list(shape)} overflows")
    return count


def _is_int(low: int, high: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: datatype -> (element check, Triton's wording for an element of the wrong kind).
_JSON_ELEMENT_CHECKS = {
    "BOOL": (lambda v: isinstance(v, bool), "JSON non-boolean as boolean"),
    "UINT8": (_is_int(0, 2**8 - 1), _UNSIGNED),
    "UINT16": (_is_int(0, 2**16 - 1), _UNSIGNED),
    "UINT32": (_is_int(0, 2**32 - 1), _UNSIGNED),
    "UINT64": (_is_int(0, 2**64 - 1), _UNSIGNED),
    "INT8": (_is_int(-(2**7), 2**7 - 1), _SIGNED),
    "INT16": (_is_int(-(2**15), 2**15 - 1), _SIGNED),
    "INT32": (_is_int(-(2**31), 2**31 - 1), _SIGNED),
    "INT64": (_is_int(-(2**63), 2**63 - 1), _SIGNED),
    "FP32": (_is_number, _DOUBLE),
    "FP64": (_is_number, _DOUBLE),
    "BYTES": (lambda v: isinstance(v, str), "JSON non-string as string"),
}


#: datatype -> the element types that need no closer look, and the range of integers.
_PLAIN_ELEMENTS: dict[str, tuple[frozenset[type], tuple[int, int] | None]] = {
    "BOOL": (frozenset({bool}), None),
    "FP32": (frozenset({float, int}), None),
    "FP64": (frozenset({float, int}), None),
    "BYTES": (frozenset({str}), None),
    **{
        f"{kind}{bits}": (frozenset({int}), (low, high))
        for bits in (8, 16, 32, 64)
        for kind, low, high in (
            ("UINT", 0, 2**bits - 1),
            ("INT", -(2 ** (bits - 1)), 2 ** (bits - 1) - 1),
        )
    },
}


def check_json_elements(name: str, datatype: str, flat: list[Any]) -> None:
    types, bounds = _PLAIN_ELEMENTS[datatype]
    if set(map(type, flat)) <= types and (
        bounds is None or not flat or (bounds[0] <= min(flat) and max(flat) <= bounds[1])
    ):
        return  # the common case, checked in C: every element of a plain, fitting type
    check, problem = _JSON_ELEMENT_CHECKS[datatype]
    for value in flat:
        if check(value):
            continue
        if datatype == "BYTES":
            raise Internal(
                "Unable to parse JSON bytes array: attempt to access JSON non-string as string"
            )
        if (
            problem in (_SIGNED, _UNSIGNED)
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            in_kind = problem == _SIGNED or value >= 0
            if in_kind and -(2**63) <= value < 2**64:  # Triton wraps these; we refuse them
                raise InvalidArgument(
                    f"value {value} of input '{name}' is out of range for {datatype}"
                )
        raise _unparsable("data", problem)


def flatten_json(data: list[Any]) -> list[Any]:
    """The elements of a nested JSON array, row-major."""
    if list not in set(map(type, data)):  # already flat (parsed JSON: exact types)
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(flatten_json(item) if isinstance(item, list) else [item])
    return flat


def _decode_output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict):
        raise _unparsable("name", "non-existing object member 'name'")
    parameters = item.get("parameters", {})
    parameters = parameters if isinstance(parameters, dict) else {}
    _check_shared_memory_output(parameters)
    name = _string(item, "name")
    class_count = parameters.get("classification", 0)
    if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
        raise Internal(f"Unable to set 'classification': attempt to access {_UNSIGNED}")
    if "binary_data" in parameters and not isinstance(parameters["binary_data"], bool):
        raise _unparsable("binary_data", "JSON non-boolean as boolean")
    _shared_memory_reference(parameters)
    return RequestedOutput(name, class_count, parameters)


def _check_shared_memory_output(parameters: dict[str, Any]) -> None:
    """An output written to shared memory is neither classified nor sent as binary data."""
    if REGION not in parameters:
        return
    if "classification" in parameters:
        raise InvalidArgument("Output can't set both 'shared_memory_region' and 'classification'")
    binary = parameters.get("binary_data", False)
    if not isinstance(binary, bool):
        raise Internal("Unable to set 'binary_data': attempt to access JSON non-boolean as boolean")
    if binary:
        raise InvalidArgument("Output can't set both 'shared_memory_region' and 'binary_data'")


def _apply_reserved(request: InferenceRequest, parameters: dict[str, Any]) -> None:
    if not parameters:
        return  # the request's defaults stand
    sequence_id = parameters.get("sequence_id", 0)
    if (
        not isinstance(sequence_id, (int, str))
        or isinstance(sequence_id, bool)
        or (isinstance(sequence_id, int) and not 0 <= sequence_id < 2**64)
    ):
        raise _unparsable("sequence_id", "JSON non-string as string")
    request.correlation_id = sequence_id
    request.flags = sequence_flags(parameters)
    for key in ("priority", "timeout"):
        value = parameters.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _unparsable(key, _UNSIGNED)
    request.priority = parameters.get("priority", 0)
    request.timeout_us = parameters.get("timeout", 0)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _unparsable(what, "JSON non-array as array")
    return value


def _string(item: dict[str, Any], key: str) -> str:
    if key not in item:
        raise _unparsable(key, f"non-existing object member '{key}'")
    value = item[key]
    if not isinstance(value, str):
        raise _unparsable(key, "JSON non-string as string")
    return value


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
        if tensor.parameters and REGION in tensor.parameters:
            pass  # written to shared memory: Triton answers with the metadata only
        elif wants_binary.get(tensor.name, binary_default):
            data = tensor.to_bytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif tensor.datatype in ("FP16", "BF16"):
            raise InvalidArgument(
                f"sending {tensor.datatype} data via JSON is not supported. Please use the "
                "binary data format for output"
            )
        else:
            entry["data"] = json_data(tensor)
        encoded.append(entry)
    document["outputs"] = encoded
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [_text(item) for item in flat]
    return flat.tolist()


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def decode_raw_request(
    model_name: str, model_version: int, body: bytes, signature: Signature
) -> InferenceRequest:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``).

    The whole body is the model's only input, batch 1; its shape comes from the
    configuration, with at most one variable dimension deduced from the byte count.
    """
    prefix = "[request id: <id_unknown>] "
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            f"{prefix}Raw request must only have 1 input (found 1) to be deduced but got "
            f"{len(signature.inputs)} inputs in '{model_name}' model configuration"
        )
    (spec,) = signature.inputs.values()
    batch = (1,) if signature.max_batch_size > 0 else ()
    if spec.datatype == "BYTES":
        if spec.dims not in ((1,), (-1,)):
            raise InvalidArgument(
                f"{prefix}For BYTE datatype raw input '{spec.name}', the model must have input "
                "shape [1]"
            )
        array = np.empty(1, dtype=np.object_)
        array[0] = bytes(body)
        return InferenceRequest(
            model_name,
            {spec.name: Tensor(spec.name, "BYTES", array.reshape((*batch, 1)))},
            model_version=model_version,
        )
    shape = batch + _deduce_dims(spec.dims, len(body), ELEMENT_SIZES[spec.datatype], spec.name)
    expected = ELEMENT_SIZES[spec.datatype] * prod(shape)
    if expected != len(body):
        raise InvalidArgument(
            f"{prefix}input byte size mismatch for input '{spec.name}' for model "
            f"'{model_name}'. Expected {expected}, got {len(body)}"
        )
    array = np.frombuffer(body, dtype=NUMPY_DTYPES[spec.datatype]).reshape(shape)
    tensor = Tensor(spec.name, spec.datatype, array)
    return InferenceRequest(model_name, {spec.name: tensor}, model_version=model_version)


def _deduce_dims(dims: tuple[int, ...], size: int, itemsize: int, name: str) -> tuple[int, ...]:
    variable = [i for i, dim in enumerate(dims) if dim == -1]
    if not variable:
        return dims
    if len(variable) > 1:
        raise InvalidArgument(
            f"raw input '{name}' has more than one variable-size dimension: its shape cannot "
            "be deduced from the request body"
        )
    known = prod(dim for dim in dims if dim != -1) * itemsize
    return tuple(size // known if dim == -1 else dim for dim in dims) if known else dims
