"""HTTP infer bodies: JSON tensors, the binary tensor data extension, and their errors."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import numpy as np
import pytest

from triton_kernel.kernel.errors import Internal, InvalidArgument, KernelError
from triton_kernel.kernel.request import InferenceResponse, RequestedOutput
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.protocols.http.codec import decode_request, encode_response

#: What a strict xfail raises when ``pytest.raises`` sees no exception.
_DID_NOT_RAISE = pytest.fail.Exception


def _body(document: dict[str, Any], *chunks: bytes) -> tuple[bytes, int | None]:
    header = json.dumps(document).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _decode(document: Any, *chunks: bytes) -> Any:
    body, header_length = _body(document, *chunks)
    request, _ = decode_request("model", 3, body, header_length)
    return request


def _input(name: str, datatype: str, shape: list[int], **fields: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **fields}


def _error(document: Any, *chunks: bytes, kind: type[KernelError] = InvalidArgument) -> str:
    with pytest.raises(KernelError) as info:
        _decode(document, *chunks)
    assert type(info.value) is kind, str(info.value)
    return str(info.value)


def _internal(document: Any, *chunks: bytes) -> str:
    """Triton answers JSON members of the wrong kind with 500 (INTERNAL) and rapidjson's words."""
    return _error(document, *chunks, kind=Internal)


_DATA_FIELDS = (
    "Input must set only one of the following fields: 'data', 'binary_data_size' in "
    "'parameters', 'shared_memory_region' in 'parameters'. "
)
_UNSIGNED = "JSON non-unsigned-integer as unsigned-integer"
_SIGNED = "JSON non-signed-integer as signed-integer"
_DOUBLE = "JSON non-number as double"


# --- JSON inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("BOOL", [True, False, True], np.bool_),
        ("UINT8", [0, 128, 255], np.uint8),
        ("UINT16", [0, 1, 65535], np.uint16),
        ("UINT32", [0, 1, 2**32 - 1], np.uint32),
        ("UINT64", [0, 1, 2**64 - 1], np.uint64),
        ("INT8", [-128, 0, 127], np.int8),
        ("INT16", [-(2**15), 0, 2**15 - 1], np.int16),
        ("INT32", [-(2**31), 0, 2**31 - 1], np.int32),
        ("INT64", [-(2**63), 0, 2**63 - 1], np.int64),
        ("FP32", [1.5, -2.25, 3], np.float32),
        ("FP64", [1e300, -0.1, 7], np.float64),
    ],
)
def test_json_input_of_each_datatype(datatype: str, data: list[Any], dtype: type) -> None:
    request = _decode({"inputs": [_input("X", datatype, [3], data=data)]})
    tensor = request.inputs["X"]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("X", datatype, (3,))
    assert tensor.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(tensor.data, np.array(data, dtype=dtype))


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_json_fp16_and_bf16_inputs_are_refused_as_in_triton(datatype: str) -> None:
    assert _error({"inputs": [_input("X", datatype, [1], data=[1.0])]}) == (
        f"receiving {datatype} data via JSON is not supported. Please use the binary data "
        "format for input X"
    )


def test_json_bytes_input_is_an_object_array_of_utf8_bytes() -> None:
    request = _decode({"inputs": [_input("S", "BYTES", [2, 2], data=["a", "", "é", "xyz"])]})
    tensor = request.inputs["S"]
    assert tensor.data.dtype == np.object_
    assert tensor.shape == (2, 2)
    assert tensor.data.tolist() == [[b"a", b""], ["é".encode(), b"xyz"]]


def test_nested_and_flat_json_data_decode_alike() -> None:
    shapes = (
        [1, 2, 3, 4, 5, 6],
        [[1, 2, 3], [4, 5, 6]],
        [[[1, 2, 3]], [[4, 5, 6]]],
        [[1, 2], 3, [4, [5, 6]]],
    )
    for data in shapes:
        request = _decode({"inputs": [_input("X", "INT32", [2, 3], data=data)]})
        assert request.inputs["X"].data.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_scalar_and_empty_shapes() -> None:
    request = _decode(
        {
            "inputs": [
                _input("S", "FP32", [], data=[2.5]),
                _input("E", "FP32", [0, 3], data=[]),
            ]
        }
    )
    assert request.inputs["S"].shape == ()
    assert float(request.inputs["S"].data) == 2.5
    assert request.inputs["E"].shape == (0, 3)


def test_json_element_count_must_match_the_shape() -> None:
    message = _internal({"inputs": [_input("X", "FP32", [2, 2], data=[1.0, 2.0, 3.0])]})
    assert message == "Unable to parse 'data': Shape does not match true shape of 'data' field"


def test_json_bytes_element_count_must_match_the_shape() -> None:
    assert _error({"inputs": [_input("S", "BYTES", [2], data=["a"])]}) == (
        "[request id: <id_unknown>] expected 2 string elements for inference input 'S' for "
        "model 'model', got 1"
    )
    assert _error({"id": "r", "inputs": [_input("S", "BYTES", [1], data=["a", "b"])]}) == (
        "[request id: r] unexpected number of string elements 2 for inference input 'S' for "
        "model 'model', expecting 1"
    )


def test_json_data_must_be_an_array() -> None:
    message = _internal({"inputs": [_input("X", "FP32", [1], data=1.0)]})
    assert message == "Unable to parse 'data': attempt to access JSON non-array as array"


@pytest.mark.parametrize(
    ("datatype", "value", "problem"),
    [
        ("FP32", "1.0", _DOUBLE),
        ("FP32", True, _DOUBLE),
        ("FP32", None, _DOUBLE),
        ("FP64", {"v": 1.0}, _DOUBLE),
        ("INT32", 1.5, _SIGNED),
        ("INT64", True, _SIGNED),
        ("INT8", "1", _SIGNED),
        ("UINT8", -1, _UNSIGNED),
        ("UINT32", 1.0, _UNSIGNED),
        ("UINT64", -1, _UNSIGNED),
        ("BOOL", "true", "JSON non-boolean as boolean"),
        ("BOOL", 1, "JSON non-boolean as boolean"),
        ("BOOL", 0.0, "JSON non-boolean as boolean"),
    ],
)
def test_json_elements_of_the_wrong_kind(datatype: str, value: Any, problem: str) -> None:
    message = _internal({"inputs": [_input("X", datatype, [2], data=[value, value])]})
    assert message == f"Unable to parse 'data': attempt to access {problem}"


@pytest.mark.parametrize("value", [3, None, True, {"s": "a"}])
def test_json_bytes_elements_must_be_strings(value: Any) -> None:
    message = _internal({"inputs": [_input("S", "BYTES", [1], data=[value])]})
    assert (
        message == "Unable to parse JSON bytes array: attempt to access JSON non-string as string"
    )


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 256),
        ("UINT16", 2**16),
        ("UINT32", 2**32),
        ("INT8", -129),
        ("INT8", 128),
        ("INT16", 2**15),
        ("INT32", 2**31),
        ("INT32", -(2**31) - 1),
        ("INT64", 2**63),
    ],
)
def test_json_integers_out_of_range_are_refused(datatype: str, value: int) -> None:
    # Triton wraps these silently; refusing them is the safe reading of the request.
    message = _error({"inputs": [_input("X", datatype, [1], data=[value])]})
    assert message == f"value {value} of input 'X' is out of range for {datatype}"


# --- binary inputs ----------------------------------------------------------------------


def test_binary_input_is_a_view_over_the_body() -> None:
    values = np.arange(6, dtype=np.float32)
    document = {
        "inputs": [_input("X", "FP32", [2, 3], parameters={"binary_data_size": values.nbytes})]
    }
    header = json.dumps(document).encode()
    body = bytearray(header + values.tobytes())
    request, binary_output = decode_request("model", 3, body, len(header))  # type: ignore[arg-type]
    tensor = request.inputs["X"]
    assert binary_output is False
    assert tensor.data.dtype == np.float32
    np.testing.assert_array_equal(tensor.data, values.reshape(2, 3))
    assert tensor.parameters is None  # binary_data_size is consumed, not passed on
    body[len(header) : len(header) + 4] = struct.pack("<f", 42.0)
    assert tensor.data[0, 0] == 42.0  # no copy was made


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("BOOL", np.array([True, False])),
        ("UINT8", np.array([1, 255], np.uint8)),
        ("INT16", np.array([-3, 3], np.int16)),
        ("UINT64", np.array([2**64 - 1, 0], np.uint64)),
        ("INT64", np.array([-(2**63), 5], np.int64)),
        ("FP16", np.array([0.5, -2], np.float16)),
        ("FP32", np.array([0.5, -2], np.float32)),
        ("FP64", np.array([1e-300, 3], np.float64)),
        ("BF16", np.array([0x3FC0, 0x7F80], np.uint16)),
    ],
)
def test_binary_input_of_each_datatype(datatype: str, array: np.ndarray) -> None:
    request = _decode(
        {"inputs": [_input("X", datatype, [2], parameters={"binary_data_size": array.nbytes})]},
        array.tobytes(),
    )
    assert request.inputs["X"].data.dtype == array.dtype
    np.testing.assert_array_equal(request.inputs["X"].data, array)


def test_binary_bytes_input() -> None:
    payload = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0) + struct.pack("<I", 1) + b"\xff"
    request = _decode(
        {"inputs": [_input("S", "BYTES", [3, 1], parameters={"binary_data_size": len(payload)})]},
        payload,
    )
    tensor = request.inputs["S"]
    assert tensor.shape == (3, 1)
    assert tensor.data.tolist() == [[b"abc"], [b""], [b"\xff"]]


def test_binary_bytes_input_with_wrong_element_count() -> None:
    payload = struct.pack("<I", 1) + b"a"
    message = _error(
        {"inputs": [_input("S", "BYTES", [2], parameters={"binary_data_size": len(payload)})]},
        payload,
    )
    assert message == (
        "[request id: <id_unknown>] expected 2 string elements for inference input 'S' for "
        "model 'model', got 1"
    )
    message = _error(
        {"inputs": [_input("S", "BYTES", [1], parameters={"binary_data_size": 2 * len(payload)})]},
        payload * 2,
    )
    assert "unexpected number of string elements 2 for inference input 'S'" in message


def test_binary_bytes_input_truncated() -> None:
    payload = struct.pack("<I", 10) + b"abc"
    message = _error(
        {"inputs": [_input("S", "BYTES", [1], parameters={"binary_data_size": len(payload)})]},
        payload,
    )
    assert message == (
        "incomplete string data for inference input 'S', expecting string of length 10 but "
        "only 3 bytes available"
    )
    message = _error(
        {"inputs": [_input("S", "BYTES", [1], parameters={"binary_data_size": 2})]}, b"\x01\x00"
    )
    assert message == (
        "[request id: <id_unknown>] incomplete string length indicator for inference input "
        "'S' for model 'model', expecting 4 bytes but only 2 bytes available. Please make "
        "sure the string length indicator is in one buffer."
    )


def test_mixed_json_and_binary_inputs_take_binary_data_in_order() -> None:
    a = np.array([1, 2, 3], np.int32)
    c = np.array([[0.5, 1.5]], np.float64)
    document = {
        "inputs": [
            _input("A", "INT32", [3], parameters={"binary_data_size": a.nbytes}),
            _input("B", "FP32", [2], data=[7.0, 8.0]),
            _input("C", "FP64", [1, 2], parameters={"binary_data_size": c.nbytes}),
        ],
        "outputs": [{"name": "OUT", "parameters": {"binary_data": True}}],
    }
    request = _decode(document, a.tobytes(), c.tobytes())
    assert list(request.inputs) == ["A", "B", "C"]
    np.testing.assert_array_equal(request.inputs["A"].data, a)
    assert request.inputs["B"].data.tolist() == [7.0, 8.0]
    np.testing.assert_array_equal(request.inputs["C"].data, c)


def test_zero_size_binary_input() -> None:
    request = _decode(
        {"inputs": [_input("X", "FP32", [0, 4], parameters={"binary_data_size": 0})]}, b""
    )
    assert request.inputs["X"].shape == (0, 4)


def test_leftover_binary_bytes_are_an_error() -> None:
    data = np.zeros(2, np.float32).tobytes()
    message = _error(
        {"inputs": [_input("X", "FP32", [2], parameters={"binary_data_size": 8})]},
        data + b"\x00\x00",
    )
    assert message == "unexpected additional input data for model 'model'"
    message = _error({"inputs": [_input("X", "FP32", [1], data=[1.0])]}, b"\x00\x00\x00\x00")
    assert message == "unexpected additional input data for model 'model'"


def test_binary_data_size_past_the_end() -> None:
    message = _error(
        {"inputs": [_input("X", "FP32", [4], parameters={"binary_data_size": 16})]},
        b"\x00" * 12,
    )
    assert (
        message == "unexpected size for input 'X', expecting 16 additional bytes for model 'model'"
    )


def test_second_binary_input_past_the_end() -> None:
    document = {
        "inputs": [
            _input("A", "UINT8", [4], parameters={"binary_data_size": 4}),
            _input("B", "UINT8", [4], parameters={"binary_data_size": 4}),
        ]
    }
    message = _error(document, b"\x01" * 6)
    assert (
        message == "unexpected size for input 'B', expecting 4 additional bytes for model 'model'"
    )


def test_binary_size_must_match_the_shape() -> None:
    message = _error(
        {"id": "7", "inputs": [_input("X", "FP32", [3], parameters={"binary_data_size": 8})]},
        b"\x00" * 8,
    )
    assert message == (
        "[request id: 7] input byte size mismatch for input 'X' for model 'model'. "
        "Expected 12, got 8"
    )


@pytest.mark.parametrize("size", [-1, 1.5, "8", True])
def test_binary_data_size_must_be_an_unsigned_integer(size: Any) -> None:
    document = {"inputs": [_input("X", "UINT8", [1], parameters={"binary_data_size": size})]}
    assert _internal(document, b"\x00") == (
        f"Unable to parse 'binary_data_size': attempt to access {_UNSIGNED}"
    )


def test_data_and_binary_data_size_are_exclusive() -> None:
    document = {
        "inputs": [_input("X", "FP32", [1], data=[1.0], parameters={"binary_data_size": 4})]
    }
    assert _error(document, b"\x00" * 4) == _DATA_FIELDS + "But set 'data' 'binary_data_size'"


@pytest.mark.parametrize("binary", [False, True])
def test_element_count_overflow_is_rejected_before_allocating(binary: bool) -> None:
    fields: dict[str, Any] = {"parameters": {"binary_data_size": 0}} if binary else {"data": []}
    start = time.perf_counter()
    message = _error({"inputs": [_input("X", "FP32", [2**62, 2**62], **fields)]})
    assert time.perf_counter() - start < 1.0
    assert message == (
        "the element count of shape [4611686018427387904, 4611686018427387904] overflows"
    )


def test_huge_but_representable_shape_fails_on_size_not_memory() -> None:
    message = _error(
        {"inputs": [_input("X", "FP64", [2**30, 2**20], parameters={"binary_data_size": 8})]},
        b"\x00" * 8,
    )
    assert message.endswith(f"Expected {8 * 2**50}, got 8")
    message = _internal({"inputs": [_input("X", "FP64", [2**30, 2**20], data=[1.0])]})
    assert "Shape does not match" in message
    message = _error(
        {"inputs": [_input("X", "FP64", [2**40, 2**20], parameters={"binary_data_size": 8})]},
        b"\x00" * 8,
    )
    assert "overflows" in message


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_empty_tensor_with_a_huge_dimension(datatype: str) -> None:
    """numpy cannot even describe such a shape: a clear 400, not a crash."""
    with pytest.raises(InvalidArgument, match="overflows"):
        _decode(
            {"inputs": [_input("X", datatype, [0, 2**62], parameters={"binary_data_size": 0})]},
            b"",
        )


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ([-1], _UNSIGNED),
        ([2, -3], _UNSIGNED),
        ([2.0], _UNSIGNED),
        ([True], _UNSIGNED),
        ([0, 2**63], _UNSIGNED),
        ("2", "JSON non-array as array"),
        ({"0": 2}, "JSON non-array as array"),
        (None, "JSON non-array as array"),
    ],
)
def test_bad_shapes(shape: Any, problem: str) -> None:
    message = _internal({"inputs": [_input("X", "FP32", shape, data=[1.0, 2.0])]})
    assert message == f"Unable to parse 'shape': attempt to access {problem}"


def test_missing_shape() -> None:
    message = _internal({"inputs": [{"name": "X", "datatype": "FP32", "data": [1.0]}]})
    assert (
        message == "Unable to parse 'shape': attempt to access non-existing object member 'shape'"
    )


# --- request document errors ------------------------------------------------------------


@pytest.mark.parametrize("document", [[], "text", 3, None, {"outputs": []}])
def test_body_without_inputs(document: Any) -> None:
    assert _internal(document) == (
        "Unable to parse 'inputs': attempt to access non-existing object member 'inputs'"
    )


def test_body_must_be_json() -> None:
    with pytest.raises(Internal, match="failed to parse the request JSON buffer"):
        decode_request("model", 1, b"{not json", None)


def test_header_length_splits_json_from_binary() -> None:
    # Binary data that is not valid JSON after the header must not reach the JSON parser.
    body, length = _body(
        {"inputs": [_input("X", "UINT8", [2], parameters={"binary_data_size": 2})]}, b"}{"
    )
    request, _ = decode_request("model", 1, body, length)
    assert request.inputs["X"].data.tobytes() == b"}{"


@pytest.mark.parametrize("inputs", [{}, "x", None])
def test_inputs_must_be_an_array(inputs: Any) -> None:
    assert _internal({"inputs": inputs}) == (
        "Unable to parse 'inputs': attempt to access JSON non-array as array"
    )


def test_input_that_is_not_an_object() -> None:
    assert _error({"inputs": [3]}) == _DATA_FIELDS + "But no field is set"


def test_empty_inputs_are_accepted() -> None:
    assert _decode({"inputs": []}).inputs == {}


@pytest.mark.parametrize("request_id", [3, None, ["a"], {"a": 1}])
def test_id_must_be_a_string(request_id: Any) -> None:
    assert _internal({"id": request_id, "inputs": []}) == (
        "Unable to parse 'id': attempt to access JSON non-string as string"
    )


def test_input_name_and_datatype_are_required() -> None:
    assert _internal({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}) == (
        "Unable to parse 'name': attempt to access non-existing object member 'name'"
    )
    assert _internal({"inputs": [{"name": "X", "shape": [1], "data": [1]}]}) == (
        "Unable to parse 'datatype': attempt to access non-existing object member 'datatype'"
    )
    assert _internal({"inputs": [_input(3, "FP32", [1], data=[1])]}) == (
        "Unable to parse 'name': attempt to access JSON non-string as string"
    )


def test_unknown_datatype() -> None:
    assert _error({"inputs": [_input("X", "FLOAT", [1], data=[1.0])]}) == (
        "invalid datatype for input X"
    )


def test_input_needs_data_or_binary_size() -> None:
    assert _error({"inputs": [_input("X", "FP32", [1])]}) == _DATA_FIELDS + "But no field is set"
    document = {"inputs": [_input("X", "FP32", [1], parameters={"binary_data_size": None})]}
    assert _error(document) == _DATA_FIELDS + "But no field is set"


def test_duplicate_input() -> None:
    document = {"inputs": [_input("X", "FP32", [1], data=[1]), _input("X", "FP32", [1], data=[2])]}
    assert _error(document) == "[request id: <id_unknown>] input 'X' already exists in request"


def test_request_parameters_must_be_an_object_of_scalars() -> None:
    assert _internal({"inputs": [], "parameters": []}) == (
        "failed to get request params.: attempt to get members for non-object"
    )
    for value in (None, [1], {"b": 1}):
        assert _error({"inputs": [], "parameters": {"a": value}}) == (
            "parameter 'a' has invalid type. It should be either 'int', 'bool', or 'string'."
        )


# --- request fields ----------------------------------------------------------------------


def test_request_fields() -> None:
    document = {
        "id": "req-1",
        "inputs": [_input("X", "FP32", [1], data=[1.0], parameters={"custom": "v"})],
        "outputs": [
            {"name": "PROB", "parameters": {"classification": 3}},
            {"name": "RAW", "parameters": {"binary_data": False}},
            {"name": "PLAIN"},
        ],
        "parameters": {
            "binary_data_output": True,
            "sequence_id": 42,
            "sequence_start": True,
            "sequence_end": True,
            "priority": 2,
            "timeout": 1000,
            "user_key": "user_value",
            "user_int": 5,
            "user_flag": False,
        },
    }
    body, _ = _body(document)
    request, binary_output = decode_request("model", 3, body, None)
    assert (request.model_name, request.model_version, request.id) == ("model", 3, "req-1")
    assert binary_output is True
    assert request.inputs["X"].parameters == {"custom": "v"}
    assert [o.name for o in request.outputs] == ["PROB", "RAW", "PLAIN"]
    assert [o.class_count for o in request.outputs] == [3, 0, 0]
    assert request.outputs[1].parameters == {"binary_data": False}
    assert request.parameters == {"user_key": "user_value", "user_int": 5, "user_flag": False}
    assert (request.correlation_id, request.flags) == (42, 3)
    assert (request.priority, request.timeout_us) == (2, 1000)


def test_request_defaults() -> None:
    request, binary_output = decode_request("m", -1, b'{"inputs": []}', None)
    assert binary_output is False
    assert (request.id, request.outputs, request.parameters) == ("", [], {})
    assert (request.correlation_id, request.flags, request.priority, request.timeout_us) == (
        0,
        0,
        0,
        0,
    )


def test_string_sequence_id_and_end_only() -> None:
    request = _decode(
        {"inputs": [], "parameters": {"sequence_id": "session-a", "sequence_end": True}}
    )
    assert (request.correlation_id, request.flags) == ("session-a", 2)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("sequence_id", 1.5, "JSON non-string as string"),
        ("sequence_id", True, "JSON non-string as string"),
        ("sequence_start", 1, "JSON non-boolean as boolean"),
        ("sequence_end", "yes", "JSON non-boolean as boolean"),
        ("binary_data_output", 1, "JSON non-boolean as boolean"),
        ("priority", -1, _UNSIGNED),
        ("priority", "1", _UNSIGNED),
        ("timeout", 1.0, _UNSIGNED),
    ],
)
def test_reserved_parameter_types(key: str, value: Any, problem: str) -> None:
    assert _internal({"inputs": [], "parameters": {key: value}}) == (
        f"Unable to parse '{key}': attempt to access {problem}"
    )


def test_negative_sequence_id_is_refused() -> None:
    assert _internal({"inputs": [], "parameters": {"sequence_id": -5}}) == (
        "Unable to parse 'sequence_id': attempt to access JSON non-string as string"
    )


@pytest.mark.parametrize("count", [-1, 1.5, "3", True])
def test_classification_count_must_be_an_unsigned_integer(count: Any) -> None:
    document = {"inputs": [], "outputs": [{"name": "P", "parameters": {"classification": count}}]}
    assert _internal(document) == f"Unable to set 'classification': attempt to access {_UNSIGNED}"


def test_binary_data_flag_must_be_a_boolean() -> None:
    document = {"inputs": [], "outputs": [{"name": "P", "parameters": {"binary_data": 1}}]}
    assert _internal(document) == (
        "Unable to parse 'binary_data': attempt to access JSON non-boolean as boolean"
    )


def test_outputs_must_be_named_objects_in_an_array() -> None:
    for outputs in ([{}], [3]):
        assert _internal({"inputs": [], "outputs": outputs}) == (
            "Unable to parse 'name': attempt to access non-existing object member 'name'"
        )
    assert _internal({"inputs": [], "outputs": {}}) == (
        "Unable to parse 'outputs': attempt to access JSON non-array as array"
    )


# --- responses ----------------------------------------------------------------------------


def _response(*outputs: Tensor, **fields: Any) -> InferenceResponse:
    return InferenceResponse("model", "3", outputs=list(outputs), **fields)


def test_json_response() -> None:
    response = _response(
        Tensor("F", "FP32", np.array([[1.5, 2.0]], np.float32)),
        Tensor("I", "INT64", np.array([-1, 2**40], np.int64)),
        Tensor("B", "BOOL", np.array([True, False])),
        Tensor("S", "BYTES", np.array([b"ab", b"\xff", "text"], dtype=np.object_)),
        id="req-9",
        parameters={"sequence_id": 1},
    )
    body, header_length = encode_response(response, [], False)
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "model",
        "model_version": "3",
        "id": "req-9",
        "parameters": {"sequence_id": 1},
        "outputs": [
            {"name": "F", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]},
            {"name": "I", "datatype": "INT64", "shape": [2], "data": [-1, 2**40]},
            {"name": "B", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            {"name": "S", "datatype": "BYTES", "shape": [3], "data": ["ab", "\ufffd", "text"]},
        ],
    }


@pytest.mark.parametrize(
    ("datatype", "array"),
    [("FP16", np.array([1.5], np.float16)), ("BF16", np.array([0x3FC0], np.uint16))],
)
def test_fp16_and_bf16_outputs_go_binary_only(datatype: str, array: np.ndarray) -> None:
    with pytest.raises(InvalidArgument) as info:
        encode_response(_response(Tensor("H", datatype, array)), [], False)
    assert str(info.value) == (
        f"sending {datatype} data via JSON is not supported. Please use the binary data "
        "format for output"
    )
    body, header_length = encode_response(_response(Tensor("H", datatype, array)), [], True)
    header, binary = _split(body, header_length)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 2}
    assert binary == array.tobytes()


def test_response_without_id_or_parameters_omits_them() -> None:
    body, _ = encode_response(_response(), [], False)
    assert json.loads(body) == {"model_name": "model", "model_version": "3", "outputs": []}


def _split(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    assert header_length is not None
    return json.loads(body[:header_length]), body[header_length:]


def test_binary_response_by_request_default() -> None:
    f = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([b"x", b""], dtype=np.object_)
    body, header_length = encode_response(
        _response(Tensor("F", "FP32", f), Tensor("S", "BYTES", s)), [], True
    )
    header, binary = _split(body, header_length)
    assert header["outputs"] == [
        {"name": "F", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
        {"name": "S", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 9}},
    ]
    assert binary == f.tobytes() + struct.pack("<I", 1) + b"x" + struct.pack("<I", 0)


def test_per_output_binary_data_overrides_the_default() -> None:
    a = np.array([1, 2], np.int32)
    b = np.array([3.0], np.float64)
    outputs = [
        RequestedOutput("A", parameters={"binary_data": True}),
        RequestedOutput("B", parameters={"binary_data": False}),
    ]
    response = _response(Tensor("A", "INT32", a), Tensor("B", "FP64", b), Tensor("C", "INT8", a))
    body, header_length = encode_response(response, outputs, False)
    header, binary = _split(body, header_length)
    first, second, third = header["outputs"]
    assert first["parameters"] == {"binary_data_size": 8}
    assert second["data"] == [3.0]
    assert "parameters" not in second
    assert third["data"] == [1, 2]  # not requested by name: the request default (JSON)
    assert binary == a.tobytes()
    # ... and the other way round: JSON asked per output, binary by default.
    outputs = [RequestedOutput("A", parameters={"binary_data": False})]
    body, header_length = encode_response(
        _response(Tensor("A", "INT32", a), Tensor("B", "FP64", b)), outputs, True
    )
    header, binary = _split(body, header_length)
    assert header["outputs"][0]["data"] == [1, 2]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert binary == b.tobytes()


def test_requested_output_without_binary_parameter_uses_the_default() -> None:
    a = np.array([1, 2], np.int32)
    body, header_length = encode_response(
        _response(Tensor("A", "INT32", a)), [RequestedOutput("A")], True
    )
    _, binary = _split(body, header_length)
    assert binary == a.tobytes()


def test_binary_response_of_a_non_contiguous_tensor() -> None:
    base = np.arange(12, dtype=np.int16).reshape(3, 4)
    view = base[:, ::2]
    body, header_length = encode_response(_response(Tensor("V", "INT16", view)), [], True)
    header, binary = _split(body, header_length)
    assert header["outputs"][0]["shape"] == [3, 2]
    assert binary == np.ascontiguousarray(view).tobytes()


def test_binary_response_of_a_scalar() -> None:
    body, header_length = encode_response(
        _response(Tensor("S", "FP32", np.array(2.5, np.float32))), [], True
    )
    header, binary = _split(body, header_length)
    assert header["outputs"][0]["shape"] == []
    assert binary == struct.pack("<f", 2.5)


def test_binary_response_of_an_empty_tensor() -> None:
    empty = np.zeros((0, 3), np.float32)
    body, header_length = encode_response(_response(Tensor("E", "FP32", empty)), [], True)
    header, binary = _split(body, header_length)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 0}
    assert binary == b""


def test_json_response_of_an_empty_tensor() -> None:
    empty = np.zeros((0, 3), np.float32)
    body, header_length = encode_response(_response(Tensor("E", "FP32", empty)), [], False)
    assert header_length is None
    assert json.loads(body)["outputs"][0] == {
        "name": "E",
        "datatype": "FP32",
        "shape": [0, 3],
        "data": [],
    }


# --- with tritonclient's own encoder and decoder (no sockets) ---------------------------


def test_tritonclient_request_body_decodes() -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    s = np.array([[b"hello"], [b""]], dtype=np.object_)
    inputs = [
        httpclient.InferInput("X", [2, 4], "FP32"),
        httpclient.InferInput("S", [2, 1], "BYTES"),
        httpclient.InferInput("J", [3], "INT32"),
    ]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(s, binary_data=True)
    inputs[2].set_data_from_numpy(np.array([1, -2, 3], np.int32), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("Y", binary_data=True, class_count=2)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs, request_id="abc", sequence_id=5, sequence_start=True, priority=1
    )
    request, _ = decode_request("model", 1, body, json_size)
    assert request.id == "abc"
    np.testing.assert_array_equal(request.inputs["X"].data, x)
    assert request.inputs["S"].data.tolist() == [[b"hello"], [b""]]
    assert request.inputs["J"].data.tolist() == [1, -2, 3]
    assert (request.correlation_id, request.flags, request.priority) == (5, 1, 1)
    assert request.outputs[0].name == "Y"
    assert request.outputs[0].class_count == 2


def test_tritonclient_reads_the_response_body() -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    f = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([b"a", b"bc"], dtype=np.object_)
    i = np.array([7, 8], np.int64)
    outputs = [
        RequestedOutput("F", parameters={"binary_data": True}),
        RequestedOutput("S", parameters={"binary_data": True}),
        RequestedOutput("I", parameters={"binary_data": False}),
    ]
    response = _response(
        Tensor("F", "FP32", f), Tensor("S", "BYTES", s), Tensor("I", "INT64", i), id="r"
    )
    body, header_length = encode_response(response, outputs, False)
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("F"), f)
    assert result.as_numpy("S").tolist() == [b"a", b"bc"]
    np.testing.assert_array_equal(result.as_numpy("I"), i)
    assert result.get_response()["id"] == "r"


def test_byte_size_mismatch_is_reported_after_the_rest_of_the_body() -> None:
    document = {
        "inputs": [
            _input("A", "FP32", [3], parameters={"binary_data_size": 8}),
            _input("B", "FLOAT", [1], data=[1.0]),
        ]
    }
    assert _error(document, b"\x00" * 8) == "invalid datatype for input B"
    document["inputs"][1] = _input("B", "FP32", [1], data=[1.0])
    assert _error(document, b"\x00" * 8).endswith(
        "input byte size mismatch for input 'A' for model 'model'. Expected 12, got 8"
    )
