"""System shared memory (and CUDA shared memory without CUDA), driven by the real
``tritonclient`` over HTTP and gRPC with ``tritonclient.utils.shared_memory``.

Statuses and texts are tritonserver's (2.51 for the in-use answers, current Triton for
``--allow-client-shm``); /work/notes/triton_shm_reference.md records the probes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from triton_kernel.kernel.errors import Internal
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.shared_memory import SharedMemoryRegistry
from triton_kernel.kernel.tensor import Tensor

from .conftest import RunningServer, start_server, write_model

DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
)
PROTOCOLS = ["http", "grpc"]

ADD_SUB = """
    name: "{name}"
    backend: "python"
    max_batch_size: 8
    input [
      {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
      {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
    ]
    output [
      {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
      {{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
    ]
"""
ADD_SUB_PY = """
    import os, time
    import triton_python_backend_utils as pb_utils

    GATE = {gate!r}

    class TritonPythonModel:
        def execute(self, requests):
            if GATE:  # tell the test we run, then wait until it lets us finish
                open(os.path.join(GATE, "started"), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(os.path.join(GATE, "release")):
                    if time.monotonic() > deadline:
                        raise pb_utils.TritonModelException("the test never released the gate")
                    time.sleep(0.01)
                for marker in ("started", "release"):  # closed again for the next request
                    os.remove(os.path.join(GATE, marker))
            responses = []
            for request in requests:
                a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)
                ]))
            return responses
"""
REVERSE = """
    name: "reverse"
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
"""
REVERSE_PY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                out = np.array([v[::-1] for v in values], dtype=np.object_)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
            return responses
"""

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory, gate: Path) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("shm_repo")
    write_model(repo, "simple", ADD_SUB.format(name="simple"), ADD_SUB_PY.format(gate=""))
    write_model(repo, "gated", ADD_SUB.format(name="gated"), ADD_SUB_PY.format(gate=str(gate)))
    write_model(repo, "reverse", REVERSE, REVERSE_PY)
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    running = start_server(repo, "--allow-client-shm=true", log_path=log_path)
    _wait_ready(running)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server started without ``--allow-client-shm`` (the default)."""
    repo = tmp_path_factory.mktemp("plain_repo")
    write_model(repo, "simple", ADD_SUB.format(name="simple"), ADD_SUB_PY.format(gate=""))
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    running = start_server(repo, log_path=log_path)
    _wait_ready(running)
    yield running
    assert running.stop() == 0, running.log()


def _wait_ready(server: RunningServer) -> None:
    client = server.client()
    deadline = time.monotonic() + 30
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()


def _client(server: RunningServer, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.url)
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(shm_server: RunningServer, protocol: str) -> Iterator[Any]:
    c = _client(shm_server, protocol)
    yield c
    c.unregister_system_shared_memory()  # every test leaves the server as it found it
    c.close()


class Regions:
    """POSIX shared memory objects made by ``tritonclient.utils.shared_memory`` for one test.

    Keys are unique to the test run, so that parallel runs on one machine never meet.
    """

    def __init__(self) -> None:
        self.prefix = f"/tk_test_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.handles: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return self.prefix + name

    def create(self, name: str, byte_size: int, *values: np.ndarray) -> Any:
        handle = shm.create_shared_memory_region(name, self.key(name), byte_size)
        self.handles[name] = handle
        if values:
            shm.set_shared_memory_region(handle, list(values))
        return handle

    def destroy(self, name: str) -> None:
        shm.destroy_shared_memory_region(self.handles.pop(name))

    def read(self, name: str, dtype: Any, shape: list[int], offset: int = 0) -> np.ndarray:
        return shm.get_contents_as_numpy(self.handles[name], dtype, shape, offset=offset)

    def close(self) -> None:
        for name in list(self.handles):
            self.destroy(name)


@pytest.fixture
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.close()


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def shm_inputs(protocol: str, *refs: tuple[str, str, int, int]) -> list[Any]:
    """INPUT0/INPUT1-style inputs of shape [1, 16] INT32, each read from a region."""
    inputs = []
    for name, region, byte_size, offset in refs:
        tensor = _module(protocol).InferInput(name, [1, 16], "INT32")
        tensor.set_shared_memory(region, byte_size, offset=offset)
        inputs.append(tensor)
    return inputs


def data_input(protocol: str, name: str, array: np.ndarray, binary: bool = True) -> Any:
    tensor = _module(protocol).InferInput(name, list(array.shape), "INT32")
    if protocol == "http":
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def requested(protocol: str, name: str, region: str = "", byte_size: int = 64, **kw: Any) -> Any:
    if protocol == "http":
        output = httpclient.InferRequestedOutput(name, binary_data=kw.get("binary", False))
    else:
        output = grpcclient.InferRequestedOutput(name)
    if region:
        output.set_shared_memory(region, byte_size, offset=kw.get("offset", 0))
    return output


def status_names(client: Any, protocol: str, cuda: bool = False) -> dict[str, dict[str, Any]]:
    """The registered regions by name, as the HTTP JSON shape (gRPC converted to it)."""
    get = client.get_cuda_shared_memory_status if cuda else client.get_system_shared_memory_status
    if protocol == "http":
        return {region["name"]: region for region in get()}
    regions = get(as_json=True).get("regions", {})
    converted = {}
    for name, region in regions.items():  # JSON of a proto: int64 as text, zeros left out
        entry = {k: v if k in ("name", "key") else int(v) for k, v in region.items()}
        if not cuda:
            entry.setdefault("offset", 0)
        converted[name] = entry
    return converted


def wait_for(condition: Callable[[], bool], failure: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def open_gate(gate: Path) -> None:
    """Let the gated model finish, and wait until it closed the gate behind it."""
    (gate / "release").touch()
    wait_for(lambda: not (gate / "release").exists(), "the gated model never finished")


def expect_error(
    protocol: str, call: Callable[[], object], http: int, grpc: str, text: str
) -> None:
    """The call fails with Triton's status for the protocol and exactly ``text``."""
    with pytest.raises(InferenceServerException) as info:
        call()
    status = str(info.value.status())
    assert status == (str(http) if protocol == "http" else f"StatusCode.{grpc}"), (
        status,
        info.value.message(),
    )
    assert info.value.message() == text


def register_io(client: Any, regions: Regions) -> None:
    """in0 = A, in1 = B, out0 and out1 empty: 64 bytes each, registered under their names."""
    regions.create("in0", 64, A)
    regions.create("in1", 64, B)
    regions.create("out0", 64)
    regions.create("out1", 64)
    for name in ("in0", "in1", "out0", "out1"):
        client.register_system_shared_memory(name, regions.key(name), 64)


# --- the switch and the extension list -------------------------------------------------


def test_extensions_listed(shm_server: RunningServer) -> None:
    extensions = shm_server.client().get_server_metadata()["extensions"]
    at = extensions.index("model_configuration")
    assert extensions[at + 1 : at + 4] == [
        "system_shared_memory",
        "cuda_shared_memory",
        "binary_tensor_data",
    ]


def test_disabled_by_default(plain_server: RunningServer, protocol: str, regions: Regions) -> None:
    """Without --allow-client-shm: register and unregister are refused, status still answers."""
    client = _client(plain_server, protocol)
    regions.create("dummy", 8)
    assert status_names(client, protocol) == {}
    register = lambda: client.register_system_shared_memory("dummy", regions.key("dummy"), 8)  # noqa: E731
    expect_error(protocol, register, 501, "UNIMPLEMENTED", DISABLED)
    expect_error(
        protocol,
        lambda: client.unregister_system_shared_memory("dummy"),
        501,
        "UNIMPLEMENTED",
        DISABLED,
    )
    expect_error(protocol, client.unregister_system_shared_memory, 501, "UNIMPLEMENTED", DISABLED)
    handle = base64.b64encode(b"\1" * 64)
    register_cuda = lambda: client.register_cuda_shared_memory("gpu", handle, 0, 64)  # noqa: E731
    expect_error(protocol, register_cuda, 501, "UNIMPLEMENTED", DISABLED)
    expect_error(protocol, client.unregister_cuda_shared_memory, 501, "UNIMPLEMENTED", DISABLED)
    assert status_names(client, protocol) == {}
    assert status_names(client, protocol, cuda=True) == {}
    # naming a region in a request is then an unknown region, as for any name
    inputs = shm_inputs(protocol, ("INPUT0", "dummy", 64, 0), ("INPUT1", "dummy", 64, 0))
    expect_error(
        protocol,
        lambda: client.infer("simple", inputs),
        404,
        "NOT_FOUND",
        "Unable to find shared memory region: 'dummy'",
    )


# --- register, status, unregister ---------------------------------------------------------


def test_register_status_unregister(client: Any, protocol: str, regions: Regions) -> None:
    regions.create("b_region", 128)
    regions.create("a_region", 64)
    client.register_system_shared_memory("b_region", regions.key("b_region"), 64, offset=32)
    client.register_system_shared_memory("a_region", regions.key("a_region"), 64)
    if protocol == "http":  # a list sorted by name, as tritonserver's std::map
        assert [r["name"] for r in client.get_system_shared_memory_status()] == [
            "a_region",
            "b_region",
        ]
    assert status_names(client, protocol) == {
        "a_region": {
            "name": "a_region",
            "key": regions.key("a_region"),
            "offset": 0,
            "byte_size": 64,
        },
        "b_region": {
            "name": "b_region",
            "key": regions.key("b_region"),
            "offset": 32,
            "byte_size": 64,
        },
    }
    one = client.get_system_shared_memory_status("b_region")
    if protocol == "http":
        assert one == [
            {"name": "b_region", "key": regions.key("b_region"), "offset": 32, "byte_size": 64}
        ]
    else:
        assert list(one.regions) == ["b_region"]
    client.unregister_system_shared_memory("b_region")
    assert list(status_names(client, protocol)) == ["a_region"]
    client.unregister_system_shared_memory("never_registered")  # Triton: fine
    client.unregister_system_shared_memory()
    assert status_names(client, protocol) == {}
    assert status_names(client, protocol, cuda=True) == {}


def test_status_of_unknown_region(client: Any, protocol: str) -> None:
    expect_error(
        protocol,
        lambda: client.get_system_shared_memory_status("nope"),
        404,
        "NOT_FOUND",
        "Unable to find system shared memory region: 'nope'",
    )
    expect_error(
        protocol,
        lambda: client.get_cuda_shared_memory_status("nope"),
        404,
        "NOT_FOUND",
        "Unable to find cuda shared memory region: 'nope'",
    )


def test_bad_registrations(client: Any, protocol: str, regions: Regions) -> None:
    regions.create("r", 64)
    key = regions.key("r")
    client.register_system_shared_memory("r", key, 64)
    cases = [
        (("r", key, 64), 400, "ALREADY_EXISTS", "shared memory region 'r' already in manager"),
        (
            ("x", regions.key("missing"), 64),
            500,
            "INTERNAL",
            f"Unable to open shared memory region: '{regions.key('missing')}'",
        ),
        (
            ("x", key, 65),
            400,
            "INVALID_ARGUMENT",
            "failed to register shared memory region 'x': invalid args",
        ),
        (
            ("x", key, 1, 64),
            400,
            "INVALID_ARGUMENT",
            "failed to register shared memory region 'x': invalid args",
        ),
        (
            ("x", key, 0),
            400,
            "INVALID_ARGUMENT",
            "failed to register shared memory region 'x': unable to process address "
            "spaceInvalid argument",
        ),
        # no way out of /dev/shm: shm_open refuses names with a slash
        (
            ("x", "/../etc/passwd", 8),
            500,
            "INTERNAL",
            "Unable to open shared memory region: '/../etc/passwd'",
        ),
        (
            ("x", "///", 8),
            400,
            "INVALID_ARGUMENT",
            "cannot register shared memory region 'x' - invalid shm key '///'",
        ),
        (
            ("x", "/triton_python_backend_shm_region_1", 8),
            400,
            "INVALID_ARGUMENT",
            "cannot register shared memory region 'x' with key "
            "'/triton_python_backend_shm_region_1' as the key contains the reserved prefix "
            "'triton_python_backend_shm_region_'",
        ),
    ]
    for (name, region_key, size, *offset), http, grpc, text in cases:

        def register(name=name, region_key=region_key, size=size, offset=offset) -> None:
            client.register_system_shared_memory(name, region_key, size, *offset)

        expect_error(protocol, register, http, grpc, text)
    assert list(status_names(client, protocol)) == ["r"]


def test_http_register_bodies(shm_server: RunningServer, regions: Regions) -> None:
    """Bodies tritonclient never sends, checked in tritonserver's order with its texts."""
    regions.create("r", 64)
    url = f"http://{shm_server.url}/v2/systemsharedmemory/region/x/register"
    non_string = "attempt to access JSON non-string as string"
    non_unsigned = "attempt to access JSON non-unsigned-integer as unsigned-integer"
    cases = [
        ({"byte_size": 64}, 400, "Shared memory register request has no 'key' field"),
        ([], 400, "Shared memory register request has no 'key' field"),
        ({"key": regions.key("r")}, 400, "Shared memory register request has no 'byte_size' field"),
        ({"key": 5, "byte_size": 64}, 500, non_string),
        ({"key": regions.key("r"), "byte_size": "64"}, 500, non_unsigned),
        ({"key": regions.key("r"), "byte_size": -1}, 500, non_unsigned),
        ({"key": regions.key("r"), "offset": "0", "byte_size": 8}, 500, non_unsigned),
    ]
    for body, status, text in cases:
        reply = requests.post(url, json=body)
        assert (reply.status_code, reply.json()["error"]) == (status, text)
    reply = requests.post(url, data=b"{nope")
    assert reply.status_code == 500
    assert reply.json()["error"].startswith("failed to parse the request JSON buffer: ")
    assert requests.get(url).status_code == 405


# --- inference ---------------------------------------------------------------------------


def test_inputs_and_outputs_in_shm(client: Any, protocol: str, regions: Regions) -> None:
    register_io(client, regions)
    inputs = shm_inputs(protocol, ("INPUT0", "in0", 64, 0), ("INPUT1", "in1", 64, 0))
    outputs = [
        requested(protocol, "OUTPUT0", "out0"),
        requested(protocol, "OUTPUT1", "out1"),
    ]
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(regions.read("out0", np.int32, [1, 16]), A + B)
    np.testing.assert_array_equal(regions.read("out1", np.int32, [1, 16]), A - B)
    response = result.get_response()
    if protocol == "http":  # metadata only: no data, no parameters
        assert response["outputs"] == [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16]},
        ]
    else:  # an empty raw_output_contents entry per output, as Triton sends
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
            ("OUTPUT0", "INT32", [1, 16]),
            ("OUTPUT1", "INT32", [1, 16]),
        ]
        assert list(response.raw_output_contents) == [b"", b""]
        assert not any(o.parameters for o in response.outputs)


def test_http_binary_output_default(shm_server: RunningServer, regions: Regions) -> None:
    """``binary_data_output`` leaves shared-memory outputs alone; only the others go binary."""
    register_io(shm_server.client(), regions)
    inputs = [
        {"name": name, "datatype": "INT32", "shape": [1, 16], "parameters": _shm(region)}
        for name, region in (("INPUT0", "in0"), ("INPUT1", "in1"))
    ]
    body = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    url = f"http://{shm_server.url}/v2/models/simple/infer"
    reply = requests.post(
        url, json={**body, "outputs": [{"name": "OUTPUT0", "parameters": _shm("out0")}]}
    )
    assert reply.status_code == 200, reply.text
    assert "Inference-Header-Content-Length" not in reply.headers  # nothing binary to send
    assert reply.json()["outputs"] == [{"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}]
    outputs = [{"name": "OUTPUT0", "parameters": _shm("out1")}, {"name": "OUTPUT1"}]
    reply = requests.post(url, json={**body, "outputs": outputs})
    length = int(reply.headers["Inference-Header-Content-Length"])
    header = json.loads(reply.content[:length])
    assert header["outputs"][0] == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 64}
    np.testing.assert_array_equal(np.frombuffer(reply.content[length:], np.int32), (A - B)[0])
    np.testing.assert_array_equal(regions.read("out1", np.int32, [1, 16]), A + B)
    shm_server.client().unregister_system_shared_memory()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_mixed_with_ordinary_tensors(
    client: Any, protocol: str, regions: Regions, binary: bool
) -> None:
    """One input from shared memory and one in the body; one output each way."""
    register_io(client, regions)
    for first_in_shm in (True, False):  # gRPC raw contents go to the non-shm inputs in order
        shm_input = shm_inputs(protocol, ("INPUT0" if first_in_shm else "INPUT1", "in0", 64, 0))[0]
        body_input = data_input(protocol, "INPUT1" if first_in_shm else "INPUT0", B, binary)
        outputs = [
            requested(protocol, "OUTPUT0", "out0"),
            requested(protocol, "OUTPUT1", binary=binary),
        ]
        result = client.infer("simple", [shm_input, body_input], outputs=outputs)
        a, b = (A, B) if first_in_shm else (B, A)
        np.testing.assert_array_equal(regions.read("out0", np.int32, [1, 16]), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_offsets_within_regions(client: Any, protocol: str, regions: Regions) -> None:
    """Two inputs in one region, two outputs in another, each at its own offset; the
    input region registered from an unaligned offset of its object."""
    regions.create("ins", 136)
    shm.set_shared_memory_region(regions.handles["ins"], [A], offset=8)
    shm.set_shared_memory_region(regions.handles["ins"], [B], offset=72)
    regions.create("outs", 192)
    client.register_system_shared_memory("ins", regions.key("ins"), 128, offset=8)
    client.register_system_shared_memory("outs", regions.key("outs"), 192)
    inputs = shm_inputs(protocol, ("INPUT0", "ins", 64, 0), ("INPUT1", "ins", 64, 64))
    outputs = [
        requested(protocol, "OUTPUT0", "outs", 64, offset=128),
        requested(protocol, "OUTPUT1", "outs", 100, offset=10),  # larger than needed is fine
    ]
    client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(regions.read("outs", np.int32, [1, 16], offset=128), A + B)
    np.testing.assert_array_equal(regions.read("outs", np.int32, [1, 16], offset=10), A - B)


def test_output_into_the_input_region(client: Any, protocol: str, regions: Regions) -> None:
    register_io(client, regions)
    inputs = shm_inputs(protocol, ("INPUT0", "in0", 64, 0), ("INPUT1", "in1", 64, 0))
    client.infer("simple", inputs, outputs=[requested(protocol, "OUTPUT0", "in1")])
    np.testing.assert_array_equal(regions.read("in1", np.int32, [1, 16]), A + B)


def test_bytes_in_shm(client: Any, protocol: str, regions: Regions) -> None:
    values = np.array([b"hello", b"shared", b"", "\u00e9t\u00e9".encode()], dtype=np.object_)
    serialized = serialize_byte_tensor(values)
    size = len(serialized.item())
    regions.create("text_in", 256, serialized)
    regions.create("text_out", 256)
    client.register_system_shared_memory("text_in", regions.key("text_in"), 256)
    client.register_system_shared_memory("text_out", regions.key("text_out"), 256)
    tensor = _module(protocol).InferInput("IN", [4], "BYTES")
    tensor.set_shared_memory("text_in", size)
    result = client.infer(
        "reverse", [tensor], outputs=[requested(protocol, "OUT", "text_out", 256)]
    )
    expected = [v[::-1] for v in values]
    assert list(regions.read("text_out", np.object_, [4])) == expected
    if protocol == "http":
        assert result.get_response()["outputs"] == [
            {"name": "OUT", "datatype": "BYTES", "shape": [4]}
        ]
    small = requested(protocol, "OUT", "text_out", size - 1)
    expect_error(
        protocol,
        lambda: client.infer("reverse", [tensor], outputs=[small]),
        500,
        "INTERNAL",
        f"shared memory size specified with the request for output 'OUT' ({size - 1} bytes) "
        f"should be at least {size} bytes to hold the results",
    )


def test_grpc_stream_with_shm(shm_server: RunningServer, regions: Regions) -> None:
    client = grpcclient.InferenceServerClient(shm_server.grpc_url)
    register_io(client, regions)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        inputs = shm_inputs("grpc", ("INPUT0", "in0", 64, 0), ("INPUT1", "in1", 64, 0))
        client.async_stream_infer("simple", inputs, outputs=[requested("grpc", "OUTPUT1", "out1")])
        _, error = results.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None
    np.testing.assert_array_equal(regions.read("out1", np.int32, [1, 16]), A - B)
    client.unregister_system_shared_memory()  # the stream left nothing in use
    assert status_names(client, "grpc") == {}
    client.close()


def test_aio_http_client(shm_server: RunningServer, regions: Regions) -> None:
    async def run() -> None:
        async with httpaio.InferenceServerClient(shm_server.url) as client:
            regions.create("in0", 64, A)
            regions.create("out0", 64)
            await client.register_system_shared_memory("in0", regions.key("in0"), 64)
            await client.register_system_shared_memory("out0", regions.key("out0"), 64)
            inputs = shm_inputs("http", ("INPUT0", "in0", 64, 0), ("INPUT1", "in0", 64, 0))
            await client.infer("simple", inputs, outputs=[requested("http", "OUTPUT0", "out0")])
            assert len(await client.get_system_shared_memory_status()) == 2
            await client.unregister_system_shared_memory()

    asyncio.run(run())
    np.testing.assert_array_equal(regions.read("out0", np.int32, [1, 16]), A + A)


def test_client_destroys_a_registered_region(client: Any, protocol: str, regions: Regions) -> None:
    """The client unmaps and unlinks its object: the server's mapping stays valid."""
    register_io(client, regions)
    regions.destroy("in0")
    inputs = shm_inputs(protocol, ("INPUT0", "in0", 64, 0), ("INPUT1", "in1", 64, 0))
    result = client.infer("simple", inputs, outputs=[requested(protocol, "OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


# --- bad references ------------------------------------------------------------------------


def test_bad_references(client: Any, protocol: str, regions: Regions) -> None:
    register_io(client, regions)

    def infer(
        in0: tuple[str, int, int] = ("in0", 64, 0), out0: tuple[str, int, int] | None = None
    ) -> Any:
        inputs = shm_inputs(protocol, ("INPUT0", *in0), ("INPUT1", "in1", 64, 0))
        outputs = (
            [requested(protocol, "OUTPUT0", out0[0], out0[1], offset=out0[2])] if out0 else None
        )
        return lambda: client.infer("simple", inputs, outputs=outputs)

    invalid = (400, "INVALID_ARGUMENT")
    cases = [
        (infer(("nope", 64, 0)), 404, "NOT_FOUND", "Unable to find shared memory region: 'nope'"),
        (
            infer(out0=("nope", 64, 0)),
            404,
            "NOT_FOUND",
            "Unable to find shared memory region: 'nope'",
        ),
        (infer(("in0", 4, 64)), *invalid, "Invalid offset for shared memory region: 'in0'"),
        (
            infer(("in0", 64, 4)),
            *invalid,
            "Invalid offset + byte size for shared memory region: 'in0'",
        ),
        (
            infer(("in0", 68, 0)),
            *invalid,
            "Invalid offset + byte size for shared memory region: 'in0'",
        ),
        (infer(out0=("out0", 64, 64)), *invalid, "Invalid offset for shared memory region: 'out0'"),
        (
            infer(out0=("out0", 64, 4)),
            *invalid,
            "Invalid offset + byte size for shared memory region: 'out0'",
        ),
        (
            infer(("in0", 60, 0)),
            *invalid,
            "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model "
            "'simple'. Expected 64, got 60",
        ),
        (
            infer(out0=("out0", 32, 0)),
            500,
            "INTERNAL",
            "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should "
            "be at least 64 bytes to hold the results",
        ),
    ]
    for call, http, grpc, text in cases:
        expect_error(protocol, call, http, grpc, text)
    # nothing stayed leased: every region unregisters
    client.unregister_system_shared_memory()
    assert status_names(client, protocol) == {}


def _post_infer(
    server: RunningServer, inputs: list[Any], outputs: list[Any] | None = None
) -> requests.Response:
    body = {"inputs": inputs, **({"outputs": outputs} if outputs else {})}
    return requests.post(f"http://{server.url}/v2/models/simple/infer", json=body)


def _shm(region: Any, size: Any = 64, **extra: Any) -> dict[str, Any]:
    return {"shared_memory_region": region, "shared_memory_byte_size": size, **extra}


def test_http_bad_references(shm_server: RunningServer, regions: Regions) -> None:
    """JSON tritonclient never sends: Triton's parse errors for the shared memory fields."""
    client = shm_server.client()
    register_io(client, regions)
    good = {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": _shm("in1")}

    def in0(**fields: Any) -> dict[str, Any]:
        return {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], **fields}

    fields = (
        "Input must set only one of the following fields: 'data', 'binary_data_size' in "
        "'parameters', 'shared_memory_region' in 'parameters'. But set "
    )
    unsigned = "attempt to access JSON non-unsigned-integer as unsigned-integer"
    cases = [
        (
            [in0(data=[1] * 16, parameters=_shm("in0")), good],
            None,
            400,
            fields + "'data' 'shared_memory_region'",
        ),
        (
            [in0(parameters=_shm("in0", binary_data_size=64)), good],
            None,
            400,
            fields + "'binary_data_size' 'shared_memory_region'",
        ),
        (
            [in0(parameters={"shared_memory_region": "in0"}), good],
            None,
            400,
            "Invalid offset + byte size for shared memory region: 'in0'",
        ),
        (
            [in0(parameters=_shm(5)), good],
            None,
            500,
            "Unable to parse 'shared_memory_region': attempt to access JSON non-string as string",
        ),
        (
            [in0(parameters=_shm("in0", "64")), good],
            None,
            500,
            f"Unable to parse 'shared_memory_byte_size': {unsigned}",
        ),
        (
            [in0(parameters=_shm("in0", -1)), good],
            None,
            500,
            f"Unable to parse 'shared_memory_byte_size': {unsigned}",
        ),
        (
            [in0(parameters=_shm("in0", shared_memory_offset="0")), good],
            None,
            500,
            f"Unable to parse 'shared_memory_offset': {unsigned}",
        ),
        (
            [in0(parameters=_shm("in0", shared_memory_offset=2**64 - 32)), good],
            None,
            400,
            "Invalid offset for shared memory region: 'in0'",
        ),
        (
            [in0(parameters=_shm("in0")), good],
            [{"name": "OUTPUT0", "parameters": _shm("out0", binary_data=True)}],
            400,
            "Output can't set both 'shared_memory_region' and 'binary_data'",
        ),
        (
            [in0(parameters=_shm("in0")), good],
            [{"name": "OUTPUT0", "parameters": _shm("out0", classification=2)}],
            400,
            "Output can't set both 'shared_memory_region' and 'classification'",
        ),
        (
            [in0(shape=[1, 8], parameters=_shm("in0")), good],
            None,
            400,
            "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'simple'. "
            "Expected [-1,16], got [1,8]. NOTE: Setting a non-zero max_batch_size in the model "
            "config requires a batch dimension to be prepended to each input shape. If you want "
            "to specify the full shape including the batch dim in your input dims config, try "
            "setting max_batch_size to zero. See the model configuration docs for more info on "
            "max_batch_size.",
        ),
    ]
    for inputs, outputs, status, text in cases:
        reply = _post_infer(shm_server, inputs, outputs)
        assert (reply.status_code, reply.json()["error"]) == (status, text)
    # byte size and offset without a region mean nothing (Triton ignores them)
    plain = in0(
        data=A.tolist(), parameters={"shared_memory_byte_size": 64, "shared_memory_offset": 0}
    )
    reply = _post_infer(
        shm_server,
        [plain, good],
        [{"name": "OUTPUT0", "parameters": {"shared_memory_byte_size": 64}}],
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == (A + B).reshape(-1).tolist()
    client.unregister_system_shared_memory()


def test_grpc_bad_parameters(shm_server: RunningServer, regions: Regions) -> None:
    client = grpcclient.InferenceServerClient(shm_server.grpc_url)
    register_io(client, regions)

    def attempt(edit: Callable[[Any, Any], None]) -> Callable[[], object]:
        inputs = shm_inputs("grpc", ("INPUT0", "in0", 64, 0), ("INPUT1", "in1", 64, 0))
        output = requested("grpc", "OUTPUT0", "out0")
        edit(inputs[0], output)
        return lambda: client.infer("simple", inputs, outputs=[output])

    def params(tensor: Any) -> Any:
        return tensor._input.parameters if hasattr(tensor, "_input") else tensor._output.parameters

    def set_region_int(t: Any, o: Any) -> None:
        params(t)["shared_memory_region"].int64_param = 3

    def set_size_string(t: Any, o: Any) -> None:
        params(t)["shared_memory_byte_size"].string_param = "64"

    def set_offset_uint(t: Any, o: Any) -> None:
        params(t)["shared_memory_offset"].uint64_param = 0

    def drop_size(t: Any, o: Any) -> None:
        del params(t)["shared_memory_byte_size"]

    def add_contents(t: Any, o: Any) -> None:
        t._input.contents.int_contents.extend([1] * 16)

    def classify(t: Any, o: Any) -> None:
        params(o)["classification"].int64_param = 2

    def negative_offset(t: Any, o: Any) -> None:
        params(t)["shared_memory_offset"].int64_param = -8

    TENSOR = "'INPUT0'"
    cases = [
        (
            set_region_int,
            f"invalid value type for 'shared_memory_region' parameter for tensor {TENSOR}, "
            "expected string_param.",
        ),
        (
            set_size_string,
            f"invalid value type for 'shared_memory_byte_size' parameter for tensor {TENSOR}, "
            "expected int64_param.",
        ),
        (
            set_offset_uint,
            f"invalid value type for 'shared_memory_offset' parameter for tensor {TENSOR}, "
            "expected int64_param.",
        ),
        (
            drop_size,
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' "
            f"parameter for tensor {TENSOR}",
        ),
        (
            add_contents,
            "unexpected 'content' provided when using shared memory for input tensor "
            "'INPUT0' for model 'simple'",
        ),
        (classify, "output can't set both 'shared_memory_region' and 'classification'"),
        (negative_offset, "Invalid offset for shared memory region: 'in0'"),
    ]
    for edit, text in cases:
        expect_error("grpc", attempt(edit), 400, "INVALID_ARGUMENT", text)
    plain = data_input("grpc", "INPUT0", A)
    plain._input.parameters["shared_memory_offset"].int64_param = 0
    expect_error(
        "grpc",
        lambda: client.infer("simple", [plain, *shm_inputs("grpc", ("INPUT1", "in1", 64, 0))]),
        400,
        "INVALID_ARGUMENT",
        "'shared_memory_offset' can not be specified without 'shared_memory_region' parameter "
        "for tensor 'INPUT0'",
    )
    client.unregister_system_shared_memory()
    client.close()


# --- in use --------------------------------------------------------------------------------


def test_unregister_while_in_use(
    shm_server: RunningServer, client: Any, protocol: str, regions: Regions, gate: Path
) -> None:
    """tritonserver 2.51: a region a request holds cannot be unregistered until it ends."""
    register_io(client, regions)
    regions.create("idle", 8)
    client.register_system_shared_memory("idle", regions.key("idle"), 8)
    inputs = shm_inputs("http", ("INPUT0", "in0", 64, 0), ("INPUT1", "in1", 64, 0))
    outputs = [requested("http", "OUTPUT0", "out0"), requested("http", "OUTPUT1", "out1")]
    with httpclient.InferenceServerClient(shm_server.url) as caller:
        pending = caller.async_infer("gated", inputs, outputs=outputs)
        wait_for(lambda: (gate / "started").exists(), "the model never started")
        for name in ("in0", "out1"):
            expect_error(
                protocol,
                lambda name=name: client.unregister_system_shared_memory(name),  # type: ignore[misc]
                500,
                "INTERNAL",
                f"Cannot unregister shared memory region '{name}', it is currently in use.",
            )
        expect_error(
            protocol,
            client.unregister_system_shared_memory,
            500,
            "INTERNAL",
            "Failed to unregister the following system shared memory regions: "
            "in0 ,in1 ,out0 ,out1 ,",
        )
        assert sorted(status_names(client, protocol)) == ["in0", "in1", "out0", "out1"]  # idle went
        open_gate(gate)
        pending.get_result()
    np.testing.assert_array_equal(regions.read("out0", np.int32, [1, 16]), A + B)
    np.testing.assert_array_equal(regions.read("out1", np.int32, [1, 16]), A - B)
    client.unregister_system_shared_memory()
    assert status_names(client, protocol) == {}


# --- CUDA shared memory on a machine without CUDA ----------------------------------------------


def _has_cuda() -> bool:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return False
    error, count = runtime.cudaGetDeviceCount()
    return error == runtime.cudaError_t.cudaSuccess and count > 0


@pytest.mark.skipif(_has_cuda(), reason="this machine has CUDA: tests/gpu covers it")
def test_cuda_register_without_cuda(client: Any, protocol: str) -> None:
    """tritonserver (a GPU build on a machine without a GPU) answers "invalid args"."""
    handle = base64.b64encode(bytes(range(64)))
    expect_error(
        protocol,
        lambda: client.register_cuda_shared_memory("gpu", handle, 0, 64),
        400,
        "INVALID_ARGUMENT",
        "failed to register shared memory region: invalid args",
    )
    assert status_names(client, protocol, cuda=True) == {}
    client.unregister_cuda_shared_memory("gpu")
    client.unregister_cuda_shared_memory()


def test_http_cuda_register_bodies(shm_server: RunningServer) -> None:
    url = f"http://{shm_server.url}/v2/cudasharedmemory/region/gpu/register"
    handle = base64.b64encode(bytes(64)).decode()
    cases = [
        (
            {"device_id": 0, "byte_size": 64},
            400,
            "Shared memory register request has no 'raw_handle' field",
        ),
        (
            {"raw_handle": "x", "device_id": 0, "byte_size": 64},
            500,
            "attempt to access non-existing object member 'b64'",
        ),
        (
            {"raw_handle": {"b64": 5}, "device_id": 0, "byte_size": 64},
            500,
            "attempt to access JSON non-string as string",
        ),
        (
            {"raw_handle": {"b64": handle}, "device_id": 0},
            500,
            "attempt to access non-existing object member 'byte_size'",
        ),
        (
            {"raw_handle": {"b64": handle}, "byte_size": 64},
            500,
            "attempt to access non-existing object member 'device_id'",
        ),
        (
            {"raw_handle": {"b64": handle}, "device_id": -1, "byte_size": 64},
            500,
            "attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        (
            {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64},
            400,
            "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t",
        ),
        (
            {"raw_handle": {"b64": "!!!!"}, "device_id": 0, "byte_size": 64},
            400,
            "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t",
        ),
    ]
    for body, status, text in cases:
        reply = requests.post(url, json=body)
        assert (reply.status_code, reply.json()["error"]) == (status, text)


def test_a_cancelled_request_releases_its_regions(
    shm_server: RunningServer, client: Any, protocol: str, regions: Regions, gate: Path
) -> None:
    """A client that goes away mid-request leaves no region leased."""
    register_io(client, regions)
    inputs = [
        {"name": name, "datatype": "INT32", "shape": [1, 16], "parameters": _shm(region)}
        for name, region in (("INPUT0", "in0"), ("INPUT1", "in1"))
    ]
    body = json.dumps(
        {"inputs": inputs, "outputs": [{"name": "OUTPUT0", "parameters": _shm("out0")}]}
    )
    host, port = shm_server.url.split(":")
    connection = HTTPConnection(host, int(port))
    try:
        connection.request("POST", "/v2/models/gated/infer", body)
        wait_for(lambda: (gate / "started").exists(), "the model never started")
    finally:
        connection.close()
    try:
        deadline = time.monotonic() + 30
        while True:  # the server notices the disconnect, cancels, and ends the leases
            try:
                client.unregister_system_shared_memory()
                break
            except InferenceServerException:
                assert time.monotonic() < deadline, "the regions stayed leased"
                time.sleep(0.05)
    finally:
        open_gate(gate)
    assert status_names(client, protocol) == {}


def test_a_view_outliving_its_request_keeps_the_mapping(regions: Regions) -> None:
    """In process: a backend that kept an input array can never read unmapped memory."""
    registry = SharedMemoryRegistry(allowed=True)
    regions.create("kept", 64, A)
    registry.register_system("kept", regions.key("kept"), 0, 64)
    placeholder = np.broadcast_to(np.zeros((), np.int32), (1, 16))
    parameters = {"shared_memory_region": "kept", "shared_memory_byte_size": 64}
    request = InferenceRequest("m", {"X": Tensor("X", "INT32", placeholder, parameters)})
    with registry.attach(request):
        kept = request.inputs["X"].data
        with pytest.raises(Internal, match="it is currently in use"):
            registry.unregister("system", "kept")
    assert not kept.flags.writeable  # the client's memory is read-only to models
    registry.unregister("system", "kept")  # the lease ended: unregistered, mapping kept
    assert registry.status("system") == []
    regions.destroy("kept")
    np.testing.assert_array_equal(kept, A)
    registry.close()
