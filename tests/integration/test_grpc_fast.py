"""The lean road of unary ModelInfer calls (``protocols/grpc/fast.py``) against grpclib's.

A call without a deadline takes the lean road; the same call with one (``grpc-timeout``)
takes grpclib's. Both must look the same to a client: the answer, its initial and
trailing metadata, and each error's status and text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .conftest import RunningServer

#: A deadline long enough never to expire: it only moves the call to grpclib's road.
DEADLINE = 600.0


@pytest.fixture
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def add_sub(request_id: str = "", model: str = "add_sub", size: int = 4) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, size])
        request.raw_input_contents.append(np.arange(size, dtype=np.float32).tobytes())
    return request


def both_roads(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: Any) -> list[Any]:
    """(answer or (code, details), initial metadata, trailing metadata) on each road."""
    results = []
    for timeout in (None, DEADLINE):
        try:
            response, call = stub.ModelInfer.with_call(request, timeout=timeout)
            outcome: Any = response
        except grpc.RpcError as error:
            call, outcome = error, (error.code(), error.details())
        initial = sorted(m for m in call.initial_metadata() if not m.key.startswith("grpc-"))
        trailing = sorted(call.trailing_metadata())
        results.append((outcome, initial, trailing))
    return results


def test_answers_are_the_same_on_both_roads(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    lean, generic = both_roads(stub, add_sub("same"))
    assert lean == generic
    response = lean[0]
    assert response.id == "same" and response.model_name == "add_sub"
    total = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(total, 2 * np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    "request_factory",
    [
        lambda: add_sub(model="no_such_model"),
        lambda: add_sub(size=5),  # wrong shape for add_sub's [4]
        lambda: service_pb2.ModelInferRequest(model_name="decoupled"),
        lambda: service_pb2.ModelInferRequest(model_name="add_sub"),  # no inputs
    ],
)
def test_errors_are_the_same_on_both_roads(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, request_factory: Any
) -> None:
    lean, generic = both_roads(stub, request_factory())
    assert isinstance(lean[0], tuple) and lean[0][0] != grpc.StatusCode.OK
    assert lean == generic


def test_a_garbage_message_is_refused_the_same_way(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        outcomes = []
        for timeout in (None, DEADLINE):
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff\xff\xff", timeout=timeout)
            outcomes.append((caught.value.code(), caught.value.details()))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == grpc.StatusCode.INTERNAL


def test_many_calls_in_flight_on_one_channel(server: RunningServer) -> None:
    async def main() -> list[str]:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            data = np.ones((1, 4), dtype=np.float32)
            inputs = [grpcaio.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
            for tensor in inputs:
                tensor.set_data_from_numpy(data)
            results = await asyncio.gather(
                *(client.infer("add_sub", inputs, request_id=str(i)) for i in range(64))
            )
            for result in results:
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * data)
            return [r.get_response().id for r in results]
        finally:
            await client.close()

    assert asyncio.run(main()) == [str(i) for i in range(64)]


def test_answer_larger_than_the_flow_control_window(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    values = np.random.default_rng(0).random(200_000).astype(np.float32)  # 800 kB
    request = service_pb2.ModelInferRequest(model_name="all_types")
    request.inputs.add(name="IN_FP32", datatype="FP32", shape=[values.size])
    request.raw_input_contents.append(values.tobytes())
    lean, generic = both_roads(stub, request)
    assert lean == generic
    np.testing.assert_array_equal(
        np.frombuffer(lean[0].raw_output_contents[0], dtype=np.float32), values
    )
