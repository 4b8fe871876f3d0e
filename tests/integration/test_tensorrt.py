"""The TensorRT backend where no engine can be built: configuration, loading errors, no runtime.

The TensorRT builder is not installable here, so no plan can be made and nothing is
executed. What is checked: the instance kinds and NVDLA settings Triton's TensorRT
backend accepts or refuses (each model fails its own load with the reason, the rest
loads), a missing plan, the clear error when no TensorRT runtime is installed, and
the auto-complete and engine checks on engine descriptions (``TensorInfo``) against
real ``ModelConfig`` messages.
"""

from __future__ import annotations

import importlib.util
import textwrap
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from triton_kernel.kernel.config import parse_config_text
from triton_kernel.kernel.errors import Internal, InvalidArgument, NotFound, Unsupported
from triton_kernel.plugins.backends.tensorrt.engine_io import (
    TensorInfo,
    check_config,
    complete_config,
    profile_indices,
)
from triton_kernel.plugins.backends.tensorrt.runtime import TENSORRT_MODULES

from .conftest import RunningServer, start_server, write_model

TENSORRT_INSTALLED = any(importlib.util.find_spec(m) is not None for m in TENSORRT_MODULES)

IO = """
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _dla(*cores: int) -> str:
    return ", ".join(f"{{ kind: KIND_NVDLA device_id: {core} }}" for core in cores)


#: model -> (instance groups, expected text in the load failure reason)
BROKEN = {
    "kind_cpu": (
        "instance_group [ { kind: KIND_CPU } ]",
        "unable to load model 'kind_cpu', TensorRT backend supports only GPU device",
    ),
    "kind_auto_without_gpu": (
        "",  # KIND_AUTO becomes KIND_CPU on a machine without a GPU
        "TensorRT backend supports only GPU device",
    ),
    "nvdla_on_cpu": (
        f"instance_group [ {{ kind: KIND_CPU secondary_devices [ {_dla(0)} ] }} ]",
        "instance group nvdla_on_cpu_0 of model nvdla_on_cpu has a KIND_NVDLA secondary device "
        "but kind KIND_CPU",
    ),
    "negative_dla_core": (
        f"instance_group [ {{ kind: KIND_GPU secondary_devices [ {_dla(-1)} ] }} ]",
        "instance group negative_dla_core_0 of model negative_dla_core selects NVDLA core -1: "
        "a KIND_NVDLA device_id must be 0 or more",
    ),
    "two_dla_cores": (
        f"instance_group [ {{ kind: KIND_GPU secondary_devices [ {_dla(0, 1)} ] }} ]",
        "two_dla_cores_0 of model two_dla_cores must have either zero or or one secondary devices",
    ),
    "missing_plan": (
        f"instance_group [ {{ kind: KIND_GPU secondary_devices [ {_dla(0)} ] }} ]",
        "/missing_plan/1/model.plan' for model instance 'missing_plan_0'",
    ),
}

NO_RUNTIME = (
    "unable to load model 'no_runtime': no TensorRT runtime is installed for the tensorrt "
    "backend (pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs"
)


def _write_plan_model(repo: Path, name: str, groups: str, plan: bytes | None) -> None:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True)
    config = f'platform: "tensorrt_plan"\n{IO}{groups}\n'
    (model_dir / "config.pbtxt").write_text(config)
    if plan is not None:
        (model_dir / "1" / "model.plan").write_bytes(plan)


@pytest.fixture(scope="module")
def trt_server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("tensorrt_repo")
    for name, (groups, _) in BROKEN.items():
        _write_plan_model(repo, name, groups, None if name == "missing_plan" else b"plan")
    _write_plan_model(repo, "no_runtime", "instance_group [ { kind: KIND_GPU } ]", b"not a plan")
    write_model(
        repo,
        "python_ok",
        """
        backend: "python"
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """,
        textwrap.dedent(
            """
            import triton_python_backend_utils as pb_utils

            class TritonPythonModel:
                def execute(self, requests):
                    out = []
                    for request in requests:
                        x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                        out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
                    return out
            """
        ),
    )
    log = tmp_path_factory.mktemp("tensorrt_log") / "server.log"
    running = start_server(
        repo,
        "--exit-on-error=false",
        "--model-control-mode=explicit",
        "--load-model=*",
        log_path=log,
    )
    with running.client() as client:
        deadline = time.monotonic() + 60
        while not client.is_model_ready("python_ok") and time.monotonic() < deadline:
            time.sleep(0.05)
    yield running
    assert running.stop() == 0, running.log()


def test_bad_instance_groups_and_nvdla_settings_fail_their_model(trt_server: RunningServer):
    with trt_server.client() as client:
        assert client.is_model_ready("python_ok")  # the rest loads
        index = {row["name"]: row for row in client.get_model_repository_index()}
    for name, (_, expected) in BROKEN.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        assert expected in index[name]["reason"], (name, index[name]["reason"])


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="a TensorRT runtime is installed here")
def test_no_tensorrt_runtime_names_what_to_install(trt_server: RunningServer):
    with trt_server.client() as client:
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert NO_RUNTIME in index["no_runtime"]["reason"]
        with pytest.raises(InferenceServerException) as info:
            client.load_model("no_runtime")
        assert info.value.status() == "400"
        assert NO_RUNTIME in info.value.message()
    with grpcclient.InferenceServerClient(trt_server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("negative_dla_core")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "a KIND_NVDLA device_id must be 0 or more" in info.value.message()


# --- auto-complete and engine checks on engine descriptions -------------------------------


def _engine(batch_max: int = 8) -> list[TensorInfo]:
    """An engine with a dynamic batch dimension: x [-1,4] FP32 in, y [-1,4] FP32 out."""
    profile = ((1, 4), (4, 4), (batch_max, 4))
    return [
        TensorInfo("x", True, "FP32", (-1, 4), profiles=(profile,)),
        TensorInfo("y", False, "FP32", (-1, 4)),
    ]


def _config(text: str = "") -> object:
    config = parse_config_text(f'name: "m"\nplatform: "tensorrt_plan"\n{text}')
    config.instance_group.add(name="m_0")
    return config


def test_auto_complete_fills_inputs_outputs_and_batching_from_the_engine():
    config = _config()
    complete_config(config, _engine(), [0])
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", 11, [4])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [4])]
    check_config(config, _engine(), "m_0")


def test_auto_complete_refuses_a_larger_max_batch_than_the_profile():
    config = _config("max_batch_size: 16\n")
    with pytest.raises(Internal) as info:
        complete_config(config, _engine(8), [0])
    assert info.value.message == (
        "autofill failed for model 'm': configuration specified max-batch 16 but TensorRT "
        "engine only supports max-batch 8"
    )


def test_auto_complete_names_unknown_config_tensors():
    config = _config('input [ { name: "z" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')
    with pytest.raises(InvalidArgument) as info:
        complete_config(config, _engine(), [0])
    assert info.value.message == "unexpected inference input 'z', allowed inputs are: x"


def test_config_checks_against_the_engine():
    config = _config(
        f"max_batch_size: 8\n{IO}".replace(
            "TYPE_FP32 dims: [ 4 ] } ]\noutput", "TYPE_FP16 dims: [ 4 ] } ]\noutput"
        )
    )
    with pytest.raises(InvalidArgument) as info:
        check_config(config, _engine(), "m_0")
    assert info.value.message == (
        "unexpected datatype TYPE_FP32 for inference input 'x', expecting TYPE_FP16 for m_0"
    )
    config = _config(f"max_batch_size: 8\n{IO}".replace("dims: [ 4 ]", "dims: [ 2, 2 ]", 1))
    with pytest.raises(InvalidArgument) as info:
        check_config(config, _engine(), "m_0")
    assert info.value.message == (
        "model 'm', tensor 'x': the model expects 2 dimensions (shape [-1,4]) but the model "
        "configuration specifies 3 dimensions (an initial batch dimension because "
        "max_batch_size > 0 followed by the explicit tensor shape, making complete shape "
        "[-1,2,2])"
    )
    config = _config("max_batch_size: 8\n" + IO.replace('name: "y"', 'name: "w"'))
    with pytest.raises(NotFound) as info:
        check_config(config, _engine(), "m_0")
    assert info.value.message == "output 'w' not found for m_0"
    shape_tensor = [TensorInfo("x", True, "INT64", (2,), shape_tensor=True), _engine()[1]]
    with pytest.raises(Unsupported):
        check_config(_config(IO), shape_tensor, "m_0")


def test_profiles_come_from_the_instance_groups():
    config = _config()
    config.instance_group[0].profile.extend(["1", "0"])
    assert profile_indices(config, 2) == [1, 0]
    with pytest.raises(Internal) as info:
        profile_indices(config, 1)
    assert "configuration specified invalid profile 1 ." in info.value.message
