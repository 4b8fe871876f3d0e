"""The sequence batcher, driven by real clients over HTTP and gRPC (sync and aio).

The models keep a running sum per sequence, so a wrong order, a lost request or a
sequence that changed instance shows in the sums; they also echo the control inputs
and their instance name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, write_model

ACCUMULATOR = """
import numpy as np
import triton_python_backend_utils as pb_utils


def control(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    \"\"\"A running sum per sequence, kept by the model; echoes what the batcher told it.\"\"\"

    def initialize(self, args):
        self.instance = args["model_instance_name"]
        self.totals = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().item())
            key = request.correlation_id()
            if control(request, "START"):
                self.totals[key] = 0
            self.totals[key] = self.totals.get(key, 0) + value
            seen = [float(control(request, name) or 0) for name in ("START", "END", "READY")]
            corrid = control(request, "CORRID")
            corrid = corrid.decode() if isinstance(corrid, bytes) else str(corrid)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", np.array([[self.totals[key]]], np.int32)),
                pb_utils.Tensor("CONTROLS", np.array([seen], np.float32)),
                pb_utils.Tensor("CORRID_SEEN", np.array([[corrid.encode()]], object)),
                pb_utils.Tensor("INSTANCE", np.array([[self.instance.encode()]], object)),
            ]))
        return responses
"""

STATELESS_ADDER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Keeps nothing: its running sum travels as implicit state (SUM_IN -> SUM_OUT).\"\"\"

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            before = pb_utils.get_input_tensor_by_name(request, "SUM_IN").as_numpy()
            total = (before + value).astype(np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", total),
                pb_utils.Tensor("SUM_OUT", total),
            ]))
        return responses
"""

ACCUMULATOR_IO = """
    input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [
      { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },
      { name: "CONTROLS" data_type: TYPE_FP32 dims: [ 3 ] },
      { name: "CORRID_SEEN" data_type: TYPE_STRING dims: [ 1 ] },
      { name: "INSTANCE" data_type: TYPE_STRING dims: [ 1 ] }
    ]
    instance_group [ { count: 2, kind: KIND_CPU } ]
"""

MODELS = {
    "seq_direct": (
        ACCUMULATOR,
        """
        name: "seq_direct"
        backend: "python"
        max_batch_size: 4
        sequence_batching {
          direct { }
          control_input [
            { name: "START"
              control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
            { name: "END"
              control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
            { name: "READY"
              control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
            { name: "CORRID"
              control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
          ]
        }
        """
        + ACCUMULATOR_IO,
    ),
    "seq_oldest": (
        ACCUMULATOR,
        """
        name: "seq_oldest"
        backend: "python"
        max_batch_size: 4
        sequence_batching {
          oldest { max_candidate_sequences: 4 }
          max_sequence_idle_microseconds: 300000
          control_input [
            { name: "START"
              control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
            { name: "END"
              control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
            { name: "READY"
              control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] } ] },
            { name: "CORRID"
              control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
          ]
        }
        """
        + ACCUMULATOR_IO,
    ),
    "seq_state": (
        STATELESS_ADDER,
        """
        name: "seq_state"
        backend: "python"
        max_batch_size: 0
        sequence_batching {
          state [ {
            input_name: "SUM_IN" output_name: "SUM_OUT" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state [ { name: "zero" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } ]
          } ]
        }
        input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """,
    ),
}


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("seq_repo")
    for name, (model_py, config) in MODELS.items():
        write_model(repository, name, config, model_py)
    running = start_server(repository, log_path=tmp_path_factory.mktemp("seq_log") / "log")
    client = running.client()
    deadline = time.monotonic() + 60
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.is_server_ready(), running.log()
    yield running
    assert running.stop() == 0, running.log()


def value_input(module: object, value: int, shape: tuple[int, ...] = (1, 1)) -> list[object]:
    tensor = module.InferInput("INPUT", list(shape), "INT32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.full(shape, value, np.int32))
    return [tensor]


def step(result: object) -> tuple[int, list[float], str, str]:
    """(running sum, [START, END, READY], CORRID as seen, instance name)."""
    as_numpy = result.as_numpy  # type: ignore[attr-defined]
    return (
        int(as_numpy("OUTPUT").item()),
        as_numpy("CONTROLS").reshape(-1).tolist(),
        as_numpy("CORRID_SEEN").item().decode(),
        as_numpy("INSTANCE").item().decode(),
    )


def test_interleaved_sequences_keep_their_sums_controls_and_instance(
    seq_server: RunningServer,
) -> None:
    values = {101: [1, 2, 3, 4], 202: [10, 20, 30, 40]}
    seen: dict[int, list[tuple[int, list[float], str, str]]] = {101: [], 202: []}
    with seq_server.client() as client:
        for position in range(4):
            for sequence_id, steps in values.items():
                result = client.infer(
                    "seq_direct",
                    value_input(httpclient, steps[position]),
                    sequence_id=sequence_id,
                    sequence_start=position == 0,
                    sequence_end=position == 3,
                )
                seen[sequence_id].append(step(result))
    for sequence_id, steps in values.items():
        results = seen[sequence_id]
        assert [r[0] for r in results] == list(np.cumsum(steps))
        assert [r[1] for r in results] == [[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]]
        assert {r[2] for r in results} == {str(sequence_id)}
        assert len({r[3] for r in results}) == 1  # one instance for the whole sequence
    # The two sequences were spread over the two instances.
    assert seen[101][0][3] != seen[202][0][3]


def test_more_concurrent_sequences_than_slots_over_grpc_aio(seq_server: RunningServer) -> None:
    """10 sequences, 8 slots (2 instances x max_batch_size 4): two wait for a slot."""

    async def run_sequence(client: grpcaio.InferenceServerClient, sequence_id: int) -> list[int]:
        sums = []
        for position in range(5):
            result = await client.infer(
                "seq_direct",
                value_input(grpcclient, sequence_id + position),
                sequence_id=sequence_id,
                sequence_start=position == 0,
                sequence_end=position == 4,
            )
            sums.append(int(result.as_numpy("OUTPUT").item()))
        return sums

    async def main() -> list[list[int]]:
        client = grpcaio.InferenceServerClient(seq_server.grpc_url)
        try:
            return await asyncio.gather(*(run_sequence(client, 1000 * k) for k in range(1, 11)))
        finally:
            await client.close()

    for k, sums in enumerate(asyncio.run(main()), 1):
        assert sums == list(np.cumsum([1000 * k + p for p in range(5)]))


def test_string_correlation_ids_with_the_oldest_strategy(seq_server: RunningServer) -> None:
    grpc = grpcclient.InferenceServerClient(seq_server.grpc_url)
    with seq_server.client() as http:
        first = step(
            grpc.infer(
                "seq_oldest", value_input(grpcclient, 5), sequence_id="alpha", sequence_start=True
            )
        )
        second = step(http.infer("seq_oldest", value_input(httpclient, 7), sequence_id="alpha"))
        last = step(
            grpc.infer(
                "seq_oldest", value_input(grpcclient, 1), sequence_id="alpha", sequence_end=True
            )
        )
    grpc.close()
    assert [first[0], second[0], last[0]] == [5, 12, 13]
    assert first[2] == second[2] == last[2] == "alpha"
    assert [first[1], last[1]] == [[1, 0, 1], [0, 1, 1]]


def test_start_on_an_active_sequence_restarts_it(seq_server: RunningServer) -> None:
    with seq_server.client() as client:
        client.infer("seq_direct", value_input(httpclient, 5), sequence_id=77, sequence_start=True)
        restarted = client.infer(
            "seq_direct", value_input(httpclient, 2), sequence_id=77, sequence_start=True
        )
        client.infer("seq_direct", value_input(httpclient, 0), sequence_id=77, sequence_end=True)
    assert step(restarted)[0] == 2


def expect_http_error(call: object, text: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        call()  # type: ignore[operator]
    assert error.value.status() == "400"
    assert error.value.message() == text


def expect_grpc_error(call: object, text: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        call()  # type: ignore[operator]
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.value.message() == text


def test_sequence_errors_are_tritons(seq_server: RunningServer) -> None:
    no_id = (
        "inference request to model 'seq_direct' must specify a non-zero or non-empty "
        "correlation ID"
    )
    no_start = (
        "inference request for sequence {} to model '{}' must specify the START flag on the "
        "first request of the sequence"
    )
    grpc = grpcclient.InferenceServerClient(seq_server.grpc_url)
    with seq_server.client() as http:
        expect_http_error(lambda: http.infer("seq_direct", value_input(httpclient, 1)), no_id)
        expect_grpc_error(
            lambda: grpc.infer("seq_direct", value_input(grpcclient, 1), sequence_start=True),
            no_id,
        )
        expect_http_error(
            lambda: http.infer("seq_direct", value_input(httpclient, 1), sequence_id=4242),
            no_start.format(4242, "seq_direct"),
        )
        expect_grpc_error(
            lambda: grpc.infer("seq_oldest", value_input(grpcclient, 1), sequence_id="nostart"),
            no_start.format("nostart", "seq_oldest"),
        )
        # After END the sequence is over: a request without START is refused.
        http.infer(
            "seq_direct",
            value_input(httpclient, 1),
            sequence_id=31,
            sequence_start=True,
            sequence_end=True,
        )
        expect_http_error(
            lambda: http.infer("seq_direct", value_input(httpclient, 1), sequence_id=31),
            no_start.format(31, "seq_direct"),
        )
        expect_http_error(
            lambda: http.infer(
                "seq_direct",
                value_input(httpclient, 1, (2, 1)),
                sequence_id=32,
                sequence_start=True,
            ),
            "inference request to model 'seq_direct' must specify batch-size 1 due to "
            "requirements of sequence batcher",
        )
        # The errors disturbed nothing: a good sequence still runs.
        result = http.infer(
            "seq_direct", value_input(httpclient, 9), sequence_id=33, sequence_start=True
        )
        assert step(result)[0] == 9
        http.infer("seq_direct", value_input(httpclient, 0), sequence_id=33, sequence_end=True)
    grpc.close()


def test_an_idle_sequence_is_released(seq_server: RunningServer) -> None:
    with seq_server.client() as client:
        client.infer(
            "seq_oldest", value_input(httpclient, 1), sequence_id="idle", sequence_start=True
        )
        time.sleep(1.0)  # max_sequence_idle_microseconds is 300 ms
        expect_http_error(
            lambda: client.infer("seq_oldest", value_input(httpclient, 1), sequence_id="idle"),
            "inference request for sequence idle to model 'seq_oldest' must specify the START "
            "flag on the first request of the sequence",
        )


def test_implicit_state_carries_the_sum_for_a_python_model(seq_server: RunningServer) -> None:
    grpc = grpcclient.InferenceServerClient(seq_server.grpc_url)
    with seq_server.client() as http:
        sums = []
        for position, value in enumerate([3, 4, 5]):
            client, module = (http, httpclient) if position % 2 else (grpc, grpcclient)
            result = client.infer(
                "seq_state",
                value_input(module, value, (1,)),
                sequence_id=9,
                sequence_start=position == 0,
                sequence_end=position == 2,
            )
            assert result.as_numpy("SUM_OUT") is None  # state is not an output of the model
            sums.append(int(result.as_numpy("OUTPUT").item()))
        restarted = http.infer(
            "seq_state", value_input(httpclient, 6, (1,)), sequence_id=9, sequence_start=True
        )
        http.infer("seq_state", value_input(httpclient, 0, (1,)), sequence_id=9, sequence_end=True)
    grpc.close()
    assert sums == [3, 7, 12]
    assert int(restarted.as_numpy("OUTPUT").item()) == 6  # START begins from the initial state


def test_sequence_model_stops_cleanly(tmp_path: object) -> None:
    from pathlib import Path

    repository = Path(str(tmp_path)) / "repo"
    write_model(repository, "seq_direct", MODELS["seq_direct"][1], MODELS["seq_direct"][0])
    running = start_server(repository, log_path=Path(str(tmp_path)) / "log")
    try:
        client = running.client()
        deadline = time.monotonic() + 30
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.infer("seq_direct", value_input(httpclient, 1), sequence_id=5, sequence_start=True)
    finally:
        assert running.stop() == 0, running.log()
