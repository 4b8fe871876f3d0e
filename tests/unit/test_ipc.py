"""Messages between the server and a Python-model worker: inline datagrams and memfds."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from triton_kernel.kernel.errors import InvalidArgument
from triton_kernel.plugins.backends.python import ipc


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server_end, worker_end = ipc.socket_pair()
    yield server_end, worker_end
    server_end.close()
    worker_end.close()


def _round_trip(message: Any) -> tuple[Any, bytes, list[int]]:
    datagram, fds = ipc.encode(message)
    kept = list(fds)
    return ipc.decode(datagram, fds), datagram, kept


def _assert_closed(fd: int) -> None:
    with pytest.raises(OSError):
        os.fstat(fd)


def _bytes_array(items: list[bytes], shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(shape or (len(items),))


def test_small_message_travels_inline() -> None:
    message = {
        "kind": "execute",
        "call": 7,
        "inputs": {"X": np.arange(12, dtype=np.float32).reshape(3, 4)},
        "flags": [1, None, True, "é"],
    }
    decoded, datagram, fds = _round_trip(message)
    assert fds == []
    assert len(datagram) <= ipc.INLINE_LIMIT + 64
    assert decoded.keys() == message.keys()
    assert decoded["flags"] == [1, None, True, "é"]
    np.testing.assert_array_equal(decoded["inputs"]["X"], message["inputs"]["X"])
    assert decoded["inputs"]["X"].dtype == np.float32


def test_large_arrays_travel_through_a_memfd() -> None:
    big = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    small = np.array([1, 2, 3], np.int8)
    decoded, datagram, fds = _round_trip({"big": big, "small": small, "text": "x"})
    assert len(fds) == 1
    assert len(datagram) < 100  # only the header and buffer lengths: the data is in the memfd
    _assert_closed(fds[0])  # decode takes ownership of the descriptor
    np.testing.assert_array_equal(decoded["big"], big)
    np.testing.assert_array_equal(decoded["small"], small)
    assert decoded["text"] == "x"
    assert decoded["big"].shape == (400, 500)


def test_memfd_arrays_are_64_byte_aligned() -> None:
    arrays = [np.ones(n, np.uint8) for n in (1, 70_000, 3, 129)]
    decoded, _, fds = _round_trip(arrays)
    assert len(fds) == 1
    for original, copy in zip(arrays, decoded, strict=True):
        np.testing.assert_array_equal(copy, original)
        assert copy.__array_interface__["data"][0] % 64 == 0


@pytest.mark.parametrize("size", [10, 100_000])
def test_bytes_object_arrays_round_trip(size: int) -> None:
    items = [b"", b"\x00\xff", "é".encode(), *(bytes([i % 256]) * (i % 7) for i in range(size))]
    array = _bytes_array(items)
    decoded, _, fds = _round_trip({"S": array})
    assert len(fds) == (1 if size > 1000 else 0)
    assert decoded["S"].dtype == np.object_
    assert decoded["S"].tolist() == items


@pytest.mark.parametrize("size", [6, 60_000])
def test_non_contiguous_and_fortran_arrays_round_trip(size: int) -> None:
    base = np.arange(size * 4, dtype=np.int32).reshape(size, 4)
    message = {"strided": base[::2, 1::2], "fortran": np.asfortranarray(base), "empty": base[:0]}
    decoded, _, _ = _round_trip(message)
    for key, value in message.items():
        np.testing.assert_array_equal(decoded[key], value)
        assert decoded[key].shape == value.shape
    assert decoded["fortran"].flags.f_contiguous


def test_exceptions_round_trip() -> None:
    decoded, _, _ = _round_trip({"error": InvalidArgument("bad input")})
    assert isinstance(decoded["error"], InvalidArgument)
    assert str(decoded["error"]) == "bad input"


def test_inline_limit_boundary(pair: tuple[socket.socket, socket.socket]) -> None:
    def encoded(n: int) -> tuple[bytes, list[int]]:
        return ipc.encode(np.full(n, 7, np.uint8))

    low, high = 1, 2 * ipc.INLINE_LIMIT  # largest n that stays inline
    while low < high:
        middle = (low + high + 1) // 2
        _, fds = encoded(middle)
        for fd in fds:
            os.close(fd)
        low, high = (middle, high) if not fds else (low, middle - 1)
    largest = low
    assert ipc.INLINE_LIMIT - 200 < largest <= ipc.INLINE_LIMIT
    server_end, worker_end = pair
    for n in (largest, largest + 1):
        ipc.send_blocking(worker_end, np.full(n, 7, np.uint8))
        received = ipc.receive_blocking(server_end)
        assert received.shape == (n,)
        assert (received == 7).all()
    _, fds = encoded(largest + 1)
    assert len(fds) == 1
    os.close(fds[0])


def test_send_and_receive_over_a_socket_pair(pair: tuple[socket.socket, socket.socket]) -> None:
    server_end, worker_end = pair
    big = np.random.default_rng(1).random((300, 300)).astype(np.float32)
    messages = [
        {"n": 1},
        {"big": big},
        {"s": _bytes_array([b"a", b"bc"], (2, 1))},
        "done",
    ]
    for message in messages:
        ipc.send_blocking(worker_end, message)
    received = [ipc.receive_blocking(server_end) for _ in messages]
    assert received[0] == {"n": 1}
    np.testing.assert_array_equal(received[1]["big"], big)
    assert received[2]["s"].tolist() == [[b"a"], [b"bc"]]
    assert received[3] == "done"


def test_both_directions(pair: tuple[socket.socket, socket.socket]) -> None:
    server_end, worker_end = pair
    ipc.send_blocking(server_end, ("call", 1))
    assert ipc.receive_blocking(worker_end) == ("call", 1)
    ipc.send_blocking(worker_end, ("reply", 1))
    assert ipc.receive_blocking(server_end) == ("reply", 1)


def test_peer_close_returns_none(pair: tuple[socket.socket, socket.socket]) -> None:
    server_end, worker_end = pair
    ipc.send_blocking(worker_end, "last words")
    worker_end.close()
    assert ipc.receive_blocking(server_end) == "last words"
    assert ipc.receive_blocking(server_end) is None


def test_send_leaves_no_descriptor_open(pair: tuple[socket.socket, socket.socket]) -> None:
    server_end, worker_end = pair
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        ipc.send_blocking(worker_end, np.zeros(100_000, np.float32))
        ipc.receive_blocking(server_end)
    gc.collect()  # the mapped regions go with the arrays
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


# --- AsyncChannel, the server end driven by the event loop -----------------------------


def test_async_channel_exchanges_messages(pair: tuple[socket.socket, socket.socket]) -> None:
    server_end, worker_end = pair
    big = np.arange(50_000, dtype=np.int64)

    def worker() -> None:
        while (message := ipc.receive_blocking(worker_end)) is not None:
            ipc.send_blocking(worker_end, ("echo", message))
            if message == "bye":
                worker_end.close()
                return

    async def main() -> tuple[list[Any], bool]:
        loop = asyncio.get_running_loop()
        received: list[Any] = []
        closed = loop.create_future()
        channel = ipc.AsyncChannel(
            server_end, loop, received.append, lambda: closed.set_result(True)
        )
        thread = threading.Thread(target=worker)
        thread.start()
        channel.send({"big": big})
        channel.send("small")
        channel.send("bye")
        await asyncio.wait_for(closed, 10)
        thread.join(10)
        with pytest.raises(ConnectionError, match="worker channel is closed"):
            channel.send("after close")
        return received, closed.result()

    received, closed = asyncio.run(main())
    assert closed is True
    assert [kind for kind, _ in received] == ["echo", "echo", "echo"]
    np.testing.assert_array_equal(received[0][1]["big"], big)
    assert [message for _, message in received[1:]] == ["small", "bye"]


def test_async_channel_queues_what_the_socket_cannot_take(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server_end, worker_end = pair
    count = 64  # 64 inline datagrams of ~32 KiB: far more than the socket buffer holds
    payload = np.ones(32 * 1024, np.uint8)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        channel = ipc.AsyncChannel(server_end, loop, lambda _: None, lambda: None)
        for index in range(count):
            channel.send((index, payload))
        assert channel._backlog  # the socket filled up: the rest waits for it to drain
        results: list[int] = []

        def drain() -> None:
            for _ in range(count):
                index, data = ipc.receive_blocking(worker_end)
                assert data.nbytes == payload.nbytes
                results.append(index)

        await asyncio.wait_for(loop.run_in_executor(None, drain), 10)
        channel.close()
        return results

    assert asyncio.run(main()) == list(range(count))
