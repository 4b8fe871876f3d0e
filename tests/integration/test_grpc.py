"""The gRPC frontend, driven by the real ``tritonclient.grpc`` (sync and aio) and grpcio."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server


@pytest.fixture
def gclient(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """grpcio's own stub, to see exact status codes and to send what tritonclient will not."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.grpc_url, options=options) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def raw_request(model: str, **inputs: np.ndarray) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        assert tensor is not None
        request.raw_input_contents.append(array.astype(np.float32).tobytes())
    return request


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()


# --- health and metadata ---------------------------------------------------------------


def test_health(gclient: grpcclient.InferenceServerClient) -> None:
    assert gclient.is_server_live()
    assert gclient.is_server_ready()
    assert gclient.is_model_ready("add_sub")
    assert gclient.is_model_ready("add_sub", "1")
    assert not gclient.is_model_ready("add_sub", "7")
    assert not gclient.is_model_ready("no_such_model")


def test_standard_health_check(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        assert check(b"") == b"\x08\x01"  # status: SERVING


def test_server_metadata(gclient: grpcclient.InferenceServerClient) -> None:
    metadata = gclient.get_server_metadata(as_json=True)
    assert metadata["name"] == "triton"
    assert {"classification", "model_repository", "binary_tensor_data", "statistics"} <= set(
        metadata["extensions"]
    )


def test_model_metadata(gclient: grpcclient.InferenceServerClient) -> None:
    metadata = gclient.get_model_metadata("add_sub", as_json=True)
    assert metadata["name"] == "add_sub"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "python"
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]}
    versioned = gclient.get_model_metadata("versioned", "3", as_json=True)
    assert versioned["name"] == "versioned"


def test_model_config_matches_http(
    gclient: grpcclient.InferenceServerClient, client: object
) -> None:
    config = gclient.get_model_config("add_sub", as_json=True)["config"]
    http_config = client.get_model_config("add_sub")  # type: ignore[attr-defined]
    assert config["name"] == http_config["name"] == "add_sub"
    assert config["max_batch_size"] == http_config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["instance_group"][0]["count"] == 2


def test_unknown_model_and_version(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    code, details = status_of(
        lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in details
    code, _ = status_of(
        lambda: stub.ModelConfig(service_pb2.ModelConfigRequest(name="add_sub", version="9"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = status_of(
        lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="add_sub", version="x"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in details


# --- inference ---------------------------------------------------------------------------


def test_infer_raw(gclient: grpcclient.InferenceServerClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    result = gclient.infer("add_sub", add_sub_inputs(a, b), request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "r-1"
    assert response.model_name == "add_sub"
    assert response.model_version == "1"


def test_infer_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    request.outputs.add(name="OUTPUT0")
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["OUTPUT0"]
    values = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(values, [2.0, 4.0, 6.0, 8.0])


def test_requested_outputs_in_order(gclient: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    outputs = [
        grpcclient.InferRequestedOutput("OUTPUT1"),
        grpcclient.InferRequestedOutput("OUTPUT0"),
    ]
    result = gclient.infer("add_sub", add_sub_inputs(a, a), outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1", "OUTPUT0"]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", np.array([True, False, True])),
        ("UINT8", np.array([0, 7, 255], dtype=np.uint8)),
        ("UINT16", np.array([0, 7, 65535], dtype=np.uint16)),
        ("UINT32", np.array([0, 7, 2**32 - 1], dtype=np.uint32)),
        ("UINT64", np.array([0, 7, 2**64 - 1], dtype=np.uint64)),
        ("INT8", np.array([-128, 0, 127], dtype=np.int8)),
        ("INT16", np.array([-(2**15), 0, 2**15 - 1], dtype=np.int16)),
        ("INT32", np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32)),
        ("INT64", np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64)),
        ("FP16", np.array([0.5, -1.25, 65504], dtype=np.float16)),
        ("FP32", np.array([0.5, -1.25, 3.4e38], dtype=np.float32)),
        ("FP64", np.array([0.5, -1.25, 1e300], dtype=np.float64)),
        ("BYTES", np.array([b"a", b"", b"\x00\xff"], dtype=np.object_)),
    ],
)
def test_every_datatype_round_trips(
    gclient: grpcclient.InferenceServerClient, datatype: str, values: np.ndarray
) -> None:
    tensor = grpcclient.InferInput(f"IN_{datatype}", list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    result = gclient.infer("all_types", [tensor])
    np.testing.assert_array_equal(result.as_numpy(f"OUT_{datatype}"), values)


def test_bytes_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    tensor = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"hello", b"\x00world"])
    response = stub.ModelInfer(request)
    raw = response.raw_output_contents[0]
    assert raw == b"\x05\x00\x00\x00hello\x06\x00\x00\x00\x00world"


def test_classification(gclient: grpcclient.InferenceServerClient) -> None:
    features = np.array([[0.1, 0.9, 0.3, 0.0]], dtype=np.float32)
    tensor = grpcclient.InferInput("FEATURES", [1, 4], "FP32")
    tensor.set_data_from_numpy(features)
    output = grpcclient.InferRequestedOutput("SCORES", class_count=2)
    result = gclient.infer("classifier", [tensor], outputs=[output])
    top = result.as_numpy("SCORES")
    assert top.shape == (1, 2)
    assert all(item.count(b":") == 2 for item in top.reshape(-1))


def test_parameters_reach_the_model_and_come_back(
    gclient: grpcclient.InferenceServerClient,
) -> None:
    tensor = grpcclient.InferInput("INPUT0", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, dtype=np.float32))
    result = gclient.infer(
        "introspect",
        [tensor],
        request_id="with-params",
        parameters={"flag": True, "n": 7, "word": "hi"},
    )
    report = json.loads(result.as_numpy("ARGS")[0])
    assert report["request_id"] == "with-params"
    assert report["parameters"] == {"flag": True, "n": 7, "word": "hi"}
    parameters = result.get_response().parameters
    assert parameters["echo"].string_param == "yes"
    assert parameters["count"].int64_param == 1


def test_compressed_requests(gclient: grpcclient.InferenceServerClient) -> None:
    a = np.full((1, 4), 2, dtype=np.float32)
    for algorithm in ("gzip", "deflate"):
        result = gclient.infer("add_sub", add_sub_inputs(a, a), compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_large_tensor(gclient: grpcclient.InferenceServerClient) -> None:
    values = np.random.default_rng(0).random(3_000_000).astype(np.float32)  # 12 MB
    tensor = grpcclient.InferInput("IN_FP32", [values.size], "FP32")
    tensor.set_data_from_numpy(values)
    result = gclient.infer("all_types", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUT_FP32"), values)


def test_async_infer_callback(gclient: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[object] = queue.Queue()
    a = np.ones((1, 4), dtype=np.float32)
    gclient.async_infer(
        "add_sub", add_sub_inputs(a, a), lambda result, error: results.put((result, error))
    )
    result, error = results.get(timeout=20)  # type: ignore[misc]
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)  # type: ignore[attr-defined]


def test_aio_client(server: RunningServer) -> None:
    async def main() -> None:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            assert await client.is_server_ready()
            a = np.ones((1, 4), dtype=np.float32)
            inputs = [grpcaio.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
            for tensor in inputs:
                tensor.set_data_from_numpy(a)
            results = await asyncio.gather(
                *(client.infer("add_sub", inputs, request_id=str(i)) for i in range(8))
            )
            assert sorted(r.get_response().id for r in results) == [str(i) for i in range(8)]
            metadata = await client.get_model_metadata("add_sub", as_json=True)
            assert metadata["name"] == "add_sub"
            with pytest.raises(InferenceServerException, match="nope"):
                await client.infer("nope", inputs)
        finally:
            await client.close()

    asyncio.run(main())


# --- bad input -----------------------------------------------------------------------------


def test_unknown_model_infer(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    code, details = status_of(lambda: stub.ModelInfer(raw_request("nope", INPUT0=a, INPUT1=a)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in details


def test_wrong_raw_length(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    request = raw_request("add_sub", INPUT0=a, INPUT1=a)
    request.raw_input_contents[1] = b"\x00" * 12
    code, details = status_of(lambda: stub.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected 16, got 12" in details


def test_contents_and_raw_for_one_input(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    request = raw_request("add_sub", INPUT0=a, INPUT1=a)
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    code, details = status_of(lambda: stub.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents" in details and "INPUT0" in details


def test_raw_buffer_counts(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """Fewer raw buffers than inputs is an error; more are ignored, as Triton ignores them."""
    a = np.ones((1, 4), dtype=np.float32)
    request = raw_request("add_sub", INPUT0=a, INPUT1=a)
    del request.raw_input_contents[1]
    code, details = status_of(lambda: stub.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        details == "unable to find data for input tensor 'INPUT1' for model 'add_sub' in request."
    )
    request = raw_request("add_sub", INPUT0=a, INPUT1=a)
    request.raw_input_contents.append(a.tobytes())
    response = stub.ModelInfer(request)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), 2)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("unknown_input", "unexpected inference input 'BOGUS'"),
        ("missing_input", "expected 2 inputs but got 1 inputs"),
        ("wrong_shape", "unexpected shape for input 'INPUT0' for model 'add_sub'"),
        ("negative_dim", "All input dimensions should be specified for input 'INPUT0'"),
        ("wrong_datatype", "inference input 'INPUT0' data-type is 'INT32', but model"),
        ("bad_datatype", "INPUT0"),
        ("unknown_output", "unexpected inference output 'NOPE'"),
        ("bad_version", "failed to get model version from specified version string 'v1'"),
        ("wrong_count", "input byte size mismatch for input 'INPUT0' for model 'add_sub'"),
        ("wrong_field", "unexpected explicit tensor data for input tensor 'INPUT0'"),
        ("reserved_key", "parameter keys starting with 'triton_' are reserved"),
        ("bad_param_type", "invalid value type for 'priority' parameter"),
    ],
)
def test_bad_requests(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, change: str, expected: str
) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    request = raw_request("add_sub", INPUT0=a, INPUT1=a)
    if change == "unknown_input":
        request.inputs[1].name = "BOGUS"
    elif change == "missing_input":
        del request.inputs[1]
        del request.raw_input_contents[1]
    elif change == "wrong_shape":
        request.inputs[0].shape[:] = [1, 2, 2]
    elif change == "negative_dim":
        request.inputs[0].shape[:] = [-1, 4]
    elif change == "wrong_datatype":
        request.inputs[0].datatype = "INT32"
    elif change == "bad_datatype":
        request.inputs[0].datatype = "FLOAT"
    elif change == "unknown_output":
        request.outputs.add(name="NOPE")
    elif change == "bad_version":
        request.model_version = "v1"
    elif change == "wrong_count":
        del request.raw_input_contents[:]
        for tensor in request.inputs:
            tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    elif change == "wrong_field":
        del request.raw_input_contents[:]
        for tensor in request.inputs:
            tensor.contents.int_contents.extend([1, 2, 3, 4])
    elif change == "reserved_key":
        request.parameters["triton_secret"].bool_param = True
    elif change == "bad_param_type":
        request.parameters["priority"].string_param = "high"
    code, details = status_of(lambda: stub.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert expected in details


def test_model_errors(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    one = np.ones(1, dtype=np.float32)
    code, details = status_of(lambda: stub.ModelInfer(raw_request("raiser", INPUT0=one)))
    assert code == grpc.StatusCode.INTERNAL
    assert "raiser always fails" in details
    code, details = status_of(lambda: stub.ModelInfer(raw_request("error_response", INPUT0=one)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "bad value"


def test_decoupled_model_over_model_infer(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    one = np.ones(1, dtype=np.float32)
    code, details = status_of(lambda: stub.ModelInfer(raw_request("decoupled", INPUT0=one)))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert details == "ModelInfer RPC doesn't support models with decoupled transaction policy"


def test_garbage_message(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        with pytest.raises(grpc.RpcError) as info:
            infer(b"\x0a\xff\xff\xff\xff\x0f")
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)


def test_bad_input_disturbs_nothing_else(gclient: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException):
        gclient.infer("add_sub", add_sub_inputs(a, np.ones((1, 3), dtype=np.float32)))
    result = gclient.infer("add_sub", add_sub_inputs(a, a))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


# --- streaming -------------------------------------------------------------------------------


class StreamResults:
    """What a tritonclient stream callback received."""

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[object, object]] = queue.Queue()

    def __call__(self, result: object, error: object) -> None:
        self.items.put((result, error))

    def take(self, count: int, timeout: float = 20) -> list[tuple[object, object]]:
        return [self.items.get(timeout=timeout) for _ in range(count)]


def repeat_inputs(count: int, delay: float = 0.0) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("COUNT", [1], "INT32"),
        grpcclient.InferInput("DELAY", [1], "FP32"),
    ]
    inputs[0].set_data_from_numpy(np.array([count], dtype=np.int32))
    inputs[1].set_data_from_numpy(np.array([delay], dtype=np.float32))
    return inputs


def test_stream_decoupled_responses(gclient: grpcclient.InferenceServerClient) -> None:
    results = StreamResults()
    gclient.start_stream(callback=results)
    try:
        gclient.async_stream_infer("repeat", repeat_inputs(4), request_id="many")
        received = results.take(4)
    finally:
        gclient.stop_stream()
    assert [error for _, error in received] == [None] * 4
    values = [int(r.as_numpy("OUT")[0]) for r, _ in received]  # type: ignore[attr-defined]
    assert values == [0, 1, 2, 3]
    assert {r.get_response().id for r, _ in received} == {"many"}  # type: ignore[attr-defined]
    assert results.items.empty()


def test_stream_empty_final_response(gclient: grpcclient.InferenceServerClient) -> None:
    results = StreamResults()
    gclient.start_stream(callback=results)
    try:
        gclient.async_stream_infer("repeat", repeat_inputs(2), enable_empty_final_response=True)
        received = results.take(3)
    finally:
        gclient.stop_stream()
    finals = [
        r.get_response().parameters["triton_final_response"].bool_param  # type: ignore[attr-defined]
        for r, _ in received
    ]
    assert finals == [False, False, True]
    assert received[2][0].get_response().outputs == []  # type: ignore[attr-defined]


def test_stream_zero_responses(gclient: grpcclient.InferenceServerClient) -> None:
    results = StreamResults()
    gclient.start_stream(callback=results)
    try:
        gclient.async_stream_infer("repeat", repeat_inputs(0), enable_empty_final_response=True)
        (only,) = results.take(1)
    finally:
        gclient.stop_stream()
    assert only[1] is None
    assert only[0].get_response().parameters["triton_final_response"].bool_param  # type: ignore[attr-defined]


def test_stream_non_decoupled_model(gclient: grpcclient.InferenceServerClient) -> None:
    results = StreamResults()
    a = np.ones((1, 4), dtype=np.float32)
    gclient.start_stream(callback=results)
    try:
        for i in range(3):
            gclient.async_stream_infer("add_sub", add_sub_inputs(a, a * i), request_id=str(i))
        received = results.take(3)
    finally:
        gclient.stop_stream()
    by_id = {r.get_response().id: r for r, _ in received}  # type: ignore[attr-defined]
    np.testing.assert_array_equal(by_id["2"].as_numpy("OUTPUT0"), a * 3)


def test_stream_errors_are_in_band(gclient: grpcclient.InferenceServerClient) -> None:
    results = StreamResults()
    a = np.ones((1, 4), dtype=np.float32)
    gclient.start_stream(callback=results)
    try:
        gclient.async_stream_infer("nope", add_sub_inputs(a, a), request_id="bad")
        ((result, error),) = results.take(1)
        assert result is None
        assert "nope" in str(error)
        gclient.async_stream_infer("repeat", repeat_inputs(-1))
        ((result, error),) = results.take(1)
        assert "negative count" in str(error)
        # The stream is still open and serving.
        gclient.async_stream_infer("add_sub", add_sub_inputs(a, a), request_id="good")
        ((result, error),) = results.take(1)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)  # type: ignore[attr-defined]
    finally:
        gclient.stop_stream()


def test_stream_errors_as_status_when_asked(gclient: grpcclient.InferenceServerClient) -> None:
    """With ``triton_grpc_error``, a model's failure ends the stream with its status;
    a request that never ran (unknown model) is still answered in-band, as Triton does."""
    results = StreamResults()
    a = np.ones((1, 4), dtype=np.float32)
    gclient.start_stream(callback=results, headers={"triton_grpc_error": "true"})
    try:
        gclient.async_stream_infer("nope", add_sub_inputs(a, a))
        ((result, error),) = results.take(1)
        assert result is None and "nope" in str(error)
        one = grpcclient.InferInput("INPUT0", [1], "FP32")
        one.set_data_from_numpy(np.ones(1, dtype=np.float32))
        gclient.async_stream_infer("raiser", [one])
        ((result, error),) = results.take(1)
    finally:
        gclient.stop_stream()
    assert result is None
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INTERNAL"
    assert "raiser always fails" in str(error)


def test_stream_cancelled_mid_response(server: RunningServer) -> None:
    """A client that cancels its stream: the model sees the cancel, the server goes on."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="repeat")
        for name, datatype, value in (
            ("COUNT", "INT32", np.int32(1000)),
            ("DELAY", "FP32", np.float32(0.01)),
        ):
            request.inputs.add(name=name, datatype=datatype, shape=[1])
            request.raw_input_contents.append(np.array([value]).tobytes())
        call = stub.ModelStreamInfer(iter([request]))
        first = next(call)
        assert first.error_message == ""
        call.cancel()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = StreamResults()
    client.start_stream(callback=results)
    try:
        client.async_stream_infer("repeat", repeat_inputs(2))
        assert len(results.take(2)) == 2
    finally:
        client.stop_stream()
        client.close()


def test_aio_stream(server: RunningServer) -> None:
    async def main() -> list[int]:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:

            async def requests():  # type: ignore[no-untyped-def]
                for count in (2, 3):
                    inputs = [grpcaio.InferInput("COUNT", [1], "INT32")]
                    inputs[0].set_data_from_numpy(np.array([count], dtype=np.int32))
                    yield {"model_name": "repeat", "inputs": inputs, "request_id": str(count)}

            values = []
            async for result, error in client.stream_infer(requests()):
                assert error is None
                values.append(int(result.as_numpy("OUT")[0]))
                if len(values) == 5:
                    break
            return sorted(values)
        finally:
            await client.close()

    assert asyncio.run(main()) == [0, 0, 1, 1, 2]


def test_slow_stream_reader_does_not_block_others(server: RunningServer) -> None:
    """A stream whose client never reads: other calls are served meanwhile."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="repeat")
        request.inputs.add(name="COUNT", datatype="INT32", shape=[1])
        request.raw_input_contents.append(np.array([20000], dtype=np.int32).tobytes())
        call = stub.ModelStreamInfer(iter([request]))  # never read
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for _ in range(3):
                a = np.ones((1, 4), dtype=np.float32)
                result = client.infer("add_sub", add_sub_inputs(a, a))
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
        finally:
            client.close()
            call.cancel()


# --- statistics, repository, settings --------------------------------------------------------


def test_statistics(gclient: grpcclient.InferenceServerClient) -> None:
    a = np.ones((2, 4), dtype=np.float32)
    before = gclient.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
    for _ in range(3):
        gclient.infer("add_sub", add_sub_inputs(a, a))
    after = gclient.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
    assert after["name"] == "add_sub" and after["version"] == "1"
    success = int(after["inference_stats"]["success"]["count"]) - int(
        before["inference_stats"].get("success", {}).get("count", 0)
    )
    assert success == 3
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6
    assert int(after["last_inference"]) > 0
    every = gclient.get_inference_statistics(as_json=True)["model_stats"]
    assert "add_sub" in {entry["name"] for entry in every}
    with pytest.raises(InferenceServerException, match="not available"):
        gclient.get_inference_statistics("nope")


def test_repository_index(gclient: grpcclient.InferenceServerClient) -> None:
    index = gclient.get_model_repository_index(as_json=True)["models"]
    rows = {(row["name"], row.get("version", "")): row for row in index}
    assert rows[("add_sub", "1")]["state"] == "READY"
    assert rows[("versioned", "3")]["state"] == "READY"


def test_load_refused_when_not_explicit(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    code, details = status_of(
        lambda: stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name="add_sub")
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == "explicit model load / unload is not allowed if polling is enabled"


def test_shared_memory_and_settings(gclient: grpcclient.InferenceServerClient) -> None:
    assert gclient.get_system_shared_memory_status(as_json=True) == {}
    assert gclient.get_cuda_shared_memory_status(as_json=True) == {}
    with pytest.raises(InferenceServerException, match="--allow-client-shm"):
        gclient.register_system_shared_memory("region", "/key", 64)
    with pytest.raises(InferenceServerException, match="--allow-client-shm"):
        gclient.unregister_system_shared_memory()
    trace = gclient.get_trace_settings(as_json=True)["settings"]
    assert trace["trace_level"]["value"] == ["OFF"]
    logs = gclient.get_log_settings(as_json=True)["settings"]
    assert logs["log_info"]["bool_param"] is True
    updated = gclient.update_log_settings({"log_verbose_level": 0}, as_json=True)["settings"]
    assert updated.get("log_verbose_level", {}).get("uint32_param", 0) == 0
    ignored = gclient.update_log_settings({"no_such_setting": True}, as_json=True)  # as Triton
    assert "no_such_setting" not in ignored["settings"]


def test_concurrent_calls_from_threads(server: RunningServer) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            a = np.random.default_rng().random((1, 4)).astype(np.float32)
            for _ in range(10):
                result = client.infer("add_sub", add_sub_inputs(a, a))
                np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + a)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- servers of their own: size limit, explicit model control --------------------------------


def test_message_over_the_size_limit(repository: Path, tmp_path: Path) -> None:
    server = start_server(repository, "--grpc-max-message-size=4096", log_path=tmp_path / "log")
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        wait_ready(client)
        big = np.ones((1, 2000), dtype=np.float32)  # 8 KB of data
        tensor = grpcclient.InferInput("IN_FP32", [1, 2000], "FP32")
        tensor.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as info:
            client.infer("all_types", [tensor])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in str(info.value)
        small = np.ones((1, 4), dtype=np.float32)
        result = client.infer("add_sub", add_sub_inputs(small, small))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), small + small)
        client.close()
    finally:
        assert server.stop() == 0, server.log()


def wait_ready(client: grpcclient.InferenceServerClient) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except InferenceServerException:
            pass
        time.sleep(0.05)
    raise AssertionError("server not ready")


IDENTITY_PY = b"""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 3)]
            )
            for r in requests
        ]
"""


def test_explicit_load_unload_with_overrides(repository: Path, tmp_path: Path) -> None:
    server = start_server(
        repository,
        "--model-control-mode=explicit",
        "--load-model=add_sub",
        log_path=tmp_path / "log",
    )
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        wait_ready(client)
        assert not client.is_model_ready("identity_bytes")
        client.load_model("identity_bytes")
        assert client.is_model_ready("identity_bytes")
        client.unload_model("identity_bytes")
        assert not client.is_model_ready("identity_bytes")
        client.unload_model("never_loaded")  # Triton: OK

        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope")
        assert info.value.status() == "StatusCode.INTERNAL"
        assert "failed to load 'nope', failed to poll from model repository" in str(info.value)

        config = {
            "name": "tripler",
            "backend": "python",
            "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [2]}],
            "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]}],
        }
        client.load_model(
            "tripler", config=json.dumps(config), files={"file:1/model.py": IDENTITY_PY}
        )
        tensor = grpcclient.InferInput("IN", [2], "FP32")
        tensor.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
        result = client.infer("tripler", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUT"), [3, 6])

        override = client.get_model_config("add_sub", as_json=True)["config"]
        override["max_batch_size"] = 2
        client.load_model("add_sub", config=json.dumps(override))
        assert client.get_model_config("add_sub", as_json=True)["config"]["max_batch_size"] == 2

        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.RepositoryModelLoadRequest(model_name="add_sub")
            request.parameters["bogus"].bool_param = True
            code, details = status_of(lambda: stub.RepositoryModelLoad(request))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details == "unrecognized load parameter 'bogus'."
            request = service_pb2.RepositoryModelLoadRequest(model_name="add_sub")
            request.parameters["file:../../escape.py"].bytes_param = b"x"
            request.parameters["config"].string_param = json.dumps(override)
            code, _ = status_of(lambda: stub.RepositoryModelLoad(request))
            assert code == grpc.StatusCode.INTERNAL  # Triton: a load it cannot poll
        assert client.is_model_ready("add_sub")
        client.close()
    finally:
        assert server.stop() == 0, server.log()


def test_statistics_are_one_count_for_both_frontends(
    gclient: grpcclient.InferenceServerClient, client: object
) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    gclient.infer("add_sub", add_sub_inputs(a, a))
    over_grpc = gclient.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
    over_http = client.get_inference_statistics("add_sub")["model_stats"][0]  # type: ignore[attr-defined]
    assert int(over_grpc["inference_stats"]["success"]["count"]) == int(
        over_http["inference_stats"]["success"]["count"]
    )
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available"):
        client.get_inference_statistics("nope")  # type: ignore[attr-defined]
