"""BLS: Python models calling other models of the server (``exec``, ``async_exec``, decoupled).

Each model under test is a Triton Python model written as Triton's documentation writes
them; its callees (``add_sub``, ``identity_bytes``, ``repeat``, ``raiser``,
``error_response``) come from the examples and the integration models. The expected
texts are tritonserver 2.51's, measured (``/work/notes/triton_bls_reference.md``).
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from .conftest import EXAMPLES, MODELS, RunningServer, start_server, write_model

CALLEES = {
    "add_sub": EXAMPLES,
    "identity_bytes": EXAMPLES,
    "repeat": MODELS,
    "raiser": MODELS,
    "error_response": MODELS,
}

BLS_SYNC = (
    """
    name: "bls_sync"
    backend: "python"
    max_batch_size: 8
    input [
      { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
      { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
    ]
    output [
      { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
      { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
    ]
    """,
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                bls = pb_utils.InferenceRequest(
                    model_name="add_sub",
                    requested_output_names=["OUTPUT0", "OUTPUT1"],
                    inputs=request.inputs(),
                )
                response = bls.exec()
                if response.has_error():
                    raise pb_utils.TritonModelException(response.error().message())
                outputs = [
                    pb_utils.get_output_tensor_by_name(response, name)
                    for name in ("OUTPUT0", "OUTPUT1")
                ]
                responses.append(pb_utils.InferenceResponse(outputs))
            return responses
    """,
)

BLS_ASYNC = (
    """
    name: "bls_async"
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1, 4 ] } ]
    output [
      { name: "SUMS" data_type: TYPE_FP32 dims: [ -1, 4 ] },
      { name: "LOOP_RAN" data_type: TYPE_BOOL dims: [ 1 ] }
    ]
    """,
    """
    import asyncio

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        async def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                ticked = asyncio.Event()
                ticker = asyncio.ensure_future(self.tick(ticked))
                calls = [
                    pb_utils.InferenceRequest(
                        model_name="add_sub",
                        requested_output_names=["OUTPUT0"],
                        inputs=[pb_utils.Tensor("INPUT0", x * k), pb_utils.Tensor("INPUT1", x)],
                    ).async_exec()
                    for k in range(4)
                ]
                results = await asyncio.gather(*calls)
                loop_ran = ticked.is_set()  # the ticker ran while the calls were in flight
                await ticker
                for result in results:
                    if result.has_error():
                        raise pb_utils.TritonModelException(result.error().message())
                sums = np.concatenate(
                    [pb_utils.get_output_tensor_by_name(r, "OUTPUT0").as_numpy() for r in results]
                )
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("SUMS", sums),
                    pb_utils.Tensor("LOOP_RAN", np.array([loop_ran])),
                ]))
            return responses

        async def tick(self, ticked):
            ticked.set()
    """,
)

BLS_STREAM = (
    """
    name: "bls_stream"
    backend: "python"
    max_batch_size: 0
    input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [
      { name: "SYNC_VALUES" data_type: TYPE_INT32 dims: [ -1 ] },
      { name: "ASYNC_VALUES" data_type: TYPE_INT32 dims: [ -1 ] },
      { name: "RESPONSES" data_type: TYPE_INT32 dims: [ 1 ] },
      { name: "LAST_EMPTY" data_type: TYPE_BOOL dims: [ 1 ] },
      { name: "REPLAYED" data_type: TYPE_INT32 dims: [ 1 ] }
    ]
    """,
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    def values(responses):
        found = []
        for response in responses:
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            if len(response.output_tensors()) > 0:
                found.append(int(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0]))
        return np.array(found, dtype=np.int32)


    class TritonPythonModel:
        async def execute(self, requests):
            answers = []
            for request in requests:
                bls = pb_utils.InferenceRequest(
                    model_name="repeat",
                    requested_output_names=["OUT"],
                    inputs=[pb_utils.get_input_tensor_by_name(request, "COUNT")],
                )
                iterator = bls.exec(decoupled=True)
                responses = list(iterator)
                replayed = len(list(iterator))  # Triton's iterator replays once it is done
                streamed = await bls.async_exec(decoupled=True)
                streamed = [response async for response in streamed]
                answers.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("SYNC_VALUES", values(responses)),
                    pb_utils.Tensor("ASYNC_VALUES", values(streamed)),
                    pb_utils.Tensor("RESPONSES", np.array([len(responses)], np.int32)),
                    pb_utils.Tensor("LAST_EMPTY", np.array([not responses[-1].output_tensors()])),
                    pb_utils.Tensor("REPLAYED", np.array([replayed], np.int32)),
                ]))
            return answers
    """,
)

BLS_CASES = (
    """
    name: "bls_cases"
    backend: "python"
    max_batch_size: 0
    input [ { name: "CASE" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [
      { name: "HAS_ERROR" data_type: TYPE_BOOL dims: [ 1 ] },
      { name: "MESSAGE" data_type: TYPE_STRING dims: [ 1 ] },
      { name: "CODE" data_type: TYPE_INT32 dims: [ 1 ] },
      { name: "RESPONSES" data_type: TYPE_INT32 dims: [ 1 ] }
    ]
    """,
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    F = np.float32


    def request(model, **inputs):
        tensors = [pb_utils.Tensor(name, array) for name, array in inputs.items()]
        return pb_utils.InferenceRequest(
            model_name=model, inputs=tensors, requested_output_names=[]
        )


    CASES = {
        "unknown_model": lambda: request("nope", INPUT0=np.ones(1, F)),
        "unknown_version": lambda: pb_utils.InferenceRequest(
            model_name="raiser", model_version=7, requested_output_names=[],
            inputs=[pb_utils.Tensor("INPUT0", np.ones(1, F))],
        ),
        "wrong_shape": lambda: request("raiser", INPUT0=np.ones(3, F)),
        "wrong_datatype": lambda: request("raiser", INPUT0=np.ones(1, np.int32)),
        "missing_input": lambda: request("add_sub", INPUT0=np.ones((1, 4), F)),
        "batch_too_big": lambda: request(
            "add_sub", INPUT0=np.ones((9, 4), F), INPUT1=np.ones((9, 4), F)
        ),
        "callee_raises": lambda: request("raiser", INPUT0=np.ones(1, F)),
        "callee_error": lambda: request("error_response", INPUT0=np.ones(1, F)),
        "decoupled_callee": lambda: request("repeat", COUNT=np.array([2], np.int32)),
    }


    class TritonPythonModel:
        def initialize(self, args):
            try:
                request("raiser", INPUT0=np.ones(1, F)).exec()
                self.in_initialize = "no exception"
            except pb_utils.TritonModelException as exc:
                self.in_initialize = str(exc)

        def execute(self, requests):
            answers = []
            for request_ in requests:
                case = request_.inputs()[0].as_numpy()[0].decode()
                answers.append(self.run(case))
            return answers

        def run(self, case):
            if case == "initialize":
                return answer(True, self.in_initialize, -1, 0)
            name, _, mode = case.partition(":")
            if mode == "decoupled":
                responses = list(CASES[name]().exec(decoupled=True))
            else:
                responses = [CASES[name]().exec()]
            if mode == "raise" and responses[0].has_error():
                raise pb_utils.TritonModelException(responses[0].error().message())
            first = responses[0]
            if not first.has_error():
                return answer(False, "", 0, len(responses))
            return answer(True, first.error().message(), int(first.error().code()), len(responses))


    def answer(has_error, message, code, count):
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("HAS_ERROR", np.array([has_error])),
            pb_utils.Tensor("MESSAGE", np.array([message.encode()], dtype=np.object_)),
            pb_utils.Tensor("CODE", np.array([code], np.int32)),
            pb_utils.Tensor("RESPONSES", np.array([count], np.int32)),
        ])
    """,
)

BLS_BYTES = (
    """
    name: "bls_bytes"
    backend: "python"
    max_batch_size: 8
    input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
    """,
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            answers = []
            for request in requests:
                text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
                response = pb_utils.InferenceRequest(
                    model_name="identity_bytes",
                    requested_output_names=["OUTPUT0"],
                    inputs=[pb_utils.Tensor("INPUT0", text)],
                ).exec()
                echoed = pb_utils.get_output_tensor_by_name(response, "OUTPUT0").as_numpy()
                answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", echoed)]))
            return answers
    """,
)

BLS_CANCEL = (
    """
    name: "bls_cancel"
    backend: "python"
    max_batch_size: 0
    input [ { name: "TAKE" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [
      { name: "RESPONSES" data_type: TYPE_INT32 dims: [ 1 ] },
      { name: "LAST_CODE" data_type: TYPE_INT32 dims: [ 1 ] }
    ]
    """,
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            answers = []
            for request in requests:
                take = int(request.inputs()[0].as_numpy()[0])
                iterator = pb_utils.InferenceRequest(
                    model_name="repeat",
                    requested_output_names=["OUT"],
                    inputs=[
                        pb_utils.Tensor("COUNT", np.array([100000], np.int32)),
                        pb_utils.Tensor("DELAY", np.array([0.01], np.float32)),
                    ],
                ).exec(decoupled=True)
                taken = [next(iterator) for _ in range(take)]
                iterator.cancel()
                rest = list(iterator)
                last = rest[-1] if rest else taken[-1]
                code = int(last.error().code()) if last.has_error() else -1
                answers.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("RESPONSES", np.array([len(taken) + len(rest)], np.int32)),
                    pb_utils.Tensor("LAST_CODE", np.array([code], np.int32)),
                ]))
            return answers
    """,
)

SEND_AFTER_FINAL = (
    """
    name: "send_after_final"
    backend: "python"
    max_batch_size: 0
    model_transaction_policy { decoupled: true }
    input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    """,
    """
    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils

    FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


    def text(value):
        out = pb_utils.Tensor("OUT", np.array([value.encode()], dtype=np.object_))
        return pb_utils.InferenceResponse([out])


    class TritonPythonModel:
        caught = []

        def execute(self, requests):
            for request in requests:
                mode = int(request.inputs()[0].as_numpy()[0])
                sender = request.get_response_sender()
                if mode == 0:  # send after FINAL and let the exception out of execute
                    sender.send(text("first"), flags=FINAL)
                    sender.send(text("after final"))
                elif mode == 1:  # catch what each bad send raises, then report it
                    attempts = [(text("first"), FINAL), (text("again"), 0), (None, FINAL)]
                    for response, flags in [*attempts, (None, 0), (text("x"), 2)]:
                        try:
                            sender.send(response, flags=flags)
                        except pb_utils.TritonModelException as exc:
                            self.caught.append(str(exc))
                elif mode == 2:
                    sender.send(text(json.dumps(self.caught)), flags=FINAL)
            return None
    """,
)

MODELS_UNDER_TEST = {
    "bls_sync": BLS_SYNC,
    "bls_async": BLS_ASYNC,
    "bls_stream": BLS_STREAM,
    "bls_cases": BLS_CASES,
    "bls_bytes": BLS_BYTES,
    "bls_cancel": BLS_CANCEL,
    "send_after_final": SEND_AFTER_FINAL,
}


@pytest.fixture(scope="module")
def bls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("bls_repo")
    for name, source in CALLEES.items():
        shutil.copytree(source / name, repo / name)
    for name, (config, model) in MODELS_UNDER_TEST.items():
        write_model(repo, name, config, model)
    running = start_server(repo, log_path=tmp_path_factory.mktemp("bls_log") / "server.log")
    with running.client() as client:
        deadline = time.monotonic() + 60
        while not client.is_server_ready():
            assert time.monotonic() < deadline, running.log()
            time.sleep(0.1)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def http(bls_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with bls_server.client() as client:
        yield client


@pytest.fixture
def grpc(bls_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(bls_server.grpc_url)
    yield client
    client.close()


def infer(client: Any, model: str, **arrays: np.ndarray) -> Any:
    """One infer call with ``tritonclient.http`` or ``tritonclient.grpc`` (same interface)."""
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    inputs = []
    for name, array in arrays.items():
        datatype = np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


# --- exec, async_exec ----------------------------------------------------------------


def test_exec_runs_another_model(client: Any) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, dtype=np.float32)
    result = infer(client, "bls_sync", INPUT0=a, INPUT1=b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_async_exec_calls_run_together_and_the_loop_keeps_running(client: Any) -> None:
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    result = infer(client, "bls_async", INPUT0=x)
    np.testing.assert_array_equal(
        result.as_numpy("SUMS"), np.concatenate([x * k + x for k in range(4)])
    )
    assert result.as_numpy("LOOP_RAN").tolist() == [True]


def test_concurrent_clients_of_an_async_bls_model(bls_server: RunningServer) -> None:
    async def main() -> list[np.ndarray]:
        client = grpcaio.InferenceServerClient(bls_server.grpc_url)
        try:
            calls = []
            for k in range(6):
                x = grpcaio.InferInput("INPUT0", [1, 4], "FP32")
                x.set_data_from_numpy(np.full((1, 4), k, dtype=np.float32))
                calls.append(client.infer("bls_async", [x]))
            results = await asyncio.gather(*calls)
        finally:
            await client.close()
        return [result.as_numpy("SUMS") for result in results]

    for k, sums in enumerate(asyncio.run(main())):
        expected = np.concatenate([np.full((1, 4), k * j + k, np.float32) for j in range(4)])
        np.testing.assert_array_equal(sums, expected)


def test_bytes_tensors_small_and_large(client: Any) -> None:
    """A 200 kB string crosses the worker's socket through shared memory, both ways."""
    texts = np.array([[b"hello", b"w\x00rld", b"x" * 200_000]], dtype=np.object_)
    result = infer(client, "bls_bytes", TEXT=texts)
    assert result.as_numpy("TEXT").tolist() == texts.tolist()


# --- decoupled BLS -----------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 0])
def test_decoupled_exec_collects_every_response(client: Any, count: int) -> None:
    result = infer(client, "bls_stream", COUNT=np.array([count], np.int32))
    assert result.as_numpy("SYNC_VALUES").tolist() == list(range(count))
    assert result.as_numpy("ASYNC_VALUES").tolist() == list(range(count))
    # repeat sends its FINAL flag alone: the iterator ends with an empty response (Triton).
    assert result.as_numpy("RESPONSES").tolist() == [count + 1]
    assert result.as_numpy("LAST_EMPTY").tolist() == [True]
    assert result.as_numpy("REPLAYED").tolist() == [count + 1]


def test_decoupled_error_response_is_in_the_stream(client: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(client, "bls_stream", COUNT=np.array([-1], np.int32))
    assert "negative count" in info.value.message()


def test_cancelling_a_decoupled_bls_request_ends_its_iterator(client: Any) -> None:
    result = infer(client, "bls_cancel", TAKE=np.array([2], np.int32))
    assert 2 < result.as_numpy("RESPONSES")[0] < 100000
    assert result.as_numpy("LAST_CODE").tolist() == [7]  # TritonError.CANCELLED


# --- errors come back as has_error(), with Triton's texts ----------------------------------

PREFIX = "Model {} - Error when running inference: "
INTERNAL, INVALID_ARG = 1, 3

ERROR_CASES = {
    "unknown_model": (
        PREFIX.format("nope")
        + "Failed for execute the inference request. Model 'nope' is not ready.",
        INTERNAL,
    ),
    "unknown_version": (
        PREFIX.format("raiser")
        + "Failed for execute the inference request. Model 'raiser' is not ready.",
        INTERNAL,
    ),
    "wrong_shape": (
        PREFIX.format("raiser") + "[request id: <id_unknown>] unexpected shape for input "
        "'INPUT0' for model 'raiser'. Expected [1], got [3]. ",
        INTERNAL,
    ),
    "wrong_datatype": (
        PREFIX.format("raiser") + "[request id: <id_unknown>] inference input 'INPUT0' "
        "data-type is 'INT32', but model 'raiser' expects 'FP32'",
        INTERNAL,
    ),
    "missing_input": (
        PREFIX.format("add_sub") + "[request id: <id_unknown>] expected 2 inputs but got 1 "
        "inputs for model 'add_sub'. Got input(s) ['INPUT0'], but missing required input(s) "
        "['INPUT1']. Please provide all required input(s).",
        INTERNAL,
    ),
    "batch_too_big": (
        PREFIX.format("add_sub")
        + "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'add_sub'",
        INTERNAL,
    ),
    "callee_raises": (
        "Failed to process the request(s) for model 'raiser_0', message: ValueError: "
        "raiser always fails\n\nAt:\n  {repo}/raiser/1/model.py(3): execute\n",
        INTERNAL,
    ),
    # tritonserver 2.51 turns the code into INTERNAL; later versions keep the callee's.
    "callee_error": ("bad value", INVALID_ARG),
    "decoupled_callee": (
        PREFIX.format("repeat") + "Model repeat is using the decoupled. The current BLS "
        "request call doesn't support models using the decoupled transaction policy. Please "
        "use 'decoupled=True' argument to the 'exec' or 'async_exec' calls for decoupled "
        "models.'",
        INTERNAL,
    ),
}


def case_result(client: Any, case: str) -> tuple[bool, str, int, int]:
    result = infer(client, "bls_cases", CASE=np.array([case.encode()], dtype=np.object_))
    return (
        bool(result.as_numpy("HAS_ERROR")[0]),
        result.as_numpy("MESSAGE")[0].decode(),
        int(result.as_numpy("CODE")[0]),
        int(result.as_numpy("RESPONSES")[0]),
    )


def repository_of(server: RunningServer) -> str:
    return " ".join(server.process.args).split("--model-repository=")[1].split()[0]  # type: ignore[arg-type]


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_are_responses_with_tritons_text(
    client: Any, bls_server: RunningServer, case: str
) -> None:
    message, code = ERROR_CASES[case]
    message = message.replace("{repo}", repository_of(bls_server))
    assert case_result(client, case) == (True, message, code, 1)


@pytest.mark.parametrize("case", ["unknown_model", "wrong_shape", "callee_raises"])
def test_decoupled_iterator_yields_one_error_response(
    client: Any, bls_server: RunningServer, case: str
) -> None:
    message, code = ERROR_CASES[case]
    message = message.replace("{repo}", repository_of(bls_server))
    assert case_result(client, f"{case}:decoupled") == (True, message, code, 1)


def test_exec_on_a_decoupled_model_with_decoupled_true(client: Any) -> None:
    assert case_result(client, "decoupled_callee:decoupled") == (False, "", 0, 3)


def test_bls_outside_execute_raises(client: Any) -> None:
    _, message, _, _ = case_result(client, "initialize")
    assert message == "BLS is only supported during the 'execute' function."


def test_a_model_that_raises_the_bls_error_fails_its_request(client: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(client, "bls_cases", CASE=np.array([b"unknown_model:raise"], dtype=np.object_))
    assert info.value.message().startswith(
        "Failed to process the request(s) for model 'bls_cases_0', message: "
        "TritonModelException: " + ERROR_CASES["unknown_model"][0]
    )
    expected = (
        "500" if isinstance(client, httpclient.InferenceServerClient) else "StatusCode.INTERNAL"
    )
    assert info.value.status() == expected


# --- a decoupled model that sends after its FINAL flag ---------------------------------------


class Stream:
    """A gRPC stream's results, in order."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.items: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.items.put((result, error)))

    def send(self, mode: int) -> None:
        tensor = grpcclient.InferInput("MODE", [1], "INT32")
        tensor.set_data_from_numpy(np.array([mode], np.int32))
        self.client.async_stream_infer(
            "send_after_final", [tensor], enable_empty_final_response=True
        )

    def until_final(self) -> list[tuple[list[bytes] | None, bool]]:
        received = []
        while True:
            result, error = self.items.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            out = result.as_numpy("OUT")
            received.append((None if out is None else out.tolist(), final))
            if final:
                return received


def test_send_after_final_raises_in_the_model_and_the_client_is_not_hung(
    grpc: grpcclient.InferenceServerClient, bls_server: RunningServer
) -> None:
    stream = Stream(grpc)
    try:
        stream.send(0)
        assert stream.until_final() == [([b"first"], True)]
        stream.send(0)  # the stream and the model still serve
        assert stream.until_final() == [([b"first"], True)]
    finally:
        grpc.stop_stream()
    assert stream.items.empty()  # nothing after FINAL: the model's exception is only logged
    logged = (
        "Failed to process the request(s) for model 'send_after_final_0', message: "
        "TritonModelException: Unable to send response. Response sender has been closed."
    )
    deadline = time.monotonic() + 30
    while logged not in bls_server.log():
        assert time.monotonic() < deadline, bls_server.log()
        time.sleep(0.1)


def test_response_sender_errors_have_tritons_texts(grpc: grpcclient.InferenceServerClient) -> None:
    stream = Stream(grpc)
    try:
        stream.send(1)
        assert stream.until_final() == [([b"first"], True)]
        stream.send(2)
        ((out, _final),) = stream.until_final()
    finally:
        grpc.stop_stream()
    assert out is not None
    assert json.loads(out[0]) == [
        "Unable to send response. Response sender has been closed.",
        "Unable to send response. Response sender has been closed.",
        "Inference Response object must be provided when the response flags is set to zero.",
        "Unable to send response. Unsupported flag provided.",
    ]
