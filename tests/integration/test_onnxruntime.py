"""The ONNX Runtime backend, driven by the real ``tritonclient`` over HTTP and gRPC.

Every model is built by the test with the ``onnx`` helper API. The auto-completion and
load-error cases are Triton's own (``qa/L0_model_config``: the same graphs, the same
configs, and the configs and messages Triton's QA expects from them).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from triton_kernel.kernel.config import ModelConfig, parse_config_text

from .conftest import EXAMPLES, RunningServer, start_server

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

FRAMEWORKS = EXAMPLES.parent / "frameworks"


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_models", FRAMEWORKS / "build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_models = _load_builder()


# --- models, as Triton's QA generates them (gen_qa_models.py: onnx_int32_int8_int8) -------


def add_sub_graph(batching: bool, dtype: int = TensorProto.INT32) -> object:
    """INPUT0, INPUT1 [(-1,) 16] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT8)."""
    shape = ["var_0", 16] if batching else [16]
    nodes = [
        helper.make_node("Identity", ["INPUT0"], ["_INPUT0"]),
        helper.make_node("Identity", ["INPUT1"], ["_INPUT1"]),
        helper.make_node("Add", ["_INPUT0", "_INPUT1"], ["CAST0"]),
        helper.make_node("Sub", ["_INPUT0", "_INPUT1"], ["CAST1"]),
        helper.make_node("Cast", ["CAST0"], ["OUTPUT0"], to=TensorProto.INT8),
        helper.make_node("Cast", ["CAST1"], ["OUTPUT1"], to=TensorProto.INT8),
    ]
    graph = helper.make_graph(
        nodes,
        "onnx_int32_int8_int8",
        [helper.make_tensor_value_info(n, dtype, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.INT8, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return _model(graph)


def identity_graph(dtype: int, shape: list[object], name: str = "INPUT0") -> object:
    out = "OUTPUT0" if name == "INPUT0" else f"{name}_OUT"
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [out])],
        "identity",
        [helper.make_tensor_value_info(name, dtype, shape)],
        [helper.make_tensor_value_info(out, dtype, shape)],
    )
    return _model(graph)


def matmul_graph() -> object:
    """X [batch, k] x W [4, 2]: a request whose k is not 4 fails inside ONNX Runtime."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], [1, 0, 0, 1, 1, 0, 0, 1])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "k"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    return _model(graph)


def reduce_graph() -> object:
    """X [4] -> Y = sum(X), a scalar: configured as dims [1], as Triton does."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X"], ["Y"], keepdims=0)],
        "reduce",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [])],
    )
    return _model(graph)


def doubler_graph() -> object:
    """X [batch] -> Y = 2 X [batch]: one scalar per batch row (Triton: dims [1], reshape [])."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "X"], ["Y"])],
        "doubler",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch"])],
    )
    return _model(graph)


def accumulator_graph() -> object:
    """A sequence model: STATE_OUT = STATE_IN * (1 - START) + INPUT; OUTPUT = STATE_OUT."""
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["START"], ["start"], to=f32),
        helper.make_node("Sub", ["one", "start"], ["keep"]),
        helper.make_node("Mul", ["STATE_IN", "keep"], ["kept"]),
        helper.make_node("Add", ["kept", "INPUT"], ["STATE_OUT"]),
        helper.make_node("Identity", ["STATE_OUT"], ["OUTPUT"]),
    ]
    graph = helper.make_graph(
        nodes,
        "accumulator",
        [
            helper.make_tensor_value_info("INPUT", f32, ["b", 1]),
            helper.make_tensor_value_info("START", i32, ["b", 1]),
            helper.make_tensor_value_info("STATE_IN", f32, ["b", 1]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", f32, ["b", 1]),
            helper.make_tensor_value_info("STATE_OUT", f32, ["b", 1]),
        ],
        [helper.make_tensor("one", f32, [], [1.0])],
    )
    return _model(graph)


ACCUMULATOR_CONFIG = """
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
sequence_batching {
  control_input [ {
    name: "START"
    control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]
  } ]
  state [ {
    input_name: "STATE_IN"
    output_name: "STATE_OUT"
    data_type: TYPE_FP32
    dims: [ 1 ]
    initial_state: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zero" }
  } ]
}
"""


def _model(graph: object) -> object:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def add_model(
    repo: Path, name: str, model: object | bytes | None, config: str | None = None, **kw: object
) -> Path:
    """``<repo>/<name>/config.pbtxt`` (when given) and ``1/<filename>`` (an ONNX model)."""
    model_dir = repo / name
    version = model_dir / "1"
    version.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(textwrap.dedent(config))
    filename = str(kw.get("filename", "model.onnx"))
    if isinstance(model, bytes):
        (version / filename).write_bytes(model)
    elif model is not None:
        build_models.save(model, version / filename, external_data=bool(kw.get("external")))
    return model_dir


# --- Triton's QA cases (qa/L0_model_config/autofill_noplatform*/onnx) ----------------------

#: Triton's expected configuration for ``no_config`` (a batching graph, no config.pbtxt).
TRITON_NO_CONFIG = """
name: "no_config"
platform: "onnxruntime_onnx"
version_policy { latest { num_versions: 1 } }
max_batch_size: 4
input { name: "INPUT0" data_type: TYPE_INT32 dims: 16 }
input { name: "INPUT1" data_type: TYPE_INT32 dims: 16 }
output { name: "OUTPUT0" data_type: TYPE_INT8 dims: 16 }
output { name: "OUTPUT1" data_type: TYPE_INT8 dims: 16 }
instance_group { name: "no_config" count: 1 gpus: 0 kind: KIND_GPU }
dynamic_batching { preferred_batch_size: 4 }
default_model_filename: "model.onnx"
optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: true } }
backend: "onnxruntime"
runtime: ""
"""
#: ... for ``no_config_no_batch`` (a graph without a batch dimension, config: KIND_CPU only).
TRITON_NO_CONFIG_NO_BATCH = """
name: "no_config_no_batch"
platform: "onnxruntime_onnx"
version_policy { latest { num_versions: 1 } }
input { name: "INPUT0" data_type: TYPE_INT32 dims: 16 }
input { name: "INPUT1" data_type: TYPE_INT32 dims: 16 }
output { name: "OUTPUT0" data_type: TYPE_INT8 dims: 16 }
output { name: "OUTPUT1" data_type: TYPE_INT8 dims: 16 }
instance_group { name: "no_config_no_batch_0" count: 2 kind: KIND_CPU }
default_model_filename: "model.onnx"
optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: true } }
backend: "onnxruntime"
runtime: ""
"""
#: ... for ``cpu_instance`` (inputs and outputs given: only the backend fields are filled).
TRITON_CPU_INSTANCE = """
name: "cpu_instance"
platform: "onnxruntime_onnx"
version_policy { latest { num_versions: 1 } }
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP16 dims: -1 dims: -1 }
output { name: "OUTPUT0" data_type: TYPE_FP16 dims: -1 dims: -1 }
instance_group { name: "cpu_instance" count: 2 kind: KIND_CPU }
default_model_filename: "model.onnx"
optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: true } }
backend: "onnxruntime"
runtime: ""
"""
CPU_INSTANCE_CONFIG = """
name: "cpu_instance"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { latest { num_versions: 1 }}
input [ { name: "INPUT0" data_type: TYPE_FP16 dims: [ -1,-1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP16 dims: [ -1,-1 ] } ]
instance_group { name: "cpu_instance" kind: KIND_CPU }
"""

_IO_16 = """
input [ {{ name: "{a}" data_type: TYPE_INT32 dims: [ {da} ] }},
        {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }} {extra} ]
output [ {{ name: "{o}" data_type: TYPE_INT8 dims: [ 16 ] }},
         {{ name: "OUTPUT1" data_type: TYPE_INT8 dims: [ {do} ] }} ]
"""


def _qa_config(a="INPUT0", da="16", extra="", o="OUTPUT0", do="16") -> str:
    return "max_batch_size: 1\n" + _IO_16.format(a=a, da=da, extra=extra, o=o, do=do)


#: Triton's QA configs that must fail, and the message its QA expects (``expected``).
TRITON_BAD = {
    "bad_input_dims": (
        _qa_config(da="16, 1"),
        "model 'bad_input_dims', tensor 'INPUT0': the model expects 2 dimensions (shape "
        "[-1,16]) but the model configuration specifies 3 dimensions (an initial batch "
        "dimension because max_batch_size > 0 followed by the explicit tensor shape, making "
        "complete shape [-1,16,1])",
    ),
    "bad_output_dims": (
        _qa_config(do="1"),
        "model 'bad_output_dims', tensor 'OUTPUT1': the model expects 2 dimensions (shape "
        "[-1,16]) but the model configuration specifies 2 dimensions (an initial batch "
        "dimension because max_batch_size > 0 followed by the explicit tensor shape, making "
        "complete shape [-1,1])",
    ),
    "too_few_inputs": (
        "max_batch_size: 1\n"
        'input [ { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_INT8 dims: [ 16 ] },'
        ' { name: "OUTPUT1" data_type: TYPE_INT8 dims: [ 16 ] } ]',
        "unable to load model 'too_few_inputs', configuration expects 1 inputs, model provides 2",
    ),
    "too_many_inputs": (
        _qa_config(extra=', { name: "INPUT_EXTRA" data_type: TYPE_INT32 dims: [ 16 ] }'),
        "unable to load model 'too_many_inputs', configuration expects 3 inputs, model provides 2",
    ),
    "unknown_input": (
        _qa_config(a="INPUT_UNKNOWN"),
        "unexpected inference input 'INPUT_UNKNOWN', allowed inputs are: INPUT0, INPUT1",
    ),
    "unknown_output": (
        "max_batch_size: 1\n"
        'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },'
        ' { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT_UNKNOWN" data_type: TYPE_INT8 dims: [ 16 ] } ]',
        "unexpected inference output 'OUTPUT_UNKNOWN', allowed outputs are: OUTPUT0, OUTPUT1",
    ),
    "bad_dtype": (
        _qa_config().replace("TYPE_INT32", "TYPE_FP32", 1),
        "unable to load model 'bad_dtype', configuration expects datatype TYPE_FP32 for input "
        "'INPUT0', model provides TYPE_INT32",
    ),
}
#: Graphs without a batch dimension: Triton's ``bad_max_batch_size``.
TRITON_BAD_NOBATCH = {
    "bad_max_batch_size": (
        "max_batch_size: 1\n"
        'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },'
        ' { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]',
        "autofill failed for model 'bad_max_batch_size': model does not support batching while "
        "non-zero max_batch_size is specified",
    ),
}

MLP_CONFIG = """
backend: "onnxruntime"
max_batch_size: 4
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
instance_group [ {{ count: {count}, kind: KIND_CPU }} ]
"""


def _other_bad_models(repo: Path) -> dict[str, str]:
    """Broken files and settings; each must fail to load with its reason."""
    mlp = build_models.mlp_model()
    bad = {}
    add_model(repo, "missing_file", None, 'backend: "onnxruntime"\n')
    bad["missing_file"] = (
        f"unable to find '{repo / 'missing_file' / '1' / 'model.onnx'}' for model instance "
        "'missing_file'"
    )
    add_model(
        repo, "corrupt", b"\x08\x07garbage, not a protobuf \xff\xfe", 'backend: "onnxruntime"'
    )
    bad["corrupt"] = "onnx runtime error 7: Load model from "
    add_model(repo, "not_onnx", b"def f():\n    return 1\n", 'platform: "onnxruntime_onnx"')
    bad["not_onnx"] = "onnx runtime error 7: Load model from "
    add_model(repo, "openvino", mlp, 'backend: "onnxruntime"\n' + _ACCELERATOR % "cpu")
    bad["openvino"] = (
        "unable to load model 'openvino': the 'openvino' CPU execution accelerator needs "
        "onnxruntime's OpenVINOExecutionProvider, which the installed onnxruntime"
    )
    add_model(repo, "unknown_accel", mlp, 'backend: "onnxruntime"\n' + _UNKNOWN_ACCELERATOR)
    bad["unknown_accel"] = "unknown Execution Accelerator 'magic' is requested"
    add_model(
        repo,
        "bad_mode",
        mlp,
        'backend: "onnxruntime"\nparameters { key: "execution_mode" value: { string_value: "3" } }',
    )
    bad["bad_mode"] = (
        "Invalid configuration value provided. Expected values for  execution_mode are 0 or 1 "
        "but got 3 ."
    )
    add_model(repo, "gpu_model", mlp, 'backend: "onnxruntime"\ninstance_group [{kind: KIND_GPU}]')
    bad["gpu_model"] = "instance group gpu_model_0 of model gpu_model has kind KIND_GPU but no GPUs"
    return bad


_ACCELERATOR = (
    'optimization { execution_accelerators { %s_execution_accelerator [ { name: "openvino" } ] } }'
)
_UNKNOWN_ACCELERATOR = (
    'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "magic" } ] } }'
)


@pytest.fixture(scope="module")
def ort_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The module's repository, and the reasons its broken models must fail with."""
    repo = tmp_path_factory.mktemp("ort_repo")
    add_model(repo, "no_config", add_sub_graph(True))
    add_model(repo, "empty_config", add_sub_graph(True), "")
    add_model(repo, "no_config_no_batch", add_sub_graph(False), "instance_group [{kind: KIND_CPU}]")
    fp16 = identity_graph(TensorProto.FLOAT16, ["b", "x", "y"])
    add_model(repo, "cpu_instance", fp16, CPU_INSTANCE_CONFIG)
    for name, (config, _) in TRITON_BAD.items():
        add_model(repo, name, add_sub_graph(True), config)
    for name, (config, _) in TRITON_BAD_NOBATCH.items():
        add_model(repo, name, add_sub_graph(False), config)
    mlp = build_models.mlp_model()
    add_model(repo, "mlp", mlp, MLP_CONFIG.format(delay=0, count=1))
    # Waits (up to 30 s) for full batches of 4: only the batching tests send to it.
    add_model(repo, "mlp_batched", mlp, MLP_CONFIG.format(delay=30_000_000, count=1))
    add_model(repo, "mlp_x2", mlp, MLP_CONFIG.format(delay=0, count=2))
    add_model(repo, "mlp_folder", mlp, 'backend: "onnxruntime"', external=True)
    named = 'backend: "onnxruntime"\ndefault_model_filename: "net.onnx"'
    add_model(repo, "mlp_named", mlp, named, filename="net.onnx")
    add_model(repo, "strings", identity_graph(TensorProto.STRING, ["batch", 2], "TEXT"))
    add_model(repo, "matmul", matmul_graph())
    add_model(repo, "reduce", reduce_graph())
    add_model(repo, "accumulator", accumulator_graph(), ACCUMULATOR_CONFIG)
    add_model(repo, "doubler", doubler_graph())
    return repo, _other_bad_models(repo)


@pytest.fixture(scope="module")
def ort_repo(ort_setup: tuple[Path, dict[str, str]]) -> Path:
    return ort_setup[0]


@pytest.fixture(scope="module")
def ort_server(ort_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("ort_log") / "server.log"
    server = start_server(ort_repo, "--exit-on-error=false", log_path=log_path)
    _wait_ready(server, "mlp_x2")
    yield server
    assert server.stop() == 0, server.log()


def _wait_ready(server: RunningServer, model: str) -> None:
    with server.client() as client:
        deadline = time.monotonic() + 60
        while not client.is_model_ready(model):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)


@pytest.fixture
def http(ort_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with ort_server.client() as client:
        yield client


@pytest.fixture
def grpc(ort_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(ort_server.grpc_url)
    yield client
    client.close()


def _served_config(client: httpclient.InferenceServerClient, name: str) -> ModelConfig:
    return json_format.ParseDict(client.get_model_config(name), ModelConfig())


def _without_instance_groups(config: ModelConfig) -> dict:
    copy = ModelConfig()
    copy.CopyFrom(config)
    del copy.instance_group[:]
    return json_format.MessageToDict(copy)


# --- auto-complete ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("no_config", TRITON_NO_CONFIG),
        ("empty_config", TRITON_NO_CONFIG.replace('"no_config"', '"empty_config"')),
        ("no_config_no_batch", TRITON_NO_CONFIG_NO_BATCH),
        ("cpu_instance", TRITON_CPU_INSTANCE),
    ],
    ids=["no_config", "empty_config", "no_config_no_batch", "cpu_instance"],
)
def test_auto_complete_matches_triton(http, model: str, expected: str) -> None:
    """Everything the backend completes is Triton's, field for field.

    Instance groups are the kernel's (and the machine's: Triton's QA box had a GPU).
    """
    served = _served_config(http, model)
    triton = parse_config_text(expected)
    assert _without_instance_groups(served) == _without_instance_groups(triton)
    assert [type(g).Kind.Name(g.kind) for g in served.instance_group] == ["KIND_CPU"]


def test_auto_completed_models_serve_over_http_and_grpc(http, grpc) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        inputs = [module.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("no_config", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (a + b).astype(np.int8))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (a - b).astype(np.int8))
        single = [module.InferInput(n, [16], "INT32") for n in ("INPUT0", "INPUT1")]
        single[0].set_data_from_numpy(a[0])
        single[1].set_data_from_numpy(b[0])
        result = client.infer("no_config_no_batch", single)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (a[0] - b[0]).astype(np.int8))


def test_metadata_names_the_onnxruntime_platform(http, grpc) -> None:
    metadata = http.get_model_metadata("mlp")
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "LOGITS", "datatype": "FP32", "shape": [-1, 10]}]
    assert grpc.get_model_metadata("mlp").platform == "onnxruntime_onnx"


# --- inference ----------------------------------------------------------------------------


def _features(rows: int, seed: int = 0) -> np.ndarray:
    return ((np.arange(rows * 64).reshape(rows, 64) * (seed + 3)) % 23 / 7 - 1).astype(np.float32)


def _mlp_inputs(module, x: np.ndarray, binary: bool = True) -> list:
    tensor = module.InferInput("INPUT", list(x.shape), "FP32")
    if module is httpclient:
        tensor.set_data_from_numpy(x, binary_data=binary)
    else:
        tensor.set_data_from_numpy(x)
    return [tensor]


@pytest.mark.parametrize("model", ["mlp", "mlp_x2", "mlp_folder", "mlp_named"])
def test_mlp_answers_as_numpy_does(http, grpc, model: str) -> None:
    """The example MLP, from a file, a folder with external data and a named file."""
    x = _features(3)
    expected = build_models.mlp_reference(x)
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        result = client.infer(model, _mlp_inputs(module, x))
        np.testing.assert_allclose(result.as_numpy("LOGITS"), expected, rtol=1e-5, atol=1e-5)
    json_result = http.infer(model, _mlp_inputs(httpclient, x, binary=False))
    np.testing.assert_allclose(json_result.as_numpy("LOGITS"), expected, rtol=1e-5, atol=1e-5)


def test_dynamic_batching_runs_requests_as_one_batch(ort_server: RunningServer) -> None:
    """8 single-row requests to a max_batch_size 4 model with a long queue delay: two full
    batches, and each request gets its own rows back."""

    async def main() -> list[object]:
        async with httpaio.InferenceServerClient(ort_server.url) as client:
            calls = [
                client.infer("mlp_batched", _mlp_inputs(httpclient, _features(1, i)))
                for i in range(8)
            ]
            return await asyncio.gather(*calls)

    with ort_server.client() as client:
        before = client.get_inference_statistics("mlp_batched")["model_stats"][0]
        results = asyncio.run(main())
        after = client.get_inference_statistics("mlp_batched")["model_stats"][0]
    for i, result in enumerate(results):
        expected = build_models.mlp_reference(_features(1, i))
        np.testing.assert_allclose(result.as_numpy("LOGITS"), expected, rtol=1e-5, atol=1e-5)
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["execution_count"] - before["execution_count"] == 2
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sizes.get(4, 0) >= 2


def test_rows_of_different_requests_are_split_back(ort_server: RunningServer) -> None:
    """Requests of 1, 2 and 1 rows fill one batch of 4; each gets exactly its rows."""
    sizes = [1, 2, 1]

    async def main() -> list[object]:
        async with httpaio.InferenceServerClient(ort_server.url) as client:
            calls = [
                client.infer("mlp_batched", _mlp_inputs(httpclient, _features(n, i)))
                for i, n in enumerate(sizes)
            ]
            return await asyncio.gather(*calls)

    for i, (n, result) in enumerate(zip(sizes, asyncio.run(main()), strict=True)):
        logits = result.as_numpy("LOGITS")
        assert logits.shape == (n, 10)
        np.testing.assert_allclose(logits, build_models.mlp_reference(_features(n, i)), atol=1e-5)


def test_two_instances_serve_concurrent_clients(ort_server: RunningServer, http) -> None:
    config = http.get_model_config("mlp_x2")
    assert config["instance_group"][0]["count"] == 2

    async def main() -> list[object]:
        async with httpaio.InferenceServerClient(ort_server.url) as client:
            calls = [
                client.infer("mlp_x2", _mlp_inputs(httpclient, _features(2, i))) for i in range(24)
            ]
            return await asyncio.gather(*calls)

    for i, result in enumerate(asyncio.run(main())):
        expected = build_models.mlp_reference(_features(2, i))
        np.testing.assert_allclose(result.as_numpy("LOGITS"), expected, rtol=1e-5, atol=1e-5)


def test_strings_travel_as_bytes(http, grpc) -> None:
    text = np.array([["héllo", "triton"], ["", "x" * 300]], dtype=np.object_)
    wire = np.vectorize(lambda s: s.encode("utf-8"), otypes=[np.object_])(text)
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        tensor = module.InferInput("TEXT", [2, 2], "BYTES")
        tensor.set_data_from_numpy(wire)
        result = client.infer("strings", [tensor])
        assert result.as_numpy("TEXT_OUT").tolist() == wire.tolist()


def test_sequence_controls_and_implicit_state_reach_the_graph(grpc) -> None:
    """The sequence batcher's START control and implicit state are graph inputs (Triton's
    count: config inputs + controls + states), and the state comes back for the next step."""
    for sequence_id, values in ((7, [1.0, 2.0, 3.0]), (8, [10.0, -1.0])):
        sums = []
        for index, value in enumerate(values):
            tensor = grpcclient.InferInput("INPUT", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
            result = grpc.infer(
                "accumulator",
                [tensor],
                sequence_id=sequence_id,
                sequence_start=index == 0,
                sequence_end=index == len(values) - 1,
            )
            sums.append(float(result.as_numpy("OUTPUT")[0, 0]))
        assert sums == list(np.cumsum(values))


def test_scalar_graph_output_gets_its_configured_dims(http) -> None:
    assert http.get_model_config("reduce")["output"][0]["dims"] == [1]
    tensor = httpclient.InferInput("X", [4], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2, 3, 4.5], dtype=np.float32))
    result = http.infer("reduce", [tensor])
    assert result.as_numpy("Y").tolist() == [10.5]


def test_batched_scalars_are_reshaped_as_triton_completes_them(http, grpc) -> None:
    config = http.get_model_config("doubler")
    assert config["max_batch_size"] == 4
    assert config["input"][0]["dims"] == [1] and config["input"][0]["reshape"] == {"shape": []}
    assert config["output"][0]["dims"] == [1] and config["output"][0]["reshape"] == {"shape": []}
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        tensor = module.InferInput("X", [3, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[1], [2], [3.5]], dtype=np.float32))
        assert client.infer("doubler", [tensor]).as_numpy("Y").tolist() == [[2], [4], [7]]


def test_an_onnxruntime_failure_fails_only_its_request(http, grpc) -> None:
    """k=3 where the graph multiplies by a [4, 2] weight: ONNX Runtime refuses at run time."""
    bad = np.ones((1, 3), dtype=np.float32)
    for client, module, status in ((http, httpclient, "500"), (grpc, grpcclient, "INTERNAL")):
        tensor = module.InferInput("X", [1, 3], "FP32")
        tensor.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException) as info:
            client.infer("matmul", [tensor])
        assert status in str(info.value.status())
        assert info.value.message().startswith("onnx runtime error ")
        assert "MatMul dimension mismatch" in info.value.message()
        good = module.InferInput("X", [1, 4], "FP32")
        good.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
        assert client.infer("matmul", [good]).as_numpy("Y").tolist() == [[4, 6]]


def test_request_errors_are_the_kernels(http) -> None:
    tensor = httpclient.InferInput("INPUT", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        http.infer("mlp_x2", [tensor])
    assert info.value.status() == "400"
    expected = "unexpected shape for input 'INPUT' for model 'mlp_x2'. Expected [-1,64], got [1,63]"
    assert expected in info.value.message()


# --- models that must not load ---------------------------------------------------------------


def _reasons(client: httpclient.InferenceServerClient) -> dict[str, str]:
    rows = client.get_model_repository_index()
    return {row["name"]: row.get("reason", "") for row in rows if row.get("state") != "READY"}


def test_triton_qa_configs_fail_with_tritons_messages(http) -> None:
    reasons = _reasons(http)
    for name, (_, message) in {**TRITON_BAD, **TRITON_BAD_NOBATCH}.items():
        assert message in reasons[name], name
        assert not http.is_model_ready(name)


def test_broken_files_and_settings_fail_with_their_reason(http, ort_setup) -> None:
    reasons = _reasons(http)
    expected = dict(ort_setup[1])
    if "gpu_model" not in reasons:  # a machine with a GPU and onnxruntime-gpu serves it
        expected.pop("gpu_model")
    elif "CUDAExecutionProvider" in reasons["gpu_model"]:  # a GPU, a CPU-only onnxruntime
        expected["gpu_model"] = "lacks (it has "
        assert "install onnxruntime-gpu" in reasons["gpu_model"]
    for name, message in expected.items():
        assert message in reasons[name], (name, reasons[name])
    assert http.is_model_ready("mlp")  # the others loaded


def test_explicit_load_reports_the_reason_over_http_and_grpc(
    ort_repo: Path, tmp_path: Path
) -> None:
    flags = ["--model-control-mode=explicit", "--exit-on-error=false"]
    server = start_server(ort_repo, *flags, log_path=tmp_path / "log")
    try:
        message = TRITON_BAD["too_many_inputs"][1]
        with server.client() as client:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("too_many_inputs")
            assert info.value.status() == "400"
            assert message in info.value.message()
            for _ in range(2):  # load, unload (threads and sessions go), load again
                client.load_model("no_config")
                assert client.is_model_ready("no_config")
                client.unload_model("no_config")
            client.load_model("no_config")
            assert client.is_model_ready("no_config")
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("too_many_inputs")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert message in info.value.message()
    finally:
        assert server.stop() == 0, server.log()


# --- backend configuration -------------------------------------------------------------------


def test_default_max_batch_size_and_disabled_auto_complete(tmp_path: Path) -> None:
    """``--backend-config=onnxruntime,default-max-batch-size=8`` sets what auto-complete picks;
    with ``--disable-auto-complete-config`` a config without inputs fails as in Triton."""
    repo = tmp_path / "repo"
    add_model(repo, "auto", add_sub_graph(True), 'backend: "onnxruntime"')
    add_model(repo, "one", add_sub_graph(True), 'backend: "onnxruntime"\nmax_batch_size: 1')
    flags = ["--backend-config=onnxruntime,default-max-batch-size=8"]
    server = start_server(repo, *flags, log_path=tmp_path / "log1")
    try:
        _wait_ready(server, "one")
        with server.client() as client:
            auto = client.get_model_config("auto")
            assert auto["max_batch_size"] == 8
            assert auto["dynamic_batching"]["preferred_batch_size"] == [8]
            one = client.get_model_config("one")
            assert one["max_batch_size"] == 1 and "dynamic_batching" not in one
    finally:
        assert server.stop() == 0, server.log()
    flags = ["--disable-auto-complete-config", "--exit-on-error=false"]
    server = start_server(repo, *flags, log_path=tmp_path / "log2")
    try:
        with server.client() as client:
            deadline = time.monotonic() + 30
            while "auto" not in _reasons(client) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "configuration expects 0 inputs, model provides 2" in _reasons(client)["auto"]
    finally:
        assert server.stop() == 0, server.log()


def test_session_parameters_are_accepted(tmp_path: Path) -> None:
    """Triton's ``parameters`` and ``optimization.graph.level`` for a model's sessions."""
    repo = tmp_path / "repo"
    config = """
        backend: "onnxruntime"
        optimization { graph { level: 2 } }
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "enable_mem_arena" value: { string_value: "on" } }
        parameters { key: "enable_mem_pattern" value: { string_value: "true" } }
        parameters { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } }
    """
    add_model(repo, "tuned", build_models.mlp_model(), config)
    bad = (
        'backend: "onnxruntime"\n'
        'parameters { key: "intra_op_thread_count" value: { string_value: "many" } }'
    )
    add_model(repo, "bad_threads", build_models.mlp_model(), bad)
    flags = [
        "--backend-config=onnxruntime,intra_op_thread_count=1",
        "--backend-config=onnxruntime,inline-execution-us=0",  # every run on its thread
        "--exit-on-error=false",
    ]
    server = start_server(repo, *flags, log_path=tmp_path / "log")
    try:
        _wait_ready(server, "tuned")
        with server.client() as client:
            x = _features(2)
            result = client.infer("tuned", _mlp_inputs(httpclient, x))
            expected = build_models.mlp_reference(x)
            np.testing.assert_allclose(result.as_numpy("LOGITS"), expected, rtol=1e-5, atol=1e-5)
            assert "failed to convert 'many' to integral number" in _reasons(client)["bad_threads"]
    finally:
        assert server.stop() == 0, server.log()


def test_server_start_does_not_import_onnxruntime(tmp_path: Path) -> None:
    """A repository without ONNX models never imports onnxruntime (a lazy backend)."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    server = start_server(repo, "--log-verbose=1", log_path=tmp_path / "log")
    try:
        _wait_ready(server, "add_sub")
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "onnxruntime" not in maps
    finally:
        assert server.stop() == 0, server.log()


_BUILT = shutil.ignore_patterns("*.onnx", "__pycache__")


def test_example_repository_runs_with_its_client(tmp_path: Path) -> None:
    """examples/frameworks: build the models, serve them, run the client script."""
    repo = tmp_path / "frameworks"
    for name in ("mlp_onnx", "preprocess", "mlp_ensemble"):  # the ONNX part of the examples
        shutil.copytree(FRAMEWORKS / "models" / name, repo / name, ignore=_BUILT)
    build_models.build(repo)
    server = start_server(repo, log_path=tmp_path / "log")
    try:
        _wait_ready(server, "mlp_ensemble")
        spec = importlib.util.spec_from_file_location("fw_client", FRAMEWORKS / "client.py")
        assert spec is not None and spec.loader is not None
        client_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(client_module)
        report = client_module.run(server.url, server.grpc_url)
        assert report["mlp_onnx"] < 1e-4 and report["mlp_ensemble"] < 1e-4, report
        with server.client() as client:
            config = client.get_model_config("mlp_onnx")
        assert [t["name"] for t in config["input"]] == ["INPUT"]
        assert json.dumps(config["output"][0]["dims"]) == "[10]"
    finally:
        assert server.stop() == 0, server.log()
