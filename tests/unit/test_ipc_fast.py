"""The fast road of the worker channel: inference messages without pickle, arrays as raw buffers."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from triton_kernel.plugins.backends.python import ipc

FAST_INLINE, FAST_SHARED, PICKLED = 2, 3, 0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server_end, worker_end = ipc.socket_pair()
    yield server_end, worker_end
    server_end.close()
    worker_end.close()


def _payload(key: int, **inputs: np.ndarray) -> dict[str, Any]:
    return {
        "key": key,
        "id": "request-1",
        "model_name": "m",
        "model_version": -1,
        "inputs": list(inputs.items()),
        "outputs": ["OUT"],
        "parameters": '{"a":1}',
        "correlation_id": "corr",
        "flags": 3,
        "timeout": 0,
    }


def _round_trip(message: Any) -> tuple[Any, int]:
    datagram, fds = ipc.encode(message)
    return ipc.decode(datagram, fds), datagram[0]


def test_execute_travels_fast_with_every_field() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([[True, False]])
    message = ("execute", 7, [_payload(1, X=x, Y=y), _payload(2, X=x[:1])], 0)
    decoded, kind = _round_trip(message)
    assert kind == FAST_INLINE
    assert decoded[:2] == ("execute", 7)
    first, second = decoded[2]
    assert {k: v for k, v in first.items() if k != "inputs"} == {
        k: v for k, v in message[2][0].items() if k != "inputs"
    }
    (name_x, got_x), (name_y, got_y) = first["inputs"]
    assert (name_x, name_y) == ("X", "Y")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert got_x.dtype == np.float32 and got_y.dtype == np.bool_
    assert got_x.flags.writeable  # Triton's input tensors are writable
    assert got_x.__array_interface__["data"][0] % 16 == 0
    np.testing.assert_array_equal(second["inputs"][0][1], x[:1])


def test_batch_done_and_send_travel_fast() -> None:
    out = np.arange(6, dtype=np.int64).reshape(2, 3)
    results = [("ok", [("OUT", out)], {"p": "v"}), ("error", "INTERNAL", "boom"), None]
    decoded, kind = _round_trip(("batch_done", 3, results, 12345))
    assert kind == FAST_INLINE
    assert decoded[3] == 12345  # when the worker started the batch
    ok, error, nothing = decoded[2]
    assert ok[0] == "ok" and ok[2] == {"p": "v"}
    np.testing.assert_array_equal(ok[1][0][1], out)
    assert error == ("error", "INTERNAL", "boom") and nothing is None
    decoded, kind = _round_trip(("send", 9, ("ok", [("OUT", out)], {}), 1))
    assert kind == FAST_INLINE
    assert decoded[0:2] == ("send", 9) and decoded[3] == 1
    np.testing.assert_array_equal(decoded[2][1][0][1], out)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 16), np.float32),  # empty
        np.array(2.5, np.float64),  # 0-d
        np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],  # strided
        np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3)),
        np.array(["ab", "c"]),  # fixed-width unicode
        np.arange(4, dtype=">i4"),  # big-endian
        np.ones(3, np.float16),
    ],
)
def test_unusual_arrays_round_trip(array: np.ndarray) -> None:
    decoded, kind = _round_trip(("batch_done", 1, [("ok", [("O", array)], {})], 0))
    assert kind == FAST_INLINE
    got = decoded[2][0][1][0][1]
    assert got.shape == array.shape and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_object_arrays_and_odd_values_fall_back_to_pickle() -> None:
    strings = np.empty(2, dtype=np.object_)
    strings[:] = [b"a", b"bc"]
    decoded, kind = _round_trip(("execute", 1, [_payload(1, S=strings)], 0))
    assert kind == PICKLED
    assert decoded[2][0]["inputs"][0][1].tolist() == [b"a", b"bc"]

    payload = _payload(2, X=np.ones(2))
    payload["extra"] = Fraction(1, 3)  # marshal cannot carry it: pickle does
    decoded, kind = _round_trip(("execute", 1, [payload], 0))
    assert kind == PICKLED
    assert decoded[2][0]["extra"] == Fraction(1, 3)


def test_large_arrays_go_through_a_memfd() -> None:
    big = np.random.default_rng(0).random((300, 300))
    datagram, fds = ipc.encode(("execute", 1, [_payload(1, X=big)], 0))
    assert datagram[0] == FAST_SHARED and len(fds) == 1
    kept = fds[0]
    decoded = ipc.decode(datagram, fds)
    with pytest.raises(OSError):
        os.fstat(kept)  # decode took ownership of the descriptor
    got = decoded[2][0]["inputs"][0][1]
    np.testing.assert_array_equal(got, big)
    assert got.__array_interface__["data"][0] % 64 == 0


def test_fast_messages_cross_a_socket_pair(pair: tuple[socket.socket, socket.socket]) -> None:
    server_end, worker_end = pair
    small = np.arange(16, dtype=np.float32).reshape(1, 16)
    big = np.arange(100_000, dtype=np.float32)
    for message in (
        ("execute", 1, [_payload(1, INPUT0=small)], 0),
        ("execute", 2, [_payload(2, INPUT0=big)], 0),
        {"plain": "pickled"},
        ("execute", 3, [_payload(3, INPUT0=small * 2)], 0),
    ):
        ipc.send_blocking(server_end, message)
    received = [ipc.receive_blocking(worker_end) for _ in range(4)]
    np.testing.assert_array_equal(received[0][2][0]["inputs"][0][1], small)
    np.testing.assert_array_equal(received[1][2][0]["inputs"][0][1], big)
    assert received[2] == {"plain": "pickled"}
    # the receive buffer is reused: earlier messages must not change under later ones
    np.testing.assert_array_equal(received[0][2][0]["inputs"][0][1], small)
    np.testing.assert_array_equal(received[3][2][0]["inputs"][0][1], small * 2)
