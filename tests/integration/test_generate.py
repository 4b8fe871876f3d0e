"""Triton's generate extension over HTTP: ``/generate`` and ``/generate_stream`` (SSE).

Expected bodies, statuses and texts are tritonserver 2.51's, observed with the same
models (``/work/notes/triton_generate_reference.md``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import requests

from .conftest import RunningServer

NOT_ONE = (
    "generate expects model to produce exactly 1 response, use generate stream for model "
    "that generates various number of responses"
)
SSE = "text/event-stream; charset=utf-8"


def generate(url: str, model: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(f"{url}/v2/models/{model}/generate", data=data, timeout=60, **kwargs)


def stream(url: str, model: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(
        f"{url}/v2/models/{model}/generate_stream", data=data, timeout=60, **kwargs
    )


def events(response: requests.Response) -> list[dict[str, Any]]:
    """The JSON documents of a server-sent event stream, checking Triton's framing."""
    text = response.text
    assert text == "" or text.endswith("\n\n")
    chunks = [chunk for chunk in text.split("\n\n") if chunk]
    assert all(chunk.startswith("data: ") for chunk in chunks)
    return [json.loads(chunk[len("data: ") :]) for chunk in chunks]


def echo_report(document: dict[str, Any]) -> dict[str, Any]:
    return json.loads(document["REQUEST"])


# --- mapping ---------------------------------------------------------------------------


def test_keys_become_inputs_and_parameters(url: str) -> None:
    body = {
        "TEXT": "hello",
        "NUMBERS": [1.5, 2, 3],
        "FLAG": True,
        "COUNT": 7,
        "temperature": 0.5,
        "max_tokens": 10,
        "stream": False,
        "name": "x",
    }
    reply = generate(url, "gen_echo", body)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/json"
    document = reply.json()
    assert document["model_name"] == "gen_echo"
    assert document["model_version"] == "1"
    assert document["TEXT_OUT"] == "hello"  # one element: the value itself
    assert document["NUMBERS_OUT"] == [1.5, 2.0, 3.0]  # more: a list
    report = echo_report(document)
    assert report["parameters"] == {
        "temperature": 0.5,
        "max_tokens": 10,
        "stream": False,
        "name": "x",
    }
    assert report["inputs"] == {
        "TEXT": ["object", [1]],
        "NUMBERS": ["float32", [3]],
        "FLAG": ["bool", [1]],
        "COUNT": ["int32", [1]],
    }
    assert "id" not in document


def test_response_is_flat_with_sorted_keys_and_response_parameters(url: str) -> None:
    reply = generate(url, "gen_echo", {"TEXT": "a"})
    document = reply.json()
    assert list(document) == sorted(document)
    # Response parameters sit beside the outputs, as Triton writes them.
    assert document["greeting"] == "hi"
    assert document["answer"] == 42
    assert document["ready"] is True
    assert document["NUMBERS_OUT"] == []


def test_parameters_object(url: str) -> None:
    body = {"TEXT": "hi", "parameters": {"temperature": 0.25, "top_k": 3, "flag": True, "s": "v"}}
    report = echo_report(generate(url, "gen_echo", body).json())
    assert report["parameters"] == {"temperature": 0.25, "top_k": 3, "flag": True, "s": "v"}


def test_input_names_inside_parameters_are_inputs(url: str) -> None:
    document = generate(url, "gen_echo", {"parameters": {"TEXT": "inner", "COUNT": 2}}).json()
    assert document["TEXT_OUT"] == "inner"
    report = echo_report(document)
    assert report["parameters"] == {}
    assert report["inputs"] == {"TEXT": ["object", [1]], "COUNT": ["int32", [1]]}


def test_later_parameter_wins(url: str) -> None:
    body = {"TEXT": "a", "k": 1, "parameters": {"k": 2}}
    assert echo_report(generate(url, "gen_echo", body).json())["parameters"] == {"k": 2}


def test_id_is_the_request_id_and_a_parameter(url: str) -> None:
    document = generate(url, "gen_echo", {"TEXT": "a", "id": "req-7"}).json()
    assert document["id"] == "req-7"
    report = echo_report(document)
    assert report["id"] == "req-7"
    assert report["parameters"] == {"id": "req-7"}


def test_infer_reserved_parameters_are_plain_parameters(url: str) -> None:
    reserved = {
        "sequence_id": 5,
        "priority": 1,
        "timeout": 100,
        "binary_data_output": True,
        "sequence_start": True,
        "triton_x": 1,
        "headers": "h",
    }
    report = echo_report(generate(url, "gen_echo", {"TEXT": "a", **reserved}).json())
    assert report["parameters"] == reserved


def test_integers_beyond_int64_become_doubles(url: str) -> None:
    body = {"TEXT": "a", "big": 18446744073709551615, "low": -9223372036854775808}
    parameters = echo_report(generate(url, "gen_echo", body).json())["parameters"]
    assert parameters == {"big": 1.8446744073709552e19, "low": -9223372036854775808}


def test_unicode_text_round_trips(url: str) -> None:
    assert generate(url, "gen_echo", {"TEXT": "h\u00e9llo \u2603"}).json()["TEXT_OUT"] == (
        "h\u00e9llo \u2603"
    )


def test_shapes_come_from_the_configuration(url: str) -> None:
    """Batch dimension 1 is prepended; the innermost variable dim takes the rest."""
    document = generate(url, "gen_shapes", {"PAIR": [1, 2], "ROWS": [1, 2, 3, 4, 5, 6]}).json()
    assert json.loads(document["SHAPES"]) == {"PAIR": [1, 2], "ROWS": [1, 2, 3]}
    assert document["model_name"] == "gen_shapes"


def test_scalar_and_empty_list_for_variable_dims(url: str) -> None:
    document = generate(url, "gen_echo", {"TEXT": "a", "NUMBERS": 3}).json()
    assert document["NUMBERS_OUT"] == 3.0
    report = echo_report(generate(url, "gen_echo", {"TEXT": "a", "NUMBERS": []}).json())
    assert report["inputs"]["NUMBERS"] == ["float32", [0]]


def test_batched_model_and_version_route(url: str) -> None:
    body = {"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1]}
    reply = requests.post(
        f"{url}/v2/models/add_sub/versions/1/generate", data=json.dumps(body), timeout=60
    )
    assert reply.json() == {
        "OUTPUT0": [2.0, 3.0, 4.0, 5.0],
        "OUTPUT1": [0.0, 1.0, 2.0, 3.0],
        "model_name": "add_sub",
        "model_version": "1",
    }
    assert generate(url, "identity_bytes", {"INPUT0": "abc"}).json()["OUTPUT0"] == "abc"


# --- bad input -----------------------------------------------------------------------------

_PARAMETER_TYPE = "has invalid type. It should be either 'int', 'bool', or 'string'."
_SCHEMA = "The schema can not convert input '{}' to tensor with proper shape"
_SHAPE = "Unable to parse 'data': Shape does not match true shape of 'data' field"


@pytest.mark.parametrize(
    ("model", "body", "status", "message"),
    [
        ("gen_echo", {"TEXT": "a", "id": 7}, 500,
         "Unable to parse 'id': attempt to access JSON non-string as string"),
        ("gen_echo", {"TEXT": "a", "COUNT": "seven"}, 500,
         "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"),
        ("gen_echo", {"TEXT": "a", "COUNT": 1.5}, 500,
         "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"),
        ("gen_echo", {"TEXT": "a", "COUNT": True}, 500,
         "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"),
        ("gen_echo", {"TEXT": "a", "NUMBERS": [True]}, 500,
         "Unable to parse 'data': attempt to access JSON non-number as double"),
        ("gen_echo", {"TEXT": "a", "FLAG": 1}, 500,
         "Unable to parse 'data': attempt to access JSON non-boolean as boolean"),
        ("gen_echo", {"TEXT": 5}, 500,
         "Unable to parse JSON bytes array: attempt to access JSON non-string as string"),
        ("gen_echo", {"TEXT": None}, 500,
         "Unable to parse JSON bytes array: attempt to access JSON non-string as string"),
        ("gen_echo", {"TEXT": ["a", "b"]}, 400, _SCHEMA.format("TEXT")),
        ("gen_echo", {"TEXT": "a", "NUMBERS": [[1, 2], [3, 4]]}, 500, _SHAPE),
        ("gen_shapes", {"PAIR": [1, 2, 3]}, 400, _SCHEMA.format("PAIR")),
        ("gen_shapes", {"PAIR": 1}, 400, _SCHEMA.format("PAIR")),
        ("gen_echo", {"TEXT": "a", "stop": ["x"]}, 400, f"parameter 'stop' {_PARAMETER_TYPE}"),
        ("gen_echo", {"TEXT": "a", "stop": None}, 400, f"parameter 'stop' {_PARAMETER_TYPE}"),
        ("gen_echo", {"TEXT": "a", "cfg": {"a": 1}}, 400, f"parameter 'cfg' {_PARAMETER_TYPE}"),
        ("gen_echo", {"TEXT": "a", "parameters": 5}, 500,
         "Expected JSON object for keyword: 'parameters': attempt to access JSON non-object as "
         "object"),
        ("gen_echo", {"TEXT": "a", "parameters": {"parameters": {"x": 1}}}, 400,
         f"Converting keyword: 'parameters': parameter 'parameters' {_PARAMETER_TYPE}"),
        ("gen_echo", {"TEXT": "a", "parameters": {"TEXT": "b"}}, 400,
         "Converting keyword: 'parameters': [request id: <id_unknown>] input 'TEXT' already "
         "exists in request"),
        ("gen_echo", b"", 500,
         "failed to parse the request JSON buffer: The document is empty. at 0"),
        ("gen_echo", b"[1,2]", 500, "attempt to get members for non-object"),
        ("nope", {"TEXT": "a"}, 404, "Request for unknown model: 'nope' is not found"),
    ],
)  # fmt: skip
def test_bad_request(url: str, model: str, body: Any, status: int, message: str) -> None:
    for send in (generate, stream):
        reply = send(url, model, body)
        assert (reply.status_code, reply.json()) == (status, {"error": message})
        assert reply.headers["Content-Type"] == "application/json"


def test_not_json(url: str) -> None:
    for body in (b"not json", b'{"TEXT": "a"} x', b"{"):
        reply = generate(url, "gen_echo", body)
        assert reply.status_code == 500
        assert reply.json()["error"].startswith("failed to parse the request JSON buffer: ")


def test_missing_input(url: str) -> None:
    reply = generate(url, "gen_echo", {"temperature": 1})
    assert reply.status_code == 400
    message = reply.json()["error"]
    assert message.startswith("[request id: <id_unknown>] expected ")
    assert "missing required input(s) ['TEXT']" in message


def test_out_of_range_integer_is_refused(url: str) -> None:
    """Triton wraps 3000000000 into an INT32; this server refuses it, as its infer does."""
    reply = generate(url, "gen_echo", {"TEXT": "a", "COUNT": 3000000000})
    assert reply.status_code == 400
    assert reply.json() == {"error": "value 3000000000 of input 'COUNT' is out of range for INT32"}


def test_unknown_version_compression_and_method(url: str) -> None:
    reply = requests.post(f"{url}/v2/models/gen_echo/versions/9/generate", data="{}", timeout=60)
    assert (reply.status_code, reply.json()) == (
        404,
        {"error": "Request for unknown model: 'gen_echo' version 9 is not found"},
    )
    for send in (generate, stream):
        reply = send(url, "gen_echo", {"TEXT": "a"}, headers={"Content-Encoding": "gzip"})
        assert (reply.status_code, reply.json()) == (
            400,
            {"error": "Unsupported content-encoding, only 'identity' is supported."},
        )
    for path in ("generate", "generate_stream"):
        reply = requests.get(f"{url}/v2/models/gen_echo/{path}", timeout=60)
        assert (reply.status_code, reply.json()) == (405, {"error": "Method Not Allowed"})


def test_model_errors(url: str) -> None:
    """A failed response is 400 whatever its error code, as tritonserver 2.51 answers it."""
    reply = generate(url, "error_response", {"INPUT0": 1.0})
    assert (reply.status_code, reply.json()) == (400, {"error": "bad value"})
    reply = generate(url, "raiser", {"INPUT0": 1.0})
    assert reply.status_code == 400
    assert "raiser always fails" in reply.json()["error"]
    reply = generate(url, "gen_steps", {"STEPS": [-7]})  # UNAVAILABLE, still 400
    assert (reply.status_code, reply.json()) == (400, {"error": "step -7 failed"})


# --- decoupled models --------------------------------------------------------------------------


def test_generate_on_a_decoupled_model_needs_exactly_one_response(url: str) -> None:
    reply = generate(url, "decoupled", {"INPUT0": 2.5})
    assert (reply.status_code, reply.json()) == (
        200,
        {"OUTPUT0": 2.5, "model_name": "decoupled", "model_version": "1"},
    )
    for count in (0, 3):
        reply = generate(url, "repeat", {"COUNT": count})
        assert (reply.status_code, reply.json()) == (200, {"error": NOT_ONE})
    reply = generate(url, "gen_steps", {"STEPS": [-7, 1]})  # the first response sets 400
    assert (reply.status_code, reply.json()) == (400, {"error": NOT_ONE})


def test_stream_of_a_decoupled_model(url: str) -> None:
    reply = stream(url, "repeat", {"COUNT": 3, "id": "s-1"})
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == SSE
    assert events(reply) == [
        {"OUT": index, "id": "s-1", "model_name": "repeat", "model_version": "1"}
        for index in range(3)
    ]


def test_stream_of_a_model_with_one_response(url: str) -> None:
    reply = stream(url, "gen_echo", {"TEXT": "hello"})
    assert reply.headers["Content-Type"] == SSE
    (document,) = events(reply)
    assert document["TEXT_OUT"] == "hello"
    assert document["model_name"] == "gen_echo"


def test_error_mid_stream_is_an_event(url: str) -> None:
    reply = stream(url, "gen_steps", {"STEPS": [1, -2, 3]})
    assert reply.status_code == 200
    assert events(reply) == [
        {"VALUE": 1, "model_name": "gen_steps", "model_version": "1"},
        {"error": "step -2 failed"},
        {"VALUE": 3, "model_name": "gen_steps", "model_version": "1"},
    ]


def test_error_first_sets_the_stream_status(url: str) -> None:
    reply = stream(url, "gen_steps", {"STEPS": [-2, 3]})
    assert reply.status_code == 400
    assert reply.headers["Content-Type"] == SSE
    assert events(reply) == [
        {"error": "step -2 failed"},
        {"VALUE": 3, "model_name": "gen_steps", "model_version": "1"},
    ]
    reply = stream(url, "raiser", {"INPUT0": 1.0})
    assert reply.status_code == 400
    (document,) = events(reply)
    assert "raiser always fails" in document["error"]


def test_stream_without_responses_is_empty(url: str) -> None:
    reply = stream(url, "repeat", {"COUNT": 0})
    assert (reply.status_code, reply.headers["Content-Type"], reply.text) == (200, SSE, "")


def test_streams_interleave(server: RunningServer) -> None:
    """Concurrent streams from one aiohttp client each get all of their own events, in order."""

    async def one(session: aiohttp.ClientSession, count: int) -> list[int]:
        body = {"COUNT": count, "DELAY": 0.01, "id": str(count)}
        path = f"http://{server.url}/v2/models/repeat/generate_stream"
        values = []
        async with session.post(path, json=body) as reply:
            assert reply.headers["Content-Type"] == SSE
            async for line in reply.content:
                if line.startswith(b"data: "):
                    document = json.loads(line[len(b"data: ") :])
                    assert document["id"] == str(count)
                    values.append(document["OUT"])
        return values

    async def main() -> list[list[int]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(one(session, count) for count in (3, 5, 8)))

    assert asyncio.run(main()) == [list(range(3)), list(range(5)), list(range(8))]
