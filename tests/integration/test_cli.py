"""``triton-kernel serve``: flags, the default repository, control modes, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import pids_of_children, start_server, write_model

ADD_ONE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", request.inputs()[0].as_numpy() + 1)]
            )
            for request in requests
        ]
"""
CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def _wait_ready(client, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError("server never became ready")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "triton_kernel.kernel.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "flags",
    [
        ["serve", "--no-such-flag"],
        ["serve", "--http-port=notaport"],
        ["serve", "--http-port=70000"],
        ["serve", "--model-control-mode=sometimes"],
        ["serve", "--exit-on-error=perhaps"],
        ["serve", "--backend-config=python"],
        [],
    ],
)
def test_bad_flags_give_one_line_and_status_2(flags):
    result = _run_cli(*flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("triton-kernel: error:")
    assert "Traceback" not in result.stderr


def test_default_repository_is_the_examples(tmp_path):
    server = start_server(None, log_path=tmp_path / "log")
    try:
        with server.client() as client:
            _wait_ready(client)
            assert client.is_model_ready("add_sub")
            assert client.is_model_ready("identity_bytes")
            assert client.is_model_ready("classifier")
    finally:
        assert server.stop() == 0


def test_sigterm_stops_every_worker(tmp_path):
    repo = tmp_path / "repo"
    model = write_model(repo, "add_one", CONFIG, ADD_ONE)
    (model / "config.pbtxt").write_text(
        CONFIG + "instance_group [ { count: 3, kind: KIND_CPU } ]\n"
    )
    server = start_server(repo, log_path=tmp_path / "log")
    with server.client() as client:
        _wait_ready(client)
    (template,) = pids_of_children(server.process.pid)  # workers fork from a warm template
    workers = [template, *pids_of_children(template)]
    assert len(workers) == 4
    assert server.stop(signal.SIGTERM) == 0
    for pid in workers:
        with pytest.raises(FileNotFoundError):
            open(f"/proc/{pid}/stat").read()  # noqa: SIM115


def test_explicit_mode_loads_only_what_is_asked(tmp_path):
    repo = tmp_path / "repo"
    for name in ("first", "second"):
        write_model(repo, name, CONFIG, ADD_ONE)
    server = start_server(
        repo, "--model-control-mode=explicit", "--load-model=first", log_path=tmp_path / "log"
    )
    try:
        with server.client() as client:
            _wait_ready(client)
            assert client.is_model_ready("first")
            assert not client.is_model_ready("second")
            index = {row["name"]: row for row in client.get_model_repository_index()}
            assert index["first"]["state"] == "READY"
            assert "state" not in index["second"]
            client.load_model("second")
            assert client.is_model_ready("second")
            x = httpclient.InferInput("X", [1], "FP32")
            x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
            assert client.infer("second", [x]).as_numpy("Y").tolist() == [2.0]
            client.unload_model("second")
            assert not client.is_model_ready("second")
    finally:
        assert server.stop() == 0


def test_explicit_mode_load_star(tmp_path):
    repo = tmp_path / "repo"
    for name in ("first", "second"):
        write_model(repo, name, CONFIG, ADD_ONE)
    server = start_server(
        repo, "--model-control-mode=explicit", "--load-model=*", log_path=tmp_path / "log"
    )
    try:
        with server.client() as client:
            _wait_ready(client)
            assert client.is_model_ready("first") and client.is_model_ready("second")
    finally:
        assert server.stop() == 0


def test_several_repositories(tmp_path):
    for repo_name, model_name in (("a", "first"), ("b", "second")):
        write_model(tmp_path / repo_name, model_name, CONFIG, ADD_ONE)
    server = start_server(
        tmp_path / "a", f"--model-repository={tmp_path / 'b'}", log_path=tmp_path / "log"
    )
    try:
        with server.client() as client:
            _wait_ready(client)
            assert client.is_model_ready("first") and client.is_model_ready("second")
    finally:
        assert server.stop() == 0


BROKEN_CONFIGS = {
    "unknown_field": ("foo: 1\n", "foo"),
    "wrong_type": ('max_batch_size: "x"\n', "max_batch_size"),
    "syntax_error": ("input [ { name: \n", "config.pbtxt"),
}


def test_broken_configs_fail_their_model_only(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "good", CONFIG, ADD_ONE)
    for name, (text, _) in BROKEN_CONFIGS.items():
        write_model(repo, name, CONFIG + text, ADD_ONE)
    server = start_server(repo, "--exit-on-error=false", log_path=tmp_path / "log")
    try:
        with server.client() as client:
            deadline = time.monotonic() + 30
            while not client.is_model_ready("good") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.is_server_live()
            assert not client.is_server_ready()  # strict readiness: a model failed
            index = {row["name"]: row for row in client.get_model_repository_index()}
            for name, (_, expected) in BROKEN_CONFIGS.items():
                assert not client.is_model_ready(name)
                assert index[name]["state"] == "UNAVAILABLE"
                assert expected in index[name]["reason"]
                with pytest.raises(InferenceServerException):
                    client.get_model_metadata(name)
    finally:
        assert server.stop() == 0
    assert "foo" in server.log()


def test_exit_on_error_stops_the_server(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "broken", CONFIG + "foo: 1\n", ADD_ONE)
    server = start_server(repo, log_path=tmp_path / "log", wait_ready=False)
    assert server.process.wait(60) == 1
    assert "foo" in server.log()
