"""Triton's logging extension: ``/v2/logging`` and gRPC LogSettings change the live log.

Texts, statuses and the line format are tritonserver 2.51's
(``/work/notes/triton_restricted_logging_reference.md``).
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "TAG" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [ { name: "TAG_OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
#: Logs one line of each kind per request, each naming the request's tag.
CHATTY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                tag = pb_utils.get_input_tensor_by_name(request, "TAG").as_numpy()[0].decode()
                pb_utils.Logger.log_info(f"info {tag}")
                pb_utils.Logger.log_warn(f"warn {tag}")
                pb_utils.Logger.log_error(f"error {tag}")
                pb_utils.Logger.log_verbose(f"verbose {tag}")
                pb_utils.Logger.log(f"default {tag}")
                out = pb_utils.Tensor("TAG_OUT", np.array([tag.encode()], dtype=object))
                responses.append(pb_utils.InferenceResponse([out]))
            return responses
"""
DEFAULTS = {
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}
#: ``<L><MMDD> <HH:MM:SS.uuuuuu> <pid> <file>:<line>] "<message>"``
DEFAULT_LINE = re.compile(
    r"^(?P<level>[IWE])\d{4} \d{2}:\d{2}:\d{2}\.\d{6} (?P<pid>\d+) "
    r'(?P<file>[\w.]+):(?P<line>\d+)\] (?P<message>".*")$'
)
#: ``<YYYY-MM-DDTHH:MM:SSZ> <L> <pid> <file>:<line>] "<message>"``
ISO8601_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z (?P<level>[IWE]) (?P<pid>\d+) "
    r'(?P<file>[\w.]+):(?P<line>\d+)\] (?P<message>".*")$'
)
FIRST_LINE = "a line written before the server started"


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logging") / "triton.log"
    path.write_text(FIRST_LINE + "\n")
    return path


@pytest.fixture(scope="module")
def server(log_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("logging_repo")
    write_model(repo, "chatty", CONFIG, CHATTY)
    running = start_server(repo, f"--log-file={log_file}", log_path=log_file.parent / "console.log")
    with running.client() as client:
        while not client.is_server_ready():
            time.sleep(0.05)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with server.client() as c:
        yield c
        c.update_log_settings(DEFAULTS)  # each test starts from the defaults


@pytest.fixture
def gclient(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


_tags = iter(range(1_000_000))


def infer_http(client: httpclient.InferenceServerClient) -> str:
    """One request through the chatty model; its tag, unique in the log."""
    tag = f"http-{next(_tags)}"
    x = httpclient.InferInput("TAG", [1], "BYTES")
    x.set_data_from_numpy(np.array([tag.encode()], dtype=object))
    assert client.infer("chatty", [x]).as_numpy("TAG_OUT")[0] == tag.encode()
    return tag


def infer_grpc(client: grpcclient.InferenceServerClient) -> str:
    tag = f"grpc-{next(_tags)}"
    x = grpcclient.InferInput("TAG", [1], "BYTES")
    x.set_data_from_numpy(np.array([tag.encode()], dtype=object))
    assert client.infer("chatty", [x]).as_numpy("TAG_OUT")[0] == tag.encode()
    return tag


def wait_for(log_file: Path, found: Callable[[list[str]], bool]) -> list[str]:
    """The log's lines once ``found`` holds for them (lines may land after the reply)."""
    deadline = time.monotonic() + 30
    while True:
        lines = log_file.read_text().splitlines()
        if found(lines):
            return lines
        assert time.monotonic() < deadline, "\n".join(lines[-30:])
        time.sleep(0.05)


def has(text: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(text in line for line in lines)


def model_lines(lines: list[str], tag: str, pattern: re.Pattern[str]) -> dict[str, tuple[str, str]]:
    """The model's lines for ``tag``: message kind -> (level letter, ``file:line``)."""
    found = {}
    for line in lines:
        match = pattern.match(line)
        if match and match["message"].endswith(f' {tag}"'):
            kind = json.loads(match["message"]).split()[0]
            found[kind] = (match["level"], f"{match['file']}:{match['line']}")
    return found


def chatty_line(call: str) -> str:
    """``model.py:<n>`` of the model's line calling ``call`` (Triton names the caller)."""
    source = [line.strip() for line in textwrap.dedent(CHATTY).splitlines()]
    return f"model.py:{source.index(call) + 1}"


# --- reading and changing the settings ----------------------------------------------------


async def test_settings_read_over_http_grpc_and_aio(
    server: RunningServer, client: httpclient.InferenceServerClient, gclient: Any, log_file: Path
) -> None:
    expected = {"log_file": str(log_file), **DEFAULTS}
    assert client.get_log_settings() == expected
    async with httpaio.InferenceServerClient(server.url) as aio:
        assert await aio.get_log_settings() == expected
    settings = gclient.get_log_settings(as_json=True)["settings"]
    assert settings == {
        "log_file": {"string_param": str(log_file)},
        "log_info": {"bool_param": True},
        "log_warning": {"bool_param": True},
        "log_error": {"bool_param": True},
        "log_verbose_level": {"uint32_param": 0},
        "log_format": {"string_param": "default"},
    }


def test_update_over_http_and_grpc(client: httpclient.InferenceServerClient, gclient: Any) -> None:
    changed = client.update_log_settings({"log_info": False, "log_verbose_level": 2})
    assert (changed["log_info"], changed["log_verbose_level"]) == (False, 2)
    reply = gclient.update_log_settings({"log_format": "ISO8601", "log_info": True}, as_json=True)
    assert reply["settings"]["log_format"] == {"string_param": "ISO8601"}
    assert reply["settings"]["log_info"] == {"bool_param": True}
    assert reply["settings"]["log_verbose_level"] == {"uint32_param": 2}
    assert client.get_log_settings()["log_format"] == "ISO8601"


# --- what is written ---------------------------------------------------------------------------


def test_log_file_is_appended_in_tritons_format(
    server: RunningServer, client: httpclient.InferenceServerClient, log_file: Path
) -> None:
    tag = infer_http(client)
    lines = wait_for(log_file, has(f'default {tag}"'))
    assert lines[0] == FIRST_LINE
    for line in lines[1:]:  # other tests switch to ISO8601 and back
        match = DEFAULT_LINE.match(line) or ISO8601_LINE.match(line)
        assert match is not None, line
        assert int(match["pid"]) == server.process.pid
    assert model_lines(lines, tag, DEFAULT_LINE) == {
        "info": ("I", chatty_line('pb_utils.Logger.log_info(f"info {tag}")')),
        "warn": ("W", chatty_line('pb_utils.Logger.log_warn(f"warn {tag}")')),
        "error": ("E", chatty_line('pb_utils.Logger.log_error(f"error {tag}")')),
        "default": ("I", chatty_line('pb_utils.Logger.log(f"default {tag}")')),
    }
    assert has("app.py:")(lines)  # "Started HTTPService", logged where it happens


def test_iso8601_format(
    client: httpclient.InferenceServerClient, gclient: Any, log_file: Path
) -> None:
    gclient.update_log_settings({"log_format": "ISO8601"})
    tag = infer_grpc(gclient)
    lines = wait_for(log_file, has(f'default {tag}"'))
    assert model_lines(lines, tag, ISO8601_LINE) == {
        "info": ("I", chatty_line('pb_utils.Logger.log_info(f"info {tag}")')),
        "warn": ("W", chatty_line('pb_utils.Logger.log_warn(f"warn {tag}")')),
        "error": ("E", chatty_line('pb_utils.Logger.log_error(f"error {tag}")')),
        "default": ("I", chatty_line('pb_utils.Logger.log(f"default {tag}")')),
    }
    client.update_log_settings({"log_format": "default"})
    tag = infer_http(client)
    lines = wait_for(log_file, has(f'default {tag}"'))
    assert set(model_lines(lines, tag, DEFAULT_LINE)) == {"info", "warn", "error", "default"}


def test_verbose_level_logs_each_request(
    client: httpclient.InferenceServerClient, gclient: Any, log_file: Path
) -> None:
    client.update_log_settings({"log_verbose_level": 1})
    http_tag, grpc_tag = infer_http(client), infer_grpc(gclient)
    lines = wait_for(log_file, has("HTTP request: POST /v2/models/chatty/infer -> 200"))
    lines = wait_for(log_file, has(f'default {grpc_tag}"'))
    for tag in (http_tag, grpc_tag):
        assert model_lines(lines, tag, DEFAULT_LINE)["verbose"] == (
            "I",
            chatty_line('pb_utils.Logger.log_verbose(f"verbose {tag}")'),
        )
    assert has('"GRPC request: /inference.GRPCInferenceService/ModelInfer"')(lines)
    assert has('"model chatty, executing 1 requests"')(lines)
    gclient.update_log_settings({"log_verbose_level": 0})
    start = len(log_file.read_text().splitlines())
    tag = infer_http(client)
    lines = wait_for(log_file, has(f'default {tag}"'))[start:]
    assert "verbose" not in model_lines(lines, tag, DEFAULT_LINE)
    assert not has("executing 1 requests")(lines)


def test_info_warning_and_error_are_independent_switches(
    client: httpclient.InferenceServerClient, gclient: Any, log_file: Path
) -> None:
    gclient.update_log_settings({"log_info": False})
    tag = infer_grpc(gclient)
    lines = wait_for(log_file, has(f'error {tag}"'))
    assert set(model_lines(lines, tag, DEFAULT_LINE)) == {"warn", "error"}
    client.update_log_settings({"log_info": True, "log_warning": False})
    tag = infer_http(client)
    lines = wait_for(log_file, has(f'default {tag}"'))
    assert set(model_lines(lines, tag, DEFAULT_LINE)) == {"info", "error", "default"}
    client.update_log_settings({"log_info": False, "log_warning": False, "log_error": False})
    silent = infer_http(client)
    client.update_log_settings({"log_error": True})
    tag = infer_http(client)
    lines = wait_for(log_file, has(f'error {tag}"'))
    assert model_lines(lines, silent, DEFAULT_LINE) == {}
    assert set(model_lines(lines, tag, DEFAULT_LINE)) == {"error"}


def test_verbose_lines_print_with_info_off(
    client: httpclient.InferenceServerClient, log_file: Path
) -> None:
    client.update_log_settings({"log_info": False, "log_verbose_level": 1})
    tag = infer_http(client)
    lines = wait_for(log_file, has(f'error {tag}"'))
    assert set(model_lines(lines, tag, DEFAULT_LINE)) == {"warn", "error", "verbose"}


# --- bad input -----------------------------------------------------------------------------

JSON_BOOL = "attempt to access JSON non-boolean as boolean"
JSON_UINT = "attempt to access JSON non-unsigned-integer as unsigned-integer"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            b'{"log_file": "/tmp/x.log"}',
            501,
            "log file location can not be updated through network protocol",
        ),
        (b'{"log_file": ""}', 501, "log file location can not be updated through network protocol"),
        (b'{"log_info": "yes"}', 500, JSON_BOOL),
        (b'{"log_warning": 1}', 500, JSON_BOOL),
        (b'{"log_error": []}', 500, JSON_BOOL),
        (b'{"log_verbose_level": "abc"}', 500, JSON_UINT),
        (b'{"log_verbose_level": -1}', 500, JSON_UINT),
        (b'{"log_verbose_level": 1.5}', 500, JSON_UINT),
        (b'{"log_verbose_level": true}', 500, JSON_UINT),
        (b'{"log_format": 3}', 500, "attempt to access JSON non-string as string"),
        (b'{"log_format": "xyz"}', 503, "invalid argument for --log_format, got: xyz"),
        (b"", 500, "failed to parse the request JSON buffer: The document is empty. at 0"),
        (b"not json", 500, "failed to parse the request JSON buffer: "),
    ],
)
def test_http_bad_settings(
    server: RunningServer,
    client: httpclient.InferenceServerClient,
    body: bytes,
    status: int,
    message: str,
) -> None:
    reply = requests.post(f"http://{server.url}/v2/logging", data=body, timeout=30)
    assert reply.status_code == status
    assert reply.json()["error"].startswith(message)
    assert {k: v for k, v in client.get_log_settings().items() if k != "log_file"} == DEFAULTS


def test_http_ignores_unknown_keys_nulls_and_non_objects(
    server: RunningServer, client: httpclient.InferenceServerClient
) -> None:
    for body in (b'{"unknown": 1}', b'{"log_info": null}', b"[1]", b"{}"):
        reply = requests.post(f"http://{server.url}/v2/logging", data=body, timeout=30)
        assert reply.status_code == 200
        assert {k: v for k, v in reply.json().items() if k != "log_file"} == DEFAULTS
    reply = requests.put(f"http://{server.url}/v2/logging", timeout=30)
    assert (reply.status_code, reply.json()) == (405, {"error": "Method Not Allowed"})


def _grpc_settings(**settings: tuple[str, Any]) -> service_pb2.LogSettingsRequest:
    request = service_pb2.LogSettingsRequest()
    for key, (field, value) in settings.items():
        if field:
            setattr(request.settings[key], field, value)
        else:
            request.settings[key]  # present, with no value
    return request


@pytest.mark.parametrize(
    ("settings", "code", "message"),
    [
        ({"log_file": ("string_param", "/tmp/x.log")}, grpc.StatusCode.UNIMPLEMENTED,
         "log file location can not be updated through network protocol"),
        ({"log_file": ("string_param", "")}, grpc.StatusCode.UNIMPLEMENTED,
         "log file location can not be updated through network protocol"),
        ({"log_info": ("uint32_param", 1)}, grpc.StatusCode.INVALID_ARGUMENT,
         "expect boolean for 'log_info'"),
        ({"log_warning": ("string_param", "true")}, grpc.StatusCode.INVALID_ARGUMENT,
         "expect boolean for 'log_warning'"),
        ({"log_error": ("", None)}, grpc.StatusCode.INVALID_ARGUMENT,
         "expect boolean for 'log_error'"),
        ({"log_verbose_level": ("string_param", "abc")}, grpc.StatusCode.INVALID_ARGUMENT,
         "expect int32 for 'log_verbose_level'"),
        ({"log_verbose_level": ("bool_param", True)}, grpc.StatusCode.INVALID_ARGUMENT,
         "expect int32 for 'log_verbose_level'"),
        ({"log_format": ("uint32_param", 3)}, grpc.StatusCode.INVALID_ARGUMENT,
         "expect string for 'log_format'"),
        ({"log_format": ("string_param", "xyz")}, grpc.StatusCode.INVALID_ARGUMENT,
         "invalid argument for log_format, got: xyz"),
    ],
)  # fmt: skip
def test_grpc_bad_settings(
    server: RunningServer,
    client: httpclient.InferenceServerClient,
    settings: dict[str, tuple[str, Any]],
    code: grpc.StatusCode,
    message: str,
) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.LogSettings(_grpc_settings(**settings), timeout=30)
        assert (info.value.code(), info.value.details()) == (code, message)
        reply = stub.LogSettings(_grpc_settings(unknown=("uint32_param", 1)), timeout=30)
        assert reply.settings["log_verbose_level"].uint32_param == 0
    assert {k: v for k, v in client.get_log_settings().items() if k != "log_file"} == DEFAULTS


def test_tritonclient_grpc_errors(gclient: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        gclient.update_log_settings({"log_info": None})  # tritonclient sends it with no value
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == "expect boolean for 'log_info'"
    with pytest.raises(InferenceServerException) as info:
        gclient.update_log_settings({"log_file": "/tmp/elsewhere.log"})
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_a_bad_setting_leaves_the_ones_before_it_applied(
    server: RunningServer, client: httpclient.InferenceServerClient, gclient: Any
) -> None:
    """Triton applies each setting before it reads the next, in its fixed order."""
    reply = requests.post(
        f"http://{server.url}/v2/logging",
        data=json.dumps({"log_format": "bad", "log_info": False}),
        timeout=30,
    )
    assert reply.status_code == 503
    assert client.get_log_settings()["log_info"] is False
    with pytest.raises(InferenceServerException) as info:
        gclient.update_log_settings({"log_format": "bad", "log_warning": False})
    assert info.value.message() == "invalid argument for log_format, got: bad"
    assert client.get_log_settings()["log_warning"] is False


# --- command line ------------------------------------------------------------------------------


def test_log_flags_apply_at_start(tmp_path: Path) -> None:
    """A --log-file that cannot be opened: stderr instead, as tritonserver does (and says why)."""
    server = start_server(
        None,
        f"--log-file={tmp_path / 'missing' / 'x.log'}",
        "--log-format=ISO8601",
        "--log-info=false",
        "--log-verbose=1",
        log_path=tmp_path / "console.log",
    )
    try:
        with server.client() as client:
            assert client.get_log_settings() == {
                "log_file": "",
                "log_info": False,
                "log_warning": True,
                "log_error": True,
                "log_verbose_level": 1,
                "log_format": "ISO8601",
            }
    finally:
        assert server.stop() == 0
    lines = server.log().splitlines()
    errors = [m for m in map(ISO8601_LINE.match, lines) if m and m["level"] == "E"]
    assert [json.loads(m["message"]) for m in errors] == [
        "Failed to open log file: No such file or directory"
    ]
    assert any("HTTP request: GET /v2/logging -> 200" in line for line in lines)
    started = [m for m in map(ISO8601_LINE.match, lines) if m and "Started" in m["message"]]
    assert started == []  # info lines are off
