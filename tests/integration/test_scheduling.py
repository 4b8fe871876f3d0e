"""The dynamic batcher and its queue policies, driven by real clients over HTTP and gRPC.

Batching is proven by what the model observes: each response says how many requests
the model's ``execute`` received with it (REQUESTS) and which execution it was
(EXECUTION, counted by the instance), never by timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

OBSERVER = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Echoes INPUT0 and reports the batch it ran in; sleeps 'delay_ms' when asked.\"\"\"

    def initialize(self, args):
        self.executions = 0

    def execute(self, requests):
        self.executions += 1
        delay = max(json.loads(r.parameters()).get("delay_ms", 0) for r in requests)
        time.sleep(delay / 1000)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            rows = data.shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", data),
                pb_utils.Tensor("REQUESTS", np.full((rows, 1), len(requests), np.int32)),
                pb_utils.Tensor("EXECUTION", np.full((rows, 1), self.executions, np.int32)),
            ]))
        return responses
"""


def observer_config(name: str, max_batch_size: int, batching: str, ragged: bool = False) -> str:
    ragged_flag = "allow_ragged_batch: true" if ragged else ""
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] {ragged_flag} }} ]
        output [
          {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
          {{ name: "REQUESTS" data_type: TYPE_INT32 dims: [ 1 ] }},
          {{ name: "EXECUTION" data_type: TYPE_INT32 dims: [ 1 ] }}
        ]
        instance_group [ {{ count: 1, kind: KIND_CPU }} ]
        {batching}
    """


CONCURRENCY_PROBE = """
import fcntl
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Reports how many instances were executing at once (counted in a locked file).\"\"\"

    def initialize(self, args):
        self.path = os.path.join(args["model_repository"], "running")

    def _change(self, delta):
        with open(self.path, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            running, peak = json.loads(file.read() or "[0, 0]")
            running += delta
            peak = max(peak, running)
            file.seek(0)
            file.truncate()
            file.write(json.dumps([running, peak]))
            return peak

    def execute(self, requests):
        self._change(1)
        time.sleep(0.5)
        peak = self._change(-1)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", data),
                pb_utils.Tensor("REQUESTS", np.full((1, 1), len(requests), np.int32)),
                pb_utils.Tensor("EXECUTION", np.full((1, 1), peak, np.int32)),
            ]))
        return responses
"""

MODELS = {
    # Waits up to 10 s for a batch of the preferred size 4.
    "preferred": observer_config(
        "preferred",
        8,
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 10000000 }",
    ),
    # A full batch (4 rows) goes at once, whatever the delay.
    "full": observer_config(
        "full", 4, "dynamic_batching { max_queue_delay_microseconds: 10000000 }"
    ),
    # No delay: what queued while the instance was busy becomes the next batch.
    "greedy": observer_config("greedy", 8, "dynamic_batching { }"),
    "ragged": observer_config("ragged", 8, "dynamic_batching { }", ragged=True),
    "unbatched": observer_config("unbatched", 8, ""),
    "bounded": observer_config(
        "bounded", 8, "dynamic_batching { default_queue_policy { max_queue_size: 2 } }"
    ),
    "expiring": observer_config(
        "expiring",
        8,
        "dynamic_batching { default_queue_policy { timeout_action: REJECT "
        "default_timeout_microseconds: 10000000 allow_timeout_override: true } }",
    ),
    "delaying": observer_config(
        "delaying",
        1,
        "dynamic_batching { default_queue_policy { timeout_action: DELAY "
        "default_timeout_microseconds: 100000 allow_timeout_override: true } }",
    ),
    "prioritized": observer_config(
        "prioritized", 1, "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    ),
}


@pytest.fixture(scope="module")
def sched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("sched_repo")
    for name, config in MODELS.items():
        write_model(repository, name, config, OBSERVER)
    pair = observer_config("pair", 1, "dynamic_batching { }").replace("count: 1", "count: 2")
    write_model(repository, "pair", pair, CONCURRENCY_PROBE)
    log_path = tmp_path_factory.mktemp("sched_log") / "server.log"
    running = start_server(repository, log_path=log_path)
    client = running.client()
    deadline = time.monotonic() + 60
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.is_server_ready(), running.log()
    yield running
    assert running.stop() == 0, running.log()


def http_inputs(data: np.ndarray) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def grpc_inputs(data: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def observed(result: object) -> tuple[int, int]:
    """(requests in the batch, execution number) as the model reported them."""
    requests = result.as_numpy("REQUESTS")  # type: ignore[attr-defined]
    execution = result.as_numpy("EXECUTION")  # type: ignore[attr-defined]
    return int(requests[0, 0]), int(execution[0, 0])


def rows(count: int, width: int = 3, value: float = 1.0) -> np.ndarray:
    return np.full((count, width), value, np.float32)


def run_in_background(target: object, *args: object) -> tuple[threading.Thread, list[object]]:
    """Run ``target(*args)`` on a thread; its result (or exception) lands in the list."""
    box: list[object] = []

    def work() -> None:
        try:
            box.append(target(*args))  # type: ignore[operator]
        except Exception as exc:  # handed to the test to assert on
            box.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, box


def start_blocker(
    server: RunningServer, model: str, delay_ms: int
) -> tuple[threading.Thread, list[object]]:
    """Occupy the model's only instance, and return once it is executing."""
    with server.client() as client:
        before = client.get_inference_statistics(model)["model_stats"][0]
    dispatched = before["inference_stats"]["queue"]["count"]

    def block() -> object:
        with server.client() as client:
            return client.infer(model, http_inputs(rows(1)), parameters={"delay_ms": delay_ms})

    thread, box = run_in_background(block)
    deadline = time.monotonic() + 10
    with server.client() as client:
        while time.monotonic() < deadline:  # its queue time is counted when it starts
            stats = client.get_inference_statistics(model)["model_stats"][0]
            if stats["inference_stats"]["queue"]["count"] > dispatched:
                break
            time.sleep(0.01)
    return thread, box


# --- batching ---------------------------------------------------------------------------


def test_http_aio_requests_of_many_clients_run_as_one_preferred_batch(
    sched_server: RunningServer,
) -> None:
    async def main() -> list[object]:
        async with httpaio.InferenceServerClient(sched_server.url) as client:
            calls = [client.infer("preferred", http_inputs(rows(1, value=i))) for i in range(4)]
            return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert {observed(r) for r in results} == {(4, observed(results[0])[1])}
    for i, result in enumerate(results):  # outputs split back to their own request
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows(1, value=i))


def test_grpc_aio_batch_rows_count_toward_the_preferred_size(sched_server: RunningServer) -> None:
    async def main() -> list[object]:
        client = grpcaio.InferenceServerClient(sched_server.grpc_url)
        try:
            calls = [client.infer("preferred", grpc_inputs(rows(2, value=i))) for i in range(2)]
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    results = asyncio.run(main())
    assert [observed(r)[0] for r in results] == [2, 2]
    assert observed(results[0])[1] == observed(results[1])[1]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows(2, value=i))


def test_a_full_batch_goes_without_waiting_for_the_delay(sched_server: RunningServer) -> None:
    async def main() -> list[object]:
        async with httpaio.InferenceServerClient(sched_server.url) as client:
            return await asyncio.gather(
                *(client.infer("full", http_inputs(rows(1, value=i))) for i in range(8))
            )

    results = asyncio.run(main())
    batches: dict[int, int] = {}
    for result in results:
        size, execution = observed(result)
        assert size == 4
        batches[execution] = batches.get(execution, 0) + 1
    assert sorted(batches.values()) == [4, 4]
    with httpclient.InferenceServerClient(sched_server.url) as client:
        stats = client.get_inference_statistics("full")["model_stats"][0]
    assert stats["execution_count"] == 2 and stats["inference_count"] == 8
    assert [b["batch_size"] for b in stats["batch_stats"]] == [4]


def test_requests_queued_behind_a_busy_instance_form_the_next_batch(
    sched_server: RunningServer,
) -> None:
    blocker, _ = start_blocker(sched_server, "greedy", 1500)
    client = grpcclient.InferenceServerClient(sched_server.grpc_url)
    threads = [
        run_in_background(client.infer, "greedy", grpc_inputs(rows(1, value=i))) for i in range(5)
    ]
    for thread, _ in threads:
        thread.join(30)
    blocker.join(30)
    client.close()
    results = [box[0] for _, box in threads]
    assert [observed(r)[0] for r in results] == [5] * 5  # type: ignore[arg-type]


def test_different_shapes_are_not_batched_together_unless_ragged(
    sched_server: RunningServer,
) -> None:
    for model, expected in (("greedy", [2, 2, 1]), ("ragged", [3, 3, 3])):
        blocker, _ = start_blocker(sched_server, model, 1500)
        threads = []
        with sched_server.client(concurrency=4) as client:
            for width in (3, 3, 5):
                threads.append(
                    run_in_background(client.infer, model, http_inputs(rows(1, width=width)))
                )
                time.sleep(0.05)  # queue them in this order
            for thread, _ in threads:
                thread.join(30)
        blocker.join(30)
        sizes = [observed(box[0])[0] for _, box in threads]  # type: ignore[arg-type]
        assert sizes == expected, model
        assert threads[2][1][0].as_numpy("OUTPUT0").shape == (1, 5)  # type: ignore[union-attr]


def test_without_dynamic_batching_each_request_runs_alone(sched_server: RunningServer) -> None:
    blocker, _ = start_blocker(sched_server, "unbatched", 1000)
    with sched_server.client(concurrency=4) as client:
        threads = [
            run_in_background(client.infer, "unbatched", http_inputs(rows(1))) for _ in range(3)
        ]
        for thread, _ in threads:
            thread.join(30)
    blocker.join(30)
    assert [observed(box[0])[0] for _, box in threads] == [1, 1, 1]  # type: ignore[arg-type]


def test_a_batch_larger_than_max_batch_size_is_rejected(sched_server: RunningServer) -> None:
    with sched_server.client() as client, pytest.raises(InferenceServerException) as http_error:
        client.infer("full", http_inputs(rows(5)))
    assert http_error.value.status() == "400"
    assert "batch-size must be <= 4" in http_error.value.message()
    client = grpcclient.InferenceServerClient(sched_server.grpc_url)
    with pytest.raises(InferenceServerException) as grpc_error:
        client.infer("full", grpc_inputs(rows(5)))
    client.close()
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"


# --- queue policies -----------------------------------------------------------------------


def test_a_full_queue_rejects_with_tritons_error_and_serves_the_rest(
    sched_server: RunningServer,
) -> None:
    blocker, _ = start_blocker(sched_server, "bounded", 1500)
    with sched_server.client(concurrency=4) as client:
        queued = [
            run_in_background(client.infer, "bounded", http_inputs(rows(1))) for _ in range(2)
        ]
        time.sleep(0.3)  # both are queued now
        with pytest.raises(InferenceServerException) as http_error:
            client.infer("bounded", http_inputs(rows(1)))
        grpc = grpcclient.InferenceServerClient(sched_server.grpc_url)
        with pytest.raises(InferenceServerException) as grpc_error:
            grpc.infer("bounded", grpc_inputs(rows(1)))
        grpc.close()
        for thread, _ in queued:
            thread.join(30)
    blocker.join(30)
    assert http_error.value.status() == "503"
    assert http_error.value.message() == "[request id: <id_unknown>] Exceeds maximum queue size"
    assert grpc_error.value.status() == "StatusCode.UNAVAILABLE"
    assert grpc_error.value.message() == "[request id: <id_unknown>] Exceeds maximum queue size"
    assert all(not isinstance(box[0], Exception) for _, box in queued)


def test_a_full_queue_refuses_a_stream_request_before_execution(
    sched_server: RunningServer,
) -> None:
    blocker, _ = start_blocker(sched_server, "bounded", 1500)
    with sched_server.client(concurrency=4) as client:
        queued = [
            run_in_background(client.infer, "bounded", http_inputs(rows(1))) for _ in range(2)
        ]
        time.sleep(0.3)
        answers: list[tuple[object, object]] = []
        done = threading.Event()

        def callback(result: object, error: object) -> None:
            answers.append((result, error))
            done.set()

        grpc = grpcclient.InferenceServerClient(sched_server.grpc_url)
        grpc.start_stream(callback)
        grpc.async_stream_infer("bounded", grpc_inputs(rows(1)), request_id="overflow")
        assert done.wait(10)
        grpc.stop_stream()
        grpc.close()
        for thread, _ in queued:
            thread.join(30)
    blocker.join(30)
    ((result, error),) = answers
    assert result is None
    assert "Exceeds maximum queue size" in error.message()  # type: ignore[attr-defined]


def test_a_request_timeout_rejects_a_request_still_queued(sched_server: RunningServer) -> None:
    blocker, _ = start_blocker(sched_server, "expiring", 1500)
    with sched_server.client() as client, pytest.raises(InferenceServerException) as error:
        client.infer("expiring", http_inputs(rows(1)), timeout=100_000)
    grpc = grpcclient.InferenceServerClient(sched_server.grpc_url)
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc.infer("expiring", grpc_inputs(rows(1)), timeout=100_000)
    blocker.join(30)
    assert error.value.status() == "503"
    assert error.value.message() == "Request timeout expired"
    assert grpc_error.value.status() == "StatusCode.UNAVAILABLE"
    # A timeout longer than the default is clamped to it: no error for a short wait.
    result = grpc.infer("expiring", grpc_inputs(rows(1)), timeout=60_000_000)
    grpc.close()
    assert observed(result)[0] == 1


def test_delay_on_timeout_keeps_timed_out_requests_queued(sched_server: RunningServer) -> None:
    blocker, _ = start_blocker(sched_server, "delaying", 600)
    with sched_server.client(concurrency=4) as client:
        waiting = [
            run_in_background(client.infer, "delaying", http_inputs(rows(1))) for _ in range(3)
        ]
        for thread, _ in waiting:
            thread.join(30)
    blocker.join(30)
    executions = [observed(box[0])[1] for _, box in waiting]  # type: ignore[arg-type]
    assert len(set(executions)) == 3  # each ran (max_batch_size 1), none was rejected


def test_higher_priority_requests_run_first(sched_server: RunningServer) -> None:
    blocker, _ = start_blocker(sched_server, "prioritized", 1000)
    grpc = grpcclient.InferenceServerClient(sched_server.grpc_url)
    low = run_in_background(lambda: grpc.infer("prioritized", grpc_inputs(rows(1))))
    time.sleep(0.2)
    high = run_in_background(lambda: grpc.infer("prioritized", grpc_inputs(rows(1)), priority=1))
    for thread, _ in (low, high):
        thread.join(30)
    blocker.join(30)
    grpc.close()
    assert observed(high[1][0])[1] < observed(low[1][0])[1]  # type: ignore[arg-type]
    # A priority beyond the configured levels is the default level, as in Triton.
    with sched_server.client() as client:
        result = client.infer("prioritized", http_inputs(rows(1)), priority=9)
    assert observed(result)[0] == 1


def test_two_instances_execute_two_batches_at_once(sched_server: RunningServer) -> None:
    async def main() -> list[object]:
        client = grpcaio.InferenceServerClient(sched_server.grpc_url)
        try:
            return await asyncio.gather(
                *(client.infer("pair", grpc_inputs(rows(1))) for _ in range(6))
            )
        finally:
            await client.close()

    peaks = [observed(result)[1] for result in asyncio.run(main())]
    assert max(peaks) == 2  # never more than the two instances, and both were used at once


def test_statistics_count_each_batch_once(sched_server: RunningServer, tmp_path: Path) -> None:
    with sched_server.client() as client:
        for _ in range(3):
            client.infer("preferred", http_inputs(rows(1)))
        stats = client.get_inference_statistics("preferred")["model_stats"][0]
    batches = stats["batch_stats"]
    # Every execution is one batch of its size: the batch table adds up to the totals.
    assert sum(b["compute_infer"]["count"] for b in batches) == stats["execution_count"]
    assert (
        sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches)
        == stats["inference_count"]
    )
    assert stats["inference_count"] >= 3
    assert stats["execution_count"] <= stats["inference_stats"]["success"]["count"]


def test_server_with_dynamic_batching_starts_and_stops_cleanly(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "greedy", MODELS["greedy"], OBSERVER)
    running = start_server(tmp_path / "repo", log_path=tmp_path / "log")
    try:
        client = running.client()
        deadline = time.monotonic() + 30
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert observed(client.infer("greedy", http_inputs(rows(2))))[0] == 1
    finally:
        assert running.stop() == 0, running.log()
