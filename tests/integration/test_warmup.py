"""Model warmup: ``model_warmup`` samples run on every instance before the model is ready.

The models record every batch they execute (instance, inputs) in a file named by their
configuration, so the tests see exactly what warmup sent; texts are tritonserver 2.51's
(see /work/notes/triton_cache_warmup_reference.md).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

RECORDER = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.instance = args["model_instance_name"]
        config = json.loads(args["model_config"])
        self.batching = config["max_batch_size"] > 0
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.log = params["log"]
        self.mode = params.get("mode", "ok")
        self.gate = params.get("gate", "")
        self.executions = 0

    def execute(self, requests):
        self.executions += 1
        batch = []
        for request in requests:
            inputs = {}
            for tensor in request.inputs():
                array = tensor.as_numpy()
                values = array.reshape(-1).tolist()
                values = [v.decode() if isinstance(v, bytes) else v for v in values]
                inputs[tensor.name()] = {"shape": list(array.shape), "values": values}
            batch.append(inputs)
        with open(self.log, "a") as log:
            log.write(json.dumps({"instance": self.instance, "requests": batch}) + "\\n")
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.02)
        if self.mode == "raise":
            raise ValueError("warmup boom")
        if self.mode == "error":
            error = pb_utils.TritonError("bad warmup value")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        count = np.array([[self.executions]] if self.batching else [self.executions])
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("EXECUTIONS", count.astype(np.int64))])
            for _ in requests
        ]
"""

IO = """
backend: "python"
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] },
        { name: "Y" data_type: TYPE_INT32 dims: [ 2 ] },
        { name: "S" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "EXECUTIONS" data_type: TYPE_INT64 dims: [ 1 ] } ]
"""


DATATYPES = {"X": "FP32", "Y": "INT32", "S": "BYTES"}


def _input(name: str, dims: str, data_type: str, data: str) -> str:
    return f'inputs {{ key: "{name}" value: {{ data_type: {data_type} dims: [ {dims} ] {data} }} }}'


def _sample(name: str, batch_size: int, *inputs: str, extra: str = "") -> str:
    return f'{{ name: "{name}" batch_size: {batch_size} {extra} {" ".join(inputs)} }}'


#: The model's three inputs, all zeros, for the samples that vary only X.
ZERO_Y_S = (
    _input("Y", "2", "TYPE_INT32", "zero_data: true"),
    _input("S", "1", "TYPE_STRING", "zero_data: true"),
)

SAMPLES = {
    "warm_record": (
        8,
        "instance_group [ { count: 2 kind: KIND_CPU } ]",
        [
            _sample(
                "zeros",
                2,
                _input("X", "3", "TYPE_FP32", "zero_data: true"),
                _input("Y", "2", "TYPE_INT32", "random_data: true"),
                _input("S", "1", "TYPE_STRING", "random_data: true"),
                extra="count: 3",
            ),
            _sample(
                "files",
                1,
                _input("X", "3", "TYPE_FP32", 'input_data_file: "x.bin"'),
                _input("Y", "2", "TYPE_INT32", 'input_data_file: "y.bin"'),
                _input("S", "1", "TYPE_STRING", 'input_data_file: "s.bin"'),
            ),
            _sample("skipped", 0, _input("X", "3", "TYPE_FP32", "zero_data: true")),
        ],
    ),
    "warm_single": (
        0,
        "",
        [
            _sample(
                "nb",
                3,
                _input("X", "3", "TYPE_FP32", "random_data: true"),
                _input("Y", "2", "TYPE_INT32", "zero_data: true"),
                _input("S", "1", "TYPE_STRING", "zero_data: true"),
                _input("EXTRA", "2", "TYPE_FP32", "zero_data: true"),
                extra="count: 0",
            )
        ],
    ),
    "warm_gate": (
        4,
        "",
        [_sample("g", 1, _input("X", "3", "TYPE_FP32", "zero_data: true"), *ZERO_Y_S)],
    ),
}

#: Models whose warmup fails: (mode, sample), and the reason Triton gives.
FAILING = {
    "warm_raise": (
        "raise",
        _sample("r", 1, _input("X", "3", "TYPE_FP32", "zero_data: true"), *ZERO_Y_S),
        "failed to run warmup sample 'r': Failed to process the request(s) for model "
        "'warm_raise_0', message: ValueError: warmup boom",
    ),
    "warm_error": (
        "error",
        _sample("e", 2, _input("X", "3", "TYPE_FP32", "zero_data: true"), *ZERO_Y_S),
        "failed to run warmup sample 'e': bad warmup value; bad warmup value; ",
    ),
    "warm_too_big": (
        "ok",
        _sample("tb", 5, _input("X", "3", "TYPE_FP32", "zero_data: true"), *ZERO_Y_S),
        "failed to run warmup sample 'tb': "
        + "batch size 5 for 'warm_too_big_0', max allowed is 4; " * 5,
    ),
    "warm_missing_file": (
        "ok",
        _sample("mf", 1, _input("X", "3", "TYPE_FP32", 'input_data_file: "nope.bin"'), *ZERO_Y_S),
        "failed to open text file for read {dir}/warm_missing_file/warmup/nope.bin: "
        "No such file or directory",
    ),
    "warm_short_file": (
        "ok",
        _sample("sf", 1, _input("X", "3", "TYPE_FP32", 'input_data_file: "x.bin"'), *ZERO_Y_S),
        "[request id: <id_unknown>] warmup setting expects 12 bytes, but the data provided "
        "from x.binonly has 4 bytes",
    ),
    "warm_bad_string": (
        "ok",
        _sample(
            "ss",
            1,
            _input("X", "3", "TYPE_FP32", "zero_data: true"),
            _input("Y", "2", "TYPE_INT32", "zero_data: true"),
            _input("S", "1", "TYPE_STRING", 'input_data_file: "s.bin"'),
        ),
        "failed to run warmup sample 'ss': incomplete string data for inference input 'S', "
        "expecting string of length 9 but only 2 bytes available; ",
    ),
    "warm_var_dims": (
        "ok",
        _sample("vd", 1, _input("X", "-1", "TYPE_FP32", "zero_data: true"), *ZERO_Y_S),
        "warmup setting expects all variable-size dimensions are specified for input 'X'",
    ),
    "warm_no_kind": (
        "ok",
        _sample("nk", 1, _input("X", "3", "TYPE_FP32", ""), *ZERO_Y_S),
        "[request id: <id_unknown>] warmup setting expects input 'X' to have input_data_type set",
    ),
    "warm_missing_input": (
        "ok",
        _sample("mi", 1, _input("X", "3", "TYPE_FP32", "zero_data: true"), ZERO_Y_S[1]),
        "[request id: <id_unknown>] expected 3 inputs but got 2 inputs for model "
        "'warm_missing_input'. Got input(s) ['S','X'], but missing required input(s) ['Y']. "
        "Please provide all required input(s).",
    ),
    "warm_bad_dtype": (
        "ok",
        _sample("bt", 1, _input("X", "3", "TYPE_INT8", "zero_data: true"), *ZERO_Y_S),
        "[request id: <id_unknown>] inference input 'X' data-type is 'INT8', but model "
        "'warm_bad_dtype' expects 'FP32'",
    ),
}


def _config(name: str, max_batch_size: int, extra: str, samples: list[str], params: dict) -> str:
    parameters = "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    return (
        f'name: "{name}"\nmax_batch_size: {max_batch_size}\n{IO}\n{extra}\n{parameters}\n'
        f"model_warmup [ {', '.join(samples)} ]\n"
    )


def _files(model_dir: Path, files: dict[str, bytes]) -> None:
    (model_dir / "warmup").mkdir()
    for name, content in files.items():
        (model_dir / "warmup" / name).write_bytes(content)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("warm_repo")
    logs = tmp_path_factory.mktemp("warm_logs")
    for name, (max_batch_size, extra, samples) in SAMPLES.items():
        params = {
            "log": logs / f"{name}.jsonl",
            "gate": logs / "gate" if name == "warm_gate" else "",
        }
        params = {k: v for k, v in params.items() if v}
        write_model(
            repository, name, _config(name, max_batch_size, extra, samples, params), RECORDER
        )
    for name, (mode, sample, _) in FAILING.items():
        params = {"log": logs / f"{name}.jsonl", "mode": mode}
        write_model(repository, name, _config(name, 4, "", [sample], params), RECORDER)
    x = np.array([1.5, 2.5, 3.5, 9.0], dtype=np.float32).tobytes()  # longer than needed
    y = np.array([7, -8], dtype=np.int32).tobytes()
    _files(
        repository / "warm_record",
        {"x.bin": x, "y.bin": y, "s.bin": struct.pack("<I", 5) + b"hello"},
    )
    _files(repository / "warm_short_file", {"x.bin": b"abcd"})
    _files(repository / "warm_bad_string", {"s.bin": struct.pack("<I", 9) + b"ab"})
    return repository


@pytest.fixture(scope="module")
def warm(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Every model but ``warm_gate`` loads at startup; the failing ones fail alone."""
    names = [n for n in [*SAMPLES, *FAILING] if n != "warm_gate"]
    running = start_server(
        repo,
        "--model-control-mode=explicit",
        *(f"--load-model={n}" for n in names),
        "--exit-on-error=false",
        log_path=tmp_path_factory.mktemp("warm_log") / "server.log",
    )
    yield running
    running.stop()


def _log(repo: Path, model: str) -> list[dict]:
    path = Path(_params(repo, model)["log"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def _params(repo: Path, model: str) -> dict[str, str]:
    text = (repo / model / "config.pbtxt").read_text()
    params = {}
    for line in text.splitlines():
        if line.startswith("parameters"):
            key = line.split('key: "')[1].split('"')[0]
            params[key] = line.split('string_value: "')[1].split('"')[0]
    return params


def _infer(client, model: str, batching: bool, protocol=httpclient) -> int:
    lead = [1] if batching else []
    arrays = {
        "X": np.zeros([*lead, 3], np.float32),
        "Y": np.zeros([*lead, 2], np.int32),
        "S": np.array([b"x"], dtype=np.object_).reshape([*lead, 1]),
    }
    inputs = []
    for name, array in arrays.items():
        tensor = protocol.InferInput(name, list(array.shape), DATATYPES[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return int(client.infer(model, inputs).as_numpy("EXECUTIONS").reshape(-1)[0])


# --- what warmup sends ----------------------------------------------------------------


def test_every_instance_runs_every_sample_before_ready(warm: RunningServer, repo: Path) -> None:
    batches = _log(repo, "warm_record")
    by_instance: dict[str, list[list[dict]]] = {}
    for batch in batches:
        by_instance.setdefault(batch["instance"], []).append(batch["requests"])
    assert sorted(by_instance) == ["warm_record_0_0", "warm_record_0_1"]
    randoms = []
    for instance, executed in by_instance.items():
        # "zeros": 3 executions of a batch of 2; "files": 1 of 1; "skipped" (batch 0): none
        assert [len(requests) for requests in executed] == [2, 2, 2, 1], instance
        zeros = [request for requests in executed[:3] for request in requests]
        for request in zeros:
            assert request["X"] == {"shape": [1, 3], "values": [0.0, 0.0, 0.0]}
            assert request["S"] == {"shape": [1, 1], "values": [""]}
            assert request["Y"]["shape"] == [1, 2]
        # random data: one buffer per sample and instance, the same in each request
        assert len({tuple(r["Y"]["values"]) for r in zeros}) == 1
        randoms.append(tuple(zeros[0]["Y"]["values"]))
        (from_files,) = executed[3]
        assert from_files == {
            "X": {"shape": [1, 3], "values": [1.5, 2.5, 3.5]},
            "Y": {"shape": [1, 2], "values": [7, -8]},
            "S": {"shape": [1, 1], "values": ["hello"]},
        }
    assert randoms[0] != randoms[1]  # each instance draws its own


def test_non_batching_model_and_count_zero(warm: RunningServer, repo: Path) -> None:
    (batch,) = _log(repo, "warm_single")  # count 0 runs once; batch_size 3 = 3 requests
    assert len(batch["requests"]) == 3
    for request in batch["requests"]:
        assert request["X"]["shape"] == [3]  # no batch dimension
        assert request["Y"] == {"shape": [2], "values": [0, 0]}
        assert request["EXTRA"] == {"shape": [2], "values": [0.0, 0.0]}  # passed on as is
    with warm.client() as client:
        assert _infer(client, "warm_single", batching=False) == 2  # warmup was execution 1


def test_warmup_counts_in_statistics(warm: RunningServer) -> None:
    """As in tritonserver 2.51: 2 instances x (3 batches of 2 + 1 batch of 1)."""
    with warm.client() as client:
        (http,) = client.get_inference_statistics("warm_record")["model_stats"]
    grpc = grpcclient.InferenceServerClient(warm.grpc_url)
    try:
        (rpc,) = grpc.get_inference_statistics("warm_record", as_json=True)["model_stats"]
    finally:
        grpc.close()
    for stats in (http, rpc):
        assert int(stats["inference_count"]) == 14
        assert int(stats["execution_count"]) == 8
        assert int(stats["inference_stats"]["success"]["count"]) == 14
        sizes = {
            int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]
        }
        assert sizes == {1: 2, 2: 6}


def test_not_ready_until_warmup_is_done(warm: RunningServer, repo: Path) -> None:
    """``warm_gate`` blocks in its warmup until the test opens the gate."""
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with warm.client(network_timeout=60) as client:
                client.load_model("warm_gate")
        except BaseException as exc:
            errors.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    log = Path(_params(repo, "warm_gate")["log"])
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.exists(), "warmup never started"
    with warm.client() as client:
        assert not client.is_model_ready("warm_gate")
        row = next(r for r in client.get_model_repository_index() if r["name"] == "warm_gate")
        assert row["state"] == "LOADING"
    Path(_params(repo, "warm_gate")["gate"]).touch()
    loader.join(60)
    assert not errors
    with warm.client() as client:
        assert client.is_model_ready("warm_gate")
        assert _infer(client, "warm_gate", batching=True) == 2


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(FAILING))
def test_failed_sample_fails_only_its_model(warm: RunningServer, repo: Path, model: str) -> None:
    expected = FAILING[model][2].format(dir=repo)
    with warm.client() as client:
        row = next(r for r in client.get_model_repository_index() if r["name"] == model)
        assert row["state"] == "UNAVAILABLE"
        assert row["reason"].startswith(expected), row["reason"]
        assert not client.is_model_ready(model)
        assert client.is_model_ready("warm_record")  # the rest of the repository loaded


def test_load_api_reports_the_warmup_failure(warm: RunningServer) -> None:
    text = FAILING["warm_raise"][2]
    with warm.client() as client, pytest.raises(InferenceServerException) as info:
        client.load_model("warm_raise")
    assert info.value.status() == "400"
    assert text in info.value.message()
    grpc = grpcclient.InferenceServerClient(warm.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            grpc.load_model("warm_error")
    finally:
        grpc.close()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert FAILING["warm_error"][2] in info.value.message()


def test_failing_warmup_stops_startup_under_exit_on_error(repo: Path, tmp_path: Path) -> None:
    running = start_server(
        repo,
        "--model-control-mode=explicit",
        "--load-model=warm_raise",
        log_path=tmp_path / "server.log",
        wait_ready=False,
    )
    assert running.process.wait(60) == 1
    assert "failed to run warmup sample 'r'" in running.log()
