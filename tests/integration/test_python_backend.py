"""The Python backend: failures stay with their requests, workers restart, instances overlap."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _one(name: str, value: float) -> list[httpclient.InferInput]:
    x = httpclient.InferInput(name, [1], "FP32")
    x.set_data_from_numpy(np.array([value], dtype=np.float32))
    return [x]


def _add_sub_ok(client) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    inputs = [httpclient.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)


def test_execute_that_raises_fails_only_its_request(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("raiser", _one("INPUT0", 1.0))
    assert info.value.status() == "500"
    assert "raiser always fails" in info.value.message()
    assert "ValueError" in info.value.message()
    _add_sub_ok(client)
    assert client.is_model_ready("raiser")


def test_error_response_keeps_its_code(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("error_response", _one("INPUT0", 1.0))
    assert info.value.status() == "400"
    assert info.value.message() == "bad value"


def test_auto_complete_model_serves(client):
    x = httpclient.InferInput("X", [1, 2], "INT32")
    x.set_data_from_numpy(np.array([[3, 4]], dtype=np.int32))
    result = client.infer("auto_complete", [x])
    assert result.as_numpy("Y").tolist() == [[6, 8]]
    assert result.get_response()["parameters"] == {"instance": "auto_complete_0"}


def test_crashed_worker_fails_its_request_and_restarts(client, server):
    with pytest.raises(InferenceServerException) as info:
        client.infer("crasher", _one("INPUT0", -1.0))
    assert "not healthy" in info.value.message()
    _add_sub_ok(client)  # the other models never noticed
    deadline = time.monotonic() + 20
    while True:
        try:
            result = client.infer("crasher", _one("INPUT0", 2.0))
            break
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert result.as_numpy("OUTPUT0").tolist() == [2.0]
    assert server.process.poll() is None


def test_instances_run_in_parallel(server):
    """Two instances: two 1-second requests finish in well under 2 seconds, in two processes."""
    pids: list[int] = []

    def call() -> None:
        with server.client() as c:
            pids.append(int(c.infer("slow", _one("SECONDS", 1.0)).as_numpy("PID")[0]))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == 2
    for pid in pids:
        assert pid != server.process.pid
        os.kill(pid, 0)  # the workers are alive, children of the server


def test_decoupled_model_refused_over_http(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("decoupled", _one("INPUT0", 1.0))
    assert info.value.status() == "501"
    assert (
        "HTTP end point doesn't support models with decoupled transaction policy"
        in info.value.message()
    )


def test_client_disconnect_cancels_the_running_request(server):
    """An abandoned request sees ``is_cancelled()`` and stops; the next one is not held up."""
    with server.client(network_timeout=0.5, connection_timeout=0.5) as impatient:
        for _ in range(2):  # one per instance
            with pytest.raises(OSError):  # the client times out and hangs up
                impatient.infer("slow", _one("SECONDS", 30.0))
    started = time.monotonic()
    with server.client() as c:
        c.infer("slow", _one("SECONDS", 0.0))
    assert time.monotonic() - started < 15  # both instances were freed long before 30 s
