"""The lean road of unary ModelInfer calls (``protocols/grpc/fast.py``) against grpclib's.

The session's server serves ModelInfer on the lean road; a server whose inference
group is restricted serves it on grpclib's (the restriction check lives there), here
with the header it asks for. Both must look the same to a client: the answer, its
initial and trailing metadata, and each error's status and text.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .conftest import RunningServer, start_server

#: The header a call to the restricted server carries.
ROAD = ("triton-grpc-protocol-road", "generic")


@pytest.fixture(scope="module")
def generic(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on grpclib's road: its inference group is restricted."""
    log_path = tmp_path_factory.mktemp("generic") / "server.log"
    running = start_server(
        repository, "--grpc-restricted-protocol=inference:road=generic", log_path=log_path
    )
    with grpc.insecure_channel(running.grpc_url) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    yield running.grpc_url
    running.stop()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def stubs(
    server: RunningServer, generic: str
) -> Iterator[list[tuple[Any, tuple[tuple[str, str], ...]]]]:
    """(stub, metadata) of the lean road, then of grpclib's."""
    with grpc.insecure_channel(server.grpc_url) as lean, grpc.insecure_channel(generic) as other:
        yield [
            (service_pb2_grpc.GRPCInferenceServiceStub(lean), ()),
            (service_pb2_grpc.GRPCInferenceServiceStub(other), (ROAD,)),
        ]


def add_sub(request_id: str = "", model: str = "add_sub", size: int = 4) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, size])
        request.raw_input_contents.append(np.arange(size, dtype=np.float32).tobytes())
    return request


def both_roads(stubs: list[Any], request: Any, timeout: float | None = None) -> list[Any]:
    """(answer or (code, details), initial metadata, trailing metadata) on each road."""
    results = []
    for stub, metadata in stubs:
        try:
            response, call = stub.ModelInfer.with_call(request, timeout=timeout, metadata=metadata)
            outcome: Any = response
        except grpc.RpcError as error:
            call, outcome = error, (error.code(), error.details())
        initial = sorted(m for m in call.initial_metadata() if not m.key.startswith("grpc-"))
        trailing = sorted(call.trailing_metadata())
        results.append((outcome, initial, trailing))
    return results


@pytest.mark.parametrize("timeout", [None, 600.0])
def test_answers_are_the_same_on_both_roads(stubs: list[Any], timeout: float | None) -> None:
    lean, generic = both_roads(stubs, add_sub("same"), timeout)
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
def test_errors_are_the_same_on_both_roads(stubs: list[Any], request_factory: Any) -> None:
    lean, generic = both_roads(stubs, request_factory())
    assert isinstance(lean[0], tuple) and lean[0][0] != grpc.StatusCode.OK
    assert lean == generic


def test_a_garbage_message_is_refused_the_same_way(server: RunningServer, generic: str) -> None:
    outcomes = []
    for url, metadata in ((server.grpc_url, ()), (generic, (ROAD,))):
        with grpc.insecure_channel(url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff\xff\xff", metadata=metadata)
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


def test_answer_larger_than_the_flow_control_window(stubs: list[Any]) -> None:
    values = np.random.default_rng(0).random(200_000).astype(np.float32)  # 800 kB
    request = service_pb2.ModelInferRequest(model_name="all_types")
    request.inputs.add(name="IN_FP32", datatype="FP32", shape=[values.size])
    request.raw_input_contents.append(values.tobytes())
    lean, generic = both_roads(stubs, request)
    assert lean == generic
    np.testing.assert_array_equal(
        np.frombuffer(lean[0].raw_output_contents[0], dtype=np.float32), values
    )


# --- the HTTP/2 connection itself (protocols/grpc/h2conn.py), driven by hyper-h2 ----------


class H2Client:
    """A bare HTTP/2 client over a socket (hyper-h2), to send what grpcio would not."""

    def __init__(self, url: str, initial_window_size: int = 0) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        host, port = url.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if initial_window_size:
            code = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
            self.conn.update_settings({code: initial_window_size})
        self.sock.sendall(self.conn.data_to_send())

    def call(self, headers: list[tuple[str, str]], body: bytes) -> tuple[Any, bytes, Any]:
        """One unary call: (response headers, body, trailers); windows given back as read."""
        import h2.events

        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        response_headers, data, trailers = None, b"", None
        while trailers is None:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    response_headers = event.headers
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = event.headers
            self.sock.sendall(self.conn.data_to_send())
        return response_headers, data, trailers

    def ping(self) -> bool:
        import h2.events

        self.conn.ping(b"12345678")
        self.sock.sendall(self.conn.data_to_send())
        while True:
            for event in self.conn.receive_data(self.sock.recv(65536)):
                if isinstance(event, h2.events.PingAckReceived):
                    return event.ping_data == b"12345678"

    def close(self) -> None:
        self.sock.close()


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def infer_headers(**extra: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra.items(),
    ]


def test_small_client_window_and_frames(server: RunningServer) -> None:
    """The client allows 100 bytes at a time: the answer comes in pieces, as it reads."""
    client = H2Client(server.grpc_url, initial_window_size=100)
    try:
        headers, body, trailers = client.call(
            infer_headers(), grpc_frame(add_sub("small-window").SerializeToString())
        )
        assert dict(headers)[":status"] == "200" and dict(trailers)["grpc-status"] == "0"
        response = service_pb2.ModelInferResponse.FromString(body[5:])
        assert response.id == "small-window"
        assert client.ping()
    finally:
        client.close()


def test_header_blocks_in_continuation_frames(server: RunningServer) -> None:
    """Metadata larger than a frame arrives in CONTINUATION frames; the table keeps up."""
    client = H2Client(server.grpc_url)
    try:
        for n in range(3):
            extra = {"x-big": "v" * 20_000, f"x-key-{n}": f"value-{n}" * 10}
            _, body, trailers = client.call(
                infer_headers(**extra), grpc_frame(add_sub(f"c{n}").SerializeToString())
            )
            assert dict(trailers)["grpc-status"] == "0"
            assert service_pb2.ModelInferResponse.FromString(body[5:]).id == f"c{n}"
    finally:
        client.close()


def test_many_distinct_headers_churn_the_table(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    for n in range(300):
        metadata = ((f"x-n{n % 50}", "v" * (n % 97)),)
        response = stub.ModelInfer(add_sub(str(n)), metadata=metadata)
        assert response.id == str(n)


def test_a_bad_preface_closes_the_connection(server: RunningServer) -> None:
    host, port = server.grpc_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert b"\x07" in received[: 9 * 3 + 50]  # a GOAWAY frame before the close
