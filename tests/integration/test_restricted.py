"""Restricted APIs: ``--http-restricted-api`` and ``--grpc-restricted-protocol``.

Statuses and texts are tritonserver 2.51's (``/work/notes/triton_restricted_logging_reference.md``):
HTTP 403 ``This API is restricted, expecting header '<key>'``, gRPC UNAVAILABLE
``This protocol is restricted, expecting header 'triton-grpc-protocol-<key>'``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.restricted import GROUPS
from triton_kernel.kernel.server import Server
from triton_kernel.protocols.grpc.restricted import GROUPS as GRPC_GROUPS
from triton_kernel.protocols.grpc.service import HealthService, InferenceService
from triton_kernel.protocols.http.app import create_app
from triton_kernel.protocols.http.restricted import group_of

from .conftest import RunningServer, start_server, write_model

ECHO_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
ECHO = """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for r in requests:
                x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
            return responses
"""
STREAM_CONFIG = ECHO_CONFIG + "    model_transaction_policy { decoupled: true }\n"
STREAM = """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            for r in requests:
                x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
                sender = r.get_response_sender()
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""

#: HTTP header (name, value) of each group on the matrix server: several groups share
#: one header, and a value may hold "=" (Triton splits at the first one).
HTTP_HEADERS = {
    "health": ("admin-key", "a1"),
    "metadata": ("admin-key", "a1"),
    "inference": ("infer-key", "i1"),
    "shared-memory": ("ops-key", "o1"),
    "model-config": ("ops-key", "o1"),
    "model-repository": ("ops-key", "o1"),
    "statistics": ("stats-key", "s1"),
    "trace": ("debug-key", "x=y"),
    "logging": ("debug-key", "x=y"),
}
HTTP_FLAGS = (
    "--http-restricted-api=health,metadata:admin-key=a1",
    "--http-restricted-api=inference:infer-key=i1",
    "--http-restricted-api=shared-memory,model-config,model-repository:ops-key=o1",
    "--http-restricted-api=statistics:stats-key=s1",
    "--http-restricted-api=trace,logging:debug-key=x=y",
)
#: gRPC: one key per group, the header is ``triton-grpc-protocol-<group>``.
GRPC_FLAGS = tuple(f"--grpc-restricted-protocol={g}:{g}=v-{g}" for g in GROUPS)

INFER_BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
)
GENERATE_BODY = json.dumps({"INPUT0": [1.0, 2.0]})

#: Every HTTP route, by group: (method, path, body).
HTTP_CALLS: list[tuple[str, str, str, str | None]] = [
    ("health", "GET", "/v2/health/live", None),
    ("health", "GET", "/v2/health/ready", None),
    ("health", "GET", "/v2/models/echo/ready", None),
    ("health", "GET", "/v2/models/echo/versions/1/ready", None),
    ("metadata", "GET", "/v2", None),
    ("metadata", "GET", "/v2/models/echo", None),
    ("metadata", "GET", "/v2/models/echo/versions/1", None),
    ("inference", "POST", "/v2/models/echo/infer", INFER_BODY),
    ("inference", "POST", "/v2/models/echo/versions/1/infer", INFER_BODY),
    ("inference", "POST", "/v2/models/echo/generate", GENERATE_BODY),
    ("inference", "POST", "/v2/models/stream/generate_stream", GENERATE_BODY),
    ("model-config", "GET", "/v2/models/echo/config", None),
    ("model-config", "GET", "/v2/models/echo/versions/1/config", None),
    ("statistics", "GET", "/v2/models/stats", None),
    ("statistics", "GET", "/v2/models/echo/stats", None),
    ("model-repository", "POST", "/v2/repository/index", "{}"),
    ("shared-memory", "GET", "/v2/systemsharedmemory/status", None),
    ("trace", "GET", "/v2/trace/setting", None),
    ("trace", "GET", "/v2/models/echo/trace/setting", None),
    ("logging", "GET", "/v2/logging", None),
]
#: Routes whose answer with the header is not simply 200 here (the check still runs first).
HTTP_ONLY_REFUSED: list[tuple[str, str, str, str | None]] = [
    ("model-repository", "POST", "/v2/repository/models/echo/load", "{}"),
    ("model-repository", "POST", "/v2/repository/models/echo/unload", "{}"),
    ("shared-memory", "GET", "/v2/systemsharedmemory/region/r/status", None),
    ("shared-memory", "POST", "/v2/systemsharedmemory/region/r/register", "{}"),
    ("shared-memory", "POST", "/v2/systemsharedmemory/unregister", None),
    ("shared-memory", "GET", "/v2/cudasharedmemory/status", None),
    ("shared-memory", "POST", "/v2/cudasharedmemory/region/r/register", "{}"),
    ("shared-memory", "POST", "/v2/cudasharedmemory/region/r/unregister", None),
    ("trace", "POST", "/v2/trace/setting", "{}"),
    ("logging", "POST", "/v2/logging", "{}"),
]


def http_forbidden(header: str) -> dict[str, str]:
    return {"error": f"This API is restricted, expecting header '{header}'"}


def grpc_refusal(group: str) -> str:
    return f"This protocol is restricted, expecting header 'triton-grpc-protocol-{group}'"


def grpc_headers(group: str) -> dict[str, str]:
    return {f"triton-grpc-protocol-{group}": f"v-{group}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("restricted_repo")
    write_model(repo, "echo", ECHO_CONFIG, ECHO)
    write_model(repo, "stream", STREAM_CONFIG, STREAM)
    return repo


@pytest.fixture(scope="module")
def locked(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Every group restricted, over both protocols."""
    log_path = tmp_path_factory.mktemp("restricted_log") / "server.log"
    running = start_server(
        repo, "--allow-client-shm=true", *HTTP_FLAGS, *GRPC_FLAGS, log_path=log_path
    )
    _wait_ready(running, {"admin-key": "a1"})
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def partly(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Only model-repository (HTTP) and logging (gRPC) restricted."""
    log_path = tmp_path_factory.mktemp("partly_log") / "server.log"
    running = start_server(
        repo,
        "--http-restricted-api=model-repository:repo-key=r",
        "--grpc-restricted-protocol=logging:ops=l",
        log_path=log_path,
    )
    _wait_ready(running, {})
    yield running
    assert running.stop() == 0, running.log()


def _wait_ready(server: RunningServer, headers: dict[str, str]) -> None:
    with server.client() as client:
        for _ in range(600):
            if client.is_server_ready(headers=headers):
                return
            time.sleep(0.05)
    raise AssertionError(server.log())


def _request(server: RunningServer, method: str, path: str, body: str | None, **headers: str):
    return requests.request(
        method, f"http://{server.url}{path}", data=body, headers=headers, timeout=60
    )


# --- every route and RPC belongs to Triton's group ------------------------------------------


def test_every_http_route_has_a_group() -> None:
    app = create_app(Server(ServerOptions()), 1 << 20)
    patterns = {resource.canonical for resource in app.router.resources()}
    assert {p: group_of(p) for p in patterns if group_of(p) is None} == {}
    for group, _, path, _ in HTTP_CALLS + HTTP_ONLY_REFUSED:
        assert any(group_of(p) == group for p in patterns if _same_route(p, path)), path


def _same_route(pattern: str, path: str) -> bool:
    parts, concrete = pattern.split("/"), path.split("/")
    return len(parts) == len(concrete) and all(
        p == c or p.startswith("{") for p, c in zip(parts, concrete, strict=True)
    )


def test_every_grpc_method_has_a_group() -> None:
    server = Server(ServerOptions())
    methods = {
        **InferenceService(server, 1).__mapping__(),
        **HealthService(server, 1).__mapping__(),
    }
    assert set(methods) == set(GRPC_GROUPS)
    assert set(GRPC_GROUPS.values()) == set(GROUPS)


# --- HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "method", "path", "body"), HTTP_CALLS + HTTP_ONLY_REFUSED)
def test_http_call_without_its_header_is_forbidden(
    locked: RunningServer, group: str, method: str, path: str, body: str | None
) -> None:
    header, value = HTTP_HEADERS[group]
    reply = _request(locked, method, path, body)
    assert (reply.status_code, reply.json()) == (403, http_forbidden(header))
    reply = _request(locked, method, path, body, **{header: value + "x"})
    assert (reply.status_code, reply.json()) == (403, http_forbidden(header))


@pytest.mark.parametrize(("group", "method", "path", "body"), HTTP_CALLS)
def test_http_call_with_its_header_is_served(
    locked: RunningServer, group: str, method: str, path: str, body: str | None
) -> None:
    header, value = HTTP_HEADERS[group]
    reply = _request(locked, method, path, body, **{header.upper(): value})
    assert reply.status_code == 200, reply.text


def test_another_groups_header_does_not_open_a_group(locked: RunningServer) -> None:
    reply = _request(locked, "GET", "/v2/models/stats", None, **{"admin-key": "a1"})
    assert (reply.status_code, reply.json()) == (403, http_forbidden("stats-key"))


def test_http_header_is_checked_before_the_method(locked: RunningServer) -> None:
    reply = _request(locked, "POST", "/v2/health/live", None)
    assert (reply.status_code, reply.json()) == (403, http_forbidden("admin-key"))
    reply = _request(locked, "POST", "/v2/health/live", None, **{"admin-key": "a1"})
    assert reply.status_code == 405


def test_http_unknown_route_is_still_not_found(locked: RunningServer) -> None:
    reply = _request(locked, "GET", "/v2/models/echo/versions/1/trace/setting", None)
    assert (reply.status_code, reply.json()) == (404, {"error": "Not Found"})


def test_tritonclient_http_gets_tritons_error(locked: RunningServer) -> None:
    x = httpclient.InferInput("INPUT0", [2], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    with locked.client() as client:
        for header, call in (
            ("infer-key", lambda: client.infer("echo", [x])),
            ("debug-key", client.get_log_settings),
            ("ops-key", client.get_model_repository_index),
        ):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "403"
            assert info.value.message() == http_forbidden(header)["error"]
        result = client.infer("echo", [x], headers={"infer-key": "i1"})
        assert result.as_numpy("OUTPUT0").tolist() == [1.0, 2.0]
        assert client.get_log_settings(headers={"debug-key": "x=y"})["log_verbose_level"] == 0
        assert not client.is_server_live()  # 403: tritonclient reads "not live"
        assert client.is_server_live(headers={"admin-key": "a1"})


async def test_tritonclient_http_aio(locked: RunningServer) -> None:
    async with httpaio.InferenceServerClient(locked.url) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.get_server_metadata()
        assert info.value.status() == "403"
        assert info.value.message() == http_forbidden("admin-key")["error"]
        metadata = await client.get_server_metadata(headers={"admin-key": "a1"})
        assert metadata["name"] == "triton"


def test_unrestricted_groups_need_no_header_over_http(partly: RunningServer) -> None:
    for group, method, path, body in HTTP_CALLS:
        reply = _request(partly, method, path, body)
        if group == "model-repository":
            assert (reply.status_code, reply.json()) == (403, http_forbidden("repo-key"))
        else:
            assert reply.status_code == 200, (path, reply.text)


# --- gRPC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(GRPC_GROUPS))
def test_grpc_call_without_its_header_is_unavailable(locked: RunningServer, method: str) -> None:
    """Every RPC, with an empty message: the check comes before the request is read."""
    group = GRPC_GROUPS[method]
    with grpc.insecure_channel(locked.grpc_url) as channel:
        for metadata in ((), ((f"triton-grpc-protocol-{group}", "wrong"),)):
            with pytest.raises(grpc.RpcError) as info:
                if method.endswith("ModelStreamInfer"):
                    call = channel.stream_stream(method, lambda b: b, lambda b: b)
                    list(call(iter([b""]), metadata=metadata, timeout=30))
                else:
                    call = channel.unary_unary(method, lambda b: b, lambda b: b)
                    call(b"", metadata=metadata, timeout=30)
            assert (info.value.code(), info.value.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                grpc_refusal(group),
            )


def _grpc_calls(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    x = grpcclient.InferInput("INPUT0", [2], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    return {
        "health": lambda **kw: (
            client.is_server_live(**kw),
            client.is_server_ready(**kw),
            client.is_model_ready("echo", **kw),
        ),
        "metadata": lambda **kw: (
            client.get_server_metadata(**kw),
            client.get_model_metadata("echo", **kw),
        ),
        "inference": lambda **kw: client.infer("echo", [x], **kw).as_numpy("OUTPUT0").tolist(),
        "model-config": lambda **kw: client.get_model_config("echo", **kw),
        "statistics": lambda **kw: client.get_inference_statistics("echo", **kw),
        "model-repository": lambda **kw: client.get_model_repository_index(**kw),
        "shared-memory": lambda **kw: client.get_system_shared_memory_status(**kw),
        "trace": lambda **kw: client.get_trace_settings(**kw),
        "logging": lambda **kw: client.get_log_settings(**kw),
    }


@pytest.mark.parametrize("group", GROUPS)
def test_tritonclient_grpc_by_group(locked: RunningServer, group: str) -> None:
    client = grpcclient.InferenceServerClient(locked.grpc_url)
    try:
        call = _grpc_calls(client)[group]
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert info.value.message() == grpc_refusal(group)
        other = "trace" if group != "trace" else "logging"
        with pytest.raises(InferenceServerException):
            call(headers=grpc_headers(other))
        result = call(headers=grpc_headers(group))
        if group == "inference":
            assert result == [1.0, 2.0]
        if group == "health":
            assert result == (True, True, True)
    finally:
        client.close()


def test_grpc_standard_health_check(locked: RunningServer, partly: RunningServer) -> None:
    for server, metadata, refused in (
        (locked, (), True),
        (locked, tuple(grpc_headers("health").items()), False),
        (partly, (), False),
    ):
        with grpc.insecure_channel(server.grpc_url) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check", lambda b: b, lambda b: b)
            if refused:
                with pytest.raises(grpc.RpcError) as info:
                    check(b"", metadata=metadata, timeout=30)
                assert info.value.details() == grpc_refusal("health")
            else:
                assert check(b"", metadata=metadata, timeout=30) == b"\x08\x01"  # SERVING


def _stream_once(server: RunningServer, headers: dict[str, str] | None) -> tuple[Any, Any]:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("INPUT0", [2], "FP32")
    x.set_data_from_numpy(np.array([3.0, 4.0], dtype=np.float32))
    try:
        client.start_stream(
            callback=lambda result, error: results.put((result, error)), headers=headers
        )
        try:
            client.async_stream_infer("stream", [x])
        except InferenceServerException:
            pass  # a refused stream may end before the request is sent: the callback says why
        return results.get(timeout=30)
    finally:
        client.stop_stream()
        client.close()


def test_grpc_stream_infer_is_restricted(locked: RunningServer) -> None:
    result, error = _stream_once(locked, None)
    assert result is None
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert error.message() == grpc_refusal("inference")
    result, error = _stream_once(locked, grpc_headers("inference"))
    assert error is None
    assert result.as_numpy("OUTPUT0").tolist() == [3.0, 4.0]


async def test_tritonclient_grpc_aio(locked: RunningServer) -> None:
    async with grpcaio.InferenceServerClient(locked.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.get_log_settings()
        assert info.value.message() == grpc_refusal("logging")
        settings = await client.get_log_settings(headers=grpc_headers("logging"), as_json=True)
        assert settings["settings"]["log_format"] == {"string_param": "default"}


def test_unrestricted_groups_need_no_header_over_grpc(partly: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(partly.grpc_url)
    try:
        for group, call in _grpc_calls(client).items():
            if group == "logging":
                with pytest.raises(InferenceServerException) as info:
                    call()
                assert info.value.message() == (
                    "This protocol is restricted, expecting header 'triton-grpc-protocol-ops'"
                )
                call(headers={"triton-grpc-protocol-ops": "l"})
            else:
                call()
    finally:
        client.close()
    result, error = _stream_once(partly, None)
    assert error is None and result.as_numpy("OUTPUT0").tolist() == [3.0, 4.0]


# --- bad flags -------------------------------------------------------------------------------

FORMAT = "option format is '<config name>:<setting>=<value>'. Got "


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-restricted-api=foo:k=v"], "unknown restricted api 'foo'"),
        (["--grpc-restricted-protocol=bar:k=v"], "unknown restricted protocol 'bar'"),
        (["--grpc-restricted-protocol=health,:k=v"], "unknown restricted protocol ''"),
        (
            ["--http-restricted-api=health:a=b", "--http-restricted-api=health:c=d"],
            "restricted api 'health' can not be specified in multiple config groups",
        ),
        (
            ["--grpc-restricted-protocol=health,metadata,health:a=b"],
            "restricted protocol 'health' can not be specified in multiple config groups",
        ),
        (["--http-restricted-api=health"], f"--http-restricted-api {FORMAT}health"),
        (["--http-restricted-api=health:k"], f"--http-restricted-api {FORMAT}health:k"),
        (["--http-restricted-api=:k=v"], f"--http-restricted-api {FORMAT}:k=v"),
        (["--http-restricted-api=health:=v"], f"--http-restricted-api {FORMAT}health:=v"),
        (["--grpc-restricted-protocol=inference"], f"--grpc-restricted-protocol {FORMAT}inference"),
    ],
)
def test_bad_restriction_flags_stop_the_server(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "triton_kernel.kernel.cli", "serve", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"triton-kernel: error: {message}"]
