"""Tensors stay on the GPU between CUDA shared memory and a ``KIND_GPU`` PyTorch model.

How "no round trip through host memory" is observed: the server copies between a CUDA
region and host memory in exactly two functions (``CudaRegion.read`` and ``.write`` in
``kernel/shared_memory.py``), and each logs ``CUDA shared memory '<region>': N bytes
copied to|from host memory`` at verbose level 1. The PyTorch backend logs ``input ... used
in place in CUDA shared memory`` and ``output ... copied on cuda:0 into CUDA shared
memory`` when it uses a region where it lies. A Python model on the CPU is the control:
its copies are logged, so the absence of the lines for the GPU model means something.

Skipped without CUDA; run on the lent GPU machine:

    python -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_shm_zero_copy.py
"""

from __future__ import annotations

import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ..integration.conftest import RunningServer, start_server, write_model
from .conftest import Cuda, cuda_device_count

pytestmark = pytest.mark.cuda

torch = pytest.importorskip("torch")

if cuda_device_count():  # tritonclient's CUDA helpers import cuda-bindings at once
    import tritonclient.utils.cuda_shared_memory as cudashm
else:
    cudashm = None


class ScaleOnDevice(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        where = torch.ones_like(x[:, :1]) * float(x.is_cuda)
        return x * 2.0 + 1.0, where


IO = """
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 1 ] }
]
"""
GPU0 = "instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]\n"
COPY_CPU_PY = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy()
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT__0", x * 2 + 1),
                    pb_utils.Tensor("OUTPUT__1", (x[:, :1] * 0).astype(x.dtype)),
                ]))
            return responses
"""
X = np.arange(6, dtype=np.float32).reshape(2, 3)


def _torch_model(repo: Path, name: str, extra: str) -> None:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True)
    config = f'backend: "pytorch"\nmax_batch_size: 8\n{IO}{textwrap.dedent(extra)}'
    (model_dir / "config.pbtxt").write_text(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(ScaleOnDevice()).save(str(model_dir / "1" / "model.pt"))


@pytest.fixture(scope="module")
def server(cuda: Cuda, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("zero_copy_repo")
    _torch_model(repo, "scale_gpu", GPU0)
    _torch_model(
        repo,
        "scale_batched",
        GPU0 + "dynamic_batching { preferred_batch_size: [ 2 ] "
        "max_queue_delay_microseconds: 5000000 }\n",
    )
    _torch_model(repo, "scale_cached", GPU0 + "response_cache { enable: true }\n")
    write_model(
        repo,
        "copy_cpu",
        f'backend: "python"\nmax_batch_size: 8\n{IO}instance_group [ {{ kind: KIND_CPU }} ]\n',
        COPY_CPU_PY,
    )
    log_path = tmp_path_factory.mktemp("zero_copy_log") / "server.log"
    running = start_server(
        repo,
        "--allow-client-shm=true",
        "--log-verbose=1",
        "--cache-config=local,size=1048576",
        log_path=log_path,
    )
    with running.client() as client:
        deadline = time.monotonic() + 120
        models = ("scale_gpu", "scale_batched", "scale_cached", "copy_cpu")
        while not all(client.is_model_ready(m) for m in models):
            assert time.monotonic() < deadline, running.log()
            time.sleep(0.1)
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
    c.unregister_cuda_shared_memory()
    c.close()


class Regions:
    """CUDA allocations of this test process, registered with the server by name."""

    def __init__(self, client: Any, device_id: int = 0) -> None:
        self.client = client
        self.device_id = device_id
        self.handles: dict[str, Any] = {}

    def add(self, name: str, size: int, value: np.ndarray | None = None) -> None:
        handle = cudashm.create_shared_memory_region(name, size, self.device_id)
        self.handles[name] = handle
        if value is not None:
            cudashm.set_shared_memory_region(handle, [value])
        raw = cudashm.get_raw_handle(handle)
        self.client.register_cuda_shared_memory(name, raw, self.device_id, size)

    def fill(self, name: str, value: np.ndarray) -> None:
        cudashm.set_shared_memory_region(self.handles[name], [value])

    def read(self, name: str, shape: list[int]) -> np.ndarray:
        return cudashm.get_contents_as_numpy(self.handles[name], np.float32, shape)

    def close(self) -> None:
        self.client.unregister_cuda_shared_memory()
        for handle in self.handles.values():
            cudashm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(client: Any) -> Iterator[Regions]:
    made = Regions(client)
    yield made
    made.close()


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def shm_input(protocol: str, region: str, x: np.ndarray = X) -> Any:
    tensor = _module(protocol).InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_shared_memory(region, x.nbytes)
    return tensor


def wire_input(protocol: str, x: np.ndarray) -> Any:
    tensor = _module(protocol).InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def shm_output(protocol: str, name: str, region: str, size: int) -> Any:
    output = _module(protocol).InferRequestedOutput(name)
    output.set_shared_memory(region, size)
    return output


def copies(server: RunningServer, region: str) -> list[str]:
    """The server's log lines of copies between ``region`` and host memory."""
    marker = f"CUDA shared memory '{region}':"
    return [line for line in server.log().splitlines() if marker in line]


def in_place_lines(server: RunningServer, region: str) -> list[str]:
    log = server.log().splitlines()
    return [line for line in log if f"CUDA shared memory '{region}' on cuda:0" in line] + [
        line for line in log if f"on cuda:0 into CUDA shared memory '{region}'" in line
    ]


# --- the GPU model uses the regions where they lie ------------------------------------------------


def test_gpu_model_reads_and_writes_cuda_shm_in_place(
    server: RunningServer, client: Any, protocol: str, regions: Regions
) -> None:
    names = [f"zc_in_{protocol}", f"zc_out0_{protocol}", f"zc_out1_{protocol}"]
    regions.add(names[0], X.nbytes, X)
    regions.add(names[1], X.nbytes)
    regions.add(names[2], 8)
    outputs = [
        shm_output(protocol, "OUTPUT__0", names[1], X.nbytes),
        shm_output(protocol, "OUTPUT__1", names[2], 8),
    ]
    result = client.infer("scale_gpu", [shm_input(protocol, names[0])], outputs=outputs)

    np.testing.assert_allclose(regions.read(names[1], [2, 3]), X * 2 + 1)
    assert regions.read(names[2], [2, 1]).tolist() == [[1.0], [1.0]]  # the model saw CUDA
    shape = result.get_output("OUTPUT__0")
    assert list(shape["shape"] if protocol == "http" else shape.shape) == [2, 3]
    for name in names:
        assert copies(server, name) == []
        assert len(in_place_lines(server, name)) == 1


def test_input_in_place_output_over_the_wire(
    server: RunningServer, client: Any, protocol: str, regions: Regions
) -> None:
    region = f"zc_wire_in_{protocol}"
    regions.add(region, X.nbytes, X)
    result = client.infer("scale_gpu", [shm_input(protocol, region)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), X * 2 + 1)
    assert result.as_numpy("OUTPUT__1").tolist() == [[1.0], [1.0]]
    assert copies(server, region) == []
    assert len(in_place_lines(server, region)) == 1


def test_cpu_model_gets_host_copies_the_log_shows(
    server: RunningServer, client: Any, protocol: str, regions: Regions
) -> None:
    """The control: the same regions read and written by a CPU model are copied, logged."""
    names = [f"ctl_in_{protocol}", f"ctl_out_{protocol}"]
    regions.add(names[0], X.nbytes, X)
    regions.add(names[1], X.nbytes)
    output = shm_output(protocol, "OUTPUT__0", names[1], X.nbytes)
    client.infer("copy_cpu", [shm_input(protocol, names[0])], outputs=[output])
    np.testing.assert_allclose(regions.read(names[1], [2, 3]), X * 2 + 1)
    (read,) = copies(server, names[0])
    assert f"CUDA shared memory '{names[0]}': {X.nbytes} bytes copied to host memory" in read
    (written,) = copies(server, names[1])
    assert f"CUDA shared memory '{names[1]}': {X.nbytes} bytes copied from host memory" in written


def test_a_batch_mixes_a_cuda_shm_request_and_a_wire_request(
    server: RunningServer, protocol: str, regions: Regions
) -> None:
    region_in, region_out = f"mix_in_{protocol}", f"mix_out_{protocol}"
    x = np.array([[5.0, 6.0, 7.0]], dtype=np.float32)  # one row each: preferred size 2
    regions.add(region_in, x.nbytes, x)
    regions.add(region_out, x.nbytes)
    y = np.full((1, 3), 7.0, dtype=np.float32)
    results: dict[str, Any] = {}

    def call(kind: str) -> None:
        if protocol == "http":
            c: Any = httpclient.InferenceServerClient(server.url)
        else:
            c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            if kind == "shm":
                output = shm_output(protocol, "OUTPUT__0", region_out, x.nbytes)
                inputs = [shm_input(protocol, region_in, x)]
                results[kind] = c.infer("scale_batched", inputs, outputs=[output])
            else:
                results[kind] = c.infer("scale_batched", [wire_input(protocol, y)])
        except InferenceServerException as exc:
            results[kind] = exc
        finally:
            c.close()

    before = _batches_of_two(server)
    threads = [threading.Thread(target=call, args=(kind,)) for kind in ("shm", "wire")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not isinstance(results["shm"], Exception), results["shm"]
    assert not isinstance(results["wire"], Exception), results["wire"]
    np.testing.assert_allclose(regions.read(region_out, [1, 3]), x * 2 + 1)
    np.testing.assert_allclose(results["wire"].as_numpy("OUTPUT__0"), y * 2 + 1)
    assert results["wire"].as_numpy("OUTPUT__1").tolist() == [[1.0]]
    assert _batches_of_two(server) == before + 1  # one execution held both requests
    assert copies(server, region_in) == [] and copies(server, region_out) == []
    assert len(in_place_lines(server, region_in)) == 1
    assert len(in_place_lines(server, region_out)) == 1


def _batches_of_two(server: RunningServer) -> int:
    with server.client() as c:
        stats = c.get_inference_statistics("scale_batched")["model_stats"][0]
    batches = stats.get("batch_stats", [])
    return sum(int(b["compute_infer"]["count"]) for b in batches if int(b["batch_size"]) == 2)


def test_output_region_too_small_is_refused_in_tritons_words(
    server: RunningServer, client: Any, protocol: str, regions: Regions
) -> None:
    region_in, region_out = f"small_in_{protocol}", f"small_out_{protocol}"
    regions.add(region_in, X.nbytes, X)
    regions.add(region_out, 8)
    output = shm_output(protocol, "OUTPUT__0", region_out, 8)
    with pytest.raises(InferenceServerException) as info:
        client.infer("scale_gpu", [shm_input(protocol, region_in)], outputs=[output])
    status = str(info.value.status())
    assert status == ("500" if protocol == "http" else "StatusCode.INTERNAL")
    assert info.value.message() == (
        "shared memory size specified with the request for output 'OUTPUT__0' (8 bytes) "
        f"should be at least {X.nbytes} bytes to hold the results"
    )


def test_cached_responses_are_right_in_cuda_shm(
    server: RunningServer, client: Any, protocol: str, regions: Regions
) -> None:
    """The response cache reads the in-place output back (logged copies, expected), and
    a hit writes the cached result into the region."""
    x = X + (10.0 if protocol == "http" else 20.0)  # a key of its own per protocol
    region_in, region_out = f"cache_in_{protocol}", f"cache_out_{protocol}"
    regions.add(region_in, x.nbytes, x)
    regions.add(region_out, x.nbytes)
    output = shm_output(protocol, "OUTPUT__0", region_out, x.nbytes)
    client.infer("scale_cached", [shm_input(protocol, region_in, x)], outputs=[output])
    np.testing.assert_allclose(regions.read(region_out, [2, 3]), x * 2 + 1)
    regions.fill(region_out, np.zeros_like(x))
    output = shm_output(protocol, "OUTPUT__0", region_out, x.nbytes)
    client.infer("scale_cached", [shm_input(protocol, region_in, x)], outputs=[output])
    np.testing.assert_allclose(regions.read(region_out, [2, 3]), x * 2 + 1)
    with server.client() as c:
        stats = c.get_inference_statistics("scale_cached")["model_stats"][0]["inference_stats"]
    assert int(stats["cache_hit"]["count"]) >= 1


@pytest.mark.skipif(cuda_device_count() < 2, reason="needs two CUDA devices")
def test_a_region_on_another_device_takes_the_host_path(
    server: RunningServer, client: Any, protocol: str
) -> None:
    regions = Regions(client, device_id=1)
    try:
        region = f"dev1_in_{protocol}"
        regions.add(region, X.nbytes, X)
        result = client.infer("scale_gpu", [shm_input(protocol, region)])
        np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), X * 2 + 1)
        assert len(copies(server, region)) == 1
    finally:
        regions.close()
