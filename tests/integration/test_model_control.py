"""Model control: poll mode, reloads without downtime, index states, unload_dependents,
load threads, and the repository API's bad input (texts and statuses of tritonserver 2.51).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import textwrap
import threading
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

from triton_kernel.kernel.errors import Unavailable
from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.server import Server

from .conftest import RunningServer, start_server

#: A Python model answering ``OUT = IN * FACTOR``, with test hooks in its parameters:
#: ``init_gate`` (initialize waits for that file), ``execute_gate`` (a request whose first
#: value is negative waits for that file in execute) and ``load_barrier_dir`` (initialize
#: waits until ``load_barrier`` models are initializing at once, or ``load_total`` began).
CONTROLLED_PY = """
import json, os, time
import numpy as np
import triton_python_backend_utils as pb_utils

FACTOR = {factor}


def _wait_for(path, what):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("gave up waiting for " + what)
        time.sleep(0.01)


def _touch(path):
    with open(path, "w"):
        pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {{k: v["string_value"] for k, v in config.get("parameters", {{}}).items()}}
        self.execute_gate = params.get("execute_gate", "")
        if params.get("init_gate"):
            _touch(params["init_gate"] + ".waiting")
            _wait_for(params["init_gate"], "the init gate")
        if params.get("load_barrier_dir"):
            self._barrier(params, args["model_name"])

    def _barrier(self, params, name):
        root = params["load_barrier_dir"]
        _touch(os.path.join(root, "entered", name))
        wanted, total, peak = int(params["load_barrier"]), int(params["load_total"]), 0
        deadline = time.monotonic() + 60
        while True:
            entered = len(os.listdir(os.path.join(root, "entered")))
            inside = entered - len(os.listdir(os.path.join(root, "left")))
            peak = max(peak, inside)
            if inside >= wanted or entered >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the other models never loaded beside this one")
            time.sleep(0.01)
        with open(os.path.join(root, "peak", name), "w") as f:
            f.write(str(peak))
        _touch(os.path.join(root, "left", name))

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if self.execute_gate and x.size and x.flat[0] < 0:
                _touch(self.execute_gate + ".started")
                _wait_for(self.execute_gate, "the execute gate")
            out = pb_utils.Tensor("OUT", (x * FACTOR).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

INIT_RAISES = "        raise RuntimeError('broken on purpose')\n"


def config_text(name: str, extra: str = "", **params: str) -> str:
    parameters = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    return (
        textwrap.dedent(f"""\
        name: "{name}"
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        {extra}
        """)
        + parameters
    )


def write_controlled(
    repo: Path, name: str, versions: dict[int, float] | None = None, extra: str = "", **params: str
) -> Path:
    """``<repo>/<name>``: config.pbtxt and one ``model.py`` per version (its FACTOR).

    Built in a hidden folder and renamed into place, so a poll never sees half a model.
    """
    building = repo / f".{name}.building"
    building.mkdir(parents=True)
    (building / "config.pbtxt").write_text(config_text(name, extra, **params))
    for version, factor in (versions or {1: 1.0}).items():
        set_factor(building, version, factor)
    building.rename(repo / name)
    return repo / name


def set_factor(model_dir: Path, version: int, factor: float, *, broken: bool = False) -> None:
    """(Re)write version ``version``'s ``model.py`` in one step (renamed into place)."""
    source = CONTROLLED_PY.format(factor=factor)
    if broken:
        marker = "    def initialize(self, args):\n"
        source = source.replace(marker, marker + INIT_RAISES)
    folder = model_dir / str(version)
    if folder.exists():
        (model_dir / f".model.py.{version}").write_text(source)
        os.replace(model_dir / f".model.py.{version}", folder / "model.py")
    else:
        building = model_dir / f".{version}.building"
        building.mkdir()
        (building / "model.py").write_text(source)
        building.rename(folder)


ENSEMBLE = """\
name: "{name}"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{first}" model_version: -1
     input_map {{ key: "IN" value: "IN" }} output_map {{ key: "OUT" value: "t" }} }},
  {{ model_name: "{second}" model_version: -1
     input_map {{ key: "IN" value: "t" }} output_map {{ key: "OUT" value: "OUT" }} }}
] }}
"""


def write_ensemble(repo: Path, name: str, first: str, second: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(
        ENSEMBLE.format(name=name, first=first, second=second)
    )


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``predicate`` until it is truthy (a deadline against hangs, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_server_ready(server: RunningServer) -> None:
    with server.client() as client:
        wait_for(lambda: _ready_or_false(client), "the server to be ready")


def _ready_or_false(client: httpclient.InferenceServerClient) -> bool:
    try:
        return client.is_server_ready()
    except Exception:
        return False


def rows(client: httpclient.InferenceServerClient, name: str) -> list[dict[str, Any]]:
    return [row for row in client.get_model_repository_index() if row["name"] == name]


def states(client: httpclient.InferenceServerClient, name: str) -> dict[str, str]:
    """Version -> state of ``name`` in the index."""
    return {row.get("version", ""): row.get("state", "") for row in rows(client, name)}


def infer_http(
    client: Any, name: str, x: list[float], version: str = ""
) -> tuple[list[float], str]:
    tensor = httpclient.InferInput("IN", [len(x)], "FP32")
    tensor.set_data_from_numpy(np.array(x, dtype=np.float32))
    result = client.infer(name, [tensor], model_version=version)
    return result.as_numpy("OUT").tolist(), result.get_response()["model_version"]


def infer_grpc(
    client: grpcclient.InferenceServerClient, name: str, x: list[float], version: str = ""
) -> tuple[list[float], str]:
    tensor = grpcclient.InferInput("IN", [len(x)], "FP32")
    tensor.set_data_from_numpy(np.array(x, dtype=np.float32))
    result = client.infer(name, [tensor], model_version=version)
    return result.as_numpy("OUT").tolist(), result.get_response().model_version


def answer(client: httpclient.InferenceServerClient, name: str) -> float:
    return infer_http(client, name, [1.0])[0][0]


def grpc_status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def stub(explicit: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(explicit.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


# --- poll mode ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poll_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("poll_repo")
    write_controlled(repo, "scaled")
    write_controlled(repo, "broken_later")
    write_controlled(repo, "latest", {1: 1.0})
    write_controlled(repo, "every", {1: 1.0, 2: 2.0}, "version_policy { all { } }")
    write_controlled(repo, "step_a", {1: 2.0})
    write_controlled(repo, "step_b", {1: 3.0})
    write_ensemble(repo, "pipeline", "step_a", "step_b")
    return repo


@pytest.fixture(scope="module")
def poll(poll_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("poll_log") / "server.log"
    running = start_server(
        poll_repo, "--model-control-mode=poll", "--repository-poll-secs=1", log_path=log_path
    )
    wait_server_ready(running)
    yield running
    assert running.stop() == 0, running.log()


def test_poll_mode_refuses_explicit_load_and_unload(poll: RunningServer) -> None:
    text = "explicit model load / unload is not allowed if polling is enabled"
    with poll.client() as client, grpcclient.InferenceServerClient(poll.grpc_url) as g:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as info:
                call("scaled")
            assert (info.value.status(), info.value.message()) == ("503", text)
        for call in (g.load_model, g.unload_model):
            with pytest.raises(InferenceServerException) as info:
                call("nope")
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert info.value.message() == text
        assert client.is_model_ready("scaled")


def test_poll_loads_new_models_and_unloads_removed_ones(
    poll: RunningServer, poll_repo: Path
) -> None:
    with poll.client() as client:
        write_controlled(poll_repo, "arrived", {1: 9.0})
        wait_for(lambda: client.is_model_ready("arrived"), "the new model to load")
        assert answer(client, "arrived") == 9.0
        shutil.rmtree(poll_repo / "arrived")
        wait_for(lambda: not client.is_model_ready("arrived"), "the removed model to unload")
        assert rows(client, "arrived") == []  # the index lists the repository's folders
        with pytest.raises(InferenceServerException) as info:
            answer(client, "arrived")
        assert info.value.message() == (
            "Request for unknown model: 'arrived' has no available versions"
        )


def _reload_under_load(server: RunningServer, model_dir: Path) -> dict[str, int]:
    """Clients keep sending (HTTP, gRPC, HTTP aio) while the model file changes; they stop
    once each has seen 20 answers of the new version. Returns counts per outcome."""
    counts = {"sent": 0, "failed": 0, "old": 0, "new": 0, "index_not_ready": 0}
    lock = threading.Lock()
    seen_new = {"http": 0, "grpc": 0, "aio": 0}
    errors: list[str] = []

    def record(kind: str, value: float | None, error: str = "") -> bool:
        with lock:
            counts["sent"] += 1
            if value is None:
                counts["failed"] += 1
                errors.append(error)
            else:
                counts["old" if value == 1.0 else "new"] += 1
                if value == 2.0:
                    seen_new[kind] += 1
            return seen_new[kind] < 20 and counts["sent"] < 20000

    def sync_client(kind: str) -> None:
        if kind == "http":
            client: Any = httpclient.InferenceServerClient(server.url)
            infer: Callable[..., Any] = infer_http
        else:
            client, infer = grpcclient.InferenceServerClient(server.grpc_url), infer_grpc
        with client:
            going = True
            while going:
                try:
                    going = record(kind, infer(client, "scaled", [1.0])[0][0])
                except InferenceServerException as exc:
                    going = record(kind, None, str(exc))

    async def aio_client() -> None:
        async with httpaio.InferenceServerClient(server.url) as client:
            going = True
            while going:
                try:
                    going = record("aio", (await infer_http_aio(client))[0])
                except InferenceServerException as exc:
                    going = record("aio", None, str(exc))

    threads = [threading.Thread(target=sync_client, args=(k,)) for k in ("http", "grpc")]
    threads.append(threading.Thread(target=lambda: asyncio.run(aio_client())))
    for thread in threads:
        thread.start()
    with server.client() as client:
        wait_for(lambda: counts["old"] >= 30, "requests on the old version")
        set_factor(model_dir, 1, 2.0)
        while any(thread.is_alive() for thread in threads):
            if states(client, "scaled") != {"1": "READY"}:
                counts["index_not_ready"] += 1
            time.sleep(0.01)
        for thread in threads:
            thread.join()
    assert not errors, errors[:5]
    return counts


async def infer_http_aio(client: httpaio.InferenceServerClient) -> list[float]:
    tensor = httpaio.InferInput("IN", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    return (await client.infer("scaled", [tensor])).as_numpy("OUT").tolist()


def test_poll_reload_under_load_fails_no_request(poll: RunningServer, poll_repo: Path) -> None:
    counts = _reload_under_load(poll, poll_repo / "scaled")
    assert counts["failed"] == 0
    assert counts["old"] >= 30 and counts["new"] >= 60
    assert counts["index_not_ready"] == 0  # the serving version stayed READY throughout


def test_poll_adds_and_removes_versions(poll: RunningServer, poll_repo: Path) -> None:
    with poll.client() as client:
        set_factor(poll_repo / "latest", 2, 2.0)  # latest 1: version 2 replaces version 1
        wait_for(lambda: states(client, "latest").get("1") == "UNAVAILABLE", "version 1 out")
        assert rows(client, "latest") == [
            {"name": "latest", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "latest", "version": "2", "state": "READY"},
        ]
        assert infer_http(client, "latest", [1.0]) == ([2.0], "2")
        shutil.rmtree(poll_repo / "every" / "2")  # all: a removed version unloads
        wait_for(lambda: states(client, "every").get("2") == "UNAVAILABLE", "version 2 out")
        assert client.get_model_metadata("every")["versions"] == ["1"]
        set_factor(poll_repo / "every", 3, 3.0)
        wait_for(lambda: states(client, "every").get("3") == "READY", "version 3 in")
        assert client.get_model_metadata("every")["versions"] == ["1", "3"]
        assert infer_http(client, "every", [1.0], "3") == ([3.0], "3")


def test_poll_keeps_serving_when_a_change_is_broken(poll: RunningServer, poll_repo: Path) -> None:
    model_dir = poll_repo / "broken_later"
    config = (model_dir / "config.pbtxt").read_text()
    with poll.client() as client:
        set_factor(model_dir, 1, 5.0, broken=True)  # initialize raises
        wait_for(lambda: "broken on purpose" in poll.log(), "the failed reload")
        assert answer(client, "broken_later") == 1.0  # the previous version still serves
        (model_dir / "config.pbtxt").write_text(config + "\nnot protobuf text\n")
        wait_for(lambda: "failed to load 'broken_later': " in poll.log(), "the config failure")
        assert answer(client, "broken_later") == 1.0
        assert states(client, "broken_later") == {"1": "READY"}
        assert client.is_server_ready()
        (model_dir / "config.pbtxt").write_text(config)
        set_factor(model_dir, 1, 5.0)
        wait_for(lambda: answer(client, "broken_later") == 5.0, "the fixed version")
        assert states(client, "broken_later") == {"1": "READY"}


def test_poll_unloads_an_ensemble_whose_step_went_away(
    poll: RunningServer, poll_repo: Path
) -> None:
    with poll.client() as client:
        assert answer(client, "pipeline") == 6.0
        shutil.move(poll_repo / "step_a", poll_repo.parent / "step_a_aside")
        wait_for(lambda: not client.is_model_ready("pipeline"), "the ensemble to unload")
        assert rows(client, "pipeline") == [
            {"name": "pipeline", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]
        assert client.is_model_ready("step_b")
        shutil.move(poll_repo.parent / "step_a_aside", poll_repo / "step_a")
        wait_for(lambda: client.is_model_ready("pipeline"), "the ensemble to come back")
        assert answer(client, "pipeline") == 6.0


def test_repository_poll_secs_zero_disables_the_periodic_scan(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_controlled(repo, "scaled")
    server = start_server(
        repo, "--model-control-mode=poll", "--repository-poll-secs=0", log_path=tmp_path / "log"
    )
    try:
        wait_server_ready(server)
        with server.client() as client:
            write_controlled(repo, "arrived")
            set_factor(repo / "scaled", 1, 2.0)
            time.sleep(3)  # would be three scans at the smallest interval (1 s)
            assert rows(client, "arrived") == [{"name": "arrived"}]
            assert answer(client, "scaled") == 1.0
            with pytest.raises(InferenceServerException, match="polling is enabled"):
                client.load_model("arrived")
    finally:
        assert server.stop() == 0, server.log()


# --- explicit mode: reloads, states, unload_dependents ------------------------------------


@pytest.fixture(scope="module")
def explicit_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("explicit_repo")
    gates = tmp_path_factory.mktemp("gates")
    for name in ("reloaded", "reloaded_grpc", "unchanged", "overridden"):
        write_controlled(repo, name)
    write_controlled(repo, "drained", execute_gate=str(gates / "drained"))
    write_controlled(repo, "unloading", execute_gate=str(gates / "unloading"))
    write_controlled(repo, "slow_init", init_gate=str(gates / "slow_init"))
    write_controlled(repo, "part_a", {1: 2.0})
    write_controlled(repo, "part_b", {1: 3.0})
    write_ensemble(repo, "whole", "part_a", "part_b")
    return repo


@pytest.fixture(scope="module")
def explicit(
    explicit_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("explicit_log") / "server.log"
    names = ["reloaded", "reloaded_grpc", "unchanged", "overridden", "drained", "unloading"]
    running = start_server(
        explicit_repo,
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in names),
        log_path=log_path,
    )
    wait_server_ready(running)
    yield running
    assert running.stop() == 0, running.log()


def test_failed_reloads_keep_the_previous_version_serving(
    explicit: RunningServer, explicit_repo: Path
) -> None:
    good = {
        "backend": "python",
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
    }
    zero_dims = {**good, "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [0]}]}
    poll_text = "failed to load 'reloaded', failed to poll from model repository"
    version_text = (
        "load failed for model 'reloaded': version 1 is at UNAVAILABLE state: Invalid argument: "
    )
    set_factor(explicit_repo / "reloaded", 1, 4.0, broken=True)
    with explicit.client() as client:
        cases = [
            ({"config": "{bad"}, "500", poll_text),  # not JSON
            ({"config": json.dumps({"bogus_field": 1})}, "500", poll_text),  # not a config
            ({"config": json.dumps({**good, "name": "other"})}, "500", poll_text),
            ({"config": json.dumps(zero_dims)}, "400", version_text),  # an invalid config
            ({}, "400", "version 1 is at UNAVAILABLE state: Internal: RuntimeError: broken"),
        ]
        for kwargs, status, text in cases:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("reloaded", **kwargs)
            assert info.value.status() == status, kwargs
            assert text in info.value.message(), (kwargs, info.value.message())
            assert answer(client, "reloaded") == 1.0  # the previous version kept serving
            assert states(client, "reloaded") == {"1": "READY"}
        assert info.value.message().endswith(";\n")  # Triton's load text
        assert client.is_server_ready()
        set_factor(explicit_repo / "reloaded", 1, 4.0)
        client.load_model("reloaded")
        assert answer(client, "reloaded") == 4.0


def test_failed_reload_over_grpc_reports_the_reason(
    explicit: RunningServer, explicit_repo: Path
) -> None:
    set_factor(explicit_repo / "reloaded_grpc", 1, 4.0, broken=True)
    with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("reloaded_grpc")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert info.value.message().startswith(
            "load failed for model 'reloaded_grpc': version 1 is at UNAVAILABLE state: "
            "Internal: RuntimeError: broken on purpose"
        )
        with pytest.raises(InferenceServerException) as info:
            client.load_model("reloaded_grpc", config="{bad")
        assert info.value.status() == "StatusCode.INTERNAL"
        assert client.is_model_ready("reloaded_grpc")
        assert infer_grpc(client, "reloaded_grpc", [1.0]) == ([1.0], "1")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": "reloaded_grpc", "version": "1", "state": "READY"} in index


def test_reload_swaps_at_once_and_the_old_version_drains(
    explicit: RunningServer, explicit_repo: Path
) -> None:
    gate = Path(_param(explicit_repo / "drained", "execute_gate"))
    results: list[Any] = []
    with explicit.client() as client:
        blocked = threading.Thread(
            target=lambda: results.append(infer_http(explicit.client(), "drained", [-1.0]))
        )
        blocked.start()  # held inside the old version's execute until the gate opens
        wait_for(lambda: Path(f"{gate}.started").exists(), "the request to reach execute")
        set_factor(explicit_repo / "drained", 1, 2.0)
        client.load_model("drained")  # returns once the new version serves
        assert answer(client, "drained") == 2.0
        assert states(client, "drained") == {"1": "READY"}
        assert blocked.is_alive()
        gate.touch()
        blocked.join(60)
    assert results == [([-1.0], "1")]  # answered by the old version (FACTOR 1)


def test_index_states_loading_and_unloading(explicit: RunningServer, explicit_repo: Path) -> None:
    init_gate = Path(_param(explicit_repo / "slow_init", "init_gate"))
    execute_gate = Path(_param(explicit_repo / "unloading", "execute_gate"))
    with explicit.client() as client, grpcclient.InferenceServerClient(explicit.grpc_url) as g:
        loader = threading.Thread(target=lambda: explicit.client().load_model("slow_init"))
        loader.start()
        wait_for(lambda: Path(f"{init_gate}.waiting").exists(), "initialize to start")
        assert rows(client, "slow_init") == [
            {"name": "slow_init", "version": "1", "state": "LOADING"}
        ]
        assert not client.is_model_ready("slow_init")
        assert not client.is_model_ready("slow_init", "1")
        with pytest.raises(InferenceServerException) as info:
            answer(client, "slow_init")
        assert info.value.message() == (
            "Request for unknown model: 'slow_init' has no available versions"
        )
        assert "slow_init" not in {r["name"] for r in _ready_index(explicit)}
        grpc_rows = g.get_model_repository_index(as_json=True)["models"]
        assert {"name": "slow_init", "version": "1", "state": "LOADING"} in grpc_rows
        init_gate.touch()
        loader.join(60)
        assert rows(client, "slow_init") == [
            {"name": "slow_init", "version": "1", "state": "READY"}
        ]
        assert "slow_init" in {r["name"] for r in _ready_index(explicit)}

        results: list[Any] = []
        blocked = threading.Thread(
            target=lambda: results.append(infer_http(explicit.client(), "unloading", [-1.0]))
        )
        blocked.start()
        wait_for(lambda: Path(f"{execute_gate}.started").exists(), "the request in execute")
        unloader = threading.Thread(target=lambda: explicit.client().unload_model("unloading"))
        unloader.start()
        wait_for(lambda: states(client, "unloading") == {"1": "UNLOADING"}, "UNLOADING")
        assert not client.is_model_ready("unloading")
        execute_gate.touch()  # the request in flight completes, then the version unloads
        blocked.join(60)
        unloader.join(60)
        assert results == [([-1.0], "1")]
        assert rows(client, "unloading") == [
            {"name": "unloading", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]
        assert client.is_server_ready()  # an unloaded model is no failure


def _ready_index(server: RunningServer) -> list[dict[str, Any]]:
    reply = requests.post(f"http://{server.url}/v2/repository/index", json={"ready": True})
    assert reply.status_code == 200
    rows = reply.json()
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert [m.name for m in index.models] == [r["name"] for r in rows]
    assert all(r["state"] == "READY" for r in rows)
    return rows


def _param(model_dir: Path, key: str) -> str:
    text = (model_dir / "config.pbtxt").read_text()
    return text.split(f'key: "{key}" value: {{ string_value: "', 1)[1].split('"', 1)[0]


def test_an_unchanged_model_is_not_reloaded(explicit: RunningServer) -> None:
    with explicit.client() as client:
        answer(client, "unchanged")
        count = client.get_inference_statistics("unchanged")["model_stats"][0]["inference_count"]
        client.load_model("unchanged")  # nothing changed: Triton leaves the model as it is
        stats = client.get_inference_statistics("unchanged")["model_stats"][0]
        assert stats["inference_count"] == count > 0


def _ready_set(client: httpclient.InferenceServerClient, *names: str) -> set[str]:
    return {name for name in names if client.is_model_ready(name)}


def test_unload_dependents_over_http_and_grpc(explicit: RunningServer) -> None:
    every = ("whole", "part_a", "part_b")
    with explicit.client() as client, grpcclient.InferenceServerClient(explicit.grpc_url) as g:
        assert "model_repository(unload_dependents)" in client.get_server_metadata()["extensions"]
        client.load_model("whole")  # its steps load with it
        assert _ready_set(client, *every) == set(every)
        assert answer(client, "whole") == 6.0
        client.unload_model("whole")  # the steps stay
        assert _ready_set(client, *every) == {"part_a", "part_b"}
        client.load_model("whole")
        client.unload_model("part_a")  # without unload_dependents: the ensemble goes too
        assert _ready_set(client, *every) == {"part_b"}
        assert rows(client, "whole") == [
            {"name": "whole", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]
        client.load_model("whole")
        client.unload_model("whole", unload_dependents=True)  # steps it alone brought go too
        assert _ready_set(client, *every) == set()
        client.load_model("part_a")  # loaded by name: unload_dependents leaves it
        client.load_model("whole")
        g.unload_model("whole", unload_dependents=True)
        assert _ready_set(client, *every) == {"part_a"}
        g.load_model("whole")
        g.unload_model("part_b", unload_dependents=True)
        assert _ready_set(client, *every) == {"part_a"}


def test_unload_parameters_as_triton_reads_them(
    explicit: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    url = f"http://{explicit.url}/v2/repository/models/never_loaded/unload"
    for body in (b"{", b'{"parameters": 5}', b'{"parameters": {"unload_dependents": "yes"}}'):
        assert requests.post(url, data=body).status_code == 200  # Triton ignores these
    request = service_pb2.RepositoryModelUnloadRequest(model_name="never_loaded")
    request.parameters["unload_dependents"].string_param = "yes"
    code, details = grpc_status(lambda: stub.RepositoryModelUnload(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "invalid value type for 'unload_dependents' parameter, expected bool_param."
    request = service_pb2.RepositoryModelUnloadRequest(model_name="never_loaded")
    request.parameters["bogus"].bool_param = True
    stub.RepositoryModelUnload(request)  # other parameters are ignored


# --- bad input ----------------------------------------------------------------------------


def test_unknown_models_in_load_and_unload(explicit: RunningServer) -> None:
    text = "failed to load 'nope', failed to poll from model repository"
    with explicit.client() as client, grpcclient.InferenceServerClient(explicit.grpc_url) as g:
        client.unload_model("nope")  # Triton: fine
        g.unload_model("nope")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope")
        assert (info.value.status(), info.value.message()) == ("500", text)
        with pytest.raises(InferenceServerException) as info:
            g.load_model("nope")
        assert (info.value.status(), info.value.message()) == ("StatusCode.INTERNAL", text)
        assert rows(client, "nope") == []


def test_override_files_stay_inside_the_model_folder(
    explicit: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub, tmp_path: Path
) -> None:
    config = json.dumps(_GOOD_CONFIG)
    code = CONTROLLED_PY.format(factor=7.0).encode()
    outside = tmp_path / "outside.py"
    url = f"http://{explicit.url}/v2/repository/models/overridden/load"
    escapes = ["../escape.py", "1/../../escape.py", "../../../../../../../../tmp/escape.py"]
    poll_text = "failed to load 'overridden', failed to poll from model repository"
    with explicit.client() as client:
        for path in escapes:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("overridden", config=config, files={f"file:{path}": code})
            assert (info.value.status(), info.value.message()) == ("500", poll_text), path
        with pytest.raises(InferenceServerException) as info:
            client.load_model("overridden", config=config, files={f"file:{outside}": code})
        assert info.value.status() == "400"
        assert "is absolute" in info.value.message()
        bad_bodies = [
            ({"config": config, "file:1/model.py": "%%%"}, 400, "base64"),
            ({"config": config, "file:1/model.py": 5}, 500, "non-string"),
        ]
        for parameters, status, text in bad_bodies:
            reply = requests.post(url, json={"parameters": parameters})
            assert reply.status_code == status, parameters
            assert text in reply.json()["error"]
        for path in (escapes[0], str(outside)):
            request = service_pb2.RepositoryModelLoadRequest(model_name="overridden")
            request.parameters["config"].string_param = config
            request.parameters[f"file:{path}"].bytes_param = code
            status, _ = grpc_status(lambda request=request: stub.RepositoryModelLoad(request))
            assert status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        assert not outside.exists()
        assert not Path("/tmp/escape.py").exists()
        assert answer(client, "overridden") == 1.0  # none of it disturbed the model
        client.load_model("overridden", config=config, files={"file:1/../1/model.py": code})
        assert answer(client, "overridden") == 7.0  # a path that stays inside is fine


_GOOD_CONFIG = {
    "backend": "python",
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
}


# --- --model-load-thread-count ----------------------------------------------------------------


@pytest.mark.parametrize("threads", [4, 2])
def test_models_load_concurrently_up_to_the_thread_count(tmp_path: Path, threads: int) -> None:
    """Each model's initialize waits until ``threads`` models initialize at once (or all
    four began): with sequential loading it would never get there. None sees more."""
    repo, barrier = tmp_path / "repo", tmp_path / "barrier"
    for part in ("entered", "left", "peak"):
        (barrier / part).mkdir(parents=True)
    params = {"load_barrier_dir": str(barrier), "load_barrier": str(threads), "load_total": "4"}
    names = [f"m{i}" for i in range(4)]
    for name in names:
        write_controlled(repo, name, **params)
    server = start_server(repo, f"--model-load-thread-count={threads}", log_path=tmp_path / "log")
    try:
        wait_server_ready(server)
        with server.client() as client:
            assert all(client.is_model_ready(name) for name in names)
        peaks = [int((barrier / "peak" / name).read_text()) for name in names]
        assert max(peaks) == threads, peaks
    finally:
        assert server.stop() == 0, server.log()


# --- the in-process API, duplicates, the index request ----------------------------------------


def test_in_process_poll_with_the_periodic_scan_off(tmp_path: Path) -> None:
    """``Server.poll_repository()`` (Triton's ServerPollModelRepository) applies one scan."""
    repo = tmp_path / "repo"
    write_controlled(repo, "scaled")
    options = ServerOptions(
        model_repositories=[str(repo)], model_control_mode="poll", repository_poll_secs=0
    )

    async def scenario() -> None:
        server = Server(options)
        await server.start(frontends=False)
        try:
            write_controlled(repo, "arrived", {1: 3.0})
            assert not server.model_ready("arrived")
            await server.poll_repository()
            assert server.model_ready("arrived")
            shutil.rmtree(repo / "scaled")
            await server.poll_repository()
            assert not server.model_ready("scaled")
        finally:
            await server.stop()
        explicit = Server(ServerOptions(model_repositories=[str(repo)], model_control_mode="none"))
        with pytest.raises(Unavailable, match="polling is disabled"):
            await explicit.poll_repository()

    asyncio.run(scenario())


def test_a_model_in_two_repositories_loads_from_neither(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_controlled(first, "twin")
    write_controlled(second, "twin")
    write_controlled(second, "single")
    server = start_server(
        first, f"--model-repository={second}", "--exit-on-error=false", log_path=tmp_path / "log"
    )
    try:
        with server.client() as client, grpcclient.InferenceServerClient(server.grpc_url) as g:
            wait_for(lambda: client.is_model_ready("single"), "the other model")
            twin = {
                "name": "twin",
                "state": "UNAVAILABLE",
                "reason": "model appears in two or more repositories",
            }
            assert rows(client, "twin") == [twin]
            assert twin in g.get_model_repository_index(as_json=True)["models"]
            assert not client.is_model_ready("twin")
            assert not client.is_server_ready()  # strict readiness: a model failed
    finally:
        assert server.stop() == 0, server.log()


def test_index_request_body(explicit: RunningServer) -> None:
    url = f"http://{explicit.url}/v2/repository/index"
    everything = requests.post(url).json()
    assert requests.post(url, json={"ready": False}).json() == everything
    assert "whole" in {row["name"] for row in everything}
    reply = requests.post(url, json={"ready": "yes"})
    assert reply.status_code == 400
    assert reply.json() == {"error": "attempt to access JSON non-boolean as boolean"}
    reply = requests.post(url, data=b"{")
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("failed to parse the request JSON buffer")
