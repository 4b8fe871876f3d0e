"""The response cache: ``response_cache { enable: true }`` with ``--cache-config=local,size=N``.

A hit is proven by the model not running: it answers with a count of its executions.
Statistics are compared with what tritonserver 2.51 reports for the same requests (see
/work/notes/triton_cache_warmup_reference.md).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

COUNTER = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.batching = json.loads(args["model_config"])["max_batch_size"] > 0
        self.executions = 0

    def execute(self, requests):
        self.executions += 1
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if x.size and x.reshape(-1)[0] == -2:
                raise ValueError("minus two")
            if x.size and x.reshape(-1)[0] == -1:
                error = pb_utils.TritonError("negative input")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            count = np.full([x.shape[0], 1] if self.batching else [1], self.executions)
            outputs = [
                pb_utils.Tensor("OUT", (x * 2).astype(np.float32)),
                pb_utils.Tensor("EXECUTIONS", count.astype(np.int64)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs, parameters={"executed": True}))
        return responses
"""


def _config(max_batch_size: int, dims: str, extra: str) -> str:
    return f"""
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ {dims} ] }},
                 {{ name: "EXECUTIONS" data_type: TYPE_INT64 dims: [ 1 ] }} ]
        {extra}
    """


CACHED = "response_cache { enable: true }"
MODELS = {
    "cache_counter": _config(0, "-1", CACHED),
    "cache_2d": _config(0, "-1, -1", CACHED),
    "cache_batched": _config(8, "-1", CACHED + "\ndynamic_batching { }"),
    "cache_off": _config(0, "-1", ""),
    "cache_decoupled": _config(0, "-1", CACHED + "\nmodel_transaction_policy { decoupled: true }"),
    "cache_seq": _config(0, "-1", CACHED + "\nsequence_batching { }"),
}
#: Fresh input values, so that no test meets another's cache entries.
_values = itertools.count(1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("cache_repo")
    for name, config in MODELS.items():
        write_model(repository, name, config, COUNTER)
    return repository


def _server(repo: Path, factory: pytest.TempPathFactory, *flags: str) -> RunningServer:
    log = factory.mktemp("cache_log") / "server.log"
    return start_server(repo, "--exit-on-error=false", *flags, log_path=log)


@pytest.fixture(scope="module")
def cached(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = _server(repo, tmp_path_factory, "--cache-config=local,size=1048576")
    yield running
    running.stop()


@pytest.fixture
def http(cached: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with cached.client() as client:
        yield client


@pytest.fixture
def grpc(cached: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(cached.grpc_url)
    yield client
    client.close()


def _inputs(protocol: Any, array: np.ndarray) -> list[Any]:
    tensor = protocol.InferInput("IN", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return [tensor]


def _fresh(size: int = 3) -> np.ndarray:
    return np.full([size], next(_values), dtype=np.float32)


def _executions(result: Any) -> int:
    return int(result.as_numpy("EXECUTIONS").reshape(-1)[0])


def _stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, int]:
    (stats,) = client.get_inference_statistics(model)["model_stats"]
    counts = {name: value["count"] for name, value in stats["inference_stats"].items()}
    counts.update(
        inference_count=stats["inference_count"],
        execution_count=stats["execution_count"],
        last_inference=stats["last_inference"],
        hit_ns=stats["inference_stats"]["cache_hit"]["ns"],
        miss_ns=stats["inference_stats"]["cache_miss"]["ns"],
    )
    return counts


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    names = ("inference_count", "execution_count", "success", "fail", "queue")
    names += ("compute_infer", "cache_hit", "cache_miss")
    return {name: after[name] - before[name] for name in names}


# --- hits and misses ---------------------------------------------------------------------


def test_identical_request_is_answered_without_executing(http, grpc) -> None:
    array = _fresh()
    before = _stats(http, "cache_counter")
    first = http.infer("cache_counter", _inputs(httpclient, array), request_id="a1")
    after_miss = _stats(http, "cache_counter")
    second = http.infer("cache_counter", _inputs(httpclient, array), request_id="a2")
    third = grpc.infer("cache_counter", _inputs(grpcclient, array), request_id="g3")
    after = _stats(http, "cache_counter")

    assert _executions(first) == _executions(second) == _executions(third)
    for result in (first, second, third):
        np.testing.assert_array_equal(result.as_numpy("OUT"), array * 2)
    assert second.get_response()["id"] == "a2"  # the hit answers its own request
    assert third.get_response().id == "g3"
    assert first.get_response()["parameters"] == {"executed": True}
    assert "parameters" not in second.get_response()  # a cache entry holds outputs only
    # as tritonserver 2.51 counts them: a hit is a success, not an inference or execution
    assert _delta(after, before) == {
        "inference_count": 1,
        "execution_count": 1,
        "success": 3,
        "fail": 0,
        "queue": 3,
        "compute_infer": 1,
        "cache_hit": 2,
        "cache_miss": 1,
    }
    assert after["hit_ns"] > before["hit_ns"] and after["miss_ns"] > before["miss_ns"]
    assert after["last_inference"] == after_miss["last_inference"]  # hits do not move it


def test_grpc_aio_and_stream_hit_the_same_entry(cached: RunningServer, http) -> None:
    array = _fresh()

    async def unary() -> list[int]:
        client = grpcaio.InferenceServerClient(cached.grpc_url)
        try:
            results = [await client.infer("cache_counter", _inputs(grpcaio, array)) for _ in "ab"]
        finally:
            await client.close()
        return [_executions(result) for result in results]

    before = _stats(http, "cache_counter")
    first, second = asyncio.run(unary())
    assert first == second
    responses: queue.Queue[Any] = queue.Queue()
    stream = grpcclient.InferenceServerClient(cached.grpc_url)
    try:
        stream.start_stream(callback=lambda result, error: responses.put((result, error)))
        stream.async_stream_infer("cache_counter", _inputs(grpcclient, array))
        result, error = responses.get(timeout=30)
        stream.stop_stream()
    finally:
        stream.close()
    assert error is None
    assert _executions(result) == first
    np.testing.assert_array_equal(result.as_numpy("OUT"), array * 2)
    delta = _delta(_stats(http, "cache_counter"), before)
    assert (delta["execution_count"], delta["cache_hit"], delta["cache_miss"]) == (1, 2, 1)


def test_stream_miss_is_cached_for_later_requests(cached: RunningServer, http) -> None:
    array = _fresh()
    responses: queue.Queue[Any] = queue.Queue()
    stream = grpcclient.InferenceServerClient(cached.grpc_url)
    try:
        stream.start_stream(callback=lambda result, error: responses.put((result, error)))
        stream.async_stream_infer("cache_counter", _inputs(grpcclient, array))
        result, error = responses.get(timeout=30)
        stream.stop_stream()
    finally:
        stream.close()
    assert error is None
    assert _executions(http.infer("cache_counter", _inputs(httpclient, array))) == _executions(
        result
    )


def test_key_ignores_parameters_priority_timeout_and_sequence_flags(http, grpc) -> None:
    """As Triton's key: model, version and inputs only."""
    array = _fresh()
    executions = _executions(http.infer("cache_counter", _inputs(httpclient, array)))
    before = _stats(http, "cache_counter")
    variants = [
        grpc.infer("cache_counter", _inputs(grpcclient, array), parameters={"foo": "bar"}),
        http.infer("cache_counter", _inputs(httpclient, array), priority=3, timeout=100000),
        http.infer("cache_counter", _inputs(httpclient, array), sequence_id=7, sequence_start=True),
        grpc.infer("cache_counter", _inputs(grpcclient, array), sequence_id=8, sequence_end=True),
        http.infer("cache_counter", _inputs(httpclient, array), model_version="1"),
    ]
    assert [_executions(result) for result in variants] == [executions] * 5
    assert _delta(_stats(http, "cache_counter"), before)["cache_hit"] == 5


def test_each_hit_gets_the_outputs_it_asks_for(http) -> None:
    """The entry is the model's whole response; each request takes the outputs it names.

    (tritonserver caches the outputs its Python backend returned for the first request,
    so there a later request naming another output gets the first request's outputs.)
    """
    array = _fresh()
    only = httpclient.InferRequestedOutput
    first = http.infer("cache_counter", _inputs(httpclient, array), outputs=[only("EXECUTIONS")])
    assert first.as_numpy("OUT") is None
    before = _stats(http, "cache_counter")
    second = http.infer("cache_counter", _inputs(httpclient, array), outputs=[only("OUT")])
    assert second.as_numpy("EXECUTIONS") is None
    np.testing.assert_array_equal(second.as_numpy("OUT"), array * 2)
    both = http.infer("cache_counter", _inputs(httpclient, array))
    assert _executions(both) == _executions(first)
    assert _delta(_stats(http, "cache_counter"), before)["cache_hit"] == 2


def test_shape_is_part_of_the_key(http) -> None:
    """Same bytes, another shape: executed again (tritonserver 2.51 would answer the first
    shape's output, its key holding only input names and bytes)."""
    data = np.arange(4, dtype=np.float32) + next(_values) * 10
    results = [
        http.infer("cache_2d", _inputs(httpclient, data.reshape(shape)))
        for shape in ([1, 4], [2, 2], [1, 4])
    ]
    assert [r.as_numpy("OUT").shape for r in results] == [(1, 4), (2, 2), (1, 4)]
    assert _executions(results[0]) == _executions(results[2]) != _executions(results[1])


def test_batched_model_caches_each_request(http) -> None:
    value = next(_values)
    one, two = np.full([1, 3], value, np.float32), np.full([2, 3], value, np.float32)
    before = _stats(http, "cache_batched")
    results = [http.infer("cache_batched", _inputs(httpclient, a)) for a in (one, one, two, two)]
    assert _executions(results[0]) == _executions(results[1])
    assert _executions(results[2]) == _executions(results[3]) != _executions(results[0])
    np.testing.assert_array_equal(results[3].as_numpy("OUT"), two * 2)
    delta = _delta(_stats(http, "cache_batched"), before)
    assert (delta["inference_count"], delta["execution_count"]) == (3, 2)
    assert (delta["cache_hit"], delta["cache_miss"]) == (2, 2)


# --- what is not cached --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status", "message"),
    [(-1.0, "500", "negative input"), (-2.0, "500", "ValueError: minus two")],
)
def test_failures_are_not_cached(http, value: float, status: str, message: str) -> None:
    """Every identical failing request runs the model again and fails again (a miss)."""
    before = _stats(http, "cache_counter")
    for _ in range(2):
        with pytest.raises(InferenceServerException) as info:
            http.infer("cache_counter", _inputs(httpclient, np.array([value], np.float32)))
        assert info.value.status() == status
        assert message in info.value.message()
    delta = _delta(_stats(http, "cache_counter"), before)
    assert (delta["execution_count"], delta["fail"]) == (2, 2)
    assert (delta["cache_hit"], delta["cache_miss"]) == (0, 2)


def test_response_with_an_empty_output_is_not_cached(cached: RunningServer, http) -> None:
    """As in tritonserver: the insert fails (logged), the request succeeds, a miss."""
    empty = np.zeros([0], np.float32)
    before = _stats(http, "cache_counter")
    first, second = (http.infer("cache_counter", _inputs(httpclient, empty)) for _ in "ab")
    assert _executions(second) != _executions(first)
    assert second.as_numpy("OUT").shape == (0,)
    delta = _delta(_stats(http, "cache_counter"), before)
    assert (delta["cache_hit"], delta["cache_miss"]) == (0, 2)
    assert "into response cache: output 'OUT' is empty" in cached.log()


def test_model_without_response_cache_is_never_cached(http) -> None:
    array = _fresh()
    results = [http.infer("cache_off", _inputs(httpclient, array)) for _ in "ab"]
    assert _executions(results[1]) == _executions(results[0]) + 1
    stats = _stats(http, "cache_off")
    assert (stats["cache_hit"], stats["cache_miss"]) == (0, 0)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            "cache_decoupled",
            "Response Cache does not currently support model cache_decoupled with 'decoupled' "
            "transaction policy. Please disable the response cache.",
        ),
        (
            "cache_seq",
            "Response Cache does not currently support model cache_seq with sequence batching "
            "scheduler. Please disable the response cache.",
        ),
    ],
)
def test_decoupled_and_sequence_models_refuse_the_cache(http, model: str, reason: str) -> None:
    row = next(r for r in http.get_model_repository_index() if r["name"] == model)
    assert row["state"] == "UNAVAILABLE"
    assert row["reason"] == reason
    assert http.is_model_ready("cache_counter")


# --- server settings ---------------------------------------------------------------------------


def test_server_without_a_cache_caches_nothing(repo: Path, tmp_path_factory) -> None:
    """A model may enable the cache on a server that has none: it loads and runs uncached."""
    running = _server(
        repo, tmp_path_factory, "--model-control-mode=explicit", "--load-model=cache_counter"
    )
    try:
        with running.client() as client:
            array = _fresh()
            results = [client.infer("cache_counter", _inputs(httpclient, array)) for _ in "ab"]
            assert _executions(results[1]) == _executions(results[0]) + 1
            stats = _stats(client, "cache_counter")
            assert (stats["cache_hit"], stats["cache_miss"]) == (0, 0)
    finally:
        running.stop()


def test_small_cache_evicts_the_least_recently_used(repo: Path, tmp_path_factory) -> None:
    """4096 bytes hold two entries of 400 floats (as tritonserver's local cache does)."""
    running = _server(
        repo,
        tmp_path_factory,
        "--model-control-mode=explicit",
        "--load-model=cache_counter",
        "--cache-config",
        "local,size=4096",
    )
    entries = {name: np.full([400], i + 1, np.float32) for i, name in enumerate("ABC")}
    try:
        with running.client() as client:

            def executed(name: str) -> int:
                return _executions(
                    client.infer("cache_counter", _inputs(httpclient, entries[name]))
                )

            assert [executed(n) for n in "AB"] == [1, 2]
            assert executed("A") == 1  # hit: A is now the most recently used
            assert executed("C") == 3  # evicts B
            assert executed("A") == 1
            assert executed("B") == 4  # B was evicted; evicts C
            assert executed("C") == 5
            # an entry larger than the whole cache: never cached, the request still succeeds
            big = np.full([1100], 7, np.float32)
            counts = [
                _executions(client.infer("cache_counter", _inputs(httpclient, big))) for _ in "ab"
            ]
            assert counts == [6, 7]
            stats = _stats(client, "cache_counter")
            assert (stats["cache_hit"], stats["cache_miss"]) == (2, 7)
        assert "Requested byte_size: 4506 is greater than total cache size: 4096" in running.log()
    finally:
        running.stop()


def test_deprecated_byte_size_flag_configures_a_local_cache(repo: Path, tmp_path_factory) -> None:
    running = _server(
        repo,
        tmp_path_factory,
        "--model-control-mode=explicit",
        "--load-model=cache_counter",
        "--response-cache-byte-size=65536",
    )
    try:
        with running.client() as client:
            array = _fresh()
            results = [client.infer("cache_counter", _inputs(httpclient, array)) for _ in "ab"]
            assert _executions(results[1]) == _executions(results[0])
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--cache-config=local"],
            "argument --cache-config: No cache specified. --cache-config option format is "
            "<cache name>,<setting>=<value>. Got local",
        ),
        (
            ["--cache-config=,size=5"],
            "argument --cache-config: No cache specified. --cache-config option format is "
            "<cache name>,<setting>=<value>. Got ,size=5",
        ),
        (
            ["--cache-config=local,size="],
            "argument --cache-config: --cache-config option format is "
            "'<cache name>,<setting>=<value>'. Got local,size=",
        ),
        (
            ["--cache-config=local,=5"],
            "argument --cache-config: --cache-config option format is "
            "'<cache name>,<setting>=<value>'. Got local,=5",
        ),
        (
            ["--cache-config=local,bogus=1"],
            "Failed to initialize LocalCache: config didn't contain a valid 'size' field.",
        ),
        (
            ["--cache-config=local,size=abc"],
            "Failed to initialize LocalCache: 'size' must be a number of bytes (an unsigned "
            "integer), got 'abc'",
        ),
        (
            ["--cache-config=local,size=-1"],
            "Failed to initialize LocalCache: 'size' must be a number of bytes (an unsigned "
            "integer), got '-1'",
        ),
        (
            ["--cache-config=local,size=100"],
            "Failed to initialize LocalCache: size 100 is too small: a cache needs at least "
            "192 bytes",
        ),
        (
            ["--response-cache-byte-size=10"],
            "Failed to initialize LocalCache: size 10 is too small: a cache needs at least "
            "192 bytes",
        ),
        (
            ["--cache-config=redis,size=100"],
            "unable to find cache 'redis': this server provides only the 'local' cache",
        ),
        (
            ["--cache-config=local,size=4096", "--response-cache-byte-size=4096"],
            "Incompatible flags --response-cache-byte-size and --cache-config both provided. "
            "Please provide one or the other.",
        ),
    ],
)
def test_bad_cache_config_is_a_clear_cli_error(repo: Path, flags: list[str], message: str) -> None:
    command = [
        sys.executable,
        "-m",
        "triton_kernel.kernel.cli",
        "serve",
        f"--model-repository={repo}",
    ]
    result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"triton-kernel: error: {message}\n" in result.stderr
