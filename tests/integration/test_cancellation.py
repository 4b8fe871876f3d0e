"""A client that goes away cancels its request: the running model sees ``is_cancelled()``,
a queued request never runs, and other clients are served meanwhile.

``cancel_watch`` and ``cancel_stream`` append what they saw (``started``, then
``cancelled`` or ``deadline``) to the file their MARKER input names; each request
here gives a long deadline, so ``deadline`` means the cancellation never arrived.
tritonserver 2.51 cancels only gRPC calls and HTTP streams this way
(``/work/notes/triton_generate_reference.md``); this server cancels every HTTP call too.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer

#: Long enough that a request only ends early when it is cancelled.
LONG = 120.0
#: How long to wait for a marker word before the test fails (never reached when it works).
PATIENCE = 60.0


def lines(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def wait_for(marker: Path, word: str) -> list[str]:
    deadline = time.monotonic() + PATIENCE
    while word not in lines(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines(marker)


def watch_inputs(marker: Path, seconds: float) -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("MARKER", [1], "BYTES"),
        httpclient.InferInput("SECONDS", [1], "FP32"),
    ]
    inputs[0].set_data_from_numpy(np.array([str(marker).encode()], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([seconds], dtype=np.float32))
    return inputs


def grpc_watch_inputs(marker: Path, seconds: float) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("MARKER", [1], "BYTES"),
        grpcclient.InferInput("SECONDS", [1], "FP32"),
    ]
    inputs[0].set_data_from_numpy(np.array([str(marker).encode()], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([seconds], dtype=np.float32))
    return inputs


def infer_body(marker: Path, seconds: float) -> bytes:
    inputs = [
        {"name": "MARKER", "datatype": "BYTES", "shape": [1], "data": [str(marker)]},
        {"name": "SECONDS", "datatype": "FP32", "shape": [1], "data": [seconds]},
    ]
    return json.dumps({"inputs": inputs}).encode()


def send_raw(server: RunningServer, path: str, body: bytes) -> socket.socket:
    """Send one HTTP request on a fresh connection and leave it unread (closed by the test)."""
    host, port = server.url.split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def round_trip(client: httpclient.InferenceServerClient) -> None:
    """A full inference through a Python worker: the server has processed what came before."""
    a = np.ones((1, 4), dtype=np.float32)
    inputs = [httpclient.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with server.client() as c:
        yield c


def finish_with_a_short_request(client: httpclient.InferenceServerClient, marker: Path) -> None:
    """The model is free again: a new request runs to its (short) deadline."""
    result = client.infer("cancel_watch", watch_inputs(marker, 0.0))
    assert result.as_numpy("OUTCOME")[0] == b"deadline"


# --- HTTP -------------------------------------------------------------------------------------


def test_infer_client_timeout_cancels_the_running_request(
    server: RunningServer, client: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    marker = tmp_path / "infer"
    impatient = server.client(network_timeout=1.0)  # hangs up when it times out
    with impatient, pytest.raises(OSError):
        impatient.infer("cancel_watch", watch_inputs(marker, LONG))
    assert wait_for(marker, "cancelled") == ["started", "cancelled"]
    finish_with_a_short_request(client, tmp_path / "next")


def test_aio_infer_task_cancelled_cancels_the_request(
    server: RunningServer, client: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    marker = tmp_path / "aio"

    async def main() -> None:
        async with httpaio.InferenceServerClient(server.url) as aio:
            task = asyncio.create_task(aio.infer("cancel_watch", watch_inputs(marker, LONG)))
            while "started" not in lines(marker):
                await asyncio.sleep(0.02)
            task.cancel()  # aiohttp closes the connection
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert wait_for(marker, "cancelled") == ["started", "cancelled"]
    finish_with_a_short_request(client, tmp_path / "next")


@pytest.mark.parametrize("path", ["infer", "generate"])
def test_closed_connection_cancels_the_running_request(
    server: RunningServer, client: httpclient.InferenceServerClient, tmp_path: Path, path: str
) -> None:
    marker = tmp_path / path
    if path == "infer":
        body = infer_body(marker, LONG)
    else:
        body = json.dumps({"MARKER": str(marker), "SECONDS": LONG}).encode()
    sock = send_raw(server, f"/v2/models/cancel_watch/{path}", body)
    assert wait_for(marker, "started") == ["started"]
    sock.close()
    assert wait_for(marker, "cancelled") == ["started", "cancelled"]
    finish_with_a_short_request(client, tmp_path / "next")


def test_closed_stream_cancels_the_model_and_others_go_on(
    server: RunningServer, tmp_path: Path
) -> None:
    """A client reads three events of an endless stream and leaves; a second stream on
    another model runs to its end meanwhile, and the server answers new calls after."""
    marker = tmp_path / "stream"
    base = f"http://{server.url}/v2/models"

    async def leave_early(session: aiohttp.ClientSession) -> list[int]:
        body = {"MARKER": str(marker), "SECONDS": LONG}
        seen = []
        async with session.post(f"{base}/cancel_stream/generate_stream", json=body) as reply:
            async for line in reply.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[len(b"data: ") :])["INDEX"])
                    if len(seen) == 3:
                        break
            reply.close()  # drop the connection
        return seen

    async def stay(session: aiohttp.ClientSession) -> list[int]:
        body = {"COUNT": 20, "DELAY": 0.01}
        async with session.post(f"{base}/repeat/generate_stream", json=body) as reply:
            return [
                json.loads(line[len(b"data: ") :])["OUT"]
                async for line in reply.content
                if line.startswith(b"data: ")
            ]

    async def main() -> tuple[list[int], list[int]]:
        async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
            return await asyncio.gather(leave_early(first), stay(second))

    early, full = asyncio.run(main())
    assert early == [0, 1, 2]  # streamed while the model was still running
    assert full == list(range(20))
    assert wait_for(marker, "cancelled") == ["started", "cancelled"]
    with server.client() as c:
        round_trip(c)


def test_queued_requests_of_gone_clients_never_run(
    server: RunningServer, client: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    """One instance: A runs, B1..B3 wait behind it; their clients leave, then A's does.
    The cancelled requests never run: those in the server's queue are dropped there,
    those the worker already holds are dropped by the worker, unrun (as Triton drops
    cancelled requests from its queue)."""
    running = tmp_path / "A"
    first = send_raw(server, "/v2/models/cancel_watch/infer", infer_body(running, LONG))
    assert wait_for(running, "started") == ["started"]
    markers = [tmp_path / f"B{index}" for index in range(3)]
    queued = [
        send_raw(server, "/v2/models/cancel_watch/infer", infer_body(m, LONG)) for m in markers
    ]
    round_trip(client)  # B1..B3 have reached the server's queue; other models still serve
    for sock in queued:
        sock.close()
    round_trip(client)  # ... and their connections are gone
    first.close()
    assert wait_for(running, "cancelled") == ["started", "cancelled"]
    finish_with_a_short_request(client, tmp_path / "next")
    for marker in markers:
        assert lines(marker) == []


# --- gRPC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip"])  # gzip: the task-based road
def test_grpc_client_timeout_cancels_the_running_request(
    server: RunningServer,
    client: httpclient.InferenceServerClient,
    tmp_path: Path,
    compression: str | None,
) -> None:
    marker = tmp_path / "grpc"
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            gclient.infer(
                "cancel_watch",
                grpc_watch_inputs(marker, LONG),
                client_timeout=1.0,
                compression_algorithm=compression,
            )
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        gclient.close()
    assert wait_for(marker, "cancelled") == ["started", "cancelled"]
    finish_with_a_short_request(client, tmp_path / "next")


def test_grpc_cancelled_call_cancels_the_running_request(
    server: RunningServer, client: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    marker = tmp_path / "grpc_cancel"
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    errors: list[InferenceServerException | None] = []
    try:
        call = gclient.async_infer(
            "cancel_watch",
            grpc_watch_inputs(marker, LONG),
            callback=lambda result, error: errors.append(error),
        )
        assert wait_for(marker, "started") == ["started"]
        call.cancel()
        assert wait_for(marker, "cancelled") == ["started", "cancelled"]
    finally:
        gclient.close()
    finish_with_a_short_request(client, tmp_path / "next")
