"""The PyTorch backend on a GPU: KIND_GPU TorchScript and PyTorch 2 models on cuda:0.

Skipped without CUDA. Each model reports where its inputs were (``is_cuda``), so a
right answer also proves the inputs were moved to the configured device.
"""

from __future__ import annotations

import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from tests.integration.conftest import RunningServer, start_server  # noqa: E402


class ScaleOnDevice(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        where = torch.ones_like(x[:, :1]) * float(x.is_cuda)
        return x * 2.0 + 1.0, where


PYTHON_RUNTIME_MODEL = """
import torch


class OnDevice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.weight, torch.ones_like(x[:, :1]) * float(x.is_cuda)
"""

IO = """
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 1 ] }
]
"""


def _model(repo: Path, name: str, extra: str) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True)
    config = f'backend: "pytorch"\nmax_batch_size: 8\n{IO}{textwrap.dedent(extra)}'
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def _script(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(ScaleOnDevice()).save(str(path))


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("gpu_repo")
    groups = "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]\n"
    _script(_model(repo, "on_gpu", groups + "dynamic_batching { }\n") / "1" / "model.pt")
    _script(
        _model(
            repo,
            "unpinned",
            groups
            + "optimization { input_pinned_memory { enable: false } "
            + "output_pinned_memory { enable: false } }\n"
            + 'parameters { key: "ENABLE_WEIGHT_SHARING" value: { string_value: "true" } }\n'
            + 'parameters { key: "ENABLE_CACHE_CLEANING" value: { string_value: "true" } }\n',
        )
        / "1"
        / "model.pt"
    )
    python_dir = _model(
        repo,
        "python_runtime",
        'runtime: "model.py"\ninstance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]\n'
        + 'parameters { key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" '
        + 'value: { string_value: "{\\"disable\\": true}" } }\n',
    )
    (python_dir / "1" / "model.py").write_text(PYTHON_RUNTIME_MODEL)
    torch.save({"weight": torch.tensor([1.0, 2.0, 3.0])}, python_dir / "1" / "model.pt")
    bad = torch.cuda.device_count() + 5
    _script(
        _model(repo, "bad_gpu", f"instance_group [ {{ kind: KIND_GPU gpus: [ {bad} ] }} ]\n")
        / "1"
        / "model.pt"
    )
    log = tmp_path_factory.mktemp("gpu_log") / "server.log"
    running = start_server(repo, "--exit-on-error=false", log_path=log)
    with running.client() as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            client.is_model_ready(m) for m in ("on_gpu", "unpinned", "python_runtime")
        ):
            time.sleep(0.1)
    yield running
    assert running.stop() == 0, running.log()


def _inputs(x: np.ndarray) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


@pytest.mark.parametrize("model", ["on_gpu", "unpinned"])
def test_kind_gpu_torchscript_on_cuda0(gpu_server: RunningServer, model: str):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with gpu_server.client() as client:
        result = client.infer(model, _inputs(x))
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), x * 2 + 1)
    assert result.as_numpy("OUTPUT__1").tolist() == [[1.0], [1.0]]  # the input was on CUDA


def test_dynamic_batches_on_the_gpu_split_back(gpu_server: RunningServer):
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
            x = np.full((1 + i % 3, 3), float(i), dtype=np.float32)
            tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            results[i] = client.infer("on_gpu", [tensor]).as_numpy("OUTPUT__0")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(12):
        np.testing.assert_allclose(results[i], np.full((1 + i % 3, 3), i * 2.0 + 1))


def test_pytorch2_model_py_on_cuda0(gpu_server: RunningServer):
    x = np.ones((1, 3), dtype=np.float32)
    with gpu_server.client() as client:
        result = client.infer("python_runtime", _inputs(x))
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), [[1.0, 2.0, 3.0]])
    assert result.as_numpy("OUTPUT__1").tolist() == [[1.0]]


def test_gpu_index_that_does_not_exist_fails_its_load(gpu_server: RunningServer):
    with gpu_server.client() as client:
        index = {row["name"]: row for row in client.get_model_repository_index()}
    bad = torch.cuda.device_count() + 5
    assert index["bad_gpu"]["state"] == "UNAVAILABLE"
    assert (
        f"instance group bad_gpu_0 of model bad_gpu specifies invalid or unsupported gpu id {bad}. "
        "GPUs with at least the minimum required CUDA compute compatibility of 6.000000 are: 0"
    ) in index["bad_gpu"]["reason"]
