"""The ONNX Runtime backend on a GPU: KIND_GPU instances on the CUDA execution provider.

Skipped unless onnxruntime has the CUDA provider (onnxruntime-gpu) and the driver shows a
GPU. A right answer alone would not prove the GPU ran it (ONNX Runtime falls back to the
CPU quietly), so the backend refuses a session without the CUDA provider and the test
also finds the CUDA provider's library mapped into the server.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from triton_kernel.plugins.backends.onnxruntime.options import supported_gpus  # noqa: E402

GPUS = supported_gpus(6.0)
if "CUDAExecutionProvider" not in ort.get_available_providers() or not GPUS:
    pytest.skip(
        "needs a CUDA GPU and onnxruntime-gpu (onnxruntime has "
        f"{ort.get_available_providers()}, GPUs seen: {GPUS})",
        allow_module_level=True,
    )

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from tests.integration.conftest import RunningServer, start_server  # noqa: E402

FRAMEWORKS = Path(__file__).resolve().parents[2] / "examples" / "frameworks"
_spec = importlib.util.spec_from_file_location("build_models", FRAMEWORKS / "build_models.py")
assert _spec is not None and _spec.loader is not None
build_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_models)

GPU_CONFIG = """
backend: "onnxruntime"
max_batch_size: 32
dynamic_batching { }
instance_group [ { count: 2, kind: KIND_GPU, gpus: [ 0 ] } ]
"""
BAD_GPU = len(GPUS) + 7
TENSORRT = """
backend: "onnxruntime"
max_batch_size: 32
instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 0 ] } ]
optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }
"""


def _add(repo: Path, name: str, config: str) -> None:
    build_models.save(build_models.mlp_model(), repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("ort_gpu_repo")
    _add(repo, "mlp_gpu", GPU_CONFIG)
    _add(repo, "bad_gpu", GPU_CONFIG.replace("gpus: [ 0 ]", f"gpus: [ {BAD_GPU} ]"))
    _add(repo, "mlp_tensorrt", TENSORRT)
    log = tmp_path_factory.mktemp("ort_gpu_log") / "server.log"
    server = start_server(repo, "--exit-on-error=false", log_path=log)
    with server.client() as client:
        deadline = time.monotonic() + 300  # TensorRT builds its engine at load
        while not client.is_server_live() or not _settled(client):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
    yield server
    assert server.stop() == 0, server.log()


def _settled(client: httpclient.InferenceServerClient) -> bool:
    try:
        rows = client.get_model_repository_index()
    except Exception:
        return False
    return len(rows) == 3 and all(row.get("state") in ("READY", "UNAVAILABLE") for row in rows)


def _reason(client: httpclient.InferenceServerClient, name: str) -> str:
    rows = {row["name"]: row for row in client.get_model_repository_index()}
    return rows[name].get("reason", "")


def _check_mlp(client, module, model: str, rows: int) -> None:
    x = ((np.arange(rows * 64).reshape(rows, 64) % 29) / 9 - 1.5).astype(np.float32)
    tensor = module.InferInput("INPUT", [rows, 64], "FP32")
    tensor.set_data_from_numpy(x)
    logits = client.infer(model, [tensor]).as_numpy("LOGITS")
    expected = build_models.mlp_reference(x)
    # cuBLAS may use TF32 on Ampere and later: ~1e-3 relative, not float32's 1e-6.
    np.testing.assert_allclose(logits, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())


def test_kind_gpu_model_runs_on_the_cuda_provider(gpu_server: RunningServer) -> None:
    with gpu_server.client() as client:
        config = client.get_model_config("mlp_gpu")
        assert config["instance_group"][0]["kind"] == "KIND_GPU"
        assert config["instance_group"][0]["gpus"] == [0]
        for rows in (1, 7, 32):
            _check_mlp(client, httpclient, "mlp_gpu", rows)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        _check_mlp(client, grpcclient, "mlp_gpu", 5)
    maps = Path(f"/proc/{gpu_server.process.pid}/maps").read_text()
    assert "libonnxruntime_providers_cuda" in maps


def test_a_gpus_index_that_does_not_exist_fails_to_load(gpu_server: RunningServer) -> None:
    with gpu_server.client() as client:
        assert not client.is_model_ready("bad_gpu")
        reason = _reason(client, "bad_gpu")
        assert (
            f"instance group bad_gpu_0 of model bad_gpu specifies invalid or unsupported gpu id "
            f"{BAD_GPU}. GPUs with at least the minimum required CUDA compute compatibility of "
            "6.000000 are: 0"
        ) in reason
        assert client.is_model_ready("mlp_gpu")  # the others keep serving


def test_tensorrt_accelerator_serves_or_says_why(gpu_server: RunningServer) -> None:
    """The TensorRT provider needs TensorRT's libraries beside onnxruntime-gpu: with them the
    model serves, without them the load fails saying so (never a silent CUDA/CPU fallback)."""
    with gpu_server.client() as client:
        if client.is_model_ready("mlp_tensorrt"):
            _check_mlp(client, httpclient, "mlp_tensorrt", 4)
        else:
            reason = _reason(client, "mlp_tensorrt")
            assert "tensorrt" in reason.lower(), reason
