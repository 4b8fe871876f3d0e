"""GPU tensors of Python models: ``pb_utils.Tensor.from_dlpack`` of a CUDA tensor, ``is_cpu()``.

The model (PyTorch in the worker) makes CUDA tensors, wraps them with ``from_dlpack``
(a capsule, and an object with ``__dlpack__``), checks Triton's behaviour from inside
(``is_cpu()`` False, ``as_numpy()`` raises Triton's text, ``to_dlpack()`` gives the CUDA
tensor back, a non-contiguous tensor is refused in Triton's words, a GPU tensor goes
into a BLS request) and returns them; each check is one flag of the ``FLAGS`` output.
With ``FORCE_CPU_ONLY_INPUT_TENSORS: no`` an input in CUDA shared memory reaches the
model as a GPU tensor mapped through CUDA IPC, and the server's log shows that it was
never copied to host memory.

The CUDA tests skip without a device; the parameter check runs anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ..integration.conftest import RunningServer, start_server, write_model
from .conftest import Cuda, cuda_device_count

if cuda_device_count():  # tritonclient's CUDA helpers import cuda-bindings at once
    import tritonclient.utils.cuda_shared_memory as cudashm
else:
    cudashm = None

CONFIG = """
    name: "{name}"
    backend: "python"
    max_batch_size: 0
    input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
    output [
      {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
      {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] }},
      {{ name: "FLAGS" data_type: TYPE_INT32 dims: [ -1 ] }}
    ]
    instance_group [ {{ kind: {kind} }} ]
    {parameters}
"""
FORCE_CPU_NO = 'parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }'
GPU_MODEL_PY = """
    import numpy as np
    import torch
    from torch.utils.dlpack import from_dlpack, to_dlpack
    import triton_python_backend_utils as pb_utils

    GPU_TEXT = "Tensor is stored in GPU and cannot be converted to NumPy."
    STRIDES_TEXT = (
        "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored "
        "in C-Order are supported."
    )


    def raises(call, text):
        try:
            call()
        except pb_utils.TritonModelException as exc:
            return int(str(exc) == text)
        return 0


    class TritonPythonModel:
        def initialize(self, args):
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))

        def execute(self, requests):
            return [self.answer(request) for request in requests]

        def answer(self, request):
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            t = from_dlpack(x.to_dlpack())
            flags = [int(x.is_cpu()), int(t.is_cuda)]
            y = t.to(self.device) * 2 + 1
            out0 = pb_utils.Tensor.from_dlpack("OUTPUT0", to_dlpack(y))
            out1 = pb_utils.Tensor.from_dlpack("OUTPUT1", y + 1)
            back = from_dlpack(out0.to_dlpack())
            not_contiguous = torch.ones(2, 3, device=self.device).t()
            flags += [
                int(out0.is_cpu()),
                raises(out0.as_numpy, GPU_TEXT),
                int(back.is_cuda and torch.equal(back, y)),
                int(out1.__dlpack_device__() == (2, self.device.index)),
                int(torch.equal(torch.from_dlpack(out1), y + 1)),
                raises(lambda: pb_utils.Tensor.from_dlpack("T", not_contiguous), STRIDES_TEXT),
                int(out0.shape() == list(y.shape) and out0.triton_dtype() == 11),
                self.through_bls(y),
            ]
            flags_tensor = pb_utils.Tensor("FLAGS", np.array(flags, dtype=np.int32))
            return pb_utils.InferenceResponse([out0, out1, flags_tensor])

        def through_bls(self, y):
            request = pb_utils.InferenceRequest(
                model_name="identity",
                requested_output_names=["OUT"],
                inputs=[pb_utils.Tensor.from_dlpack("IN", y)],
            )
            response = request.exec()
            if response.has_error():
                return 0
            out = pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()
            return int(np.array_equal(out, y.cpu().numpy()))
"""
IDENTITY = """
    name: "identity"
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
    instance_group [ { kind: KIND_CPU } ]
"""
IDENTITY_PY = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [
                pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())
                ])
                for r in requests
            ]
"""
#: The model's checks, in the order of its FLAGS output.
CHECKS = (
    "input is_cpu()",
    "input to_dlpack() is CUDA",
    "output is_cpu()",
    "as_numpy() raises Triton's text",
    "to_dlpack() gives the CUDA tensor back",
    "__dlpack_device__() is (kDLCUDA, device)",
    "torch.from_dlpack(tensor) sees the same data",
    "non-contiguous from_dlpack refused in Triton's words",
    "shape() and triton_dtype()",
    "a GPU tensor goes into a BLS request",
)
X = np.array([0.5, 1.0, 2.0, 4.0], dtype=np.float32)


def _flags(cpu_input: bool) -> dict[str, int]:
    expected = dict.fromkeys(CHECKS, 1)
    expected["input is_cpu()"] = int(cpu_input)
    expected["input to_dlpack() is CUDA"] = int(not cpu_input)
    expected["output is_cpu()"] = 0
    return expected


@pytest.fixture(scope="module")
def server(cuda: Cuda, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    pytest.importorskip("torch")
    repo = tmp_path_factory.mktemp("gpu_tensors_repo")
    write_model(
        repo, "gpu", CONFIG.format(name="gpu", kind="KIND_GPU", parameters=""), GPU_MODEL_PY
    )
    write_model(
        repo,
        "gpu_inputs",
        CONFIG.format(name="gpu_inputs", kind="KIND_GPU", parameters=FORCE_CPU_NO),
        GPU_MODEL_PY,
    )
    write_model(repo, "identity", IDENTITY, IDENTITY_PY)
    log_path = tmp_path_factory.mktemp("gpu_tensors_log") / "server.log"
    running = start_server(repo, "--allow-client-shm=true", "--log-verbose=1", log_path=log_path)
    with running.client() as client:
        deadline = time.monotonic() + 120
        while not all(client.is_model_ready(m) for m in ("gpu", "gpu_inputs", "identity")):
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


@pytest.fixture
def regions(client: Any) -> Iterator[dict[str, Any]]:
    handles: dict[str, Any] = {}
    yield handles
    client.unregister_cuda_shared_memory()
    for handle in handles.values():
        cudashm.destroy_shared_memory_region(handle)


def _region(client: Any, handles: dict[str, Any], name: str, size: int, value: Any = None) -> None:
    handle = cudashm.create_shared_memory_region(name, size, 0)
    handles[name] = handle
    if value is not None:
        cudashm.set_shared_memory_region(handle, [value])
    client.register_cuda_shared_memory(name, cudashm.get_raw_handle(handle), 0, size)


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def _input(protocol: str, region: str = "") -> Any:
    tensor = _module(protocol).InferInput("INPUT0", [len(X)], "FP32")
    if region:
        tensor.set_shared_memory(region, X.nbytes)
    else:
        tensor.set_data_from_numpy(X)
    return tensor


def _checks(result: Any) -> dict[str, int]:
    return dict(zip(CHECKS, result.as_numpy("FLAGS").tolist(), strict=True))


def _copies(server: RunningServer, region: str) -> list[str]:
    marker = f"CUDA shared memory '{region}':"
    return [line for line in server.log().splitlines() if marker in line]


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["gpu", "gpu_inputs"])
def test_gpu_tensors_from_dlpack(client: Any, protocol: str, model: str) -> None:
    result = client.infer(model, [_input(protocol)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), X * 2 + 1)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), X * 2 + 2)
    assert _checks(result) == _flags(cpu_input=True)  # a wire input stays in host memory


@pytest.mark.cuda
def test_cuda_shm_input_is_copied_to_host_by_default(
    server: RunningServer, client: Any, protocol: str, regions: dict[str, Any]
) -> None:
    region = f"pb_default_in_{protocol}"
    _region(client, regions, region, X.nbytes, X)
    result = client.infer("gpu", [_input(protocol, region)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), X * 2 + 1)
    assert _checks(result) == _flags(cpu_input=True)
    assert len(_copies(server, region)) == 1  # Triton's default: FORCE_CPU_ONLY_INPUT_TENSORS


@pytest.mark.cuda
def test_cuda_shm_input_reaches_the_model_on_the_gpu(
    server: RunningServer, client: Any, protocol: str, regions: dict[str, Any]
) -> None:
    """``FORCE_CPU_ONLY_INPUT_TENSORS: no``: the worker maps the client's memory itself."""
    region_in, region_out = f"pb_gpu_in_{protocol}", f"pb_gpu_out_{protocol}"
    _region(client, regions, region_in, X.nbytes, X)
    _region(client, regions, region_out, X.nbytes)
    output = _module(protocol).InferRequestedOutput("OUTPUT0")
    output.set_shared_memory(region_out, X.nbytes)
    outputs = [output, _module(protocol).InferRequestedOutput("FLAGS")]
    result = client.infer("gpu_inputs", [_input(protocol, region_in)], outputs=outputs)
    assert _checks(result) == _flags(cpu_input=False)
    written = cudashm.get_contents_as_numpy(regions[region_out], np.float32, [len(X)])
    np.testing.assert_allclose(written, X * 2 + 1)
    assert _copies(server, region_in) == []  # never in host memory
    # A GPU output crosses to the server as a host copy (documented), then into the region.
    assert len(_copies(server, region_out)) == 1


def _index(client: Any) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in client.get_model_repository_index()}


def test_a_bad_force_cpu_only_input_tensors_fails_the_load(tmp_path: Path) -> None:
    parameters = (
        'parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "maybe" } }'
    )
    write_model(
        tmp_path,
        "bad",
        CONFIG.format(name="bad", kind="KIND_CPU", parameters=parameters),
        IDENTITY_PY,
    )
    write_model(tmp_path, "identity", IDENTITY, IDENTITY_PY)
    running = start_server(tmp_path, "--exit-on-error=false", log_path=tmp_path / "server.log")
    try:
        with running.client() as client:
            deadline = time.monotonic() + 60
            while (index := _index(client)).get("bad", {}).get("state") in (None, "LOADING"):
                assert time.monotonic() < deadline, running.log()
                time.sleep(0.05)
    finally:
        assert running.stop() == 0, running.log()
    assert index["bad"]["state"] == "UNAVAILABLE"
    assert "Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: maybe'" in index["bad"]["reason"]
