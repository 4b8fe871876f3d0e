"""Messages between the server and a Python-model worker, over a SOCK_SEQPACKET socket pair.

A message is any picklable object. Pickle protocol 5 lifts array buffers out of the
pickle: small messages carry them inline in the datagram; large ones put them in an
anonymous shared-memory file (``memfd``) whose descriptor travels with the datagram,
so a tensor is written once and mapped, not copied, on the other side. No named
shared memory is left behind when a process dies, and ``/dev/shm`` is not used.

The messages of every inference (``execute``, ``batch_done``, ``send``) take a faster
road when they can: their arrays are lifted out as raw buffers and the rest, plain
values only, is ``marshal``-ed (a third of pickle's cost both ways); anything else
falls back to pickle. Datagrams are received into one reused buffer per receiver (a
fresh 256 KiB buffer per message costs an ``mmap`` and page faults every time).
"""

from __future__ import annotations

import array
import marshal
import mmap
import os
import pickle
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

#: Messages up to this size travel inline; larger ones go through a memfd.
INLINE_LIMIT = 64 * 1024
#: Socket buffers: an inline datagram must fit in one send.
SOCKET_BUFFER = 4 * INLINE_LIMIT
_ALIGN = 64
_HEADER = struct.Struct("<BII")  # kind, pickle (or marshal) length, buffer count
_LENGTH = struct.Struct("<Q")
_INLINE, _SHARED = 0, 1
#: The fast road: marshal data, arrays as raw buffers (16-byte aligned when inline).
_FAST_INLINE, _FAST_SHARED = 2, 3
_FAST_ALIGN = 16
#: Room for the one descriptor a datagram may carry.
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (server end, worker end) pair with room for inline messages."""
    server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (server_end, worker_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return server_end, worker_end


def encode(message: Any) -> tuple[bytes, list[int]]:
    """The datagram for ``message`` and the descriptors to pass with it (caller closes them)."""
    fast = _encode_fast(message)
    if fast is not None:
        return fast
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    lengths = b"".join(_LENGTH.pack(view.nbytes) for view in views)
    total = len(data) + sum(view.nbytes for view in views)
    if total <= INLINE_LIMIT:
        header = _HEADER.pack(_INLINE, len(data), len(views))
        return b"".join([header, lengths, data, *views]), []
    fd = _write_shared(data, views)
    return _HEADER.pack(_SHARED, len(data), len(views)) + lengths, [fd]


def _encode_fast(message: Any) -> tuple[bytes, list[int]] | None:
    """The fast road for an inference message, or None when it does not fit."""
    lift = _LIFTS.get(message[0]) if type(message) is tuple and message else None
    if lift is None:
        return None
    views: list[memoryview] = []
    try:
        data = marshal.dumps(lift(message, views))
    except (_Unfit, ValueError):  # an array numpy cannot rebuild raw, or an odd value
        return None
    lengths = b"".join([_LENGTH.pack(view.nbytes) for view in views])
    start = _HEADER.size + len(lengths) + len(data)
    if start + sum(view.nbytes + _FAST_ALIGN for view in views) > INLINE_LIMIT:
        fd = _write_shared(data, views)
        return _HEADER.pack(_FAST_SHARED, len(data), len(views)) + lengths, [fd]
    chunks: list[bytes | memoryview] = [_HEADER.pack(_FAST_INLINE, len(data), len(views))]
    chunks += (lengths, data)
    for view in views:
        pad = -start % _FAST_ALIGN
        chunks += (bytes(pad), view)
        start += pad + view.nbytes
    return b"".join(chunks), []


class _Unfit(Exception):
    """An array the fast road cannot carry (objects, records, a subclass)."""


def _lift_arrays(pairs: list[tuple[str, Any]], views: list[memoryview]) -> list[Any]:
    """``(name, array)`` pairs -> ``(name, dtype, shape)``; the arrays' bytes go to ``views``."""
    specs = []
    for name, value in pairs:
        if type(value) is not np.ndarray or value.dtype.hasobject or value.dtype.names:
            raise _Unfit
        if not value.flags.c_contiguous:
            value = np.ascontiguousarray(value)
        views.append(memoryview(value).cast("B") if value.size else memoryview(b""))
        specs.append((name, value.dtype.str, value.shape))
    return specs


def _drop_arrays(specs: list[Any], buffers: Iterator[memoryview]) -> list[tuple[str, Any]]:
    """The inverse of :func:`_lift_arrays`: arrays over the received buffers (no copy)."""
    return [
        (name, np.frombuffer(next(buffers), dtype=dtype).reshape(shape))
        for name, dtype, shape in specs
    ]


def _lift_execute(message: tuple[Any, ...], views: list[memoryview]) -> tuple[Any, ...]:
    kind, batch, payloads, poll_ns = message
    lifted = [{**p, "inputs": _lift_arrays(p["inputs"], views)} for p in payloads]
    return (kind, batch, lifted, poll_ns)


def _drop_execute(message: tuple[Any, ...], buffers: Iterator[memoryview]) -> tuple[Any, ...]:
    for payload in message[2]:
        payload["inputs"] = _drop_arrays(payload["inputs"], buffers)
    return message


def _lift_result(result: Any, views: list[memoryview]) -> Any:
    """A worker's encoded response: ("ok", outputs, parameters), an error, or None."""
    if result is None or result[0] != "ok":
        return result
    return ("ok", _lift_arrays(result[1], views), result[2])


def _drop_result(result: Any, buffers: Iterator[memoryview]) -> Any:
    if result is None or result[0] != "ok":
        return result
    return ("ok", _drop_arrays(result[1], buffers), result[2])


def _lift_done(message: tuple[Any, ...], views: list[memoryview]) -> tuple[Any, ...]:
    kind, batch, results, started = message
    return (kind, batch, [_lift_result(result, views) for result in results], started)


def _drop_done(message: tuple[Any, ...], buffers: Iterator[memoryview]) -> tuple[Any, ...]:
    kind, batch, results, started = message
    return (kind, batch, [_drop_result(result, buffers) for result in results], started)


def _lift_send(message: tuple[Any, ...], views: list[memoryview]) -> tuple[Any, ...]:
    kind, key, result, flags = message
    return (kind, key, _lift_result(result, views), flags)


def _drop_send(message: tuple[Any, ...], buffers: Iterator[memoryview]) -> tuple[Any, ...]:
    kind, key, result, flags = message
    return (kind, key, _drop_result(result, buffers), flags)


#: Message kind -> how its arrays leave it, and how they come back.
_LIFTS: dict[str, Callable[[Any, list[memoryview]], Any]] = {
    "execute": _lift_execute,
    "batch_done": _lift_done,
    "send": _lift_send,
}
_DROPS: dict[str, Callable[[Any, Iterator[memoryview]], Any]] = {
    "execute": _drop_execute,
    "batch_done": _drop_done,
    "send": _drop_send,
}


def _write_shared(data: bytes, views: list[memoryview]) -> int:
    size = _aligned(len(data)) + sum(_aligned(view.nbytes) for view in views)
    fd = _anonymous_file()
    try:
        os.ftruncate(fd, max(size, 1))
        offset = 0
        for chunk in (data, *views):
            _pwrite_all(fd, chunk, offset)
            offset += _aligned(len(chunk) if isinstance(chunk, bytes) else chunk.nbytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def decode(datagram: bytes | memoryview, fds: list[int]) -> Any:
    """The message a datagram (and its descriptors) carries; takes ownership of ``fds``."""
    kind, data_length, count = _HEADER.unpack_from(datagram)
    position = _HEADER.size
    lengths = struct.unpack_from(f"<{count}Q", datagram, position) if count else ()
    position += 8 * count
    if kind in (_INLINE, _FAST_INLINE):
        # Arrays over a bytes object would be read-only; Triton's tensors are writable.
        view = memoryview(bytearray(datagram) if count else bytes(datagram))
        data = view[position : position + data_length]
        position += data_length
        buffers = []
        for length in lengths:
            if kind == _FAST_INLINE:
                position += -position % _FAST_ALIGN
            buffers.append(view[position : position + length])
            position += length
    else:
        for extra in fds[1:]:
            os.close(extra)
        data, buffers = _map_shared(fds[0], data_length, lengths)
    if kind in (_INLINE, _SHARED):
        return pickle.loads(data, buffers=buffers)
    message = marshal.loads(data)
    return _DROPS[message[0]](message, iter(buffers))


def _map_shared(fd: int, data_length: int, lengths: tuple[int, ...]) -> tuple[Any, list[Any]]:
    """The data and buffers of a memfd message, mapped (not copied); closes ``fd``."""
    try:
        size = _aligned(data_length) + sum(_aligned(length) for length in lengths)
        region = memoryview(mmap.mmap(fd, max(size, 1), prot=mmap.PROT_READ | mmap.PROT_WRITE))
    finally:
        os.close(fd)
    data = region[:data_length]
    offset = _aligned(data_length)
    buffers = []
    for length in lengths:
        buffers.append(region[offset : offset + length])
        offset += _aligned(length)
    return data, buffers


def send_blocking(sock: socket.socket, message: Any) -> None:
    """Send on a blocking socket (the worker side)."""
    datagram, fds = encode(message)
    try:
        socket.send_fds(sock, [datagram], fds) if fds else sock.sendall(datagram)
    finally:
        for fd in fds:
            os.close(fd)


def receive_blocking(sock: socket.socket) -> Any | None:
    """The next message, or None when the peer closed (the worker side)."""
    datagram, fds = _receive_into(sock, _thread_buffer())
    if not datagram:
        return None
    return decode(datagram, fds)


def receive_polling(sock: socket.socket, deadline_ns: int) -> Any:
    """The next message if one arrives by ``deadline_ns`` (``perf_counter_ns``), polling
    without sleeping; :data:`NOTHING` if none did; None when the peer closed."""
    buffer = _thread_buffer()
    clock = time.perf_counter_ns
    while True:
        try:
            datagram, fds = _receive_into(sock, buffer, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if clock() > deadline_ns:
                return NOTHING
            continue
        return decode(datagram, fds) if datagram else None


#: What :func:`receive_polling` returns when nothing arrived in time.
NOTHING = object()


def _thread_buffer() -> bytearray:
    buffer = getattr(_receive_buffers, "buffer", None)
    if buffer is None:
        buffer = _receive_buffers.buffer = bytearray(SOCKET_BUFFER)
    return buffer


#: Each receiving thread's reused datagram buffer.
_receive_buffers = threading.local()


def _receive_into(
    sock: socket.socket, buffer: bytearray, flags: int = 0
) -> tuple[memoryview, list[int]]:
    """One datagram (a view of ``buffer``, valid until the next call) and its descriptors."""
    size, ancillary, _flags, _address = sock.recvmsg_into([buffer], _FD_SPACE, flags)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", data[: len(data) - len(data) % 4])
    return memoryview(buffer)[:size], fds


class AsyncChannel:
    """The server end of a worker's socket, driven by the event loop without threads."""

    def __init__(
        self,
        sock: socket.socket,
        loop: Any,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._backlog: list[tuple[bytes, list[int]]] = []
        self._closed = False
        self._buffer = bytearray(SOCKET_BUFFER)
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: Any) -> None:
        """Queue ``message``; sent now when the socket has room, else when it drains."""
        if self._closed:
            raise ConnectionError("worker channel is closed")
        self._backlog.append(encode(message))
        if len(self._backlog) == 1:
            self._flush()

    def _flush(self) -> None:
        while self._backlog:
            datagram, fds = self._backlog[0]
            try:
                if fds:
                    socket.send_fds(self._sock, [datagram], fds)
                else:
                    self._sock.send(datagram)
            except BlockingIOError:
                self._loop.add_writer(self._sock.fileno(), self._writable)
                return
            except OSError:
                self.close()
                return
            self._backlog.pop(0)
            for fd in fds:
                os.close(fd)

    def _writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        self._flush()

    def poll(self, deadline_ns: int) -> None:
        """Read and handle the next message if it arrives by ``deadline_ns``
        (``perf_counter_ns``), polling without sleeping or returning to the loop."""
        clock = time.perf_counter_ns
        while not self._closed and not self._read_one():
            if clock() > deadline_ns:
                return

    def _readable(self) -> None:
        while not self._closed and self._read_one():
            pass

    def _read_one(self) -> bool:
        """Handle the next datagram (or the peer's closing); False when none is there."""
        try:
            datagram, fds = _receive_into(self._sock, self._buffer)
        except BlockingIOError:
            return False
        except OSError:
            datagram, fds = memoryview(b""), []
        if not datagram:
            self.close()
        else:
            self._on_message(decode(datagram, fds))
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_writer(self._sock.fileno())
        for _, fds in self._backlog:
            for fd in fds:
                os.close(fd)
        self._backlog.clear()
        self._sock.close()
        self._on_closed()


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("triton-kernel-tensor", os.MFD_CLOEXEC)
    handle, path = tempfile.mkstemp(prefix="triton-kernel-")
    os.unlink(path)
    return handle


def _pwrite_all(fd: int, chunk: bytes | memoryview, offset: int) -> None:
    view = memoryview(chunk).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN
