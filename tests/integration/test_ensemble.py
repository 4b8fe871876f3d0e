"""Ensembles (``platform: "ensemble"``), driven by the real ``tritonclient`` over HTTP and gRPC.

Every model lives in this module's own repository: Python composing models, good
ensembles over them, and bad ensembles whose load must fail with Triton's reason while
the rest of the repository serves. Texts and statuses were taken from tritonserver 2.51
(see /work/notes/triton_ensemble_reference.md).
"""

from __future__ import annotations

import asyncio
import json
import queue
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

# --- the repository ----------------------------------------------------------------------

_VECTOR = "data_type: TYPE_FP32 dims: [ 4 ]"

#: Python models: name -> (max_batch_size, inputs, outputs, body of the per-request loop).
_ELEMENTWISE = {
    "add": ("A B", "SUM", "out = {'SUM': get('A') + get('B')}"),
    "mul": ("X Y", "PROD", "out = {'PROD': get('X') * get('Y')}"),
    "double": ("IN", "OUT", "out = {'OUT': 2 * get('IN')}"),
    "neg": ("IN", "OUT", "out = {'OUT': -get('IN')}"),
}

_ELEMENTWISE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            {body}
            tensors = [pb_utils.Tensor(k, v.astype(np.float32)) for k, v in out.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
"""

_FAIL_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        error = pb_utils.TritonError("step went wrong", pb_utils.TritonError.INVALID_ARG)
        return [pb_utils.InferenceResponse(error=error) for _ in requests]
"""

_RAISE_MODEL = """
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("raise always fails")
"""

_BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("broken on purpose")

    def execute(self, requests):
        return []
"""

#: Reports what its request carried: parameters, id, correlation id, requested outputs.
_INFO_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().shape[0]

            def text(value):
                return np.array([[str(value).encode()]] * rows, dtype=object)

            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("PARAMS", text(request.parameters())),
                pb_utils.Tensor("RID", text(request.request_id())),
                pb_utils.Tensor("CORR", text(request.correlation_id())),
                pb_utils.Tensor("REQOUT", text(",".join(sorted(request.requested_output_names())))),
            ]))
        return responses
"""

#: Decoupled: three responses (IN, IN+1, IN+2), then the FINAL flag alone.
_DECOUPLED_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender = request.get_response_sender()
            for i in range(3):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x + i)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

#: A rendezvous: each request leaves a marker in the folder named by the request parameter
#: ``rendezvous`` and waits (a bounded while) for ``expect`` markers. MET = 1 proves that
#: ``expect`` requests were inside models at the same time; no timing is asserted.
_MEET_MODEL = """
import json
import os
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.scale = float(parameters["scale"]["string_value"])
        self.expect = int(parameters["expect"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            folder = json.loads(request.parameters())["rendezvous"]
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, uuid.uuid4().hex), "w").close()
            deadline = time.monotonic() + 30
            while len(os.listdir(folder)) < self.expect and time.monotonic() < deadline:
                time.sleep(0.01)
            met = len(os.listdir(folder)) >= self.expect
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            rows = x.shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", (self.scale * x).astype(np.float32)),
                pb_utils.Tensor("MET", np.full((rows, 1), int(met), dtype=np.int32)),
            ]))
        return responses
"""

#: Reports how many requests its ``execute`` got (dynamic batching forms the batch).
_BATCH_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            count = np.full((x.shape[0], 1), len(requests), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", 3 * x), pb_utils.Tensor("BATCH", count)
            ]))
        return responses
"""

#: Runs until its request is cancelled (or a long while), noting both in a marker file
#: named by the request parameter ``marker``.
_WATCH_MODEL = """
import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        request = requests[0]
        marker = json.loads(request.parameters())["marker"]
        with open(marker, "a") as out:
            out.write("started\\n")
        deadline = time.monotonic() + 60
        while not request.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(marker, "a") as out:
            out.write("cancelled\\n" if request.is_cancelled() else "deadline\\n")
        x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)])]
"""


def _python_model(repo: Path, name: str, config: str, source: str) -> None:
    header = f'name: "{name}"\nbackend: "python"\n'
    write_model(repo, name, header + textwrap.dedent(config), textwrap.dedent(source))


def _tensors(kind: str, spec: str) -> str:
    items = []
    for entry in spec.split(";"):
        name, _, rest = entry.strip().partition(" ")
        items.append(f'{{ name: "{name}" {rest or _VECTOR} }}')
    return f"{kind} [ {', '.join(items)} ]\n"


def _ensemble(
    repo: Path,
    name: str,
    inputs: str,
    outputs: str,
    steps: list[tuple[str, dict[str, str], dict[str, str]]],
    *,
    max_batch_size: int = 8,
    extra: str = "",
) -> None:
    """``steps``: (model, {model input: ensemble tensor}, {model output: ensemble tensor})."""
    rendered = []
    for model, input_map, output_map in steps:
        maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in input_map.items())
        maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in output_map.items())
        rendered.append(f'{{ model_name: "{model}" model_version: -1{maps} }}')
    config = (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        + _tensors("input", inputs)
        + _tensors("output", outputs)
        + extra
        + "ensemble_scheduling { step [ "
        + ", ".join(rendered)
        + " ] }\n"
    )
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)


def _composing_models(repo: Path) -> None:
    for name, (inputs, outputs, body) in _ELEMENTWISE.items():
        config = "max_batch_size: 8\n" + _tensors("input", ";".join(inputs.split()))
        config += _tensors("output", outputs)
        _python_model(repo, name, config, _ELEMENTWISE_MODEL.replace("{body}", body))
    nb_config = "max_batch_size: 0\n" + _tensors("input", "IN") + _tensors("output", "OUT")
    _python_model(
        repo,
        "nb_double",
        nb_config,
        _ELEMENTWISE_MODEL.replace("{body}", "out = {'OUT': 2 * get('IN')}"),
    )
    vector = "max_batch_size: 8\n" + _tensors("input", "IN") + _tensors("output", "OUT")
    _python_model(repo, "fail", vector, _FAIL_MODEL)
    _python_model(repo, "raise", vector, _RAISE_MODEL)
    _python_model(repo, "broken", vector, _BROKEN_MODEL)
    text = "data_type: TYPE_STRING dims: [ 1 ]"
    info_outputs = ";".join(f"{n} {text}" for n in ("PARAMS", "RID", "CORR", "REQOUT"))
    info = "max_batch_size: 8\n" + _tensors("input", "IN") + _tensors("output", info_outputs)
    _python_model(repo, "info", info, _INFO_MODEL)
    decoupled = nb_config + "model_transaction_policy { decoupled: true }\n"
    _python_model(repo, "dec", decoupled, _DECOUPLED_MODEL)
    meet_outputs = "OUT;MET data_type: TYPE_INT32 dims: [ 1 ]"
    for name, scale, count in (("left", 2, 1), ("right", -1, 1), ("pair", 1, 2)):
        config = "max_batch_size: 8\n" + _tensors("input", "IN") + _tensors("output", meet_outputs)
        config += f'parameters {{ key: "scale" value: {{ string_value: "{scale}" }} }}\n'
        config += 'parameters { key: "expect" value: { string_value: "2" } }\n'
        config += f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]\n"
        _python_model(repo, name, config, _MEET_MODEL)
    batched = "max_batch_size: 8\n" + _tensors("input", "IN")
    batched += _tensors("output", "OUT;BATCH data_type: TYPE_INT32 dims: [ 1 ]")
    # a batch of two forms at once; one request alone would wait for the (long) delay
    batched += (
        "dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 30000000 }\n"
    )
    _python_model(repo, "triple", batched, _BATCH_MODEL)
    _python_model(repo, "watch", vector, _WATCH_MODEL)


def _good_ensembles(repo: Path) -> None:
    ab = {"A": "A", "B": "B"}
    _ensemble(
        repo, "ens_chain", "A;B", "OUT",
        [("add", ab, {"SUM": "s"}), ("mul", {"X": "s", "Y": "B"}, {"PROD": "OUT"})],
    )  # fmt: skip
    _ensemble(
        repo, "ens_chain3", "A;B", "OUT",
        [
            ("neg", {"IN": "d"}, {"OUT": "OUT"}),  # listed first: order comes from the data
            ("add", ab, {"SUM": "s"}),
            ("double", {"IN": "s"}, {"OUT": "d"}),
        ],
    )  # fmt: skip
    met = "data_type: TYPE_INT32 dims: [ 1 ]"
    _ensemble(
        repo, "ens_diamond", "X", f"SUM;L;LEFT_MET {met};RIGHT_MET {met}",
        [
            ("left", {"IN": "X"}, {"OUT": "L", "MET": "LEFT_MET"}),
            ("right", {"IN": "X"}, {"OUT": "R", "MET": "RIGHT_MET"}),
            ("add", {"A": "L", "B": "R"}, {"SUM": "SUM"}),
        ],
    )  # fmt: skip
    _ensemble(
        repo,
        "ens_pair",
        "X",
        f"OUT;MET {met}",
        [("pair", {"IN": "X"}, {"OUT": "OUT", "MET": "MET"})],
    )
    _ensemble(
        repo, "ens_nested", "P;Q", "R",
        [("ens_chain", {"A": "P", "B": "Q"}, {"OUT": "t"}), ("neg", {"IN": "t"}, {"OUT": "R"})],
    )  # fmt: skip
    _ensemble(
        repo,
        "ens_fail",
        "X",
        "OUT",
        [("double", {"IN": "X"}, {"OUT": "d"}), ("fail", {"IN": "d"}, {"OUT": "OUT"})],
    )
    _ensemble(repo, "ens_raise", "X", "OUT", [("raise", {"IN": "X"}, {"OUT": "OUT"})])
    text = "data_type: TYPE_STRING dims: [ 1 ]"
    info_map = {n: n for n in ("PARAMS", "RID", "CORR", "REQOUT")}
    _ensemble(
        repo, "ens_info", "X", ";".join(f"{n} {text}" for n in info_map) + ";D",
        [("info", {"IN": "X"}, info_map), ("double", {"IN": "X"}, {"OUT": "D"})],
    )  # fmt: skip
    _ensemble(
        repo, "ens_dec", "X", "OUT",
        [("dec", {"IN": "X"}, {"OUT": "d"}), ("nb_double", {"IN": "d"}, {"OUT": "OUT"})],
        max_batch_size=0,
    )  # fmt: skip
    _ensemble(
        repo, "ens_nobatch", "X", "OUT",
        [("double", {"IN": "X"}, {"OUT": "d"}), ("nb_double", {"IN": "d"}, {"OUT": "OUT"})],
        max_batch_size=0,
    )  # fmt: skip
    batch = "BATCH data_type: TYPE_INT32 dims: [ 1 ]"
    _ensemble(
        repo,
        "ens_triple",
        "X",
        f"OUT;{batch}",
        [("triple", {"IN": "X"}, {"OUT": "OUT", "BATCH": "BATCH"})],
    )
    _ensemble(
        repo,
        "ens_watch",
        "X",
        "OUT",
        [("double", {"IN": "X"}, {"OUT": "d"}), ("watch", {"IN": "d"}, {"OUT": "OUT"})],
    )
    variable = "data_type: TYPE_FP32 dims: [ -1 ]"
    _ensemble(
        repo,
        "ens_var",
        f"X {variable}",
        f"OUT {variable}",
        [("double", {"IN": "X"}, {"OUT": "OUT"})],
    )


#: Bad ensembles and the reason each is refused (Triton 2.51's text).
BAD = {
    "ens_missing": "ensemble ens_missing contains models that are not available or ambiguous: "
    "nonexistent",
    "ens_cycle_a": "circular dependency between ensembles: ens_cycle_a -> ... -> ens_cycle_b -> "
    "ens_cycle_a",
    "ens_cycle_b": "circular dependency between ensembles: ens_cycle_b -> ... -> ens_cycle_a -> "
    "ens_cycle_b",
    "ens_unused_input": "ensemble input 'Z' for ensemble ens_unused_input' is not used",
    "ens_unproduced": "output 'OUT' for ensemble 'ens_unproduced' is not written: at least one of "
    "its depending tensors, 'ghost', is not connected",
    "ens_mismatch_type": "in ensemble ens_mismatch_type, ensemble tensor OUT: inconsistent data "
    "type: TYPE_INT32 is inferred from model ens_mismatch_type while TYPE_FP32 is inferred from "
    "model double",
    "ens_mismatch_shape": "in ensemble ens_mismatch_shape, ensemble tensor OUT: inconsistent "
    "shape: [-1,5] is inferred from model ens_mismatch_shape while [-1,4] is inferred from model "
    "double",
    "ens_bad_input_name": "in ensemble ens_bad_input_name, ensemble tensor X is mapping to "
    "non-existing input NOPE in model double",
    "ens_instance_group": "instance group should not be specified for ensemble "
    "'ens_instance_group'",
    "ens_over_cycle": "ensemble 'ens_over_cycle' depends on 'ens_cycle_a' which is not valid. "
    "Model 'ens_cycle_a' failed with error: circular dependency between ensembles: ens_cycle_a "
    "-> ... -> ens_cycle_b -> ens_cycle_a",
}


def _bad_ensembles(repo: Path) -> None:
    double = [("double", {"IN": "X"}, {"OUT": "OUT"})]
    _ensemble(repo, "ens_missing", "X", "OUT", [("nonexistent", {"IN": "X"}, {"OUT": "OUT"})])
    _ensemble(repo, "ens_cycle_a", "X", "OUT", [("ens_cycle_b", {"X": "X"}, {"OUT": "OUT"})])
    _ensemble(repo, "ens_cycle_b", "X", "OUT", [("ens_cycle_a", {"X": "X"}, {"OUT": "OUT"})])
    _ensemble(repo, "ens_over_cycle", "X", "OUT", [("ens_cycle_a", {"X": "X"}, {"OUT": "OUT"})])
    _ensemble(repo, "ens_unused_input", "X;Z", "OUT", double)
    _ensemble(
        repo, "ens_unproduced", "X", "OUT",
        [("double", {"IN": "X"}, {"OUT": "d"}), ("add", {"A": "d", "B": "ghost"}, {"SUM": "OUT"})],
    )  # fmt: skip
    _ensemble(repo, "ens_mismatch_type", "X", "OUT data_type: TYPE_INT32 dims: [ 4 ]", double)
    _ensemble(repo, "ens_mismatch_shape", "X", "OUT data_type: TYPE_FP32 dims: [ 5 ]", double)
    _ensemble(repo, "ens_bad_input_name", "X", "OUT", [("double", {"NOPE": "X"}, {"OUT": "OUT"})])
    _ensemble(
        repo, "ens_instance_group", "X", "OUT", double, extra="instance_group [ { count: 2 } ]\n"
    )
    _ensemble(repo, "ens_broken_dep", "X", "OUT", [("broken", {"IN": "X"}, {"OUT": "OUT"})])


@pytest.fixture(scope="module")
def ens_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ensembles")
    _composing_models(repo)
    _good_ensembles(repo)
    _bad_ensembles(repo)
    return repo


@pytest.fixture(scope="module")
def ens_server(ens_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Everything loaded (``--model-control-mode=none``); the bad ensembles fail alone."""
    log_path = tmp_path_factory.mktemp("log") / "ensembles.log"
    running = start_server(ens_repo, "--exit-on-error=false", log_path=log_path)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def http(ens_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with ens_server.client() as client:
        yield client


@pytest.fixture
def grpc(ens_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(ens_server.grpc_url)
    yield client
    client.close()


def _inputs(module: Any, **arrays: np.ndarray) -> list[Any]:
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 2, dtype=np.float32)


def _client(protocol: str, server: RunningServer) -> tuple[Any, Any]:
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    return client.get_inference_statistics(model)["model_stats"][0]


def _wait_for_stats(
    client: httpclient.InferenceServerClient, model: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Statistics are recorded as the execution ends, a moment after the response left."""
    deadline = time.monotonic() + 10
    stats = _stats(client, model)
    while not done(stats) and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = _stats(client, model)
    return stats


# --- pipelines ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_two_step_chain(ens_server: RunningServer, protocol: str) -> None:
    module, client = _client(protocol, ens_server)
    with client:
        result = client.infer("ens_chain", _inputs(module, A=A, B=B))
    np.testing.assert_array_equal(result.as_numpy("OUT"), (A + B) * B)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_three_step_chain_runs_in_data_order(ens_server: RunningServer, protocol: str) -> None:
    module, client = _client(protocol, ens_server)
    with client:
        result = client.infer("ens_chain3", _inputs(module, A=A, B=B))
    np.testing.assert_array_equal(result.as_numpy("OUT"), -2 * (A + B))


def test_aio_clients(ens_server: RunningServer) -> None:
    async def both() -> tuple[np.ndarray, np.ndarray]:
        async with httpaio.InferenceServerClient(ens_server.url) as h:
            first = await h.infer("ens_chain", _inputs(httpaio, A=A, B=B))
        async with grpcaio.InferenceServerClient(ens_server.grpc_url) as g:
            second = await g.infer("ens_chain", _inputs(grpcaio, A=A, B=B))
        return first.as_numpy("OUT"), second.as_numpy("OUT")

    for out in asyncio.run(both()):
        np.testing.assert_array_equal(out, (A + B) * B)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_diamond_runs_independent_steps_at_once(
    ens_server: RunningServer, protocol: str, tmp_path: Path
) -> None:
    """left and right each wait for the other inside their model: only concurrent steps meet."""
    module, client = _client(protocol, ens_server)
    parameters = {"rendezvous": str(tmp_path / "diamond")}
    with client:
        result = client.infer("ens_diamond", _inputs(module, X=A), parameters=parameters)
    assert result.as_numpy("LEFT_MET").tolist() == [[1], [1]]
    assert result.as_numpy("RIGHT_MET").tolist() == [[1], [1]]
    np.testing.assert_array_equal(result.as_numpy("L"), 2 * A)  # an intermediate tensor
    np.testing.assert_array_equal(result.as_numpy("SUM"), 2 * A - A)  # the join


def test_ensemble_requests_do_not_wait_for_each_other(
    ens_server: RunningServer, tmp_path: Path
) -> None:
    """Two requests must be inside ``pair`` (two instances) together for either to finish well."""
    parameters = {"rendezvous": str(tmp_path / "pair")}
    results: list[Any] = []

    def call() -> None:
        with ens_server.client() as client:
            results.append(
                client.infer("ens_pair", _inputs(httpclient, X=A), parameters=parameters)
            )

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.as_numpy("MET").tolist() for r in results] == [[[1], [1]], [[1], [1]]]


def test_nested_ensemble(http: httpclient.InferenceServerClient) -> None:
    result = http.infer("ens_nested", _inputs(httpclient, P=A, Q=B))
    np.testing.assert_array_equal(result.as_numpy("R"), -(A + B) * B)


def test_batching_and_non_batching_steps(http: httpclient.InferenceServerClient) -> None:
    """A batch dimension of 1 is added for ``double`` and dropped for ``nb_double`` (Triton)."""
    x = np.arange(4, dtype=np.float32)
    result = http.infer("ens_nobatch", _inputs(httpclient, X=x))
    assert result.get_output("OUT")["shape"] == [4]
    np.testing.assert_array_equal(result.as_numpy("OUT"), 4 * x)


def test_requested_outputs_run_only_the_steps_they_need(
    http: httpclient.InferenceServerClient,
) -> None:
    before = _stats(http, "info")["execution_count"], _stats(http, "double")["execution_count"]
    result = http.infer(
        "ens_info", _inputs(httpclient, X=A), outputs=[httpclient.InferRequestedOutput("D")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["D"]
    np.testing.assert_array_equal(result.as_numpy("D"), 2 * A)
    double = _wait_for_stats(http, "double", lambda s: s["execution_count"] > before[1])
    assert double["execution_count"] == before[1] + 1
    assert _stats(http, "info")["execution_count"] == before[0]


def test_steps_batch_with_other_traffic(ens_server: RunningServer) -> None:
    """A step is a request of ``triple``'s dynamic batcher: it joins a direct request."""
    x = np.ones((1, 4), dtype=np.float32)
    calls = [("ens_triple", "X"), ("triple", "IN")]
    results: dict[str, Any] = {}

    def call(model: str, name: str) -> None:
        with ens_server.client() as client:
            results[model] = client.infer(model, _inputs(httpclient, **{name: x}))

    threads = [threading.Thread(target=call, args=pair) for pair in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for model, _ in calls:
        assert results[model].as_numpy("BATCH").tolist() == [[2]], model
        np.testing.assert_array_equal(results[model].as_numpy("OUT"), 3 * x)


def test_cancelled_ensemble_request_cancels_its_running_step(
    ens_server: RunningServer, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    marker.touch()

    async def main() -> None:
        async with grpcaio.InferenceServerClient(ens_server.grpc_url) as client:
            call = client.infer(
                "ens_watch", _inputs(grpcaio, X=A), parameters={"marker": str(marker)}
            )
            task = asyncio.ensure_future(call)
            while "started" not in marker.read_text() and not task.done():
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    deadline = time.monotonic() + 30
    while len(marker.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text().split() == ["started", "cancelled"]


# --- what a request carries --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_settings_reach_the_steps(ens_server: RunningServer, protocol: str) -> None:
    module, client = _client(protocol, ens_server)
    with client:
        result = client.infer(
            "ens_info",
            _inputs(module, X=A),
            request_id="req-7",
            parameters={"custom": "v", "n": 3},
            sequence_id=42,
            sequence_start=True,
            outputs=[module.InferRequestedOutput(n) for n in ("PARAMS", "RID", "CORR", "REQOUT")],
        )
    assert json.loads(result.as_numpy("PARAMS")[0, 0]) == {"custom": "v", "n": 3}
    assert result.as_numpy("RID")[0, 0] == b"req-7"
    assert result.as_numpy("CORR")[0, 0] == b"42"
    # a step asks for every output its output_map names, not the client's subset
    assert result.as_numpy("REQOUT")[0, 0] == b"CORR,PARAMS,REQOUT,RID"
    response = result.get_response()
    if protocol == "http":
        assert response["id"] == "req-7"
        assert response["model_name"] == "ens_info"
        assert response["parameters"] == {
            "sequence_id": 42,
            "sequence_start": True,
            "sequence_end": False,
        }
    else:
        assert response.id == "req-7"
        assert response.parameters["sequence_id"].int64_param == 42
        assert response.parameters["sequence_start"].bool_param is True


def test_string_sequence_id_and_defaults(http: httpclient.InferenceServerClient) -> None:
    result = http.infer("ens_info", _inputs(httpclient, X=A), sequence_id="abc", sequence_end=True)
    assert result.as_numpy("CORR")[0, 0] == b"abc"
    assert result.get_response()["parameters"] == {
        "sequence_id": "abc",
        "sequence_start": False,
        "sequence_end": True,
    }
    plain = http.infer("ens_chain", _inputs(httpclient, A=A, B=B)).get_response()
    assert plain["parameters"] == {"sequence_id": 0, "sequence_start": False, "sequence_end": False}


def test_priority_and_timeout_pass_through(http: httpclient.InferenceServerClient) -> None:
    result = http.infer("ens_chain", _inputs(httpclient, A=A, B=B), priority=0, timeout=10**7)
    np.testing.assert_array_equal(result.as_numpy("OUT"), (A + B) * B)


# --- decoupled composing models ----------------------------------------------------------


def test_decoupled_step_streams_through_the_ensemble(ens_server: RunningServer) -> None:
    """Each response of ``dec`` runs ``nb_double`` and leaves as one ensemble response."""
    x = np.arange(4, dtype=np.float32)
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(ens_server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("ens_dec", _inputs(grpcclient, X=x), request_id="s1")
        got = [answers.get(timeout=30) for _ in range(3)]
        client.stop_stream()
    assert [error for _, error in got] == [None, None, None]
    outputs = sorted(result.as_numpy("OUT").tolist() for result, _ in got)
    assert outputs == [(2 * (x + i)).tolist() for i in range(3)]
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in got]
    assert finals.count(True) <= 1


def test_decoupled_ensemble_refuses_unary_calls(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    x = np.arange(4, dtype=np.float32)
    assert http.get_model_config("ens_dec")["model_transaction_policy"] == {"decoupled": True}
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_dec", _inputs(httpclient, X=x))
    assert info.value.status() == "501"
    assert info.value.message() == (
        "HTTP end point doesn't support models with decoupled transaction policy"
    )
    with pytest.raises(InferenceServerException) as info:
        grpc.infer("ens_dec", _inputs(grpcclient, X=x))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert info.value.message() == (
        "ModelInfer RPC doesn't support models with decoupled transaction policy"
    )


# --- statistics ----------------------------------------------------------------------------


def test_statistics_per_composing_model(http: httpclient.InferenceServerClient) -> None:
    names = ("ens_chain", "add", "mul")
    before = {name: _stats(http, name) for name in names}
    http.infer("ens_chain", _inputs(httpclient, A=A, B=B))

    def grew(name: str) -> Callable[[dict[str, Any]], bool]:
        return lambda s: s["execution_count"] > before[name]["execution_count"]

    after = {name: _wait_for_stats(http, name, grew(name)) for name in names}
    for name in names:
        old, new = before[name], after[name]
        assert new["execution_count"] == old["execution_count"] + 1, name
        assert new["inference_count"] == old["inference_count"] + 2, name  # batch of 2
        for field in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            count = new["inference_stats"][field]["count"]
            assert count == old["inference_stats"][field]["count"] + 1, (name, field)
        assert new["inference_stats"]["fail"] == old["inference_stats"]["fail"]
        sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in new["batch_stats"]}
        assert 2 in sizes
    assert after["ens_chain"]["last_inference"] > 0


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "status"), [("http", "400"), ("grpc", "StatusCode.INVALID_ARGUMENT")]
)
def test_step_error_fails_the_request(
    ens_server: RunningServer, protocol: str, status: str
) -> None:
    module, client = _client(protocol, ens_server)
    with client, pytest.raises(InferenceServerException) as info:
        client.infer("ens_fail", _inputs(module, X=A))
    assert info.value.status() == status
    assert info.value.message() == "in ensemble 'ens_fail', step went wrong"


@pytest.mark.parametrize(("protocol", "status"), [("http", "500"), ("grpc", "StatusCode.INTERNAL")])
def test_step_that_raises_fails_the_request(
    ens_server: RunningServer, protocol: str, status: str
) -> None:
    module, client = _client(protocol, ens_server)
    with client, pytest.raises(InferenceServerException) as info:
        client.infer("ens_raise", _inputs(module, X=A))
    assert info.value.status() == status
    assert info.value.message().startswith("in ensemble 'ens_raise', ")
    assert "raise always fails" in info.value.message()


def test_failed_request_counts_as_failed_and_others_still_serve(
    http: httpclient.InferenceServerClient,
) -> None:
    before = _stats(http, "ens_fail")
    with pytest.raises(InferenceServerException):
        http.infer("ens_fail", _inputs(httpclient, X=A))
    after = _stats(http, "ens_fail")
    assert (
        after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    )
    assert after["inference_stats"]["success"] == before["inference_stats"]["success"]
    assert after["execution_count"] == before["execution_count"]
    assert http.is_model_ready("ens_fail")
    np.testing.assert_array_equal(
        http.infer("ens_chain", _inputs(httpclient, A=A, B=B)).as_numpy("OUT"), (A + B) * B
    )


def test_step_request_validation_error(http: httpclient.InferenceServerClient) -> None:
    """The ensemble takes any length; the step's model wants 4: the step's check fails."""
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_var", _inputs(httpclient, X=np.ones((1, 5), np.float32)), request_id="r1")
    assert info.value.status() == "400"
    assert info.value.message().startswith(
        "in ensemble 'ens_var', [request id: r1] unexpected shape for input 'IN' for model "
        "'double'. Expected [-1,4], got [1,5]."
    )


def test_ensemble_request_is_checked_against_the_ensemble(
    http: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_chain", _inputs(httpclient, A=A), request_id="r1")
    assert info.value.status() == "400"
    assert info.value.message() == (
        "[request id: r1] expected 2 inputs but got 1 inputs for model 'ens_chain'. Got input(s) "
        "['A'], but missing required input(s) ['B']. Please provide all required input(s)."
    )
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_chain", _inputs(httpclient, A=A, Z=B))
    assert info.value.message() == "unexpected inference input 'Z' for model 'ens_chain'"


# --- configuration, metadata, loading ----------------------------------------------------


def test_config_and_metadata_as_triton_reports_them(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    config = http.get_model_config("ens_chain")
    assert config["platform"] == "ensemble"
    assert config["backend"] == ""
    assert config["instance_group"] == []
    assert "optimization" not in config
    assert config["model_transaction_policy"] == {"decoupled": False}
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["add", "mul"]
    assert steps[1]["input_map"] == {"X": "s", "Y": "B"}
    metadata = http.get_model_metadata("ens_chain")
    assert metadata["platform"] == "ensemble"
    assert metadata["inputs"][0] == {"name": "A", "datatype": "FP32", "shape": [-1, 4]}
    assert grpc.get_model_config("ens_chain").config.platform == "ensemble"


def test_bad_ensembles_fail_with_their_reason_and_the_rest_serves(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    index = {row["name"]: row for row in http.get_model_repository_index()}
    for name, reason in BAD.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        assert index[name]["reason"] == reason, name
        assert not http.is_model_ready(name)
    broken = index["ens_broken_dep"]["reason"]
    assert broken.startswith(
        "ensemble 'ens_broken_dep' depends on 'broken' which has no loaded version. Model "
        "'broken' loading failed with error: version 1 is at UNAVAILABLE state: "
    )
    assert "broken on purpose" in broken
    grpc_index = {m.name: m for m in grpc.get_model_repository_index().models}
    assert grpc_index["ens_missing"].reason == BAD["ens_missing"]
    for name in ("ens_chain", "ens_nested", "ens_diamond", "add", "double"):
        assert index[name]["state"] == "READY", name
    assert not http.is_server_ready()  # strict readiness: some models failed
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_missing", _inputs(httpclient, X=A))
    assert info.value.status() == "404"


# --- explicit model control --------------------------------------------------------------


@pytest.fixture(scope="module")
def explicit(ens_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("log") / "explicit.log"
    running = start_server(
        ens_repo, "--model-control-mode=explicit", "--load-model=ens_nested", log_path=log_path
    )
    yield running
    assert running.stop() == 0, running.log()


def _ready(client: httpclient.InferenceServerClient) -> set[str]:
    rows = client.get_model_repository_index()
    return {row["name"] for row in rows if row.get("state") == "READY"}


def test_explicit_start_loads_composing_models(explicit: RunningServer) -> None:
    with explicit.client() as client:
        assert {"ens_nested", "ens_chain", "add", "mul", "neg"} <= _ready(client)
        assert "double" not in _ready(client)
        result = client.infer("ens_nested", _inputs(httpclient, P=A, Q=B))
    np.testing.assert_array_equal(result.as_numpy("R"), -(A + B) * B)


def test_unloading_a_composing_model_unloads_its_ensembles(explicit: RunningServer) -> None:
    with explicit.client() as client:
        client.unload_model("ens_nested")  # its composing models stay
        assert {"ens_chain", "add", "mul", "neg"} <= _ready(client)
        client.load_model("ens_nested")
        client.unload_model("add")  # ens_chain and ens_nested use it
        ready = _ready(client)
        assert not {"add", "ens_chain", "ens_nested"} & ready
        assert {"mul", "neg"} <= ready
        client.load_model("ens_nested")  # brings add and ens_chain back
        assert {"ens_nested", "ens_chain", "add"} <= _ready(client)
        result = client.infer("ens_nested", _inputs(httpclient, P=A, Q=B))
    np.testing.assert_array_equal(result.as_numpy("R"), -(A + B) * B)


def test_reloading_a_composing_model_reloads_its_ensembles(explicit: RunningServer) -> None:
    with explicit.client() as client, grpcclient.InferenceServerClient(explicit.grpc_url) as g:
        client.load_model("ens_chain")
        g.load_model("add", config=json.dumps({"backend": "python", "max_batch_size": 4}))
        # the ensemble allows batches of 8, add now only 4: Triton refuses the ensemble
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert index["ens_chain"]["state"] == "UNAVAILABLE"
        assert index["ens_chain"]["reason"] == (
            "ensemble ens_chain allows maximum batch size 8, but it contains model add which "
            "only allows maximum batch size to be 4"
        )
        assert not client.is_model_ready("ens_nested")  # it uses ens_chain
        client.load_model("add")  # back to the repository's configuration
        client.load_model("ens_nested")  # and ens_chain with it
        assert {"ens_nested", "ens_chain", "add"} <= _ready(client)


@pytest.mark.parametrize(
    ("model", "status", "message"),
    [
        ("ens_missing", "400", f"load failed for model 'ens_missing': {BAD['ens_missing']}\n"),
        ("ens_cycle_a", "400", f"load failed for model 'ens_cycle_a': {BAD['ens_cycle_a']}\n"),
        (
            "ens_mismatch_type",
            "400",
            f"load failed for model 'ens_mismatch_type': {BAD['ens_mismatch_type']}\n",
        ),
        # Triton refuses a configuration that is wrong on its own while polling
        (
            "ens_unused_input",
            "500",
            "failed to load 'ens_unused_input', failed to poll from model repository",
        ),
    ],
)
def test_explicit_load_errors(
    explicit: RunningServer, model: str, status: str, message: str
) -> None:
    with explicit.client() as client, pytest.raises(InferenceServerException) as info:
        client.load_model(model)
    assert info.value.status() == status
    assert info.value.message() == message
    codes = {"400": "StatusCode.INVALID_ARGUMENT", "500": "StatusCode.INTERNAL"}
    with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.load_model(model)
        assert info.value.status() == codes[status]
        assert info.value.message() == message
        assert client.is_model_ready("ens_nested")  # the others keep serving


def test_explicit_load_of_an_ensemble_whose_step_cannot_load(explicit: RunningServer) -> None:
    with explicit.client() as client, pytest.raises(InferenceServerException) as info:
        client.load_model("ens_broken_dep")
    assert info.value.status() == "400"
    assert info.value.message().startswith(
        "load failed for model 'ens_broken_dep': ensemble 'ens_broken_dep' depends on 'broken' "
        "which has no loaded version."
    )
