"""Busy polling at light load (``--backend-config=python,busy-poll-us=N``).

With one request in flight, a Python worker polls for its next batch (and the server
for the answer) instead of sleeping; under load, or once requests stop, they sleep
as before. These tests check the behaviour a user can see: answers stay right either
way, an idle server goes back to sleep, and a bad setting is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from .conftest import RunningServer, pids_of_children, start_server, write_model

_ECHO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2)]
            )
            for r in requests
        ]
"""

_ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


@pytest.fixture(scope="module")
def echo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("busy_poll_repository")
    write_model(repository, "echo", _ECHO_CONFIG, _ECHO)
    return repository


def _serve(repository: Path, tmp_path: Path, *flags: str) -> Iterator[RunningServer]:
    """A server on ``repository``, once it has finished loading its models."""
    server = start_server(repository, *flags, log_path=tmp_path / "server.log")
    try:
        with server.client() as client:
            deadline = time.monotonic() + 30
            while not client.is_server_ready() and time.monotonic() < deadline:
                if "loaded" in server.log() or "failed to load" in server.log():
                    break
                time.sleep(0.05)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["default", "busy-poll-us=0"])
def server(
    request: pytest.FixtureRequest, echo_repository: Path, tmp_path: Path
) -> Iterator[RunningServer]:
    flags = [] if request.param == "default" else [f"--backend-config=python,{request.param}"]
    yield from _serve(echo_repository, tmp_path, *flags)


def _http_input(values: np.ndarray) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("IN", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return [tensor]


def _grpc_input(values: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("IN", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return [tensor]


def test_one_request_at_a_time_is_answered_right_over_http_and_grpc(server: RunningServer) -> None:
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with server.client() as http:
            for index in range(200):  # one in flight at a time: the polling road
                values = np.full(4, index, np.float32)
                result = http.infer("echo", _http_input(values)).as_numpy("OUT")
                np.testing.assert_array_equal(result, values * 2)
                result = grpc.infer("echo", _grpc_input(values + 0.5)).as_numpy("OUT")
                np.testing.assert_array_equal(result, (values + 0.5) * 2)
    finally:
        grpc.close()


def test_concurrent_requests_are_answered_right(server: RunningServer) -> None:
    with server.client(concurrency=8) as client:
        pending = [
            (index, client.async_infer("echo", _http_input(np.full(4, index, np.float32))))
            for index in range(400)
        ]
        for index, request in pending:
            np.testing.assert_array_equal(
                request.get_result().as_numpy("OUT"), np.full(4, 2.0 * index)
            )


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _workers(server: RunningServer) -> list[int]:
    """The workers: children of the worker template (the server's only child)."""
    return [w for t in pids_of_children(server.process.pid) for w in pids_of_children(t)]


def test_an_idle_worker_sleeps(echo_repository: Path, tmp_path: Path) -> None:
    """After its last request the worker polls a moment, then blocks: a server with no
    requests uses no CPU."""
    for server in _serve(echo_repository, tmp_path):
        with server.client() as client:
            for index in range(50):
                client.infer("echo", _http_input(np.full(4, index, np.float32)))
        (worker,) = _workers(server)
        deadline = time.monotonic() + 10
        while _state(worker) != "S" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(worker) == "S"  # asleep in its socket read, not polling
        ticks = _cpu_ticks(worker)
        time.sleep(0.5)
        assert _cpu_ticks(worker) == ticks


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.parametrize("value", ["abc", "-1", "2000000"])
def test_a_bad_setting_is_refused(echo_repository: Path, tmp_path: Path, value: str) -> None:
    """The model cannot load, so the server stops (``--exit-on-error``), saying why."""
    server = start_server(
        echo_repository,
        f"--backend-config=python,busy-poll-us={value}",
        log_path=tmp_path / "server.log",
        wait_ready=False,
    )
    try:
        assert server.process.wait(30) != 0
    finally:
        server.stop()
    assert (
        "busy-poll-us of the python backend must be a number of microseconds from 0 to "
        f"1000000, got '{value}'" in server.log()
    )
