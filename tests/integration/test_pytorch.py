"""The PyTorch backend: TorchScript models built here, served over HTTP and gRPC.

Every model is scripted or traced by this module into its own repository; the
expected answers are computed with numpy from the same inputs (and, for the layer
models, from the weights the model was built with).
"""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server

torch = pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "frameworks"


def example_builder():
    """``examples/frameworks/build_torchscript.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        "build_torchscript", EXAMPLES / "build_torchscript.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the models ---------------------------------------------------------------------------


class AddSub(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a + b, a - b


class Scaled(torch.nn.Module):
    """Named forward arguments: the configuration lists them in another order."""

    def forward(self, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return image * scale


class DictInput(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["left"] * 10 + inputs["right"]


class Upper(torch.nn.Module):
    def forward(self, words: list[str]) -> list[str]:
        return [w.upper() for w in words]


class Square(torch.nn.Module):
    """Takes [B,2,2] (the configuration reshapes [4] to [2,2])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, x)


class Failing(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() < 0):
            raise ValueError("negative input")
        return x


class DictOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": x}


def linear_layer() -> torch.nn.Module:
    """A traced layer with weights from a fixed seed (no download)."""
    generator = torch.Generator().manual_seed(7)
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2, 3, generator=generator))
        layer.bias.copy_(torch.randn(2, generator=generator))
    return layer


def save_scripted(module: torch.nn.Module, path: Path, trace_input=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit is deprecated in PyTorch 2.x, still loadable
        warnings.simplefilter("ignore")
        scripted = (
            torch.jit.trace(module, trace_input)
            if trace_input is not None
            else torch.jit.script(module)
        )
        scripted.save(str(path))


def write_config(repo: Path, name: str, text: str) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(text))
    return model_dir


def io(kind: str, name: str, dtype: str, dims: str, extra: str = "") -> str:
    return f'{kind} {{ name: "{name}" data_type: {dtype} dims: [ {dims} ] {extra}}}\n'


ADD_SUB_IO = (
    io("input", "INPUT__0", "TYPE_FP32", "4")
    + io("input", "INPUT__1", "TYPE_FP32", "4")
    + io("output", "OUTPUT__0", "TYPE_FP32", "4")
    + io("output", "OUTPUT__1", "TYPE_FP32", "4")
)

PYTHON_RUNTIME_MODEL = '''
import threading
import time

import torch

ACTIVE = 0
PEAK = 0
LOCK = threading.Lock()


class Doubler(torch.nn.Module):
    """Records the thread it ran on and how many ran at once (module globals: shared)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, delay):
        global ACTIVE, PEAK
        with LOCK:
            ACTIVE += 1
            PEAK = max(PEAK, ACTIVE)
        time.sleep(float(delay.reshape(-1)[0]))
        with LOCK:
            ACTIVE -= 1
        ident = torch.full((x.shape[0], 1), threading.get_ident() % 2**31, dtype=torch.int64)
        peak = torch.full((x.shape[0], 1), PEAK, dtype=torch.int64)
        return x * self.scale, ident, peak
'''


def build_repository(repo: Path) -> None:
    save_scripted(AddSub(), repo / "add_sub" / "1" / "model.pt")
    write_config(
        repo,
        "add_sub",
        'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
        + ADD_SUB_IO
        + "instance_group [ { count: 2 kind: KIND_CPU } ]\n",
    )
    save_scripted(AddSub(), repo / "batched" / "1" / "model.pt")
    write_config(
        repo,
        "batched",
        'backend: "pytorch"\nmax_batch_size: 4\n'
        + ADD_SUB_IO
        + "dynamic_batching { preferred_batch_size: [ 4 ] "
        + "max_queue_delay_microseconds: 5000000 }\n",
    )
    save_scripted(Scaled(), repo / "named_args" / "1" / "model.pt")
    write_config(
        repo,
        "named_args",
        'backend: "pytorch"\nmax_batch_size: 0\n'
        + io("input", "scale", "TYPE_FP32", "1")
        + io("input", "image", "TYPE_FP32", "2, 3")
        + io("output", "scaled", "TYPE_FP32", "2, 3"),
    )
    save_scripted(DictInput(), repo / "dict_input" / "1" / "model.pt")
    write_config(
        repo,
        "dict_input",
        'backend: "pytorch"\nmax_batch_size: 2\n'
        + io("input", "right", "TYPE_INT64", "3")
        + io("input", "left", "TYPE_INT64", "3")
        + io("output", "OUTPUT__0", "TYPE_INT64", "3"),
    )
    save_scripted(Upper(), repo / "strings" / "1" / "model.pt")
    write_config(
        repo,
        "strings",
        'backend: "pytorch"\nmax_batch_size: 0\n'
        + io("input", "INPUT__0", "TYPE_STRING", "-1")
        + io("output", "OUTPUT__0", "TYPE_STRING", "-1"),
    )
    save_scripted(Square(), repo / "reshaped" / "1" / "model.pt")
    write_config(
        repo,
        "reshaped",
        'backend: "pytorch"\nmax_batch_size: 4\n'
        + io("input", "INPUT__0", "TYPE_FP32", "4", "reshape: { shape: [ 2, 2 ] } ")
        + io("output", "OUTPUT__0", "TYPE_FP32", "4", "reshape: { shape: [ 2, 2 ] } "),
    )
    save_scripted(linear_layer(), repo / "traced" / "1" / "model.pt", torch.zeros(1, 3))
    write_config(
        repo,
        "traced",
        'backend: "pytorch"\nmax_batch_size: 8\n'
        + io("input", "INPUT__0", "TYPE_FP32", "3")
        + io("output", "OUTPUT__0", "TYPE_FP32", "2")
        + _parameters(
            INFERENCE_MODE="false", DISABLE_OPTIMIZED_EXECUTION="true", ENABLE_JIT_PROFILING="1"
        ),
    )
    save_scripted(AddSub(), repo / "shared" / "1" / "model.pt")
    write_config(
        repo,
        "shared",
        'backend: "pytorch"\nmax_batch_size: 8\n'
        + ADD_SUB_IO
        + "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        + _parameters(ENABLE_WEIGHT_SHARING="true"),
    )
    save_scripted(Failing(), repo / "failing" / "1" / "model.pt")
    write_config(
        repo,
        "failing",
        'backend: "pytorch"\nmax_batch_size: 0\n'
        + io("input", "INPUT__0", "TYPE_FP32", "2")
        + io("output", "OUTPUT__0", "TYPE_FP32", "2"),
    )
    model_dir = write_config(
        repo,
        "python_runtime",
        'backend: "pytorch"\nruntime: "model.py"\nmax_batch_size: 4\n'
        + io("input", "x", "TYPE_FP32", "2")
        + io("input", "delay", "TYPE_FP32", "1")
        + io("output", "y", "TYPE_FP32", "2")
        + io("output", "thread", "TYPE_INT64", "1")
        + io("output", "peak", "TYPE_INT64", "1")
        + "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        + _parameters(TORCH_COMPILE_OPTIONAL_PARAMETERS='{\\"disable\\": true}'),
    )
    (model_dir / "1" / "model.py").write_text(PYTHON_RUNTIME_MODEL)
    torch.save({"scale": torch.tensor([3.0])}, model_dir / "1" / "model.pt")
    builder = example_builder()
    builder.build(repo)
    shutil.copy(EXAMPLES / "models" / builder.NAME / "config.pbtxt", repo / builder.NAME)


def _parameters(**values: str) -> str:
    return "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in values.items()
    )


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("pytorch_repo")
    build_repository(repo)
    log = tmp_path_factory.mktemp("pytorch_log") / "server.log"
    running = start_server(repo, log_path=log)
    with running.client() as client:
        deadline = time.monotonic() + 60
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.is_server_ready(), running.log()
    yield running
    assert running.stop() == 0, running.log()


def _http_inputs(**arrays: np.ndarray) -> list[httpclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else _DATATYPES[array.dtype.str]
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _grpc_inputs(**arrays: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), _DATATYPES[array.dtype.str])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


_DATATYPES = {"<f4": "FP32", "<i8": "INT64", "<i4": "INT32"}


# --- serving ------------------------------------------------------------------------------


def test_index_names_over_http_and_grpc(torch_server: RunningServer):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 2.0, dtype=np.float32)
    with torch_server.client() as client:
        result = client.infer("add_sub", _http_inputs(INPUT__0=a, INPUT__1=b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a - b)
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        result = client.infer(
            "add_sub",
            _grpc_inputs(INPUT__0=a, INPUT__1=b),
            outputs=[grpcclient.InferRequestedOutput("OUTPUT__1")],
        )
        assert result.as_numpy("OUTPUT__0") is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a - b)


def test_configuration_is_completed_as_triton_does(torch_server: RunningServer):
    with torch_server.client() as client:
        config = client.get_model_config("batched")
        named = client.get_model_config("named_args")
    assert config["platform"] == "pytorch_libtorch"
    assert config["backend"] == "pytorch"
    assert config["default_model_filename"] == "model.pt"
    assert named["input"][0]["name"] == "scale"


def test_named_forward_arguments_bind_by_name(torch_server: RunningServer):
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    scale = np.array([0.5], dtype=np.float32)
    with torch_server.client() as client:
        result = client.infer("named_args", _http_inputs(image=image, scale=scale))
    np.testing.assert_array_equal(result.as_numpy("scaled"), image * 0.5)
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        result = client.infer("named_args", _grpc_inputs(scale=scale, image=image))
    np.testing.assert_array_equal(result.as_numpy("scaled"), image * 0.5)


def test_dict_input_is_keyed_by_input_name(torch_server: RunningServer):
    left = np.array([[1, 2, 3]], dtype=np.int64)
    right = np.array([[4, 5, 6]], dtype=np.int64)
    with torch_server.client() as client:
        result = client.infer("dict_input", _http_inputs(left=left, right=right))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), left * 10 + right)


def test_string_lists_in_and_out(torch_server: RunningServer):
    words = np.array([b"triton", b"kernel", "gr\u00fc\u00df".encode()], dtype=object)
    with torch_server.client() as client:
        result = client.infer("strings", _http_inputs(INPUT__0=words))
    # TorchScript's upper() changes ASCII letters only; the UTF-8 text survives the trip.
    expected = [b"TRITON", b"KERNEL", "GR\u00fc\u00df".encode()]
    assert result.as_numpy("OUTPUT__0").tolist() == expected
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT__0", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
        assert client.infer("strings", [tensor]).as_numpy("OUTPUT__0").tolist() == [b"A", b"B"]


def test_reshape_applies_to_inputs_and_outputs(torch_server: RunningServer):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with torch_server.client() as client:
        result = client.infer("reshaped", _http_inputs(INPUT__0=x))
    matrices = x.reshape(2, 2, 2)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), (matrices @ matrices).reshape(2, 4))


def test_traced_layer_with_parameters_matches_its_weights(torch_server: RunningServer):
    layer = linear_layer()
    weight, bias = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=np.float32)
    with torch_server.client() as client:
        result = client.infer("traced", _http_inputs(INPUT__0=x))
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), x @ weight.T + bias, rtol=1e-5)


def test_dynamic_batcher_concatenates_and_splits(torch_server: RunningServer):
    """Four concurrent requests of different rows become one batch; each gets its own rows."""
    arrays = [np.full((1, 4), float(i), dtype=np.float32) for i in range(4)]
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        with torch_server.client() as client:
            inputs = _http_inputs(INPUT__0=arrays[i], INPUT__1=np.ones((1, 4), np.float32))
            results[i] = client.infer("batched", inputs).as_numpy("OUTPUT__0")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], arrays[i] + 1)
    with torch_server.client() as client:
        stats = client.get_inference_statistics("batched")["model_stats"][0]
    assert {b["batch_size"] for b in stats["batch_stats"]} == {4}
    assert stats["execution_count"] == 1


def test_two_instances_run_at_once_on_their_own_threads(torch_server: RunningServer):
    """The PyTorch 2 runtime model sleeps in forward and reports its thread and concurrency."""
    answers: list[tuple[int, int, np.ndarray]] = []

    def call() -> None:
        with torch_server.client() as client:
            inputs = _http_inputs(
                x=np.array([[1.0, 2.0]], np.float32), delay=np.array([[1.0]], np.float32)
            )
            result = client.infer("python_runtime", inputs)
            answers.append(
                (
                    int(result.as_numpy("thread")[0, 0]),
                    int(result.as_numpy("peak")[0, 0]),
                    result.as_numpy("y"),
                )
            )

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({thread for thread, _, _ in answers}) == 2
    assert max(peak for _, peak, _ in answers) == 2
    for _, _, y in answers:  # the state_dict in model.pt set scale to 3
        np.testing.assert_array_equal(y, [[3.0, 6.0]])


def test_instance_count_and_weight_sharing_serve_concurrently(torch_server: RunningServer):
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    errors: list[BaseException] = []

    def call(model: str) -> None:
        try:
            with torch_server.client() as client:
                for _ in range(5):
                    result = client.infer(model, _http_inputs(INPUT__0=a, INPUT__1=a))
                    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a * 2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(m,)) for m in ("add_sub", "shared") * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with torch_server.client() as client:
        for model in ("add_sub", "shared"):
            assert client.get_model_config(model)["instance_group"][0]["count"] == 2
    assert "Reusing TorchScript model for instance 'shared'" in torch_server.log()


def test_example_mlp_matches_its_numpy_reference(torch_server: RunningServer):
    """The example repository's TorchScript MLP, built by its script, served and checked."""
    builder = example_builder()
    features = np.linspace(-2.0, 2.0, 3 * 16, dtype=np.float32).reshape(3, 16)
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        result = client.infer(builder.NAME, _grpc_inputs(INPUT__0=features))
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT__0"), builder.reference(features), rtol=1e-5, atol=1e-5
    )


def test_execute_failure_fails_its_request_only(torch_server: RunningServer):
    with torch_server.client() as client:
        bad = _http_inputs(INPUT__0=np.array([-1.0, -2.0], np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("failing", bad)
        assert info.value.status() == "500"
        assert info.value.message().startswith("PyTorch execute failure: ")
        assert "negative input" in info.value.message()
        good = _http_inputs(INPUT__0=np.array([1.0, 2.0], np.float32))
        assert client.infer("failing", good).as_numpy("OUTPUT__0").tolist() == [1.0, 2.0]
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("failing", _grpc_inputs(INPUT__0=np.array([-1.0, -2.0], np.float32)))
        assert info.value.status() == "StatusCode.INTERNAL"
        assert "negative input" in info.value.message()


# --- bad models: each fails its own load with the reason; the rest loads ----------------

ONE_IO = io("input", "INPUT__0", "TYPE_FP32", "2") + io("output", "OUTPUT__0", "TYPE_FP32", "2")

#: model name -> (config body, expected text in the load failure reason)
BROKEN = {
    "missing_file": (ONE_IO, "unable to find '"),
    "corrupt_file": (ONE_IO, "failed to load model 'corrupt_file': PytorchStreamReader failed"),
    "state_dict_file": (ONE_IO, "failed to load model 'state_dict_file': "),
    "wrong_input_count": (
        ONE_IO + io("input", "INPUT__1", "TYPE_FP32", "2"),
        "unable to load model 'wrong_input_count', configuration expects 2 inputs, "
        "model provides 1",
    ),
    "unsupported_type": (
        io("input", "INPUT__0", "TYPE_UINT16", "2") + io("output", "OUTPUT__0", "TYPE_FP32", "2"),
        "unsupported datatype TYPE_UINT16 for input 'INPUT__0' for model 'unsupported_type'",
    ),
    "index_out_of_range": (
        io("input", "INPUT__3", "TYPE_FP32", "2") + io("output", "OUTPUT__0", "TYPE_FP32", "2"),
        "input 'INPUT__3' refers to forward argument 3, but the model takes 1",
    ),
    "bad_gpu_index": (
        ONE_IO + "instance_group [ { kind: KIND_GPU gpus: [ 7 ] } ]\n",
        "instance group bad_gpu_index_0 of model bad_gpu_index specifies invalid or unsupported "
        "gpu id 7. GPUs with at least the minimum required CUDA compute compatibility of "
        "6.000000 are: ",
    ),
    "cpu_with_gpus": (
        ONE_IO + "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]\n",
        "instance group cpu_with_gpus_0 of model cpu_with_gpus has kind KIND_CPU but specifies "
        "one or more GPUs",
    ),
    "bad_parameter": (
        ONE_IO + _parameters(INFERENCE_MODE="maybe"),
        "failed to convert 'maybe' to boolean",
    ),
    "no_outputs": (
        io("input", "INPUT__0", "TYPE_FP32", "2"),
        "model configuration must contain at least one output, none were specified.",
    ),
    "bytes_with_batching_dims": (
        io("input", "INPUT__0", "TYPE_STRING", "1") + io("output", "OUTPUT__0", "TYPE_FP32", "2"),
        "Triton only supports 1 dimensional List of String as input for 'INPUT__0' for model "
        "'bytes_with_batching_dims'",
    ),
}


#: Only where torch sees no GPU (CI): a KIND_GPU model cannot load.
if not torch.cuda.is_available():
    BROKEN["kind_gpu"] = (
        ONE_IO + "instance_group [ { kind: KIND_GPU } ]\n",
        "instance group kind_gpu_0 of model kind_gpu has kind KIND_GPU but no GPUs are available",
    )


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return x, x * 2


def build_broken_repository(repo: Path) -> None:
    for name, (body, _) in BROKEN.items():
        batching = "max_batch_size: 4\n" if name == "bytes_with_batching_dims" else ""
        write_config(repo, name, f'backend: "pytorch"\n{batching}' + body)
        if name == "missing_file":
            continue
        path = repo / name / "1" / "model.pt"
        if name == "corrupt_file":
            path.write_bytes(b"not a zip archive at all" * 10)
        elif name == "state_dict_file":
            torch.save(linear_layer().state_dict(), path)
        else:
            save_scripted(Identity(), path)
    save_scripted(Identity(), repo / "good" / "1" / "model.pt")
    write_config(repo, "good", 'backend: "pytorch"\n' + ONE_IO)
    save_scripted(Identity(), repo / "int_output" / "1" / "model.pt")
    write_config(
        repo,
        "int_output",
        'backend: "pytorch"\n'
        + io("input", "INPUT__0", "TYPE_FP32", "2")
        + io("output", "OUTPUT__0", "TYPE_INT32", "2"),
    )
    save_scripted(Pair(), repo / "missing_output" / "1" / "model.pt")
    write_config(
        repo,
        "missing_output",
        'backend: "pytorch"\n'
        + io("input", "INPUT__0", "TYPE_FP32", "2")
        + io("output", "OUTPUT__0", "TYPE_FP32", "2")
        + io("output", "OUTPUT__2", "TYPE_FP32", "2"),
    )
    save_scripted(DictOutput(), repo / "dict_output" / "1" / "model.pt")
    write_config(repo, "dict_output", 'backend: "pytorch"\n' + ONE_IO)


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("pytorch_broken")
    build_broken_repository(repo)
    log = tmp_path_factory.mktemp("pytorch_broken_log") / "server.log"
    running = start_server(
        repo,
        "--exit-on-error=false",
        "--model-control-mode=explicit",
        "--load-model=*",
        log_path=log,
    )
    with running.client() as client:
        deadline = time.monotonic() + 60
        while not client.is_model_ready("good") and time.monotonic() < deadline:
            time.sleep(0.05)
    yield running
    assert running.stop() == 0, running.log()


def test_each_broken_model_fails_with_its_reason(broken_server: RunningServer):
    with broken_server.client() as client:
        assert client.is_model_ready("good")
        assert not client.is_server_ready()  # strict readiness: some models failed
        index = {row["name"]: row for row in client.get_model_repository_index()}
        for name, (_, expected) in BROKEN.items():
            assert index[name]["state"] == "UNAVAILABLE", name
            assert expected in index[name]["reason"], (name, index[name]["reason"])
        x = np.array([1.0, 2.0], np.float32)
        assert client.infer("good", _http_inputs(INPUT__0=x)).as_numpy("OUTPUT__0").tolist() == [
            1.0,
            2.0,
        ]


def test_load_of_a_broken_model_answers_with_the_reason(broken_server: RunningServer):
    with broken_server.client() as client:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("wrong_input_count")
        assert info.value.status() == "400"
        assert "configuration expects 2 inputs, model provides 1" in info.value.message()
    with grpcclient.InferenceServerClient(broken_server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("bad_gpu_index")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "specifies invalid or unsupported gpu id 7" in info.value.message()


@pytest.mark.parametrize(
    ("model", "status", "text"),
    [
        (
            "int_output",
            "400",
            "configuration expects datatype TYPE_INT32 for output 'OUTPUT__0', "
            "model provides TYPE_FP32",
        ),
        (
            "missing_output",
            "400",
            "The output OUTPUT__2 in the model configuration refers to an output index which "
            "doesn't exist. This model has 2 outputs",
        ),
        (
            "dict_output",
            "500",
            "PyTorch execute failure: output must be of type Tensor, List[str] or Tuple "
            "containing one of these two types. It should not be a List / Dictionary of "
            "Tensors or a Scalar",
        ),
    ],
)
def test_config_disagreeing_with_outputs_fails_at_execution(
    broken_server: RunningServer, model: str, status: str, text: str
):
    """What Triton can only see once the model ran: its output types, count and form."""
    x = np.array([1.0, 2.0], np.float32)
    with broken_server.client() as client:
        assert client.is_model_ready(model)
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, _http_inputs(INPUT__0=x))
    assert info.value.status() == status
    assert info.value.message() == text
