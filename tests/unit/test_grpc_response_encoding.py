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
