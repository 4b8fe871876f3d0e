"""The metrics frontend: Triton's families on ``/metrics``, derived from the statistics,
and the Python backend's custom metrics (``pb_utils.MetricFamily``).

Expected texts are tritonserver 2.51's (``/work/notes/triton_metrics_reference.md``).
Requests that must wait in a queue are held by a gate: the model blocks while the file
its ``gate`` parameter names does not exist, so nothing here depends on timing.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, free_port, start_server, write_model

GATED = """
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Echoes IN; raises on a negative first element; with a 'gate' parameter, waits
    until that file exists.\"\"\"

    def execute(self, requests):
        responses = []
        for request in requests:
            gate = json.loads(request.parameters()).get("gate")
            deadline = time.monotonic() + 30
            while gate and not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if data.size and data.flat[0] < 0:
                raise ValueError("negative input")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", data)]))
        return responses
"""

CUSTOM = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Runs the custom-metric commands of CMD (a JSON list) and answers each outcome.\"\"\"

    def initialize(self, args):
        family = pb_utils.MetricFamily(
            name="mx_instances", description="Instances initialized",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.initialized = family.Metric(labels={"model": args["model_name"]})
        self.initialized.increment(1)
        self.keep = {"family": family}
        self.objects = {}

    def run(self, command):
        op = command["op"]
        if op == "family":
            kind = command["kind"]
            if kind in ("COUNTER", "GAUGE", "HISTOGRAM"):
                kind = getattr(pb_utils.MetricFamily, kind)
            self.objects[command["id"]] = pb_utils.MetricFamily(
                name=command["name"], description=command["description"], kind=kind
            )
        elif op == "metric":
            args = {key: command[key] for key in ("labels", "buckets") if key in command}
            self.objects[command["id"]] = self.objects[command["family"]].Metric(**args)
        elif op == "drop":
            del self.objects[command["id"]]
        elif op == "value":
            return self.objects[command["id"]].value()
        else:
            getattr(self.objects[command["id"]], op)(command["value"])
        return None

    def execute(self, requests):
        responses = []
        for request in requests:
            commands = json.loads(pb_utils.get_input_tensor_by_name(request, "CMD").as_numpy()[0])
            results = []
            for command in commands:
                try:
                    results.append({"ok": self.run(command)})
                except Exception as exc:
                    results.append({"error": type(exc).__name__, "message": str(exc)})
            out = np.array([json.dumps(results).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RES", out)]))
        return responses
"""

SHARED = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Each instance adds 1 to the same counter (same family, same labels).\"\"\"

    def initialize(self, args):
        self.family = pb_utils.MetricFamily(
            "mx_shared_total", "Shared across instances", pb_utils.MetricFamily.COUNTER
        )
        self.metric = self.family.Metric(labels={"model": args["model_name"]})
        self.metric.increment(1)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""


def _io_config(name: str, extra: str = "", max_batch_size: int = 0) -> str:
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        {extra}
    """


def _queue_config(name: str, policy: str) -> str:
    return _io_config(
        name,
        f"""
        instance_group [ {{ count: 1, kind: KIND_CPU }} ]
        dynamic_batching {{ default_queue_policy {{ {policy} }} }}
        """,
        max_batch_size=1,
    )


CUSTOM_CONFIG = """
    name: "mx_custom"
    backend: "python"
    max_batch_size: 0
    input [ { name: "CMD" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [ { name: "RES" data_type: TYPE_STRING dims: [ 1 ] } ]
    instance_group [ { count: 1, kind: KIND_CPU } ]
"""

SHARED_CONFIG = """
    name: "mx_shared"
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
    instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def _repository(root: Path) -> Path:
    write_model(root, "mx_ident", _io_config("mx_ident"), GATED)
    write_model(root, "mx_timeout", _queue_config("mx_timeout", _TIMEOUT_POLICY), GATED)
    write_model(root, "mx_full", _queue_config("mx_full", "max_queue_size: 1"), GATED)
    write_model(root, "mx_custom", CUSTOM_CONFIG, CUSTOM)
    write_model(root, "mx_shared", SHARED_CONFIG, SHARED)
    return root


_TIMEOUT_POLICY = "timeout_action: REJECT default_timeout_microseconds: 100000"


class MetricsServer:
    """A running server with its metrics URL."""

    def __init__(self, running: RunningServer, metrics_port: int) -> None:
        self.running = running
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"

    def text(self, path: str = "/metrics") -> str:
        reply = requests.get(self.metrics_url + path, timeout=10)
        assert reply.status_code == 200
        return reply.text

    def families(self) -> dict[str, Any]:
        return {f.name: f for f in text_string_to_metric_families(self.text())}

    def value(self, line_prefix: str) -> float:
        """The value of the one sample whose line starts with ``line_prefix``."""
        (line,) = [ln for ln in self.text().splitlines() if ln.startswith(line_prefix + " ")]
        return float(line.rsplit(" ", 1)[1])


def _start(tmp: Path, *flags: str, repository: Path | None = None) -> MetricsServer:
    port = free_port()
    running = start_server(
        repository if repository is not None else _repository(tmp / "repo"),
        "--model-control-mode=explicit",
        "--load-model=*",
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={port}",
        *flags,
        log_path=tmp / "server.log",
    )
    with running.client() as client:
        deadline = time.monotonic() + 30
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
    return MetricsServer(running, port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    started = _start(tmp_path_factory.mktemp("metrics"), "--metrics-interval-ms=100")
    yield started
    assert started.running.stop() == 0, started.running.log()


@pytest.fixture
def http(server: MetricsServer) -> Iterator[httpclient.InferenceServerClient]:
    with server.running.client() as client:
        yield client


def _inputs(module: Any, data: np.ndarray) -> list[Any]:
    tensor = module.InferInput("IN", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def _stats(http: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    (stats,) = http.get_inference_statistics(model)["model_stats"]
    return stats


def _labels(model: str) -> str:
    return f'{{model="{model}",version="1"}}'


# --- Triton's families, derived from the statistics ------------------------------------

HELP = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)"
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds (includes cached requests)"
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds (includes cached requests)"
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds (does not include cached requests)"
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds (does not include cached requests)"
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)"
    ),
    "nv_inference_pending_request_count": (
        "Instantaneous number of pending requests awaiting execution per-model."
    ),
    "nv_cpu_utilization": "CPU utilization rate [0.0 - 1.0]",
    "nv_cpu_memory_total_bytes": "CPU total memory (RAM), in bytes",
    "nv_cpu_memory_used_bytes": "CPU used memory (RAM), in bytes",
}
COUNTERS = [name for name in HELP if not name.startswith(("nv_cpu", "nv_inference_pending"))]


def test_families_in_tritons_order_with_its_help_and_types(server: MetricsServer) -> None:
    text = server.text()
    headers = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    names = [name for name, _ in headers if name in HELP]
    assert names == list(HELP)  # counters, then gauges, as prometheus-cpp orders them
    for name, kind in headers:
        if name in HELP:
            assert f"# HELP {name} {HELP[name]}\n# TYPE {name} {kind}\n" in text
            expected = "counter" if name in COUNTERS else "gauge"
            assert kind == expected, name
    for model in ("mx_ident", "mx_timeout", "mx_full", "mx_custom", "mx_shared"):
        assert f"nv_inference_request_success{_labels(model)} " in text
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
            line = f'nv_inference_request_failure{{model="{model}",reason="{reason}",version="1"}} '
            assert line in text


def test_values_are_written_as_tritonserver_writes_them(server: MetricsServer, http) -> None:
    http.infer("mx_ident", _inputs(httpclient, np.ones(3, np.float32)))
    text = server.text()
    # none of prometheus-client's own forms: nv_..._total samples, _created samples
    assert not re.search(r"^nv_\w*_total[{ ]", text, re.MULTILINE) and "_created" not in text
    assert 'mx_shared_total{model="mx_shared"} 2\n' in text  # a custom name keeps its _total
    counts = re.findall(r"^nv_inference_count\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert counts and all(re.fullmatch(r"\d+", value) for value in counts)  # 3, not 3.0
    assert text.endswith("\n") and "\n\n" not in text


def test_counters_follow_the_statistics(server: MetricsServer, http) -> None:
    for _ in range(3):
        http.infer("mx_ident", _inputs(httpclient, np.ones(2, np.float32)))
    stats = _stats(http, "mx_ident")
    infer = stats["inference_stats"]
    labels = _labels("mx_ident")
    assert server.value(f"nv_inference_request_success{labels}") == infer["success"]["count"]
    assert server.value(f"nv_inference_count{labels}") == stats["inference_count"]
    assert server.value(f"nv_inference_exec_count{labels}") == stats["execution_count"]
    for family, key in (
        ("request", "success"),
        ("queue", "queue"),
        ("compute_input", "compute_input"),
        ("compute_infer", "compute_infer"),
        ("compute_output", "compute_output"),
    ):
        value = server.value(f"nv_inference_{family}_duration_us{labels}")
        assert value == infer[key]["ns"] // 1000, family


def _failures(server: MetricsServer, model: str) -> dict[str, float]:
    return {
        reason: server.value(
            f'nv_inference_request_failure{{model="{model}",reason="{reason}",version="1"}}'
        )
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    }


def test_failed_execution_counts_as_backend_failure(server: MetricsServer, http) -> None:
    before = _failures(server, "mx_ident")
    with pytest.raises(InferenceServerException):
        http.infer("mx_ident", _inputs(httpclient, np.array([-1.0], np.float32)))
    after = _failures(server, "mx_ident")
    assert {k: after[k] - before[k] for k in after} == {
        "REJECTED": 0,
        "CANCELED": 0,
        "BACKEND": 1,
        "OTHER": 0,
    }
    stats = _stats(http, "mx_ident")
    assert stats["inference_stats"]["fail"]["count"] == sum(after.values())


def _infer_later(client: Any, model: str, **kwargs: Any) -> Any:
    return client.async_infer(model, _inputs(httpclient, np.ones((1, 1), np.float32)), **kwargs)


def _wait_for(read: Any, wanted: Any) -> Any:
    """Poll ``read()`` until it returns ``wanted`` (or 10 s pass); return the last value."""
    deadline = time.monotonic() + 10
    value = read()
    while value != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def test_timeout_in_the_queue_counts_as_rejected(server: MetricsServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    before = _failures(server, "mx_timeout")
    started = _dispatched(server, "mx_timeout") + 1
    with server.running.client(concurrency=4) as client:
        blocker = _infer_later(client, "mx_timeout", parameters={"gate": str(gate)})
        pending = _labels("mx_timeout")
        assert _wait_for(lambda: _dispatched(server, "mx_timeout"), started) == started
        late = [_infer_later(client, "mx_timeout") for _ in range(2)]
        for request in late:
            with pytest.raises(InferenceServerException) as info:
                request.get_result()
            assert info.value.message() == "Request timeout expired"
        gate.touch()
        blocker.get_result()
    after = _failures(server, "mx_timeout")
    assert after["REJECTED"] - before["REJECTED"] == 2
    assert server.value(f"nv_inference_pending_request_count{pending}") == 0


def _dispatched(server: MetricsServer, model: str) -> int:
    """Requests of ``model`` that left its queue for an instance (statistics' queue count)."""
    with server.running.client() as client:
        return _stats(client, model)["inference_stats"]["queue"]["count"]


def test_pending_requests_and_a_full_queue(server: MetricsServer, tmp_path: Path) -> None:
    """One request runs (held), one waits (pending), one is refused: a full queue is not
    counted as a failure, as in Triton."""
    gate = tmp_path / "gate"
    started = _dispatched(server, "mx_full") + 1
    before = _failures(server, "mx_full")
    pending = f"nv_inference_pending_request_count{_labels('mx_full')}"
    with server.running.client(concurrency=4) as client:
        blocker = _infer_later(client, "mx_full", parameters={"gate": str(gate)})
        assert _wait_for(lambda: _dispatched(server, "mx_full"), started) == started
        waiting = _infer_later(client, "mx_full")
        assert _wait_for(lambda: server.value(pending), 1) == 1
        with pytest.raises(InferenceServerException) as info:
            _infer_later(client, "mx_full").get_result()
        assert info.value.message() == "[request id: <id_unknown>] Exceeds maximum queue size"
        gate.touch()
        blocker.get_result()
        waiting.get_result()
    assert server.value(pending) == 0
    assert _failures(server, "mx_full") == before


def test_a_cancelled_queued_request_counts_as_canceled(
    server: MetricsServer, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    started = _dispatched(server, "mx_full") + 1
    before = _failures(server, "mx_full")
    pending = f"nv_inference_pending_request_count{_labels('mx_full')}"
    with (
        server.running.client(concurrency=2) as client,
        grpcclient.InferenceServerClient(server.running.grpc_url) as grpc,
    ):
        blocker = _infer_later(client, "mx_full", parameters={"gate": str(gate)})
        assert _wait_for(lambda: _dispatched(server, "mx_full"), started) == started
        outcomes: list[Any] = []
        call = grpc.async_infer(
            "mx_full",
            _inputs(grpcclient, np.ones((1, 1), np.float32)),
            callback=lambda result, error: outcomes.append(error),
        )
        assert _wait_for(lambda: server.value(pending), 1) == 1
        call.cancel()
        assert _wait_for(lambda: server.value(pending), 0) == 0
        gate.touch()
        blocker.get_result()
    after = _failures(server, "mx_full")
    assert after["CANCELED"] - before["CANCELED"] == 1
    assert sum(after.values()) - sum(before.values()) == 1


def test_cpu_metrics_are_sampled(server: MetricsServer) -> None:
    families = server.families()
    utilization = families["nv_cpu_utilization"].samples[0].value
    total = families["nv_cpu_memory_total_bytes"].samples[0].value
    used = families["nv_cpu_memory_used_bytes"].samples[0].value
    assert 0.0 <= utilization <= 1.0
    assert 0 < used < total
    assert families["nv_cpu_utilization"].type == "gauge"


def _nvml_gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0


@pytest.mark.skipif(_nvml_gpus() > 0, reason="this machine has a GPU: see tests/gpu")
def test_no_gpu_families_without_a_gpu(server: MetricsServer) -> None:
    assert not [name for name in server.families() if name.startswith("nv_gpu")]
    assert "nv_energy_consumption" not in server.text()


# --- the endpoint --------------------------------------------------------------------------


def test_metrics_path_with_a_trailing_slash_and_a_query(server: MetricsServer) -> None:
    for path in ("/metrics/", "/metrics?name=x"):
        reply = requests.get(server.metrics_url + path, timeout=10)
        assert reply.status_code == 200
        assert "# TYPE nv_inference_request_success counter" in reply.text
        assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/x", "/v2/health/ready"])
def test_any_other_path_is_an_empty_answer(server: MetricsServer, path: str) -> None:
    """tritonserver answers 200 with an empty body (it does not say 404)."""
    reply = requests.get(server.metrics_url + path, timeout=10)
    assert (reply.status_code, reply.text) == (200, "")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_any_other_method_is_not_allowed(server: MetricsServer, method: str) -> None:
    reply = requests.request(method, server.metrics_url + "/metrics", timeout=10)
    assert reply.status_code == 405
    if method != "HEAD":
        assert reply.text == '{"error":"Method Not Allowed"}'


# --- custom metrics (pb_utils.MetricFamily) ------------------------------------------------


def _commands(http: httpclient.InferenceServerClient, *commands: dict[str, Any]) -> list[Any]:
    data = np.array([json.dumps(commands).encode()], dtype=np.object_)
    tensor = httpclient.InferInput("CMD", [1], "BYTES")
    tensor.set_data_from_numpy(data)
    out = http.infer("mx_custom", [tensor]).as_numpy("RES")[0]
    return json.loads(out)


def test_custom_counter_gauge_and_histogram(server: MetricsServer, http) -> None:
    results = _commands(
        http,
        {"op": "family", "id": "c", "name": "mx_requests", "description": "Requests seen",
         "kind": "COUNTER"},
        {"op": "metric", "id": "c1", "family": "c", "labels": {"route": "a", "code": "200"}},
        {"op": "increment", "id": "c1", "value": 2},
        {"op": "increment", "id": "c1", "value": 0.5},
        {"op": "value", "id": "c1"},
        {"op": "family", "id": "g", "name": "mx_depth", "description": "Depth", "kind": "GAUGE"},
        {"op": "metric", "id": "g1", "family": "g"},
        {"op": "set", "id": "g1", "value": 7},
        {"op": "increment", "id": "g1", "value": -2.5},
        {"op": "value", "id": "g1"},
        {"op": "family", "id": "h", "name": "mx_sizes", "description": "Sizes",
         "kind": "HISTOGRAM"},
        {"op": "metric", "id": "h1", "family": "h", "labels": {"k": "v"}, "buckets": [1, 10]},
        {"op": "observe", "id": "h1", "value": 0.5},
        {"op": "observe", "id": "h1", "value": 5},
        {"op": "observe", "id": "h1", "value": 50},
    )  # fmt: skip
    assert [r.get("ok") for r in results] == [None] * 4 + [2.5] + [None] * 4 + [4.5] + [None] * 5
    text = server.text()
    assert (
        "# HELP mx_requests Requests seen\n# TYPE mx_requests counter\n"
        'mx_requests{code="200",route="a"} 2.5\n' in text
    )
    assert "# TYPE mx_depth gauge\nmx_depth 4.5\n" in text
    assert (
        "# TYPE mx_sizes histogram\n"
        'mx_sizes_count{k="v"} 3\n'
        'mx_sizes_sum{k="v"} 55.5\n'
        'mx_sizes_bucket{k="v",le="1"} 1\n'
        'mx_sizes_bucket{k="v",le="10"} 2\n'
        'mx_sizes_bucket{k="v",le="+Inf"} 3\n'
    ) in text
    # the custom families come after Triton's own of the same type
    types = re.findall(r"^# TYPE (\S+)", text, re.MULTILINE)
    assert types.index("mx_requests") > types.index("nv_inference_compute_output_duration_us")
    assert types.index("mx_depth") > types.index("nv_cpu_memory_used_bytes")


def test_same_family_and_labels_are_one_metric(server: MetricsServer, http) -> None:
    results = _commands(
        http,
        {"op": "family", "id": "a", "name": "mx_one", "description": "x", "kind": "COUNTER"},
        {"op": "family", "id": "b", "name": "mx_one", "description": "y", "kind": "COUNTER"},
        {"op": "metric", "id": "a1", "family": "a", "labels": {"x": "1", "y": "2"}},
        {"op": "metric", "id": "b1", "family": "b", "labels": {"y": "2", "x": "1"}},
        {"op": "increment", "id": "a1", "value": 3},
        {"op": "increment", "id": "b1", "value": 4},
        {"op": "value", "id": "a1"},
    )
    assert results[-1] == {"ok": 7.0}
    assert 'mx_one{x="1",y="2"} 7\n' in server.text()


def test_instances_in_other_processes_share_a_metric(server: MetricsServer) -> None:
    assert server.value('mx_shared_total{model="mx_shared"}') == 2  # two instances
    assert server.value('mx_instances{model="mx_custom"}') == 1


def test_a_deleted_metric_leaves_the_exposition(server: MetricsServer, http) -> None:
    _commands(
        http,
        {"op": "family", "id": "t", "name": "mx_temp", "description": "t", "kind": "GAUGE"},
        {"op": "metric", "id": "t1", "family": "t", "labels": {"k": "1"}},
        {"op": "set", "id": "t1", "value": 1},
    )
    assert 'mx_temp{k="1"} 1' in server.text()
    _commands(http, {"op": "drop", "id": "t1"})
    assert "mx_temp" not in server.text()  # a family without metrics is not written


CUSTOM_ERRORS = [
    (
        [{"op": "family", "id": "e", "name": "mx_err_c", "description": "", "kind": "COUNTER"},
         {"op": "metric", "id": "e1", "family": "e"},
         {"op": "increment", "id": "e1", "value": -1}],
        "TritonModelException",
        "Failed to increment metric value: Failed to process the request for model "
        "'mx_custom_0', message: TRITONSERVER_METRIC_KIND_COUNTER can only be incremented "
        "monotonically by non-negative values.",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_c", "description": "", "kind": "COUNTER"},
         {"op": "metric", "id": "e1", "family": "e"},
         {"op": "set", "id": "e1", "value": 1}],
        "TritonModelException",
        "Failed to set metric value: Failed to process the request for model 'mx_custom_0', "
        "message: TRITONSERVER_METRIC_KIND_COUNTER does not support Set",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_g", "description": "", "kind": "GAUGE"},
         {"op": "metric", "id": "e1", "family": "e"},
         {"op": "observe", "id": "e1", "value": 1}],
        "TritonModelException",
        "Failed to observe metric value: Failed to process the request for model "
        "'mx_custom_0', message: TRITONSERVER_METRIC_KIND_GAUGE does not support Observe",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_h", "description": "", "kind": "HISTOGRAM"},
         {"op": "metric", "id": "e1", "family": "e", "buckets": [1]},
         {"op": "value", "id": "e1"}],
        "TritonModelException",
        "Failed to get metric value: Failed to process the request for model 'mx_custom_0', "
        "message: TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_h", "description": "", "kind": "HISTOGRAM"},
         {"op": "metric", "id": "e1", "family": "e"}],
        "TritonModelException",
        "Failed to create metric. Missing required buckets.",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_h", "description": "", "kind": "HISTOGRAM"},
         {"op": "metric", "id": "e1", "family": "e", "buckets": [5, 1]}],
        "TritonModelException",
        "Error when creating Metric: Failed to process the request for model 'mx_custom_0', "
        "message: Bucket Boundaries must be strictly sorted",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_c", "description": "", "kind": "COUNTER"},
         {"op": "metric", "id": "e1", "family": "e", "buckets": [1]}],
        "TritonModelException",
        "Failed to create metric. Unexpected buckets found.",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_c", "description": "", "kind": "COUNTER"},
         {"op": "metric", "id": "e1", "family": "e", "labels": ["x"]}],
        "TritonModelException",
        "Failed to create metric. Labels must be a dictionary.",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_c", "description": "", "kind": "COUNTER"},
         {"op": "metric", "id": "e1", "family": "e", "labels": {"x": 1}}],
        "TritonModelException",
        "Error when creating Metric: Failed to process the request for model 'mx_custom_0', "
        "message: attempt to access JSON non-string as string",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_c", "description": "", "kind": "GAUGE"}],
        "TritonModelException",
        "Error when creating MetricFamily: Failed to process the request for model "
        "'mx_custom_0', message: Family name already exists with different type",
    ),
    (
        [{"op": "family", "id": "e", "name": "1 bad", "description": "", "kind": "GAUGE"}],
        "TritonModelException",
        "Error when creating MetricFamily: Failed to process the request for model "
        "'mx_custom_0', message: Invalid metric name",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_k", "description": "", "kind": 1}],
        "TypeError",
        "__init__(): incompatible constructor arguments. The following argument types are "
        "supported:\n    1. c_python_backend_utils.MetricFamily(name: str, description: str, "
        "kind: c_python_backend_utils.MetricKind)\n\nInvoked with: kwargs: name='mx_err_k', "
        "description='', kind=1",
    ),
    (
        [{"op": "family", "id": "e", "name": "mx_err_g", "description": "", "kind": "GAUGE"},
         {"op": "metric", "id": "e1", "family": "e"},
         {"op": "drop", "id": "e"},
         {"op": "set", "id": "e1", "value": 1}],
        "TritonModelException",
        "Failed to set metric value: Invalid metric operation as the corresponding "
        "'MetricFamily' has been deleted. The 'MetricFamily' object should be deleted AFTER "
        "its corresponding 'Metric' objects have been deleted.",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("commands", "error", "message"), CUSTOM_ERRORS)
def test_custom_metric_errors(http, commands: list[Any], error: str, message: str) -> None:
    if commands[0]["kind"] == "GAUGE" and commands[0]["name"] == "mx_err_c":
        _commands(http, {**commands[0], "kind": "COUNTER"})  # the family exists as a counter
    results = _commands(http, *commands)
    assert results[-1] == {"error": error, "message": message}
    assert all("ok" in result for result in results[:-1])


def test_increment_with_a_value_that_is_not_a_number(http) -> None:
    results = _commands(
        http,
        {"op": "family", "id": "n", "name": "mx_err_n", "description": "", "kind": "COUNTER"},
        {"op": "metric", "id": "n1", "family": "n"},
        {"op": "increment", "id": "n1", "value": "abc"},
    )
    assert results[-1]["error"] == "TypeError"
    assert results[-1]["message"].startswith("increment(): incompatible function arguments.")


def test_unloading_a_model_removes_its_custom_metrics(server: MetricsServer, http) -> None:
    assert "mx_shared_total" in server.text()
    http.unload_model("mx_shared")
    assert _wait_for(lambda: "mx_shared_total" in server.text(), False) is False
    assert f"nv_inference_request_success{_labels('mx_shared')}" not in server.text()
    http.load_model("mx_shared")
    assert server.value('mx_shared_total{model="mx_shared"}') == 2


# --- --metrics-config, --allow-cpu-metrics, --allow-metrics ---------------------------------

DECOUPLED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            out = pb_utils.Tensor("OUT", np.ones(1, np.float32))
            sender.send(pb_utils.InferenceResponse([out]))
            sender.send(pb_utils.InferenceResponse([out]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def test_summaries_and_histograms_when_the_config_asks(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "mx_ident", _io_config("mx_ident"), GATED)
    decoupled = "model_transaction_policy { decoupled: true }"
    write_model(repo, "mx_dec", _io_config("mx_dec", decoupled), DECOUPLED)
    started = _start(
        tmp_path,
        "--metrics-config=summary_latencies=true",
        "--metrics-config=histogram_latencies=true",
        "--metrics-config=counter_latencies=false",
        "--metrics-config=summary_quantiles=0.5:0.05,0.9:0.01",
        "--allow-cpu-metrics=false",
        repository=repo,
    )
    try:
        with started.running.client() as client:
            for _ in range(4):
                client.infer("mx_ident", _inputs(httpclient, np.ones(2, np.float32)))
        with grpcclient.InferenceServerClient(started.running.grpc_url) as grpc:
            done: list[Any] = []
            grpc.start_stream(callback=lambda result, error: done.append(error))
            grpc.async_stream_infer("mx_dec", _inputs(grpcclient, np.ones(1, np.float32)))
            _wait_for(lambda: len(done), 2)
            grpc.stop_stream()
        families = started.families()
        assert "nv_cpu_utilization" not in families
        assert "nv_inference_request_duration_us" not in families  # counter_latencies=false
        assert "nv_inference_request_success" in families  # counts stay
        labels = _labels("mx_ident")
        for name in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
            family = f"nv_inference_{name}_summary_us"
            assert families[family].type == "summary"
            assert started.value(f"{family}_count{labels}") == 4
            quantiles = [
                s.labels["quantile"]
                for s in families[family].samples
                if s.labels.get("model") == "mx_ident" and "quantile" in s.labels
            ]
            assert quantiles == ["0.5", "0.9"]
        text = started.text()
        assert (
            'nv_inference_request_summary_us{model="mx_ident",version="1",quantile="0.5"} ' in text
        )
        histogram = "nv_inference_first_response_histogram_ms"
        assert families[histogram].type == "histogram"
        assert started.value(f"{histogram}_count{labels}") == 4
        assert _wait_for(lambda: started.value(f"{histogram}_count{_labels('mx_dec')}"), 1) == 1
        buckets = re.findall(
            rf'^{histogram}_bucket{{model="mx_ident",version="1",le="([^"]+)"}}', text, re.MULTILINE
        )
        assert buckets == ["100", "500", "2000", "5000", "+Inf"]
    finally:
        assert started.running.stop() == 0, started.running.log()


def test_no_metrics_listener_when_metrics_are_off(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    port = free_port()
    running = start_server(
        repo,
        "--allow-metrics=false",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={port}",
        log_path=tmp_path / "server.log",
    )
    try:
        with running.client() as client:
            assert _wait_for(client.is_server_live, True)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
            pass
    finally:
        assert running.stop() == 0, running.log()
