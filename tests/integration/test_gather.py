"""Gathered requests (``gather_requests``): one stacked array per same-shaped group.

Batching is proven by what the model observes, never by timing: a gate holds the first
``execute`` (the model waits while the file its ``gate`` parameter names is missing), the
other requests queue behind it (the metrics frontend's pending count says when all of
them are waiting), and when the gate opens they form one batch. Each response says how
many requests the model's ``execute`` received (REQUESTS) and how many rows the request
it came from had (ROWS).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, free_port, start_server, write_model

#: An ordinary Triton model that loops over its requests: gathering needs no other code.
OBSERVER = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.executions = 0

    def execute(self, requests):
        self.executions += 1
        responses = []
        for request in requests:
            parameters = json.loads(request.parameters())
            gate, deadline = parameters.get("gate"), time.monotonic() + 30
            while gate and not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            if parameters.get("fail"):
                error = pb_utils.TritonError("asked to fail", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            rows = data.shape[0]
            if parameters.get("short"):  # one row too few: wrong for a gathered request
                data = data[:-1]
            count = data.shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", data * 2),
                pb_utils.Tensor("REQUESTS", np.full((count, 1), len(requests), np.int32)),
                pb_utils.Tensor("ROWS", np.full((count, 1), rows, np.int32)),
                pb_utils.Tensor("EXECUTION", np.full((count, 1), self.executions, np.int32)),
            ]))
        return responses
"""

#: BYTES in and out: object arrays are gathered and split too.
TEXT = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            gate, deadline = json.loads(request.parameters()).get("gate"), time.monotonic() + 30
            while gate and not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            upper = np.array([[item.upper() for item in row] for row in text], dtype=np.object_)
            count = np.full((text.shape[0], 1), len(requests), np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("UPPER", upper), pb_utils.Tensor("REQUESTS", count)
            ]))
        return responses
"""

GATHER = 'parameters { key: "gather_requests" value: { string_value: "%s" } }'


def observer_config(name: str, *, max_batch_size: int = 16, gather: str = "true") -> str:
    batching = "dynamic_batching { }" if max_batch_size > 0 else ""
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
        output [
          {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
          {{ name: "REQUESTS" data_type: TYPE_INT32 dims: [ 1 ] }},
          {{ name: "ROWS" data_type: TYPE_INT32 dims: [ 1 ] }},
          {{ name: "EXECUTION" data_type: TYPE_INT32 dims: [ 1 ] }}
        ]
        instance_group [ {{ count: 1, kind: KIND_CPU }} ]
        {batching}
        {GATHER % gather}
    """


TEXT_CONFIG = f"""
    name: "gathered_text"
    backend: "python"
    max_batch_size: 8
    input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 2 ] }} ]
    output [
      {{ name: "UPPER" data_type: TYPE_STRING dims: [ 2 ] }},
      {{ name: "REQUESTS" data_type: TYPE_INT32 dims: [ 1 ] }}
    ]
    dynamic_batching {{ }}
    {GATHER % "true"}
"""

DECOUPLED = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            sender = request.get_response_sender()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

#: Models served from the start, each used by one test (statistics stay per test).
SERVED = ("gathered", "gathered_grpc", "ragged", "short", "failing", "counted", "plain")


class GatherServer:
    """A running server with metrics on (its pending count shows who waits)."""

    def __init__(self, running: RunningServer, metrics_port: int) -> None:
        self.running = running
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def pending(self, model: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        prefix = f'nv_inference_pending_request_count{{model="{model}",version="1"}} '
        (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        return float(line.rsplit(" ", 1)[1])

    def stats(self, model: str) -> dict[str, Any]:
        with self.running.client() as client:
            return client.get_inference_statistics(model)["model_stats"][0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatherServer]:
    repository = tmp_path_factory.mktemp("gather_repo")
    for name in SERVED:
        write_model(
            repository,
            name,
            observer_config(name, gather="false" if name == "plain" else "true"),
            OBSERVER,
        )
    write_model(repository, "gathered_text", TEXT_CONFIG, TEXT)
    write_model(repository, "unbatched", observer_config("unbatched", max_batch_size=0), OBSERVER)
    write_model(repository, "misspelled", observer_config("misspelled", gather="maybe"), OBSERVER)
    decoupled = observer_config("decoupled") + "model_transaction_policy { decoupled: true }"
    write_model(repository, "decoupled", decoupled, DECOUPLED)
    metrics_port = free_port()
    running = start_server(
        repository,
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in (*SERVED, "gathered_text")),
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        log_path=tmp_path_factory.mktemp("gather_log") / "server.log",
    )
    with running.client() as client:
        deadline = time.monotonic() + 60
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.is_server_ready(), running.log()
    yield GatherServer(running, metrics_port)
    assert running.stop() == 0, running.log()


async def wait_for(probe: Callable[[], Any], expected: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    value = probe()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        value = probe()
    return value


async def behind_a_gate(
    server: GatherServer, model: str, gate: Path, calls: list[Callable[[], Awaitable[Any]]]
) -> list[Any]:
    """Hold the model's instance with a gated request, queue ``calls``, then open the gate.

    Returns the calls' results (or exceptions) in order; the gated request runs alone.
    """
    dispatched = server.stats(model)["inference_stats"]["queue"]["count"]
    async with httpaio.InferenceServerClient(server.running.url) as client:
        blocker = asyncio.ensure_future(
            client.infer(model, _http_inputs(model, 1), parameters={"gate": str(gate)})
        )
        count = lambda: server.stats(model)["inference_stats"]["queue"]["count"]  # noqa: E731
        assert await wait_for(count, dispatched + 1) == dispatched + 1
        queued = [asyncio.ensure_future(call()) for call in calls]
        assert await wait_for(lambda: server.pending(model), len(calls)) == len(calls)
        gate.touch()
        await blocker
        return await asyncio.gather(*queued, return_exceptions=True)


def _http_inputs(model: str, count: int) -> list[Any]:
    if model == "gathered_text":
        return text_inputs(httpclient, [[b"x", b"y"]] * count)
    return inputs(httpclient, rows(count))


def rows(count: int, width: int = 3, value: float = 1.0) -> np.ndarray:
    return np.full((count, width), value, np.float32)


def inputs(module: Any, data: np.ndarray) -> list[Any]:
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def text_inputs(module: Any, items: list[list[bytes]]) -> list[Any]:
    data = np.array(items, dtype=np.object_)
    tensor = module.InferInput("TEXT", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return [tensor]


def seen(result: Any) -> tuple[int, int, int]:
    """(requests the model's execute received, rows of the request it saw, execution)."""
    return tuple(int(result.as_numpy(n)[0, 0]) for n in ("REQUESTS", "ROWS", "EXECUTION"))  # type: ignore[return-value]


def http_call(server: GatherServer, model: str, data: np.ndarray, **kwargs: Any) -> Any:
    async def call() -> Any:
        async with httpaio.InferenceServerClient(server.running.url) as client:
            return await client.infer(model, inputs(httpclient, data), **kwargs)

    return call


def grpc_call(server: GatherServer, model: str, data: np.ndarray, **kwargs: Any) -> Any:
    async def call() -> Any:
        client = grpcaio.InferenceServerClient(server.running.grpc_url)
        try:
            return await client.infer(model, inputs(grpcclient, data), **kwargs)
        finally:
            await client.close()

    return call


# --- gathering ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_model_sees_one_stacked_request_and_each_client_gets_its_rows(
    server: GatherServer, tmp_path: Path, protocol: str
) -> None:
    model = "gathered" if protocol == "http" else "gathered_grpc"
    make = http_call if protocol == "http" else grpc_call
    sizes = [1, 2, 1, 3]
    calls = [make(server, model, rows(n, value=i)) for i, n in enumerate(sizes)]
    results = asyncio.run(behind_a_gate(server, model, tmp_path / "gate", calls))
    execution = seen(results[0])[2]
    for i, (result, n) in enumerate(zip(results, sizes, strict=True)):
        assert seen(result) == (1, sum(sizes), execution)  # one request of 7 rows
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows(n, value=2.0 * i))
        assert result.as_numpy("REQUESTS").shape == (n, 1)


def test_without_the_parameter_the_model_gets_the_list_of_requests(
    server: GatherServer, tmp_path: Path
) -> None:
    calls = [http_call(server, "plain", rows(n, value=n)) for n in (1, 2)]
    results = asyncio.run(behind_a_gate(server, "plain", tmp_path / "gate", calls))
    assert [seen(r)[:2] for r in results] == [(2, 1), (2, 2)]


def test_ragged_shapes_and_other_parameters_fall_back_to_groups(
    server: GatherServer, tmp_path: Path
) -> None:
    widths = [3, 5, 3, 5, 3]
    calls = [
        (http_call if i % 2 else grpc_call)(server, "ragged", rows(1, width=w, value=i))
        for i, w in enumerate(widths)
    ]
    calls.append(http_call(server, "ragged", rows(2), parameters={"tag": "alone"}))
    results = asyncio.run(behind_a_gate(server, "ragged", tmp_path / "gate", calls))
    # groups: width 3 (3 rows), width 5 (2 rows), and the one with its own parameters
    assert [seen(r)[:2] for r in results] == [(3, 3), (3, 2), (3, 3), (3, 2), (3, 3), (3, 2)]
    assert len({seen(r)[2] for r in results}) == 1
    for i, (result, width) in enumerate(zip(results, widths, strict=False)):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows(1, width, 2.0 * i))
    np.testing.assert_array_equal(results[-1].as_numpy("OUTPUT0"), rows(2, value=2.0))


def test_bytes_inputs_are_gathered_and_split(server: GatherServer, tmp_path: Path) -> None:
    words = [[[b"a", b"b"]], [[b"c", b"d"], [b"e", b"f"]]]

    def call(items: list[list[bytes]]) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            async with httpaio.InferenceServerClient(server.running.url) as client:
                return await client.infer("gathered_text", text_inputs(httpclient, items))

        return run

    results = asyncio.run(
        behind_a_gate(server, "gathered_text", tmp_path / "gate", [call(w) for w in words])
    )
    for result, items in zip(results, words, strict=True):
        assert result.as_numpy("UPPER").tolist() == [[x.upper() for x in row] for row in items]
        assert result.as_numpy("REQUESTS")[0, 0] == 1


# --- errors ------------------------------------------------------------------------------


def test_outputs_not_of_the_gathered_batch_fail_every_request(
    server: GatherServer, tmp_path: Path
) -> None:
    short = {"short": True}
    calls = [
        http_call(server, "short", rows(2), parameters=short),
        grpc_call(server, "short", rows(1), parameters=short),
    ]
    results = asyncio.run(behind_a_gate(server, "short", tmp_path / "gate", calls))
    text = (
        "model 'short' (gather_requests): output 'OUTPUT0' has shape [2, 3]: its first "
        "dimension must be the gathered batch of 3 rows (2 requests)"
    )
    assert [type(r) for r in results] == [InferenceServerException] * 2
    assert results[0].status() == "500" and results[0].message() == text
    assert results[1].status() == "StatusCode.INTERNAL" and results[1].message() == text
    with server.running.client() as client:  # alone, a request is not gathered: no check
        answer = client.infer("short", inputs(httpclient, rows(2)), parameters=short)
    assert answer.as_numpy("OUTPUT0").shape == (1, 3)


def test_the_models_error_fails_every_request_of_the_group(
    server: GatherServer, tmp_path: Path
) -> None:
    fail = {"fail": True}
    calls = [
        http_call(server, "failing", rows(1), parameters=fail),
        grpc_call(server, "failing", rows(2), parameters=fail),
        http_call(server, "failing", rows(1)),  # another group: answered
    ]
    results = asyncio.run(behind_a_gate(server, "failing", tmp_path / "gate", calls))
    assert results[0].status() == "400" and results[0].message() == "asked to fail"
    assert results[1].status() == "StatusCode.INVALID_ARGUMENT"
    assert results[1].message() == "asked to fail"
    assert seen(results[2])[:2] == (2, 1)


def test_statistics_count_the_clients_requests_and_one_execution(
    server: GatherServer, tmp_path: Path
) -> None:
    calls = [http_call(server, "counted", rows(n)) for n in (1, 2, 3)]
    asyncio.run(behind_a_gate(server, "counted", tmp_path / "gate", calls))
    stats = server.stats("counted")
    assert stats["inference_count"] == 1 + 6  # rows: the gated request and the three
    assert stats["execution_count"] == 2
    success = stats["inference_stats"]["success"]["count"]
    assert success == 4  # one per client request
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert batches == {1: 1, 6: 1}


# --- configuration -----------------------------------------------------------------------


def test_gathering_needs_a_batching_model(server: GatherServer) -> None:
    prefix = "load failed for model '{}': version 1 is at UNAVAILABLE state: Invalid argument: "
    cases = {
        "unbatched": "model 'unbatched': parameter 'gather_requests' needs a batching model "
        "(max_batch_size > 0): requests are gathered along the batch dimension",
        "misspelled": "model 'misspelled': parameter 'gather_requests' must be \"true\" or "
        '"false", not "maybe"',
    }
    with (
        server.running.client() as http,
        grpcclient.InferenceServerClient(server.running.grpc_url) as grpc,
    ):
        for model, reason in cases.items():
            with pytest.raises(InferenceServerException) as http_error:
                http.load_model(model)
            assert http_error.value.status() == "400"
            assert http_error.value.message().startswith(prefix.format(model) + reason)
            with pytest.raises(InferenceServerException) as grpc_error:
                grpc.load_model(model)
            assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert grpc_error.value.message().startswith(prefix.format(model) + reason)


def test_a_decoupled_model_loads_and_is_not_gathered(server: GatherServer) -> None:
    with server.running.client() as http:
        http.load_model("decoupled")
        assert http.is_model_ready("decoupled")
    log = server.running.log()
    assert "model 'decoupled' is decoupled: its requests are not gathered" in log
    answers: list[Any] = []
    with grpcclient.InferenceServerClient(server.running.grpc_url) as grpc:
        grpc.start_stream(lambda result, error: answers.append((result, error)))
        grpc.async_stream_infer("decoupled", inputs(grpcclient, rows(2)))
        grpc.stop_stream()  # waits for the stream to end
    ((result, error),) = answers
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows(2))
