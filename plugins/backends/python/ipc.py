"""Messages between the server and a Python-model worker, over a SOCK_SEQPACKET socket pair.

A message is any picklable object. Pickle protocol 5 lifts array buffers out of the
pickle: small messages carry them inline in the datagram; large ones put them in an
anonymous shared-memory file (``memfd``) whose descriptor travels with the datagram,
so a tensor is written once and mapped, not copied, on the other side. No named
shared memory is left behind when a process dies, and ``/dev/shm`` is not used.
"""

from __future__ import annotations

import mmap
import os
import pickle
import socket
import struct
import tempfile
from collections.abc import Callable
from typing import Any

#: Messages up to this size travel inline; larger ones go through a memfd.
INLINE_LIMIT = 64 * 1024
#: Socket buffers: an inline datagram must fit in one send.
SOCKET_BUFFER = 4 * INLINE_LIMIT
_ALIGN = 64
_HEADER = struct.Struct("<BII")  # kind, pickle length, buffer count
_LENGTH = struct.Struct("<Q")
_INLINE, _SHARED = 0, 1


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (server end, worker end) pair with room for inline messages."""
    server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (server_end, worker_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return server_end, worker_end


def encode(message: Any) -> tuple[bytes, list[int]]:
    """The datagram for ``message`` and the descriptors to pass with it (caller closes them)."""
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


def decode(datagram: bytes, fds: list[int]) -> Any:
    """The message a datagram (and its descriptors) carries; takes ownership of ``fds``."""
    kind, pickle_length, count = _HEADER.unpack_from(datagram)
    position = _HEADER.size
    lengths = [_LENGTH.unpack_from(datagram, position + 8 * i)[0] for i in range(count)]
    position += 8 * count
    if kind == _INLINE:
        # Arrays over a bytes object would be read-only; Triton's tensors are writable.
        view = memoryview(bytearray(datagram) if count else datagram)
        data = view[position : position + pickle_length]
        position += pickle_length
        buffers = []
        for length in lengths:
            buffers.append(view[position : position + length])
            position += length
        return pickle.loads(data, buffers=buffers)
    (fd,) = fds
    try:
        size = _aligned(pickle_length) + sum(_aligned(length) for length in lengths)
        region = memoryview(mmap.mmap(fd, max(size, 1), prot=mmap.PROT_READ | mmap.PROT_WRITE))
    finally:
        os.close(fd)
    data = region[:pickle_length]
    offset = _aligned(pickle_length)
    buffers = []
    for length in lengths:
        buffers.append(region[offset : offset + length])
        offset += _aligned(length)
    return pickle.loads(data, buffers=buffers)


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
    datagram, fds, _flags, _address = socket.recv_fds(sock, SOCKET_BUFFER, 1)
    if not datagram:
        return None
    return decode(datagram, fds)


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

    def _readable(self) -> None:
        while not self._closed:
            try:
                datagram, fds, _flags, _address = socket.recv_fds(self._sock, SOCKET_BUFFER, 1)
            except BlockingIOError:
                return
            except OSError:
                datagram, fds = b"", []
            if not datagram:
                self.close()
                return
            self._on_message(decode(datagram, fds))

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
