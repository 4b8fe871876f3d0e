"""The statistics extension: the numbers match the requests sent, HTTP and gRPC agree.

Each test reads the statistics before and after its own requests, so the tests share
one server. What tritonserver 2.51 does (and where this server differs on purpose) is
in ``/work/notes/triton_metrics_reference.md``.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

IDENTITY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Echoes IN; raises when its first element is negative.\"\"\"

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if data.size and data.flat[0] < 0:
                raise ValueError("negative input")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", data)]))
        return responses
"""

DECOUPLED = """
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    \"\"\"N > 0: N responses, then the FINAL flag alone. N == 0: the flag alone.
    N < 0: an error response, then a response that carries the FINAL flag.\"\"\"

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            sender = request.get_response_sender()
            if n < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative")))
                sender.send(self.out(0), flags=FINAL)
                continue
            for index in range(n):
                sender.send(self.out(index))
            sender.send(flags=FINAL)
        return None

    @staticmethod
    def out(value):
        return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.int32))])
"""


def _config(name: str, max_batch_size: int, extra: str = "", datatype: str = "FP32") -> str:
    dims = "[ -1 ]" if datatype == "FP32" else "[ 1 ]"
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "IN" data_type: TYPE_{datatype} dims: {dims} }} ]
        output [ {{ name: "OUT" data_type: TYPE_{datatype} dims: {dims} }} ]
        {extra}
    """


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("stats_repo")
    write_model(repo, "st_ident", _config("st_ident", 0), IDENTITY)
    write_model(repo, "st_batch", _config("st_batch", 8), IDENTITY)
    decoupled = "model_transaction_policy { decoupled: true }"
    write_model(repo, "st_dec", _config("st_dec", 0, decoupled, "INT32"), DECOUPLED)
    versioned = "version_policy: { all { } }"
    write_model(repo, "st_versions", _config("st_versions", 0, versioned), IDENTITY)
    write_model(repo, "st_versions", "", IDENTITY, version=2)
    write_model(repo, "st_unloaded", _config("st_unloaded", 0), IDENTITY)
    log_path = tmp_path_factory.mktemp("stats_log") / "server.log"
    running = start_server(
        repo, "--model-control-mode=explicit", "--load-model=*", log_path=log_path
    )
    with running.client() as client:
        deadline = time.monotonic() + 30
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.unload_model("st_unloaded")
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with server.client() as client:
        yield client


@pytest.fixture
def grpc(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        yield client


def _inputs(module: Any, data: np.ndarray) -> list[Any]:
    tensor = module.InferInput(
        "IN", list(data.shape), "FP32" if data.dtype == np.float32 else "INT32"
    )
    tensor.set_data_from_numpy(data)
    return [tensor]


def _stats(http: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    (stats,) = http.get_inference_statistics(model)["model_stats"]
    return stats


_DURATIONS = ("compute_input", "compute_infer", "compute_output")
_INFER = ("success", "fail", "queue", *_DURATIONS, "cache_hit", "cache_miss")
_RESPONSE = ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel")


def _duration(value: dict[str, str] | None) -> dict[str, int]:
    value = value or {}
    return {"count": int(value.get("count", 0)), "ns": int(value.get("ns", 0))}


def _grpc_stats(grpc: grpcclient.InferenceServerClient, model: str = "") -> list[dict[str, Any]]:
    """gRPC's JSON (uint64 as strings, zero fields left out) in the HTTP form."""
    stats = grpc.get_inference_statistics(model, as_json=True)["model_stats"]
    return [
        {
            "name": entry["name"],
            "version": entry["version"],
            "last_inference": int(entry.get("last_inference", 0)),
            "inference_count": int(entry.get("inference_count", 0)),
            "execution_count": int(entry.get("execution_count", 0)),
            "inference_stats": {
                name: _duration(entry["inference_stats"].get(name)) for name in _INFER
            },
            "response_stats": {
                index: {name: _duration(response.get(name)) for name in _RESPONSE}
                for index, response in entry.get("response_stats", {}).items()
            },
            "batch_stats": [
                {
                    "batch_size": int(batch["batch_size"]),
                    **{name: _duration(batch.get(name)) for name in _DURATIONS},
                }
                for batch in entry.get("batch_stats", [])
            ],
            "memory_usage": entry.get("memory_usage", []),
        }
        for entry in stats
    ]


def _settled(read: Any) -> Any:
    """``read()`` once two reads agree: a streamed request's last figures are recorded
    just after its final response leaves, so a client can be a moment ahead of them."""
    last = read()
    for _ in range(200):
        time.sleep(0.02)
        current = read()
        if current == last:
            return current
        last = current
    return last


def _counts(stats: dict[str, Any]) -> dict[str, int]:
    counts = {name: value["count"] for name, value in stats["inference_stats"].items()}
    counts["inference_count"] = stats["inference_count"]
    counts["execution_count"] = stats["execution_count"]
    return counts


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    old = _counts(before)
    return {name: value - old[name] for name, value in _counts(after).items()}


# --- numbers against requests ----------------------------------------------------------


def test_counts_follow_the_requests_sent(http, grpc) -> None:
    before = _stats(http, "st_ident")
    for _ in range(3):
        http.infer("st_ident", _inputs(httpclient, np.ones(4, np.float32)))
    for _ in range(2):
        grpc.infer("st_ident", _inputs(grpcclient, np.ones(2, np.float32)))
    after = _stats(http, "st_ident")
    assert _delta(after, before) == {
        "success": 5,
        "fail": 0,
        "queue": 5,
        "compute_input": 5,
        "compute_infer": 5,
        "compute_output": 5,
        "cache_hit": 0,
        "cache_miss": 0,
        "inference_count": 5,
        "execution_count": 5,
    }
    assert after["last_inference"] >= before["last_inference"]
    assert after["last_inference"] > 0
    for name in ("success", "queue", "compute_infer"):
        assert after["inference_stats"][name]["ns"] > before["inference_stats"][name]["ns"]
    assert after["response_stats"] == {}  # not decoupled
    assert after["memory_usage"] == []


def test_batch_stats_per_batch_size(http) -> None:
    before = {
        b["batch_size"]: b["compute_infer"]["count"]
        for b in _stats(http, "st_batch")["batch_stats"]
    }
    for rows in (1, 3, 3, 8):
        http.infer("st_batch", _inputs(httpclient, np.ones((rows, 2), np.float32)))
    after_stats = _stats(http, "st_batch")
    after = {b["batch_size"]: b["compute_infer"]["count"] for b in after_stats["batch_stats"]}
    grown = {size: after[size] - before.get(size, 0) for size in after}
    assert {size: n for size, n in grown.items() if n} == {1: 1, 3: 2, 8: 1}
    assert [b["batch_size"] for b in after_stats["batch_stats"]] == sorted(after)
    for batch in after_stats["batch_stats"]:  # one execution per request: each batch counts 1
        assert batch["compute_input"]["count"] == batch["compute_infer"]["count"]
        assert batch["compute_output"]["count"] == batch["compute_infer"]["count"]
    # a request of N rows is N inferences and one execution
    assert after_stats["inference_count"] == sum(size * n for size, n in after.items())
    assert after_stats["execution_count"] == sum(after.values())


def test_a_failed_execution_counts_as_fail(http, grpc) -> None:
    before = _stats(http, "st_ident")
    with pytest.raises(InferenceServerException) as info:
        http.infer("st_ident", _inputs(httpclient, np.array([-1.0], np.float32)))
    assert "negative input" in info.value.message()
    with pytest.raises(InferenceServerException):
        grpc.infer("st_ident", _inputs(grpcclient, np.array([-2.0], np.float32)))
    after = _stats(http, "st_ident")
    delta = _delta(after, before)
    # as tritonserver 2.51: a fail, an execution, but no inference
    assert (delta["fail"], delta["success"]) == (2, 0)
    assert (delta["execution_count"], delta["inference_count"]) == (2, 0)
    assert after["inference_stats"]["fail"]["ns"] > before["inference_stats"]["fail"]["ns"]


def test_a_refused_request_is_not_counted(http) -> None:
    """A request that never reached the queue (bad input) leaves the counters alone."""
    before = _stats(http, "st_ident")
    bad = httpclient.InferInput("NOPE", [1], "FP32")
    bad.set_data_from_numpy(np.ones(1, np.float32))
    with pytest.raises(InferenceServerException):
        http.infer("st_ident", [bad])
    assert _delta(_stats(http, "st_ident"), before) == dict.fromkeys(_counts(before), 0)


# --- decoupled models: response statistics ---------------------------------------------


def _stream(grpc: grpcclient.InferenceServerClient, counts: list[int]) -> list[Any]:
    """Send one request per count on one stream; return every callback once all are final."""
    results: queue.Queue[Any] = queue.Queue()
    grpc.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for count in counts:
            grpc.async_stream_infer(
                "st_dec",
                _inputs(grpcclient, np.array([count], np.int32)),
                enable_empty_final_response=True,
            )
        seen, finals = [], 0
        while finals < len(counts):
            result, error = results.get(timeout=30)
            seen.append((result, error))
            if result is not None:
                final = result.get_response().parameters.get("triton_final_response")
                finals += bool(final and final.bool_param)
    finally:
        grpc.stop_stream()
    return seen


def test_response_stats_count_each_response_by_index(http, grpc) -> None:
    before = _settled(lambda: _stats(http, "st_dec"))["response_stats"]
    seen = _stream(grpc, [2])
    seen += _stream(grpc, [-1])
    seen += _stream(grpc, [0])
    assert sum(1 for _, error in seen if error is not None) == 1  # the error response
    after = _settled(lambda: _stats(http, "st_dec"))["response_stats"]

    def grown(index: str, name: str) -> int:
        old = before.get(index, {}).get(name, {"count": 0})["count"]
        return after[index][name]["count"] - old

    fields = ("success", "fail", "empty_response", "cancel", "compute_infer", "compute_output")
    table = {index: {name: grown(index, name) for name in fields} for index in ("0", "1", "2")}
    assert table == {
        # first responses: N=2's first, N=-1's error, N=0's lone FINAL flag
        "0": {"success": 1, "fail": 1, "empty_response": 1, "cancel": 0,
              "compute_infer": 3, "compute_output": 2},
        # second: N=2's second, N=-1's final response
        "1": {"success": 2, "fail": 0, "empty_response": 0, "cancel": 0,
              "compute_infer": 2, "compute_output": 2},
        # third: N=2's FINAL flag
        "2": {"success": 0, "fail": 0, "empty_response": 1, "cancel": 0,
              "compute_infer": 1, "compute_output": 0},
    }  # fmt: skip
    assert after["0"]["success"]["ns"] > 0 and after["2"]["empty_response"]["ns"] > 0


def test_decoupled_requests_count_as_requests(http, grpc) -> None:
    before = _settled(lambda: _stats(http, "st_dec"))
    _stream(grpc, [3, 1])
    delta = _delta(_settled(lambda: _stats(http, "st_dec")), before)
    assert (delta["success"], delta["inference_count"], delta["fail"]) == (2, 2, 0)


# --- HTTP and gRPC agree ----------------------------------------------------------------


def test_http_and_grpc_report_the_same_numbers(http, grpc, server: RunningServer) -> None:
    http.infer("st_batch", _inputs(httpclient, np.ones((2, 2), np.float32)))
    _stream(grpc, [1])
    every_http = _settled(lambda: http.get_inference_statistics()["model_stats"])
    assert _grpc_stats(grpc) == every_http
    for model in ("st_ident", "st_batch", "st_dec"):
        assert _grpc_stats(grpc, model) == http.get_inference_statistics(model)["model_stats"]
    raw = requests.get(f"http://{server.url}/v2/models/st_dec/versions/1/stats", timeout=10)
    assert raw.json()["model_stats"] == _grpc_stats(grpc, "st_dec")


def test_every_model_lists_only_ready_versions_in_order(http) -> None:
    stats = http.get_inference_statistics()["model_stats"]
    names = [(entry["name"], entry["version"]) for entry in stats]
    assert names == [
        ("st_batch", "1"),
        ("st_dec", "1"),
        ("st_ident", "1"),
        ("st_versions", "1"),
        ("st_versions", "2"),
    ]
    versions = http.get_inference_statistics("st_versions")["model_stats"]
    assert [entry["version"] for entry in versions] == ["1", "2"]
    (one,) = http.get_inference_statistics("st_versions", "2")["model_stats"]
    assert one["version"] == "2"


def test_versions_are_counted_apart(http) -> None:
    http.infer("st_versions", _inputs(httpclient, np.ones(1, np.float32)), model_version="1")
    one = http.get_inference_statistics("st_versions", "1")["model_stats"][0]
    two = http.get_inference_statistics("st_versions", "2")["model_stats"][0]
    assert one["inference_stats"]["success"]["count"] >= 1
    assert two["inference_stats"]["success"]["count"] == 0


# --- bad input: Triton's texts ----------------------------------------------------------

UNKNOWN = [
    ("nope", "", "requested model 'nope' is not available"),
    ("nope", "1", "requested model 'nope' is not available"),
    ("st_ident", "9", "requested model version is not available for model 'st_ident'"),
    ("st_unloaded", "", "requested model 'st_unloaded' is not available"),
]


@pytest.mark.parametrize(("model", "version", "message"), UNKNOWN)
def test_unknown_model_or_version_over_http(http, model: str, version: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        http.get_inference_statistics(model, version)
    assert (info.value.status(), info.value.message()) == ("400", message)


@pytest.mark.parametrize(("model", "version", "message"), UNKNOWN)
def test_unknown_model_or_version_over_grpc(grpc, model: str, version: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        grpc.get_inference_statistics(model, version)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == message


def test_version_that_is_not_a_number(server: RunningServer, grpc) -> None:
    reply = requests.get(f"http://{server.url}/v2/models/st_ident/versions/abc/stats", timeout=10)
    assert (reply.status_code, reply.json()) == (404, {"error": "Not Found"})
    with pytest.raises(InferenceServerException) as info:
        grpc.get_inference_statistics("st_ident", "abc")
    assert info.value.message() == (
        "failed to get model version from specified version string 'abc' (details: stol), "
        "version should be an integral value > 0"
    )
