"""Inference over HTTP with the unchanged tritonclient: JSON, binary, BYTES, every datatype."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import np_to_triton_dtype


def _add_sub_inputs(a, b, binary):
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_add_sub(client, binary_in, binary_out):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary_out),
    ]
    result = client.infer("add_sub", _add_sub_inputs(a, b, binary_in), outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == "1"


def test_all_outputs_when_none_requested(client):
    a = np.ones((1, 4), dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, a, True))
    assert {o["name"] for o in result.get_response()["outputs"]} == {"OUTPUT0", "OUTPUT1"}


def test_only_requested_output_returned(client):
    a = np.ones((1, 4), dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("add_sub", _add_sub_inputs(a, a, False), outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None


def test_request_id_and_versioned_request(client):
    x = httpclient.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([0.5], dtype=np.float32))
    result = client.infer("versioned", [x], model_version="1", request_id="req-7")
    assert result.as_numpy("OUTPUT0").tolist() == [1.0]
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "1"
    latest = client.infer("versioned", [x])
    assert latest.as_numpy("OUTPUT0").tolist() == [3.0]


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_round_trip(client, binary):
    data = np.array([[b"hello", b"", "ünïcode".encode()]], dtype=np.object_)
    x = httpclient.InferInput("INPUT0", [1, 3], "BYTES")
    x.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer("identity_bytes", [x], outputs=outputs)
    returned = result.as_numpy("OUTPUT0")  # JSON strings come back as str, binary as bytes
    as_bytes = [[v if isinstance(v, bytes) else v.encode() for v in row] for row in returned]
    assert as_bytes == data.tolist()


DATATYPE_SAMPLES = {
    "BOOL": np.array([True, False, True]),
    "UINT8": np.array([0, 7, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    "FP32": np.array([1.5, -0.25, 3.0e38], dtype=np.float32),
    "FP64": np.array([1e-300, -2.5], dtype=np.float64),
    "BYTES": np.array([b"a", b"bc"], dtype=np.object_),
}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", sorted(DATATYPE_SAMPLES))
def test_every_datatype(client, datatype, binary):
    if datatype == "FP16" and not binary:
        pytest.skip("FP16 travels only as binary data, as in Triton (tested in test_bad_input)")
    data = DATATYPE_SAMPLES[datatype]
    assert np_to_triton_dtype(data.dtype) == datatype
    x = httpclient.InferInput(f"IN_{datatype}", list(data.shape), datatype)
    x.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(f"OUT_{datatype}", binary_data=binary)]
    result = client.infer("all_types", [x], outputs=outputs)
    returned = result.as_numpy(f"OUT_{datatype}")
    assert result.get_output(f"OUT_{datatype}")["datatype"] == datatype
    if datatype == "BYTES" and not binary:  # JSON strings come back as str
        returned = np.array([v.encode() for v in returned], dtype=np.object_)
    assert returned.tolist() == data.tolist()


def test_classification_with_labels(client):
    features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    x = httpclient.InferInput("FEATURES", [2, 4], "FP32")
    x.set_data_from_numpy(features)
    outputs = [httpclient.InferRequestedOutput("SCORES", class_count=2)]
    result = client.infer("classifier", [x], outputs=outputs)
    classes = result.as_numpy("SCORES")
    assert classes.shape == (2, 2)
    first = classes[0][0].decode().split(":")
    assert first[1:] == ["0", "setosa"]
    assert float(first[0]) > float(classes[0][1].decode().split(":")[0])
    assert classes[1][0].decode().endswith(":2:virginica")


def test_classification_count_larger_than_classes(client):
    x = httpclient.InferInput("FEATURES", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    outputs = [httpclient.InferRequestedOutput("SCORES", class_count=10)]
    result = client.infer("classifier", [x], outputs=outputs)
    assert result.as_numpy("SCORES").shape == (1, 3)


def test_parameters_reach_the_model_and_come_back(client):
    x = httpclient.InferInput("INPUT0", [2], "FP32")
    x.set_data_from_numpy(np.zeros(2, dtype=np.float32))
    result = client.infer(
        "introspect",
        [x],
        request_id="abc",
        parameters={"temperature": 0.5, "mode": "fast", "flag": True},
    )
    report = json.loads(result.as_numpy("ARGS")[0])
    assert report["request_id"] == "abc"
    assert report["parameters"] == {"temperature": 0.5, "mode": "fast", "flag": True}
    assert report["input_shape"] == [2]
    assert result.get_response()["parameters"] == {"echo": "yes", "count": 1}


def test_initialize_args_match_triton(client, repository):
    x = httpclient.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    report = json.loads(client.infer("introspect", [x]).as_numpy("ARGS")[0])
    args = report["args"]
    assert args["model_name"] == "introspect"
    assert args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_name"] == "introspect_0"
    assert args["model_instance_device_id"] == "0"
    assert args["model_repository"] == str(repository / "introspect")
    config = json.loads(args["model_config"])
    assert config["parameters"] == {"greeting": {"string_value": "hello"}}


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(client, algorithm):
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    result = client.infer(
        "add_sub",
        _add_sub_inputs(a, a, True),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


async def test_aio_client(server):
    async with aiohttpclient.InferenceServerClient(server.url) as client:
        assert await client.is_server_ready()
        a = np.ones((1, 4), dtype=np.float32)
        inputs = [
            aiohttpclient.InferInput("INPUT0", [1, 4], "FP32"),
            aiohttpclient.InferInput("INPUT1", [1, 4], "FP32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        result = await client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
