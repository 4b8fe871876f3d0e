"""The lean infer connection (``protocols/http/fast.py``) and its way into aiohttp.

Infer requests are served by the fast path and every other request by the aiohttp
application, on the same keep-alive connection, in order. These tests speak HTTP/1.1
over a raw socket, so that they control what shares a connection (pipelining, chunked
bodies, ``Expect``, ``Connection: close``), and check the answers a client sees.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from .conftest import RunningServer, start_server

INPUT0 = [1.0, 2.0, 3.0, 4.0]
INPUT1 = [10.0, 20.0, 30.0, 40.0]


class Connection:
    """One keep-alive HTTP/1.1 connection: send raw requests, read whole responses."""

    def __init__(self, url: str) -> None:
        host, port = url.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            return status, headers, self._read_chunked()
        return status, headers, self._read_exactly(int(headers.get("content-length", "0")))

    def closed_by_server(self) -> bool:
        self.sock.settimeout(10)
        return not self.pending and self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.pending += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.pending:
            self._fill()
        head, _, self.pending = self.pending.partition(marker)
        return head

    def _read_exactly(self, count: int) -> bytes:
        while len(self.pending) < count:
            self._fill()
        data, self.pending = self.pending[:count], self.pending[count:]
        return data

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self._read_until(b"\r\n"), 16)
            body += self._read_exactly(size)
            self._read_exactly(2)
            if size == 0:
                return body


@pytest.fixture
def conn(server: RunningServer) -> Iterator[Connection]:
    connection = Connection(server.url)
    yield connection
    connection.close()


def infer_body(request_id: str = "") -> bytes:
    document = {
        "id": request_id,
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": INPUT0},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": INPUT1},
        ],
    }
    return json.dumps(document).encode()


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def infer_request(request_id: str = "", headers: str = "", model: str = "add_sub") -> bytes:
    return request("POST", f"/v2/models/{model}/infer", infer_body(request_id), headers)


def check_add_sub(status: int, body: bytes, request_id: str = "") -> None:
    assert status == 200, body
    document = json.loads(body)
    assert document.get("id", "") == request_id
    outputs = {o["name"]: o["data"] for o in document["outputs"]}
    assert outputs["OUTPUT0"] == [a + b for a, b in zip(INPUT0, INPUT1, strict=True)]
    assert outputs["OUTPUT1"] == [a - b for a, b in zip(INPUT0, INPUT1, strict=True)]


def test_infer_and_other_routes_share_one_connection(conn: Connection) -> None:
    conn.send(request("GET", "/v2/health/ready"))
    assert conn.read_response()[0] == 200
    for round_number in range(3):
        conn.send(infer_request(f"r{round_number}"))
        status, headers, body = conn.read_response()
        assert headers["content-type"] == "application/json"
        check_add_sub(status, body, f"r{round_number}")
        conn.send(request("GET", "/v2/models/add_sub"))
        status, _, body = conn.read_response()
        assert status == 200 and json.loads(body)["name"] == "add_sub"


def test_pipelined_requests_are_answered_in_order(conn: Connection) -> None:
    conn.send(
        infer_request("a")
        + request("GET", "/v2/models/add_sub/config")
        + infer_request("b")
        + request("GET", "/v2/nowhere")
        + infer_request("c")
    )
    check_add_sub(*_status_body(conn.read_response()), "a")
    status, _, body = conn.read_response()
    assert status == 200 and json.loads(body)["name"] == "add_sub"
    check_add_sub(*_status_body(conn.read_response()), "b")
    assert conn.read_response()[0:3:2] == (404, b'{"error":"Not Found"}')
    check_add_sub(*_status_body(conn.read_response()), "c")


def _status_body(response: tuple[int, dict[str, str], bytes]) -> tuple[int, bytes]:
    return response[0], response[2]


def test_a_request_arriving_in_pieces(conn: Connection) -> None:
    data = infer_request("pieces")
    for start in range(0, len(data), 7):
        conn.send(data[start : start + 7])
    check_add_sub(*_status_body(conn.read_response()), "pieces")


def test_large_binary_request_and_response(server: RunningServer, conn: Connection) -> None:
    array = np.arange(300_000, dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IN_FP32",
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "outputs": [{"name": "OUT_FP32", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + array.tobytes()
    conn.send(
        request(
            "POST",
            "/v2/models/all_types/infer",
            body,
            f"Inference-Header-Content-Length: {len(header)}\r\n",
        )
    )
    status, headers, reply = conn.read_response()
    assert status == 200, reply
    assert headers["content-type"] == "application/octet-stream"
    json_length = int(headers["inference-header-content-length"])
    output = np.frombuffer(reply[json_length:], dtype=np.float32).reshape(array.shape)
    np.testing.assert_array_equal(output, array)


def test_errors_of_the_fast_path_are_tritons(conn: Connection) -> None:
    conn.send(infer_request(model="no_such_model"))
    status, headers, body = conn.read_response()
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "Request for unknown model: 'no_such_model' is not found"}
    conn.send(request("POST", "/v2/models/add_sub/infer", b"{not json"))
    status, _, body = conn.read_response()
    assert status == 500 and json.loads(body)["error"].startswith(
        "failed to parse the request JSON buffer"
    )
    conn.send(infer_request("after-errors"))
    check_add_sub(*_status_body(conn.read_response()), "after-errors")


def test_chunked_body_is_served_by_aiohttp(conn: Connection) -> None:
    body = infer_body("chunked")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:10], body[10:]))
    head = b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    conn.send(head + b"\r\n" + chunks + b"0\r\n\r\n")
    check_add_sub(*_status_body(conn.read_response()), "chunked")
    conn.send(infer_request("then-fast"))  # aiohttp keeps the connection from then on
    check_add_sub(*_status_body(conn.read_response()), "then-fast")


def test_expect_continue(conn: Connection) -> None:
    body = infer_body("expect")
    conn.send(
        f"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    assert conn.read_response()[0] == 100
    conn.send(body)
    check_add_sub(*_status_body(conn.read_response()), "expect")


def test_connection_close_is_honoured(conn: Connection) -> None:
    conn.send(infer_request("closing", "Connection: close\r\n"))
    check_add_sub(*_status_body(conn.read_response()), "closing")
    assert conn.closed_by_server()


def test_gzip_response_when_the_client_accepts_it(conn: Connection) -> None:
    conn.send(infer_request("zipped", "Accept-Encoding: gzip\r\n"))
    status, headers, body = conn.read_response()
    assert headers["content-encoding"] == "gzip"
    check_add_sub(status, gzip.decompress(body), "zipped")
    conn.send(infer_request("plain"))
    status, headers, body = conn.read_response()
    assert "content-encoding" not in headers
    check_add_sub(status, body, "plain")


def test_gzip_request_body(conn: Connection) -> None:
    body = gzip.compress(infer_body("gz-body"))
    conn.send(request("POST", "/v2/models/add_sub/infer", body, "Content-Encoding: gzip\r\n"))
    check_add_sub(*_status_body(conn.read_response()), "gz-body")


def test_oversized_body_is_refused(tmp_path: Path, repository: Path) -> None:
    running = start_server(
        repository, "--http-max-input-size=100", log_path=tmp_path / "server.log"
    )
    try:
        connection = Connection(running.url)
        connection.send(infer_request("big"))
        status, _, body = connection.read_response()
        assert status == 400
        assert json.loads(body)["error"].startswith("request body is too large")
        connection.close()
    finally:
        running.stop()


def test_restricted_inference_needs_its_header(tmp_path: Path, repository: Path) -> None:
    running = start_server(
        repository,
        "--http-restricted-api=inference:infer-key=secret",
        log_path=tmp_path / "server.log",
    )
    try:
        connection = Connection(running.url)
        connection.send(infer_request("no-key"))
        status, _, body = connection.read_response()
        assert status == 403
        assert json.loads(body) == {"error": "This API is restricted, expecting header 'infer-key'"}
        connection.send(infer_request("key", "infer-key: secret\r\n"))
        check_add_sub(*_status_body(connection.read_response()), "key")
        connection.close()
    finally:
        running.stop()


def test_verbose_logging_logs_fast_requests_too(tmp_path: Path, repository: Path) -> None:
    running = start_server(repository, "--log-verbose=1", log_path=tmp_path / "server.log")
    try:
        with running.client() as client:
            inputs = [httpclient.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
            for item, values in zip(inputs, (INPUT0, INPUT1), strict=True):
                item.set_data_from_numpy(np.array([values], dtype=np.float32))
            client.infer("add_sub", inputs)
    finally:
        running.stop()
    assert "HTTP request: POST /v2/models/add_sub/infer -> 200" in running.log()


def test_http_1_0_request(conn: Connection) -> None:
    body = infer_body("old")
    conn.send(
        b"POST /v2/models/add_sub/infer HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    check_add_sub(*_status_body(conn.read_response()), "old")
    assert conn.closed_by_server()
