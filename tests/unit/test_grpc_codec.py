"""ModelInfer messages in and out of the kernel: texts, types, and no copies."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from triton_kernel.kernel.errors import InvalidArgument
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.protocols.grpc import codec


def request_bytes(*arrays: np.ndarray, **parameters: object) -> bytes:
    message = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="r")
    for index, array in enumerate(arrays):
        message.inputs.add(name=f"IN{index}", datatype="FP32", shape=array.shape)
        message.raw_input_contents.append(array.tobytes())
    for key, value in parameters.items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        elif isinstance(value, int):
            message.parameters[key].int64_param = value
        else:
            message.parameters[key].string_param = str(value)
    return message.SerializeToString()


def decode(data: bytes) -> InferenceRequest:
    message, raw = codec.parse_infer_request(data)
    request, _ = codec.decode_infer_request(message, raw)
    return request


def test_large_raw_inputs_are_views_over_the_message() -> None:
    big = np.arange(100_000, dtype=np.float32).reshape(1000, 100)
    small = np.ones(3, dtype=np.float32)
    data = request_bytes(big, small)
    request = decode(data)
    tensor = request.inputs["IN0"].data
    np.testing.assert_array_equal(tensor, big)
    assert np.shares_memory(tensor, np.frombuffer(data, dtype=np.uint8))
    np.testing.assert_array_equal(request.inputs["IN1"].data, small)
    assert request.model_version == 2 and request.id == "r"


def test_split_raw_contents_keeps_the_other_fields() -> None:
    data = request_bytes(np.ones(2, np.float32), np.zeros(2, np.float32), flag=True)
    rest, raw = codec.split_raw_contents(data)
    parsed = service_pb2.ModelInferRequest.FromString(bytes(rest))
    assert not parsed.raw_input_contents
    assert [i.name for i in parsed.inputs] == ["IN0", "IN1"]
    assert parsed.parameters["flag"].bool_param is True
    assert [bytes(view) for view in raw] == [np.ones(2, np.float32).tobytes(), bytes(8)]


def test_truncated_message_is_refused() -> None:
    data = request_bytes(np.ones(50_000, np.float32))
    with pytest.raises(InvalidArgument, match="malformed"):
        codec.split_raw_contents(data[:-10])


def test_parameters_are_split_into_reserved_and_model_ones() -> None:
    data = request_bytes(np.ones(1, np.float32), sequence_id=7, sequence_start=True, word="x")
    request = decode(data)
    assert request.correlation_id == 7
    assert request.flags == 1
    assert request.parameters == {"word": "x"}


def test_typed_contents_wrap_like_triton() -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="IN", datatype="UINT8", shape=[2])
    tensor.contents.uint_contents.extend([255, 256])
    request, _ = codec.decode_infer_request(message, [])
    assert request.inputs["IN"].data.tolist() == [255, 0]


def test_bad_version_text() -> None:
    with pytest.raises(InvalidArgument) as info:
        codec.model_version("abc")
    assert str(info.value) == (
        "failed to get model version from specified version string 'abc' (details: stol), "
        "version should be an integral value > 0"
    )


def test_response_outputs_are_raw_in_order() -> None:
    response = InferenceResponse(
        "m",
        "1",
        id="r",
        outputs=[
            Tensor("A", "FP32", np.arange(4, dtype=np.float32)),
            Tensor("B", "BYTES", np.array([b"xy"], dtype=np.object_)),
            Tensor("C", "BOOL", np.array([True, False])),
        ],
        parameters={"n": 3, "big": 2**63, "ok": True, "ratio": 0.5, "s": "t"},
    )
    parsed = service_pb2.ModelInferResponse.FromString(codec.encode_infer_response(response))
    assert [(o.name, o.datatype, list(o.shape)) for o in parsed.outputs] == [
        ("A", "FP32", [4]),
        ("B", "BYTES", [1]),
        ("C", "BOOL", [2]),
    ]
    assert parsed.raw_output_contents[0] == np.arange(4, dtype=np.float32).tobytes()
    assert parsed.raw_output_contents[1] == b"\x02\x00\x00\x00xy"
    assert parsed.raw_output_contents[2] == b"\x01\x00"
    assert parsed.parameters["big"].uint64_param == 2**63
    assert parsed.parameters["ratio"].double_param == 0.5
    assert parsed.id == "r"


def test_stream_messages() -> None:
    inner = codec.encode_error_response("m", "r", True)
    parsed = service_pb2.ModelStreamInferResponse.FromString(
        codec.encode_stream_response(inner, "boom")
    )
    assert parsed.error_message == "boom"
    assert parsed.infer_response.model_name == "m"
    assert parsed.infer_response.parameters["triton_final_response"].bool_param is True
    early = service_pb2.ModelStreamInferResponse.FromString(codec.encode_stream_error("bad", "x"))
    assert early.error_message == "bad" and early.infer_response.id == "x"
    assert not early.infer_response.model_name
