"""CUDA shared memory with ``tritonclient.utils.cuda_shared_memory``, over HTTP and gRPC.

The client allocates device memory and sends its raw ``cudaIpcMemHandle_t``; the server
(another process, as CUDA IPC requires) opens it, reads inputs from the device and writes
outputs there. The models are Python models on the CPU: their inputs are host copies.
Skipped without CUDA; run on the lent GPU machine with the project and tritonclient
installed:

    python -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_shared_memory.py
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from ..integration.conftest import RunningServer, start_server, write_model
from .conftest import Cuda, cuda_device_count

pytestmark = pytest.mark.cuda

if cuda_device_count():  # tritonclient's CUDA helpers import cuda-bindings at once
    import tritonclient.utils.cuda_shared_memory as cudashm
else:
    cudashm = None

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


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def server(
    cuda: Cuda, tmp_path_factory: pytest.TempPathFactory, gate: Path
) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("cuda_shm_repo")
    write_model(repo, "simple", ADD_SUB.format(name="simple"), ADD_SUB_PY.format(gate=""))
    write_model(repo, "gated", ADD_SUB.format(name="gated"), ADD_SUB_PY.format(gate=str(gate)))
    write_model(repo, "reverse", REVERSE, REVERSE_PY)
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    running = start_server(repo, "--allow-client-shm=true", log_path=log_path)
    client = running.client()
    deadline = time.monotonic() + 60
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(params=["http", "grpc"])
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(server: RunningServer, protocol: str) -> Iterator[Any]:
    if protocol == "http":
        c: Any = httpclient.InferenceServerClient(server.url)
    else:
        c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.unregister_cuda_shared_memory()  # every test leaves the server as it found it
    c.unregister_system_shared_memory()
    c.close()


class DeviceRegions:
    """CUDA allocations made by ``tritonclient.utils.cuda_shared_memory`` for one test."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.handles: dict[str, Any] = {}

    def create(self, name: str, byte_size: int, *values: np.ndarray) -> Any:
        handle = cudashm.create_shared_memory_region(name, byte_size, self.device_id)
        self.handles[name] = handle
        if values:
            cudashm.set_shared_memory_region(handle, list(values))
        return handle

    def register(self, client: Any, name: str, byte_size: int | None = None) -> None:
        handle = self.handles[name]
        size = handle._byte_size if byte_size is None else byte_size
        client.register_cuda_shared_memory(
            name, cudashm.get_raw_handle(handle), self.device_id, size
        )

    def read(self, name: str, dtype: Any, shape: list[int]) -> np.ndarray:
        return cudashm.get_contents_as_numpy(self.handles[name], dtype, shape)

    def close(self) -> None:
        for handle in self.handles.values():
            cudashm.destroy_shared_memory_region(handle)
        self.handles.clear()


@pytest.fixture
def device(cuda: Cuda) -> Iterator[DeviceRegions]:
    regions = DeviceRegions(cuda.device_id)
    yield regions
    regions.close()


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def shm_input(protocol: str, name: str, region: str, byte_size: int = 64, offset: int = 0) -> Any:
    tensor = _module(protocol).InferInput(name, [1, 16], "INT32")
    tensor.set_shared_memory(region, byte_size, offset=offset)
    return tensor


def requested(protocol: str, name: str, region: str = "", byte_size: int = 64) -> Any:
    if protocol == "http":
        output = httpclient.InferRequestedOutput(name, binary_data=False)
    else:
        output = grpcclient.InferRequestedOutput(name)
    if region:
        output.set_shared_memory(region, byte_size)
    return output


def cuda_status(client: Any, protocol: str) -> dict[str, dict[str, Any]]:
    if protocol == "http":
        return {r["name"]: r for r in client.get_cuda_shared_memory_status()}
    regions = client.get_cuda_shared_memory_status(as_json=True).get("regions", {})
    return {
        name: {
            "name": r["name"],
            "device_id": int(r.get("device_id", 0)),
            "byte_size": int(r["byte_size"]),
        }
        for name, r in regions.items()
    }


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
    with pytest.raises(InferenceServerException) as info:
        call()
    status = str(info.value.status())
    assert status == (str(http) if protocol == "http" else f"StatusCode.{grpc}"), (
        status,
        info.value.message(),
    )
    assert info.value.message() == text


def register_io(client: Any, device: DeviceRegions) -> None:
    device.create("in0", 64, A)
    device.create("in1", 64, B)
    device.create("out0", 64)
    device.create("out1", 64)
    for name in ("in0", "in1", "out0", "out1"):
        device.register(client, name)


# --- register, status, unregister ---------------------------------------------------------


def test_register_status_unregister(client: Any, protocol: str, device: DeviceRegions) -> None:
    device.create("b_gpu", 256)
    device.create("a_gpu", 64)
    device.register(client, "b_gpu", 128)
    device.register(client, "a_gpu")
    assert cuda_status(client, protocol) == {
        "a_gpu": {"name": "a_gpu", "device_id": device.device_id, "byte_size": 64},
        "b_gpu": {"name": "b_gpu", "device_id": device.device_id, "byte_size": 128},
    }
    if protocol == "http":
        assert client.get_cuda_shared_memory_status("b_gpu") == [
            {"name": "b_gpu", "device_id": device.device_id, "byte_size": 128}
        ]
        assert client.get_system_shared_memory_status() == []
    client.unregister_cuda_shared_memory("b_gpu")
    assert list(cuda_status(client, protocol)) == ["a_gpu"]
    client.unregister_cuda_shared_memory("never_registered")
    client.unregister_cuda_shared_memory()
    assert cuda_status(client, protocol) == {}


def test_bad_registrations(client: Any, protocol: str, device: DeviceRegions) -> None:
    device.create("gpu", 64)
    device.register(client, "gpu")
    handle = cudashm.get_raw_handle(device.handles["gpu"])
    register = client.register_cuda_shared_memory
    expect_error(
        protocol,
        lambda: register("gpu", handle, device.device_id, 64),
        400,
        "ALREADY_EXISTS",
        "shared memory region 'gpu' already in manager",
    )
    expect_error(  # larger than the allocation
        protocol,
        lambda: register("big", handle, device.device_id, 1 << 30),
        400,
        "INVALID_ARGUMENT",
        "failed to register shared memory region 'big': invalid args",
    )
    expect_error(  # not a handle of any allocation
        protocol,
        lambda: register("junk", base64.b64encode(bytes(range(64))), device.device_id, 64),
        400,
        "INVALID_ARGUMENT",
        "failed to register shared memory region: invalid args",
    )
    assert list(cuda_status(client, protocol)) == ["gpu"]


def test_system_and_cuda_share_names(client: Any, protocol: str, device: DeviceRegions) -> None:
    key = f"/tk_gpu_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    system = shm.create_shared_memory_region("same", key, 64)
    try:
        client.register_system_shared_memory("same", key, 64)
        device.create("same", 64)
        expect_error(
            protocol,
            lambda: device.register(client, "same"),
            400,
            "ALREADY_EXISTS",
            "shared memory region 'same' already in manager",
        )
        expect_error(
            protocol,
            lambda: client.get_cuda_shared_memory_status("same"),
            404,
            "NOT_FOUND",
            "Unable to find cuda shared memory region: 'same'",
        )
        client.unregister_cuda_shared_memory("same")  # a system region: left alone
        status = client.get_system_shared_memory_status()
        names = [r["name"] for r in status] if protocol == "http" else list(status.regions)
        assert names == ["same"]
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(system)


# --- inference ---------------------------------------------------------------------------


def test_inputs_and_outputs_on_the_device(
    client: Any, protocol: str, device: DeviceRegions
) -> None:
    register_io(client, device)
    inputs = [shm_input(protocol, "INPUT0", "in0"), shm_input(protocol, "INPUT1", "in1")]
    outputs = [requested(protocol, "OUTPUT0", "out0"), requested(protocol, "OUTPUT1", "out1")]
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(device.read("out0", np.int32, [1, 16]), A + B)
    np.testing.assert_array_equal(device.read("out1", np.int32, [1, 16]), A - B)
    response = result.get_response()
    if protocol == "http":
        assert response["outputs"] == [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16]},
        ]
    else:
        assert list(response.raw_output_contents) == [b"", b""]


def test_mixed_with_system_shm_and_body(client: Any, protocol: str, device: DeviceRegions) -> None:
    """INPUT0 on the device, INPUT1 in system shared memory; OUTPUT0 to the device,
    OUTPUT1 in the response."""
    key = f"/tk_gpu_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    system = shm.create_shared_memory_region("host_in", key, 64)
    try:
        shm.set_shared_memory_region(system, [B])
        client.register_system_shared_memory("host_in", key, 64)
        device.create("in0", 64, A)
        device.create("out0", 64)
        device.register(client, "in0")
        device.register(client, "out0")
        inputs = [shm_input(protocol, "INPUT0", "in0"), shm_input(protocol, "INPUT1", "host_in")]
        outputs = [requested(protocol, "OUTPUT0", "out0"), requested(protocol, "OUTPUT1")]
        result = client.infer("simple", inputs, outputs=outputs)
        np.testing.assert_array_equal(device.read("out0", np.int32, [1, 16]), A + B)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(system)


def test_offsets_on_the_device(client: Any, protocol: str, device: DeviceRegions) -> None:
    device.create("ins", 128, A, B)  # A at 0, B at 64
    device.create("outs", 64)
    device.register(client, "ins")
    device.register(client, "outs")
    inputs = [
        shm_input(protocol, "INPUT0", "ins", 64, 0),
        shm_input(protocol, "INPUT1", "ins", 64, 64),
    ]
    client.infer("simple", inputs, outputs=[requested(protocol, "OUTPUT1", "outs")])
    np.testing.assert_array_equal(device.read("outs", np.int32, [1, 16]), A - B)


def test_bytes_on_the_device(client: Any, protocol: str, device: DeviceRegions) -> None:
    values = np.array([b"hello", b"device", b""], dtype=np.object_)
    serialized = serialize_byte_tensor(values)
    size = len(serialized.item())
    device.create("text_in", size, serialized)
    device.create("text_out", 256)
    device.register(client, "text_in")
    device.register(client, "text_out")
    tensor = _module(protocol).InferInput("IN", [3], "BYTES")
    tensor.set_shared_memory("text_in", size)
    client.infer("reverse", [tensor], outputs=[requested(protocol, "OUT", "text_out", 256)])
    assert list(device.read("text_out", np.object_, [3])) == [v[::-1] for v in values]


def test_bad_references(client: Any, protocol: str, device: DeviceRegions) -> None:
    register_io(client, device)

    def infer(
        in0: tuple[str, int, int] = ("in0", 64, 0), out_size: int = 64
    ) -> Callable[[], object]:
        inputs = [shm_input(protocol, "INPUT0", *in0), shm_input(protocol, "INPUT1", "in1")]
        outputs = [requested(protocol, "OUTPUT0", "out0", out_size)]
        return lambda: client.infer("simple", inputs, outputs=outputs)

    invalid = (400, "INVALID_ARGUMENT")
    expect_error(
        protocol, infer(("in0", 4, 64)), *invalid, "Invalid offset for shared memory region: 'in0'"
    )
    expect_error(
        protocol,
        infer(("in0", 64, 4)),
        *invalid,
        "Invalid offset + byte size for shared memory region: 'in0'",
    )
    expect_error(
        protocol,
        infer(("in0", 60, 0)),
        *invalid,
        "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model "
        "'simple'. Expected 64, got 60",
    )
    expect_error(
        protocol,
        infer(out_size=32),
        500,
        "INTERNAL",
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should "
        "be at least 64 bytes to hold the results",
    )
    client.unregister_cuda_shared_memory()  # nothing stayed leased
    assert cuda_status(client, protocol) == {}


def test_unregister_while_in_use(
    server: RunningServer, client: Any, protocol: str, device: DeviceRegions, gate: Path
) -> None:
    register_io(client, device)
    inputs = [shm_input("http", "INPUT0", "in0"), shm_input("http", "INPUT1", "in1")]
    outputs = [requested("http", "OUTPUT0", "out0"), requested("http", "OUTPUT1", "out1")]
    with httpclient.InferenceServerClient(server.url) as caller:
        pending = caller.async_infer("gated", inputs, outputs=outputs)
        wait_for(lambda: (gate / "started").exists(), "the model never started")
        expect_error(
            protocol,
            lambda: client.unregister_cuda_shared_memory("in0"),
            500,
            "INTERNAL",
            "Cannot unregister shared memory region 'in0', it is currently in use.",
        )
        expect_error(
            protocol,
            client.unregister_cuda_shared_memory,
            500,
            "INTERNAL",
            "Failed to unregister the following cuda shared memory regions: in0 ,in1 ,out0 ,out1 ,",
        )
        open_gate(gate)
        pending.get_result()
    np.testing.assert_array_equal(device.read("out0", np.int32, [1, 16]), A + B)
    client.unregister_cuda_shared_memory()
    assert cuda_status(client, protocol) == {}
