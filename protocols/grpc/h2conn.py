"""A lean HTTP/2 server connection for the gRPC frontend, in place of hyper-h2.

hyper-h2 (with hyperframe and hpack) spends about 300 Python calls on each unary call:
frame objects, a state machine per stream, header validation, logging. This module
speaks the server side of HTTP/2 (RFC 9113) as gRPC clients use it, with little per
frame: it parses frames with ``struct``, decodes header blocks with ``hpack``'s decoder
(and reuses the decoded headers of a block seen before while the dynamic table is
unchanged: a client sends the same block for every call), encodes answers without the
dynamic table (so the usual headers and trailers are constants), and keeps the flow
control windows. Calls are still served by grpclib's ``Handler`` (metadata, deadlines,
the service's handlers) through :class:`H2Stream`, which offers what grpclib uses of
its own protocol-level stream; plain unary ModelInfer calls go to ``fast.py``.

Settings, windows and keep-alive pings are grpclib's (its ``Configuration``); the
settings advertised are hyper-h2's defaults for a server with grpclib's windows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from grpclib.config import Configuration
from grpclib.exceptions import StreamTerminatedError
from grpclib.protocol import Peer
from h2.exceptions import StreamClosedError
from hpack import Decoder, HPACKError
from hpack.table import HeaderTable

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 4, 5
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE = 3, 6

_FRAME = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
_SETTING = struct.Struct(">HI")
_WINDOW = struct.Struct(">I")
_ERROR = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
#: What this side advertises (hyper-h2's server defaults; the window is grpclib's).
MAX_CONCURRENT_STREAMS = 100
MAX_HEADER_LIST_SIZE = 2**16
MAX_FRAME_SIZE = 16384
HEADER_TABLE_SIZE = 4096
_DEFAULT_WINDOW = 65535


class ConnectionError_(Exception):
    """A connection-level protocol error: GOAWAY with ``code``, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _FRAME.pack(len(payload) << 8 | kind, flags, stream_id) + payload


# --- HPACK, encoding side: no dynamic table, so the same headers encode the same ---------

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_PAIR = {(n.decode(), v.decode()): i for i, (n, v) in enumerate(_STATIC, 1) if v}
_STATIC_NAME: dict[str, int] = {}
for _index, (_name, _) in enumerate(_STATIC, 1):
    _STATIC_NAME.setdefault(_name.decode(), _index)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _integer(len(data), 7, 0) + data


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """A header block: static-table indexes, else literals never added to a table."""
    out = []
    for name, value in headers:
        index = _STATIC_PAIR.get((name, value))
        if index is not None:
            out.append(_integer(index, 7, 0x80))
            continue
        name_index = _STATIC_NAME.get(name)
        if name_index is not None:
            out.append(_integer(name_index, 4, 0x00) + _string(value))
        else:
            out.append(b"\x00" + _string(name) + _string(value))
    return b"".join(out)


class _CachingDecoder:
    """hpack's decoder, and the headers of blocks that left its dynamic table alone."""

    def __init__(self) -> None:
        self._decoder = Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self._decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        self._seen: dict[bytes, list[tuple[str, str]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers = self._seen.get(block)
        if headers is not None:
            return headers
        table = self._decoder.header_table
        before = self._state(table)
        headers = [tuple(h) for h in self._decoder.decode(block)]  # type: ignore[misc]
        if self._state(table) != before:
            self._seen.clear()  # indexes now mean other headers
        elif len(self._seen) < 64:
            self._seen[block] = headers
        return headers

    @staticmethod
    def _state(table: Any) -> tuple[int, int, int]:
        entries = table.dynamic_entries
        return len(entries), id(entries[0]) if entries else 0, table.maxsize


# --- streams --------------------------------------------------------------------------------


class H2Stream:
    """One call's stream: what grpclib's ``Handler`` and service code use of theirs."""

    def __init__(self, connection: H2Connection, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.connection = connection
        self._transport = connection.transport
        self.headers: list[tuple[str, str]] | None = None
        #: grpclib's handler sets it; a reset or a lost connection cancels through it.
        self.wrapper: Any = None
        self.send_window = send_window
        self.recv_window = connection.stream_window
        self._chunks: deque[memoryview] = deque()
        self._size = 0
        #: Bytes at the front of the buffer already given back to the client's windows.
        self._acked = 0
        self._unacked = 0
        self._waiter: asyncio.Future[None] | None = None
        self.remote_closed = False
        self.local_closed = False
        self.reset_done = False
        self.released = False
        #: Called after each piece of data (and the end) arrives, when set (``fast.py``).
        self.on_data: Callable[[], None] | None = None

    # --- receiving ----------------------------------------------------------------------

    def _received(self, data: memoryview, end: bool) -> None:
        if data:
            self._chunks.append(data)
            self._size += len(data)
        if end:
            self.remote_closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_data is not None:
            self.on_data()

    async def recv_data(self, size: int) -> bytes:
        """``size`` bytes, or fewer when the client ended the stream first."""
        while self._size < size and not self.remote_closed and not self.reset_done:
            self._give_back(self._size)  # the reader wants them all: let more come
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        size = min(size, self._size)
        chunks, taken = [], 0
        while taken < size:
            chunk = self._chunks[0]
            if taken + len(chunk) <= size:
                chunks.append(chunk)
                taken += len(chunk)
                self._chunks.popleft()
            else:
                cut = size - taken
                chunks.append(chunk[:cut])
                self._chunks[0] = chunk[cut:]
                taken = size
        self._give_back(size)
        self._size -= size
        self._acked -= size
        return b"".join(chunks)

    def take_all(self) -> bytes:
        """Every buffered byte, at once (the client ended the stream)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        size, self._size = self._size, 0
        self._give_back(size)
        self._acked -= size
        return chunks[0].tobytes() if len(chunks) == 1 else b"".join(chunks)

    def peek(self, size: int) -> bytes:
        """The first ``size`` buffered bytes (fewer if fewer are buffered), left in place."""
        first = self._chunks[0] if self._chunks else b""
        if len(first) >= size:
            return bytes(first[:size])
        return b"".join(self._chunks)[:size]

    def _give_back(self, upto: int) -> None:
        """Acknowledge the first ``upto`` buffered bytes (those not acknowledged yet)."""
        if upto > self._acked:
            self.connection.consumed(self, upto - self._acked)
            self._acked = upto

    def unread(self) -> int:
        """Buffered bytes never acknowledged (the call ended without reading them)."""
        return self._size - self._acked

    # --- sending --------------------------------------------------------------------------

    async def send_headers(self, headers: list[tuple[str, str]], end_stream: bool = False) -> None:
        await self.connection.write_ready.wait()
        self._check_open()
        self.connection.send_headers(self, headers, end_stream)

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        await self.connection.send_data(self, memoryview(data), end_stream)

    async def end(self) -> None:
        await self.connection.write_ready.wait()
        self._check_open()
        self.connection.end_stream(self)

    async def reset(self, error_code: int = NO_ERROR) -> None:
        await self.connection.write_ready.wait()
        self.reset_nowait(error_code)

    def reset_nowait(self, error_code: int = NO_ERROR) -> None:
        if not self.reset_done:
            self.connection.reset_stream(self, int(error_code))

    @property
    def closable(self) -> bool:
        if self._transport.is_closing() or self.reset_done:
            return False
        return not (self.local_closed and self.remote_closed)

    def _check_open(self) -> None:
        if self.local_closed or self.reset_done:
            raise StreamClosedError(self.id)  # what grpclib expects of a closed stream

    # --- grpclib's hooks --------------------------------------------------------------------

    def __terminated__(self, reason: str) -> None:
        self.reset_done = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.wrapper is not None:
            self.wrapper.cancel(StreamTerminatedError(reason))


# --- the connection ---------------------------------------------------------------------


class H2Connection(asyncio.Protocol):
    """One client connection: frames in, calls to grpclib's handler (or the fast road)."""

    def __init__(self, handler: Any, config: Configuration, fast: Any = None) -> None:
        self.handler = handler
        self.config = config
        self.fast = fast
        self.transport: Any = None
        self.stream_window = config.http2_stream_window_size
        self._connection_window = config.http2_connection_window_size
        #: Bytes of a frame not complete yet.
        self._pending = b""
        self._preface = False
        self._out: list[bytes] = []
        #: A flush is scheduled for the end of this turn of the event loop.
        self._flush_soon = False
        self._decoder = _CachingDecoder()
        self._streams: dict[int, H2Stream] = {}
        self._last_stream = 0
        self._continuation: tuple[int, int, list[bytes]] | None = None
        # flow control
        self._send_window = _DEFAULT_WINDOW
        self._peer_initial_window = _DEFAULT_WINDOW
        self.max_outbound_frame_size = MAX_FRAME_SIZE
        self._recv_window = _DEFAULT_WINDOW
        self._unacked = 0
        self._window_opened = asyncio.Event()
        self.write_ready = asyncio.Event()
        self.write_ready.set()
        self._closed = False
        # grpclib's statistics and keep-alive bookkeeping
        self.messages_received = self.messages_sent = 0
        self.last_message_received: float | None = None
        self.last_message_sent: float | None = None
        self.last_data_sent: float | None = None
        self.ping_count_in_sequence = 0
        self.last_ping_sent: float | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._close_by_ping: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = b"".join(
            _SETTING.pack(key, value)
            for key, value in (
                (SETTINGS_HEADER_TABLE_SIZE, HEADER_TABLE_SIZE),
                (SETTINGS_INITIAL_WINDOW_SIZE, self.stream_window),
                (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_SIZE),
                (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
            )
        )
        self._out.append(frame(SETTINGS, 0, 0, settings))
        delta = self._connection_window - self._recv_window
        if delta > 0:
            self._recv_window += delta
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _WINDOW.pack(delta)))
        self.flush()
        if self.config._keepalive_time is not None:
            loop = asyncio.get_running_loop()
            self._ping_handle = loop.call_later(self.config._keepalive_time, self._ping)

    def data_received(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        try:
            if not self._preface:
                if len(data) < len(PREFACE):
                    if not PREFACE.startswith(data):
                        raise ConnectionError_(PROTOCOL_ERROR, "invalid connection preface")
                    self._pending = data
                    return
                if not data.startswith(PREFACE):
                    raise ConnectionError_(PROTOCOL_ERROR, "invalid connection preface")
                data = data[len(PREFACE) :]
                self._preface = True
            self._frames(data)
        except ConnectionError_ as exc:
            log.debug("HTTP/2 connection error: %s", exc)
            self._goaway(exc.code)
        except HPACKError as exc:
            log.debug("HPACK error: %s", exc)
            self._goaway(COMPRESSION_ERROR)
        self.flush()

    def _frames(self, data: bytes) -> None:
        """Handle every whole frame of ``data``; keep the rest for the next read."""
        view = memoryview(data)
        position, end = 0, len(data)
        while end - position >= 9 and not self._closed:
            length_kind, flags, stream_id = _FRAME.unpack_from(data, position)
            length, kind = length_kind >> 8, length_kind & 0xFF
            if length > MAX_FRAME_SIZE:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - position - 9 < length:
                break
            payload = view[position + 9 : position + 9 + length]
            position += 9 + length
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        if position < end:
            self._pending = data[position:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for handle in (self._ping_handle, self._close_by_ping):
            if handle is not None:
                handle.cancel()
        self.handler.close()
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.__terminated__("Connection lost")
        self._window_opened.set()
        self.write_ready.set()

    def pause_writing(self) -> None:
        self.write_ready.clear()

    def resume_writing(self) -> None:
        self.write_ready.set()

    # --- frames in --------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._more_headers(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == PING:
            self._ping_frame(flags, stream_id, payload)
        elif kind == GOAWAY:
            self.close()
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks

    def _unpad(self, flags: int, payload: memoryview) -> memoryview:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window exceeded")
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            self._unacked += size  # nobody reads it: give the window back at once
            self._ack_connection()
            if stream_id > self._last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._unacked += size
            self.reset_stream(stream, FLOW_CONTROL_ERROR)
            self._terminate(stream, "stream window exceeded")
            return
        padding = size - len(data := self._unpad(flags, payload))
        if padding:
            stream._unacked += padding
            self._unacked += padding
        stream._received(data, bool(flags & END_STREAM))

    def _headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0 or not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, bytes(block))
        else:
            self._continuation = (stream_id, flags, [bytes(block)])

    def _more_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, parts = self._continuation
        parts.append(bytes(payload))
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(stream_id, first_flags, b"".join(parts))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decoder.decode(block)  # always: the table must stay in step
        end = bool(flags & END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers: gRPC clients send none, but they end the stream
            stream._received(memoryview(b""), True)
            return
        if stream_id <= self._last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on closed stream {stream_id}")
        self._last_stream = stream_id
        stream = H2Stream(self, stream_id, self._peer_initial_window)
        if len(self._streams) >= MAX_CONCURRENT_STREAMS:
            self.reset_stream(stream, REFUSED_STREAM)
            return
        stream.headers = headers
        stream.remote_closed = end
        self._streams[stream_id] = stream
        self.ping_count_in_sequence = 0
        release = self._releaser(stream)
        fast = self.fast
        if fast is None:
            self.handler.accept(stream, headers, release)
            return
        plain, timeout = fast.classify(headers)
        if plain:
            self.handler.accept_fast(stream, release, timeout)
        else:
            self.handler.accept(stream, headers, release)

    def _releaser(self, stream: H2Stream) -> Callable[[], None]:
        def release() -> None:
            if stream.released:
                return
            stream.released = True
            self._streams.pop(stream.id, None)
            self._unacked += stream.unread()  # what the call never read
            stream._chunks.clear()
            stream._size = stream._acked = 0
            if not self._closed:
                self._ack_connection()
                self.flush()

        return release

    def _settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS of a bad length")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > 2**31 - 1:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                self._window_opened.set()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.max_outbound_frame_size = value
        self._out.append(frame(SETTINGS, ACK, 0))

    def _window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a bad length")
        (increment,) = _WINDOW.unpack(payload)
        increment &= 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > 2**31 - 1:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            if increment == 0:
                self.reset_stream(stream, PROTOCOL_ERROR)
                self._terminate(stream, "WINDOW_UPDATE of 0")
                return
            stream.send_window += increment
        self._window_opened.set()

    def _rst_stream(self, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0 or len(payload) != 4:
            raise ConnectionError_(PROTOCOL_ERROR, "bad RST_STREAM")
        stream = self._streams.get(stream_id)
        if stream is not None:
            (code,) = _ERROR.unpack(payload)
            stream.reset_done = True
            self._terminate(stream, f"Stream reset by remote party, error_code: {code}")

    def _terminate(self, stream: H2Stream, reason: str) -> None:
        """The call cannot go on: grpclib's handler cancels its task."""
        stream.__terminated__(reason)
        if not stream.released:
            try:
                self.handler.cancel(stream)
            except KeyError:
                pass

    def _ping_frame(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0 or len(payload) != 8:
            raise ConnectionError_(PROTOCOL_ERROR, "bad PING")
        if flags & ACK:
            if self._close_by_ping is not None:
                self._close_by_ping.cancel()
                self._close_by_ping = None
            return
        self._out.append(frame(PING, ACK, 0, bytes(payload)))

    # --- frames out -------------------------------------------------------------------------

    def flush(self) -> None:
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    def send_headers(self, stream: H2Stream, headers: list[tuple[str, str]], end: bool) -> None:
        self._header_frames(stream.id, encode_headers(headers), end)
        self.ping_count_in_sequence = 0
        if end:
            self._close_local(stream)
        self.flush()

    def _header_frames(self, stream_id: int, block: bytes, end: bool) -> None:
        limit = self.max_outbound_frame_size
        flags = END_STREAM if end else 0
        if len(block) <= limit:
            self._out.append(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        self._out.append(frame(HEADERS, flags, stream_id, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            piece = block[start : start + limit]
            self._out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, piece))

    def send_unary(self, stream: H2Stream, initial: bytes, message: bytes, trailers: bytes) -> bool:
        """Pre-encoded headers, one DATA frame and trailers in one write, if the windows
        allow it; False (nothing sent) otherwise."""
        size = len(message)
        if (
            size > self._send_window
            or size > stream.send_window
            or size > self.max_outbound_frame_size
            or not self.write_ready.is_set()
            or stream.local_closed
            or stream.reset_done
        ):
            return False
        self._send_window -= size
        stream.send_window -= size
        sid = stream.id
        self._out += (
            _FRAME.pack(len(initial) << 8 | HEADERS, END_HEADERS, sid),
            initial,
            _FRAME.pack(size << 8 | DATA, 0, sid),
            message,
            _FRAME.pack(len(trailers) << 8 | HEADERS, END_HEADERS | END_STREAM, sid),
            trailers,
        )
        self._close_local(stream)
        self.ping_count_in_sequence = 0
        self.last_data_sent = time.monotonic()
        if not self._flush_soon:
            # Answers finished in the same turn of the loop (a worker's replies read
            # together) leave in one write: one system call, one wake-up of the client.
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_later)
        return True

    def _flush_later(self) -> None:
        self._flush_soon = False
        self.flush()

    async def send_data(self, stream: H2Stream, data: memoryview, end: bool) -> None:
        """DATA frames within the peer's windows and frame size, waiting for room."""
        position = 0
        while True:
            await self.write_ready.wait()
            stream._check_open()
            if self._closed:
                raise ConnectionResetError("the connection is closed")
            room = min(self._send_window, stream.send_window, self.max_outbound_frame_size)
            left = len(data) - position
            if room <= 0 and left:
                self._window_opened.clear()
                await self._window_opened.wait()
                continue
            piece = data[position : position + min(room, left)]
            position += len(piece)
            self._send_window -= len(piece)
            stream.send_window -= len(piece)
            last = position >= len(data)
            self._out.append(frame(DATA, END_STREAM if end and last else 0, stream.id, piece))
            self.ping_count_in_sequence = 0
            self.last_data_sent = time.monotonic()
            if end and last:
                self._close_local(stream)
            self.flush()
            if last:
                return

    def end_stream(self, stream: H2Stream) -> None:
        self._out.append(frame(DATA, END_STREAM, stream.id))
        self._close_local(stream)
        self.flush()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        stream.reset_done = True
        self._out.append(frame(RST_STREAM, 0, stream.id, _ERROR.pack(code)))
        self.flush()

    def _close_local(self, stream: H2Stream) -> None:
        stream.local_closed = True

    def consumed(self, stream: H2Stream, size: int) -> None:
        """The call read ``size`` bytes: give them back to the client's windows in halves."""
        if not size:
            return
        stream._unacked += size
        self._unacked += size
        if not stream.remote_closed and stream._unacked >= self.stream_window // 2:
            stream.recv_window += stream._unacked
            self._out.append(frame(WINDOW_UPDATE, 0, stream.id, _WINDOW.pack(stream._unacked)))
            stream._unacked = 0
        self._ack_connection()
        if self._out:
            self.flush()

    def _ack_connection(self) -> None:
        if self._unacked >= self._connection_window // 2:
            self._recv_window += self._unacked
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _WINDOW.pack(self._unacked)))
            self._unacked = 0

    def _goaway(self, code: int) -> None:
        if not self._closed:
            self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self._last_stream, code)))
            self.flush()
            self.close()

    # --- grpclib's Connection API (for its Stream and keep-alive) ---------------------------

    def get_peer(self) -> Peer:
        return Peer(self.transport)

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _ping(self) -> None:
        """grpclib's keep-alive: a PING while calls are open; no answer closes the connection."""
        config = self.config
        assert config._keepalive_time is not None
        if self._need_ping():
            payload = struct.pack("!Q", int(time.monotonic() * 10**6))
            self._out.append(frame(PING, 0, 0, payload))
            self.flush()
            self.last_ping_sent = time.monotonic()
            self.ping_count_in_sequence += 1
            if self._close_by_ping is None:
                loop = asyncio.get_running_loop()
                self._close_by_ping = loop.call_later(config._keepalive_timeout, self.close)
        loop = asyncio.get_running_loop()
        self._ping_handle = loop.call_later(config._keepalive_time, self._ping)

    def _need_ping(self) -> bool:
        config = self.config
        if not config._keepalive_permit_without_calls and not self._streams:
            return False
        most = config._http2_max_pings_without_data
        if most != 0 and self.ping_count_in_sequence >= most:
            return False
        return not (
            self.last_ping_sent is not None
            and time.monotonic() - self.last_ping_sent
            < config._http2_min_sent_ping_interval_without_data
        )
