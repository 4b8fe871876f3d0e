"""ModelInfer messages in and out: protobuf's upb classes, raw contents as views.

``raw_input_contents`` of a large request become numpy arrays over the received
message (no copy): :func:`split_raw_contents` slices them out before the rest is
parsed. Outputs are appended to the encoded reply as views of their arrays, with no
intermediate list or message copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triton_kernel.kernel.datatypes import (
    DATATYPES,
    ELEMENT_SIZES,
    NUMPY_DTYPES,
    check_string_count,
    decode_bytes_input,
)
from triton_kernel.kernel.errors import InvalidArgument
from triton_kernel.kernel.request import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    sequence_flags,
)
from triton_kernel.kernel.shared_memory import BYTE_SIZE, OFFSET, REGION
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.protocols.proto.grpc_service import ModelInferRequest, ModelInferResponse

#: Request parameters with a meaning to the server; they are not passed to the model.
RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "binary_data_output",
        "triton_enable_empty_final_response",
    }
)

#: Below this size a request is parsed whole: copying a few kilobytes costs less than
#: walking the message in Python to slice them out.
ZERO_COPY_THRESHOLD = 64 * 1024
_RAW_INPUT_TAG = (7 << 3) | 2  # raw_input_contents: field 7, length-delimited
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])  # raw_output_contents: field 6


# --- wire helpers ----------------------------------------------------------------------


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if offset >= len(data):
            raise InvalidArgument("malformed ModelInferRequest: truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise InvalidArgument("malformed ModelInferRequest: varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_raw_contents(data: bytes) -> tuple[bytes | memoryview, list[memoryview]]:
    """The message without its ``raw_input_contents``, and those as views over ``data``."""
    view = memoryview(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    offset, end = 0, len(view)
    while offset < end:
        start = offset
        tag, offset = _varint(view, offset)
        wire_type = tag & 7
        if wire_type == 0:
            _, offset = _varint(view, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == 2:
            length, offset = _varint(view, offset)
            if tag == _RAW_INPUT_TAG:
                if offset + length > end:
                    raise InvalidArgument("malformed ModelInferRequest: truncated field")
                raw.append(view[offset : offset + length])
                offset += length
                continue
            offset += length
        else:
            raise InvalidArgument(f"malformed ModelInferRequest: wire type {wire_type}")
        if offset > end:
            raise InvalidArgument("malformed ModelInferRequest: truncated field")
        rest.append(view[start:offset])
    return b"".join(rest), raw


def parse_infer_request(data: bytes) -> tuple[Any, list[Any]]:
    """The request message and its raw input contents (views for large requests)."""
    if len(data) < ZERO_COPY_THRESHOLD:
        message = ModelInferRequest.FromString(data)
        return message, list(message.raw_input_contents)
    rest, raw = split_raw_contents(data)
    return ModelInferRequest.FromString(rest), raw


# --- requests ----------------------------------------------------------------------------


def parameters_of(parameters: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a plain dict."""
    result = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        result[key] = getattr(parameter, choice) if choice else None
    return result


def model_version(text: str) -> int:
    """A version string as Triton reads it ("" is -1: the version the policy serves)."""
    if not text:
        return -1
    try:
        version = int(text)
    except ValueError:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{text}' "
            "(details: stol), version should be an integral value > 0"
        ) from None
    if version < 0:
        raise InvalidArgument(
            f"invalid model version specified '{text}' , version should be an integral value > 0"
        )
    return version


def decode_infer_request(message: Any, raw: list[Any]) -> tuple[InferenceRequest, bool]:
    """The kernel request a ModelInferRequest carries, and whether empty finals are wanted.

    Extra ``raw_input_contents`` beyond the inputs are ignored, as Triton ignores them.
    Inputs read from shared memory take no raw contents: the next raw-fed input takes them.
    """
    name = message.model_name
    parameters = _request_parameters(message.parameters) if message.parameters else {}
    decoder = _InputDecoder(name, message.id)
    inputs: dict[str, Tensor] = {}
    index = 0
    for tensor in message.inputs:
        described = bool(tensor.parameters)  # (most inputs carry no parameters)
        if (described and _shared_memory_reference(tensor)) or (
            raw and tensor.HasField("contents")
        ):
            data = None
        else:
            data, index = (raw[index], index + 1) if index < len(raw) else (None, index)
        decoded = decoder.decode(tensor, data, bool(raw), described)
        if decoded.name in inputs:
            raise InvalidArgument(
                f"{decoder.prefix}input '{decoded.name}' already exists in request"
            )
        inputs[decoded.name] = decoded
    request = InferenceRequest(
        name,
        inputs,
        model_version=model_version(message.model_version),
        id=message.id,
        outputs=[_requested_output(output) for output in message.outputs],
        parameters={k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS},
    )
    if parameters:
        _apply_reserved(request, parameters)
    return request, parameters.get("triton_enable_empty_final_response", False)


#: Reserved request parameters -> the ``InferParameter`` fields Triton accepts for each.
_RESERVED_TYPES = {
    "sequence_id": ("int64_param", "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
    "priority": ("int64_param", "uint64_param"),
    "timeout": ("int64_param",),
    "triton_enable_empty_final_response": ("bool_param",),
}
_MODEL_PARAMETER_TYPES = ("int64_param", "bool_param", "string_param")


def _expected(fields: tuple[str, ...]) -> str:
    if len(fields) == 1:
        return f"{fields[0]}."
    if len(fields) == 2:
        return f"{fields[0]} or {fields[1]}."
    return f"{', '.join(fields[:-1])}, or {fields[-1]}."


def _request_parameters(parameters: Any) -> dict[str, Any]:
    """Request parameters, type-checked as Triton checks them."""
    result: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        allowed = _RESERVED_TYPES.get(key, _MODEL_PARAMETER_TYPES)
        if key.startswith("triton_") and key not in _RESERVED_TYPES:
            raise InvalidArgument(
                "parameter keys starting with 'triton_' are reserved for Triton usage. Only "
                "the following keys starting with 'triton_' are allowed: "
                "triton_enable_empty_final_response"
            )
        if choice not in allowed:
            raise InvalidArgument(
                f"invalid value type for '{key}' parameter, expected {_expected(allowed)}"
            )
        result[key] = getattr(parameter, choice)
    return result


#: datatype -> the typed ``InferTensorContents`` field that carries it.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


#: A typed contents field -> the datatype Triton names when it is the wrong one.
_CONTENTS_TYPE = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}


class _InputDecoder:
    """Decodes the inputs of one request, from raw contents or typed contents."""

    __slots__ = ("model", "request_id")

    def __init__(self, model: str, request_id: str) -> None:
        self.model = model
        self.request_id = request_id

    @property
    def prefix(self) -> str:
        """What Triton's messages about a request's inputs start with."""
        return f"[request id: {self.request_id or '<id_unknown>'}] "

    def decode(self, tensor: Any, raw: Any, raw_used: bool, described: bool) -> Tensor:
        """One input; ``described``: it has parameters (shared memory among them)."""
        name, datatype = tensor.name, tensor.datatype
        if datatype not in DATATYPES:
            raise InvalidArgument(f"{self.prefix}invalid datatype for input {name}")
        shape = tuple(tensor.shape)
        count = self.element_count(name, shape)
        if described and REGION in tensor.parameters:
            return self.from_shared_memory(tensor, shape)
        if raw_used and tensor.HasField("contents"):
            raise InvalidArgument(
                f"contents field must not be specified when using raw_input_contents for "
                f"'{name}' for model '{self.model}'"
            )
        if raw is not None:
            array = self.from_raw(name, datatype, shape, count, raw)
        else:
            array = self.from_contents(name, datatype, shape, count, tensor.contents)
        extra = parameters_of(tensor.parameters) if described else None
        return Tensor(name, datatype, array, extra or None)

    def from_shared_memory(self, tensor: Any, shape: tuple[int, ...]) -> Tensor:
        """A placeholder of the input's shape; the kernel reads the data from the region."""
        if tensor.HasField("contents"):
            raise InvalidArgument(
                "unexpected 'content' provided when using shared memory for input tensor "
                f"'{tensor.name}' for model '{self.model}'"
            )
        array = np.broadcast_to(np.zeros((), NUMPY_DTYPES[tensor.datatype]), shape)
        return Tensor(tensor.name, tensor.datatype, array, parameters_of(tensor.parameters))

    def element_count(self, name: str, shape: tuple[int, ...]) -> int:
        count, extent = 1, 1
        for dim in shape:
            if dim < 0:
                raise InvalidArgument(
                    f"{self.prefix}All input dimensions should be specified for input '{name}' "
                    f"for model '{self.model}', got [{','.join(map(str, shape))}]"
                )
            count *= dim
            extent *= max(dim, 1)
        if extent * 8 >= 2**63:
            raise InvalidArgument(f"the element count of shape {list(shape)} overflows")
        return count

    def size_mismatch(self, name: str, expected: int, got: int) -> InvalidArgument:
        return InvalidArgument(
            f"{self.prefix}input byte size mismatch for input '{name}' for model "
            f"'{self.model}'. Expected {expected}, got {got}"
        )

    def from_raw(
        self, name: str, datatype: str, shape: tuple[int, ...], count: int, raw: Any
    ) -> np.ndarray:
        if datatype == "BYTES":
            return decode_bytes_input(
                memoryview(raw), shape, count, name=name, model=self.model, prefix=self.prefix
            )
        expected = count * ELEMENT_SIZES[datatype]
        if len(raw) != expected:
            raise self.size_mismatch(name, expected, len(raw))
        return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).reshape(shape)

    def from_contents(
        self, name: str, datatype: str, shape: tuple[int, ...], count: int, contents: Any
    ) -> np.ndarray:
        populated = [field for field in _CONTENTS_TYPE if len(getattr(contents, field))]
        if not populated:
            if count == 0:
                return np.empty(shape, dtype=NUMPY_DTYPES[datatype])
            raise InvalidArgument(
                f"unable to find data for input tensor '{name}' for model '{self.model}' in "
                "request."
            )
        field = _CONTENTS_FIELD.get(datatype)
        if populated[0] != field:
            raise InvalidArgument(
                f"unexpected explicit tensor data for input tensor '{name}' for model "
                f"'{self.model}' of type '{_CONTENTS_TYPE[populated[0]]}', expected datatype "
                f"'{datatype}'"
            )
        values = getattr(contents, field)
        if datatype == "BYTES":
            check_string_count(count, len(values), name=name, model=self.model, prefix=self.prefix)
            array = np.empty(count, dtype=np.object_)
            array[:] = list(values)
            return array.reshape(shape)
        size = ELEMENT_SIZES[datatype]
        if len(values) != count:
            raise self.size_mismatch(name, count * size, len(values) * size)
        wide = np.array(values, dtype=_WIDE[field])
        return wide.astype(NUMPY_DTYPES[datatype]).reshape(shape)  # narrower types wrap


#: The numpy type each typed contents field holds its values in.
_WIDE = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def _requested_output(output: Any) -> RequestedOutput:
    parameters = parameters_of(output.parameters)
    shared_memory = _shared_memory_reference(output)
    if "classification" in output.parameters:
        choice = output.parameters["classification"].WhichOneof("parameter_choice")
        if choice != "int64_param":
            raise InvalidArgument(
                "invalid value type for 'classification' parameter, expected int64_param"
            )
        if shared_memory:
            raise InvalidArgument(
                "output can't set both 'shared_memory_region' and 'classification'"
            )
    class_count = max(parameters.get("classification", 0), 0)
    return RequestedOutput(output.name, class_count, parameters)


def _shared_memory_reference(tensor: Any) -> bool:
    """Whether the tensor names a region, its ``shared_memory_*`` parameters checked as
    Triton checks them (the kernel resolves the region itself)."""
    parameters = tensor.parameters
    has_region = REGION in parameters
    if has_region and parameters[REGION].WhichOneof("parameter_choice") != "string_param":
        raise _shared_memory_type(REGION, tensor.name, "string_param")
    for key in (OFFSET, BYTE_SIZE):
        if key not in parameters:
            continue
        if not has_region:
            raise InvalidArgument(
                f"'{key}' can not be specified without '{REGION}' parameter for tensor "
                f"'{tensor.name}'"
            )
        if parameters[key].WhichOneof("parameter_choice") != "int64_param":
            raise _shared_memory_type(key, tensor.name, "int64_param")
    if has_region and BYTE_SIZE not in parameters:
        raise InvalidArgument(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor "
            f"'{tensor.name}'"
        )
    return has_region


def _shared_memory_type(key: str, tensor: str, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid value type for '{key}' parameter for tensor '{tensor}', expected {expected}."
    )


def _apply_reserved(request: InferenceRequest, parameters: dict[str, Any]) -> None:
    """The parameters that steer the server (types already checked)."""
    request.correlation_id = parameters.get("sequence_id", 0)
    request.flags = sequence_flags(parameters)
    request.priority = max(parameters.get("priority", 0), 0)
    request.timeout_us = max(parameters.get("timeout", 0), 0)


# --- responses ---------------------------------------------------------------------------


def set_parameters(target: Any, parameters: dict[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` from a dict."""
    for key, value in parameters.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                parameter.uint64_param = value
            else:
                parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


def encode_infer_response(
    response: InferenceResponse, extra: dict[str, Any] | None = None
) -> bytes:
    """A serialized ModelInferResponse; every output travels in ``raw_output_contents``."""
    if not response.parameters and not extra:
        plain = _encode_plain_response(response)
        if plain is not None:
            return plain
    message = ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    set_parameters(message.parameters, response.parameters)
    if extra:
        set_parameters(message.parameters, extra)
    chunks: list[bytes | memoryview] = [b""]
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters and REGION in tensor.parameters:
            chunks += (_RAW_OUTPUT_TAG, b"\x00")  # written to shared memory: empty contents
            continue
        data = tensor.to_bytes()
        chunks += (_RAW_OUTPUT_TAG, _encode_varint(len(data)), data)
    chunks[0] = message.SerializeToString()
    return b"".join(chunks)


def _encode_plain_response(response: InferenceResponse) -> bytes | None:
    """The common response (no parameters anywhere, no shared memory) written field by
    field, as upb would write it: a message object costs more than its few fields.
    Everything but the output data repeats from one response of a model to the next, so
    that part is encoded once per shape. None when the response is not that plain."""
    key: list[Any] = [response.model_name, response.model_version, response.id]
    contents: list[bytes | memoryview] = []
    for tensor in response.outputs:
        if tensor.parameters:
            return None
        data = tensor.to_bytes()
        key += (tensor.name, tensor.datatype, tensor.data.shape)
        contents += (_RAW_OUTPUT_TAG, _encode_varint(len(data)), data)
    cache_key = tuple(key)
    head = _PLAIN_HEADS.get(cache_key)
    if head is None:
        head = _plain_head(response)
        if len(_PLAIN_HEADS) >= _PLAIN_HEADS_MAX:
            _PLAIN_HEADS.clear()  # (ids that change per request: keep the cache small)
        _PLAIN_HEADS[cache_key] = head
    contents[0:0] = (head,)
    return b"".join(contents)


def _plain_head(response: InferenceResponse) -> bytes:
    """A plain response's fields before its raw output contents."""
    chunks: list[bytes] = []
    for tag, text in (
        (_MODEL_NAME_TAG, response.model_name),
        (_MODEL_VERSION_TAG, response.model_version),
        (_ID_TAG, response.id),
    ):
        if text:
            data = text.encode()
            chunks += (tag, _encode_varint(len(data)), data)
    for tensor in response.outputs:
        name, datatype = tensor.name.encode(), tensor.datatype.encode()
        output = [_NAME_TAG, _encode_varint(len(name)), name]
        output += (_DATATYPE_TAG, _encode_varint(len(datatype)), datatype)
        if tensor.shape:
            dims = b"".join([_encode_varint(dim & _UINT64) for dim in tensor.shape])
            output += (_SHAPE_TAG, _encode_varint(len(dims)), dims)
        body = b"".join(output)
        chunks += (_OUTPUT_TAG, _encode_varint(len(body)), body)
    return b"".join(chunks)


#: Encoded heads of plain responses, by their names, id and output names/types/shapes.
_PLAIN_HEADS: dict[tuple[Any, ...], bytes] = {}
_PLAIN_HEADS_MAX = 512


_MODEL_NAME_TAG, _MODEL_VERSION_TAG, _ID_TAG = b"\x0a", b"\x12", b"\x1a"
_OUTPUT_TAG = bytes([(5 << 3) | 2])  # ModelInferResponse.outputs: field 5
_NAME_TAG, _DATATYPE_TAG, _SHAPE_TAG = b"\x0a", b"\x12", b"\x1a"  # InferOutputTensor 1-3
_UINT64 = (1 << 64) - 1


def _length_delimited(field: int, data: bytes) -> list[bytes]:
    return [bytes([(field << 3) | 2]), _encode_varint(len(data)), data]


def encode_stream_response(infer_response: bytes, error_message: str) -> bytes:
    """A serialized ModelStreamInferResponse around an already encoded ModelInferResponse."""
    parts: list[bytes] = []
    if error_message:
        parts += _length_delimited(1, error_message.encode("utf-8"))
    parts += _length_delimited(2, infer_response)
    return b"".join(parts)


def encode_stream_error(message: str, request_id: str) -> bytes:
    """Triton's in-band error for a request that never ran: the message and its id."""
    inner = ModelInferResponse(id=request_id).SerializeToString()
    return encode_stream_response(inner, message)


def encode_error_response(model_name: str, request_id: str, final: bool) -> bytes:
    """The ``infer_response`` beside an in-band error of a request that ran."""
    message = ModelInferResponse(model_name=model_name, id=request_id)
    message.parameters["triton_final_response"].bool_param = final
    return message.SerializeToString()
