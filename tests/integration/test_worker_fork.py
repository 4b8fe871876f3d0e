"""Python workers forked from a warm template: who is whose child, restarts, no orphans."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, pids_of_children, start_server, write_model

#: Reports its process, its parent and its random state; dies on a negative input.
_WHOAMI = """
import os
import random
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]
        print(
            f"WHOAMI {self.name} pid={os.getpid()} np={np.random.randint(2**62)}"
            f" py={random.getrandbits(62)}",
            file=sys.stderr,
            flush=True,
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if value[0] < 0:
                os._exit(3)
            ids = pb_utils.Tensor("IDS", np.array([os.getpid(), os.getppid()], dtype=np.int64))
            responses.append(pb_utils.InferenceResponse([ids]))
        return responses
"""

_WHOAMI_CONFIG = """
name: "whoami"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "IDS" data_type: TYPE_INT64 dims: [ 2 ] } ]
instance_group [ { count: 2, kind: KIND_CPU } ]
"""

#: Its configuration comes from ``auto_complete_config``, run in the first forked worker.
_AUTO = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [2]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [2]})
        return config

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)]
            )
            for r in requests
        ]
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_model(repo, "whoami", _WHOAMI_CONFIG, _WHOAMI)
    write_model(repo, "auto", 'name: "auto"\nbackend: "python"\n', _AUTO)
    return repo


def _serve(repository: Path, tmp_path: Path, *flags: str) -> RunningServer:
    server = start_server(repository, *flags, log_path=tmp_path / "server.log")
    _wait(lambda: server.client().is_server_ready(), server)
    return server


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    running = _serve(repository, tmp_path)
    yield running
    running.stop(signal.SIGKILL)


def _wait(condition, server: RunningServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (InferenceServerException, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; server log:\n{server.log()}")
        time.sleep(0.05)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _template(server: RunningServer) -> int:
    (template,) = [p for p in pids_of_children(server.process.pid) if "zygote.py" in _cmdline(p)]
    return template


def _descendants(pid: int) -> list[int]:
    found = []
    for child in pids_of_children(pid):
        found += [child, *_descendants(child)]
    return found


def _ids(client: httpclient.InferenceServerClient, value: float = 1.0) -> list[int]:
    x = httpclient.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([value], dtype=np.float32))
    return client.infer("whoami", [x]).as_numpy("IDS").tolist()


def _whoami_lines(server: RunningServer) -> dict[str, tuple[int, int, int]]:
    """Instance name -> (pid, numpy random, Python random) of each ``initialize`` so far."""
    pattern = r"WHOAMI (\S+) pid=(\d+) np=(\d+) py=(\d+)"
    return {m[0]: tuple(map(int, m[1:])) for m in re.findall(pattern, server.log())}


def test_workers_are_children_of_the_template_which_is_the_servers(server):
    template = _template(server)
    assert pids_of_children(server.process.pid) == [template]  # no worker was exec'd
    workers = pids_of_children(template)
    assert len(workers) == 3  # whoami x2, auto x1
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in workers}
    assert names == {"whoami", "auto"}  # named after their model, for ps and top
    with server.client() as client:
        pid, parent = _ids(client)
    assert pid in workers and parent == template


def test_instances_keep_triton_names_and_own_random_state(server):
    lines = _whoami_lines(server)
    assert set(lines) == {"whoami_0_0", "whoami_0_1"}  # Triton's: <group>_<index in group>
    (pid0, np0, py0), (pid1, np1, py1) = lines["whoami_0_0"], lines["whoami_0_1"]
    assert pid0 != pid1
    assert np0 != np1  # numpy's global generator is not the template's copy
    assert py0 != py1


def test_auto_complete_runs_in_a_forked_worker(server):
    with server.client() as client:
        config = client.get_model_config("auto")
        assert [i["name"] for i in config["input"]] == ["X"]
        x = httpclient.InferInput("X", [2], "INT32")
        x.set_data_from_numpy(np.array([3, 4], dtype=np.int32))
        assert client.infer("auto", [x]).as_numpy("Y").tolist() == [6, 8]


def test_a_dead_worker_is_forked_again(server):
    template = _template(server)
    with server.client() as client:
        before = set(pids_of_children(template))
        with pytest.raises(InferenceServerException) as info:
            _ids(client, -1.0)
        assert "not healthy" in info.value.message()
        _wait(lambda: _ids(client)[0] not in before, server)
        pid, parent = _ids(client)
    assert pid not in before and parent == template and _template(server) == template
    assert "exited (code 3); restarting it" in server.log()


def test_workers_die_with_their_template_and_come_back(server):
    template = _template(server)
    workers = pids_of_children(template)
    os.kill(template, signal.SIGKILL)
    _wait(lambda: not any(_alive(pid) for pid in workers), server)
    with server.client() as client:
        _wait(lambda: _ids(client)[1] != template, server)
        _pid, parent = _ids(client)
    assert parent == _template(server) != template
    assert server.process.poll() is None


def test_sigterm_leaves_no_process_behind(server):
    tree = _descendants(server.process.pid)
    assert len(tree) == 4  # the template and three workers
    assert server.stop(signal.SIGTERM) == 0
    _wait(lambda: not any(_alive(pid) for pid in tree), server)
    assert "did not complete" not in server.log()  # every model finalized before the end


def test_a_killed_server_takes_template_and_workers_along(server):
    tree = _descendants(server.process.pid)
    assert len(tree) == 4
    server.stop(signal.SIGKILL)
    _wait(lambda: not any(_alive(pid) for pid in tree), server)


def test_fork_workers_false_execs_each_worker(repository, tmp_path):
    server = _serve(repository, tmp_path, "--backend-config=python,fork-workers=false")
    try:
        workers = pids_of_children(server.process.pid)
        assert len(workers) == 3
        assert all("stub.py" in _cmdline(pid) for pid in workers)
        with server.client() as client:
            pid, parent = _ids(client)
        assert pid in workers and parent == server.process.pid
    finally:
        assert server.stop(signal.SIGTERM) == 0
