"""Triton's trace extension, checked against what tritonserver 2.51 answers and writes.

Settings (global and per model, HTTP and gRPC, with Triton's texts for bad values),
trace files in Triton's JSON format (timestamps, ids, ensembles, rate/count,
log-frequency rotation, TENSORS), and OpenTelemetry spans exported to a real OTLP/HTTP
receiver on loopback. Every server is a real process driven by the real tritonclient.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

ADD_SUB_CONFIG = """
    name: "add_sub"
    backend: "python"
    max_batch_size: 0
    input [
      { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
      { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
    ]
    output [
      { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
      { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
    ]
"""
ADD_SUB = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for r in requests:
                a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
                b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
                out.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("OUTPUT0", (a + b).astype(np.float32)),
                    pb_utils.Tensor("OUTPUT1", (a - b).astype(np.float32))]))
            return out
"""
IDENTITY = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
                for r in requests]
"""
IDENTITY_CONFIG = """
    name: "{name}"
    backend: "python"
    max_batch_size: 0
    input [ {{ name: "INPUT0" data_type: {dtype} dims: [ -1 ] }} ]
    output [ {{ name: "OUTPUT0" data_type: {dtype} dims: [ -1 ] }} ]
"""
REPEAT_CONFIG = """
    name: "repeat"
    backend: "python"
    max_batch_size: 0
    model_transaction_policy { decoupled: true }
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
REPEAT = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for r in requests:
                sender = r.get_response_sender()
                x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
                for k in range(2):
                    sender.send(pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor("OUTPUT0", x + k)]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""
ENSEMBLE_CONFIG = """
    name: "ens"
    platform: "ensemble"
    max_batch_size: 0
    input [
      { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
      { name: "B" data_type: TYPE_FP32 dims: [ 4 ] }
    ]
    output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
    ensemble_scheduling {
      step [
        { model_name: "add_sub" model_version: -1
          input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
          output_map { key: "OUTPUT0" value: "sum" } },
        { model_name: "identity" model_version: -1
          input_map { key: "INPUT0" value: "sum" }
          output_map { key: "OUTPUT0" value: "OUT" } }
      ]
    }
"""
#: A W3C trace context as an OpenTelemetry client would inject it.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c12666c-b7ad6b7169242424-01"
COMPUTE = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]
A = np.arange(4, dtype=np.float32)
B = np.ones(4, dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("trace_repo")
    write_model(repository, "add_sub", ADD_SUB_CONFIG, ADD_SUB)
    write_model(
        repository, "identity", IDENTITY_CONFIG.format(name="identity", dtype="TYPE_FP32"), IDENTITY
    )
    write_model(
        repository,
        "echo_bytes",
        IDENTITY_CONFIG.format(name="echo_bytes", dtype="TYPE_STRING"),
        IDENTITY,
    )
    write_model(repository, "repeat", REPEAT_CONFIG, REPEAT)
    (repository / "ens" / "1").mkdir(parents=True)
    (repository / "ens" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    return repository


@contextmanager
def serving(repo: Path, log: Path, *flags: str) -> Iterator[RunningServer]:
    """A server with ``flags``, stopped (and so its traces written) on leaving."""
    server = start_server(repo, *flags, log_path=log)
    try:
        wait_ready(server)
        yield server
    finally:
        assert server.stop() == 0, server.log()


def wait_ready(server: RunningServer) -> None:
    client = server.client()
    deadline = time.monotonic() + 60
    while not client.is_server_ready():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def file_flags(path: Path, *extra: str) -> list[str]:
    flags = [f"--trace-config=triton,file={path}", *extra]
    return flags


def http_inputs(*pairs: tuple[str, np.ndarray]) -> list[httpclient.InferInput]:
    inputs = []
    for name, array in pairs:
        tensor = httpclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def grpc_inputs(*pairs: tuple[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in pairs:
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def add_sub_http(client: httpclient.InferenceServerClient, request_id: str = "") -> None:
    result = client.infer(
        "add_sub", http_inputs(("INPUT0", A), ("INPUT1", B)), request_id=request_id
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def read_traces(path: Path) -> dict[int, dict[str, Any]]:
    """Triton's trace entries grouped by trace id: header fields, timestamps, tensors."""
    entries = json.loads(path.read_text())
    traces: dict[int, dict[str, Any]] = {}
    for entry in entries:
        trace = traces.setdefault(entry["id"], {"stamps": {}, "names": [], "tensors": []})
        if "timestamps" in entry:
            for stamp in entry["timestamps"]:
                trace["stamps"][stamp["name"]] = stamp["ns"]
                trace["names"].append(stamp["name"])
        elif "activity" in entry:
            trace["tensors"].append((entry["activity"], entry["tensor"]))
        else:
            trace["header"] = entry
    return traces


def written(path: Path, count: int) -> list[str]:
    """The request ids traced in ``path`` once it holds ``count`` traces (a trace is
    written just after its response is sent)."""
    deadline = time.monotonic() + 30
    while True:
        ids = list(by_request_id(read_traces(path))) if path.exists() else []
        if len(ids) >= count:
            return ids
        assert time.monotonic() < deadline, f"{path} holds {ids}"
        time.sleep(0.02)


def assert_in_order(stamps: dict[str, int], *names: str) -> None:
    values = [stamps[name] for name in names]
    assert values == sorted(values), dict(zip(names, values, strict=True))


def by_request_id(traces: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["header"].get("request_id", ""): t for t in traces.values() if "header" in t}


# --- settings --------------------------------------------------------------------------------

INITIAL = {
    "trace_level": ["TIMESTAMPS"],
    "trace_rate": "1",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_mode": "triton",
}
CLEAR = {"trace_level": None, "trace_rate": None, "trace_count": None, "log_frequency": None}


@pytest.fixture(scope="module")
def traced(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Path]]:
    folder = tmp_path_factory.mktemp("traced")
    path = folder / "global.json"
    flags = file_flags(path, "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1")
    with serving(repo, folder / "server.log", *flags) as server:
        yield server, path


@pytest.fixture
def settings_server(traced: tuple[RunningServer, Path]) -> Iterator[RunningServer]:
    """The traced server; every setting cleared afterwards (as Triton's own test does)."""
    server, _ = traced
    yield server
    client = server.client()
    client.update_trace_settings(model_name="add_sub", settings=CLEAR)
    client.update_trace_settings(settings=CLEAR)


def initial(path: Path) -> dict[str, Any]:
    return {**INITIAL, "trace_file": str(path)}


def test_trace_is_an_extension(settings_server: RunningServer) -> None:
    extensions = settings_server.client().get_server_metadata()["extensions"]
    assert extensions.index("statistics") + 1 == extensions.index("trace")
    assert extensions.index("trace") + 1 == extensions.index("logging")


def test_settings_read_over_http_and_grpc(
    settings_server: RunningServer, traced: tuple[RunningServer, Path]
) -> None:
    expected = initial(traced[1])
    client = settings_server.client()
    assert client.get_trace_settings() == expected
    assert client.get_trace_settings(model_name="add_sub") == expected
    gclient = grpcclient.InferenceServerClient(settings_server.grpc_url)
    for model in ("", "add_sub"):
        settings = gclient.get_trace_settings(model_name=model, as_json=True)["settings"]
        as_lists = {key: value["value"] for key, value in settings.items()}
        assert as_lists == {key: v if isinstance(v, list) else [v] for key, v in expected.items()}


def test_global_update_reaches_models_without_their_own_value(
    settings_server: RunningServer, traced: tuple[RunningServer, Path]
) -> None:
    client = settings_server.client()
    both = {**initial(traced[1]), "trace_level": ["TIMESTAMPS", "TENSORS"]}
    assert client.update_trace_settings(settings={"trace_level": ["TENSORS", "TIMESTAMPS"]}) == both
    assert client.get_trace_settings(model_name="add_sub") == both
    own = client.update_trace_settings(model_name="add_sub", settings={"log_frequency": "2"})
    assert own == {**both, "log_frequency": "2"}
    client.update_trace_settings(settings={"trace_rate": "7", "log_frequency": "5"})
    assert client.get_trace_settings(model_name="add_sub") == {
        **both,
        "trace_rate": "7",
        "log_frequency": "2",
    }
    assert client.get_trace_settings(model_name="identity")["log_frequency"] == "5"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_clearing_returns_to_the_global_then_default_values(
    settings_server: RunningServer, traced: tuple[RunningServer, Path], protocol: str
) -> None:
    """Triton's own scenario: model and global values set, then cleared in turn."""
    if protocol == "http":
        client: Any = settings_server.client()
        read = client.get_trace_settings
    else:
        client = grpcclient.InferenceServerClient(settings_server.grpc_url)

        def read(**kwargs: Any) -> dict[str, Any]:
            settings = client.get_trace_settings(as_json=True, **kwargs)["settings"]
            return {
                k: v["value"] if k == "trace_level" else v["value"][0] for k, v in settings.items()
            }

    client.update_trace_settings(
        model_name="add_sub", settings={"trace_rate": "12", "log_frequency": "34"}
    )
    client.update_trace_settings(
        settings={"trace_rate": "56", "trace_count": "78", "trace_level": ["OFF"]}
    )
    base = {**initial(traced[1]), "trace_level": ["OFF"]}
    client.update_trace_settings(settings={"trace_rate": None, "trace_count": None})
    assert read() == base
    assert read(model_name="add_sub") == {**base, "trace_rate": "12", "log_frequency": "34"}
    client.update_trace_settings(
        model_name="add_sub", settings={"trace_rate": None, "trace_level": None}
    )
    assert read(model_name="add_sub") == {**base, "log_frequency": "34"}
    assert read() == base


#: (body, status, error): what tritonserver 2.51 answers (its JSON parser words a bad
#: document its own way: only the prefix is the same).
HTTP_BAD = [
    ("", 500, "failed to parse the request JSON buffer: The document is empty. at 0"),
    ("{", 500, "failed to parse the request JSON buffer: "),
    (
        '{"trace_file": "/tmp/x.json"}',
        501,
        "trace file location can not be updated through network protocol",
    ),
    (
        '{"trace_file": null}',
        501,
        "trace file location can not be updated through network protocol",
    ),
    ('{"trace_level": "TIMESTAMPS"}', 500, "attempt to access JSON non-array as array"),
    ('{"trace_level": [1]}', 500, "attempt to access JSON non-string as string"),
    (
        '{"trace_level": ["OFF", "TIMESTAMPS"]}',
        400,
        "Expect only one trace level 'OFF' is specified",
    ),
    ('{"trace_rate": "abc"}', 400, "Unable to parse 'trace_rate', got: abc"),
    ('{"trace_rate": 5}', 500, "attempt to access JSON non-string as string"),
    (
        '{"trace_rate": "10000000000"}',
        400,
        "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: 10000000000",
    ),
    (
        '{"trace_rate": "0"}',
        400,
        "Attempting to set invalid trace setting :sample rate must be non-zero",
    ),
    ('{"trace_count": "-2"}', 400, "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
    ('{"trace_count": "abc"}', 400, "Unable to parse 'trace_count', got: abc"),
    (
        '{"trace_count": "10000000000"}',
        400,
        "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ], got: 10000000000",
    ),
    ('{"trace_count": "0"}', 400, "Attempting to set invalid trace setting :"),
    ('{"log_frequency": "abc"}', 400, "Unable to parse 'log_frequency', got: abc"),
    ('{"trace_rate": "3", "trace_count": "abc"}', 400, "Unable to parse 'trace_count', got: abc"),
]


@pytest.mark.parametrize(("body", "status", "error"), HTTP_BAD)
def test_http_bad_settings(
    settings_server: RunningServer,
    traced: tuple[RunningServer, Path],
    body: str,
    status: int,
    error: str,
) -> None:
    url = f"http://{settings_server.url}/v2/trace/setting"
    reply = requests.post(url, data=body, timeout=10)
    assert reply.status_code == status
    if body == "{":  # the JSON parser's own words differ from RapidJSON's
        assert reply.json()["error"].startswith(error)
    else:
        assert reply.json()["error"] == error
    assert requests.get(url, timeout=10).json() == initial(traced[1])  # nothing changed


def test_http_lenient_values_as_triton_reads_them(settings_server: RunningServer) -> None:
    """C's strtol reads a number's prefix; unknown levels, keys and a non-object body change
    nothing; a negative rate wraps to 32 bits."""
    url = f"http://{settings_server.url}/v2/trace/setting"
    for body, key, value in [
        ('{"trace_rate": "7abc"}', "trace_rate", "7"),
        ('{"trace_rate": " 8"}', "trace_rate", "8"),
        ('{"trace_rate": "1.5"}', "trace_rate", "1"),
        ('{"trace_rate": "-1"}', "trace_rate", "4294967295"),
        ('{"log_frequency": "-3"}', "log_frequency", "4294967293"),
        ('{"trace_level": ["FOO"]}', "trace_level", ["TIMESTAMPS"]),
        ('{"trace_level": []}', "trace_level", ["TIMESTAMPS"]),
        ('{"trace_mode": "opentelemetry", "foo": "1"}', "trace_mode", "triton"),
        ("[1]", "trace_mode", "triton"),
    ]:
        reply = requests.post(url, data=body, timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.json()[key] == value, body


def test_unknown_model(settings_server: RunningServer) -> None:
    client = settings_server.client()
    gclient = grpcclient.InferenceServerClient(settings_server.grpc_url)
    for call in (
        lambda: client.get_trace_settings(model_name="nope"),
        lambda: client.update_trace_settings(model_name="nope", settings={"trace_rate": "2"}),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "400"
        assert info.value.message() == "Request for unknown model : nope"
    with pytest.raises(InferenceServerException) as info:
        gclient.update_trace_settings(model_name="nope", settings={"trace_rate": "2"})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == "Request for unknown model : nope"
    versioned = requests.get(
        f"http://{settings_server.url}/v2/models/add_sub/versions/1/trace/setting"
    )
    assert versioned.status_code == 404


GRPC_BAD = [
    (
        {"trace_file": "x"},
        "UNIMPLEMENTED",
        "trace file location can not be updated through network protocol",
    ),
    (
        {"trace_file": None},
        "UNIMPLEMENTED",
        "trace file location can not be updated through network protocol",
    ),
    (
        {"trace_level": ["OFF", "TIMESTAMPS"]},
        "INVALID_ARGUMENT",
        "Expect only one trace level 'OFF' is specified",
    ),
    ({"trace_rate": "abc"}, "INVALID_ARGUMENT", "Unable to parse 'trace_rate', got: abc"),
    ({"trace_rate": ["1", "2"]}, "INVALID_ARGUMENT", "expect only 1 value for 'trace_rate'"),
    (
        {"trace_rate": "10000000000"},
        "INVALID_ARGUMENT",
        "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: 10000000000",
    ),
    (
        {"trace_rate": "0"},
        "INVALID_ARGUMENT",
        "Attempting to set invalid trace setting :sample rate must be non-zero",
    ),
    (
        {"trace_count": "-2"},
        "INVALID_ARGUMENT",
        "Unable to parse 'trace_count'. Expecting value >= -1, got: -2",
    ),
    ({"trace_count": ["1", "2"]}, "INVALID_ARGUMENT", "expect only 1 value for 'trace_count'"),
    ({"log_frequency": "abc"}, "INVALID_ARGUMENT", "Unable to parse 'log_frequency', got: abc"),
    (
        {"log_frequency": "10000000000"},
        "INVALID_ARGUMENT",
        "Unable to parse 'log_frequency', value is out of range [ 0, 4294967295 ], got: "
        "10000000000",
    ),
]


@pytest.mark.parametrize(("settings", "code", "error"), GRPC_BAD)
def test_grpc_bad_settings(
    settings_server: RunningServer, settings: dict[str, Any], code: str, error: str
) -> None:
    gclient = grpcclient.InferenceServerClient(settings_server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        gclient.update_trace_settings(settings=settings)
    assert info.value.status() == f"StatusCode.{code}"
    assert info.value.message() == error
    unchanged = gclient.get_trace_settings(as_json=True)["settings"]
    assert unchanged["trace_rate"]["value"] == ["1"]


def test_grpc_model_setting_cleared_by_an_empty_value(settings_server: RunningServer) -> None:
    gclient = grpcclient.InferenceServerClient(settings_server.grpc_url)
    settings = gclient.update_trace_settings(
        model_name="add_sub", settings={"trace_rate": "4"}, as_json=True
    )
    assert settings["settings"]["trace_rate"]["value"] == ["4"]
    assert gclient.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1"]
    settings = gclient.update_trace_settings(
        model_name="add_sub", settings={"trace_rate": None}, as_json=True
    )
    assert settings["settings"]["trace_rate"]["value"] == ["1"]


def test_no_trace_file_refuses_to_trace(repo: Path, tmp_path: Path) -> None:
    """Without ``triton,file=`` any level but OFF is refused, globally and per model."""
    error = "Attempting to set invalid trace setting :trace file name is not given"
    with serving(repo, tmp_path / "server.log") as server:
        client = server.client()
        assert client.get_trace_settings() == {
            "trace_level": ["OFF"],
            "trace_rate": "1000",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_file": "",
            "trace_mode": "triton",
        }
        for model in (None, "add_sub"):
            with pytest.raises(InferenceServerException) as info:
                client.update_trace_settings(
                    model_name=model, settings={"trace_level": ["TIMESTAMPS"]}
                )
            assert info.value.status() == "400"
            assert info.value.message() == error
        assert client.update_trace_settings(settings={"trace_rate": "5"})["trace_rate"] == "5"


# --- trace files -------------------------------------------------------------------------------


def test_timestamps_of_http_grpc_stream_and_ensemble_requests(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    flags = file_flags(path, "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1")
    with serving(repo, tmp_path / "server.log", *flags) as server:
        add_sub_http(server.client(), "http-1")
        gclient = grpcclient.InferenceServerClient(server.grpc_url)
        gclient.infer("add_sub", grpc_inputs(("INPUT0", A), ("INPUT1", B)), request_id="grpc-1")
        server.client().infer("ens", http_inputs(("A", A), ("B", B)), request_id="ens-1")
        responses: queue.Queue[Any] = queue.Queue()
        gclient.start_stream(callback=lambda result, error: responses.put((result, error)))
        gclient.async_stream_infer(
            "repeat", grpc_inputs(("INPUT0", np.ones(1, np.float32))), request_id="stream-1"
        )
        assert [responses.get(timeout=30)[1] for _ in range(2)] == [None, None]
        gclient.stop_stream()
    traces = read_traces(path)
    named = by_request_id(traces)
    ids = sorted(traces)
    assert ids == list(range(1, len(ids) + 1))
    model_stamps = ["REQUEST_START", "QUEUE_START", *COMPUTE, "REQUEST_END"]

    http = named["http-1"]
    assert http["header"] == {
        "id": http["header"]["id"],
        "model_name": "add_sub",
        "model_version": 1,
        "request_id": "http-1",
    }
    assert_in_order(
        http["stamps"],
        "HTTP_RECV_START",
        "HTTP_RECV_END",
        *model_stamps,
        "HTTP_SEND_START",
        "HTTP_SEND_END",
    )
    assert_in_order(http["stamps"], "COMPUTE_START", "INFER_RESPONSE_COMPLETE", "REQUEST_END")

    grpc_trace = named["grpc-1"]
    assert_in_order(grpc_trace["stamps"], "GRPC_WAITREAD_START", "GRPC_WAITREAD_END", *model_stamps)
    assert_in_order(
        grpc_trace["stamps"], "INFER_RESPONSE_COMPLETE", "GRPC_SEND_START", "GRPC_SEND_END"
    )

    stream = named["stream-1"]
    assert stream["names"].count("GRPC_SEND_START") == 2  # one per response sent
    assert_in_order(
        stream["stamps"], "GRPC_WAITREAD_END", "REQUEST_START", "QUEUE_START", "COMPUTE_START"
    )

    ensemble = next(t for t in traces.values() if t.get("header", {}).get("model_name") == "ens")
    ensemble_id = ensemble["header"]["id"]
    assert not set(COMPUTE) & set(ensemble["stamps"])  # an ensemble computes nothing itself
    assert_in_order(
        ensemble["stamps"],
        "HTTP_RECV_END",
        "REQUEST_START",
        "QUEUE_START",
        "INFER_RESPONSE_COMPLETE",
        "REQUEST_END",
        "HTTP_SEND_START",
    )
    steps = [t for t in traces.values() if t.get("header", {}).get("parent_id") == ensemble_id]
    assert sorted(t["header"]["model_name"] for t in steps) == ["add_sub", "identity"]
    for step in steps:
        assert step["header"]["request_id"] == "ens-1"
        assert_in_order(step["stamps"], *model_stamps)
        assert "INFER_RESPONSE_COMPLETE" not in step["stamps"]
        assert ensemble["stamps"]["REQUEST_START"] <= step["stamps"]["REQUEST_START"]
        assert step["stamps"]["REQUEST_END"] <= ensemble["stamps"]["REQUEST_END"]


def test_rate_count_and_log_frequency_rotation(repo: Path, tmp_path: Path) -> None:
    """Every 2nd request, 3 at most; every 2 traces a new ``<file>.<n>``; the rest at exit."""
    path = tmp_path / "trace.json"
    flags = file_flags(
        path,
        "--trace-config=triton,log-frequency=2",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=2",
        "--trace-config=count=3",
    )
    with serving(repo, tmp_path / "server.log", *flags) as server:
        client = server.client()
        for n in range(1, 5):
            add_sub_http(client, f"r{n}")
        assert written(Path(f"{path}.0"), 2) == ["r2", "r4"]  # at the 2nd trace
        for n in range(5, 9):
            add_sub_http(client, f"r{n}")
        assert client.get_trace_settings()["trace_count"] == "0"
    assert list(by_request_id(read_traces(Path(f"{path}.1")))) == ["r6"]
    assert not path.exists() and not Path(f"{path}.2").exists()


def test_count_reaching_zero_writes_an_indexed_file_at_once(repo: Path, tmp_path: Path) -> None:
    """A new count replaces the setting: what the old one held is written to ``<file>``;
    the new one writes ``<file>.0`` as soon as its count is used up."""
    path = tmp_path / "trace.json"
    flags = file_flags(path, "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1")
    with serving(repo, tmp_path / "server.log", *flags) as server:
        client = server.client()
        add_sub_http(client, "before-1")
        add_sub_http(client, "before-2")
        assert client.update_trace_settings(settings={"trace_count": "3"})["trace_count"] == "3"
        assert written(path, 2) == ["before-1", "before-2"]
        for n in range(4):
            add_sub_http(client, f"after-{n}")
        assert written(Path(f"{path}.0"), 3) == ["after-0", "after-1", "after-2"]
        assert client.get_trace_settings(model_name="add_sub")["trace_count"] == "0"
    assert list(by_request_id(read_traces(path))) == ["before-1", "before-2"]


def test_tensors_level(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    flags = file_flags(
        path,
        "--trace-config=level=TENSORS",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
    )
    with serving(repo, tmp_path / "server.log", *flags) as server:
        client = server.client()
        assert client.get_trace_settings()["trace_level"] == ["TIMESTAMPS", "TENSORS"]
        add_sub_http(client, "fp32")
        text = httpclient.InferInput("INPUT0", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"ab", b"c"], dtype=object))
        client.infer("echo_bytes", [text], request_id="bytes")
        client.infer("ens", http_inputs(("A", A), ("B", B)), request_id="ens")
    named = by_request_id(read_traces(path))
    assert named["fp32"]["tensors"] == [
        (
            "TENSOR_QUEUE_INPUT",
            {"name": "INPUT0", "data": "0,1,2,3", "shape": "4", "dtype": "FP32"},
        ),
        (
            "TENSOR_QUEUE_INPUT",
            {"name": "INPUT1", "data": "1,1,1,1", "shape": "4", "dtype": "FP32"},
        ),
        (
            "TENSOR_BACKEND_OUTPUT",
            {"name": "OUTPUT0", "data": "1,2,3,4", "shape": "4", "dtype": "FP32"},
        ),
        (
            "TENSOR_BACKEND_OUTPUT",
            {"name": "OUTPUT1", "data": "-1,0,1,2", "shape": "4", "dtype": "FP32"},
        ),
    ]
    assert named["bytes"]["tensors"][0] == (
        "TENSOR_QUEUE_INPUT",
        {"name": "INPUT0", "data": '"ab","c"', "shape": "2", "dtype": "BYTES"},
    )
    assert named["ens"]["tensors"][-1] == (
        "TENSOR_BACKEND_OUTPUT",
        {"name": "OUT", "data": "1,2,3,4", "shape": "4", "dtype": "FP32"},
    )


def test_model_setting_traces_only_that_model(repo: Path, tmp_path: Path) -> None:
    """Tracing off globally, on for one model over gRPC, then cleared back to off."""
    path = tmp_path / "trace.json"
    flags = file_flags(path, "--trace-config=rate=1")
    with serving(repo, tmp_path / "server.log", *flags) as server:
        client = server.client()
        gclient = grpcclient.InferenceServerClient(server.grpc_url)
        gclient.update_trace_settings(
            model_name="identity", settings={"trace_level": ["TIMESTAMPS"]}
        )
        assert client.get_trace_settings()["trace_level"] == ["OFF"]
        for n in range(2):
            add_sub_http(client, f"add-{n}")
            client.infer("identity", http_inputs(("INPUT0", A)), request_id=f"identity-{n}")
        gclient.update_trace_settings(model_name="identity", settings={"trace_level": None})
        client.infer("identity", http_inputs(("INPUT0", A)), request_id="identity-off")
    assert sorted(by_request_id(read_traces(path))) == ["identity-0", "identity-1"]


def test_trace_file_in_a_missing_folder(repo: Path, tmp_path: Path) -> None:
    """tritonserver starts and loses such traces silently; this server says so once and
    keeps serving. The file cannot be changed over the network."""
    path = tmp_path / "missing" / "trace.json"
    flags = file_flags(path, "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1")
    with serving(repo, tmp_path / "server.log", *flags) as server:
        client = server.client()
        assert client.get_trace_settings()["trace_file"] == str(path)
        add_sub_http(client)
        with pytest.raises(InferenceServerException) as info:
            client.update_trace_settings(settings={"trace_file": str(tmp_path / "trace.json")})
        assert info.value.status() == "501"
        assert (
            info.value.message()
            == "trace file location can not be updated through network protocol"
        )
    assert "does not exist: no trace will be written" in server.log()
    assert not path.parent.exists()


@pytest.mark.parametrize(
    ("flag", "error"),
    [
        (
            "level=FOO",
            'Bad option: "--trace-config level".\ninvalid value for trace level option: foo',
        ),
        ("rate=abc", 'Bad option: "--trace-config rate".\nInvalid option value. Got abc'),
        (
            "rate=10000000000",
            'Bad option: "--trace-config rate".\n'
            "Provided option value is out of bound. Got 10000000000",
        ),
        (
            "foo",
            'Bad option: "--trace-config".\n'
            "--trace-config option format is '<trace mode>,<setting>=<value>'. Got foo",
        ),
        (
            ",rate=1",
            'Bad option: "--trace-config".\nNo trace mode specified. --trace-config option format '
            "is <trace mode>,<setting>=<value> or <setting>=<value>. Got ,rate=1",
        ),
        (
            "bar,rate=1",
            'Bad option: "--trace-config".\ninvalid value for trace mode option: bar. Available '
            'options are "triton" and "opentelemetry"',
        ),
        (
            "triton,log-frequency=x",
            'Bad option: "--trace-config triton,log-frequency".\nInvalid option value. Got x',
        ),
    ],
)
def test_bad_trace_config_flag(flag: str, error: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "triton_kernel.kernel.cli",
        "serve",
        f"--model-repository={tmp_path}",
    ]
    done = subprocess.run(
        [*command, f"--trace-config={flag}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"triton-kernel: error: {error}\n" in done.stderr


# --- OpenTelemetry ---------------------------------------------------------------------------


class Receiver:
    """An OTLP/HTTP endpoint on loopback: ``/v1/traces`` protobuf bodies, decoded."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, str, ExportTraceServiceRequest]] = queue.Queue()
        handler = partial(_ReceiverHandler, self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.resources: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []

    def collect(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` more spans arrived; return them."""
        start = len(self.spans)
        while len(self.spans) < start + count:
            path, content_type, message = self.requests.get(timeout=30)
            assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
            for resource_spans in message.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.resources.append(attributes)
                        self.spans.append(_span(scope_spans.scope.name, span))
        return self.spans[start:]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ReceiverHandler(BaseHTTPRequestHandler):
    def __init__(self, receiver: Receiver, *args: Any) -> None:
        self.receiver = receiver
        super().__init__(*args)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest.FromString(body)
        self.receiver.requests.put((self.path, self.headers["Content-Type"], message))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _span(scope: str, span: Any) -> dict[str, Any]:
    attributes = {}
    for attribute in span.attributes:
        value = attribute.value
        attributes[attribute.key] = (
            value.string_value if value.HasField("string_value") else value.int_value
        )
    return {
        "scope": scope,
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex(),
        "attributes": attributes,
        "events": [event.name for event in span.events],
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
    }


@pytest.fixture(scope="module")
def otel(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Receiver]]:
    receiver = Receiver()
    flags = [
        "--trace-config=mode=opentelemetry",
        f"--trace-config=opentelemetry,url=127.0.0.1:{receiver.port}/v1/traces",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
        "--trace-config=opentelemetry,resource=test.key=test.value",
        "--trace-config=opentelemetry,resource=service.name=test_triton",
        "--trace-config=opentelemetry,bsp_schedule_delay=50",
    ]
    log = tmp_path_factory.mktemp("otel") / "server.log"
    try:
        with serving(repo, log, *flags) as server:
            yield server, receiver
    finally:
        receiver.close()


def tree(spans: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Parent span name -> sorted child span names."""
    names = {span["span_id"]: span["name"] for span in spans}
    children: dict[str, list[str]] = {}
    for span in spans:
        if span["parent"] in names:
            children.setdefault(names[span["parent"]], []).append(span["name"])
    return {parent: sorted(kids) for parent, kids in children.items()}


def check_events(spans: list[dict[str, Any]], frontend: str) -> None:
    reads = {
        "HTTP": ["HTTP_RECV_START", "HTTP_RECV_END"],
        "GRPC": ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END"],
    }
    for span in spans:
        assert span["kind"] == 2  # SERVER
        assert span["scope"] == "triton-server"
        if span["name"] == "InferRequest":
            expected = [
                *reads[frontend],
                "INFER_RESPONSE_COMPLETE",
                f"{frontend}_SEND_START",
                f"{frontend}_SEND_END",
            ]
            assert span["events"] == expected
        elif span["name"] == "compute":
            assert span["events"] == COMPUTE
        else:
            assert span["events"] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
        assert span["start"] <= span["end"]


def test_otel_settings(otel: tuple[RunningServer, Receiver]) -> None:
    server, receiver = otel
    settings = server.client().get_trace_settings(model_name="add_sub")
    assert settings == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "1",
        "trace_count": "-1",
        "trace_mode": "opentelemetry",
        "url": f"127.0.0.1:{receiver.port}/v1/traces",
        "resource": "service.name=test_triton",
        "bsp_schedule_delay": "50",
        "bsp_max_export_batch_size": "512",
        "bsp_max_queue_size": "2048",
    }
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    resources = gclient.get_trace_settings(as_json=True)["settings"]["resource"]["value"]
    assert resources == ["test.key=test.value", "service.name=test_triton"]


def test_otel_http_request_spans(otel: tuple[RunningServer, Receiver]) -> None:
    server, receiver = otel
    add_sub_http(server.client(), "otel-http")
    spans = receiver.collect(3)
    assert sorted(span["name"] for span in spans) == ["InferRequest", "add_sub", "compute"]
    assert len({span["trace_id"] for span in spans}) == 1
    assert tree(spans) == {"InferRequest": ["add_sub"], "add_sub": ["compute"]}
    root = next(span for span in spans if span["name"] == "InferRequest")
    assert root["parent"] == ""
    model = next(span for span in spans if span["name"] == "add_sub")
    assert model["attributes"] == {
        "triton.model_name": "add_sub",
        "triton.model_version": 1,
        "triton.trace_id": model["attributes"]["triton.trace_id"],
        "triton.trace_parent_id": 0,
        "triton.request_id": "otel-http",
    }
    check_events(spans, "HTTP")
    resource = receiver.resources[-1]
    assert resource["service.name"] == "test_triton"
    assert resource["test.key"] == "test.value"


def test_otel_ensemble_spans_nest(otel: tuple[RunningServer, Receiver]) -> None:
    server, receiver = otel
    server.client().infer("ens", http_inputs(("A", A), ("B", B)))
    spans = receiver.collect(6)
    assert tree(spans) == {
        "InferRequest": ["ens"],
        "ens": ["add_sub", "identity"],
        "add_sub": ["compute"],
        "identity": ["compute"],
    }
    check_events(spans, "HTTP")
    ensemble = next(span for span in spans if span["name"] == "ens")
    for step in (span for span in spans if span["name"] in ("add_sub", "identity")):
        assert (
            step["attributes"]["triton.trace_parent_id"]
            == ensemble["attributes"]["triton.trace_id"]
        )


def test_otel_grpc_context_propagation(otel: tuple[RunningServer, Receiver]) -> None:
    """A request carrying ``traceparent`` continues the client's trace."""
    server, receiver = otel
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    gclient.infer(
        "add_sub", grpc_inputs(("INPUT0", A), ("INPUT1", B)), headers={"traceparent": TRACEPARENT}
    )
    spans = receiver.collect(3)
    _, trace_id, parent, _ = TRACEPARENT.split("-")
    assert {span["trace_id"] for span in spans} == {trace_id}
    root = next(span for span in spans if span["name"] == "InferRequest")
    assert root["parent"] == parent
    check_events(spans, "GRPC")


def test_otel_context_is_traced_whatever_the_rate(otel: tuple[RunningServer, Receiver]) -> None:
    server, receiver = otel
    client = server.client()
    client.update_trace_settings(settings={"trace_rate": "1000"})
    try:
        for _ in range(3):
            add_sub_http(client)  # the 1st..3rd of 1000: not sampled
        client.infer(
            "add_sub",
            http_inputs(("INPUT0", A), ("INPUT1", B)),
            headers={"traceparent": TRACEPARENT},
        )
        spans = receiver.collect(3)
        assert {span["trace_id"] for span in spans} == {TRACEPARENT.split("-")[1]}
    finally:
        client.update_trace_settings(settings={"trace_rate": None})
