"""The hand-written ModelInferResponse encoding must be what protobuf itself writes."""

from __future__ import annotations

import numpy as np
import pytest

from triton_kernel.kernel.request import InferenceResponse
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.protocols.grpc import codec
from triton_kernel.protocols.proto.grpc_service import ModelInferResponse


def _reference(response: InferenceResponse) -> bytes:
    """What upb writes for the same response (the road for responses with parameters)."""
    message = ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_output_contents.append(bytes(tensor.to_bytes()))
    return message.SerializeToString()


RESPONSES = [
    InferenceResponse(
        "identity_fp32", "1", "", [Tensor.from_numpy("OUTPUT0", np.ones((1, 16), np.float32))]
    ),
    InferenceResponse("m", "", "request-7", [Tensor.from_numpy("A", np.arange(3, dtype=np.int64))]),
    InferenceResponse(
        "ünïcode",
        "12",
        "id",
        [
            Tensor.from_numpy("S", np.array([b"ab", b""], dtype=object)),
            Tensor.from_numpy("scalar", np.array(2.5, np.float64)),
            Tensor.from_numpy("empty", np.zeros((0, 300), np.float32)),
            Tensor.from_numpy("big", np.zeros((2, 200_000), np.uint8)),
        ],
    ),
    InferenceResponse("no_outputs", "3"),
]


@pytest.mark.parametrize("response", RESPONSES, ids=lambda r: r.model_name)
def test_plain_responses_are_encoded_as_protobuf_encodes_them(response: InferenceResponse) -> None:
    encoded = codec.encode_infer_response(response)
    assert encoded == _reference(response)
    decoded = ModelInferResponse.FromString(encoded)
    assert [o.name for o in decoded.outputs] == [t.name for t in response.outputs]
    assert [list(o.shape) for o in decoded.outputs] == [list(t.shape) for t in response.outputs]


def test_responses_with_parameters_keep_the_message_road() -> None:
    tensor = Tensor("OUT", "FP32", np.ones(2, np.float32), {"binary_data_size": 8})
    response = InferenceResponse("m", "1", "", [tensor], parameters={"p": "v"})
    decoded = ModelInferResponse.FromString(codec.encode_infer_response(response))
    assert decoded.parameters["p"].string_param == "v"
    assert decoded.raw_output_contents[0] == np.ones(2, np.float32).tobytes()


def test_repeated_responses_of_changing_shapes_and_ids_stay_exact() -> None:
    """The encoded heads are reused per names, id and shapes: a response differing in
    any of them, or only in its data, must still come out exactly as upb writes it."""
    for round_ in range(3):
        for rows in (1, 2, 5, 1):
            for request_id in ("", "a", "b"):
                data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + round_
                strings = np.array([b"x" * (rows + round_)] * rows, dtype=object)
                response = InferenceResponse(
                    "m",
                    "1",
                    request_id,
                    [Tensor.from_numpy("OUT", data), Tensor.from_numpy("S", strings)],
                )
                assert codec.encode_infer_response(response) == _reference(response)


def test_the_cache_of_encoded_heads_stays_small() -> None:
    for number in range(2 * codec._PLAIN_HEADS_MAX):
        response = InferenceResponse(
            "m", "1", f"id-{number}", [Tensor.from_numpy("OUT", np.ones(2, np.float32))]
        )
        assert codec.encode_infer_response(response) == _reference(response)
    assert len(codec._PLAIN_HEADS) <= codec._PLAIN_HEADS_MAX
